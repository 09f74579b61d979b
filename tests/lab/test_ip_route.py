"""multiwan.linux.ip_route on a lab gateway; routes and nexthop objects are checked with ``ip -j``."""

from __future__ import annotations

import json
import time

import pytest

WAN1 = {"via": "100.64.1.1", "dev": "wan1"}
PPP0 = {"dev": "ppp0"}
G_MAIN = 0x6E000001
NH_WAN1 = 0x6D000065
NH_PPP0 = 0x6D000066


def routes(gateway, table="all"):
    proc = gateway.sh("ip -4 -j -d -N route show table %s" % table, check=False)
    if proc.returncode != 0 and "FIB table does not exist" in proc.stderr:
        return []  # the kernel creates a table with its first route
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout or "[]")


def default_route(gateway, table="main"):
    found = [r for r in routes(gateway, table) if r["dst"] == "default"]
    return found[0] if found else None


def nexthops(gateway):
    return dict((nh["id"], nh) for nh in gateway.json("ip -j -d -N nexthop show"))


def group_members(gateway, group_id):
    return [(m["id"], m.get("weight", 1)) for m in nexthops(gateway)[group_id]["group"]]


def main_default(weights=(1, 1), **extra):
    args = {"destination": "default", "group_id": G_MAIN,
            "nexthops": [dict(WAN1, weight=weights[0], id=NH_WAN1), dict(PPP0, weight=weights[1], id=NH_PPP0)]}
    args.update(extra)
    return args


@pytest.fixture
def gw(gateway):
    """The gateway; afterwards links are up again and every route/nexthop of ours is gone."""
    yield gateway
    gateway.sh("ip link set wan1 up; ip link set ppp0 up; rm -f /run/multiwan/state.json")
    gateway.sh("ip -4 route flush table all protocol 109; ip -6 route flush table all protocol 109;"
               " ip nexthop flush protocol 109 >/dev/null; ip route del 10.77.0.0/16 table 103 2>/dev/null;"
               " ip nexthop del id 4242 2>/dev/null; true")
    # link down/up flushed the connected routes of the gateway; the kernel re-adds them on up
    assert any(r["dst"] == "100.64.1.0/24" for r in routes(gateway, "main"))


def test_plain_routes_in_uplink_tables(gw):
    wanted = [
        {"table": 101, "destination": "100.64.1.0/24", "nexthops": [{"dev": "wan1"}], "scope": "link", "src": "100.64.1.2"},
        {"table": 101, "destination": "default", "nexthops": [WAN1]},
        {"table": 102, "destination": "default", "nexthops": [PPP0]},
    ]
    first = gw.module("ip_route", {"routes": wanted})
    assert first["changed"] is True
    assert routes(gw, 101) == [
        {"type": "1", "dst": "default", "gateway": "100.64.1.1", "dev": "wan1", "protocol": "109",
         "scope": "0", "flags": []},
        {"type": "1", "dst": "100.64.1.0/24", "dev": "wan1", "protocol": "109", "scope": "253",
         "prefsrc": "100.64.1.2", "flags": []}]
    assert routes(gw, 102) == [{"type": "1", "dst": "default", "dev": "ppp0", "protocol": "109",
                                "scope": "253", "flags": []}]
    assert nexthops(gw) == {}  # one nexthop is a plain route, no objects
    again = gw.module("ip_route", {"routes": wanted})
    assert again["changed"] is False and again["commands"] == []


