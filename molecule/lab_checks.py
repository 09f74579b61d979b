"""Lab-side helpers of the molecule scenarios (run on the controller, PYTHONPATH=lab).

Each subcommand prints one JSON document; the scenario's playbooks assert on it.

  inventory   LAB --extras FILE --out DIR   the lab's generated inventory plus the scenario's
              extras (per-uplink fields the lab topology cannot express, test vars, sites kept
              bare): DIR/inventory.yml (molecule: bare sites in group bare_gateways) and
              DIR/inventory-all.yml (every site in gateways, for nested check-mode runs)
  snapshot    LAB SITE        ip -j rule/route/nexthop and nft -j list ruleset of the gateway
  inbound     LAB SITE        per uplink: ping and a TCP connect from the internet to the uplink
              address, with the ISP routers' counters before/after (which uplink the replies used)
  lan-nat     LAB SITE        ping LAN client -> gateway LAN address, and the gateway's conntrack
              entry for it (is the reply tuple translated?)
  leftovers   LAB SITE --name N --table T --interface I --address A
              everything of one uplink still on the gateway (rules, routes, nexthops, rt_tables
              file, NAT rules)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from mwlab import Lab

LISTENER_PORT = 7001
# Bounded TCP listener started inside the gateway: answers `count` connections with one line,
# gives up after `timeout` seconds, never outlives the check.
LISTENER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', %d)); s.listen(16); s.settimeout(%f)\n"
    "print('listening', flush=True)\n"
    "for _ in range(%d):\n"
    "    c, peer = s.accept(); c.sendall(('hello %%s\\n' %% peer[0]).encode()); c.close()\n"
)
CONNECT = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1], %d), timeout=5)\n"
    "print(c.recv(100).decode().strip())\n"
)


def _json(proc):
    if proc.returncode != 0:
        raise SystemExit("%s failed: %s" % (" ".join(proc.args), proc.stderr or proc.stdout))
    return json.loads(proc.stdout or "null")


def cmd_inventory(args):
    lab = Lab(args.lab)
    inv = lab.inventory()
    extras = yaml.safe_load(Path(args.extras).read_text()) if args.extras else {}
    extras = extras or {}
    hosts = inv["all"]["children"]["gateways"]["hosts"]
    for site, per_uplink in (extras.get("uplinks") or {}).items():
        for uplink in hosts[site]["multiwan_uplinks"]:
            uplink.update(per_uplink.get(uplink["name"], {}))
    for site, hostvars in (extras.get("host_vars") or {}).items():
        hosts[site].update(hostvars)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inventory-all.yml").write_text(yaml.safe_dump(inv, sort_keys=False))
    bare = set(extras.get("bare_sites") or [])
    molecule = {"all": {"children": {
        "gateways": {"hosts": dict((h, v) for h, v in hosts.items() if h not in bare)},
        "bare_gateways": {"hosts": dict((h, v) for h, v in hosts.items() if h in bare)},
    }}}
    (out / "inventory.yml").write_text(yaml.safe_dump(molecule, sort_keys=False))
    print(json.dumps({"inventory": str(out / "inventory.yml"), "inventory_all": str(out / "inventory-all.yml"),
                      "bare": sorted(bare)}))


def snapshot(lab, site):
    out = {}
    for key, argv in (("rules", ["ip", "-j", "rule", "show"]), ("rules6", ["ip", "-j", "-6", "rule", "show"]),
                      ("routes", ["ip", "-j", "-d", "route", "show", "table", "all"]),
                      ("routes6", ["ip", "-j", "-d", "-6", "route", "show", "table", "all"]),
                      ("nexthops", ["ip", "-j", "nexthop", "show"]),
                      ("nft", ["nft", "-j", "list", "ruleset"])):
        proc = lab.run(site, "gw", argv)
        out[key] = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else proc.stderr.strip()
    if isinstance(out["nft"], dict):  # the metainfo line carries the nft version only
        out["nft"] = [item for item in out["nft"].get("nftables", []) if "metainfo" not in item]
    # Every setting the role may change (not counters such as nf_conntrack_count, which traffic moves).
    sysctl = lab.run(site, "gw", ["sysctl", "-a", "--pattern", r"(forwarding|rp_filter|fib_multipath)"])
    out["sysctl"] = sorted(sysctl.stdout.split("\n"))
    # Names and contents of every file the role writes (rt_tables/rt_protos drop-ins, sysctl and nft files).
    files = lab.run(site, "gw", ["sh", "-c", "for f in /etc/iproute2/rt_tables.d/* /etc/iproute2/rt_protos.d/* "
                                 "/etc/sysctl.d/* /etc/nftables.conf /etc/nftables.d/* /etc/nftables/*; do "
                                 "[ -f \"$f\" ] && { echo \"== $f\"; cat \"$f\"; }; done; true"])
    out["files"] = files.stdout.split("\n")
    return out


def cmd_snapshot(args):
    print(json.dumps(snapshot(Lab(args.lab), args.site), sort_keys=True))


def _counters(lab, site):
    topo = lab.topology
    return dict((u.name, lab.counters(site, u.name)) for u in topo.site(site).uplinks)


def cmd_inbound(args):
    lab = Lab(args.lab)
    uplinks = lab.topology.site(args.site).uplinks
    listener = subprocess.Popen(
        lab.argv(args.site, "gw", ["python3", "-c", LISTENER % (LISTENER_PORT, 30.0, len(uplinks))]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = []
    try:
        if listener.stdout.readline().strip() != "listening":
            raise SystemExit("listener did not start: %s" % listener.stderr.read())
        for uplink in uplinks:
            address = str(uplink.address.ip) if hasattr(uplink.address, "ip") else str(uplink.address).split("/", 1)[0]
            before = _counters(lab, args.site)
            ping = lab.run("inet", "inet", ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", address], timeout=20)
            tcp = lab.run("inet", "inet", ["python3", "-c", CONNECT % LISTENER_PORT, address], timeout=20)
            time.sleep(0.2)
            after = _counters(lab, args.site)
            delta = dict((name, dict((k, after[name].get(k, 0) - before[name].get(k, 0)) for k in after[name]))
                         for name in after)
            results.append({"uplink": uplink.name, "address": address,
                            "ping_ok": ping.returncode == 0, "ping": ping.stdout.strip().split("\n")[-2:],
                            "tcp_ok": tcp.returncode == 0, "tcp_reply": tcp.stdout.strip(),
                            "tcp_error": tcp.stderr.strip()[-300:], "delta": delta})
    finally:
        if listener.poll() is None:
            listener.kill()
        listener.wait()
    print(json.dumps({"site": args.site, "results": results}))


def cmd_lan_nat(args):
    lab = Lab(args.lab)
    site = lab.topology.site(args.site)
    lan = ipaddress.ip_network(str(site.lan_network))
    gateway, client = str(lan.network_address + 1), str(lan.network_address + 10)
    ping = lab.run(args.site, "c1", ["ping", "-n", "-c", "1", "-W", "2", gateway], timeout=10)
    ct = lab.run(args.site, "gw", ["conntrack", "-L", "-p", "icmp", "-s", client, "-d", gateway])
    entries = [line for line in ct.stdout.split("\n") if line.strip()]
    print(json.dumps({"site": args.site, "client": client, "gateway": gateway, "ping_ok": ping.returncode == 0,
                      "entries": entries,
                      "untranslated": bool(entries) and all(("src=%s dst=%s" % (gateway, client)) in e for e in entries)}))


def cmd_leftovers(args):
    lab = Lab(args.lab)
    snap = snapshot(lab, args.site)
    table, dev, address = args.table, args.interface, args.address
    nh_ids = {0x6D000000 + table, 0x6D100000 + table}
    left = {
        "rules": [r for r in snap["rules"] + snap["rules6"]
                  if r.get("src") == address or str(r.get("table")) in (str(table), args.name)],
        "routes": [r for r in snap["routes"] + snap["routes6"]
                   if str(r.get("table")) in (str(table), args.name)
                   or (r.get("dev") == dev and r.get("protocol") not in ("kernel",))
                   or any(h.get("dev") == dev for h in r.get("nexthops", []))],
        "nexthops": [n for n in snap["nexthops"] if n.get("dev") == dev or n.get("id") in nh_ids
                     or any(m.get("id") in nh_ids for m in n.get("group", []))],
        "rt_tables_files": [line for line in snap["files"]
                            if line.strip() == "== /etc/iproute2/rt_tables.d/multiwan-%s.conf" % args.name],
        "nat": [item for item in snap["nft"] if dev in json.dumps(item.get("rule", {}))],
    }
    ipr = lab.run(args.site, "gw", ["ip", "route", "show", "table", str(table)])
    left["ip_route_show_table"] = ipr.stdout.strip()
    grep = lab.run(args.site, "gw", ["sh", "-c", "grep -rsw -e %s -e %d /etc/iproute2/rt_tables.d/ || true" % (args.name, table)])
    left["rt_tables_entries"] = [line for line in grep.stdout.split("\n") if line.strip()]
    print(json.dumps({"site": args.site, "uplink": args.name, "left": left,
                      "clean": not any(left[k] for k in left)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("inventory")
    p.add_argument("lab")
    p.add_argument("--extras")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_inventory)
    for name, func in (("snapshot", cmd_snapshot), ("inbound", cmd_inbound), ("lan-nat", cmd_lan_nat)):
        p = sub.add_parser(name)
        p.add_argument("lab")
        p.add_argument("site")
        p.set_defaults(func=func)
    p = sub.add_parser("leftovers")
    p.add_argument("lab")
    p.add_argument("site")
    p.add_argument("--name", required=True)
    p.add_argument("--table", type=int, required=True)
    p.add_argument("--interface", required=True)
    p.add_argument("--address", required=True)
    p.set_defaults(func=cmd_leftovers)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
