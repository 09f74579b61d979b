# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsing and planning of _iproute against JSON captured from iproute2 6.1 on kernel 6.x.

The fixtures were captured in a lab namespace (see fixtures/iproute/README.md) with
``ip -n NS -4|-6 -j -d -N rule|route show ...``, ``ip -n NS -j -d -N nexthop show`` and
``ip -n NS -j link show``.  ``wan3`` is up without carrier there.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ansible_collections.multiwan.linux.plugins.module_utils import _iproute as I

FIXTURES = Path(__file__).parent / "fixtures" / "iproute"

G_MAIN = 1845493761     # live group: 1828716545 (via 100.64.1.1 dev wan1) weight 2 + 1828716546 (dev ppp0)
NH_WAN1 = 1828716545
NH_PPP0 = 1828716546


def load(name):
    return json.loads((FIXTURES / name).read_text())


class FakeRunner(object):
    """Serves the captured JSON (of ``capture``, a folder of fixtures/iproute) for the argv
    ``IpRoute`` uses; records batches and every command."""

    def __init__(self, batch_rc=0, batch_err="", capture=""):
        self.batches = []
        self.commands = []
        self.batch_rc = batch_rc
        self.batch_err = batch_err
        self.capture = capture

    def __call__(self, argv, data=None):
        args = argv[1:]
        self.commands.append(" ".join(args))
        if "-batch" in args:
            self.batches.append((args[:-2], data))
            return self.batch_rc, "", self.batch_err
        text = " ".join(args)
        table = {
            "-j -d -N -4 rule show": "rule_inet.json",
            "-j -d -N -6 rule show": "rule_inet6.json",
            "-j -d -N -4 route show table all": "route_inet.json",
            "-j -d -N -6 route show table all": "route_inet6.json",
            "-j -d -N nexthop show": "nexthop_all.json",
            "-j -d -N -6 nexthop show": "nexthop_inet6.json",
            "-j nexthop show": "nexthop_all.json",
            "-j link show": "link.json",
        }
        return 0, (FIXTURES / self.capture / table[text]).read_text(), ""


def read_live(runner):
    ipr = I.IpRoute(runner=runner)
    return {"routes": [r for f in I.FAMILIES for r in ipr.routes(f)], "nexthops": ipr.nexthops(), "links": ipr.links()}


@pytest.fixture
def runner():
    return FakeRunner()


@pytest.fixture
def live(runner):
    return read_live(runner)


@pytest.fixture
def rules(runner):
    ipr = I.IpRoute(runner=runner)
    return [r for f in I.FAMILIES for r in ipr.rules(f)]


def by_priority(rules, family, priority):
    return [r for r in rules if r["family"] == family and r["priority"] == priority]


# -- parsing --------------------------------------------------------------------------------

def test_rules_parse_to_canonical_forms(rules):
    lan = by_priority(rules, "inet", 1000)[0]
    assert lan == {"family": "inet", "priority": 1000, "from": None, "to": "10.1.0.0/24", "fwmark": None,
                   "fwmask": None, "iif": None, "oif": None, "action": "lookup", "table": 254,
                   "suppress_prefixlength": None, "protocol": 109}
    mark = by_priority(rules, "inet", 2101)[0]
    assert (mark["fwmark"], mark["fwmask"], mark["table"]) == (0x650000, 0xFF0000, 101)
    # fwmark without mask: ip prints no fwmask, the kernel's mask is all ones
    assert by_priority(rules, "inet", 504)[0]["fwmask"] == 0xFFFFFFFF
    # a host source shows without srclen
    assert by_priority(rules, "inet", 3101)[0]["from"] == "100.64.1.2/32"
    assert by_priority(rules, "inet6", 3101)[0]["from"] == "2001:db8:1::2/128"
    assert by_priority(rules, "inet", 3102)[0]["iif"] == "lo"
    assert by_priority(rules, "inet", 3102)[0]["protocol"] == 0
    assert [by_priority(rules, "inet", p)[0]["action"] for p in (500, 501, 502)] == ["unreachable", "prohibit", "blackhole"]
    assert by_priority(rules, "inet", 500)[0]["table"] is None
    assert by_priority(rules, "inet", 503)[0]["suppress_prefixlength"] == 0
    assert by_priority(rules, "inet", 505)[0]["extra"] == [("l3mdev", None)]
    assert by_priority(rules, "inet", 506)[0]["extra"] == [("not", None), ("ipproto", "ipproto-6"), ("dport", 80)]


