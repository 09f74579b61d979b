"""Tests for mwlab.reflector and mwlab.traffic.

Pure tests for the report maths run anywhere. The namespace tests need root; they build their
own tiny topology (namespaces named mwb-<pid>-*), never touch the root namespace, and remove
everything they created:

    mwb-N-s-c1 client 10.77.0.2/24 ── 10.77.0.1/24  mwb-N-s-gw router: multipath default over
                                                           u1 100.64.77.1/30, u2 100.64.78.1/30,
                                                           L4 hash, nft masquerade on both
    mwb-N-inet internet: 100.64.77.2/30, 100.64.78.2/30, 198.18.0.1-3/32 on lo, reflector :7777,
             blackhole 198.18.9.0/24 (silent, for timeout tests)

Run: cd /work/main && PYTHONPATH=lab /tmp/venv313/bin/pytest lab/tests/test_traffic.py -x
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from mwlab import reflector, traffic
from mwlab.traffic import GapTracker, percentile

U1, U2 = "100.64.77.1", "100.64.78.1"
UMAP = f"u1={U1},u2={U2}"
TARGETS = "198.18.0.1,198.18.0.2,198.18.0.3"
PORT = 7777


# ------------------------------------------------------------------------------------------
# pure unit tests


def test_percentile():
    assert percentile([], 50) is None
    assert percentile([5], 95) == 5
    vals = list(range(1, 101))
    assert percentile(vals, 50) == 50
    assert percentile(vals, 95) == 95
    assert percentile(vals, 100) == 100
    assert percentile([3, 1, 2], 0) == 1


def test_gap_tracker_steady_flow_has_no_gap():
    g = GapTracker(start=10.0, threshold_ms=50)
    for k in range(200):
        g.reply(10.0 + 0.001 + k * 0.005)
    g.finish(10.0 + 200 * 0.005)
    d = g.as_dict()
    assert d["gaps_over_threshold"] == 0
    assert d["gaps"] == []
    assert d["recovered"] is True
    assert 4.9 <= d["max_gap_ms"] <= 5.1


def test_gap_tracker_mid_run_gap():
    g = GapTracker(start=0.0, threshold_ms=100)
    times = [i * 0.005 for i in range(1, 200)] + [2.0 + i * 0.005 for i in range(100)]
    for t in times:
        g.reply(t)
    g.finish(2.5)
    d = g.as_dict()
    assert d["gaps_over_threshold"] == 1
    gap = d["gaps"][0]
    assert gap["start_s"] == pytest.approx(0.995)
    assert gap["end_s"] == pytest.approx(2.0)
    assert gap["ms"] == pytest.approx(1005.0)
    assert d["max_gap_ms"] == pytest.approx(1005.0)
    assert d["max_gap_start_s"] == pytest.approx(0.995)
    assert d["recovered"] is True


def test_gap_tracker_open_gap_and_dead_flow():
    g = GapTracker(start=0.0, threshold_ms=100)
    for i in range(1, 101):
        g.reply(i * 0.01)
    g.finish(3.0)  # last reply at 1.0, sending stopped at 3.0
    d = g.as_dict()
    assert d["recovered"] is False
    assert d["gaps"][-1] == {"start_s": 1.0, "end_s": None, "ms": 2000.0, "open": True}
    assert d["max_gap_ms"] == 2000.0

    dead = GapTracker(start=5.0, threshold_ms=100)
    dead.finish(5.05)  # never answered, even a short run is "not recovered"
    assert dead.as_dict()["recovered"] is False
    assert dead.as_dict()["gaps_over_threshold"] == 1


def test_gap_tracker_initial_wait_counts_and_late_replies_after_stop():
    g = GapTracker(start=0.0, threshold_ms=100)
    g.reply(0.4)  # first answer only after 400 ms
    g.reply(0.405)
    g.reply(1.02)  # arrives during the drain, after sending stopped at 1.0
    g.finish(1.0)
    d = g.as_dict()
    assert d["gaps"][0] == {"start_s": 0.0, "end_s": 0.4, "ms": 400.0}
    assert d["gaps_over_threshold"] == 2
    assert d["recovered"] is True


def test_gap_list_is_bounded():
    g = GapTracker(start=0.0, threshold_ms=1, max_kept=5)
    for i in range(1, 50):
        g.reply(i * 0.01)
    g.finish(0.49)
    assert g.n_gaps == 49
    assert len(g.gaps) == 5


def test_source_tracker():
    s = traffic.SourceTracker(start=100.0, umap={U1: "u1"})
    s.seen(100.1, U1, 4000)
    s.seen(100.2, U1, 4000)
    s.seen(101.5, U2, 4001)
    assert s.n_changes == 1
    assert s.first == {"t_s": 0.1, "seen": U1, "sport": 4000, "uplink": "u1"}
    assert s.changes[1] == {"t_s": 1.5, "seen": U2, "sport": 4001, "uplink": f"unmapped:{U2}"}


def test_parse_uplink_map_and_targets():
    assert traffic.parse_uplink_map("isp1=100.64.1.2, isp2=100.64.2.2") == {
        "100.64.1.2": "isp1", "100.64.2.2": "isp2"}
    assert traffic.parse_uplink_map({"100.64.1.2": "isp1"}) == {"100.64.1.2": "isp1"}
    assert traffic.parse_uplink_map({"isp1": "100.64.1.2"}) == {"100.64.1.2": "isp1"}
    assert traffic.parse_uplink_map("a=100.64.1.2|100.64.9.2") == {
        "100.64.1.2": "a", "100.64.9.2": "a"}
    with pytest.raises(ValueError):
        traffic.parse_uplink_map("isp1=nothere")
    assert traffic.parse_targets(None) == ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
    assert traffic.parse_targets("198.18.0.1 198.18.7.1") == ["198.18.0.1", "198.18.7.1"]


def test_burst_summary():
    res = [
        {"flow": 0, "proto": "udp", "target": "t1", "ok": True, "seen": U1, "rtt_ms": 1.0},
        {"flow": 1, "proto": "tcp", "target": "t2", "ok": True, "seen": U2, "rtt_ms": 3.0},
        {"flow": 2, "proto": "udp", "target": "t1", "ok": True, "seen": U1, "rtt_ms": 2.0},
        {"flow": 3, "proto": "udp", "target": "t2", "ok": False, "error": "timeout"},
    ]
    s = traffic.burst_summary(res, {U1: "u1"})
    assert (s["flows"], s["ok"], s["failed"]) == (4, 3, 1)
    assert s["by_source"] == {U1: 2, U2: 1}
    assert s["by_uplink"] == {"u1": 2, f"unmapped:{U2}": 1}
    assert s["by_target"] == {"t1": {"ok": 2, "failed": 0}, "t2": {"ok": 1, "failed": 1}}
    assert s["by_proto"] == {"udp": {"ok": 2, "failed": 1}, "tcp": {"ok": 1, "failed": 0}}
    assert s["errors"] == {"timeout": 1}
    assert s["rtt_ms"] == {"p50": 2.0, "p95": 3.0, "max": 3.0}


def test_summarize_flows():
    per = []
    for i, (mg, rec, n) in enumerate([(10.0, True, 5), (1000.0, True, 5), (50.0, False, 0),
                                      (2000.0, False, 3)]):
        per.append({"flow": i, "max_gap_ms": mg, "gaps_over_threshold": int(mg > 100),
                    "recovered": rec, "received": n, "source_changes": int(i == 1),
                    "first_source": U1 if n else None,
                    "last_source": (U2 if i == 1 else U1) if n else None})
    s = traffic.summarize_flows(per, {U1: "u1", U2: "u2"})
    assert s["max_gap_ms"] == 2000.0
    assert s["p50_max_gap_ms"] == 50.0
    assert s["p95_max_gap_ms"] == 2000.0
    assert s["flows_with_gaps"] == 2
    assert s["not_recovered"] == [2, 3]
    assert s["never_answered"] == [2]
    assert s["source_changes"] == 1
    assert s["by_first_uplink"] == {"u1": 3}
    assert s["by_last_uplink"] == {"u1": 2, "u2": 1}


def test_make_reply():
    r = json.loads(reflector.make_reply(b'{"flow": 3, "seq": 9, "t": 1.5}\n',
                                        "::ffff:100.64.1.2", 40000, "198.18.0.2", 7777, "udp"))
    assert r == {"flow": 3, "seq": 9, "t": 1.5, "seen": "100.64.1.2", "sport": 40000,
                 "dst": "198.18.0.2", "dport": 7777, "proto": "udp"}
    r = json.loads(reflector.make_reply(b"hello", "100.64.1.2", 1, "198.18.0.1", 7, "tcp"))
    assert r["payload"] == "hello" and r["seen"] == "100.64.1.2"


def test_state_heuristics():
    state = {"lab": "mwl", "sites": {"a": {"uplinks": [
        {"name": "isp1", "address": "100.64.1.2/30", "gateway": "100.64.1.1"},
        {"name": "isp2", "peer": "100.64.2.1", "local": "100.64.2.2"}]}},
        "inet": {"hosts": ["198.18.0.1", "198.18.0.2", "198.18.7.1"]}}
    assert traffic.uplink_map_from_state(state, "a") == {"100.64.1.2": "isp1",
                                                        "100.64.2.2": "isp2"}
    assert traffic.targets_from_state(state) == ["198.18.0.1", "198.18.0.2", "198.18.7.1"]
    assert traffic.uplink_map_from_state({}, "a") == {}
    assert traffic.targets_from_state({"x": [1, 2]}) == []
    state2 = {"sites": {"a": {"uplinks": {"isp1": {"addr": "100.64.1.2"}}}}}
    assert traffic.uplink_map_from_state(state2, "a") == {"100.64.1.2": "isp1"}
    # the layout mwlab.lab writes today (state["topology"] = Topology.to_dict())
    lab_state = {"status": "up", "pids": {"reflector": {"pid": 1}}, "topology": {
        "lab": "mwl",
        "internet": {"hosts": ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.7.1"],
                     "probe_targets": ["198.18.7.1"]},
        "sites": [
            {"name": "a", "lan": {"interface": "lan0", "network": "10.1.0.0/24", "clients": 2},
             "uplinks": [{"name": "isp1", "interface": "wan1", "address": "100.64.1.2/30",
                          "weight": 1, "gateway": "100.64.1.1"},
                         {"name": "ppp", "interface": "ppp0", "address": "100.64.3.2/32",
                          "weight": 1, "peer": "100.64.3.1"}]},
            {"name": "b", "lan": {"interface": "lan0", "network": "10.2.0.0/24", "clients": 1},
             "uplinks": [{"name": "isp1", "interface": "wan1", "address": "100.64.9.2/30",
                          "weight": 1, "gateway": "100.64.9.1"}]}]}}
    assert traffic.uplink_map_from_state(lab_state, "a") == {"100.64.1.2": "isp1",
                                                            "100.64.3.2": "ppp"}
    assert traffic.uplink_map_from_state(lab_state, "b") == {"100.64.9.2": "isp1"}
    assert traffic.targets_from_state(lab_state) == ["198.18.0.1", "198.18.0.2",
                                                     "198.18.0.3", "198.18.7.1"]


def test_register_adds_subcommands():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", default="mwl")
    sub = ap.add_subparsers(dest="cmd")
    traffic.register(sub)
    a = ap.parse_args(["--lab", "x", "traffic", "a", "--flows", "10", "--proto", "both",
                       "--json", "--uplink-map", UMAP, "--client-ns", "mwb-foo"])
    assert a.func is traffic.cmd_traffic and a.lab == "x" and a.proto == "both"
    ctx = traffic.lab_context(a)
    assert ctx["client_ns"] == "mwb-foo" and ctx["lab"] == "x"
    assert ctx["uplink_map"] == {U1: "u1", U2: "u2"}
    a = ap.parse_args(["flows", "a", "--flows", "5", "--duration", "3", "--tcp"])
    assert a.func is traffic.cmd_flows and a.tcp and a.duration == 3.0
    assert traffic.lab_context(a)["client_ns"] == "mwl-a-c1"


# ------------------------------------------------------------------------------------------
# namespace tests

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip")
                                or not shutil.which("nft"), reason="needs root, ip and nft")


def sh(*args, input=None, check=True):
    res = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {res.stderr}")
    return res


class Topo:
    def __init__(self):
        # named like a lab "mwb-N" with one site "s" so the lab CLI handlers can find them
        self.lab = f"mwb-{os.getpid() % 100000}"
        self.c, self.r, self.i = f"{self.lab}-s-c1", f"{self.lab}-s-gw", f"{self.lab}-inet"
        self.names = [self.c, self.r, self.i]
        assert all(n.startswith("mwb-") for n in self.names)
        self.refl = None
        self.tmp = tempfile.mkdtemp(prefix="mwb-refl-")

    def build(self):
        for n in self.names:
            sh("ip", "netns", "add", n)
        c, r, i = self.names
        # veths are created directly inside the namespaces: the root namespace never sees them
        sh("ip", "link", "add", "c-lan", "netns", c, "type", "veth", "peer", "name", "r-lan",
           "netns", r)
        for u in ("u1", "u2"):
            sh("ip", "link", "add", f"r-{u}", "netns", r, "type", "veth", "peer", "name",
               f"i-{u}", "netns", i)
        sh("ip", "-n", c, "-batch", "-", input="\n".join([
            "link set lo up", "link set c-lan up", "addr add 10.77.0.2/24 dev c-lan",
            "route add default via 10.77.0.1"]) + "\n")
        sh("ip", "-n", r, "-batch", "-", input="\n".join([
            "link set lo up", "link set r-lan up", "link set r-u1 up", "link set r-u2 up",
            "addr add 10.77.0.1/24 dev r-lan", f"addr add {U1}/30 dev r-u1",
            f"addr add {U2}/30 dev r-u2",
            "route add default nexthop via 100.64.77.2 dev r-u1 "
            "nexthop via 100.64.78.2 dev r-u2"]) + "\n")
        sh("ip", "-n", i, "-batch", "-", input="\n".join([
            "link set lo up", "link set i-u1 up", "link set i-u2 up",
            "addr add 100.64.77.2/30 dev i-u1", "addr add 100.64.78.2/30 dev i-u2",
            "addr add 198.18.0.1/32 dev lo", "addr add 198.18.0.2/32 dev lo",
            "addr add 198.18.0.3/32 dev lo", "route add blackhole 198.18.9.0/24"]) + "\n")
        sh("ip", "netns", "exec", r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
           "net.ipv4.fib_multipath_hash_policy=1")
        sh("ip", "netns", "exec", r, "nft", "-f", "-", input="""