def test_multipath_create_rerun_and_weight_change_without_gap(gw):
    first = gw.module("ip_route", main_default())
    assert first["changed"] is True
    assert first["commands"] == [
        "nexthop replace id %d via 100.64.1.1 dev wan1 protocol 109" % NH_WAN1,
        "nexthop replace id %d dev ppp0 protocol 109" % NH_PPP0,
        "nexthop replace id %d group %d,1/%d,1 protocol 109" % (G_MAIN, NH_WAN1, NH_PPP0),
        "route replace 0.0.0.0/0 table 254 metric 0 protocol 109 nhid %d" % G_MAIN]
    assert default_route(gw)["nhid"] == G_MAIN
    assert group_members(gw, G_MAIN) == [(NH_WAN1, 1), (NH_PPP0, 1)]
    assert nexthops(gw)[NH_PPP0]["dev"] == "ppp0" and "gateway" not in nexthops(gw)[NH_PPP0]
    assert gw.module("ip_route", main_default())["changed"] is False

    # watch the default route from inside the gateway while the weights change
    gw.sh("rm -f /tmp/mwd-watch.*; (n=0; while [ ! -e /tmp/mwd-watch.stop ]; do"
          " ip -j route show default | grep -q '\"dst\":\"default\"' || echo gap >> /tmp/mwd-watch.gaps;"
          " n=$((n+1)); echo $n > /tmp/mwd-watch.count; done) >/dev/null 2>&1 &")
    time.sleep(0.3)
    try:
        changed = gw.module("ip_route", main_default((2, 1)))
        third = dict(WAN1, via="100.64.1.3", weight=1)
        grown = gw.module("ip_route", main_default((2, 1), nexthops=main_default((2, 1))["nexthops"] + [third]))
        shrunk = gw.module("ip_route", main_default((2, 1)))
        # recreating the group (type change) bridges the route; classic and back replace it in place
        resilient = gw.module("ip_route", main_default((2, 1), group_type="resilient", buckets=16))
        resilient_group = nexthops(gw)[G_MAIN]
        classic = gw.module("ip_route", main_default((2, 1), use_nexthop_objects=False))
        objects_again = gw.module("ip_route", main_default((2, 1)))
        gaps = gw.sh("cat /tmp/mwd-watch.gaps", check=False).stdout
        # control: the watcher does see a route that is deleted and added again
        gw.sh("ip route del default; sleep 0.3; ip route add default nhid %d protocol 109" % G_MAIN)
        time.sleep(0.2)
    finally:
        gw.sh("touch /tmp/mwd-watch.stop; sleep 0.3")
    assert int(gw.read("/tmp/mwd-watch.count")) > 20  # the watcher really ran
    assert gaps == ""
    assert gw.sh("cat /tmp/mwd-watch.gaps").stdout.startswith("gap")
    assert changed["commands"] == ["nexthop replace id %d group %d,2/%d,1 protocol 109" % (G_MAIN, NH_WAN1, NH_PPP0)]
    assert group_members(gw, G_MAIN) == [(NH_WAN1, 2), (NH_PPP0, 1)]
    # adding a member: object first, then the group; removing: group first, then the orphan
    third_id = [m["id"] for m in grown["routes"][0]["members"] if m["via"] == "100.64.1.3"][0]
    assert grown["commands"][0].startswith("nexthop replace id %d via 100.64.1.3 dev wan1" % third_id)
    assert grown["commands"][1].startswith("nexthop replace id %d group" % G_MAIN)
    assert shrunk["commands"] == ["nexthop replace id %d group %d,2/%d,1 protocol 109" % (G_MAIN, NH_WAN1, NH_PPP0),
                                  "nexthop del id %d" % third_id]
    assert third_id not in nexthops(gw)
    assert resilient["commands"][0].startswith("route replace 0.0.0.0/0 table 254 metric 0 protocol 109 nexthop ")
    assert resilient["commands"][1:3] == ["nexthop del id %d" % G_MAIN,
                                          "nexthop add id %d group %d,2/%d,1 type resilient buckets 16 protocol 109"
                                          % (G_MAIN, NH_WAN1, NH_PPP0)]
    assert (resilient_group["type"], resilient_group["resilient_args"]["buckets"]) == ("resilient", 16)
    assert classic["changed"] and objects_again["changed"]
    assert default_route(gw)["nhid"] == G_MAIN and "type" not in nexthops(gw)[G_MAIN]


def test_check_mode_and_diff(gw):
    gw.module("ip_route", main_default())
    before = routes(gw), nexthops(gw)
    result = gw.module("ip_route", main_default((3, 1)), check=True, diff=True)
    assert result["changed"] is True
    assert (routes(gw), nexthops(gw)) == before
    assert result["diff"] == {
        "before": 'nexthop group %d: {"group": [[%d, 1], [%d, 1]], "protocol": 109, "type": "mpath"}\n' % (G_MAIN, NH_WAN1, NH_PPP0),
        "after": 'nexthop group %d: {"group": [[%d, 3], [%d, 1]], "protocol": 109, "type": "mpath"}\n' % (G_MAIN, NH_WAN1, NH_PPP0)}
    unchanged = gw.module("ip_route", main_default(), check=True, diff=True)
    assert unchanged["changed"] is False and unchanged["diff"] == {"before": "", "after": ""}


