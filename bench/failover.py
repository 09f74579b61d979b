#!/usr/bin/env python3
"""Failover and recovery time of the multiwan watchdog on a lab gateway (issue 5, Benchmarks).

Run as root from the repository root:

    .venv/bin/python bench/failover.py [--trials 20] [--flows 40] [--interval-ms 5] [--lab mwf1]

What it does (everything bounded; the lab is always torn down):

1. ``mwlab up``: one site ``s1``, two uplinks (isp1 wan1, isp2 wan2), one LAN client; plain
   (non-systemd) gateway.
2. converges the gateway: ``ansible-playbook -i <lab inventory> playbooks/site.yml``.
3. starts the watchdog in the gateway (nsenter into the anchor's net+mount namespaces, as the
   tests do) with the config ``multiwan_plan`` computes from the lab's inventory host vars
   (default settings: interval 0.15 s, timeout 0.3 s, down_after 4, up_after 20).
4. per trial (modes interleaved: upstream, blackhole, link, upstream, ...): starts the lab's
   long-running UDP flows from the LAN client (``mwlab.traffic`` stream mode, --flows every
   --interval-ms), waits 1 s, fails isp1, waits until the watchdog has taken it out of the
   default nexthop group, waits 1.5 s, restores isp1, waits until the state file says isp1 is
   up *and* its nexthop is back in the group, waits 1 s, stops the flows.

   * failover time = the largest per-flow gap (between replies) among the flows whose source
     (as seen by the reflector) was isp1 when the failure began, over the gaps that overlap the
     failure window;
   * isp2 flows: their largest gap in the same window (should stay below 100 ms);
   * recovery time = from the return of ``restore`` to isp1 ``up`` in the state file and back in
     the group (polled every 10 ms); also the largest gap any flow saw after the restore.
5. prints p50/p95 per mode, plus the watchdog's RSS (VmRSS/VmHWM) and CPU (utime+stime from
   /proc/PID/stat) idle and over the whole run.

Never touches the root network namespace (everything runs in the lab's namespaces).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lab"))
sys.path.insert(0, str(REPO / ".build" / "collections"))

SITE = "s1"
MODES = ("upstream", "blackhole", "link")
TOPOLOGY = {
    "sites": [{
        "name": SITE,
        "lan": {"network": "10.1.0.0/24", "clients": 1},
        "uplinks": [
            {"name": "isp1", "interface": "wan1", "address": "100.64.1.2/24", "gateway": "100.64.1.1"},
            {"name": "isp2", "interface": "wan2", "address": "100.64.2.2/24", "gateway": "100.64.2.1"},
        ],
    }],
}
ADDR = {"isp1": "100.64.1.2", "isp2": "100.64.2.2"}
CONFIG_PATH = "/etc/multiwan/watchdog.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("[%s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def pct(values, p):
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    k = max(1, math.ceil(p / 100.0 * len(vals)))
    return vals[min(k, len(vals)) - 1]


def wait_for(pred, timeout, step=0.01):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return time.monotonic() - t0
        time.sleep(step)
    return None


def ensure_collection_link():
    coll = REPO / ".build" / "collections" / "ansible_collections" / "multiwan"
    coll.mkdir(parents=True, exist_ok=True)
    if not (coll / "linux").exists():
        (coll / "linux").symlink_to(REPO)


def ansible_env():
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_HOST_KEY_CHECKING="0", ANSIBLE_RETRY_FILES_ENABLED="0", PYTHONPATH=str(REPO / "lab"))


def proc_sample(pid):
    """(VmRSS kB, VmHWM kB, utime+stime seconds) of PID."""
    status = Path(f"/proc/{pid}/status").read_text()
    kv = {}
    for line in status.splitlines():
        k, _, v = line.partition(":")
        kv[k] = v.strip()
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    return int(kv["VmRSS"].split()[0]), int(kv["VmHWM"].split()[0]), cpu


class Bench:
    def __init__(self, args):
        from mwlab import Lab
        self.args = args
        self.lab = Lab(args.lab)
        self.wd = None
        self.wd_log = None
        self.gw_ns = None
        self.tmp = Path(tempfile.mkdtemp(prefix="mwf-bench-"))
        self.plan = None
        self.nh = {}
        self.group_id = None
        self.samples = []  # (monotonic, rss, hwm, cpu)
        self.raw = []
        self.warm = None

    # -- gateway views -------------------------------------------------------------------
    def members(self):
        p = subprocess.run(["ip", "-n", self.gw_ns, "-j", "nexthop", "show", "id", str(self.group_id)],
                           capture_output=True, text=True, timeout=5)
        if p.returncode or not p.stdout.strip():
            return None
        return sorted(int(m["id"]) for m in json.loads(p.stdout)[0].get("group", []))

    def wd_state(self):
        # the watchdog's private /run, through its own root (mount namespace of the anchor)
        try:
            return json.loads(Path(f"/proc/{self.wd.pid}/root/run/multiwan/state.json").read_text())
        except (OSError, ValueError):
            return None

    def isp1(self):
        doc = self.wd_state() or {}
        return doc.get("uplinks", {}).get("isp1", {})

    def sample(self):
        try:
            self.samples.append((time.monotonic(), *proc_sample(self.wd.pid)))
        except (OSError, ValueError, IndexError):
            pass

    # -- setup ---------------------------------------------------------------------------
    def up(self):
        from mwlab import Topology
        t0 = time.monotonic()
        self.lab.up(Topology.from_dict(TOPOLOGY, lab=self.args.lab))
        self.gw_ns = self.lab.namespace(SITE, "gw")
        log("lab up in %.1f s" % (time.monotonic() - t0))

    def converge(self):
        ensure_collection_link()
        inv = self.tmp / "inventory.yml"
        inv.write_text(self.lab.inventory_yaml())
        t0 = time.monotonic()
        p = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(inv), "playbooks/site.yml"],
                           cwd=REPO, capture_output=True, text=True, env=ansible_env(), timeout=600)
        (self.tmp / "converge.log").write_text(p.stdout + p.stderr)
        if p.returncode:
            raise RuntimeError("converge failed:\n" + (p.stdout + p.stderr)[-3000:])
        recap = [l for l in p.stdout.splitlines() if " : ok=" in l]
        log("converged in %.1f s: %s" % (time.monotonic() - t0, " | ".join(x.strip() for x in recap)))

    def start_watchdog(self):
        from ansible_collections.multiwan.linux.plugins.filter.multiwan_plan import multiwan_plan
        hv = self.lab.inventory()["all"]["children"]["gateways"]["hosts"][SITE]
        data = {k: hv[k] for k in ("multiwan_lan_networks", "multiwan_uplinks")}
        data["multiwan_watchdog"] = {}
        self.plan = multiwan_plan(data, host=SITE)
        cfg = self.plan["watchdog"]
        self.group_id = cfg["group"]["id"]
        self.nh = {u["name"]: u["nexthop_id"] for u in cfg["uplinks"]}
        (self.tmp / "watchdog.json").write_text(json.dumps(cfg, indent=1))
        run = self.lab.run(SITE, "gw", ["/bin/sh", "-c", "mkdir -p /etc/multiwan/hooks.d && cat > %s" % CONFIG_PATH],
                           input=json.dumps(cfg, indent=1), timeout=30)
        if run.returncode:
            raise RuntimeError("writing the config failed: %s" % run.stderr)
        anchor = self.lab.gateway_pid(SITE)
        env = dict(os.environ, MULTIWAN_LIBDIR=str(REPO / "plugins" / "module_utils"), PYTHONDONTWRITEBYTECODE="1")
        self.wd_log = open(self.tmp / "watchdog.log", "w")
        # nsenter without --pid execs the command itself: Popen.pid is the watchdog's pid
        self.wd = subprocess.Popen(["nsenter", "--target", str(anchor), "--net", "--mount", "--",
                                    "/usr/bin/python3", str(REPO / "roles" / "gateway" / "files" / "multiwan"),
                                    "watchdog", "--config", CONFIG_PATH],
                                   env=env, stdout=self.wd_log, stderr=subprocess.STDOUT)
        both = sorted(self.nh.values())
        took = wait_for(lambda: self.members() == both and self.isp1().get("targets"), 10, step=0.05)
        if took is None:
            raise RuntimeError("watchdog: group not %s within 10 s (%s)" % (both, self.members()))
        ok = wait_for(lambda: all(u["state"] == "up" and not u["assumed"]
                                  for u in (self.wd_state() or {}).get("uplinks", {"x": {"state": "?"}}).values()),
                      15, step=0.05)
        if ok is None:
            raise RuntimeError("watchdog: uplinks not confirmed up: %s" % json.dumps(self.wd_state())[:2000])
        comm = Path(f"/proc/{self.wd.pid}/comm").read_text().strip()
        log("watchdog pid %d (%s) up, group %s in %.2f s" % (self.wd.pid, comm, both, took))

    # -- one trial -----------------------------------------------------------------------
    def trial(self, mode):
        from mwlab.traffic import start_in_netns
        a = self.args
        umap = "isp1=%s,isp2=%s" % (ADDR["isp1"], ADDR["isp2"])
        client = self.lab.namespace(SITE, "c1")
        bg = start_in_netns(client, ["stream", "--flows", a.flows, "--interval-ms", a.interval_ms,
                                     "--duration", 60, "--gap-threshold-ms", a.gap_ms, "--uplink-map", umap],
                            wait_ready=10)
        res = {"mode": mode}
        try:
            time.sleep(1.0)
            self.sample()
            nh1 = self.nh["isp1"]
            w_fail = time.time()
            self.lab.fail(SITE, "isp1", mode)
            t_failed = time.monotonic()
            res["fail_call_s"] = round(time.time() - w_fail, 3)
            out = wait_for(lambda: (self.members() or [nh1]) and nh1 not in (self.members() or [nh1]), 10)
            res["group_out_s"] = None if out is None else round(time.monotonic() - t_failed + res["fail_call_s"], 3)
            res["down_reason"] = self.isp1().get("reason")
            time.sleep(1.5)
            self.sample()
            w_restore = time.time()
            self.lab.restore(SITE, "isp1")
            t_restored = time.monotonic()
            res["restore_call_s"] = round(time.time() - w_restore, 3)
            rec = wait_for(lambda: self.isp1().get("state") == "up" and nh1 in (self.members() or []), 20)
            res["recovery_s"] = None if rec is None else round(time.monotonic() - t_restored, 3)
            time.sleep(1.0)
            self.sample()
        finally:
            try:
                report = bg.stop(timeout=15)
            except Exception:
                bg.kill()
                raise
        self.analyse(report, w_fail, w_restore, res)
        self.raw.append({"mode": mode, "w_fail": w_fail, "w_restore": w_restore, "report": report})
        return res

    def warmup(self, seconds=3.0):
        """A short stream before the trials (first packets through a fresh gateway)."""
        from mwlab.traffic import run_in_netns
        rep = run_in_netns(self.lab.namespace(SITE, "c1"),
                           ["stream", "--flows", self.args.flows, "--interval-ms", self.args.interval_ms,
                            "--duration", seconds, "--gap-threshold-ms", self.args.gap_ms,
                            "--uplink-map", "isp1=%s,isp2=%s" % (ADDR["isp1"], ADDR["isp2"])])
        self.raw.append({"mode": "warmup", "report": rep})
        s = rep["summary"]
        first = [f["gaps"][0] for f in rep["per_flow"] if f["gaps"] and f["gaps"][0]["start_s"] < 0.05]
        self.warm = {"max_gap_ms": s["max_gap_ms"], "loss_pct": s["loss_pct"], "by_first_uplink": s.get("by_first_uplink"),
                     "flows_first_reply_late": len(first), "first_reply_max_ms": max((g["ms"] for g in first), default=0)}
        log("warm-up stream: %s" % json.dumps(self.warm))

    @staticmethod
    def analyse(report, w_fail, w_restore, res):
        started = report["started_at"]
        interval = report["params"]["interval_ms"] / 1000.0
        nflows = len(report["per_flow"])
        t_fail, t_restore = w_fail - started, w_restore - started
        fo_isp1, gap_isp2, after_restore, before = [], [], [], []
        counts = {"isp1": 0, "isp2": 0, "other": 0}
        unmoved = 0
        for f in report["per_flow"]:
            off = interval * f["flow"] / nflows  # the flow's own start relative to t0
            src = None
            for ch in f["sources"]:
                if ch["t_s"] <= t_fail:
                    src = ch.get("uplink")
            up = src if src in ("isp1", "isp2") else "other"
            counts[up] += 1
            in_window, after, pre = 0.0, 0.0, 0.0
            for g in f["gaps"]:
                gs = g["start_s"] + off
                ge = (g["end_s"] + off) if g["end_s"] is not None else float("inf")
                # a gap the failure caused starts at the flow's last reply before the failure
                if t_fail - 0.1 < gs < t_restore and ge > t_fail:
                    in_window = max(in_window, g["ms"])
                elif ge <= t_fail + 0.05:
                    pre = max(pre, g["ms"])
                if ge > t_restore and gs >= t_restore - 0.2:
                    after = max(after, g["ms"])
            before.append(pre)
            if up == "isp1":
                fo_isp1.append(in_window)
                if not any(ch.get("uplink") == "isp2" and t_fail < ch["t_s"] < t_restore for ch in f["sources"]):
                    unmoved += 1
            elif up == "isp2":
                gap_isp2.append(in_window)
            after_restore.append(after)
        res["flows"] = counts
        res["failover_ms"] = max(fo_isp1) if fo_isp1 else None
        res["failover_min_ms"] = min(fo_isp1) if fo_isp1 else None
        res["isp1_flows_not_moved"] = unmoved
        res["isp2_max_gap_ms"] = max(gap_isp2) if gap_isp2 else 0.0
        res["isp2_flows_gap_over_100"] = sum(1 for g in gap_isp2 if g > 100)
        res["after_restore_max_gap_ms"] = max(after_restore) if after_restore else 0.0
        res["after_restore_flows_gap"] = sum(1 for g in after_restore if g > 100)
        res["isp1_flows_gap_over_100"] = sum(1 for g in fo_isp1 if g > 100)
        res["before_fail_max_gap_ms"] = max(before) if before else 0.0
        res["loss_pct"] = report["summary"]["loss_pct"]
        res["missed_sends"] = report["summary"]["missed_sends"]

    # -- run -----------------------------------------------------------------------------
    def run(self):
        a = self.args
        deadline = time.monotonic() + a.max_seconds
        self.up()
        self.converge()
        self.start_watchdog()
        self.warmup()
        # idle figures (no flows, no failures)
        self.sample()
        time.sleep(a.idle_seconds)
        self.sample()
        idle = self.samples[-2:]
        results = []
        stopped_early = False
        for n in range(a.trials):
            for mode in MODES:
                if time.monotonic() > deadline:
                    stopped_early = True
                    break
                r = self.trial(mode)
                r["n"] = n
                results.append(r)
                log(json.dumps(r))
                if r["recovery_s"] is None:
                    log("isp1 did not come back; waiting up to 20 s more")
                    wait_for(lambda: self.isp1().get("state") == "up" and self.nh["isp1"] in (self.members() or []), 20)
            if stopped_early:
                break
        self.sample()
        (self.tmp / "results.json").write_text(json.dumps({"trials": results, "samples": self.samples,
                                                            "warmup": self.warm}, indent=1))
        with open(self.tmp / "raw.jsonl", "w") as fh:
            for r in self.raw:
                fh.write(json.dumps(r, separators=(",", ":")) + "\n")
        self.report(results, idle, stopped_early)

    def report(self, results, idle, stopped_early):
        a = self.args
        print("\nfailover benchmark: lab %s, 1 site x 2 uplinks x 3 probe targets, watchdog defaults "
              "(interval 0.15 s, timeout 0.3 s, down_after 4, up_after 20)" % a.lab)
        print("flows: %d UDP flows from the LAN client, one datagram every %s ms each; gaps recorded above %s ms"
              % (a.flows, a.interval_ms, a.gap_ms))
        print("warm-up stream (3 s, before the trials): %s" % json.dumps(self.warm))
        print("%s, load %s, %d CPUs" % (time.strftime("%Y-%m-%d %H:%M"), " ".join(Path("/proc/loadavg").read_text().split()[:3]),
                                          os.cpu_count()))
        if stopped_early:
            print("NOTE: stopped at the --max-seconds bound (%d s) before --trials %d per mode" % (a.max_seconds, a.trials))
        hdr = "%-10s %3s  %-22s %-22s %-22s %-14s %s" % ("mode", "n", "failover ms p50/p95/max",
                                                       "group-out s p50/p95", "recovery s p50/p95/max",
                                                       "isp2 gaps>100", "after-restore gaps>100 (trials)")
        print(hdr)
        for mode in MODES:
            rs = [r for r in results if r["mode"] == mode]
            if not rs:
                continue
            fo = [r["failover_ms"] for r in rs]
            go = [r["group_out_s"] for r in rs]
            rc = [r["recovery_s"] for r in rs]

            def f3(vals, fmt):
                return "/".join(fmt % v if v is not None else "-" for v in
                                (pct(vals, 50), pct(vals, 95), max([x for x in vals if x is not None], default=None)))
            print("%-10s %3d  %-22s %-22s %-22s %-14s %s" % (
                mode, len(rs), f3(fo, "%.0f"), "/".join("%.2f" % v if v is not None else "-" for v in (pct(go, 50), pct(go, 95))),
                f3(rc, "%.2f"), "%d (max %.0f ms)" % (sum(r["isp2_flows_gap_over_100"] for r in rs),
                                                     max(r["isp2_max_gap_ms"] for r in rs)),
                "%d (max %.0f ms)" % (sum(1 for r in rs if r["after_restore_max_gap_ms"] > 100),
                                      max(r["after_restore_max_gap_ms"] for r in rs))))
            odd = [r for r in rs if r["failover_ms"] is None or r["recovery_s"] is None or r["isp1_flows_not_moved"]
                   or r["isp2_flows_gap_over_100"] or r["after_restore_flows_gap"] or r["before_fail_max_gap_ms"] > 100]
            for r in odd:
                print("    odd trial %d: %s" % (r["n"], json.dumps(r)))
        # watchdog resources
        (t0, r0, h0, c0), (t1, r1, h1, c1) = idle
        print("watchdog idle (%.0f s, no flows): CPU %.2f %% of one core, VmRSS %d kB"
              % (t1 - t0, 100.0 * (c1 - c0) / (t1 - t0), r1))
        s = self.samples
        if len(s) >= 2:
            ta, ca = s[0][0], s[0][3]
            tb, cb = s[-1][0], s[-1][3]
            rss = [x[1] for x in s]
            print("watchdog over the run (%.0f s, %d samples): CPU %.2f %% of one core (%.2f s), VmRSS %d-%d kB, VmHWM %d kB"
                  % (tb - ta, len(s), 100.0 * (cb - ca) / (tb - ta), cb - ca, min(rss), max(rss), s[-1][2]))
        print("raw results: %s" % (self.tmp / "results.json"))

    def cleanup(self):
        if self.wd is not None and self.wd.poll() is None:
            self.wd.send_signal(signal.SIGTERM)
            try:
                self.wd.wait(5)
            except subprocess.TimeoutExpired:
                self.wd.kill()
                self.wd.wait(5)
        if self.wd_log:
            self.wd_log.close()
        try:
            self.lab.down()
        except Exception as exc:  # noqa: BLE001
            log("down failed: %s" % exc)
        left = [n for n in os.listdir("/run/netns") if n.startswith(self.args.lab + "-")] if os.path.isdir("/run/netns") else []
        if left:
            log("WARNING: namespaces left: %s" % left)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lab", default="mwf1")
    ap.add_argument("--trials", type=int, default=20, help="trials per mode (default 20)")
    ap.add_argument("--flows", type=int, default=40)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--gap-ms", type=float, default=20.0,
                    help="per-flow gaps above this are recorded (failover below it shows as 0)")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--max-seconds", type=float, default=1800.0,
                    help="stop starting trials after this many seconds (the report covers what ran)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    b = Bench(args)
    try:
        b.run()
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
