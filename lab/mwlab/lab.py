"""The lab: builds a multi-ISP topology out of network namespaces and tears it down again.

Layout built by :meth:`Lab.up` (``L`` = lab name, ``S`` = site, ``U`` = uplink name, ``k`` =
uplink index in the site)::

    L-S-c1 ..cN --eth0--[L-S-sw: bridge Lbr, ports Lp0..LpN]--lan0-- L-S-gw
    L-S-gw --wanX-- (cust) L-S-U (transit) -- (LSuk) L-inet   [198.18.x.x on lo]

* LAN: always a switch namespace ``L-S-sw`` with a bridge ``Lbr``; the gateway's LAN
  interface and every client's ``eth0`` are veths whose other ends (``Lp0`` gateway, ``LpN``
  client N) are bridge ports. So clients=0..8 all look the same from the gateway.
* ISP router ``L-S-U``: ``cust`` faces the gateway, ``transit`` faces the internet (transit /30 from
  100.127.0.0/16), forwarding on, no NAT, BCP38 + counters in nft table ``inet L``.
* Internet ``L-inet``: holds the internet hosts on ``lo``, routes every uplink's customer
  network back via its ISP router, runs one reflector (``python3 -m mwlab.reflector``).
* Gateway ``L-S-gw``: addresses and connected routes only, no default route, forwarding off.
  Its anchor process (``L-S-anchor``) lives in the gateway netns and in a private mount
  namespace with overlays over /etc, /var, /root (upper/work under /var/lib/mwlab/L/S/), private
  tmpfs on /run and /tmp, and /sys remounted for the netns. Pid in /run/mwlab/L/S.gw.pid.

IPv6 (only when the topology has ``address6``/``network6``; see topology.py for the plan): the
internet holds ``hosts6`` on ``lo`` and a 2001:db8:fffe:g::/64 transit per ISP router; routers
forward IPv6 and keep global addresses on link down (``keep_addr_on_down``); DAD is off in every
lab namespace so addresses are usable at once, also after a carrier flap.

Sysctls: routers ip_forward=1, IPv6 forwarding=1, rp_filter=0; gateway ip_forward=0, IPv6
forwarding=0, rp_filter=0 (explicit, so results do not depend on the host's values); internet
rp_filter=0.

SSH management (systemd-mode gateways run sshd): ``up`` makes the lab's key pair and files under
``/run/mwlab/L/ssh/`` (see :meth:`Lab._setup_ssh`) and ``inventory(connection="ssh")`` points
Ansible's ssh connection at a gateway's LAN address from client ``L-S-c1`` (``via="lan"``) or at
an uplink address from the internet namespace (``via="inet"``): SSH always starts inside a lab
namespace, through wrapper scripts that ``nsenter --net`` there, so a change that cuts the
management path is seen as UNREACHABLE, as on a real network.

``up`` on a lab name that already exists (state file or any ``L-*`` namespace) tears that lab
down first. ``down`` kills the lab's recorded processes (pid + start time + cmdline checked) and
every process still living in one of the lab's network namespaces (so nothing keeps a
namespace or an overlay alive), deletes every ``L-*`` namespace (state file or not), and removes
/run/mwlab/L and /var/lib/mwlab/L. It is idempotent and works after a crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from .netns import (
    LabError,
    Netns,
    kill_pids,
    mounts_under,
    proc_alive,
    proc_cmdline,
    proc_start_time,
    pids_in_mntns,
    umount_lazy,
)
from .topology import LAB_RE, DEFAULT_LAB, Topology, TopologyError, Uplink
from . import container as _container

log = logging.getLogger("mwlab")

RUN_ROOT = Path("/run/mwlab")
VAR_ROOT = Path("/var/lib/mwlab")
REFLECTOR_PORT = 7777
FAIL_MODES = ("upstream", "link", "blackhole")
# Namespaces of a systemd-mode gateway's init that Ansible and `mwlab exec` enter (systemctl
# needs the container's mount namespace for /run/systemd; pid so ps/kill see the container).
SYSTEMD_NAMESPACES = ("net", "mount", "pid", "uts", "ipc")
BOOT_TIMEOUT = 120
OVERLAY_DIRS = ("etc", "root", "var")  # order matters: /var last (the upper dirs live in it)
LAB_DIR = Path(__file__).resolve().parent.parent  # the directory that holds the mwlab package
SSH_VIA = ("lan", "inet")  # management station: the site's first LAN client, or the internet
SSH_PROGRAMS = ("ssh", "sftp", "scp")  # each gets a wrapper that runs it in the station's netns
# ssh_common_args of the ssh inventory (besides key, known_hosts and bind address): no config
# files of this machine, no agent keys, no prompts; a dead path is noticed within seconds
# (ServerAlive also ends a ControlPersist master whose TCP connection died).
SSH_OPTIONS = ("-F none -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes "
               "-o GlobalKnownHostsFile=/dev/null -o ServerAliveInterval=2 -o ServerAliveCountMax=2")
SSH_TIMEOUT = 5  # ansible_ssh_timeout (ConnectTimeout): a cut path is UNREACHABLE within seconds

# Processes this interpreter started, kept referenced so Popen never warns and can reap them.
_CHILDREN: dict[int, subprocess.Popen] = {}


def lab_name(name: str | None = None) -> str:
    """--lab beats MWLAB_NAME beats the default ``mwl``."""
    name = name or os.environ.get("MWLAB_NAME") or DEFAULT_LAB
    if not LAB_RE.match(name):
        raise LabError(f"lab name {name!r} must be 1-5 characters of [a-z0-9]")
    return name


class Lab:
    """One lab, addressed by name. All state lives in ``/run/mwlab/{name}/state.json``."""

    def __init__(self, name: str | None = None):
        self.name = lab_name(name)
        self.ns = Netns(self.name)
        self.run_dir = RUN_ROOT / self.name
        self.var_dir = VAR_ROOT / self.name
        self.state_file = self.run_dir / "state.json"
        self.reflector_dir = self.run_dir / "reflector"
        self._lock_depth = 0
        self._lock_fd: int | None = None

    # ---- state -------------------------------------------------------------------------------------
    def load_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable state file %s: %s", self.state_file, e)
            return None

    def _state(self) -> dict[str, Any]:
        st = self.load_state()
        if st is None or st.get("status") != "up":
            raise LabError(f"lab {self.name} is not up (no usable {self.state_file})")
        return st

    def _save(self, st: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(st, indent=1, sort_keys=True))
        os.replace(tmp, self.state_file)

    @property
    def topology(self) -> Topology:
        return Topology.from_dict(self._state()["topology"])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_depth == 0:
            RUN_ROOT.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(RUN_ROOT / f"{self.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    # ---- names -------------------------------------------------------------------------------------
    def pidfile(self, site: str) -> Path:
        return self.run_dir / f"{site}.gw.pid"

    def namespace(self, site: str, role: str, topo: Topology | None = None) -> str:
        """Namespace of ``role`` (gw, sw, cN, an uplink name, or inet) at ``site``."""
        topo = topo or self.topology
        if role == "inet" or site == "inet":
            return topo.inet_ns
        s = topo.site(site)
        if role == "gw":
            return s.gw_ns
        if role == "sw":
            return s.switch_ns
        if role.startswith("c") and role[1:].isdigit():
            n = int(role[1:])
            if not 1 <= n <= s.clients:
                raise LabError(f"site {site}: no client {role} (clients: {s.clients})")
            return s.client_ns(n)
        return s.uplink(role).router_ns

    def gateway_pid(self, site: str) -> int:
        st = self._state()
        rec = st["pids"].get(f"{site}.gw")
        if rec is None:
            raise LabError(f"lab {self.name}: no site {site!r}")
        if not self._verify(rec):
            raise LabError(f"lab {self.name}: anchor of site {site} (pid {rec['pid']}) is gone")
        if rec.get("kind") == "container":
            pid = self._container_init(site)
            if pid is None:
                raise LabError(f"lab {self.name}: the container of site {site} is not running (rebooting?)")
            return pid
        return rec["pid"]

    def is_systemd(self, site: str) -> bool:
        return self.topology.site(site).systemd

    def _container_init(self, site: str) -> int | None:
        try:
            pid = int(self.pidfile(site).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if proc_alive(pid) else None

    def argv(self, site: str, role: str, cmd: Sequence[str]) -> list[str]:
        """Command line that runs ``cmd`` in that namespace (gateway: in the anchor's view)."""
        if role == "gw" and site != "inet":
            nss = SYSTEMD_NAMESPACES if self.is_systemd(site) else ("net", "mount")
            return ["nsenter", "--target", str(self.gateway_pid(site)), *(f"--{n}" for n in nss), "--", *cmd]
        return self.ns.argv(self.namespace(site, role), cmd)

    def run(self, site: str, role: str, cmd: Sequence[str], check: bool = False, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
        p = subprocess.run(self.argv(site, role, cmd), capture_output=True, text=True, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise LabError(f"{site}/{role}: {' '.join(cmd)} failed (rc {p.returncode}): {(p.stderr or p.stdout).strip()}")
        return p

    # ---- processes ---------------------------------------------------------------------------------
    @staticmethod
    def _verify(rec: dict[str, Any]) -> bool:
        """Is the recorded process still the one we started (start time + cmdline marker)?"""
        try:
            pid = int(rec["pid"])
            if not proc_alive(pid) or proc_start_time(pid) != rec["start"]:
                return False
            return str(rec["marker"]) in "\0".join(proc_cmdline(pid))
        except (KeyError, TypeError, ValueError):
            return False

    def _spawn(self, argv: list[str], logname: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        logf = open(self.run_dir / logname, "ab")
        try:
            p = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                start_new_session=True, close_fds=True,
            )
        finally:
            logf.close()
        _CHILDREN[p.pid] = p
        return p

    def _log_tail(self, logname: str) -> str:
        try:
            return (self.run_dir / logname).read_text(errors="replace")[-800:].strip()
        except OSError:
            return ""

    def _start_anchor(self, site: str) -> dict[str, Any]:
        name = f"{self.name}-{site}-anchor"
        base = self.var_dir / site
        lines = ["set -e"]
        for d in OVERLAY_DIRS:
            (base / d / "upper").mkdir(parents=True, exist_ok=True)
            (base / d / "work").mkdir(parents=True, exist_ok=True)
            lines.append(f"mount -t overlay {self.name}-{site}-{d} -o lowerdir=/{d},upperdir={base}/{d}/upper,workdir={base}/{d}/work /{d}")
        lines += [
            f"mount -t tmpfs -o mode=0755 {self.name}-{site}-run /run",
            f"mount -t tmpfs -o mode=1777 {self.name}-{site}-tmp /tmp",
            "mount -t sysfs sysfs /sys",
            f"exec -a {name} sleep infinity",
        ]
        script = "\n".join(lines)
        gw_ns = f"{self.name}-{site}-gw"
        argv = ["nsenter", f"--net={self.ns.path(gw_ns)}", "unshare", "--mount", "--propagation", "private",
                "bash", "-c", script]
        logname = f"{site}.gw.log"
        p = self._spawn(argv, logname)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cmd = proc_cmdline(p.pid)
            if cmd and cmd[0] == name:
                break
            if p.poll() is not None:
                raise LabError(f"anchor of site {site} exited (rc {p.returncode}): {self._log_tail(logname)}")
            time.sleep(0.01)
        else:
            raise LabError(f"anchor of site {site} did not come up: {self._log_tail(logname)}")
        mnt = os.stat(f"/proc/{p.pid}/ns/mnt")
        rec = {"pid": p.pid, "start": proc_start_time(p.pid), "marker": name, "kind": "anchor",
               "mntns": [mnt.st_dev, mnt.st_ino]}
        self.pidfile(site).write_text(f"{p.pid}\n")
        return rec

    # ---- systemd mode ------------------------------------------------------------------------------
    def machine(self, site: str) -> str:
        return f"{self.name}-{site}"

    def _container_files(self, site: str) -> dict[str, Path]:
        return {"info": self.run_dir / f"{site}.container.json", "reboot": self.run_dir / f"{site}.reboot"}

    def _start_container(self, site: str, rootfs_path: Path) -> dict[str, Any]:
        """Start the supervisor that boots this site's gateway under systemd-nspawn (container.py)."""
        files = self._container_files(site)
        pidfile = self.pidfile(site)
        pidfile.write_text("")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(LAB_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        argv = [sys.executable, "-m", "mwlab.container", "--machine", self.machine(site),
                "--rootfs", str(rootfs_path), "--base", str(self.var_dir / site / "rootfs"),
                "--netns", self.ns.path(f"{self.name}-{site}-gw"), "--pidfile", str(pidfile),
                "--info", str(files["info"]), "--reboot-flag", str(files["reboot"])]
        started = time.monotonic()
        p = self._spawn(argv, f"{site}.gw.log", env=env)
        deadline = time.monotonic() + 10
        while str(pidfile) not in proc_cmdline(p.pid):  # until exec'd: _verify checks the cmdline
            if p.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"container supervisor of site {site} did not start: {self._log_tail(f'{site}.gw.log')}")
            time.sleep(0.005)
        return {"pid": p.pid, "start": proc_start_time(p.pid), "marker": str(pidfile), "kind": "container",
                "started": started, "machine": self.machine(site)}

    def _wait_booted(self, site: str, since: float, old_init: int | None = None,
                     timeout: float = BOOT_TIMEOUT) -> tuple[float, str]:
        """Wait for a (new) container init, then for `systemctl is-system-running --wait`.
        Returns (seconds since ``since`` (monotonic), system state)."""
        deadline = time.monotonic() + timeout
        init = None
        while time.monotonic() < deadline:
            init = self._container_init(site)
            if init is not None and init != old_init:
                break
            rec = (self.load_state() or {}).get("pids", {}).get(f"{site}.gw")
            if rec is not None and not self._verify(rec):
                raise LabError(f"site {site}: the container supervisor exited: {self._log_tail(f'{site}.gw.log')}")
            time.sleep(0.05)
        else:
            raise LabError(f"site {site}: no container init within {timeout:.0f} s: {self._log_tail(f'{site}.gw.log')}")
        argv = ["nsenter", "--target", str(init), *(f"--{n}" for n in SYSTEMD_NAMESPACES), "--",
                "systemctl", "is-system-running", "--wait"]
        state = "unknown"
        while time.monotonic() < deadline:
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
            state = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else (p.stderr.strip() or "unknown")
            if state in ("running", "degraded", "maintenance", "stopping"):
                break
            time.sleep(0.1)  # systemd not answering on its bus yet
        took = time.monotonic() - since
        if state not in ("running", "degraded"):
            raise LabError(f"site {site}: container did not finish booting within {timeout:.0f} s (state {state})")
        if state == "degraded":
            failed = subprocess.run(argv[:-2] + ["--failed", "--no-legend", "--plain"], capture_output=True, text=True)
            log.warning("site %s: container booted degraded: %s", site, failed.stdout.strip())
        return took, state

    def reboot(self, site: str, hard: bool = False, wait: bool = True) -> float | None:
        """Reboot a systemd-mode gateway: ``systemctl reboot`` inside (nspawn exits 133 and the
        supervisor boots it again), or ``hard``: SIGKILL its init (a power cut) and boot it again.
        The overlay (the gateway's "disk") is kept. Returns the seconds until it runs again.

        Like a real reboot, neither kind keeps the kernel's network state: between the
        container's exit and its next boot the supervisor resets the gateway's namespace to what
        the lab built (addresses, connected routes, default policy rules, no nexthops, no other
        routes in any table, empty nftables ruleset, conntrack flushed, net.ipv4/net.ipv6
        sysctls as before the first boot; see :func:`mwlab.netns.reset_netns`). Only what the
        boot itself configures (units, the watchdog) comes back. What the reset removed is in
        the supervisor's log and in ``container_info(site)["boots"][-2]["reset"]``."""
        with self._locked():
            st = self._state()
            rec = st["pids"].get(f"{site}.gw")
            if rec is None:
                raise LabError(f"lab {self.name}: no site {site!r}")
            if rec.get("kind") != "container":
                raise LabError(f"site {site} is not in systemd mode (no container to reboot)")
            if not self._verify(rec):
                raise LabError(f"site {site}: the container supervisor is gone")
            old = self._container_init(site)
            t0 = time.monotonic()
            if hard or old is None:
                self._container_files(site)["reboot"].write_text("")
                if old is not None:
                    os.kill(old, 9)
            else:
                p = subprocess.run(self.argv(site, "gw", ["systemctl", "reboot"]), capture_output=True, text=True, timeout=30)
                if p.returncode != 0:
                    raise LabError(f"site {site}: systemctl reboot failed: {(p.stderr or p.stdout).strip()}")
            if not wait:
                return None
            took, state = self._wait_booted(site, t0, old_init=old)
            st = self._state()
            st.setdefault("reboots", {}).setdefault(site, []).append({"hard": hard, "seconds": round(took, 2), "state": state})
            self._save(st)
            return took

    def container_info(self, site: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._container_files(site)["info"].read_text())
        except (OSError, ValueError):
            return None

    # ---- SSH management path -----------------------------------------------------------------------
    @property
    def ssh_dir(self) -> Path:
        """``/run/mwlab/L/ssh``: key pair, known_hosts, wrappers, ControlPersist sockets."""
        return self.run_dir / "ssh"

    def ssh_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    def ssh_wrapper(self, station_ns: str, program: str = "ssh") -> Path:
        """Executable that runs ``program`` (ssh, sftp, scp) in namespace ``station_ns``."""
        if program not in SSH_PROGRAMS:
            raise LabError(f"no wrapper for {program!r} (have {', '.join(SSH_PROGRAMS)})")
        return self.ssh_dir / station_ns / program

    @staticmethod
    def _keygen(path: Path, comment: str) -> str:
        """ssh-keygen an ed25519 pair at ``path`` (no passphrase); returns the public key line."""
        for f in (path, path.with_name(path.name + ".pub")):
            f.unlink(missing_ok=True)
        p = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise LabError(f"ssh-keygen -f {path} failed (rc {p.returncode}): {(p.stderr or p.stdout).strip()}")
        os.chmod(path, 0o600)
        return path.with_name(path.name + ".pub").read_text().strip()

    def _write_ssh_wrappers(self, station_ns: str) -> None:
        d = self.ssh_dir / station_ns
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        netns = self.ns.path(station_ns)
        for prog in SSH_PROGRAMS:
            binary = shutil.which(prog) or f"/usr/bin/{prog}"
            w = d / prog
            w.write_text(f"#!/bin/sh\n# mwlab {self.name}: {prog} from the management station {station_ns} "
                         f"(a lab namespace, never the host's)\nexec nsenter --net={netns} -- {binary} \"$@\"\n")
            os.chmod(w, 0o755)

    def _setup_ssh(self, topo: Topology) -> None:
        """Before the containers boot: the lab's key pair (``ssh/id_ed25519``, 0600), per
        systemd-mode gateway a host key and ``/root/.ssh/authorized_keys`` in its overlay's upper
        dir (the gateway's disk, never the host's /root), a ``known_hosts`` naming each gateway by
        its machine name (``HostKeyAlias``), wrappers for ssh/sftp/scp per management station
        (each site's ``c1`` and the internet namespace) and the ControlPersist directory ``cp``."""
        sites = [s for s in topo.sites if s.systemd]
        if not sites:
            return
        self.ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.ssh_dir / "cp").mkdir(mode=0o700, exist_ok=True)
        pub = self._keygen(self.ssh_key(), f"mwlab-{self.name}")
        known = []
        for s in sites:
            upper = self.var_dir / s.name / "rootfs" / "upper"
            etc_ssh = upper / "etc" / "ssh"
            etc_ssh.mkdir(parents=True, exist_ok=True)
            host_pub = self._keygen(etc_ssh / "ssh_host_ed25519_key", self.machine(s.name))
            known.append(f"{self.machine(s.name)} {' '.join(host_pub.split()[:2])}")
            root = upper / "root"
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(root, 0o700)  # the merged /root takes the upper dir's mode
            (root / ".ssh").mkdir(mode=0o700, exist_ok=True)
            ak = root / ".ssh" / "authorized_keys"
            ak.write_text(pub + "\n")
            os.chmod(ak, 0o600)
            if s.clients >= 1:
                self._write_ssh_wrappers(s.client_ns(1))
        self._write_ssh_wrappers(topo.inet_ns)
        (self.ssh_dir / "known_hosts").write_text("".join(line + "\n" for line in known))

    def ssh_target(self, site: str, via: str = "lan", uplink: str | None = None,
                   topo: Topology | None = None) -> dict[str, str]:
        """Where SSH management of ``site`` starts and goes: ``namespace`` (the station),
        ``address`` (the station's source address, what the gateway sees), ``host`` (the
        gateway's address SSH connects to). ``lan``: from client c1 to the gateway's LAN address;
        ``inet``: from the internet namespace (its transit address towards that ISP) to the
        uplink's address (default the site's first uplink); the gateway needs a route back (a
        default route or the role's per-uplink tables)."""
        topo = topo or self.topology
        s = topo.site(site)
        if via == "lan":
            if s.clients < 1:
                raise LabError(f"site {site} has no LAN client to manage it from (clients: 0); use via inet")
            return {"via": via, "namespace": s.client_ns(1), "address": str(s.client_address(1).ip),
                    "host": str(s.gw_lan_address.ip)}
        if via == "inet":
            u = s.uplink(uplink) if uplink else s.uplinks[0]
            return {"via": via, "namespace": topo.inet_ns, "address": str(u.transit_inet),
                    "host": str(u.address.ip), "uplink": u.name}
        raise LabError(f"unknown management path {via!r} (choose {', '.join(SSH_VIA)})")

    def _ssh_hostvars(self, site: str, via: str, uplink: str | None, topo: Topology) -> dict[str, Any]:
        if not self.ssh_key().exists():
            raise LabError(f"lab {self.name}: no SSH key at {self.ssh_key()} (built before SSH support? run up again)")
        t = self.ssh_target(site, via, uplink, topo)
        wrappers = {p: self.ssh_wrapper(t["namespace"], p) for p in SSH_PROGRAMS}
        if not wrappers["ssh"].exists():
            self._write_ssh_wrappers(t["namespace"])
        common = (f"{SSH_OPTIONS} -o HostKeyAlias={self.machine(site)} "
                  f"-o UserKnownHostsFile={self.ssh_dir / 'known_hosts'} -o BindAddress={t['address']}")
        hv: dict[str, Any] = {
            "ansible_connection": "ssh",
            "ansible_host": t["host"],
            "ansible_port": 22,
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.ssh_key()),
            "ansible_ssh_executable": str(wrappers["ssh"]),
            "ansible_sftp_executable": str(wrappers["sftp"]),
            "ansible_scp_executable": str(wrappers["scp"]),
            "ansible_ssh_transfer_method": "sftp",
            "ansible_ssh_common_args": common,
            "ansible_ssh_timeout": SSH_TIMEOUT,
            "ansible_host_key_checking": True,
            "ansible_control_path_dir": str(self.ssh_dir / "cp"),
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_pipelining": True,
            "mwlab_mgmt_via": via,
            "mwlab_mgmt_namespace": t["namespace"],
            "mwlab_mgmt_address": t["address"],
        }
        if "uplink" in t:
            hv["mwlab_mgmt_uplink"] = t["uplink"]
        return hv

    def _kill_stray_nspawns(self) -> None:
        """systemd-nspawn (and its supervisor) of this lab's machines that outlived their
        supervisor record (a crash): they live in the host's netns, so the netns sweep misses them."""
        run_dir = str(self.run_dir) + "/"
        strays = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            cmd = proc_cmdline(int(d))
            if not cmd:
                continue
            if any(a.startswith(f"--machine={self.name}-") for a in cmd) and os.path.basename(cmd[0]) == "systemd-nspawn":
                strays.append(int(d))
            elif "mwlab.container" in cmd and any(a.startswith(run_dir) for a in cmd):
                strays.append(int(d))
        if strays:
            # The containers' inits first (SIGKILL: the kernel ends each pid namespace at once).
            for n in strays:
                init = _container.find_init(n)
                if init:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(init, 9)
            kill_pids(strays)

    def _start_reflector(self) -> dict[str, Any] | None:
        """Start the reflector and wait until it is ready (or give up with a warning)."""
        return self._wait_reflector(self._spawn_reflector())

    def _spawn_reflector(self) -> subprocess.Popen | None:
        if importlib.util.find_spec("mwlab.reflector") is None:
            log.warning("mwlab.reflector is not importable: the internet namespace runs no reflector")
            return None
        self.reflector_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(LAB_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        argv = self.ns.argv(f"{self.name}-inet", [sys.executable, "-m", "mwlab.reflector",
                                                  "--state-dir", str(self.reflector_dir), "--port", str(REFLECTOR_PORT)])
        return self._spawn(argv, "reflector.log", env=env)

    def _wait_reflector(self, p: subprocess.Popen | None) -> dict[str, Any] | None:
        if p is None:
            return None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if '"ready"' in self._log_tail("reflector.log"):
                break
            if p.poll() is not None:
                log.warning("reflector exited (rc %s): %s", p.returncode, self._log_tail("reflector.log"))
                return None
            time.sleep(0.02)
        else:
            log.warning("reflector did not report ready within 5 s; keeping it")
        return {"pid": p.pid, "start": proc_start_time(p.pid), "marker": str(self.reflector_dir), "kind": "reflector"}

    # ---- up ----------------------------------------------------------------------------------------
    def up(self, topology: Topology | str | Path, systemd: bool | None = None) -> Topology:
        """Build the lab (tearing down an existing lab of the same name first).

        ``systemd=True`` makes every gateway a systemd-nspawn container (as ``systemd: true`` in
        the topology, per lab or per site, does for some); ``False`` makes none; ``None`` keeps
        the topology's choice."""
        if not isinstance(topology, Topology):
            topology = Topology.load(topology, lab=self.name)
        elif topology.lab != self.name:
            topology = Topology.from_dict(topology.to_dict(), lab=self.name)
        if systemd is not None:
            data = topology.to_dict()
            for s in data["sites"]:
                s["systemd"] = bool(systemd)
            topology = Topology.from_dict(data, lab=self.name)
        topo = topology
        rootfs_path: Path | None = None
        rootfs_build: float | None = None
        if any(s.systemd for s in topo.sites):
            from . import rootfs  # only systemd mode needs debootstrap/nspawn
            rootfs.ensure_host_tools()
            rootfs_path, rootfs_build = rootfs.ensure_rootfs()
        with self._locked():
            if self.load_state() is not None or self.ns.list() or self.run_dir.exists() or self.var_dir.exists():
                log.info("lab %s exists: tearing it down first", self.name)
                self.down()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.var_dir.mkdir(parents=True, exist_ok=True)
            st: dict[str, Any] = {
                "lab": self.name, "status": "building", "created": time.time(),
                "topology": topo.to_dict(), "namespaces": topo.namespaces, "pids": {},
                "dirs": [str(self.run_dir), str(self.var_dir)], "failures": {}, "impairments": {},
                "warnings": [],
            }
            if rootfs_path is not None:
                st["rootfs"] = {"path": str(rootfs_path), "build_seconds": rootfs_build}
                st["boot_seconds"] = {}
            self._save(st)
            try:
                self._build(topo)
                self._setup_ssh(topo)  # keys into the overlays before the containers boot
                spawned = self._spawn_reflector()  # python starts while the anchors come up
                if spawned is not None:
                    st["pids"]["reflector"] = {"pid": spawned.pid, "start": proc_start_time(spawned.pid),
                                               "marker": str(self.reflector_dir), "kind": "reflector"}
                for s in topo.sites:
                    if s.systemd:
                        st["pids"][f"{s.name}.gw"] = self._start_container(s.name, rootfs_path)  # type: ignore[arg-type]
                    else:
                        st["pids"][f"{s.name}.gw"] = self._start_anchor(s.name)
                    self._save(st)
                for s in topo.sites:  # the containers boot in parallel; wait for each
                    if s.systemd:
                        secs, state = self._wait_booted(s.name, st["pids"][f"{s.name}.gw"]["started"])
                        st["boot_seconds"][s.name] = round(secs, 2)
                        if state != "running":
                            st["warnings"].append(f"site {s.name}: system state {state}")
                        self._save(st)
                refl = self._wait_reflector(spawned)
                if refl:
                    st["pids"]["reflector"] = refl
                else:
                    st["pids"].pop("reflector", None)
                    st["warnings"].append("no reflector running")
                st["status"] = "up"
                self._save(st)
            except BaseException:
                log.error("building lab %s failed; tearing down", self.name)
                try:
                    self.down()
                except Exception as e:  # pragma: no cover - best effort
                    log.error("teardown after failed build: %s", e)
                raise
        return topo

    def _build(self, topo: Topology) -> None:
        lab = self.name
        inet = topo.inet_ns
        for n in topo.namespaces:
            self.ns.add(n)
        links: dict[str, list[str]] = {n: [] for n in topo.namespaces}
        conf: dict[str, list[str]] = {n: ["link set dev lo up"] for n in topo.namespaces}
        sysctl: dict[str, dict[str, Any]] = {}
        nft: dict[str, str] = {}

        # Every namespace: no IPv6 DAD (addresses usable at once, also after a carrier flap).
        for n in topo.namespaces:
            sysctl[n] = {"net.ipv6.conf.all.accept_dad": 0, "net.ipv6.conf.default.accept_dad": 0}
        conf[inet] += [f"address add {h}/32 dev lo" for h in topo.hosts]
        conf[inet] += [f"address add {h}/128 dev lo" for h in topo.hosts6]
        sysctl[inet].update({"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0, "net.ipv4.ip_forward": 0})
        for s in topo.sites:
            gw, sw = s.gw_ns, s.switch_ns
            br = f"{lab}br"
            links[sw].append(f"link add name {br} type bridge stp_state 0")
            links[gw].append(f"link add name {s.lan_interface} type veth peer name {lab}p0 netns {sw}")
            ports = [f"{lab}p0"]
            for n in range(1, s.clients + 1):
                c = s.client_ns(n)
                links[c].append(f"link add name eth0 type veth peer name {lab}p{n} netns {sw}")
                ports.append(f"{lab}p{n}")
                conf[c] += [
                    f"address add {s.client_address(n)} dev eth0", "link set dev eth0 up",
                    f"route add default via {s.gw_lan_address.ip} dev eth0",
                ]
                if s.lan_network6 is not None:
                    conf[c] += [f"address add {s.client_address6(n)} dev eth0",
                                f"route add ::/0 via {s.gw_lan_address6.ip} dev eth0"]
            conf[sw] += [f"link set dev {br} up"] + [x for p in ports for x in (f"link set dev {p} master {br}", f"link set dev {p} up")]
            conf[gw] += [f"address add {s.gw_lan_address} dev {s.lan_interface}", f"link set dev {s.lan_interface} up"]
            if s.lan_network6 is not None:
                conf[gw].append(f"address add {s.gw_lan_address6} dev {s.lan_interface}")
            sysctl[gw].update({"net.ipv4.ip_forward": 0, "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
                               "net.ipv6.conf.all.forwarding": 0})
            for u in s.uplinks:
                r = u.router_ns
                if u.device_only:
                    links[gw].append(f"link add name {u.interface} address {u.mac} type veth peer name cust address {u.mac} netns {r}")
                    # same MAC on both ends: random link-local addresses keep the ends distinct
                    conf[gw] += [f"link set dev {u.interface} arp off", f"link set dev {u.interface} addrgenmode random",
                                 f"address add {u.address.ip} peer {u.peer}/32 dev {u.interface}"]
                    conf[r] += ["link set dev cust arp off", "link set dev cust addrgenmode random"]
                else:
                    links[gw].append(f"link add name {u.interface} type veth peer name cust netns {r}")
                    conf[gw].append(f"address add {u.address} dev {u.interface}")
                if u.address6 is not None:
                    conf[gw].append(f"address add {u.address6} dev {u.interface}")
                conf[gw].append(f"link set dev {u.interface} up")
                links[r].append(f"link add name transit type veth peer name {u.inet_ifname} netns {inet}")
                conf[r] += self._router_addresses(u)
                conf[r] += ["link set dev cust up", f"address add {u.transit_router}/30 dev transit",
                            f"address add {u.transit6_router}/64 dev transit", "link set dev transit up"]
                conf[r] += self._router_routes(u)
                conf[inet] += [f"address add {u.transit_inet}/30 dev {u.inet_ifname}",
                               f"address add {u.transit6_inet}/64 dev {u.inet_ifname}", f"link set dev {u.inet_ifname} up"]
                conf[inet] += self._inet_routes(u)
                sysctl[r].update({"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
                                  "net.ipv6.conf.all.forwarding": 1, "net.ipv6.conf.all.keep_addr_on_down": 1})
                nft[r] = self._router_nft(u)
        for n, kv in sysctl.items():  # before the links: "default" applies to links created later
            self.ns.sysctl(n, kv)
        for n in topo.namespaces:
            self.ns.batch(n, links[n])
        for n in topo.namespaces:
            self.ns.batch(n, conf[n])
        for n, script in nft.items():
            self.ns.nft(n, script)

    @staticmethod
    def _router_addresses(u: Uplink) -> list[str]:
        """The ISP router's customer-side addresses (restore re-adds them: a link-local address
        does not survive link down even with keep_addr_on_down)."""
        if u.device_only:
            return [f"address replace {u.peer} peer {u.address.ip}/32 dev cust"]
        out = [f"address replace {u.gateway}/{u.address.network.prefixlen} dev cust"]
        if u.gateway6 is not None:
            plen = 64 if u.gateway6.is_link_local else u.address6.network.prefixlen  # type: ignore[union-attr]
            out.append(f"address replace {u.gateway6}/{plen} dev cust")
        return out

    @staticmethod
    def _router_routes(u: Uplink) -> list[str]:
        out = [f"route replace default via {u.transit_inet} dev transit",
               f"route replace ::/0 via {u.transit6_inet} dev transit"]
        if u.address6 is not None and (u.device_only or u.gateway6.is_link_local):  # type: ignore[union-attr]
            out.append(f"route replace {u.address6.network} dev cust")
        return out

    @staticmethod
    def _inet_routes(u: Uplink) -> list[str]:
        out = [f"route replace {u.customer_network} via {u.transit_router} dev {u.inet_ifname}"]
        if u.address6 is not None:
            out.append(f"route replace {u.address6.network} via {u.transit6_router} dev {u.inet_ifname}")
        return out

    def _router_nft(self, u: Uplink) -> str:
        t = self.name
        if u.address6 is None:
            v6rule = 'iifname "cust" meta nfproto ipv6 counter name bcp38_drop drop comment "no IPv6 service"'
        else:
            v6rule = f'iifname "cust" ip6 saddr != {u.address6.ip} counter name bcp38_drop drop'
        return f"""
table inet {t}
delete table inet {t}
table inet {t} {{
    counter bcp38_drop {{ }}
    counter from_cust {{ }}
    counter to_cust {{ }}
    counter fail_drop {{ }}
    counter loss_drop {{ }}
    chain fail_in {{ }}
    chain fail_out {{ }}
    chain loss_in {{ }}
    chain loss_out {{ }}
    chain pre {{
        type filter hook prerouting priority raw; policy accept;
        iifname "cust" jump fail_in
        iifname "cust" jump loss_in
        iifname "cust" ip6 saddr {{ ::/128, fe80::/10 }} accept comment "link-local housekeeping, not counted"
        iifname "cust" ip saddr != {u.address.ip} counter name bcp38_drop drop
        {v6rule}
        iifname "cust" counter name from_cust
    }}
    chain post {{
        type filter hook postrouting priority filter; policy accept;
        oifname "cust" jump fail_out
        oifname "cust" jump loss_out
        oifname "cust" ip6 saddr fe80::/10 accept
        oifname "cust" counter name to_cust
    }}
}}
"""

    # ---- down --------------------------------------------------------------------------------------
    def down(self) -> None:
        """Tear the lab down. Idempotent; needs no state file."""
        with self._locked():
            st = self.load_state() or {}
            recorded = list((st.get("pids") or {}).values())
            mine = [r["pid"] for r in recorded if isinstance(r, dict) and "pid" in r and self._verify(r)]
            kill_pids(mine)
            # Also every process still inside one of the lab's network namespaces (a watchdog the
            # role started, an Ansible task, a crashed lab's anchor): they would keep the
            # namespace and the gateway's overlays alive. Nothing but the lab lives there.
            names = sorted(set(self.ns.list()) | {n for n in st.get("namespaces", []) if n.startswith(self.ns.prefix)})
            mntns = {tuple(r["mntns"]) for r in recorded if isinstance(r, dict) and isinstance(r.get("mntns"), list)}
            for _ in range(3):
                strays = [p for n in names for p in self.ns.pids(n)] + pids_in_mntns(mntns)
                if not strays:
                    break
                kill_pids(strays)
            self._kill_stray_nspawns()
            _container.remove_cgroups(self.name + "-")
            for n in names:
                self.ns.delete(n)
            for base in (self.var_dir, self.run_dir):
                for mp in sorted(mounts_under(str(base)), key=len, reverse=True):
                    umount_lazy(mp)
            for base in (self.var_dir, self.run_dir):
                if base.exists():
                    shutil.rmtree(base, ignore_errors=True)
                if base.exists():
                    raise LabError(f"could not remove {base}")
            for pid, child in list(_CHILDREN.items()):
                if child.poll() is not None:
                    del _CHILDREN[pid]
            left = self.ns.list()
            if left:
                raise LabError(f"namespaces left after teardown: {' '.join(left)}")

    # ---- failures ----------------------------------------------------------------------------------
    def _uplink(self, topo: Topology, site: str, uplink: str) -> Uplink:
        return topo.site(site).uplink(uplink)

    def fail(self, site: str, uplink: str, mode: str = "upstream") -> None:
        """Break one uplink: ``upstream`` (ISP loses the internet; ICMP net-unreachable),
        ``link`` (carrier loss on the gateway's interface), ``blackhole`` (silent drop of all IP
        to/from the customer at the ISP router; ARP keeps working)."""
        if mode not in FAIL_MODES:
            raise LabError(f"unknown failure mode {mode!r} (choose {', '.join(FAIL_MODES)})")
        with self._locked():
            st = self._state()
            topo = Topology.from_dict(st["topology"])
            u = self._uplink(topo, site, uplink)
            key = f"{site}/{uplink}"
            cur = st["failures"].get(key)
            if cur == mode:
                return
            if cur:
                self._undo(u, cur)
            r = u.router_ns
            if mode == "upstream":
                self.ns.ip(r, "link", "set", "dev", "transit", "down")
            elif mode == "link":
                self.ns.ip(r, "link", "set", "dev", "cust", "down")
            else:
                t = self.name
                self.ns.nft(r, f"flush chain inet {t} fail_in\nflush chain inet {t} fail_out\n"
                               f"add rule inet {t} fail_in counter name fail_drop drop\n"
                               f"add rule inet {t} fail_out counter name fail_drop drop\n")
            st["failures"][key] = mode
            self._save(st)

    def _undo(self, u: Uplink, mode: str) -> None:
        r = u.router_ns
        if mode == "upstream":
            self.ns.ip(r, "link", "set", "dev", "transit", "up")
        elif mode == "link":
            self.ns.ip(r, "link", "set", "dev", "cust", "up")
        elif mode == "blackhole":
            self.ns.nft(r, f"flush chain inet {self.name} fail_in\nflush chain inet {self.name} fail_out\n")
        # Link down flushed the routes over that link (and link-local addresses): put them back.
        self.ns.batch(r, self._router_addresses(u) + self._router_routes(u))
        self.ns.batch(f"{self.name}-inet", self._inet_routes(u))

    def restore(self, site: str, uplink: str) -> str | None:
        """Undo whatever ``fail`` did to that uplink. Returns the mode undone (None: nothing)."""
        with self._locked():
            st = self._state()
            topo = Topology.from_dict(st["topology"])
            u = self._uplink(topo, site, uplink)
            mode = st["failures"].pop(f"{site}/{uplink}", None)
            if mode:
                self._undo(u, mode)
                self._save(st)
            return mode

    def impair(self, site: str, uplink: str, loss: int | None = None, clear: bool = False) -> None:
        """Random loss (percent, each direction) at the ISP router; ``clear`` removes it."""
        with self._locked():
            st = self._state()
            topo = Topology.from_dict(st["topology"])
            u = self._uplink(topo, site, uplink)
            key = f"{site}/{uplink}"
            t = self.name
            script = f"flush chain inet {t} loss_in\nflush chain inet {t} loss_out\n"
            if clear or not loss:
                st["impairments"].pop(key, None)
            else:
                if isinstance(loss, bool) or not isinstance(loss, int) or not 0 < loss <= 100:
                    raise LabError(f"loss must be an integer percentage 1..100, got {loss!r}")
                script += "".join(f"add rule inet {t} {c} numgen random mod 100 <= {loss - 1} counter name loss_drop drop\n"
                                  for c in ("loss_in", "loss_out"))
                st["impairments"][key] = {"loss": loss}
            self.ns.nft(u.router_ns, script)
            self._save(st)

    # ---- observation -------------------------------------------------------------------------------
    def counters(self, site: str, uplink: str) -> dict[str, int]:
        """Packet counts of the ISP router's named counters (bcp38_drop, from_cust, ...)."""
        topo = self.topology
        u = self._uplink(topo, site, uplink)
        data = self.ns.nft_json(u.router_ns, "list", "counters", "table", "inet", self.name)
        out = {}
        for item in data.get("nftables", []):
            c = item.get("counter")
            if c:
                out[c["name"]] = c["packets"]
        return out

    def status(self) -> dict[str, Any]:
        st = self.load_state()
        present = self.ns.list()
        if st is None:
            return {"lab": self.name, "status": "down" if not present else "stale", "namespaces": present}
        topo = Topology.from_dict(st["topology"])
        procs = {k: {**v, "alive": self._verify(v)} for k, v in st.get("pids", {}).items()}
        sites = []
        for s in topo.sites:
            ups = []
            for u in s.uplinks:
                link = self.ns.link(s.gw_ns, u.interface) if s.gw_ns in present else None
                key = f"{s.name}/{u.name}"
                try:
                    counters = self.counters(s.name, u.name) if u.router_ns in present else {}
                except LabError:
                    counters = {}
                ups.append({
                    "name": u.name, "interface": u.interface, "address": str(u.address),
                    "gateway": str(u.gateway) if u.gateway else None, "peer": str(u.peer) if u.peer else None,
                    "router_ns": u.router_ns, "gw_link": (link or {}).get("operstate", "absent"),
                    "failure": st["failures"].get(key), "impairment": st["impairments"].get(key),
                    "counters": counters,
                })
            site = {"name": s.name, "gateway_ns": s.gw_ns, "pidfile": str(self.pidfile(s.name)),
                    "anchor_alive": procs.get(f"{s.name}.gw", {}).get("alive", False),
                    "lan": str(s.lan_network), "clients": s.clients, "uplinks": ups, "systemd": s.systemd}
            if s.systemd:
                site["container"] = {"machine": self.machine(s.name), "init_pid": self._container_init(s.name),
                                     "boot_seconds": (st.get("boot_seconds") or {}).get(s.name),
                                     "boots": len((self.container_info(s.name) or {}).get("boots", []))}
            sites.append(site)
        missing = [n for n in st.get("namespaces", []) if n not in present]
        out = {"lab": self.name, "status": st.get("status"), "namespaces": present, "missing_namespaces": missing,
               "processes": procs, "sites": sites, "warnings": st.get("warnings", []),
               "reflector_state_dir": str(self.reflector_dir)}
        if st.get("rootfs"):
            out["rootfs"] = st["rootfs"]
        try:  # replies sent/deferred/dropped per reason (mwlab.reflector writes it about once a second)
            out["reflector_stats"] = json.loads((self.reflector_dir / "stats.json").read_text())
        except (OSError, ValueError):
            pass
        return out

    # ---- inventory ---------------------------------------------------------------------------------
    def inventory(self, connection: str = "nsenter", via: str = "lan", uplink: str | None = None) -> dict[str, Any]:
        """Inventory of the gateways. ``connection="nsenter"`` (default): the collection's nsenter
        connection into the gateway's namespaces. ``connection="ssh"``: systemd-mode gateways
        are reached with plain OpenSSH through the lab's network (see :meth:`ssh_target` for
        ``via`` and ``uplink``); other gateways (no sshd) keep the nsenter connection."""
        if connection not in ("nsenter", "ssh"):
            raise LabError(f"unknown connection {connection!r} (choose nsenter or ssh)")
        if via not in SSH_VIA:
            raise LabError(f"unknown management path {via!r} (choose {', '.join(SSH_VIA)})")
        topo = self.topology
        if connection == "ssh" and not any(s.systemd for s in topo.sites):
            raise LabError(f"lab {self.name}: no systemd-mode gateway, so no sshd (up --systemd)")
        hosts = {}
        for s in topo.sites:
            ups = []
            for u in s.uplinks:
                d: dict[str, Any] = {"name": u.name, "interface": u.interface, "address": str(u.address)}
                if not u.device_only:
                    d["gateway"] = str(u.gateway)
                if u.address6 is not None:
                    d["address6"] = str(u.address6)
                    if u.gateway6 is not None:
                        d["gateway6"] = str(u.gateway6)
                d.update({"table": u.table, "weight": u.weight, "probe_targets": [str(h) for h in topo.probe_targets]})
                if u.address6 is not None:
                    d["probe_targets6"] = [str(h) for h in topo.probe_targets6]
                ups.append(d)
            hosts[s.name] = {
                "ansible_connection": "multiwan.linux.nsenter",
                "multiwan_nsenter_pidfile": str(self.pidfile(s.name)),
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_pipelining": True,
                "multiwan_lan_networks": [str(s.lan_network)] + ([str(s.lan_network6)] if s.lan_network6 else []),
                "multiwan_uplinks": ups,
                "mwlab_lab": self.name,
                "mwlab_site": s.name,
            }
            if s.systemd:
                # The pidfile holds the container's init (rewritten by the supervisor on every
                # boot); /usr/bin/python3 is the container's own (mount namespace).
                hosts[s.name]["multiwan_nsenter_namespaces"] = list(SYSTEMD_NAMESPACES)
                hosts[s.name]["mwlab_systemd"] = True
                if connection == "ssh":
                    # multiwan_nsenter_* stay: the lab (and a test undoing a cut) can still enter
                    ssh = self._ssh_hostvars(s.name, via, uplink, topo)
                    hosts[s.name] = {**ssh, **{k: v for k, v in hosts[s.name].items() if k not in ssh}}
        return {"all": {"children": {"gateways": {"hosts": hosts}}}}

    def inventory_yaml(self, connection: str = "nsenter", via: str = "lan", uplink: str | None = None) -> str:
        inv = self.inventory(connection, via, uplink)
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:  # JSON is valid YAML
            return json.dumps(inv, indent=2) + "\n"
        return "# generated by mwlab for lab " + self.name + "\n" + yaml.safe_dump(inv, sort_keys=False, default_flow_style=None, width=200)


__all__ = ["Lab", "LabError", "Topology", "TopologyError", "FAIL_MODES", "lab_name"]