def test_remove_deletes_route_group_and_orphans(gw):
    gw.module("ip_route", main_default())
    removed = gw.module("ip_route", {"destination": "default", "state": "absent"}, diff=True)
    assert removed["changed"] is True
    assert default_route(gw) is None
    assert nexthops(gw) == {}
    assert "route inet table 254 default metric 0" in removed["diff"]["before"] and removed["diff"]["after"] == ""
    assert gw.module("ip_route", {"destination": "default", "state": "absent"})["changed"] is False


def test_classic_fallback(gw):
    args = main_default((2, 1), use_nexthop_objects=False, table=103)
    first = gw.module("ip_route", args)
    assert first["changed"] is True
    route = default_route(gw, 103)
    assert "nhid" not in route
    assert sorted(route["nexthops"], key=lambda hop: hop["dev"]) == [
        {"dev": "ppp0", "weight": 1, "flags": []}, {"gateway": "100.64.1.1", "dev": "wan1", "weight": 2, "flags": []}]
    assert nexthops(gw) == {}
    assert gw.module("ip_route", args)["changed"] is False
    # switching to nexthop objects keeps the route and replaces it in place
    switched = gw.module("ip_route", dict(args, use_nexthop_objects=True))
    assert switched["changed"] is True and default_route(gw, 103)["nhid"] == G_MAIN
    back = gw.module("ip_route", args)
    assert back["commands"][-3:] == ["nexthop del id %d" % G_MAIN, "nexthop del id %d" % NH_WAN1, "nexthop del id %d" % NH_PPP0]
    assert nexthops(gw) == {} and "nexthops" in default_route(gw, 103)


def test_member_on_a_down_device_is_left_out(gw):
    gw.sh("ip link set ppp0 down")
    result = gw.module("ip_route", main_default())
    assert result["changed"] is True
    assert result["skipped_nexthops"] == [{"route": "route inet table 254 default metric 0", "dev": "ppp0", "via": None,
                                           "reason": "device ppp0 is down"}]
    assert group_members(gw, G_MAIN) == [(NH_WAN1, 1)]
    assert gw.module("ip_route", main_default())["changed"] is False
    gw.sh("ip link set ppp0 up")
    back = gw.module("ip_route", main_default())
    assert back["changed"] is True and back["skipped_nexthops"] == []
    assert group_members(gw, G_MAIN) == [(NH_WAN1, 1), (NH_PPP0, 1)]
    gw.sh("ip link set ppp0 down; ip link set wan1 down")
    before = routes(gw), nexthops(gw)
    failed = gw.module("ip_route", main_default(), expect_failure=True)
    assert failed["msg"].startswith("route inet table 254 default metric 0: no usable nexthop")
    assert "wan1" in failed["msg"] and "ppp0" in failed["msg"]
    assert (routes(gw), nexthops(gw)) == before


def test_health_state_file(gw):
    args = main_default(health_state_file="/run/multiwan/state.json")
    assert gw.module("ip_route", args)["changed"] is True  # missing file: all up
    assert group_members(gw, G_MAIN) == [(NH_WAN1, 1), (NH_PPP0, 1)]
    state = {"uplinks": {"isp1": {"state": "up", "nexthop_ids": [NH_WAN1], "dev": "wan1"},
                         "isp2": {"state": "down", "nexthop_ids": [NH_PPP0], "dev": "ppp0"}}}
    gw.sh("mkdir -p /run/multiwan && cat > /run/multiwan/state.json", input=json.dumps(state))
    held = gw.module("ip_route", args)
    assert held["changed"] is True
    assert held["held_down"] == [{"route": "route inet table 254 default metric 0", "id": NH_PPP0, "dev": "ppp0", "via": None}]
    assert group_members(gw, G_MAIN) == [(NH_WAN1, 1)]
    assert NH_PPP0 in nexthops(gw)  # its nexthop object stays for the watchdog
    assert gw.module("ip_route", args)["changed"] is False
    state["uplinks"]["isp1"]["state"] = "down"  # everyone down: all stay in
    gw.sh("cat > /run/multiwan/state.json", input=json.dumps(state))
    gw.module("ip_route", args)
    assert group_members(gw, G_MAIN) == [(NH_WAN1, 1), (NH_PPP0, 1)]
    gw.sh("echo 'not json' > /run/multiwan/state.json")
    before = routes(gw), nexthops(gw)
    failed = gw.module("ip_route", main_default((3, 1), health_state_file="/run/multiwan/state.json"),
                       expect_failure=True)
    assert failed["msg"].startswith("health_state_file: /run/multiwan/state.json is not a readable state file")
    assert (routes(gw), nexthops(gw)) == before