def test_kernel_rules_are_recognised(rules):
    kernel = [(r["family"], r["priority"]) for r in rules if I.is_kernel_rule(r)]
    assert kernel == [("inet", 0), ("inet", 32766), ("inet", 32767), ("inet6", 0), ("inet6", 32766)]


def test_routes_parse(live):
    routes = dict((I.route_key(r), r) for r in live["routes"])
    assert routes[("inet", 101, "default", 10)]["nexthops"] == [
        {"via": "100.64.1.1", "dev": "wan1", "weight": 1, "onlink": False}]
    connected = routes[("inet", 101, "100.64.1.0/24", 0)]
    assert (connected["scope"], connected["src"], connected["protocol"]) == (253, "100.64.1.2", 109)
    assert routes[("inet", 102, "default", 0)]["nexthops"] == [{"via": None, "dev": "ppp0", "weight": 1, "onlink": False}]
    assert routes[("inet", 103, "default", 0)]["nexthops"] == [
        {"via": None, "dev": "ppp0", "weight": 1, "onlink": False},
        {"via": "100.64.1.1", "dev": "wan1", "weight": 2, "onlink": False}]
    assert routes[("inet", 103, "10.60.0.0/16", 0)]["nexthops"][0]["onlink"] is True
    main = routes[("inet", 254, "default", 0)]
    assert main["nhid"] == G_MAIN and "nexthops" not in main
    assert routes[("inet", 255, "127.0.0.1/32", 0)]["type"] == "local"
    # IPv6: metric 1024 is what the kernel stores by default
    assert routes[("inet6", 103, "default", 1024)]["nexthops"][0] == {
        "via": "fe80::1", "dev": "ppp0", "weight": 1, "onlink": False}


def test_nexthops_parse(live):
    nhs = live["nexthops"]
    assert nhs[NH_WAN1] == {"id": NH_WAN1, "protocol": 109, "family": "inet", "via": "100.64.1.1", "dev": "wan1", "onlink": False}
    assert nhs[NH_PPP0]["family"] == "inet" and nhs[NH_PPP0]["via"] is None
    # a device-only IPv6 nexthop is only recognisable through ``ip -6 nexthop show``
    assert nhs[1828716548]["family"] == "inet6"
    assert nhs[1828716549]["onlink"] is True and nhs[1828716549]["protocol"] == 0
    assert nhs[G_MAIN]["group"] == [(NH_WAN1, 2), (NH_PPP0, 1)]  # weight 1 is not printed
    resilient = nhs[1845493762]
    assert (resilient["type"], resilient["buckets"], resilient["idle_timer"]) == ("resilient", 32, 60)


def test_links_usable(live):
    assert live["links"]["wan1"] == "up" and live["links"]["ppp0"] == "up"
    assert live["links"]["wan3"] == "no-carrier"  # up, NO-CARRIER
    assert I.parse_links([{"ifname": "x", "flags": ["BROADCAST"]}]) == {"x": "down"}


def test_normalize_prefix():
    assert I.normalize_prefix("0.0.0.0/0") == "default"
    assert I.normalize_prefix("::/0", "inet6") == "default"
    assert I.normalize_prefix("10.1.0.0/24") == "10.1.0.0/24"
    assert I.normalize_prefix("100.64.1.2") == "100.64.1.2/32"
    assert I.normalize_prefix("all", default_word=False) is None
    with pytest.raises(ValueError, match="host bits"):
        I.normalize_prefix("10.1.0.1/24")
    with pytest.raises(ValueError, match="not an inet6 prefix"):
        I.normalize_prefix("10.1.0.0/24", "inet6")


