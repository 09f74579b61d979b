"""multiwan.linux.ip_rule on a lab gateway; the kernel's rules are checked with ``ip -j`` directly."""

from __future__ import annotations

import pytest

KERNEL_V4 = [(0, "255"), (32766, "254"), (32767, "253")]


def rules(gateway, family="-4"):
    return gateway.json("ip %s -j -d -N rule show" % family)


def find(gateway, priority, family="-4"):
    return [r for r in rules(gateway, family) if r["priority"] == priority]


@pytest.fixture
def gw(gateway):
    """The gateway, with every rule of ours and the test's foreign rules removed afterwards."""
    yield gateway
    for family in ("-4", "-6"):
        gateway.sh("ip %s rule flush protocol 109" % family)
        for rule in rules(gateway, family):
            if 3000 <= rule["priority"] <= 4999:
                gateway.sh("ip %s rule del priority %d" % (family, rule["priority"]))
    gateway.sh("rm -f /etc/iproute2/rt_tables.d/mwd-test.conf /etc/iproute2/rt_protos.d/mwd-test.conf")


def test_create_rerun_change_remove(gw):
    args = {"priority": 3101, "from": "100.64.1.2", "table": 101}
    first = gw.module("ip_rule", args)
    assert first["changed"] is True
    assert first["commands"] == ["-4 rule add priority 3101 from 100.64.1.2/32 lookup 101 protocol 109"]
    assert find(gw, 3101) == [{"priority": 3101, "src": "100.64.1.2", "table": "101", "protocol": "109"}]

    again = gw.module("ip_rule", args)
    assert again["changed"] is False and again["commands"] == []

    changed = gw.module("ip_rule", dict(args, table=102), diff=True)
    assert changed["changed"] is True
    assert changed["commands"] == ["-4 rule add priority 3101 from 100.64.1.2/32 lookup 102 protocol 109",
                                   "-4 rule del priority 3101 from 100.64.1.2/32 lookup 101 protocol 109"]
    assert '"table": 101' in changed["diff"]["before"] and '"table": 102' in changed["diff"]["after"]
    assert [r["table"] for r in find(gw, 3101)] == ["102"]

    removed = gw.module("ip_rule", dict(args, state="absent"))
    assert removed["changed"] is True
    assert find(gw, 3101) == []
    assert gw.module("ip_rule", dict(args, state="absent"))["changed"] is False


def test_check_mode_changes_nothing_and_diff_shows_the_rule(gw):
    before = rules(gw)
    result = gw.module("ip_rule", {"priority": 2101, "fwmark": "0x650000", "fwmask": "0xff0000", "table": 101},
                       check=True, diff=True)
    assert result["changed"] is True
    assert result["diff"]["before"] == ""
    assert result["diff"]["after"].startswith("rule inet priority 2101 fwmark 0x650000 fwmask 0xff0000: ")
    assert rules(gw) == before


def test_whole_set_with_purge(gw):
    wanted = [
        {"priority": 1000, "to": "10.1.0.0/24", "table": "main"},
        {"priority": 2101, "fwmark": "0x650000", "fwmask": "0xff0000", "table": 101},
        {"priority": 2101, "fwmark": "0x650000", "fwmask": "0xff0000", "table": 101, "family": "inet6"},
        {"priority": 3101, "from": "100.64.1.2", "table": 101},
        {"priority": 3102, "from": "100.64.2.2", "table": 102},
    ]
    first = gw.module("ip_rule", {"rules": wanted, "purge": True})
    assert first["changed"] is True
    assert [r["priority"] for r in rules(gw)] == [0, 1000, 2101, 3101, 3102, 32766, 32767]
    assert [r["priority"] for r in rules(gw, "-6")] == [0, 2101, 32766]
    assert gw.module("ip_rule", {"rules": wanted, "purge": True})["changed"] is False

    gw.sh("ip rule add priority 3500 from 10.99.0.0/16 lookup 100")  # someone else's rule (protocol 0)
    # uplink isp2 removed from the inventory: its rule disappears, the foreign rule stays
    second = gw.module("ip_rule", {"rules": wanted[:4], "purge": True})
    assert second["changed"] is True
    assert second["commands"] == ["-4 rule del priority 3102 from 100.64.2.2/32 lookup 102 protocol 109"]
    assert [r["priority"] for r in rules(gw)] == [0, 1000, 2101, 3101, 3500, 32766, 32767]

    # a priority range we own entirely: foreign rules there go too, the kernel's never do
    third = gw.module("ip_rule", {"rules": wanted[:2], "purge": True, "purge_priority_range": [0, 40000]})
    assert [r["priority"] for r in rules(gw)] == [0, 1000, 2101, 32766, 32767]
    assert [(r["priority"], r["table"]) for r in rules(gw) if r["priority"] in (0, 32766, 32767)] == KERNEL_V4
    assert [r["priority"] for r in rules(gw, "-6")] == [0, 32766]
    assert "-4 rule del priority 3500 from 10.99.0.0/16 lookup 100" in third["commands"]


