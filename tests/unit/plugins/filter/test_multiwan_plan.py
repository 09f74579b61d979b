# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The multiwan_plan filter (and its helpers) on the example inventory and on edge cases.

The plan is what the gateway role hands to the modules, and its watchdog config must give the
watchdog exactly the routes ip_route got (one derivation): checked by loading the config with the
watchdog's own validator.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ansible.errors import AnsibleFilterError
from ansible_collections.multiwan.linux.plugins.filter.multiwan_plan import (
    FilterModule, multiwan_plan, multiwan_purge_tables, multiwan_route_conflicts, multiwan_sysctl_drift)
from ansible_collections.multiwan.linux.plugins.module_utils import _watchdog

REPO = Path(__file__).resolve().parents[4]
EXAMPLE = REPO / "inventories" / "example"


def _example(host):
    data = yaml.safe_load((EXAMPLE / "group_vars" / "gateways.yml").read_text())
    data.update(yaml.safe_load((EXAMPLE / "host_vars" / ("%s.yml" % host)).read_text()))
    return dict((k, v) for k, v in data.items() if k.startswith("multiwan_"))


def _two_uplinks(**changes):
    data = {
        "multiwan_lan_networks": ["10.1.0.0/24"],
        "multiwan_uplinks": [
            {"name": "isp1", "interface": "wan1", "address": "100.64.1.2/24", "gateway": "100.64.1.1",
             "table": 101, "weight": 2, "probe_targets": ["198.18.0.1", "198.18.0.2"]},
            {"name": "isp2", "interface": "ppp0", "address": "100.64.2.2/32", "table": 102,
             "probe_targets": ["198.18.0.1"]},
        ],
    }
    data.update(changes)
    return data


@pytest.mark.parametrize("host", ["gw-north", "gw-south", "gw-east"])
def test_example_inventory_plans(host):
    plan = multiwan_plan(_example(host), host=host)
    uplinks = _example(host)["multiwan_uplinks"]
    assert plan["host"] == host
    assert plan["families"] == ["inet"]
    assert plan["rt_tables"] == [{"name": u["name"], "id": u["table"]} for u in uplinks]
    # one source rule per uplink at 3000 + table, LAN rules at 1000 first
    lan_rules = [r for r in plan["rules"] if r["priority"] == 1000]
    assert [r["to"] for r in lan_rules] == _example(host)["multiwan_lan_networks"]
    assert all(r["table"] == "main" for r in lan_rules)
    assert [(r["priority"], r["from"], r["table"]) for r in plan["rules"] if r["priority"] >= 3000] == [
        (3000 + u["table"], u["address"].split("/")[0], str(u["table"])) for u in uplinks]
    # sticky connections (default on): fwmark <table << 16>/0x00ff0000 lookup <table> at 2000 + table
    assert [(r["priority"], r["fwmark"], r["fwmask"], r["table"]) for r in plan["rules"]
            if 2000 <= r["priority"] < 3000] == [
        (2000 + u["table"], hex(u["table"] << 16), "0xff0000", str(u["table"])) for u in uplinks]
    # the weighted default in main: explicit ids from design.md, weights from the inventory
    group = [r for r in plan["main_routes"] if r["destination"] == "default"]
    assert len(group) == 1
    assert group[0]["group_id"] == 0x6E000001
    assert group[0]["table"] == "main" and group[0]["metric"] == 0
    assert [(h["id"], h["weight"], h["dev"], h.get("via")) for h in group[0]["nexthops"]] == [
        (0x6D000000 + u["table"], u.get("weight", 1), u["interface"], u.get("gateway")) for u in uplinks]
    # every uplink table has a default route over that uplink only
    for u in uplinks:
        defaults = [r for r in plan["table_routes"] if r["table"] == str(u["table"]) and r["destination"] == "default"]
        assert len(defaults) == 1
        expect = {"via": u["gateway"], "dev": u["interface"]} if "gateway" in u else {"dev": u["interface"]}
        assert defaults[0]["nexthops"] == [expect]
    assert plan["sysctls"]["net.ipv4.ip_forward"] == "1"
    assert plan["sysctls"]["net.ipv4.conf.all.rp_filter"] == "2"
    assert plan["sysctls"]["net.ipv4.fib_multipath_hash_policy"] == "3"
    assert plan["sysctls"]["net.ipv4.fib_multipath_hash_fields"] == "0x0037"
    assert plan["sysctls"]["net.ipv4.fib_multipath_use_neigh"] == "1"
    for u in uplinks:
        assert plan["sysctls"]["net.ipv4.conf.%s.rp_filter" % u["interface"]] == "2"
    assert not any(k.startswith("net.ipv6") for k in plan["sysctls"])
    assert plan["nat"]["family"] == "ip"
    assert plan["nat"]["source_networks"] == _example(host)["multiwan_lan_networks"]
    assert plan["nat"]["exclude_destinations"] == _example(host)["multiwan_lan_networks"]
    assert plan["health_state_file"] == ["/run/multiwan/state.json"]
    assert plan["watchdog6"] is None
    json.dumps(plan)  # plain data only