table ip mwb {
  chain post { type nat hook postrouting priority srcnat; oifname { "r-u1", "r-u2" } masquerade; }
}
""")
        self.refl = subprocess.Popen(
            ["ip", "netns", "exec", i, sys.executable, "-m", "mwlab.reflector", "--port",
             str(PORT), "--state-dir", self.tmp, "--pid-file", f"{self.tmp}/refl.pid",
             "--lifetime", "300"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=traffic._env())
        line = self.refl.stdout.readline()
        assert json.loads(line)["ready"], self.refl.stderr.read()

    def drop(self, on: bool):
        """Silently drop everything the router forwards (an ISP outage on both uplinks)."""
        if on:
            sh("ip", "netns", "exec", self.r, "nft", "-f", "-", input="""
table ip mwbdrop { chain blk { type filter hook forward priority 0; policy drop; }; }
""")
        else:
            sh("ip", "netns", "exec", self.r, "nft", "delete", "table", "ip", "mwbdrop")

    def pids(self, ns):
        out = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        return [int(p) for p in out if _alive(int(p))]

    def teardown(self):
        # safe to call twice; only ever touches our own mwb- namespaces and processes
        if self.refl is not None and self.refl.poll() is None:
            self.refl.send_signal(signal.SIGTERM)
            try:
                self.refl.wait(5)
            except subprocess.TimeoutExpired:
                self.refl.kill()
                self.refl.wait(5)
        existing = set(n.get("name") for n in traffic._ip_json(["netns", "list"]))
        for n in self.names:
            if n in existing and n.startswith("mwb-"):
                for pid in self.pids(n):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                sh("ip", "netns", "del", n, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(f"/run/mwlab/{self.lab}", ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def topo():
    t = Topo()
    try:
        t.build()
        yield t
        refl = t.refl
        t.teardown()
        assert refl.returncode == 0  # clean SIGTERM exit
        assert not os.path.exists(f"{t.tmp}/refl.pid")
    finally:
        t.teardown()
    left = {n.get("name") for n in traffic._ip_json(["netns", "list"])}
    assert not left & set(t.names)


def run(topo, *argv, timeout=None):
    out = traffic.run_in_netns(topo.c, list(argv), timeout=timeout)
    assert topo.pids(topo.c) == []  # the client exited, nothing lingers in the namespace
    return out


@needs_root
def test_reflector_udp_tcp_real_source(topo):
    out = run(topo, "burst", "--flows", "12", "--proto", "both", "--targets", TARGETS,
              "--uplink-map", UMAP, "--details")
    assert (out["flows"], out["ok"], out["failed"]) == (12, 12, 0)
    assert out["by_proto"] == {"udp": {"ok": 6, "failed": 0}, "tcp": {"ok": 6, "failed": 0}}
    for f in out["per_flow"]:
        assert f["seen"] in (U1, U2)  # the masqueraded uplink address, not 10.77.0.2
        assert f["dst"] == f["target"]  # replies from the address asked (IP_PKTINFO for UDP)
        assert f["local"].startswith("10.77.0.2:")
        assert f["uplink"] == {U1: "u1", U2: "u2"}[f["seen"]]
    assert set(out["by_target"]) == set(TARGETS.split(","))
    # flow log written by the reflector
    deadline = time.monotonic() + 2
    while True:
        with open(f"{topo.tmp}/flows.jsonl", encoding="utf-8") as fh:
            recs = [json.loads(line) for line in fh]
        if len(recs) >= 12 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(recs) == 12 and {r["proto"] for r in recs} == {"udp", "tcp"}
    assert all(r["seen"] in (U1, U2) for r in recs)


@needs_root
def test_burst_200_udp_splits_over_both_uplinks(topo):
    out = run(topo, "burst", "--flows", "200", "--targets", TARGETS, "--uplink-map", UMAP)
    assert out["ok"] == 200 and out["failed"] == 0
    assert sum(out["by_source"].values()) == 200
    assert sum(out["by_uplink"].values()) == 200
    assert set(out["by_uplink"]) == {"u1", "u2"}
    assert min(out["by_uplink"].values()) >= 50, out["by_uplink"]
    assert sum(v["ok"] for v in out["by_target"].values()) == 200
    assert out["elapsed_s"] < 5


@needs_root
def test_burst_failures_are_bounded_in_time(topo):
    # blackholed target: every flow must give up after its own timeout, not hang
    t0 = time.monotonic()
    out = run(topo, "burst", "--flows", "20", "--proto", "both", "--targets", "198.18.9.1",
              "--udp-timeout", "0.2", "--udp-retries", "2", "--tcp-timeout", "0.5",
              "--details")
    took = time.monotonic() - t0
    assert out["ok"] == 0 and out["failed"] == 20
    assert out["errors"] == {"timeout": 10, "connect-timeout": 10}
    for f in out["per_flow"]:
        if f["proto"] == "udp":
            assert f["tries"] == 3 and 550 <= f["elapsed_ms"] <= 900
        else:
            assert 450 <= f["elapsed_ms"] <= 800
    assert out["elapsed_s"] < 1.5 and took < 4
    # closed port: refused immediately (ICMP port unreachable / RST)
    out = run(topo, "burst", "--flows", "6", "--proto", "both", "--targets", "198.18.0.1",
              "--dst-port", "7778")
    assert out["failed"] == 6 and out["errors"] == {"refused": 6}
    assert out["elapsed_s"] < 1


@needs_root
def test_stream_steady_has_no_large_gap(topo):
    out = run(topo, "stream", "--flows", "20", "--interval-ms", "5", "--duration", "1.5",
              "--targets", TARGETS, "--uplink-map", UMAP)
    s = out["summary"]
    assert out["stop_reason"] == "duration"
    assert 1.4 <= s["duration_s"] <= 1.7
    assert s["max_gap_ms"] < 100, s
    assert s["not_recovered"] == [] and s["never_answered"] == []
    assert s["source_changes"] == 0
    assert s["loss_pct"] < 1
    # ~300 packets per flow on an idle machine; a busy 2-core CI box sends fewer, never more.
    assert 20 * 200 <= s["sent"] <= 20 * 310
    assert set(s["by_last_uplink"]) == {"u1", "u2"}
    for f in out["per_flow"]:
        assert f["sources"][0]["seen"] in (U1, U2)
        assert f["rtt_ms"]["avg"] < 50


@needs_root
def test_stream_reports_outage_gap_and_stops_on_sigterm(topo):
    bg = traffic.start_in_netns(topo.c, ["stream", "--flows", "20", "--interval-ms", "5",
                                         "--duration", "0", "--gap-threshold-ms", "100",
                                         "--targets", TARGETS, "--uplink-map", UMAP])
    try:
        ready = bg.wait_ready()
        t_ready = time.time()
        time.sleep(0.8)
        t_drop = time.time()
        topo.drop(True)
        try:
            time.sleep(1.0)
        finally:
            topo.drop(False)
        t_undrop = time.time()
        time.sleep(0.7)
        t_stop = time.monotonic()
        out = bg.stop()
        assert time.monotonic() - t_stop < 2  # reacts to SIGTERM promptly
    finally:
        bg.kill()
    assert ready["pid"] and t_ready >= ready["started_at"]
    s = out["summary"]
    assert out["stop_reason"] == "stopped"
    assert 2.2 <= s["duration_s"] <= 3.5
    assert 900 <= s["p50_max_gap_ms"] <= 1300, s
    assert s["max_gap_ms"] < 1400
    assert s["not_recovered"] == [] and s["flows_with_gaps"] == 20
    drop_at = t_drop - out["started_at"]
    undrop_at = t_undrop - out["started_at"]
    for f in out["per_flow"]:
        assert f["gaps_over_threshold"] == 1, f
        g = f["gaps"][0]
        assert drop_at - 0.05 <= g["start_s"] <= drop_at + 0.1, (g, drop_at)
        assert undrop_at - 0.05 <= g["end_s"] <= undrop_at + 0.2, (g, undrop_at)
        assert f["recovered"] and f["source_changes"] == 0
    assert topo.pids(topo.c) == []


@needs_root
def test_tcp_hold_steady_and_broken_by_outage(topo):
    out = run(topo, "tcp-hold", "--conns", "10", "--interval-ms", "50", "--duration", "1",
              "--targets", TARGETS, "--uplink-map", UMAP)
    s = out["summary"]
    assert s["established"] == 10 and s["broken"] == 0 and s["alive_at_end"] == 10
    assert set(s["by_first_uplink"]) <= {"u1", "u2"} and sum(
        s["by_first_uplink"].values()) == 10
    for c in out["per_conn"]:
        assert c["first_source"] in (U1, U2) and c["source_changes"] == 0
        assert c["received"] >= 15 and c["max_gap_ms"] < 200

    bg = traffic.start_in_netns(topo.c, ["tcp-hold", "--conns", "6", "--interval-ms", "50",
                                         "--duration", "2.5", "--break-timeout-ms", "500",
                                         "--targets", TARGETS])
    try:
        time.sleep(0.5)
        topo.drop(True)
        try:
            time.sleep(1.0)
        finally:
            topo.drop(False)
        out = bg.wait(timeout=10)
    finally:
        bg.kill()
    s = out["summary"]
    assert s["established"] == 6 and s["broken"] == 6, s
    assert set(s["reasons"]) == {"timeout"}
    for c in out["per_conn"]:
        assert 0.9 <= c["broken_at_s"] <= 1.4, c
    # all connections dead -> the run ends by itself before its duration
    assert out["stop_reason"] == "all-closed" and s["duration_s"] < 2


@needs_root
def test_python_api_inside_namespace_helpers(topo):
    # ensure_running starts a detached reflector (other port) and stop() ends it
    d = os.path.join(topo.tmp, "r2")
    pid = reflector.ensure_running(topo.i, 7790, d)
    try:
        assert pid and reflector.ensure_running(topo.i, 7790, d) == pid
        out = run(topo, "burst", "--flows", "4", "--targets", "198.18.0.3",
                  "--dst-port", "7790")
        assert out["ok"] == 4
    finally:
        assert reflector.stop(os.path.join(d, "reflector.pid"))
    assert not _alive(pid) or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert reflector.read_pid(os.path.join(d, "reflector.pid")) is None


@needs_root
def test_lab_cli_handlers(topo, capsys):
    import argparse

    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd")
    traffic.register(sub)
    # reflector auto-started in {lab}-inet on another port, client ns from the naming rule
    args = ap.parse_args(["traffic", "s", "--lab", topo.lab, "--flows", "40", "--proto",
                          "both", "--port", "7791", "--uplink-map", UMAP, "--json"])
    pid_file = f"/run/mwlab/{topo.lab}/reflector-7791/reflector.pid"
    assert reflector.find_in_netns(topo.i, PORT) == topo.refl.pid  # would be reused
    assert reflector.find_in_netns(topo.i, 7791) is None
    try:
        assert args.func(args) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["ok"] == 40 and out["client_ns"] == topo.c
        assert sum(out["by_uplink"].values()) == 40
        assert reflector.read_pid(pid_file)
        args = ap.parse_args(["flows", "s", "--lab", topo.lab, "--flows", "4", "--duration",
                              "0.5", "--port", "7791", "--uplink-map", UMAP])
        assert args.func(args) == 0
        text = capsys.readouterr().out
        assert "max gap" in text and "not recovered: 0" in text
    finally:
        reflector.stop(pid_file)
    assert reflector.read_pid(pid_file) is None


def test_uplink_map_from_kernel(monkeypatch):
    names = ["mwl-a-gw", "mwl-a-c1", "mwl-a-isp1", "mwl-a-isp2", "mwl-a-ppp", "mwl-inet"]
    addrs = {
        "mwl-a-gw": [{"family": "inet", "local": "10.1.0.1", "prefixlen": 24},
                     {"family": "inet", "local": "100.64.1.2", "prefixlen": 30},
                     {"family": "inet", "local": "100.64.2.2", "prefixlen": 24},
                     {"family": "inet", "local": "100.64.3.2", "prefixlen": 32,
                      "address": "100.64.3.1"}],
        "mwl-a-isp1": [{"family": "inet", "local": "100.64.1.1", "prefixlen": 30}],
        "mwl-a-isp2": [{"family": "inet", "local": "100.64.2.1", "prefixlen": 24}],
        "mwl-a-ppp": [{"family": "inet", "local": "100.64.3.1", "prefixlen": 32,
                       "address": "100.64.3.2"}],
    }
    monkeypatch.setattr(traffic, "_addrs", lambda ns: addrs.get(ns, []))
    assert traffic.uplink_map_from_kernel("mwl", "a", names) == {
        "100.64.1.2": "isp1", "100.64.2.2": "isp2", "100.64.3.2": "ppp"}
    assert traffic.uplink_map_from_kernel("mwl", "b", names) == {}