def test_name_tables_read_like_ip(tmp_path):
    (tmp_path / "etc/iproute2/rt_tables.d").mkdir(parents=True)
    (tmp_path / "etc/iproute2/rt_tables").write_text("255 local\n254 main\n# 7 commented\n100 isp0 # comment\n")
    (tmp_path / "etc/iproute2/rt_tables.d/multiwan.conf").write_text("101 isp1\n0x66 isp2\n")
    (tmp_path / "etc/iproute2/rt_tables.d/ignored.txt").write_text("103 isp3\n")
    (tmp_path / "etc/iproute2/rt_protos.d").mkdir()
    (tmp_path / "etc/iproute2/rt_protos.d/multiwan.conf").write_text("109 multiwan\n")
    names = I.Names(str(tmp_path))
    assert [names.table(x) for x in ("main", "isp0", "isp1", "isp2", "7", "0x10", "010")] == [254, 100, 101, 102, 7, 16, 8]
    assert names.protocol("multiwan") == 109 and names.protocol("static") == 4
    with pytest.raises(ValueError, match="unknown table name 'isp3'"):
        names.table("isp3")
    with pytest.raises(ValueError, match="outside 0..255"):
        names.protocol(300)
    with pytest.raises(ValueError, match="outside 0..255"):
        names.protocol("0x100")


def test_usr_share_is_only_the_fallback(tmp_path):
    (tmp_path / "usr/share/iproute2").mkdir(parents=True)
    (tmp_path / "usr/share/iproute2/rt_tables").write_text("42 vendor\n")
    assert I.Names(str(tmp_path)).table("vendor") == 42
    (tmp_path / "etc/iproute2").mkdir(parents=True)
    (tmp_path / "etc/iproute2/rt_tables").write_text("43 admin\n")
    with pytest.raises(ValueError):
        I.Names(str(tmp_path)).table("vendor")


# -- builders -------------------------------------------------------------------------------

def test_default_ids_follow_design_md():
    import zlib
    assert I.default_nexthop_id("inet", "wan1", "100.64.1.1") == 0x6D000000 | (zlib.crc32(b"inet|wan1|100.64.1.1") & 0xFFFFFF)
    assert I.default_nexthop_id("inet", "ppp0", None) == 0x6D000000 | (zlib.crc32(b"inet|ppp0|") & 0xFFFFFF)
    assert I.default_group_id("inet", 254, "default") == 0x6E000000 | (zlib.crc32(b"inet|254|default") & 0xFFFFFF)


def test_set_group_members_is_one_replace_line():
    assert I.set_group_members(0x6E000001, [(0x6D000065, 2), (0x6D000066, 1)]) == \
        "nexthop replace id 1845493761 group 1828716645,2/1828716646,1 protocol 109"
    with pytest.raises(I.IpRouteError):
        I.set_group_members(1, [])


def test_rule_lines_round_trip(rules):
    lines = [I.rule_line("add", r) for r in rules if r["priority"] in (504, 505, 506, 2101, 3102)]
    assert lines == [
        "rule add priority 504 from all fwmark 0x7/0xffffffff lookup 200",
        "rule add priority 505 l3mdev from all protocol 109",
        "rule add priority 506 not ipproto 6 dport 80 from 1.2.3.0/24 lookup 100",
        "rule add priority 2101 from all fwmark 0x650000/0xff0000 lookup 101 protocol 109",
        "rule add priority 3102 from 100.64.2.2/32 iif lo oif wan1 lookup 102",
        "rule add priority 2101 from all fwmark 0x650000/0xff0000 lookup 101 protocol 109",
    ]


# -- rule planning --------------------------------------------------------------------------

def want_rule(**kw):
    rule = {"family": "inet", "priority": 1000, "from": None, "to": None, "fwmark": None, "fwmask": None,
            "iif": None, "oif": None, "action": "lookup", "table": 254, "suppress_prefixlength": None,
            "protocol": 109, "state": "present"}
    rule.update(kw)
    return rule


OURS = [want_rule(to="10.1.0.0/24"),
        want_rule(priority=2101, fwmark=0x650000, fwmask=0xFF0000, table=101),
        want_rule(priority=3101, **{"from": "100.64.1.2/32", "table": 101}),
        want_rule(priority=505, table=None, extra=[("l3mdev", None)])]


def test_rules_unchanged_plan_nothing(rules):
    plan = I.plan_rules(rules, OURS[:3], purge=False)
    assert not plan and plan.lines == []


def test_rule_change_adds_before_deleting(rules):
    plan = I.plan_rules(rules, [want_rule(priority=3101, table=102, **{"from": "100.64.1.2/32"})])
    assert plan.batch_text() == [
        "-4 rule add priority 3101 from 100.64.1.2/32 lookup 102 protocol 109",
        "-4 rule del priority 3101 from 100.64.1.2/32 lookup 101 protocol 109"]
    assert plan.replace == [("rule inet priority 3101 from 100.64.1.2/32",
                             {"action": "lookup", "table": 101, "suppress_prefixlength": None, "protocol": 109},
                             {"action": "lookup", "table": 102, "suppress_prefixlength": None, "protocol": 109})]


