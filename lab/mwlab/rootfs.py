"""The Debian root filesystem that systemd-mode gateways boot (``systemd-nspawn -b``).

Built once with debootstrap (bookworm, ``--variant=minbase`` plus :data:`PACKAGES`) and cached
outside the repository in ``/var/cache/mwlab/rootfs-bookworm-<hash>``, where the hash covers the
suite, the package list and :data:`RECIPE` (what we change in the tree after debootstrap): change
either and a new tree is built beside the old one. A build runs under an exclusive ``flock`` on
``/var/cache/mwlab/rootfs.lock`` in a temporary directory that is renamed into place only when
complete, so concurrent callers wait for one build and a crashed build is never used.

sshd (openssh-server) starts at boot and listens on every address, port 22; root may log in by
key only. The tree holds no host keys: the lab gives each gateway its own (and its
``/root/.ssh/authorized_keys``) in the gateway's overlay at ``up``; a gateway without one makes
an ed25519 host key when sshd starts.

Gateways never write to the cache: each one boots an overlay (lower = this tree, upper/work under
``/var/lib/mwlab/{lab}/{site}/rootfs/``) mounted in a private mount namespace (see container.py).

:func:`ensure_host_tools` installs debootstrap and systemd-nspawn (package systemd-container) when
missing, without recommends, and makes sure ``libnss-mymachines`` is not installed and no
``mymachines`` entry is left in the host's /etc/nsswitch.conf.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

from .netns import LabError

log = logging.getLogger("mwlab")

CACHE_ROOT = Path(os.environ.get("MWLAB_CACHE", "/var/cache/mwlab"))
SUITE = "bookworm"
# What a lab gateway needs to be a real Debian box for the collection: systemd as PID 1, python3
# for Ansible, the tools the modules and the watchdog run (ip, nft, conntrack, ping, sysctl,
# modprobe), python3-apt so ansible.builtin.apt works offline for "present" checks, openssh-server
# so Ansible can also reach a gateway through the lab's network (``inventory --connection ssh``).
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "python3-apt", "iproute2", "nftables",
    "conntrack", "iputils-ping", "procps", "kmod", "openssh-server",
)
# Bump when the post-debootstrap changes below change (it is part of the cache key).
RECIPE = "3"
# ssh-keygen makes the lab's management key and each gateway's host key (systemd mode).
HOST_PACKAGES = {"debootstrap": "/usr/sbin/debootstrap", "systemd-container": "/usr/bin/systemd-nspawn",
                 "openssh-client": "/usr/bin/ssh-keygen"}
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Units that make no sense in a lab gateway container (no consoles, no hardware, no time sync
# of a shared clock), masked so boot is quick and `systemctl is-system-running` says "running".
MASK_UNITS = (
    "console-getty.service", "getty@.service", "serial-getty@.service", "systemd-timesyncd.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "fstrim.timer", "systemd-networkd-wait-online.service", "systemd-resolved.service",
    "systemd-firstboot.service", "systemd-hwdb-update.service", "ldconfig.service",
)


def cache_key() -> str:
    h = hashlib.sha256("\n".join([SUITE, RECIPE, *sorted(PACKAGES)]).encode()).hexdigest()
    return h[:12]


def rootfs_path() -> Path:
    return CACHE_ROOT / f"rootfs-{SUITE}-{cache_key()}"


def _run(argv: list[str], timeout: float = 1800, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip()[-1500:]
        raise LabError(f"{' '.join(argv[:4])}... failed (rc {p.returncode}): {tail}")
    return p


def _installed(pkg: str) -> bool:
    p = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", pkg], capture_output=True, text=True)
    return p.returncode == 0 and p.stdout.strip().endswith(" installed")


def _nsswitch_clean() -> bool:
    try:
        text = Path("/etc/nsswitch.conf").read_text()
    except FileNotFoundError:
        return True
    return not re.search(r"\bmymachines\b", text)


def ensure_host_tools() -> None:
    """apt-get install debootstrap systemd-container when missing (idempotent); never leave
    libnss-mymachines (and its ``mymachines`` nsswitch entry) behind."""
    missing = [pkg for pkg, path in HOST_PACKAGES.items() if not os.path.exists(path)]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if missing:
        log.warning("installing %s (needed by the lab's systemd mode)", " ".join(missing))
        with _lock("apt"):
            try:
                _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)
            except LabError:
                _run(["apt-get", "update", "-q"], env=env)
                _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)
    if _installed("libnss-mymachines"):
        with _lock("apt"):
            _run(["apt-get", "purge", "-y", "-q", "libnss-mymachines"], env=env)
    if not _nsswitch_clean():
        # The package's postrm removes the entry; if something else left it, say so loudly
        # rather than edit the host's /etc ourselves.
        raise LabError("/etc/nsswitch.conf still names mymachines (remove it: the lab never needs it)")


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    fd = os.open(CACHE_ROOT / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _mirror() -> str:
    if os.environ.get("MWLAB_DEBIAN_MIRROR"):
        return os.environ["MWLAB_DEBIAN_MIRROR"]
    # Use the mirror the host's apt uses (deb822 or one-line sources), else Debian's default.
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]:
        try:
            text = f.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = m.group(1).rstrip("/")
            if uri.startswith("http") and "security" not in uri and uri.endswith("/debian"):
                return uri
    return DEFAULT_MIRROR


def ensure_rootfs() -> tuple[Path, float | None]:
    """Return (path of the cached rootfs, build seconds or None when it was already there)."""
    path = rootfs_path()
    done = path / ".mwlab-complete"
    if done.exists():
        return path, None
    ensure_host_tools()
    with _lock("rootfs"):
        if done.exists():  # built by someone else while we waited
            return path, None
        t0 = time.monotonic()
        tmp = path.with_name(path.name + ".build")
        if tmp.exists():
            _rm_tree(tmp)
        if path.exists():  # incomplete leftover
            _rm_tree(path)
        tmp.mkdir(parents=True)
        mirror = _mirror()
        log.warning("building the systemd-mode rootfs %s from %s (once; a few minutes at most)", path, mirror)
        try:
            _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(tmp), mirror])
            _customize(tmp)
        except BaseException:
            _rm_tree(tmp)
            raise
        (tmp / ".mwlab-complete").write_text(f"suite={SUITE} recipe={RECIPE} packages={' '.join(PACKAGES)}\n")
        os.rename(tmp, path)
        took = time.monotonic() - t0
        log.warning("rootfs %s built in %.1f s", path, took)
        return path, took


def _rm_tree(path: Path) -> None:
    # debootstrap may leave /proc or /sys mounted inside a tree it failed to finish
    with open("/proc/self/mountinfo") as f:
        mps = [line.split()[4] for line in f]
    for mp in sorted((m for m in mps if m == str(path) or m.startswith(str(path) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def _customize(root: Path) -> None:
    """Post-debootstrap changes (part of the cache key through RECIPE)."""
    etc = root / "etc"
    (etc / "hostname").write_text("mwlab\n")
    (etc / "machine-id").write_text("")  # nspawn gives every boot a machine id
    (etc / "fstab").write_text("# mwlab: nothing to mount\n")
    for unit in MASK_UNITS:
        link = etc / "systemd" / "system" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    # The lab sets the gateway's sysctls (rp_filter 0, no forwarding) before boot; systemd's
    # defaults (rp_filter=2, promote_secondaries...) would change them behind the tests' back.
    for f in (root / "usr/lib/sysctl.d").glob("50-*.conf"):
        mask = etc / "sysctl.d" / f.name
        mask.parent.mkdir(parents=True, exist_ok=True)
        if not mask.exists() and not mask.is_symlink():
            mask.symlink_to("/dev/null")
    # journald: keep the journal in memory, small.
    jd = etc / "systemd" / "journald.conf.d"
    jd.mkdir(parents=True, exist_ok=True)
    (jd / "mwlab.conf").write_text("[Journal]\nStorage=volatile\nRuntimeMaxUse=8M\n")
    # No apt downloads from inside a gateway (the lab has no real internet).
    (etc / "apt" / "apt.conf.d" / "99mwlab").write_text('APT::Periodic::Enable "0";\n')
    # sshd: on at boot (the package's postinst enables it; make sure), all addresses, port 22,
    # root by key only. Host keys are per gateway (the lab writes them into the overlay at up):
    # none in the shared tree, and sshd makes one at start when a gateway has none.
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    (etc / "ssh" / "sshd_config.d").mkdir(parents=True, exist_ok=True)
    (etc / "ssh" / "sshd_config.d" / "mwlab.conf").write_text(
        "# mwlab: root by key only (the lab installs /root/.ssh/authorized_keys at up)\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\n")
    dropin = etc / "systemd" / "system" / "ssh.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "mwlab.conf").write_text(
        "[Service]\nExecStartPre=\n"
        "ExecStartPre=/bin/sh -c 'test -s /etc/ssh/ssh_host_ed25519_key || "
        "ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key'\n"
        "ExecStartPre=/usr/sbin/sshd -t\n")
    wants = etc / "systemd" / "system" / "multi-user.target.wants" / "ssh.service"
    if not wants.is_symlink():
        wants.parent.mkdir(parents=True, exist_ok=True)
        wants.symlink_to("/lib/systemd/system/ssh.service")
    (etc / "ssh" / "sshd_not_to_be_run").unlink(missing_ok=True)
    # Keep the image small: apt's package lists and archives are not needed at run time.
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
