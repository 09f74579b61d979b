"""Topology parsing and validation (pure; no root needed)."""

from __future__ import annotations

import copy
import ipaddress
import json

import pytest

from mwlab.topology import Topology, TopologyError, default_peer

from conftest import TOPOLOGIES

BASE = {
    "sites": [
        {
            "name": "s1",
            "lan": {"interface": "lan0", "network": "10.1.0.0/24", "clients": 1},
            "uplinks": [
                {"name": "isp1", "interface": "wan1", "address": "100.64.1.2/24", "gateway": "100.64.1.1", "weight": 1},
                {"name": "isp2", "interface": "ppp0", "address": "100.64.2.2/32"},
            ],
        },
        {
            "name": "s2",
            "lan": {"network": "10.2.0.0/24"},
            "uplinks": [{"name": "isp1", "interface": "wan1", "address": "100.64.11.2/24", "gateway": "100.64.11.1"}],
        },
    ]
}


def mutate(fn):
    d = copy.deepcopy(BASE)
    fn(d)
    return d


def test_base_derivations():
    t = Topology.from_dict(BASE, lab="mwa")
    assert t.lab == "mwa"
    assert [str(h) for h in t.hosts] == ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.7.1"]
    assert [str(h) for h in t.probe_targets] == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    s1 = t.site("s1")
    assert str(s1.gw_lan_address) == "10.1.0.1/24"
    assert str(s1.client_address(1)) == "10.1.0.10/24"
    assert s1.namespaces == ["mwa-s1-gw", "mwa-s1-sw", "mwa-s1-c1", "mwa-s1-isp1", "mwa-s1-isp2"]
    u1, u2 = s1.uplinks
    assert (u1.table, u2.table) == (101, 102)
    assert not u1.device_only and u2.device_only
    assert str(u2.address) == "100.64.2.2/32" and str(u2.peer) == "100.64.2.1"
    assert u2.router_address == u2.peer and u1.router_address == u1.gateway
    assert [str(u.transit) for u in t.uplinks] == ["100.127.0.0/30", "100.127.0.4/30", "100.127.0.8/30"]
    assert (str(u1.transit_inet), str(u1.transit_router)) == ("100.127.0.1", "100.127.0.2")
    assert u1.inet_ifname == "mwas1u1" and len(u1.inet_ifname) <= 15
    assert u2.mac.startswith("02:6d:") and u2.mac == Topology.from_dict(BASE, lab="mwa").site("s1").uplinks[1].mac
    assert t.namespaces[0] == "mwa-inet" and len(t.namespaces) == 1 + 5 + 4
    # s2 defaults: lan interface lan0, one client, weight 1
    s2 = t.site("s2")
    assert (s2.lan_interface, s2.clients, s2.uplinks[0].weight) == ("lan0", 1, 1)


def test_lab_name_precedence_and_default():
    assert Topology.from_dict(BASE).lab == "mwl"
    assert Topology.from_dict({**BASE, "lab": "abc"}).lab == "abc"
    assert Topology.from_dict({**BASE, "lab": "abc"}, lab="mwa").lab == "mwa"


def test_roundtrip_to_dict():
    t = Topology.from_dict(BASE, lab="mwa")
    t2 = Topology.from_dict(json.loads(json.dumps(t.to_dict())))
    assert t2.to_dict() == t.to_dict()


@pytest.mark.parametrize("name", ["two-sites.yml", "schools.yml"])
def test_shipped_topologies_are_valid(name):
    t = Topology.load(TOPOLOGIES / name, lab="mwa")
    assert all(1 <= len(s.uplinks) <= 4 for s in t.sites)
    assert any(u.device_only for u in t.uplinks)


def test_schools_weights_and_derived_peer():
    t = Topology.load(TOPOLOGIES / "schools.yml")
    assert len(t.sites) == 3
    assert [u.weight for u in t.site("south").uplinks] == [4, 2, 1]
    ppp = t.site("east").uplink("ppp")
    assert ppp.device_only and str(ppp.peer) == "100.64.70.1"


def test_json_text(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps(BASE))
    assert Topology.load(p, lab="mwa").site("s2").uplinks[0].name == "isp1"


def test_default_peer():
    A = ipaddress.IPv4Address
    assert default_peer(A("100.64.3.2")) == A("100.64.3.1")
    assert default_peer(A("100.64.3.1")) == A("100.64.3.2")
    assert default_peer(A("100.64.3.0")) == A("100.64.3.1")


def _s(i=0):
    return lambda d: d["sites"][i]


