"""Supervisor of one systemd-mode gateway: ``python3 -m mwlab.container --lab L --site S ...``.

The lab starts one supervisor per systemd site (instead of the ``sleep infinity`` anchor). It

1. enters a private mount namespace (``unshare --mount --propagation private``) and mounts an
   overlay there (lower = the cached rootfs, upper/work/merged under
   ``/var/lib/mwlab/L/S/rootfs/``); the mount lives only as long as that namespace, so a crash
   leaves no mount in the host's namespace;
2. execs ``systemd-nspawn -D merged -b --register=no --keep-unit --network-namespace-path=
   /run/netns/L-S-gw --machine=L-S`` (the flags that work without systemd as the host's PID 1);
3. finds the container's init (the nspawn child whose innermost pid is 1) and writes its host
   pid to ``/run/mwlab/L/S.gw.pid`` (what the nsenter connection and ``mwlab exec`` enter), and
   the boot record (init pid, nspawn pid, boots) to ``/run/mwlab/L/S.container.json``;
4. restarts the container when it reboots (nspawn exits 133 after ``systemctl reboot`` inside)
   or when the lab asked for a hard reboot (file ``/run/mwlab/L/S.reboot`` present when the
   container died); any other exit (``poweroff`` inside, a crash) ends the supervisor. Between
   the exit and the next boot it resets the gateway's network namespace to the snapshot it took
   when it started, before the first boot (:func:`mwlab.netns.reset_netns`: rules, routes,
   nexthops, nftables, conntrack, sysctls, addresses, links), because the namespace outlives the
   container and a real reboot keeps none of that; one log line per reboot says what was
   removed, and the boot record keeps the counts (``boots[i]["reset"]``);
5. on SIGTERM/SIGINT (``mwlab down``) kills the container's init with SIGKILL (the kernel then
   kills the whole pid namespace; the overlay is thrown away anyway), waits for nspawn, exits.

The overlay's upper dir survives reboots (like a disk) and is removed by ``mwlab down``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .netns import reset_netns, reset_summary, snapshot_netns

NSPAWN = "/usr/bin/systemd-nspawn"
REBOOT_RC = 133


def nspid_chain(pid: int) -> list[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def ppid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def find_init(nspawn_pid: int) -> int | None:
    """Host pid of the container's PID 1 (a child of nspawn that is pid 1 in its own pid ns)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        if ppid(pid) == nspawn_pid:
            chain = nspid_chain(pid)
            if len(chain) >= 2 and chain[-1] == 1:
                return pid
    return None


CGROUP_PREFIX = "mwlab-"


