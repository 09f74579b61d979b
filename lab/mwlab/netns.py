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