def test_south_details():
    plan = multiwan_plan(_example("gw-south"), host="gw-south")
    # connected prefixes in the uplink tables, with scope link and the uplink address as source
    subnets = [(r["table"], r["destination"], r["src"], r.get("scope")) for r in plan["table_routes"]
               if r["destination"] != "default"]
    assert subnets == [("101", "100.64.30.0/29", "100.64.30.2", "link"),
                       ("102", "100.64.40.0/24", "100.64.40.10", "link"),
                       ("103", "100.64.50.4/30", "100.64.50.6", "link")]
    # the exam board's prefix is pinned to fibre in main
    pinned = [r for r in plan["main_routes"] if r["destination"] != "default"]
    assert pinned == [{"table": "main", "destination": "198.18.7.0/24", "family": "inet", "metric": 0,
                       "nexthops": [{"via": "100.64.30.1", "dev": "wan1"}]}]
    # snat for fibre (static address), masquerade for the others; sorted by interface
    assert plan["nat"]["uplinks"] == [{"interface": "wan1", "snat_address": "100.64.30.2", "mark": 101 << 16},
                                      {"interface": "wan2", "mark": 102 << 16}, {"interface": "wan3", "mark": 103 << 16}]
    assert plan["nat"]["mark_mask"] == 0x00FF0000
    assert plan["nat"]["port_forwards"] == [{"interface": "wan1", "protocol": "tcp", "port": 443, "to": "10.21.0.10"}]
    assert plan["nat"]["source_networks"] == ["10.20.0.0/24", "10.21.0.0/24"]
    assert plan["route_tables"] == [101, 102, 103, 254]
    assert [u["mark"] for u in plan["uplinks"]] == [101 << 16, 102 << 16, 103 << 16]
    assert [u["mark_rule_priority"] for u in plan["uplinks"]] == [2101, 2102, 2103]


def test_device_only_uplink():
    plan = multiwan_plan(_example("gw-east"), host="gw-east")
    ppp = [r for r in plan["table_routes"] if r["table"] == "102"]
    # the peer of the /32 is on-link; the default route names the device
    assert ppp == [
        {"table": "102", "destination": "100.64.70.1/32", "family": "inet", "metric": 0,
         "nexthops": [{"dev": "ppp0"}], "src": "100.64.70.2", "scope": "link"},
        {"table": "102", "destination": "default", "family": "inet", "metric": 0, "nexthops": [{"dev": "ppp0"}]},
    ]
    hop = plan["main_routes"][-1]["nexthops"][1]
    assert hop == {"dev": "ppp0", "weight": 1, "id": 0x6D000066}
    wd_uplink = plan["watchdog"]["uplinks"][1]
    assert "gateway" not in wd_uplink


def test_device_only_without_peer_has_no_connected_route():
    plan = multiwan_plan(_two_uplinks())
    assert [r["destination"] for r in plan["table_routes"] if r["table"] == "102"] == ["default"]