def test_purge_deletes_only_ours_and_never_kernel_rules(rules):
    plan = I.plan_rules(rules, OURS[:3], purge=True)
    assert plan.batch_text() == [
        "-4 rule del priority 505 l3mdev from all protocol 109",
        "-6 rule del priority 2101 from all fwmark 0x650000/0xff0000 lookup 101 protocol 109",
        "-6 rule del priority 3101 from 2001:db8:1::2/128 lookup 101 protocol 109"]
    ranged = I.plan_rules(rules, OURS, purge=True, purge_priority_range=[0, 32767])
    deleted = list(ranged.batch_text())
    assert "-4 rule del priority 3102 from 100.64.2.2/32 iif lo oif wan1 lookup 102" in deleted
    assert not any("lookup 255" in t or "lookup 253" in t or "priority 32766" in t for t in deleted)


def test_removing_a_kernel_rule_fails(rules):
    with pytest.raises(I.IpRouteError, match="kernel's own"):
        I.plan_rules(rules, [want_rule(priority=32766, state="absent")])


def test_absent_rule_deletes_it(rules):
    plan = I.plan_rules(rules, [want_rule(priority=3102, state="absent", iif="lo", oif="wan1", **{"from": "100.64.2.2/32"})])
    assert plan.batch_text() == ["-4 rule del priority 3102 from 100.64.2.2/32 iif lo oif wan1 lookup 102"]
    assert plan.remove[0][0] == "rule inet priority 3102 from 100.64.2.2/32 iif lo oif wan1"


# -- route planning -------------------------------------------------------------------------

def main_default(*hops, **kw):
    route = {"family": "inet", "table": 254, "destination": "default", "metric": 0, "protocol": 109,
             "type": "unicast", "state": "present", "group_id": G_MAIN, "group_type": "mpath",
             "nexthops": [dict(h) for h in hops]}
    route.update(kw)
    return route


WAN1 = {"via": "100.64.1.1", "dev": "wan1", "weight": 2, "onlink": False, "id": NH_WAN1}
PPP0 = {"via": None, "dev": "ppp0", "weight": 1, "onlink": False, "id": NH_PPP0}
WAN3 = {"via": "100.64.3.1", "dev": "wan3", "weight": 1, "onlink": False, "id": 7}


def test_live_multipath_unchanged(live):
    plan = I.plan_routes(live, [main_default(WAN1, PPP0)])
    assert not plan and plan.lines == []


def test_weight_change_is_one_group_replace(live):
    plan = I.plan_routes(live, [main_default(dict(WAN1, weight=1), dict(PPP0, weight=3))])
    assert plan.batch_text() == ["nexthop replace id %d group %d,1/%d,3 protocol 109" % (G_MAIN, NH_WAN1, NH_PPP0)]
    assert [entry[0] for entry in plan.entries] == ["nexthop group %d" % G_MAIN]


def test_adding_a_member_orders_object_group_route(live):
    new = {"via": "100.64.1.9", "dev": "wan1", "weight": 1, "onlink": False, "id": None}
    plan = I.plan_routes(live, [main_default(WAN1, PPP0, new)])
    new_id = I.default_nexthop_id("inet", "wan1", "100.64.1.9")
    assert plan.batch_text() == [
        "nexthop replace id %d via 100.64.1.9 dev wan1 protocol 109" % new_id,
        "nexthop replace id %d group %d,2/%d,1/%d,1 protocol 109" % (G_MAIN, NH_WAN1, NH_PPP0, new_id)]


def without_resilient_group(live):
    """The fixture state without the resilient group 1845493762, which uses both members too."""
    state = copy.deepcopy(live)
    del state["nexthops"][1845493762]
    state["routes"] = [r for r in state["routes"] if r.get("nhid") != 1845493762]
    return state


