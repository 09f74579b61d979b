"""The only place that runs ``ip``, ``nft``, ``sysctl`` and ``nsenter`` for the lab.

Safety: every operation names a namespace, and the namespace must start with ``{lab}-``.
Nothing here can address the root network namespace: links are created from inside a lab
namespace (``ip -n NS link add A type veth peer name B netns OTHER``), sysctls and nft run under
``nsenter --net=/run/netns/NS``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

NETNS_DIR = Path("/run/netns")


class LabError(RuntimeError):
    """A lab operation failed; the message says what and where."""


def _run(argv: Sequence[str], input: str | None = None, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise LabError(f"{argv[0]}: not found ({e})") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from None
    if check and p.returncode != 0:
        msg = (p.stderr or p.stdout).strip()
        raise LabError(f"{' '.join(argv)} failed (rc {p.returncode}): {msg}")
    return p


class Netns:
    """Namespace operations restricted to one lab's namespaces."""

    def __init__(self, lab: str):
        if not lab or "/" in lab or "-" in lab:
            raise LabError(f"bad lab name {lab!r}")
        self.lab = lab
        self.prefix = f"{lab}-"

    # ---- guards ----------------------------------------------------------------------------------
    def check(self, ns: str) -> str:
        if not ns.startswith(self.prefix) or "/" in ns or len(ns) <= len(self.prefix):
            raise LabError(f"refusing to touch namespace {ns!r}: not part of lab {self.lab!r}")
        return ns

    def path(self, ns: str) -> str:
        return str(NETNS_DIR / self.check(ns))

    # ---- namespaces ------------------------------------------------------------------------------
    def list(self) -> list[str]:
        """Every namespace of this lab (by name prefix), whether or not a state file knows it."""
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(self.prefix))

    def exists(self, ns: str) -> bool:
        return (NETNS_DIR / self.check(ns)).exists()

    def add(self, ns: str) -> None:
        _run(["ip", "netns", "add", self.check(ns)])

    def delete(self, ns: str) -> None:
        self.check(ns)
        if (NETNS_DIR / ns).exists():
            p = _run(["ip", "netns", "delete", ns], check=False)
            if p.returncode != 0 and (NETNS_DIR / ns).exists():
                # A half-created namespace (file present, not mounted) cannot be deleted by ip.
                try:
                    subprocess.run(["umount", "-l", str(NETNS_DIR / ns)], capture_output=True)
                    (NETNS_DIR / ns).unlink()
                except OSError as e:
                    raise LabError(f"cannot delete namespace {ns}: {p.stderr.strip()} / {e}") from None

    def inode(self, ns: str) -> tuple[int, int] | None:
        try:
            st = os.stat(NETNS_DIR / self.check(ns))
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino)

    def pids(self, ns: str) -> list[int]:
        """Processes whose network namespace is ``ns``."""
        ino = self.inode(ns)
        if ino is None:
            return []
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                st = os.stat(f"/proc/{d}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == ino and proc_alive(int(d)):
                out.append(int(d))
        return out

    # ---- commands inside a namespace ---------------------------------------------------------------
    def argv(self, ns: str, cmd: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.path(ns)}", "--", *cmd]

    def run(self, ns: str, cmd: Sequence[str], check: bool = True, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        return _run(self.argv(ns, cmd), input=input, check=check, timeout=timeout)

    def ip(self, ns: str, *args: str, check: bool = True) -> str:
        return _run(["ip", "-n", self.check(ns), *args], check=check).stdout

    def ip_json(self, ns: str, *args: str) -> Any:
        out = _run(["ip", "-j", "-n", self.check(ns), *args]).stdout.strip()
        return json.loads(out) if out else []

    def batch(self, ns: str, lines: Iterable[str]) -> None:
        text = "\n".join(lines) + "\n"
        if not text.strip():
            return
        _run(["ip", "-n", self.check(ns), "-batch", "-"], input=text)

    def sysctl(self, ns: str, settings: dict[str, Any]) -> None:
        if settings:
            self.run(ns, ["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items())])

    def nft(self, ns: str, script: str) -> None:
        self.run(ns, ["nft", "-f", "-"], input=script)

    def nft_json(self, ns: str, *args: str) -> Any:
        return json.loads(self.run(ns, ["nft", "-j", *args]).stdout or "{}")

    def link(self, ns: str, ifname: str) -> dict[str, Any] | None:
        p = _run(["ip", "-j", "-n", self.check(ns), "link", "show", "dev", ifname], check=False)
        if p.returncode != 0 or not p.stdout.strip():
            return None
        data = json.loads(p.stdout)
        return data[0] if data else None


# ---- processes --------------------------------------------------------------------------------------

def proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parentheses: split after the last ')'
    rest = raw[raw.rindex(")") + 2:].split()
    return rest  # rest[0] = state (field 3), rest[19] = starttime (field 22)


def proc_alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def proc_start_time(pid: int) -> int | None:
    st = proc_stat(pid)
    return int(st[19]) if st else None


def proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def pids_in_mntns(inodes: set[tuple[int, int]]) -> list[int]:
    """Live processes whose mount namespace is one of ``inodes`` ((st_dev, st_ino) pairs)."""
    if not inodes:
        return []
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{d}/ns/mnt")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in inodes and proc_alive(int(d)):
            out.append(int(d))
    return out


def reap(pid: int) -> None:
    """Collect our own exited child (no-op for processes that are not our children)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def kill_pids(pids: Iterable[int], timeout: float = 2.0) -> None:
    """SIGTERM, wait, SIGKILL. Callers verify that the pids are the lab's own."""
    pids = [p for p in pids if proc_alive(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in pids:
            reap(p)
        pids = [p for p in pids if proc_alive(p)]
        if not pids:
            return
        time.sleep(0.02)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        for p in pids:
            reap(p)
        pids = [p for p in pids if proc_alive(p)]
        time.sleep(0.02)


def umount_lazy(path: str) -> None:
    _run(["umount", "-l", path], check=False)


def mounts_under(prefix: str) -> list[str]:
    """Mount points in *our* mount namespace at or below ``prefix``."""
    out = []
    prefix = prefix.rstrip("/")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == prefix or mp.startswith(prefix + "/"):
                out.append(mp)
    return out


# ---- reboot of a systemd-mode gateway: back to the namespace the lab built ---------------------------
#
# A container reboot ends every process of the gateway but not its network namespace: without a
# reset, every rule, route, nexthop, nftables table, conntrack entry and sysctl set before the
# reboot would still be there afterwards, which no real machine does. The supervisor
# (container.py) takes a snapshot when it starts (before the first boot, i.e. of the namespace as
# the lab built it) and calls reset_netns() between the container's exit and its next boot.

SYSCTL_TREES = ("net/ipv4", "net/ipv6")
# The policy rules a new network namespace starts with: (priority, table).
DEFAULT_RULES = {"4": ((0, "local"), (32766, "main"), (32767, "default")),
                 "6": ((0, "local"), (32766, "main"))}

# Runs inside the namespace (nsenter --net) with the supervisor's own interpreter: ``read`` prints
# every readable sysctl under net/ipv4 and net/ipv6 as JSON ({"net/ipv4/ip_forward": "0", ...});
# ``write`` takes such a mapping on stdin and writes the keys whose value differs and whose file
# exists (per-interface keys only for interfaces that exist), global keys first, then conf/all,
# then conf/default, then per interface (writing ip_forward or conf/all/forwarding rewrites the
# per-interface values); up to three passes; prints {"changed": [...], "failed": {...}}.
_SYSCTL_HELPER = r'''
import json, os, sys
TREES = %r
def read_all():
    out = {}
    for tree in TREES:
        for dp, _dns, fns in os.walk("/proc/sys/" + tree):
            for fn in fns:
                p = os.path.join(dp, fn)
                try:
                    with open(p) as fh:
                        out[p[len("/proc/sys/"):]] = fh.read().rstrip("\n")
                except OSError:
                    pass
    return out
def rank(key):
    parts = key.split("/")
    if len(parts) >= 5 and parts[2] in ("conf", "neigh"):
        return {"all": 1, "default": 2}.get(parts[3], 3)
    return 0
if sys.argv[1] == "read":
    json.dump(read_all(), sys.stdout)
    sys.exit(0)
want = json.load(sys.stdin)
changed, failed = [], {}
for _ in range(3):
    cur = read_all()
    todo = sorted((k for k, v in want.items() if k in cur and cur[k] != v and k not in failed), key=lambda k: (rank(k), k))
    if not todo:
        break
    for k in todo:
        try:
            with open("/proc/sys/" + k, "w") as fh:
                fh.write(want[k] + "\n")
            if k not in changed:
                changed.append(k)
        except OSError as e:
            failed[k] = e.strerror or str(e)
json.dump({"changed": changed, "failed": failed}, sys.stdout)
''' % (SYSCTL_TREES,)


def _gateway_netns(netns: str) -> tuple[str, str]:
    """(path, name) of a lab namespace given as ``/run/netns/NAME`` or ``NAME``; refuses anything
    that is not a named lab namespace (``L-...``) or that is this process's (the root) namespace."""
    p = Path(netns) if "/" in netns else NETNS_DIR / netns
    if p.parent != NETNS_DIR or "-" not in p.name or p.name.startswith((".", "-")):
        raise LabError(f"refusing to reset {netns!r}: not a lab namespace under {NETNS_DIR}")
    try:
        st = os.stat(p)
    except OSError as e:
        raise LabError(f"namespace {p} is gone: {e}") from None
    for own in ("/proc/self/ns/net", "/proc/1/ns/net"):
        try:
            o = os.stat(own)
        except OSError:
            continue
        if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino):
            raise LabError(f"refusing to reset {p}: that is the root network namespace")
    return str(p), p.name


def _ip_json(name: str, *args: str) -> Any:
    out = _run(["ip", "-n", name, "-j", *args]).stdout.strip()
    return json.loads(out) if out else []


def _ip_batch(name: str, lines: Sequence[str], family: str | None = None) -> None:
    if lines:
        fam = [f"-{family}"] if family else []
        _run(["ip", "-n", name, *fam, "-force", "-batch", "-"], input="\n".join(lines) + "\n", check=False)


def _sysctls(path: str, want: dict[str, str] | None = None) -> dict[str, Any]:
    import sys  # noqa: PLC0415 - the supervisor's interpreter runs the helper

    argv = ["nsenter", f"--net={path}", "--", sys.executable, "-I", "-c", _SYSCTL_HELPER,
            "read" if want is None else "write"]
    p = _run(argv, input=None if want is None else json.dumps(want))
    return json.loads(p.stdout)


def _addr_key(ifname: str, a: dict[str, Any]) -> tuple[Any, ...] | None:
    """Identity of an address; None for IPv6 link-local ones (the kernel makes those itself)."""
    if a.get("family") == "inet6" and str(a.get("local", "")).lower().startswith("fe80:"):
        return None
    return (ifname, a.get("family"), a.get("local"), a.get("prefixlen"), a.get("address"))


def _addresses(name: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    out = {}
    for link in _ip_json(name, "address", "show"):
        for a in link.get("addr_info", []):
            if "local" not in a:
                continue
            k = _addr_key(link["ifname"], a)
            if k is not None:
                out[k] = a
    return out


def _addr_spec(key: tuple[Any, ...], a: dict[str, Any]) -> str:
    ifname, family, local, plen, peer = key
    spec = f"{local} peer {peer}/{plen}" if peer else f"{local}/{plen}"
    if a.get("broadcast"):
        spec += f" broadcast {a['broadcast']}"
    if family == "inet6":
        spec += "".join(f" {f}" for f in ("nodad", "noprefixroute", "home") if a.get(f))
    return f"{spec} dev {ifname}"


def is_default_rule(rule: dict[str, Any], family: str) -> bool:
    """Is this (``ip -j -d rule show``) entry one of the rules a new namespace starts with?"""
    extra = set(rule) - {"priority", "src", "table", "protocol"}
    return (not extra and rule.get("src", "all") == "all" and rule.get("protocol", "kernel") == "kernel"
            and (rule.get("priority"), rule.get("table")) in DEFAULT_RULES[family])


def routes_to_remove(routes: Iterable[dict[str, Any]], family: str) -> list[dict[str, Any]]:
    """The routes (``ip -j -d route show table all``) a reboot does not keep: everything but
    protocol ``kernel`` (connected, local, broadcast, multicast) and IPv6 link-local ones."""
    out = []
    for r in routes:
        if r.get("protocol") == "kernel":
            continue
        if family == "6" and str(r.get("dst", "")).lower().startswith("fe80:"):
            continue
        out.append(r)
    return out


def _route_flush_line(r: dict[str, Any]) -> str:
    # flush (not del): iproute2 deletes exactly the dumped route(s) that match, with every
    # attribute the kernel reported; "exact" keeps it to that prefix.
    return (f"route flush table {r.get('table', 'main')} proto {r.get('protocol', 'unspec')} "
            f"type {r.get('type', 'unicast')} exact {r.get('dst', 'default')}")


def snapshot_netns(netns: str) -> dict[str, Any]:
    """What :func:`reset_netns` restores: the links (ifindex, name, admin state), the addresses
    (IPv6 link-local ones aside) and every readable net.ipv4/net.ipv6 sysctl of the namespace.
    The supervisor takes it once, before the container's first boot."""
    path, name = _gateway_netns(netns)
    links = {str(link["ifindex"]): {"ifname": link["ifname"], "up": "UP" in link.get("flags", [])}
             for link in _ip_json(name, "link", "show")}
    addrs = [{"key": list(k), "info": a} for k, a in _addresses(name).items()]
    return {"netns": path, "taken": time.time(), "links": links, "addresses": addrs, "sysctls": _sysctls(path)}


def reset_netns(netns: str, snapshot: dict[str, Any]) -> dict[str, Any]:
    """Put a gateway's network namespace back to what a freshly booted machine has: the state of
    ``snapshot`` (taken by :func:`snapshot_netns` when the lab had just built it: addresses,
    connected routes, no default route, no NAT). Called by the container supervisor between the
    container's exit and its next boot, so a reboot looks like a real one to the kernel: only
    what the boot itself configures comes back.

    In order: nftables ruleset flushed; conntrack flushed; links that did not exist in the
    snapshot deleted, the admin state (up/down) of the others restored; the sysctls under
    net.ipv4/net.ipv6 that differ from the snapshot written back (read-only keys and keys of
    interfaces that no longer exist are skipped); addresses not in the snapshot deleted and
    missing ones added again (IPv6 link-local ones are left to the kernel); policy rules back to
    the kernel's defaults (IPv4: 0 local, 32766 main, 32767 default; IPv6: 0 local, 32766 main);
    every nexthop object deleted; every route in every table (local included) of both families
    deleted unless it has protocol ``kernel`` or is an IPv6 link-local one; neighbour entries
    flushed (permanent ones too). Not reset: tc qdiscs, xfrm state, processes that live in the
    namespace outside the container.

    Runs everything through ``ip -n NAME`` / ``nsenter --net=/run/netns/NAME`` and refuses the
    root namespace. Returns counts (``removed``, ``restored``) plus what is still off
    (``left``, empty when the reset is complete) and the seconds it took."""
    t0 = time.monotonic()
    path, name = _gateway_netns(netns)
    removed: dict[str, int] = {}
    restored: dict[str, int] = {}
    left: dict[str, Any] = {}
    errors: list[str] = []

    def step(what: str, fn: Any) -> None:
        try:
            fn()
        except (LabError, OSError, ValueError, KeyError) as e:
            errors.append(f"{what}: {e}")

    def nft() -> None:
        tables = json.loads(_run(["nsenter", f"--net={path}", "--", "nft", "-j", "list", "tables"]).stdout or "{}")
        removed["nft_tables"] = sum(1 for x in tables.get("nftables", []) if "table" in x)
        if removed["nft_tables"]:
            _run(["nsenter", f"--net={path}", "--", "nft", "flush", "ruleset"])

    def conntrack() -> None:
        p = _run(["nsenter", f"--net={path}", "--", "conntrack", "-C"], check=False)
        removed["conntrack"] = int(p.stdout.strip() or 0) if p.returncode == 0 else 0
        _run(["nsenter", f"--net={path}", "--", "conntrack", "-F"], check=False)

    def links() -> None:
        want = snapshot.get("links", {})
        extra, changed = [], []
        for link in _ip_json(name, "link", "show"):
            w = want.get(str(link["ifindex"]))
            if w is None:
                extra.append(f"link del dev {link['ifname']}")
            elif ("UP" in link.get("flags", [])) != w["up"]:
                changed.append(f"link set dev {link['ifname']} {'up' if w['up'] else 'down'}")
        _ip_batch(name, extra + changed)
        removed["links"], restored["link_states"] = len(extra), len(changed)

    def sysctls() -> None:
        res = _sysctls(path, snapshot.get("sysctls", {}))
        restored["sysctls"] = len(res["changed"])
        restored["sysctl_keys"] = [k.replace("/", ".") for k in res["changed"][:20]]  # type: ignore[assignment]
        if res["failed"]:
            left["sysctls_not_writable"] = sorted(res["failed"])[:20]

    def addresses() -> None:
        want = {tuple(x["key"]): x["info"] for x in snapshot.get("addresses", [])}
        have = _addresses(name)
        extra = [k for k in have if k not in want]
        _ip_batch(name, [f"address del {_addr_spec(k, have[k])}" for k in extra])
        have = _addresses(name)  # deleting a primary IPv4 address takes its secondaries along
        missing = [k for k in want if k not in have]
        _ip_batch(name, [f"address add {_addr_spec(k, want[k])}" for k in missing])
        removed["addresses"], restored["addresses"] = len(extra), len(missing)

    def rules() -> None:
        n = 0
        for fam in ("4", "6"):
            cur = _ip_json(name, f"-{fam}", "-d", "rule", "show")
            default = [(r.get("priority"), r.get("table")) for r in cur if is_default_rule(r, fam)]
            if default == list(DEFAULT_RULES[fam]) and len(cur) == len(default):
                continue
            n += len(cur) - len(default)
            # "rule del priority P" deletes one rule of that priority: once per rule listed
            _ip_batch(name, [f"rule del priority {r['priority']}" for r in cur], family=fam)
            _ip_batch(name, [f"rule add priority {p} table {t} protocol kernel" for p, t in DEFAULT_RULES[fam]], family=fam)
        removed["rules"] = n

    def nexthops() -> None:
        p = _run(["ip", "-n", name, "-j", "nexthop", "show"], check=False)
        nhs = json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else []
        removed["nexthops"] = len(nhs)
        if nhs:
            _run(["ip", "-n", name, "nexthop", "flush"], check=False)

    def routes() -> None:
        n = 0
        for fam in ("4", "6"):
            gone = routes_to_remove(_ip_json(name, f"-{fam}", "-d", "route", "show", "table", "all"), fam)
            n += len(gone)
            _ip_batch(name, sorted({_route_flush_line(r) for r in gone}), family=fam)
        removed["routes"] = n

    def neighbours() -> None:
        cur = _ip_json(name, "neigh", "show", "nud", "all")
        removed["neighbours"] = sum(1 for x in cur if "NOARP" not in x.get("state", []))
        _run(["ip", "-n", name, "neigh", "flush", "all", "nud", "all"], check=False)

    for what, fn in (("nft", nft), ("conntrack", conntrack), ("links", links), ("sysctls", sysctls),
                     ("addresses", addresses), ("rules", rules), ("nexthops", nexthops), ("routes", routes),
                     ("neighbours", neighbours)):
        step(what, fn)

    # what is still off (a complete reset leaves nothing here)
    def check() -> None:
        for fam in ("4", "6"):
            bad = [r for r in _ip_json(name, f"-{fam}", "-d", "rule", "show") if not is_default_rule(r, fam)]
            if bad:
                left[f"rules{fam}"] = bad
            rest = routes_to_remove(_ip_json(name, f"-{fam}", "-d", "route", "show", "table", "all"), fam)
            if rest:
                left[f"routes{fam}"] = rest
        p = _run(["ip", "-n", name, "-j", "nexthop", "show"], check=False)
        if p.returncode == 0 and p.stdout.strip() and json.loads(p.stdout):
            left["nexthops"] = json.loads(p.stdout)

    step("check", check)
    out: dict[str, Any] = {"netns": path, "removed": removed, "restored": restored, "left": left,
                           "seconds": round(time.monotonic() - t0, 3)}
    if errors:
        out["errors"] = errors
    return out


def reset_summary(res: dict[str, Any]) -> str:
    """One log line for a reset_netns() result."""
    rm = res.get("removed", {})
    rs = res.get("restored", {})
    parts = [f"{rm.get(k, 0)} {label}" for k, label in (
        ("rules", "rules"), ("nexthops", "nexthops"), ("routes", "routes"), ("nft_tables", "nft tables"),
        ("conntrack", "conntrack entries"), ("neighbours", "neighbours"), ("addresses", "addresses"), ("links", "links"))]
    text = (f"reset {res.get('netns')}: removed {', '.join(parts)}; restored {rs.get('sysctls', 0)} sysctls, "
            f"{rs.get('addresses', 0)} addresses, {rs.get('link_states', 0)} link states ({res.get('seconds', 0)} s)")
    if res.get("left"):
        text += f"; still off: {', '.join(sorted(res['left']))}"
    if res.get("errors"):
        text += f"; errors: {'; '.join(res['errors'])}"
    return text