def test_watchdog_gets_exactly_the_routes_of_ip_route():
    for host in ("gw-north", "gw-south", "gw-east"):
        data = _example(host)
        data["multiwan_watchdog"] = {"interval": 0.2, "down_after": 5}
        plan = multiwan_plan(data, host=host)
        config = plan["watchdog"]
        loaded = _watchdog.load_config(copy.deepcopy(config))     # the watchdog's own validation
        assert config["interval"] == 0.2 and config["down_after"] == 5
        assert config["state_file"] in plan["health_state_file"]
        assert config["group"]["id"] == 0x6E000001 and config["protocol"] == 109
        applied = plan["table_routes"] + plan["main_routes"]
        group = [r for r in applied if r.get("group_id")][0]
        own = [r for r in applied if not r.get("group_id")]
        # every route ip_route gets (except the group) is the route of exactly one watchdog uplink,
        # the very same dict
        assert sorted((json.dumps(r, sort_keys=True) for u in config["uplinks"] for r in u["routes"])) == \
            sorted(json.dumps(r, sort_keys=True) for r in own)
        for up, hop in zip(loaded.uplinks, group["nexthops"]):
            assert up.group_hop()["id"] == hop["id"]
            assert up.group_hop()["weight"] == hop["weight"]
            assert up.group_hop()["dev"] == hop["dev"] and up.group_hop()["via"] == hop.get("via")


def test_watchdog_cannot_override_what_the_plan_owns():
    data = _two_uplinks(multiwan_watchdog={"state_file": "/tmp/x", "protocol": 7, "group": {}, "uplinks": [],
                                           "timeout": 0.5})
    with pytest.raises(AnsibleFilterError) as err:
        multiwan_plan(data)
    for key in ("state_file", "protocol", "group", "uplinks"):
        assert "multiwan_watchdog.%s: is computed by the role" % key in str(err.value)
    config = multiwan_plan(_two_uplinks(multiwan_watchdog={"timeout": 0.5}))["watchdog"]
    assert config["state_file"] == "/run/multiwan/state.json"
    assert config["protocol"] == 109 and config["group"]["id"] == 0x6E000001
    assert len(config["uplinks"]) == 2 and config["timeout"] == 0.5


def test_per_uplink_watchdog_overrides_reach_the_config():
    data = _two_uplinks(multiwan_watchdog={"down_after": 5})
    data["multiwan_uplinks"][1]["watchdog"] = {"timeout": 1.5, "up_after": 40}
    config = multiwan_plan(data)["watchdog"]
    assert config["down_after"] == 5
    assert "timeout" not in config["uplinks"][0]
    assert config["uplinks"][1]["timeout"] == 1.5 and config["uplinks"][1]["up_after"] == 40


def test_ipv6_uplink():
    data = _two_uplinks()
    data["multiwan_lan_networks"] = ["10.1.0.0/24", "2001:db8:1::/64"]
    data["multiwan_uplinks"].append(
        {"name": "v6", "interface": "wan6", "address": "2001:db8:101::2/64", "gateway": "fe80::1", "table": 106,
         "weight": 3, "probe_targets": ["2001:db8:ffff::1"], "routes": ["2001:db8:ffff:7::/64"]})
    plan = multiwan_plan(data, host="gw6")
    assert plan["families"] == ["inet", "inet6"]
    v6 = [r for r in plan["table_routes"] if r["family"] == "inet6"]
    assert v6 == [
        {"table": "106", "destination": "2001:db8:101::/64", "family": "inet6", "metric": 1024,
         "nexthops": [{"dev": "wan6"}], "src": "2001:db8:101::2"},
        {"table": "106", "destination": "default", "family": "inet6", "metric": 1024,
         "nexthops": [{"via": "fe80::1", "dev": "wan6"}]},
    ]
    groups = dict((r["family"], r) for r in plan["main_routes"] if r.get("group_id"))
    assert groups["inet"]["group_id"] == 0x6E000001 and len(groups["inet"]["nexthops"]) == 2
    assert groups["inet6"]["group_id"] == 0x6E000002 and groups["inet6"]["metric"] == 1024
    assert groups["inet6"]["nexthops"] == [{"via": "fe80::1", "dev": "wan6", "weight": 3, "id": 0x6D100000 + 106}]
    assert {"priority": 3106, "from": "2001:db8:101::2", "table": "106"} in plan["rules"]
    assert {"priority": 1000, "to": "2001:db8:1::/64", "table": "main"} in plan["rules"]
    assert plan["sysctls"]["net.ipv6.conf.all.forwarding"] == "1"
    assert plan["sysctls"]["net.ipv6.fib_multipath_hash_policy"] == "3"
    assert plan["sysctls"]["net.ipv6.fib_multipath_hash_fields"] == "0x0037"
    assert "net.ipv4.conf.wan6.rp_filter" not in plan["sysctls"]
    assert plan["nat"]["family"] == "inet"
    assert plan["nat"]["source_networks"] == ["10.1.0.0/24", "2001:db8:1::/64"]
    assert plan["watchdog6"]["state_file"] == "/run/multiwan/state6.json"
    assert plan["watchdog6"]["group"]["family"] == "inet6"
    _watchdog.load_config(copy.deepcopy(plan["watchdog6"]))
    _watchdog.load_config(copy.deepcopy(plan["watchdog"]))


