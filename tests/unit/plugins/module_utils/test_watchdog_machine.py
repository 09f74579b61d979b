"""The watchdog's pure state machine and group decision, driven with a fake clock."""

from __future__ import annotations

import itertools

import pytest

from ansible_collections.multiwan.linux.plugins.module_utils import _watchdog as w

TARGETS = ["192.0.2.1", "198.51.100.1", "203.0.113.1"]


def settings(**kw):
    base = dict(timeout=0.3, down_after=4, up_after=20, min_targets_up=1)
    base.update(kw)
    return w.Settings(**base)


class Clock(object):
    def __init__(self, start=1000.0, step=0.15):
        self.now = start
        self.step = step

    def tick(self):
        self.now += self.step
        return self.now


GOOD = dict((t, 0.02) for t in TARGETS)
BAD = dict((t, None) for t in TARGETS)


def feed(machine, clock, rounds):
    """Feed rounds; return the transitions that happened, with the round index."""
    out = []
    for index, results in enumerate(rounds):
        t = machine.round(clock.tick(), results)
        if t:
            out.append((index, t))
    return out


def test_defaults_are_the_documented_ones():
    assert (w.DEFAULTS["interval"], w.DEFAULTS["timeout"], w.DEFAULTS["down_after"], w.DEFAULTS["up_after"],
            w.DEFAULTS["min_targets_up"]) == (0.15, 0.3, 4, 20, 1)


def test_down_after_consecutive_bad_rounds_then_up_after_good_rounds():
    clock = Clock()
    m = w.UplinkMachine("isp1", TARGETS, settings(), clock.now)
    assert m.state == w.UP and m.assumed
    assert feed(m, clock, [GOOD]) == [] and not m.assumed
    got = feed(m, clock, [BAD] * 4)
    assert [i for i, dummy in got] == [3]
    t = got[0][1]
    assert (t.uplink, t.old, t.new, t.reason) == ("isp1", "up", "down", "probes")
    assert "0 of 3 targets answered" in t.detail and t.time == clock.now
    # recovery needs up_after good rounds in a row; one bad round restarts the count
    assert feed(m, clock, [GOOD] * 19 + [BAD] + [GOOD] * 19) == []
    got = feed(m, clock, [GOOD])
    assert got and got[0][1].new == "up" and got[0][1].reason == "probes"
    assert m.transitions == 2


def test_hysteresis_speeds_are_separate():
    clock = Clock()
    m = w.UplinkMachine("isp1", TARGETS, settings(down_after=2, up_after=3), clock.now)
    assert [i for i, dummy in feed(m, clock, [BAD, BAD])] == [1]
    assert [i for i, dummy in feed(m, clock, [GOOD, GOOD, GOOD])] == [2]


def test_n_of_m_targets():
    clock = Clock()
    m = w.UplinkMachine("isp1", TARGETS, settings(min_targets_up=2, down_after=1), clock.now)
    one = {TARGETS[0]: 0.01, TARGETS[1]: None, TARGETS[2]: None}
    two = {TARGETS[0]: 0.01, TARGETS[1]: 0.01, TARGETS[2]: None}
    assert feed(m, clock, [two]) == []
    got = feed(m, clock, [one])
    assert got and "1 of 3 targets answered (need 2)" in got[0][1].detail


def test_one_dead_target_never_takes_the_uplink_down():
    clock = Clock()
    m = w.UplinkMachine("isp1", TARGETS, settings(), clock.now)
    rounds = [{TARGETS[0]: None, TARGETS[1]: 0.02, TARGETS[2]: 0.03}] * 1000
    assert feed(m, clock, rounds) == []
    assert m.stats[TARGETS[0]].loss == 1.0 and m.stats[TARGETS[1]].loss == 0.0


def test_flapping_never_fails_over_with_default_settings():
    clock = Clock()
    m = w.UplinkMachine("isp1", TARGETS, settings(), clock.now)
    for pattern in ([GOOD, BAD], [GOOD, BAD, BAD], [GOOD, BAD, BAD, BAD]):
        assert feed(m, clock, list(itertools.islice(itertools.cycle(pattern), 600))) == []
    assert m.state == w.UP


def test_flapping_down_uplink_never_comes_back():
    clock = Clock()
    m = w.UplinkMachine("isp1", TARGETS, settings(), clock.now, state=w.DOWN, reason="probes", assumed=False)
    assert feed(m, clock, ([GOOD] * 19 + [BAD]) * 30) == []
    assert m.state == w.DOWN