def test_one_nexthop_without_a_group_id_is_a_plain_route(live):
    plan = I.plan_routes(without_resilient_group(live), [main_default(WAN1, group_id=None)])
    # group and the now unused member objects of ours go, group first
    texts = plan.batch_text()
    assert texts[0] == "route replace 0.0.0.0/0 table 254 metric 0 protocol 109 via 100.64.1.1 dev wan1"
    assert texts[1:] == ["nexthop del id %d" % G_MAIN, "nexthop del id %d" % NH_WAN1, "nexthop del id %d" % NH_PPP0]


def test_one_nexthop_with_a_group_id_stays_a_group(live):
    # the watchdog (and a site with one uplink left) keeps the default route on its group: one
    # member, swapped in place, never a plain route that turns back into a group later
    plan = I.plan_routes(without_resilient_group(live), [main_default(WAN1)])
    assert plan.batch_text() == ["nexthop replace id %d group %d,2 protocol 109" % (G_MAIN, NH_WAN1),
                                 "nexthop del id %d" % NH_PPP0]
    assert plan.routes == [{"destination": "default", "table": 254, "family": "inet", "group_id": G_MAIN,
                            "members": [{"id": NH_WAN1, "dev": "wan1", "via": "100.64.1.1", "weight": 2}]}]
    # a new one-member group: member object, group, route over it
    state = without_resilient_group(live)
    state["routes"] = [r for r in state["routes"] if r.get("nhid") != G_MAIN]
    del state["nexthops"][G_MAIN]
    assert I.plan_routes(state, [main_default(PPP0, group_id=99)]).batch_text() == [
        "nexthop replace id 99 group %d,1 protocol 109" % NH_PPP0,
        "route replace 0.0.0.0/0 table 254 metric 0 protocol 109 nhid 99"]


def test_one_member_group_as_the_kernel_prints_it_plans_nothing_then_grows_in_place():
    # fixtures/iproute/one_member: the kernel after the plan above was applied
    after = read_live(FakeRunner(capture="one_member"))
    route = [r for r in after["routes"] if I.route_key(r) == ("inet", 254, "default", 0)][0]
    assert route["nhid"] == G_MAIN and after["nexthops"][G_MAIN]["group"] == [(NH_WAN1, 2)]
    again = I.plan_routes(after, [main_default(WAN1)])
    assert not again and again.lines == []
    # the second uplink back: its object and the group, the route is not touched
    assert I.plan_routes(after, [main_default(WAN1, PPP0)]).batch_text() == [
        "nexthop replace id %d dev ppp0 protocol 109" % NH_PPP0,
        "nexthop replace id %d group %d,2/%d,1 protocol 109" % (G_MAIN, NH_WAN1, NH_PPP0)]


def test_one_nexthop_with_a_group_id_without_nexthop_objects_is_a_plain_route():
    after = read_live(FakeRunner(capture="one_member"))
    plan = I.plan_routes(after, [main_default(WAN1)], use_objects=False)
    assert plan.batch_text()[0] == "route replace 0.0.0.0/0 table 254 metric 0 protocol 109 via 100.64.1.1 dev wan1"


def test_member_removed_from_group_is_deleted_after_the_group_replace(live):
    state = copy.deepcopy(live)
    del state["nexthops"][1845493762]
    state["routes"] = [r for r in state["routes"] if r.get("nhid") != 1845493762]
    third = {"via": "100.64.1.9", "dev": "wan1", "weight": 1, "onlink": False, "id": 77}
    plan = I.plan_routes(state, [main_default(WAN1, third)])
    assert plan.batch_text() == ["nexthop replace id 77 via 100.64.1.9 dev wan1 protocol 109",
                                 "nexthop replace id %d group 77,1/%d,2 protocol 109" % (G_MAIN, NH_WAN1),
                                 "nexthop del id %d" % NH_PPP0]


def test_member_still_used_elsewhere_is_kept(live):
    plan = I.plan_routes(live, [main_default(WAN1, dict(WAN3, dev="wan1", via="100.64.1.9", id=77))])
    assert "nexthop del id %d" % NH_PPP0 not in plan.batch_text()  # the resilient group still uses it


def test_classic_fallback(live):
    plan = I.plan_routes(live, [main_default(WAN1, PPP0, table=103, group_id=None)], use_objects=False)
    assert not plan  # the live classic route in table 103 is exactly this
    plan = I.plan_routes(live, [main_default(WAN1, PPP0)], use_objects=False)
    assert plan.batch_text() == [
        "route replace 0.0.0.0/0 table 254 metric 0 protocol 109 nexthop dev ppp0 weight 1 nexthop via 100.64.1.1 dev wan1 weight 2",
        "nexthop del id %d" % G_MAIN]  # members stay: the resilient group uses them


