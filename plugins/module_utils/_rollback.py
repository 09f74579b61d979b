# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safe apply (issue 7): a snapshot of everything the role manages, and its restore.

Private module_utils (leading underscore): not a public API.  Standard library only, Python 3.9+.
Used by the module ``commit_confirm`` (take the snapshot, arm the restore) and, on the gateway
itself when the confirmation never comes, by ``multiwan rollback`` (the role installs this file
beside ``_watchdog.py``, ``_iproute.py`` and ``_nft.py``).  Everything goes through ``_iproute``
and ``_nft`` (Contract 1 in docs/design.md): no ip or nft command line is built here.

Snapshot (JSON)::

    {"version": 1, "taken": <unix time>, "protocol": 109,
     "rules": [<canonical rule>...], "routes": [<canonical route>...], "nexthops": [<canonical nh>...],
     "nft": {"ip multiwan": <nft -j document or null>},
     "sysctls": {"net.ipv4.ip_forward": "1", ...},
     "files": {"/etc/multiwan/watchdog.json": "<content>" or null, ...}}

Only what carries the collection's protocol tag (rules, routes, nexthops), the listed nft tables,
sysctls and files is saved and restored; nothing else on the gateway is touched.  The restore
applies line by line and goes on after a failing line (a rollback is an emergency: restore as
much as possible) and reports every failure.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

try:
    from ansible_collections.multiwan.linux.plugins.module_utils import _iproute, _nft
except ImportError:  # on the gateway: plain modules beside this one
    import _iproute  # pylint: disable=import-error
    import _nft  # pylint: disable=import-error

SNAPSHOT_VERSION = 1


def _sysctl_path(key):
    return "/proc/sys/" + key.replace(".", "/")


def read_sysctl(key):
    try:
        with open(_sysctl_path(key)) as handle:
            return handle.read().strip()
    except (IOError, OSError):
        return None


