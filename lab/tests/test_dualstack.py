"""Dual-stack lab (topologies/dual-stack.yml): IPv6 on LAN and uplinks, incl. link-local and
device-only IPv6 gateways, BCP38 for IPv6, failures keep IPv6 working after restore (root)."""

from __future__ import annotations

import pytest

from conftest import LAB, TOPOLOGIES, ip_json, needs_root, ping, sh

pytestmark = needs_root

H6 = "2001:db8:ffff::1"


@pytest.fixture(scope="module")
def lab6():
    from mwlab import Lab

    lab = Lab(LAB)
    lab.up(TOPOLOGIES / "dual-stack.yml")
    try:
        yield lab
    finally:
        lab.down()


def test_ipv6_addresses_and_reachability(lab6):
    addrs = {a["ifname"]: {f"{i['local']}/{i['prefixlen']}" for i in a["addr_info"] if i["family"] == "inet6"}
             for a in ip_json(lab6, "d1", "gw", "addr")}
    assert "2001:db8:5::1/64" in addrs["lan0"] and "2001:db8:105::2/64" in addrs["wan1"]
    assert "2001:db8:107::2/128" in addrs["ppp0"]
    assert not [r for r in ip_json(lab6, "d1", "gw", "-6", "route", "show", "table", "all") if r["dst"] == "default"]
    assert ping(lab6, "d1", "c1", "2001:db8:5::1", wait=2)
    assert ping(lab6, "d1", "gw", "2001:db8:105::1", wait=2)
    assert ping(lab6, "d1", "gw", "fe80::1%wan2", wait=2)
    for isp in ("isp1", "isp2", "isp3"):
        assert ping(lab6, "d1", isp, "2001:db8:ffff:7::1", wait=2)


@pytest.mark.parametrize("isp,dev,via,src", [
    ("isp1", "wan1", "via 2001:db8:105::1", "2001:db8:105::2"),
    ("isp2", "wan2", "via fe80::1", "2001:db8:106::2"),
    ("isp3", "ppp0", "", "2001:db8:107::2"),
])
def test_ipv6_routing_back_and_bcp38(lab6, isp, dev, via, src):
    assert sh(lab6, "d1", "gw", "sh", "-c", f"ip -6 route replace {H6}/128 {via} dev {dev}").returncode == 0
    try:
        assert ping(lab6, "d1", "gw", H6, src=src, wait=2)
        before = lab6.counters("d1", isp)["bcp38_drop"]
        assert not ping(lab6, "d1", "gw", H6, src="2001:db8:5::1", wait=0.5, tries=1)
        assert lab6.counters("d1", isp)["bcp38_drop"] == before + 1
    finally:
        sh(lab6, "d1", "gw", "ip", "-6", "route", "del", f"{H6}/128")


@pytest.mark.parametrize("mode", ["link", "upstream"])
def test_ipv6_survives_fail_restore(lab6, mode):
    lab6.fail("d1", "isp2", mode)
    lab6.restore("d1", "isp2")
    assert "fe80::1/64" in {f"{i['local']}/{i['prefixlen']}" for i in
                            ip_json(lab6, "d1", "isp2", "addr", "show", "dev", "cust")[0]["addr_info"]}
    sh(lab6, "d1", "gw", "ip", "-6", "route", "replace", f"{H6}/128", "via", "fe80::1", "dev", "wan2")
    try:
        assert ping(lab6, "d1", "gw", H6, src="2001:db8:106::2", wait=2)
        assert ping(lab6, "d1", "isp2", "2001:db8:ffff:7::1", wait=2)
    finally:
        sh(lab6, "d1", "gw", "ip", "-6", "route", "del", f"{H6}/128")


def test_ipv6_inventory(lab6):
    h = lab6.inventory()["all"]["children"]["gateways"]["hosts"]["d1"]
    assert h["multiwan_lan_networks"] == ["10.5.0.0/24", "2001:db8:5::/64"]
    u1, u2, u3 = h["multiwan_uplinks"]
    assert (u1["address6"], u1["gateway6"], u2["gateway6"]) == ("2001:db8:105::2/64", "2001:db8:105::1", "fe80::1")
    assert u3["address6"] == "2001:db8:107::2/128" and "gateway6" not in u3 and "gateway" not in u3
    assert u1["probe_targets6"] == ["2001:db8:ffff::1", "2001:db8:ffff::2", "2001:db8:ffff::3"]