def test_purge_keeps_foreign_routes(gw):
    gw.sh("ip route add 10.77.0.0/16 table 103 via 100.64.1.1 proto static")
    wanted = [{"table": 103, "destination": "default", "nexthops": [WAN1]},
              {"table": 103, "destination": "10.66.0.0/16", "nexthops": [PPP0]}]
    gw.module("ip_route", {"routes": wanted})
    purged = gw.module("ip_route", {"routes": wanted[:1], "purge": True})
    assert purged["commands"] == ["route del 10.66.0.0/16 table 103 metric 0"]
    assert sorted(r["dst"] for r in routes(gw, 103)) == ["10.77.0.0/16", "default"]


@pytest.mark.parametrize("args, message", [
    ({"destination": "10.1.0.1/24", "nexthops": [WAN1]}, "route: destination: '10.1.0.1/24' is not a valid prefix"),
    ({"destination": "default", "nexthops": [{"via": "2001:db8::1", "dev": "wan1"}], "family": "inet"},
     "route: nexthops[0].via: '2001:db8::1' is not an inet address"),
    ({"destination": "default", "table": "nosuch", "nexthops": [WAN1]}, "route: table: unknown table name 'nosuch'"),
    ({"destination": "default"}, "route: nexthops: at least one nexthop is required"),
    ({"destination": "default", "nexthops": [dict(WAN1, weight=0), PPP0]}, "route: nexthops[0].weight: 0 is out of range"),
    ({"destination": "default", "nexthops": [WAN1, PPP0], "buckets": 8}, "route: buckets/idle_timer only go with group_type resilient"),
    ({"destination": "default", "nexthops": [WAN1], "use_nexthop_objects": "maybe"}, "use_nexthop_objects: 'maybe'"),
    ({"routes": [{"destination": "default", "nexthops": [WAN1]}], "table": 101}, "mutually exclusive: routes|table"),
    ({"routes": [{"destination": "default", "nexthops": [WAN1]}, {"destination": "default", "nexthops": [PPP0]}]},
     "route inet table 254 default metric 0 is listed twice"),
    ({"destination": "default", "nexthops": [dict(WAN1, id=4242), PPP0]},
     "nexthop 4242 (via 100.64.1.1 dev wan1, protocol 109) collides with a live nexthop object we do not own: via 100.64.1.9 dev wan1"),
])
def test_bad_parameters_fail_before_anything_changes(gw, args, message):
    # a route of ours (as a successful run leaves it) and someone else's nexthop object
    gw.sh("ip route replace default via 100.64.1.1 dev wan1 table 101 protocol 109")
    gw.sh("ip nexthop add id 4242 via 100.64.1.9 dev wan1")  # someone else's object (protocol 0)
    before = routes(gw), nexthops(gw)
    result = gw.module("ip_route", args, expect_failure=True)
    assert message in result["msg"]
    assert (routes(gw), nexthops(gw)) == before


def test_plain_route_over_a_missing_device_is_left_out(gw):
    # a PPP interface does not exist while its session is down; the other routes are still made
    result = gw.module("ip_route", {"routes": [{"table": 102, "destination": "default", "nexthops": [{"dev": "mwdppp9"}]},
                                               {"table": 101, "destination": "default", "nexthops": [WAN1]}]})
    assert result["changed"] is True
    assert result["skipped_nexthops"] == [{"route": "route inet table 102 default metric 0", "dev": "mwdppp9",
                                           "via": None, "reason": "device mwdppp9 does not exist"}]
    assert routes(gw, 102) == [] and default_route(gw, 101)["gateway"] == "100.64.1.1"


def test_kernel_error_names_the_object(gw):
    # passes validation, the kernel refuses it: the failing batch line and object are named
    before = routes(gw), nexthops(gw)
    result = gw.module("ip_route", {"table": 101, "destination": "default", "nexthops": [{"via": "100.64.9.1", "dev": "wan1"}]},
                       expect_failure=True)
    assert (routes(gw), nexthops(gw)) == before
    assert result["msg"].startswith("route inet table 101 default metric 0: ip -batch line 1 (route replace 0.0.0.0/0 table 101")
    assert "Nexthop has invalid gateway" in result["msg"]