BAD = [
    ("lab name", lambda d: d.update(lab="toolong"), "lab"),
    ("lab chars", lambda d: d.update(lab="Mw-1"), "lab"),
    ("unknown top key", lambda d: d.update(extra=1), "unknown field"),
    ("no sites", lambda d: d.update(sites=[]), "sites"),
    ("site name long", lambda d: d["sites"][0].update(name="toolong1"), "sites[0].name"),
    ("site name inet", lambda d: d["sites"][0].update(name="inet"), "sites[0].name"),
    ("dup site", lambda d: d["sites"][1].update(name="s1"), "site s1: duplicate"),
    ("lan outside", lambda d: d["sites"][0]["lan"].update(network="192.168.1.0/24"), "site s1: lan.network"),
    ("lan 10.255", lambda d: d["sites"][0]["lan"].update(network="10.255.0.0/24"), "site s1: lan.network"),
    ("lan host bits", lambda d: d["sites"][0]["lan"].update(network="10.1.0.1/24"), "site s1: lan.network"),
    ("lan overlap", lambda d: d["sites"][1]["lan"].update(network="10.1.0.0/16"), "overlaps the LAN of site s1"),
    ("lan too small", lambda d: d["sites"][0]["lan"].update(network="10.1.0.0/29"), "too small"),
    ("clients range", lambda d: d["sites"][0]["lan"].update(clients=9), "site s1: lan.clients"),
    ("no uplinks", lambda d: d["sites"][0].update(uplinks=[]), "site s1: uplinks: need 1..4"),
    ("five uplinks", lambda d: d["sites"][0].update(uplinks=[
        {"name": f"u{i}", "interface": f"w{i}", "address": f"100.64.{50 + i}.2/24", "gateway": f"100.64.{50 + i}.1"}
        for i in range(5)]), "need 1..4 uplinks, got 5"),
    ("dup uplink", lambda d: d["sites"][0]["uplinks"][1].update(name="isp1"), "site s1 uplink isp1: duplicate"),
    ("reserved uplink", lambda d: d["sites"][0]["uplinks"][1].update(name="gw"), "site s1: uplinks[1].name"),
    ("uplink name long", lambda d: d["sites"][0]["uplinks"][1].update(name="abcdefghi"), "site s1: uplinks[1].name"),
    ("ifname long", lambda d: d["sites"][0]["uplinks"][0].update(interface="x" * 16), "site s1 uplink isp1: interface"),
    ("ifname dup lan", lambda d: d["sites"][0]["uplinks"][0].update(interface="lan0"), "already used by lan.interface"),
    ("addr outside", lambda d: d["sites"][0]["uplinks"][0].update(address="192.0.2.2/24", gateway="192.0.2.1"), "site s1 uplink isp1: address"),
    ("addr transit", lambda d: d["sites"][0]["uplinks"][0].update(address="100.127.1.2/24", gateway="100.127.1.1"), "reserves"),
    ("gw outside subnet", lambda d: d["sites"][0]["uplinks"][0].update(gateway="100.64.9.1"), "site s1 uplink isp1: gateway"),
    ("gw equals addr", lambda d: d["sites"][0]["uplinks"][0].update(gateway="100.64.1.2"), "equals the uplink address"),
    ("addr is network", lambda d: d["sites"][0]["uplinks"][0].update(address="100.64.1.0/24"), "network or broadcast"),
    ("bad addr", lambda d: d["sites"][0]["uplinks"][0].update(address="100.64.1.300/24"), "site s1 uplink isp1: address"),
    ("device-only prefix", lambda d: d["sites"][0]["uplinks"][1].update(address="100.64.2.2/24"), "takes a /32"),
    ("peer with gateway", lambda d: d["sites"][0]["uplinks"][0].update(peer="100.64.1.9"), "site s1 uplink isp1: peer"),
    ("peer equals", lambda d: d["sites"][0]["uplinks"][1].update(peer="100.64.2.2"), "site s1 uplink isp2: peer"),
    ("dup address", lambda d: d["sites"][1]["uplinks"][0].update(address="100.64.2.2/32", gateway=None), "already used"),
    ("subnet overlap", lambda d: d["sites"][1]["uplinks"][0].update(address="100.64.1.3/24", gateway="100.64.1.4"), "overlaps"),
    ("peer inside other subnet", lambda d: d["sites"][0]["uplinks"][1].update(peer="100.64.11.7"), "lies inside"),
    ("weight zero", lambda d: d["sites"][0]["uplinks"][0].update(weight=0), "site s1 uplink isp1: weight"),
    ("weight str", lambda d: d["sites"][0]["uplinks"][0].update(weight="2"), "site s1 uplink isp1: weight"),
    ("missing iface", lambda d: d["sites"][0]["uplinks"][0].pop("interface"), "missing field(s) interface"),
    ("unknown uplink key", lambda d: d["sites"][0]["uplinks"][0].update(gatway="x"), "unknown field(s) gatway"),
    ("hosts outside", lambda d: d.update(internet={"hosts": ["8.8.8.8"]}), "internet.hosts[0]"),
    ("hosts dup", lambda d: d.update(internet={"hosts": ["198.18.0.1", "198.18.0.1"]}), "duplicate"),
    ("probe not host", lambda d: d.update(internet={"hosts": ["198.18.0.1"], "probe_targets": ["198.18.0.2"]}), "probe_targets[0]"),
]