def read_file(path):
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def read_json(path):
    """A JSON file's content, or None when it is missing or unreadable (the guard's state files)."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (IOError, OSError, ValueError):
        return None


def _ours(items, protocol):
    return [item for item in items if item.get("protocol") == protocol]


def snapshot(iproute, nft, protocol, nft_tables=(), sysctls=(), files=(), now=None):
    """The snapshot document (see the module docstring) of the live state."""
    rules, routes = [], []
    for family in _iproute.FAMILIES:
        rules += _ours(iproute.rules(family), protocol)
        routes += _ours(iproute.routes(family), protocol)
    nexthops = sorted(_ours(list(iproute.nexthops().values()), protocol), key=lambda nh: nh["id"])
    tables = {}
    for spec in nft_tables:
        family, name = spec.split()
        table = nft.list_table(family, name)
        tables[spec] = None if table is None else table_document(table)
    return {
        "version": SNAPSHOT_VERSION, "taken": now if now is not None else time.time(), "protocol": protocol,
        "rules": rules, "routes": routes, "nexthops": nexthops, "nft": tables,
        "sysctls": dict((key, read_sysctl(key)) for key in sysctls),
        "files": dict((path, read_file(path)) for path in files),
    }


def table_document(table):
    """An ``nft -j``-shaped document of a :class:`_nft.Table` (what :func:`_nft.parse_table` reads)."""
    items = [{"table": {"family": table.family, "name": table.name}}]
    for name in sorted(table.chains):
        chain = table.chains[name]
        body = {"family": table.family, "table": table.name, "name": name}
        for key in ("type", "hook", "prio", "policy"):
            if getattr(chain, key) is not None:
                body[key] = getattr(chain, key)
        items.append({"chain": body})
        for rule in chain.rules:
            items.append({"rule": {"family": table.family, "table": table.name, "chain": name, "expr": rule}})
    return {"nftables": items}


def _line(text, about, flag=None):
    return _iproute.Line(text, about, flag)


def routing_lines(saved, live):
    """``ip`` lines that bring our rules, routes and nexthops back to ``saved``.

    ``live`` is ``{"rules": [...], "routes": [...], "nexthops": [...]}`` of the kernel now.
    Order: saved nexthops and groups (routes refer to them), saved routes (replace, never a gap),
    then what is ours now but was not then (routes, groups, nexthops), then the rules.
    """
    protocol = saved["protocol"]
    lines = []
    saved_nh = dict((nh["id"], nh) for nh in saved["nexthops"])
    live_nh = dict((nh["id"], nh) for nh in _ours(live["nexthops"], protocol))
    for nh in saved["nexthops"]:
        if "group" not in nh:
            flag = "-6" if nh.get("family") == "inet6" else None
            lines.append(_line(_iproute.nexthop_line("replace", nh), "nexthop %d" % nh["id"], flag))
    for nh in saved["nexthops"]:
        if "group" in nh:
            lines.append(_line(_iproute.group_line(nh), "nexthop group %d" % nh["id"]))
    saved_keys = set()
    for route in saved["routes"]:
        saved_keys.add(_iproute.route_key(route))
        lines.append(_line(_iproute.route_line("replace", route), _iproute.describe_route(route)))
    for route in _ours(live["routes"], protocol):
        if _iproute.route_key(route) not in saved_keys:
            lines.append(_line(_iproute.route_line("del", route), _iproute.describe_route(route)))
    groups_first = sorted(live_nh.values(), key=lambda nh: "group" not in nh)
    for nh in groups_first:
        if nh["id"] not in saved_nh:
            lines.append(_line(_iproute.nexthop_line("del", nh), "nexthop %d" % nh["id"]))
    desired_rules = [dict(rule, state="present") for rule in saved["rules"]]
    lines += _iproute.plan_rules(live["rules"], desired_rules, protocol, purge=True).lines
    return lines


def live_routing(iproute):
    state = {"rules": [], "routes": [], "nexthops": list(iproute.nexthops().values())}
    for family in _iproute.FAMILIES:
        state["rules"] += iproute.rules(family)
        state["routes"] += iproute.routes(family)
    return state


def restore(saved, iproute, nft, write_file=None, write_sysctl=None):
    """Bring the gateway back to ``saved``; returns ``{"restored": [...], "failed": [...]}``.

    Files first (the watchdog's config among them), then sysctls, the nft tables, and the
    routing; every step is attempted even when an earlier one failed.
    """
    write_file = write_file or _write_file
    write_sysctl = write_sysctl or _write_sysctl
    report = {"restored": [], "failed": []}

    def attempt(what, action):
        try:
            action()
            report["restored"].append(what)
        except (IOError, OSError, ValueError, _iproute.IpRouteError, _nft.NftError) as exc:
            report["failed"].append("%s: %s" % (what, exc))

    for path, content in sorted(saved.get("files", {}).items()):
        if read_file(path) != content:
            attempt("file %s" % path, lambda path=path, content=content: write_file(path, content))
    for pattern in saved.get("file_patterns", []):  # files that appeared since (a new uplink's)
        for path in sorted(glob.glob(pattern)):
            if path not in saved.get("files", {}):
                attempt("file %s (removed)" % path, lambda path=path: write_file(path, None))
    for key, value in sorted(saved.get("sysctls", {}).items()):
        if value is not None and read_sysctl(key) != value:
            attempt("sysctl %s=%s" % (key, value), lambda key=key, value=value: write_sysctl(key, value))
    for spec, document in sorted(saved.get("nft", {}).items()):
        family, name = spec.split()
        live = nft.list_table(family, name)
        if document is None:
            if live is not None:
                attempt("nft table %s (removed)" % spec,
                        lambda family=family, name=name, spec=spec: nft.apply(_nft.delete_table_script(family, name), spec))
            continue
        table = _nft.parse_table(document, family, name)
        if live is None or live.states() != table.states():
            attempt("nft table %s" % spec, lambda table=table, spec=spec: nft.apply(_nft.replace_table_script(table), spec))
    for line in routing_lines(saved, live_routing(iproute)):
        attempt(line.text, lambda line=line: iproute.apply([line]))
    return report


def _write_file(path, content):
    if content is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory)
    tmp = path + ".multiwan-rollback"
    with open(tmp, "w") as handle:
        handle.write(content)
    os.rename(tmp, path)


def _write_sysctl(key, value):
    with open(_sysctl_path(key), "w") as handle:
        handle.write(value)


def save(document, path):
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o700)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(document, handle, indent=1, sort_keys=True)
    os.rename(tmp, path)


def log(message):
    sys.stderr.write("multiwan: %s\n" % message)
    sys.stderr.flush()


def rollback_command(directory, iproute=None, nft=None, reload_watchdog=True):
    """``multiwan rollback --dir DIR``: the armed restore, run on the gateway at the deadline."""
    armed_path, snapshot_path = os.path.join(directory, "armed.json"), os.path.join(directory, "snapshot.json")
    armed = read_json(armed_path)
    if armed is None:
        log("rollback: nothing is armed in %s (confirmed in time)" % directory)
        return 0
    saved = load(snapshot_path)
    why = "no confirmation within %s s" % armed.get("timeout")
    taken = time.strftime("%H:%M:%S", time.localtime(saved["taken"]))
    log("rollback: %s (%s): restoring the state of %s" % (why, armed.get("reason"), taken))
    report = restore(saved, iproute or _iproute.IpRoute(), nft or _nft.Nft())
    for what in report["restored"]:
        log("rollback: restored %s" % what)
    for what in report["failed"]:
        log("rollback: FAILED %s" % what)
    if reload_watchdog and os.path.isdir("/run/systemd/system"):
        # the restored config files take effect (the watchdog also restores rules and routes)
        subprocess.run(["systemctl", "try-reload-or-restart", "multiwan-watchdog.service",  # pylint: disable=ansible-bad-function
                        "multiwan-watchdog6.service"], check=False)
    save({"time": time.time(), "why": why, "reason": armed.get("reason"), "armed_at": armed.get("armed_at"),
          "last_armed": armed.get("last_armed"), "deadline": armed.get("deadline"),
          "restored": report["restored"], "failed": report["failed"]}, os.path.join(directory, "rolled-back.json"))
    for path in (armed_path, snapshot_path):
        os.unlink(path)
    return 1 if report["failed"] else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="multiwan rollback", description="restore the state saved by commit_confirm")
    parser.add_argument("--dir", default="/var/lib/multiwan/rollback")
    args = parser.parse_args(argv)
    return rollback_command(args.dir)


def load(path):
    with open(path) as handle:
        document = json.load(handle)
    if not isinstance(document, dict) or document.get("version") != SNAPSHOT_VERSION:
        raise ValueError("%s is not a multiwan rollback snapshot (version %s)" % (path, SNAPSHOT_VERSION))
    return document