def test_ipv6_only_nat_family():
    data = {"multiwan_lan_networks": ["2001:db8:1::/64"], "multiwan_uplinks": [
        {"name": "a", "interface": "wan1", "address": "2001:db8:101::2/64", "gateway": "2001:db8:101::1",
         "table": 101, "probe_targets": ["2001:db8:ffff::1"]},
        {"name": "b", "interface": "ppp0", "address": "2001:db8:102::2/128", "table": 102,
         "probe_targets": ["2001:db8:ffff::1"]}]}
    plan = multiwan_plan(data)
    assert plan["families"] == ["inet6"] and plan["nat"]["family"] == "ip6"
    assert plan["watchdog"] is None and plan["watchdog6"] is not None
    assert plan["health_state_file"] == ["/run/multiwan/state6.json"]


def test_vlan_interface_sysctl_key():
    data = _two_uplinks()
    data["multiwan_uplinks"][0]["interface"] = "eth0.100"
    assert multiwan_plan(data)["sysctls"]["net.ipv4.conf.eth0/100.rp_filter"] == "2"


def test_duplicates_are_listed_once():
    data = _two_uplinks()
    data["multiwan_uplinks"][0]["probe_targets"] = ["198.18.0.1", "198.18.0.1"]
    data["multiwan_uplinks"][0]["routes"] = ["198.18.7.0/24", "198.18.7.0/24"]
    plan = multiwan_plan(data)
    assert [r["destination"] for r in plan["main_routes"]] == ["198.18.7.0/24", "default"]
    assert plan["watchdog"]["uplinks"][0]["probe_targets"] == ["198.18.0.1"]


def test_invalid_inventory_is_refused():
    data = _two_uplinks()
    data["multiwan_uplinks"][0]["gateway"] = "100.64.9.1"
    with pytest.raises(AnsibleFilterError, match=r"gw-x: multiwan_uplinks\[0\] \(isp1\)\.gateway"):
        multiwan_plan(data, host="gw-x")
    with pytest.raises(AnsibleFilterError, match="mapping"):
        multiwan_plan(["nope"])


def test_weight_256_is_refused_until_ip_route_accepts_it():
    data = _two_uplinks()
    data["multiwan_uplinks"][0]["weight"] = 256
    with pytest.raises(AnsibleFilterError, match=r"gw-x: multiwan_uplinks \(isp1\)\.weight: 256"):
        multiwan_plan(data, host="gw-x")
    data["multiwan_uplinks"][0]["weight"] = 255
    assert multiwan_plan(data)["main_routes"][-1]["nexthops"][0]["weight"] == 255


def _live(*routes):
    return json.dumps(list(routes))


def test_route_conflicts():
    plan = multiwan_plan(_two_uplinks(), host="gw")
    kernel = {"type": "1", "dst": "100.64.1.0/24", "dev": "wan1", "table": "254", "protocol": "2", "scope": "253"}
    ours = {"type": "1", "dst": "default", "nhid": 1845493761, "table": "254", "protocol": "109"}
    assert multiwan_route_conflicts(plan, _live(kernel, ours)) == []
    foreign = {"type": "1", "dst": "default", "gateway": "192.168.0.1", "dev": "mgmt0", "table": "254",
               "protocol": "4", "flags": []}
    problems = multiwan_route_conflicts(plan, _live(kernel, foreign))
    assert len(problems) == 1
    assert "gw: table main already holds default via 192.168.0.1 dev mgmt0 metric 0 (proto 4)" in problems[0]
    # at another metric (a management default route by DHCP) it is left alone, and not a conflict
    assert multiwan_route_conflicts(plan, _live(dict(foreign, metric=100))) == []
    # in an uplink table
    table = {"type": "1", "dst": "default", "dev": "wan1", "table": "101", "protocol": "3"}
    assert "table 101 already holds default dev wan1" in multiwan_route_conflicts(plan, [table])[0]
    # local/broadcast routes never conflict
    assert multiwan_route_conflicts(plan, [dict(table, type="2")]) == []
    with pytest.raises(AnsibleFilterError):
        multiwan_route_conflicts({}, "[]")