@pytest.mark.parametrize("case,fn,needle", BAD, ids=[b[0] for b in BAD])
def test_validation_errors(case, fn, needle):
    with pytest.raises(TopologyError) as e:
        Topology.from_dict(mutate(fn))
    assert needle in str(e.value), str(e.value)


def test_cli_lab_override_rejects_bad_name():
    with pytest.raises(TopologyError, match="lab"):
        Topology.from_dict(BASE, lab="UPPER")


# ---- IPv6 -------------------------------------------------------------------------------------

def _v6(d):
    d["sites"][0]["lan"]["network6"] = "2001:db8:1::/64"
    d["sites"][0]["uplinks"][0].update(address6="2001:db8:101::2/64", gateway6="2001:db8:101::1")
    d["sites"][0]["uplinks"][1].update(address6="2001:db8:102::2")


def test_ipv6_derivations():
    t = Topology.from_dict(mutate(_v6), lab="mwa")
    s1 = t.site("s1")
    assert str(s1.gw_lan_address6) == "2001:db8:1::1/64" and str(s1.client_address6(1)) == "2001:db8:1::10/64"
    u1, u2 = s1.uplinks
    assert str(u2.address6) == "2001:db8:102::2/128" and u2.gateway6 is None
    assert [str(u.transit6) for u in t.uplinks] == ["2001:db8:fffe::/64", "2001:db8:fffe:1::/64", "2001:db8:fffe:2::/64"]
    assert str(t.hosts6[0]) == "2001:db8:ffff::1" and len(t.probe_targets6) == 3
    assert Topology.from_dict(t.to_dict()).to_dict() == t.to_dict()
    # IPv4-only topologies stay IPv4-only
    assert Topology.from_dict(BASE).site("s1").lan_network6 is None


def _v6bad(fn):
    return lambda d: (_v6(d), fn(d))


BAD6 = [
    ("v6 outside doc range", _v6bad(lambda d: d["sites"][0]["uplinks"][0].update(address6="fd00::2/64", gateway6="fd00::1")), "address6"),
    ("v6 gateway missing", _v6bad(lambda d: d["sites"][0]["uplinks"][0].pop("gateway6")), "gateway6: required"),
    ("v6 gateway outside", _v6bad(lambda d: d["sites"][0]["uplinks"][0].update(gateway6="2001:db8:999::1")), "neither inside"),
    ("v6 gateway on device-only", _v6bad(lambda d: d["sites"][0]["uplinks"][1].update(gateway6="fe80::1")), "takes no gateway6"),
    ("v6 device-only prefix", _v6bad(lambda d: d["sites"][0]["uplinks"][1].update(address6="2001:db8:102::2/64")), "/128"),
    ("v6 transit reserved", _v6bad(lambda d: d["sites"][0]["uplinks"][0].update(address6="2001:db8:fffe:9::2/64", gateway6="fe80::1")), "reserves"),
    ("v6 lan overlaps uplink", _v6bad(lambda d: d["sites"][0]["lan"].update(network6="2001:db8:101::/64")), "overlaps"),
    ("v6 lan in internet", _v6bad(lambda d: d["sites"][0]["lan"].update(network6="2001:db8:ffff:1::/64")), "reserves"),
    ("v6 hosts outside", _v6bad(lambda d: d.update(internet={"hosts6": ["2001:db8:1::1"]})), "internet.hosts6[0]"),
    ("gateway6 without address6", lambda d: d["sites"][0]["uplinks"][0].update(gateway6="fe80::1"), "needs address6"),
]


@pytest.mark.parametrize("case,fn,needle", BAD6, ids=[b[0] for b in BAD6])
def test_ipv6_validation_errors(case, fn, needle):
    with pytest.raises(TopologyError) as e:
        Topology.from_dict(mutate(fn))
    assert needle in str(e.value), str(e.value)


def test_systemd_key_per_lab_and_per_site():
    assert [s.systemd for s in Topology.from_dict(BASE, lab="mwa").sites] == [False, False]
    d = mutate(lambda d: d.update(systemd=True))
    assert [s.systemd for s in Topology.from_dict(d, lab="mwa").sites] == [True, True]
    d = mutate(lambda d: (d.update(systemd=True), d["sites"][1].update(systemd=False)))
    t = Topology.from_dict(d, lab="mwa")
    assert [s.systemd for s in t.sites] == [True, False]
    # survives the state file round trip (per site)
    assert [s.systemd for s in Topology.from_dict(t.to_dict()).sites] == [True, False]
    with pytest.raises(TopologyError, match="systemd"):
        Topology.from_dict(mutate(lambda d: d["sites"][0].update(systemd="yes")), lab="mwa")