def test_link_down_is_immediate_and_link_up_needs_probes():
    clock = Clock()
    m = w.UplinkMachine("isp1", TARGETS, settings(up_after=3), clock.now)
    t = m.link(clock.tick(), False)
    assert (t.old, t.new, t.reason) == ("up", "down", "carrier")
    assert m.link(clock.tick(), False) is None
    # rounds while the link is down change nothing (and are not counted)
    assert feed(m, clock, [GOOD] * 5) == [] and m.state == w.DOWN and m.good == 0
    assert m.link(clock.tick(), True) is None and m.state == w.DOWN
    assert [i for i, dummy in feed(m, clock, [GOOD] * 3)] == [2]


def test_link_down_while_down_updates_the_reason_only():
    clock = Clock()
    m = w.UplinkMachine("isp1", TARGETS, settings(down_after=1), clock.now)
    feed(m, clock, [BAD])
    assert m.link(clock.tick(), False) is None
    assert (m.state, m.reason, m.transitions) == ("down", "carrier", 1)


def test_max_rtt_threshold():
    clock = Clock()
    m = w.UplinkMachine("isp1", TARGETS, settings(max_rtt_ms=100, down_after=2, up_after=2), clock.now)
    slow = dict((t, 0.250) for t in TARGETS)
    mixed = {TARGETS[0]: 0.250, TARGETS[1]: 0.05, TARGETS[2]: None}
    assert feed(m, clock, [mixed, mixed]) == []
    got = feed(m, clock, [slow, slow])
    assert got and got[0][1].reason == "rtt" and "within 100 ms" in got[0][1].detail
    assert [i for i, dummy in feed(m, clock, [mixed, mixed])] == [1]


def test_max_loss_threshold_over_a_full_window():
    clock = Clock()
    m = w.UplinkMachine("isp1", TARGETS, settings(max_loss_pct=30, down_after=2, up_after=2, loss_window=10),
                        clock.now)
    lossy = {TARGETS[0]: None, TARGETS[1]: None, TARGETS[2]: 0.02}  # 67 % loss, still answered
    # not judged before the window is full
    assert feed(m, clock, [lossy] * 9) == []
    got = feed(m, clock, [lossy] * 2)
    assert got and got[0][1].reason == "loss"
    # the window has to clear below the limit, then up_after good rounds
    got = feed(m, clock, [GOOD] * 10)
    assert got and got[0][1].new == "up"
    assert 3 <= got[0][0] <= 6


def test_late_reply_resets_the_failure_streak_of_an_up_uplink():
    clock = Clock()
    m = w.UplinkMachine("isp1", TARGETS, settings(), clock.now)
    # bufferbloat: every answer comes after the timeout, but it comes
    for dummy in range(100):
        assert m.round(clock.tick(), BAD) is None
        m.late_reply(clock.now, TARGETS[0], 0.45)
    assert m.state == w.UP
    assert m.stats[TARGETS[0]].late == 100 and m.stats[TARGETS[0]].last_rtt == 0.45
    # a late answer slower than max_rtt_ms is no evidence
    m2 = w.UplinkMachine("isp2", TARGETS, settings(max_rtt_ms=200), clock.now)
    for dummy in range(3):
        m2.round(clock.tick(), BAD)
        m2.late_reply(clock.now, TARGETS[0], 0.45)
    assert m2.round(clock.tick(), BAD).new == "down"
    # and a late answer never brings a down uplink up
    for dummy in range(50):
        m2.late_reply(clock.tick(), TARGETS[0], 0.05)
    assert m2.state == w.DOWN


def test_target_stats_window_and_ewma():
    s = w.TargetStats("x", window=4)
    assert s.loss is None
    for rtt in (0.1, None, 0.1, None, None):
        s.record(rtt)
    assert s.sent == 5 and s.lost == 3
    assert s.loss == 0.75  # last 4: None, 0.1, None, None
    s.record(0.2)
    assert s.last_rtt == 0.2 and s.ewma_rtt == pytest.approx(0.1 + (0.2 - 0.1) * w.EWMA_ALPHA)


def machines(states, links=None):
    out = []
    for index, state in enumerate(states):
        m = w.UplinkMachine("isp%d" % (index + 1), TARGETS, settings(), 0.0, state=state)
        if links is not None:
            m.link_up = links[index]
        out.append(m)
    return out


