"""False failovers under random loss, and the watchdog's memory and CPU (issue 5, Benchmarks).

Run as root from the repository root:

    .venv/bin/python bench/false_failover.py [--uplinks 4] [--loss 10] [--minutes 10] [--lab mwff]

One site with N uplinks (3 probe targets each, the watchdog's defaults), converged with
site.yml, the watchdog started as bench/failover.py does; then every uplink gets ``--loss`` %
random loss in both directions at its ISP router (``mwlab impair``), for ``--minutes``. Nothing
fails for real, so every transition is a false failover. Prints the transitions per uplink, the
probe loss the watchdog measured, the false-failover probability the model in _watchdog.py
predicts for the same loss, and the watchdog's VmRSS/VmHWM and CPU over the run. The lab is
always torn down.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import failover  # noqa: E402  (the lab, converge and watchdog start of the failover benchmark)


def topology(uplinks):
    return {"sites": [{
        "name": failover.SITE,
        "lan": {"network": "10.1.0.0/24", "clients": 1},
        "uplinks": [{"name": "isp%d" % n, "interface": "wan%d" % n, "address": "100.64.%d.2/24" % n,
                     "gateway": "100.64.%d.1" % n} for n in range(1, uplinks + 1)],
    }]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lab", default="mwff")
    ap.add_argument("--uplinks", type=int, default=4)
    ap.add_argument("--loss", type=int, default=10, help="random loss per direction, percent")
    ap.add_argument("--minutes", type=float, default=10.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root")
    failover.TOPOLOGY = topology(args.uplinks)
    bench = failover.Bench(argparse.Namespace(lab=args.lab))
    try:
        bench.up()
        bench.converge()
        bench.start_watchdog()
        names = ["isp%d" % n for n in range(1, args.uplinks + 1)]
        for name in names:
            bench.lab.impair(failover.SITE, name, loss=args.loss)
        failover.log("%d uplinks at %d %% loss each way for %.1f min" % (len(names), args.loss, args.minutes))
        start = time.monotonic()
        bench.sample()
        while time.monotonic() - start < args.minutes * 60:
            time.sleep(10)
            bench.sample()
        doc = bench.wd_state() or {}
        ups = doc.get("uplinks", {})
        rounds = args.minutes * 60 / 0.15
        model = failover_model(args.loss, rounds)
        (t0, dummy, dummy, c0), (t1, rss, hwm, c1) = bench.samples[0], bench.samples[-1]
        print("\nfalse-failover benchmark: lab %s, 1 site x %d uplinks x 3 probe targets, watchdog defaults"
              % (args.lab, len(names)))
        print("%s, load %s, %d CPUs" % (time.strftime("%Y-%m-%d %H:%M"),
                                        " ".join(open("/proc/loadavg").read().split()[:3]), os.cpu_count()))
        print("loss %d %% each way on every uplink for %.1f min (%d probe rounds per uplink)"
              % (args.loss, args.minutes, rounds))
        for name in names:
            u = ups.get(name, {})
            targets = u.get("targets", {})
            sent = sum(t.get("sent", 0) for t in targets.values())
            lost = sum(t.get("lost", 0) for t in targets.values())
            print("  %s: state %s, transitions %s, probes lost %d of %d (%.1f %%)"
                  % (name, u.get("state"), u.get("transitions"), lost, sent, 100.0 * lost / sent if sent else 0))
        total = sum(int(ups.get(n, {}).get("transitions") or 0) for n in names)
        print("false failovers: %d over %d uplink-runs (model: P(at least one per uplink) = %.2g)"
              % (total, len(names), model))
        print("watchdog: VmRSS %d kB, VmHWM %d kB, CPU %.2f %% of one core over %.0f s"
              % (rss, hwm, 100.0 * (c1 - c0) / (t1 - t0), t1 - t0))
        print(json.dumps({"uplinks": len(names), "loss_pct": args.loss, "minutes": args.minutes,
                          "false_failovers": total, "model_probability": model, "vmrss_kb": rss,
                          "vmhwm_kb": hwm, "cpu_pct": round(100.0 * (c1 - c0) / (t1 - t0), 2)}))
    finally:
        bench.cleanup()


def failover_model(loss_pct, rounds):
    sys.path.insert(0, str(failover.REPO / ".build" / "collections"))
    from ansible_collections.multiwan.linux.plugins.module_utils import _watchdog
    return _watchdog.false_failover_probability(loss_pct / 100.0, 3, 4, int(rounds))


if __name__ == "__main__":
    main()
