"""Command line: ``python3 -m mwlab [--lab NAME] VERB ...`` (run as root, PYTHONPATH=lab).

Verbs: up TOPOLOGY [--systemd] | reboot SITE [--hard] | down | status [--json] | inventory [--output FILE] [--connection nsenter|ssh [--via lan|inet] [--uplink U]] |
fail SITE UPLINK --mode upstream|link|blackhole | restore SITE UPLINK |
impair SITE UPLINK --loss PCT|--clear | exec SITE ROLE -- CMD... (exec inet -- CMD...).

The lab name is --lab, else $MWLAB_NAME, else (for ``up``) the topology's ``lab:``, else ``mwl``.

Extension hook: if ``mwlab.traffic`` imports and has ``register(subparsers)``, its subcommands
are added. Every subcommand sets ``func`` (``set_defaults(func=...)``); main calls
``func(args)`` and uses its return value as exit status. ``args.lab`` is the --lab value or
$MWLAB_NAME or None; ``mwlab.Lab(args.lab)`` resolves the default.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .lab import FAIL_MODES, SSH_VIA, Lab, lab_name
from .netns import LabError
from .topology import Topology, TopologyError, parse_text


def _cmd_up(args: argparse.Namespace) -> int:
    data = parse_text(Path(args.topology).read_text(), args.topology)
    name = args.lab or (data.get("lab") if isinstance(data, dict) else None)
    lab = Lab(lab_name(name))
    topo = lab.up(Topology.from_dict(data, lab=lab.name), systemd=True if args.systemd else None)
    print(f"lab {lab.name} up: {len(topo.sites)} site(s), {len(topo.uplinks)} uplink(s), {len(topo.namespaces)} namespaces")
    st = lab.load_state() or {}
    rootfs = st.get("rootfs")
    if rootfs:
        built = rootfs.get("build_seconds")
        print(f"  rootfs {rootfs['path']}" + (f" (built in {built:.1f} s)" if built else " (cached)"))
    for s in topo.sites:
        if s.systemd:
            print(f"  {s.name}: gateway {s.gw_ns}, systemd container {lab.machine(s.name)} booted in "
                  f"{st.get('boot_seconds', {}).get(s.name, '?')} s, init pid file {lab.pidfile(s.name)}")
        else:
            print(f"  {s.name}: gateway {s.gw_ns}, anchor pid file {lab.pidfile(s.name)}")
    for w in st.get("warnings", []):
        print(f"  warning: {w}", file=sys.stderr)
    return 0


def _cmd_reboot(args: argparse.Namespace) -> int:
    took = Lab(args.lab).reboot(args.site, hard=args.hard, wait=not args.no_wait)
    print(f"{args.site}: " + ("reboot requested" if took is None else f"rebooted ({'hard' if args.hard else 'systemctl reboot'}) and running again in {took:.1f} s"))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    lab = Lab(args.lab)
    lab.down()
    print(f"lab {lab.name} down")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    lab = Lab(args.lab)
    st = lab.status()
    if args.json:
        print(json.dumps(st, indent=1))
        return 0 if st["status"] in ("up", "down") else 1
    print(f"lab {st['lab']}: {st['status']}")
    if "sites" not in st:
        if st["namespaces"]:
            print("  namespaces without state (run down): " + " ".join(st["namespaces"]))
        return 0 if st["status"] == "down" else 1
    for name, p in st["processes"].items():
        print(f"  process {name:<12} pid {p['pid']:<8} {'alive' if p['alive'] else 'DEAD'}")
    for s in st["sites"]:
        c = s.get("container")
        if c:
            print(f"  container {c['machine']:<10} init pid {c['init_pid'] or '-':<8} boots {c['boots']}, "
                  f"first boot {c['boot_seconds']} s")
    if st.get("missing_namespaces"):
        print("  MISSING namespaces: " + " ".join(st["missing_namespaces"]))
    fmt = "  {:<6} {:<8} {:<10} {:<18} {:<19} {:<9} {:<10} {:<8} {:>9} {:>10} {:>8}"
    print(fmt.format("site", "uplink", "iface", "address", "isp", "gw-link", "failure", "loss%", "from_cust", "bcp38_drop", "to_cust"))
    for s in st["sites"]:
        for u in s["uplinks"]:
            c = u["counters"]
            print(fmt.format(s["name"], u["name"], u["interface"], u["address"], u["gateway"] or f"peer {u['peer']}",
                             u["gw_link"], u["failure"] or "-", (u["impairment"] or {}).get("loss", "-"),
                             c.get("from_cust", "-"), c.get("bcp38_drop", "-"), c.get("to_cust", "-")))
    for w in st.get("warnings", []):
        print(f"  warning: {w}")
    return 0


def _cmd_inventory(args: argparse.Namespace) -> int:
    lab = Lab(args.lab)
    if args.connection == "ssh":
        plain = [s.name for s in lab.topology.sites if not s.systemd]
        if plain:
            print(f"mwlab: warning: site(s) {', '.join(plain)} are not in systemd mode (no sshd): "
                  "they keep the nsenter connection", file=sys.stderr)
    text = lab.inventory_yaml(args.connection, args.via, args.uplink)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _cmd_fail(args: argparse.Namespace) -> int:
    Lab(args.lab).fail(args.site, args.uplink, args.mode)
    print(f"{args.site}/{args.uplink}: failed ({args.mode})")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    mode = Lab(args.lab).restore(args.site, args.uplink)
    print(f"{args.site}/{args.uplink}: " + (f"restored (was {mode})" if mode else "was not failed"))
    return 0


def _cmd_impair(args: argparse.Namespace) -> int:
    if args.delay is not None or args.jitter is not None:
        print("mwlab: delay/jitter are not available: this kernel has no netem (CONFIG_NET_SCH_NETEM is not set); "
              "only --loss works (nftables). A TUN delay relay may come later.", file=sys.stderr)
        return 2
    if not args.clear and args.loss is None:
        print("mwlab: impair needs --loss PCT or --clear", file=sys.stderr)
        return 2
    Lab(args.lab).impair(args.site, args.uplink, loss=args.loss, clear=args.clear)
    print(f"{args.site}/{args.uplink}: " + ("impairment cleared" if args.clear or not args.loss else f"{args.loss}% loss each way"))
    return 0


def _cmd_exec(args: argparse.Namespace) -> int:
    rest = list(args.rest)
    if "--" in rest:
        i = rest.index("--")
        head, cmd = rest[:i], rest[i + 1:]
    else:
        head, cmd = rest[:2], rest[2:]
        if head[:1] == ["inet"]:
            head, cmd = rest[:1], rest[1:]
    if head == ["inet"]:
        site, role = "inet", "inet"
    elif len(head) == 2:
        site, role = head
    else:
        print("usage: mwlab exec SITE ROLE -- CMD...   (ROLE: gw, sw, c1.., an uplink name; or: exec inet -- CMD)", file=sys.stderr)
        return 2
    if not cmd:
        cmd = [os.environ.get("SHELL", "/bin/bash")]
    argv = Lab(args.lab).argv(site, role, cmd)
    os.execvp(argv[0], argv)
    return 127  # not reached


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mwlab", description="Multi-ISP lab in network namespaces.")
    ap.add_argument("--lab", help="lab name (<=5 chars [a-z0-9]; default $MWLAB_NAME, topology lab:, or mwl)")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("up", help="build the lab from a topology file (replaces a running lab of that name)")
    p.add_argument("topology")
    p.add_argument("--systemd", action="store_true",
                   help="every gateway boots Debian under systemd-nspawn (else the topology's systemd: keys)")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("reboot", help="reboot a systemd-mode gateway (systemctl reboot inside; --hard: kill and boot); "
                       "its namespace's rules, routes, nexthops, nftables, conntrack and sysctls are reset "
                       "to the bare gateway's in between, as a real reboot does")
    p.add_argument("site")
    p.add_argument("--hard", action="store_true", help="SIGKILL the container's init (power cut), then boot it again")
    p.add_argument("--no-wait", action="store_true", help="do not wait until it runs again")
    p.set_defaults(func=_cmd_reboot)

    p = sub.add_parser("down", help="tear the lab down (idempotent, works without state)")
    p.set_defaults(func=_cmd_down)

    p = sub.add_parser("status", help="show the lab")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("inventory", help="print an Ansible inventory (YAML) for the gateways")
    p.add_argument("--output", "-o")
    p.add_argument("--connection", choices=("nsenter", "ssh"), default="nsenter",
                   help="nsenter (default): into the gateway's namespaces; ssh: plain OpenSSH through the "
                        "lab's network to systemd-mode gateways, from a lab namespace (see --via)")
    p.add_argument("--via", choices=SSH_VIA, default="lan",
                   help="ssh management station: lan = the site's client c1 to the gateway's LAN address "
                        "(default); inet = the internet namespace to an uplink address (needs a route back)")
    p.add_argument("--uplink", metavar="NAME", help="with --via inet: the uplink whose address SSH goes to "
                   "(default: each site's first)")
    p.set_defaults(func=_cmd_inventory)

    p = sub.add_parser("fail", help="break an uplink")
    p.add_argument("site")
    p.add_argument("uplink")
    p.add_argument("--mode", choices=FAIL_MODES, default="upstream")
    p.set_defaults(func=_cmd_fail)

    p = sub.add_parser("restore", help="undo fail on an uplink")
    p.add_argument("site")
    p.add_argument("uplink")
    p.set_defaults(func=_cmd_restore)

    p = sub.add_parser("impair", help="random loss on an uplink (at the ISP router, both directions)")
    p.add_argument("site")
    p.add_argument("uplink")
    p.add_argument("--loss", type=int, metavar="PCT")
    p.add_argument("--clear", action="store_true")
    p.add_argument("--delay", metavar="MS", help="not available (no netem in this kernel)")
    p.add_argument("--jitter", metavar="MS", help="not available (no netem in this kernel)")
    p.set_defaults(func=_cmd_impair)

    p = sub.add_parser("exec", help="run a command in a lab namespace: exec SITE ROLE -- CMD...")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_exec)

    try:
        from . import traffic  # type: ignore[attr-defined]
    except ImportError:
        traffic = None
    except Exception as e:  # a broken traffic module must not take the lab CLI down
        print(f"mwlab: warning: mwlab.traffic failed to import: {e}", file=sys.stderr)
        traffic = None
    if traffic is not None and hasattr(traffic, "register"):
        traffic.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="mwlab: %(levelname)s: %(message)s")
    args.lab = args.lab or os.environ.get("MWLAB_NAME") or None
    try:
        return int(args.func(args) or 0)
    except (LabError, TopologyError, OSError) as e:
        print(f"mwlab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