def test_device_without_carrier_is_left_out(live):
    plan = I.plan_routes(live, [main_default(WAN1, PPP0, WAN3)])
    assert not plan
    assert plan.skipped == [{"route": "route inet table 254 default metric 0", "dev": "wan3", "via": "100.64.3.1",
                             "reason": "device wan3 has no carrier"}]
    assert "left out" in plan.warnings[0]
    with pytest.raises(I.IpRouteError, match="no usable nexthop"):
        I.plan_routes(live, [main_default(WAN3, dict(WAN3, dev="gone0", id=8))])


def test_health_state_holds_members_out_but_never_all(live):
    plan = I.plan_routes(live, [main_default(WAN1, PPP0)], health={"ids": {NH_PPP0}, "devs": set()})
    assert plan.batch_text() == ["nexthop replace id %d group %d,2 protocol 109" % (G_MAIN, NH_WAN1)]
    assert plan.held_down[0]["id"] == NH_PPP0
    by_dev = I.plan_routes(live, [main_default(WAN1, PPP0)], health={"ids": set(), "devs": {"wan1"}})
    assert by_dev.batch_text() == ["nexthop replace id %d group %d,1 protocol 109" % (G_MAIN, NH_PPP0)]
    everyone = I.plan_routes(live, [main_default(WAN1, PPP0)], health={"ids": {NH_WAN1, NH_PPP0}, "devs": set()})
    assert not everyone


def test_foreign_nexthop_id_collision_fails_naming_both(live):
    with pytest.raises(I.IpRouteError, match=r"nexthop 1828716549 \(via 100.64.1.7 dev wan1.*we do not own: via 100.64.1.1 dev wan1"):
        I.plan_routes(live, [main_default(WAN1, dict(PPP0, id=1828716549, via="100.64.1.7", dev="wan1"))])


def test_group_type_change_bridges_the_route(live):
    plan = I.plan_routes(live, [main_default(WAN1, PPP0, group_type="resilient", buckets=16)])
    assert plan.batch_text() == [
        "route replace 0.0.0.0/0 table 254 metric 0 protocol 109 nexthop via 100.64.1.1 dev wan1 weight 2 nexthop dev ppp0 weight 1",
        "nexthop del id %d" % G_MAIN,
        "nexthop add id %d group %d,2/%d,1 type resilient buckets 16 protocol 109" % (G_MAIN, NH_WAN1, NH_PPP0),
        "route replace 0.0.0.0/0 table 254 metric 0 protocol 109 nhid %d" % G_MAIN]


def test_single_nexthop_routes_in_other_tables(live):
    wanted = [
        {"family": "inet", "table": 101, "destination": "100.64.1.0/24", "metric": 0, "protocol": 109, "type": "unicast",
         "scope": 253, "src": "100.64.1.2", "nexthops": [{"via": None, "dev": "wan1", "weight": 1}]},
        {"family": "inet", "table": 102, "destination": "default", "metric": 0, "protocol": 109, "type": "unicast",
         "nexthops": [{"via": None, "dev": "ppp0", "weight": 1}]},
    ]
    assert not I.plan_routes(live, wanted)
    wanted[1]["nexthops"][0]["dev"] = "wan1"
    wanted[1]["nexthops"][0]["via"] = "100.64.1.1"
    assert I.plan_routes(live, wanted).batch_text() == [
        "route replace 0.0.0.0/0 table 102 metric 0 protocol 109 via 100.64.1.1 dev wan1"]


def test_purge_tables(live):
    keep = {"family": "inet", "table": 101, "destination": "default", "metric": 10, "protocol": 109, "type": "unicast",
            "nexthops": [{"via": "100.64.1.1", "dev": "wan1", "weight": 1}]}
    plan = I.plan_routes(live, [keep], purge_tables={101, 103})
    assert plan.batch_text() == [
        "route del 100.64.1.0/24 table 101 metric 0",
        "route del 10.50.0.0/16 table 103 metric 0",
        "route del 0.0.0.0/0 table 103 metric 0",
        "route del ::/0 table 101 metric 1024",
        "route del ::/0 table 103 metric 1024",
        "nexthop del id 1845493762"]  # 10.60.0.0/16 is not ours (protocol boot)