def test_group_members_are_the_up_uplinks():
    assert w.decide_members(machines(["up", "down", "up"])) == (["isp1", "isp3"], False)


def test_all_down_keeps_every_uplink_with_a_link():
    assert w.decide_members(machines(["down", "down", "down"])) == (["isp1", "isp2", "isp3"], True)
    assert w.decide_members(machines(["down", "down", "down"], [True, False, True])) == (["isp1", "isp3"], True)
    assert w.decide_members(machines(["down", "down"], [False, False])) == (["isp1", "isp2"], True)


def config(**extra):
    data = {"group": {"id": 0x6E000001},
            "uplinks": [{"name": "isp1", "interface": "wan1", "address": "100.64.1.2", "gateway": "100.64.1.1",
                         "table": 101, "nexthop_id": 0x6D000065, "probe_targets": TARGETS},
                        {"name": "isp2", "interface": "ppp0", "address": "100.64.2.2", "table": 102, "weight": 2,
                         "nexthop_id": 0x6D000066, "probe_targets": TARGETS[:2]}]}
    data.update(extra)
    return w.load_config(data)


def test_core_routes_events_and_decides_the_group():
    core = w.Core(config(), 1000.0)
    assert core.group_members() == [(0x6D000065, 1), (0x6D000066, 2)]
    assert [t.uplink for t in core.link_event(1001.0, "ppp0", False)] == ["isp2"]
    assert core.link_event(1001.0, "lan0", False) == []
    assert core.group_members() == [(0x6D000065, 1)]
    for i in range(3):
        assert core.round_result(1002.0 + i, "isp1", {}) is None
    assert core.round_result(1005.0, "isp1", {}).new == "down"
    # all down: isp2 has no link, so only isp1 stays
    assert core.members() == (["isp1"], True)


def test_core_keeps_recent_down_decisions_of_a_previous_run():
    previous = {"updated": 990.0, "uplinks": {
        "isp1": {"state": "down", "since": 900.0, "reason": "probes", "detail": "0 of 3"},
        "isp2": {"state": "up"}}}
    core = w.Core(config(), 1000.0, previous)
    m = core.machines["isp1"]
    assert (m.state, m.reason, m.since, m.assumed) == ("down", "previous", 900.0, False)
    assert core.machines["isp2"].state == "up" and core.machines["isp2"].assumed
    # too old: everyone starts assumed up
    stale = dict(previous, updated=1000.0 - 121)
    assert w.Core(config(), 1000.0, stale).machines["isp1"].state == "up"
    assert w.Core(config(), 1000.0, {"garbage": 1}).machines["isp1"].state == "up"


def test_reload_keeps_decisions():
    core = w.Core(config(), 1000.0)
    core.link_event(1001.0, "wan1", False)
    again = w.Core(config(), 1002.0, None, core.machines)
    m = again.machines["isp1"]
    assert (m.state, m.reason, m.link_up, m.transitions) == ("down", "carrier", False, 1)


def test_false_failover_numbers_behind_the_defaults():
    d = w.DEFAULTS
    rounds = int(600 / d["interval"])
    p10 = w.false_failover_probability(0.10, 3, d["down_after"], rounds)
    assert p10 < 1e-4
    assert w.false_failover_probability(0.10, 2, d["down_after"], rounds) < 0.01  # one target dead
    assert w.false_failover_probability(0.10, 2, 3, rounds) > 0.1  # why down_after is not 3
    assert w.false_failover_probability(0.25, 3, d["down_after"], rounds) > 0.1  # the margin ends ~20-25 %
    mean, worst = w.failover_time(d["interval"], d["timeout"], d["down_after"])
    assert mean <= 1.0 and worst <= 1.0
    # the brief's example: 0.25 s rounds, 3 targets, down_after 3, 10 min
    assert w.false_failover_probability(0.10, 3, 3, 2400) == pytest.approx(7.7e-4, rel=0.05)


def test_false_failover_probability_matches_a_simulation():
    import random
    rng = random.Random(5)
    p = w.false_failover_probability(0.3, 2, 2, 50)
    hits = 0
    for dummy in range(4000):
        streak = 0
        for dummy in range(50):
            lost = all(rng.random() < 1 - 0.7 ** 2 for dummy in range(2))
            streak = streak + 1 if lost else 0
            if streak >= 2:
                hits += 1
                break
    assert abs(hits / 4000.0 - p) < 0.03