def test_route_conflicts_ipv6_metric():
    data = {"multiwan_lan_networks": ["2001:db8:1::/64"], "multiwan_uplinks": [
        {"name": "a", "interface": "wan1", "address": "2001:db8:101::2/64", "gateway": "fe80::1",
         "table": 101, "probe_targets": ["2001:db8:ffff::1"]}]}
    plan = multiwan_plan(data)
    foreign = {"type": "1", "dst": "default", "gateway": "fe80::9", "dev": "wan1", "table": "254",
               "protocol": "9", "metric": 1024}
    assert len(multiwan_route_conflicts(plan, "[]", _live(foreign))) == 1
    assert multiwan_route_conflicts(plan, "[]", _live(dict(foreign, metric=100))) == []


def test_purge_tables():
    plan = multiwan_plan(_two_uplinks())
    assert multiwan_purge_tables(plan, "[]") == ["101", "102", "254"]
    stale = {"type": "1", "dst": "default", "dev": "wan3", "table": "103", "protocol": "109"}
    other = {"type": "1", "dst": "default", "dev": "wan3", "table": "150", "protocol": "4"}
    assert multiwan_purge_tables(plan, _live(stale, other), "") == ["101", "102", "103", "254"]


def test_sysctl_drift():
    plan = multiwan_plan(_two_uplinks())
    live = "\n".join("%s = %s" % (k, v) for k, v in plan["sysctls"].items())
    assert multiwan_sysctl_drift(plan, live) == []
    assert multiwan_sysctl_drift(plan, live.replace("net.ipv4.ip_forward = 1", "net.ipv4.ip_forward = 0")) == [
        "net.ipv4.ip_forward"]
    # numbers are compared as numbers (the kernel prints the hash fields in decimal)
    assert multiwan_sysctl_drift(plan, live.replace("0x0037", "55")) == []
    assert multiwan_sysctl_drift(plan, live.replace("0x0037", "7")) == ["net.ipv4.fib_multipath_hash_fields"]
    # a key the kernel does not have (PPP device not up yet) is not drift
    missing = "\n".join(line for line in live.split("\n") if "ppp0" not in line)
    assert multiwan_sysctl_drift(plan, missing) == []


def test_filters_registered():
    assert set(FilterModule().filters()) == {
        "multiwan_plan", "multiwan_route_conflicts", "multiwan_purge_tables", "multiwan_sysctl_drift"}


def test_sticky_connections_off_and_port_forwards():
    data = _two_uplinks(multiwan_sticky_connections="false",  # as `-e multiwan_sticky_connections=false` gives it
                        multiwan_port_forwards=[{"uplink": "isp2", "port": 8080, "to": "10.1.0.10", "to_port": 80},
                                                {"uplink": "isp1", "protocol": "udp", "port": 5060, "to": "10.1.0.11"}])
    plan = multiwan_plan(data)
    assert not [r for r in plan["rules"] if "fwmark" in r]
    assert all("mark" not in u for u in plan["nat"]["uplinks"])
    interfaces = dict((u["name"], u["interface"]) for u in data["multiwan_uplinks"])
    assert plan["nat"]["port_forwards"] == [
        {"interface": interfaces["isp2"], "protocol": "tcp", "port": 8080, "to": "10.1.0.10", "to_port": 80},
        {"interface": interfaces["isp1"], "protocol": "udp", "port": 5060, "to": "10.1.0.11"}]
    # the fwmark rules go to the watchdog's config too (restored at boot), with their family
    sticky = multiwan_plan(_two_uplinks())
    assert [r["priority"] for r in sticky["watchdog"]["rules"] if "fwmark" in r] == [
        r["priority"] for r in sticky["rules"] if "fwmark" in r]