def test_ipv6_device_only_member_needs_the_family_flag(live):
    route = main_default({"via": "2001:db8:1::1", "dev": "wan1", "weight": 1, "id": 1828716547},
                         {"via": None, "dev": "ppp0", "weight": 1, "id": 91},
                         family="inet6", metric=1024, group_id=99)
    plan = I.plan_routes(live, [route])
    assert plan.batch_text() == ["-6 nexthop replace id 91 dev ppp0 protocol 109",
                                 "nexthop replace id 99 group 91,1/1828716547,1 protocol 109",
                                 "route replace ::/0 table 254 metric 1024 protocol 109 nhid 99"]


# -- applying -------------------------------------------------------------------------------

def test_apply_runs_one_batch_per_flag_run(live, runner):
    route = main_default({"via": "2001:db8:1::1", "dev": "wan1", "weight": 1, "id": 1828716547},
                         {"via": None, "dev": "ppp0", "weight": 1, "id": 91}, family="inet6", metric=1024, group_id=99)
    plan = I.plan_routes(live, [route])
    I.IpRoute(runner=runner).apply(plan.lines)
    assert [batch[0] for batch in runner.batches] == [["-6"], []]
    assert runner.batches[1][1].count("\n") == 2


def test_batch_failure_names_line_and_object(runner):
    failing = FakeRunner(batch_rc=1, batch_err=(FIXTURES / "batch_error.stderr").read_text())
    lines = [I.Line("nexthop replace id 5 dev wan1 protocol 109", "nexthop 5"),
             I.Line("nexthop replace id 6 via 100.64.9.1 dev wan1 protocol 109", "nexthop 6")]
    with pytest.raises(I.IpRouteError) as err:
        I.IpRoute(runner=failing).apply(lines)
    assert str(err.value) == ("nexthop 6: ip -batch line 2 (nexthop replace id 6 via 100.64.9.1 dev wan1 protocol 109) "
                              "failed: Error: Nexthop has invalid gateway.")


def test_nexthop_support_is_asked_once_per_instance(runner):
    ipr = I.IpRoute(runner=runner)
    for dummy in range(3):
        assert ipr.nexthops_supported()
        ipr.nexthops()
    assert runner.commands.count("-j nexthop show") == 1
    assert runner.commands.count("-j -d -N nexthop show") == 3  # the objects themselves are read every time

    def unsupported(argv, data=None):
        unsupported.calls += 1
        return 255, "", "Error: Nexthop support is not enabled."
    unsupported.calls = 0
    ipr = I.IpRoute(runner=unsupported)
    assert ipr.nexthops() == {} and ipr.nexthops() == {} and not ipr.nexthops_supported()
    assert unsupported.calls == 1


def test_read_failure_is_an_iproute_error():
    def broken(argv, data=None):
        return 255, "", "Error: argument \"x\" is wrong"
    with pytest.raises(I.IpRouteError, match="reading inet rules failed"):
        I.IpRoute(runner=broken).rules("inet")


def test_single_nexthop_route_over_a_missing_device_is_left_out(live):
    wanted = [{"family": "inet", "table": 102, "destination": "default", "metric": 0, "protocol": 109, "type": "unicast",
               "nexthops": [{"via": None, "dev": "ppp9", "weight": 1}]},
              {"family": "inet", "table": 104, "destination": "default", "metric": 0, "protocol": 109, "type": "unicast",
               "nexthops": [{"via": "100.64.3.1", "dev": "wan3", "weight": 1}]}]
    plan = I.plan_routes(live, wanted, purge_tables={102})
    # ppp9 is missing: left out (and the live route of table 102 is not purged, it is listed);
    # wan3 has no carrier: the kernel accepts a plain route there
    assert plan.batch_text() == ["route replace 0.0.0.0/0 table 104 metric 0 protocol 109 via 100.64.3.1 dev wan3"]
    assert plan.skipped == [{"route": "route inet table 102 default metric 0", "dev": "ppp9", "via": None,
                             "reason": "device ppp9 does not exist"}]


def test_planning_does_not_change_the_desired_dicts(live):
    route = main_default(dict(WAN1, id=None), PPP0)
    frozen = copy.deepcopy(route)
    I.plan_routes(live, [route])
    assert route == frozen
