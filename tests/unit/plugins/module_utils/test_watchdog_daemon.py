"""The watchdog's I/O shell (Daemon) with a fake clock and a fake ``_iproute.IpRoute``: link states,
reconcile retries, the group route without usable uplinks, state writes, hooks and probe upkeep."""

from __future__ import annotations

import json

import pytest

from ansible_collections.multiwan.linux.plugins.module_utils import _iproute as I
from ansible_collections.multiwan.linux.plugins.module_utils import _watchdog as w

TARGETS = ["192.0.2.1", "198.51.100.1"]
GROUP = 0x6E000001
NH1, NH2 = 0x6D000065, 0x6D000066


class Clock(object):
    """Monotonic and wall clock at once, moved by the test."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


class FakeIpRoute(object):
    """Stands in for ``_iproute.IpRoute``: serves ``link_states`` and an empty routing state,
    records the applied batches, fails them while ``fail`` is set."""

    def __init__(self, link_states):
        self.link_states = dict(link_states)
        self.batches = []
        self.reads = 0
        self.fail = None

    def links(self):
        self.reads += 1
        return dict(self.link_states)

    def routes(self, family):
        return []

    def rules(self, family):
        return list(getattr(self, "live_rules", []))

    def nexthops(self):
        return {}

    def apply(self, lines):
        if self.fail:
            raise I.IpRouteError(self.fail)
        self.batches.append([line.text for line in lines])


def make_daemon(tmp_path, links, **extra):
    config = {"state_file": str(tmp_path / "state.json"), "hooks_dir": str(tmp_path / "hooks.d"), "conntrack": "",
              "group": {"id": GROUP},
              "uplinks": [{"name": "isp1", "interface": "wan1", "address": "100.64.1.2", "gateway": "100.64.1.1",
                           "table": 101, "nexthop_id": NH1, "probe_targets": TARGETS},
                          {"name": "isp2", "interface": "ppp0", "address": "100.64.2.2", "table": 102,
                           "nexthop_id": NH2, "probe_targets": TARGETS}]}
    config.update(extra)
    path = tmp_path / "watchdog.json"
    path.write_text(json.dumps(config))
    clock = Clock()
    daemon = w.Daemon(str(path), iproute=FakeIpRoute(links), clock=clock, wall=clock)
    # what run() does before its first reconcile: the link dump, then the machines
    daemon.links, daemon.links_complete = dict(links), True
    daemon._start_core(clock())
    return daemon, clock


def state_file(daemon):
    return json.loads(open(daemon.config.state_file).read())


def group_route(routes):
    return [r for r in routes if r.get("group_id") == GROUP]


# -- link states are words; only "up" is usable ------------------------------------------------

@pytest.mark.parametrize("ppp0", ["down", "no-carrier", None])
def test_nothing_is_desired_over_an_unusable_link(tmp_path, ppp0):
    links = {"wan1": "up", "ppp0": ppp0} if ppp0 else {"wan1": "up"}
    daemon, clock = make_daemon(tmp_path, links)
    desired = daemon.desired_routes(links)
    assert [r["table"] for r in desired if not r.get("group_id")] == [101]  # not isp2's table 102
    (group,) = group_route(desired)
    assert [h["dev"] for h in group["nexthops"]] == ["wan1"]
    # the machine of isp2 knows its link is unusable from the start, also when the device is missing
    machine = daemon.core.machines["isp2"]
    assert (machine.link_up, machine.state, machine.reason) == (False, "down", "carrier")
    # and the reconcile makes (and records) only what the kernel accepts
    daemon.sync_group(clock())
    assert daemon.applied == ["isp1"] and daemon.group_error is None and not daemon.need_reconcile
    assert "nexthop replace id %d group %d,1 protocol 109" % (GROUP, NH1) in daemon.iproute.batches[0]
    assert not any("ppp0" in line for line in daemon.iproute.batches[0])


def test_netlink_link_states_drive_the_machines_and_reconcile_only_on_usable_changes(tmp_path):
    daemon, clock = make_daemon(tmp_path, {"wan1": "up", "ppp0": "up"})
    daemon.sync_group(clock())
    reads = daemon.iproute.reads

    def link(name, state, kind="new"):
        return {"type": kind, "index": 1, "ifname": name, "flags": 0, "state": state}

    daemon.link_messages([link("ppp0", "no-carrier")], clock())
    assert daemon.links["ppp0"] == "no-carrier"
    assert daemon.core.machines["isp2"].state == "down" and daemon.core.machines["isp2"].reason == "carrier"
    assert daemon.iproute.reads == reads + 1 and daemon.applied == ["isp1"]
    # down after no-carrier, or gone: unusable all the same, nothing to do
    daemon.link_messages([link("ppp0", "down"), link("ppp0", None, "del")], clock())
    assert "ppp0" not in daemon.links and daemon.iproute.reads == reads + 1
    # a link that is no uplink's changes nothing either
    daemon.link_messages([link("lan0", "up"), link("lan0", "down")], clock())
    assert daemon.iproute.reads == reads + 1
    # up again: one reconcile for the batch of messages; probes bring the uplink back later
    daemon.link_messages([link("ppp0", "no-carrier"), link("ppp0", "up")], clock())
    assert daemon.iproute.reads == reads + 2
    assert daemon.core.machines["isp2"].link_up and daemon.core.machines["isp2"].state == "down"


# -- reconcile failures: back-off, logged once ------------------------------------------------

def test_failed_reconcile_backs_off_and_logs_once_per_streak(tmp_path, capsys):
    daemon, clock = make_daemon(tmp_path, {"wan1": "up", "ppp0": "up"})
    daemon.iproute.fail = "Error: Nexthop device is not up."
    daemon.sync_group(clock())
    assert daemon.need_reconcile and daemon.group_error.startswith("reconcile failed: Error: Nexthop")
    start = clock.now
    attempts = []
    while clock.now < start + 60:  # the main loop wakes every round (and on every reply)
        clock.now = round(clock.now + 0.05, 2)
        before = daemon.iproute.reads
        daemon.retry_reconcile(clock.now)
        if daemon.iproute.reads != before:
            attempts.append(round(clock.now - start, 2))
    # 1 s, then doubling, up to verify_interval (10 s by default)
    assert attempts == [1.0, 3.0, 7.0, 15.0, 25.0, 35.0, 45.0, 55.0]
    assert capsys.readouterr().err.count("reconcile failed") == 1
    assert state_file(daemon)["group"]["error"].startswith("reconcile failed")
    # it works again: said once, the streak and the error end
    daemon.iproute.fail = None
    clock.now = start + 65
    daemon.retry_reconcile(clock.now)
    assert not daemon.need_reconcile and daemon.group_error is None and daemon.applied == ["isp1", "isp2"]
    assert "routing in line again after 9 failed attempts" in capsys.readouterr().err
    assert state_file(daemon)["group"]["error"] is None
    # a new streak starts at 1 s again and is logged again
    daemon.iproute.fail = "Error: boom."
    daemon.verify()
    clock.now += 0.99
    daemon.retry_reconcile(clock.now)
    reads = daemon.iproute.reads
    clock.now += 0.01
    daemon.retry_reconcile(clock.now)
    assert daemon.iproute.reads == reads + 1
    assert capsys.readouterr().err.count("reconcile failed") == 1


def test_retry_delay_is_capped_by_a_shorter_verify_interval():
    retry = w.Retry(1.0)
    assert [retry.failed(0.0, 2.0) for dummy in range(4)] == [1.0, 2.0, 2.0, 2.0]
    assert not retry.due(1.9) and retry.due(2.0)
    assert retry.succeeded() == 4 and retry.due(0.0) and retry.failures == 0
    assert [retry.failed(0.0, 0.5) for dummy in range(2)] == [1.0, 1.0]  # never below the first delay


def test_no_usable_uplink_plans_no_group_and_says_so_once(tmp_path, capsys):
    daemon, clock = make_daemon(tmp_path, {"wan1": "down", "ppp0": "no-carrier"})
    daemon.sync_group(clock())
    # nothing to apply and nothing failed: the group route cannot exist without a member
    assert daemon.iproute.batches == [] and not daemon.need_reconcile
    assert daemon.applied == [] and daemon.group_error.startswith("no uplink has a usable link")
    doc = state_file(daemon)
    assert doc["group"]["members"] == [] and "no route default in table 254" in doc["group"]["error"]
    assert "no uplink has a usable link" in w.status_text(doc, clock())
    daemon.verify()
    daemon.verify()
    assert capsys.readouterr().err.count("no uplink has a usable link") == 1
    # a link comes back: the group (one member) and its route are made, the note goes
    daemon.iproute.link_states["ppp0"] = "up"
    daemon.link_messages([{"type": "new", "index": 2, "ifname": "ppp0", "flags": 0, "state": "up"}], clock())
    assert daemon.applied == ["isp2"] and daemon.group_error is None
    assert "route replace 0.0.0.0/0 table 254 metric 0 protocol 109 nhid %d" % GROUP in daemon.iproute.batches[-1]


# -- one state write per change -----------------------------------------------------------------

def count_state_writes(daemon, monkeypatch):
    writes = []
    real = w.write_atomic

    def counting(path, text, mode=0o644):
        if path == daemon.config.state_file:
            writes.append(json.loads(text))
        real(path, text, mode)
    monkeypatch.setattr(w, "write_atomic", counting)
    return writes


def test_a_transition_writes_the_state_file_once(tmp_path, monkeypatch):
    daemon, clock = make_daemon(tmp_path, {"wan1": "up", "ppp0": "up"})
    daemon.sync_group(clock())
    writes = count_state_writes(daemon, monkeypatch)
    down = [daemon.core.round_result(clock(), "isp2", {}) for dummy in range(4)]
    daemon.handle_transitions([t for t in down if t], clock())
    assert daemon.iproute.batches[-1] == ["nexthop replace id %d group %d,1 protocol 109" % (GROUP, NH1)]
    # written before the kernel changed (Contract 2), already with the members it was about to get
    assert len(writes) == 1
    assert writes[0]["uplinks"]["isp2"]["state"] == "down"
    assert [m["uplink"] for m in writes[0]["group"]["members"]] == ["isp1"]
    # a transition that leaves the members as they are: still written, once
    del writes[:]
    down = [daemon.core.round_result(clock(), "isp1", {}) for dummy in range(4)]
    daemon.handle_transitions([t for t in down if t], clock())  # all down: both stay
    assert len(writes) == 1 and writes[0]["all_down"] is True


def test_a_failed_update_writes_the_state_file_again_with_the_error(tmp_path, monkeypatch):
    daemon, clock = make_daemon(tmp_path, {"wan1": "up", "ppp0": "up"})
    daemon.sync_group(clock())
    writes = count_state_writes(daemon, monkeypatch)
    daemon.iproute.fail = "Error: nope."
    daemon.link_messages([{"type": "new", "index": 2, "ifname": "ppp0", "flags": 0, "state": "down"}], clock())
    # before the kernel (Contract 2), and again: the update failed, which is news
    assert len(writes) == 2
    assert writes[0]["uplinks"]["isp2"]["state"] == "down" and writes[0]["group"]["error"] is None
    assert writes[1]["group"]["error"] == "reconcile failed: Error: nope."


def test_hook_directory_is_listed_once_per_batch_of_transitions(tmp_path, monkeypatch):
    daemon, clock = make_daemon(tmp_path, {"wan1": "up", "ppp0": "up"})
    daemon.sync_group(clock())
    listings = []
    monkeypatch.setattr(w, "hook_scripts", lambda directory: listings.append(directory) or ["/hooks/10-a"])
    transitions = daemon.core.link_event(clock(), "wan1", False) + daemon.core.link_event(clock(), "ppp0", False)
    daemon.handle_transitions(transitions, clock())
    assert listings == [daemon.config.hooks_dir]
    assert [env["MULTIWAN_UPLINK"] for dummy, env, dummy2 in daemon.children.hook_queue] == ["isp1", "isp2"]


# -- probe upkeep --------------------------------------------------------------------------------

def test_old_probes_are_forgotten_at_round_start_not_per_reply(tmp_path):
    daemon, clock = make_daemon(tmp_path, {"wan1": "down", "ppp0": "down"})  # no link: no probe is sent
    pending = daemon.pending["isp1"]
    rnd = w.Round(1, 0.0, TARGETS)
    for seq, sent in enumerate((990.0, 994.0, 995.5, 999.0)):
        pending[seq] = (rnd, TARGETS[0], sent)
    daemon.finish_rounds(clock())  # runs on every wake-up: leaves them alone
    assert list(pending) == [0, 1, 2, 3]
    daemon.start_round(clock())
    assert list(pending) == [2, 3]  # sent more than LATE_LIMIT (5 s) ago: forgotten
    w.forget_expired(pending, 1010.0)
    assert not pending


# -- policy rules: restored at start, never removed ---------------------------------------------

RULES = [{"priority": 1000, "to": "10.1.0.0/16", "table": "main"},
         {"priority": 3101, "from": "100.64.1.2", "table": "101"},
         {"priority": 3102, "from": "100.64.2.2", "table": "102"}]


def test_missing_rules_are_added_and_nothing_else(tmp_path):
    daemon, dummy = make_daemon(tmp_path, {"wan1": "up", "ppp0": "up"}, rules=RULES)
    assert [r["priority"] for r in daemon.config.rules] == [1000, 3101, 3102]
    # 3101 is there already, 3102 points at the wrong table, 4000 is someone else's
    daemon.iproute.live_rules = [
        dict(daemon.config.rules[1]),
        dict(daemon.config.rules[2], table=999),
        dict(daemon.config.rules[2], priority=4000, src="100.64.9.9"),
    ]
    assert daemon.restore_rules()
    assert daemon.iproute.batches == [["rule add priority 1000 from all to 10.1.0.0/16 lookup 254 protocol 109",
                                       "rule add priority 3102 from 100.64.2.2/32 lookup 102 protocol 109"]]
    daemon.iproute.batches = []
    daemon.iproute.live_rules = list(daemon.config.rules)
    assert daemon.restore_rules() and daemon.iproute.batches == []


@pytest.mark.parametrize("rules, message", [
    ("all", "rules: a list is required"),
    ([{"priority": 5, "from": "2001:db8::1", "table": 1}], "rules[0]: from: '2001:db8::1' is not an inet prefix"),
    ([{"priority": 5, "from": "10.0.0.1", "table": 1, "state": "absent"}], "rules[0]: only present inet rules"),
    ([{"from": "10.0.0.1", "table": 1}], "rules[0]: priority is required"),
    ([{"priority": 5, "from": "10.0.0.1", "table": "nosuchtable"}], "rules[0]: table:"),
])
def test_bad_rules_name_the_entry(tmp_path, rules, message):
    with pytest.raises(w.ConfigError) as err:
        make_daemon(tmp_path, {"wan1": "up", "ppp0": "up"}, rules=rules)
    assert message in str(err.value)