def test_actions_and_names_from_rt_tables(gw):
    gw.sh("mkdir -p /etc/iproute2/rt_tables.d /etc/iproute2/rt_protos.d"
          " && echo '101 mwdisp1' > /etc/iproute2/rt_tables.d/mwd-test.conf"
          " && echo '109 multiwan' > /etc/iproute2/rt_protos.d/mwd-test.conf")
    wanted = [{"priority": 3101, "from": "100.64.1.2", "table": "mwdisp1", "protocol": "multiwan"},
              {"priority": 3200, "from": "10.9.0.0/16", "action": "unreachable"},
              {"priority": 3201, "to": "10.8.0.0/16", "action": "prohibit"},
              {"priority": 3202, "iif": "lan0", "oif": "wan1", "table": "main", "suppress_prefixlength": 0}]
    assert gw.module("ip_rule", {"rules": wanted})["changed"] is True
    # plain ``ip`` now prints the names; the module compares numbers and stays idempotent
    assert gw.json("ip -j -d rule show priority 3101")[0]["table"] == "mwdisp1"
    assert gw.json("ip -j -d rule show priority 3101")[0]["protocol"] == "multiwan"
    assert gw.module("ip_rule", {"rules": wanted})["changed"] is False
    assert find(gw, 3200)[0]["action"] == "7"
    assert find(gw, 3201)[0]["action"] == "8"
    assert find(gw, 3202)[0] == {"priority": 3202, "src": "all", "iif": "lan0", "oif": "wan1", "table": "254",
                                 "suppress_prefixlen": 0, "protocol": "109"}


@pytest.mark.parametrize("args, message", [
    ({"priority": 3101, "from": "100.64.1.2/24", "table": 101}, "rule: from: '100.64.1.2/24' is not a valid prefix"),
    ({"priority": 3101, "from": "100.64.1.2", "table": "nosuchtable"}, "rule: table: unknown table name 'nosuchtable'"),
    ({"priority": 3101, "from": "100.64.1.2"}, "rule: table is required for action lookup"),
    ({"priority": 3101, "action": "prohibit", "table": 101}, "rule: table only goes with action lookup"),
    ({"priority": 3101, "fwmark": "0xzz", "table": 101}, "rule: fwmark: '0xzz' is not a number"),
    ({"priority": 3101, "fwmask": "0xff", "table": 101}, "rule: fwmask needs fwmark"),
    ({"priority": 3101, "from": "2001:db8::1", "family": "inet", "table": 101}, "rule: from: '2001:db8::1' is not an inet prefix"),
    ({"priority": 32766, "table": "main", "state": "absent"}, "rule inet priority 32766 is one of the kernel's own rules"),
    ({"rules": [{"priority": 3101, "from": "100.64.1.2", "table": 101}, {"from": "10.0.0.0/8", "table": 101}]},
     "rules[1]: priority is required"),
    ({"rules": [{"priority": 3101, "table": 101}], "purge": True, "purge_priority_range": [10]}, "purge_priority_range"),
    ({"priority": 3101, "table": 101, "protocol": "nosuchproto"}, "protocol: unknown protocol name 'nosuchproto'"),
    ({"rules": [{"priority": 3101, "table": 101}], "action": "prohibit"}, "mutually exclusive: rules|action"),
])
def test_bad_parameters_fail_before_anything_changes(gw, args, message):
    gw.sh("ip rule add priority 3300 from 10.3.0.0/16 lookup 103 protocol 109")  # a rule of ours
    before = rules(gw), rules(gw, "-6")
    result = gw.module("ip_rule", args, expect_failure=True)
    assert message in result["msg"]
    assert (rules(gw), rules(gw, "-6")) == before