def cgroup_roots() -> list[tuple[Path, str]]:
    """(mount point, our cgroup path in it) of the hierarchies nspawn uses: name=systemd and
    the unified one (hybrid hosts), or the one cgroup2 tree (unified hosts)."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrl, path = line.split(":", 2)
        own[ctrl] = path
    out = []
    if os.path.exists("/sys/fs/cgroup/systemd/cgroup.procs") and "name=systemd" in own:
        out.append((Path("/sys/fs/cgroup/systemd"), own["name=systemd"]))
    if os.path.exists("/sys/fs/cgroup/unified/cgroup.procs") and "" in own:
        out.append((Path("/sys/fs/cgroup/unified"), own[""]))
    elif os.path.exists("/sys/fs/cgroup/cgroup.controllers") and "" in own:
        out.append((Path("/sys/fs/cgroup"), own[""]))
    return out


def enter_own_cgroup(machine: str) -> list[str]:
    """Move this process into a cgroup of its own (``mwlab-MACHINE``) in each hierarchy.

    Without systemd on the host, ``--keep-unit`` makes nspawn put the container in
    ``<our cgroup>/payload``: two containers started from the same cgroup would share it and
    fight over it (units fail with 219/CGROUP). Returns the directories made."""
    made = []
    for root, rel in cgroup_roots():
        d = root / rel.lstrip("/") / (CGROUP_PREFIX + machine)
        d.mkdir(exist_ok=True)
        (d / "cgroup.procs").write_text(f"{os.getpid()}\n")
        made.append(str(d))
    return made


def remove_cgroups(prefix: str) -> None:
    """rmdir (depth first) every cgroup directory named ``mwlab-<prefix>*`` below our own
    cgroups; a cgroup that still holds a process stays (and is named in the error)."""
    for root, rel in cgroup_roots():
        base = root / rel.lstrip("/")
        try:
            names = [n for n in os.listdir(base) if n.startswith(CGROUP_PREFIX + prefix)]
        except OSError:
            continue
        for n in names:
            for dirpath, dirnames, _ in sorted(os.walk(base / n), key=lambda t: -len(t[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass


def nspawn_argv(merged: str, netns_path: str, machine: str) -> list[str]:
    return [NSPAWN, "-q", "-D", merged, "-b", "--register=no", "--keep-unit",
            f"--network-namespace-path={netns_path}", f"--machine={machine}",
            "--link-journal=no", "--resolv-conf=off", "--timezone=off", "--console=read-only",
            "--private-users=no", "--capability=CAP_NET_ADMIN", "--private-network"]


class Supervisor:
    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.stopping = False
        self.proc: subprocess.Popen | None = None
        self.init_pid: int | None = None
        self.boots: list[dict] = []
        self.snapshot: dict | None = None

    def write_json(self) -> None:
        doc = {"supervisor": os.getpid(), "nspawn": self.proc.pid if self.proc else None,
               "init": self.init_pid, "machine": self.a.machine, "boots": self.boots}
        tmp = Path(self.a.info + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.a.info)

    def write_pidfile(self, pid: int | None) -> None:
        tmp = Path(self.a.pidfile + ".tmp")
        tmp.write_text(f"{pid}\n" if pid else "")
        os.replace(tmp, self.a.pidfile)

    def on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
        self.kill_container()

    def kill_container(self) -> None:
        for pid in (self.init_pid,):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc is not None and self.init_pid is None:
            # not booted far enough to have an init: stop nspawn itself
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    def boot(self) -> int:
        base = Path(self.a.base)
        for d in ("upper", "work", "merged"):
            (base / d).mkdir(parents=True, exist_ok=True)
        hostname = base / "upper" / "etc" / "hostname"
        if not hostname.exists():  # first boot: the gateway is called after its machine (L-S)
            hostname.parent.mkdir(parents=True, exist_ok=True)
            hostname.write_text(self.a.machine + "\n")
        script = ('set -e; mount -t overlay "$1" -o "lowerdir=$2,upperdir=$3/upper,workdir=$3/work" "$3/merged"; '
                  'shift 3; exec "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                f"{self.a.machine}-rootfs", self.a.rootfs, str(base),
                *nspawn_argv(str(base / "merged"), self.a.netns, self.a.machine)]
        t0 = time.time()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        self.init_pid = None
        rec = {"started": t0, "init": None}
        self.boots.append(rec)
        deadline = time.monotonic() + 60
        while self.init_pid is None and self.proc.poll() is None and time.monotonic() < deadline and not self.stopping:
            self.init_pid = find_init(self.proc.pid)
            if self.init_pid is None:
                time.sleep(0.02)
        if self.init_pid is not None:
            rec["init"] = self.init_pid
            self.write_pidfile(self.init_pid)
            self.write_json()
            if self.stopping:
                self.kill_container()
        elif self.proc.poll() is None:
            self.proc.kill()
        while True:
            try:
                rc = self.proc.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
        self.write_pidfile(None)
        self.init_pid = None
        rec["exit"] = rc
        rec["ended"] = time.time()
        self.write_json()
        return rc

    def reset_netns(self) -> None:
        """Between two boots: back to the namespace the lab built (see netns.reset_netns)."""
        if self.snapshot is None:
            print(f"mwlab.container: {self.a.machine}: no snapshot of {self.a.netns}: namespace not reset", flush=True)
            return
        try:
            res = reset_netns(self.a.netns, self.snapshot)
        except Exception as e:  # the gateway must boot again even if the reset fails
            res = {"netns": self.a.netns, "errors": [f"{type(e).__name__}: {e}"]}
        print(f"mwlab.container: {self.a.machine}: {reset_summary(res)}", flush=True)
        if self.boots:
            self.boots[-1]["reset"] = res
            self.write_json()

    def run(self) -> int:
        enter_own_cgroup(self.a.machine)
        if not self.a.no_reset:
            try:  # the namespace as the lab built it, before the container touches it
                self.snapshot = snapshot_netns(self.a.netns)
            except Exception as e:
                print(f"mwlab.container: {self.a.machine}: cannot snapshot {self.a.netns}: {e}", flush=True)
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        reboot_flag = Path(self.a.reboot_flag)
        while not self.stopping:
            reboot_flag.unlink(missing_ok=True)
            rc = self.boot()
            if self.stopping:
                break
            if rc == REBOOT_RC or reboot_flag.exists():
                print(f"mwlab.container: {self.a.machine}: rebooting (nspawn rc {rc})", flush=True)
                if not self.a.no_reset:
                    self.reset_netns()
                continue
            print(f"mwlab.container: {self.a.machine}: container ended (nspawn rc {rc}); not restarting", flush=True)
            return rc
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mwlab.container")
    ap.add_argument("--machine", required=True)
    ap.add_argument("--rootfs", required=True)
    ap.add_argument("--base", required=True, help="overlay dir (upper/work/merged)")
    ap.add_argument("--netns", required=True, help="/run/netns/NAME")
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--info", required=True)
    ap.add_argument("--reboot-flag", required=True)
    ap.add_argument("--no-reset", action="store_true",
                    help="keep the network namespace's state across reboots (default: reset it)")
    return Supervisor(ap.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
