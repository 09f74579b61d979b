"""SSH management path to systemd-mode gateways (issue 7, "safe apply").

The nsenter connection never notices that a change cut the management path: it does not use
the network. ``mwlab inventory --connection ssh`` makes Ansible use plain OpenSSH from a lab
namespace (the site's LAN client c1 by default, the internet namespace with ``--via inet``)
to the gateway's sshd. This test (lab ``mwsm``, or ``$MWTEST_SSH_LAB``; one site, two uplinks,
systemd mode)

* checks the files ``up`` made (key 0600, authorized_keys and host key in the gateway's overlay
  only, known_hosts, wrappers) and sshd in the container (enabled, all addresses, key only);
* runs ``ansible -m ping``, ``copy`` (sftp through the wrapper) and ``command`` over SSH from c1,
  and checks the session really came from c1's address;
* cuts the path inside the gateway (``ip rule add priority 5 to <station> blackhole``): the next
  ping is UNREACHABLE within 15 s (the ControlPersist master dies of ServerAlive), and so is a
  fresh connection (ConnectTimeout); the rule removed, ping works again;
* manages the gateway from the internet namespace through isp1 (``--via inet``, CLI), once the
  gateway has a route back;
* tears down and asserts nothing is left (namespaces, processes, the ssh dir, the host's ~/.ssh).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import needs_root

REPO = Path(__file__).resolve().parents[2]
LAB = os.environ.get("MWTEST_SSH_LAB", "mwsm")
CUT_LIMIT = 15.0  # seconds until a cut management path must show as UNREACHABLE

TOPOLOGY = {
    "systemd": True,
    "sites": [{
        "name": "s1",
        "lan": {"network": "10.1.0.0/24", "clients": 1},
        "uplinks": [
            {"name": "isp1", "interface": "wan1", "address": "100.64.1.2/24", "gateway": "100.64.1.1"},
            {"name": "isp2", "interface": "wan2", "address": "100.64.2.2/24", "gateway": "100.64.2.1"},
        ],
    }],
}

pytestmark = [needs_root, pytest.mark.skipif(not os.path.exists("/usr/sbin/debootstrap") and os.system("command -v apt-get >/dev/null") != 0,
                                             reason="systemd mode needs debootstrap (apt-get)")]
TIMINGS: dict[str, float] = {}


def ansible_bin() -> str:
    for candidate in (REPO / ".venv" / "bin" / "ansible", Path(sys.executable).parent / "ansible"):
        if candidate.exists():
            return str(candidate)
    return "ansible"


def ansible_env() -> dict[str, str]:
    # Nothing from the caller's ANSIBLE_* settings: the inventory alone must make SSH work.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_DEPRECATION_WARNINGS="0", ANSIBLE_RETRY_FILES_ENABLED="0")
    return env


def ansible(inv: Path, module: str, args: str | None = None, timeout: float = 90) -> tuple[subprocess.CompletedProcess, float]:
    argv = [ansible_bin(), "-i", str(inv), "s1", "-m", module] + (["-a", args] if args else [])
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, env=ansible_env(), timeout=timeout)
    return p, time.monotonic() - t0


def ok(inv: Path, module: str, args: str | None = None) -> str:
    p, _ = ansible(inv, module, args)
    assert p.returncode == 0, f"ansible -m {module} -a {args!r} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    assert "transfer mechanism failed" not in p.stderr, p.stderr
    return p.stdout


def gw(lab, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """In the gateway through nsenter (the lab's own way in, independent of SSH)."""
    p = lab.run("s1", "gw", ["/bin/sh", "-c", cmd], timeout=30)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p


def home_ssh_digest() -> dict[str, str]:
    d = Path.home() / ".ssh"
    if not d.is_dir():
        return {}
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir()) if f.is_file()}


def lab_processes(name: str) -> list[tuple[int, str]]:
    from mwlab.netns import proc_cmdline

    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            cmd = "\0".join(proc_cmdline(int(d)))
            if f"/run/mwlab/{name}/" in cmd or f"--machine={name}-" in cmd or f"/run/netns/{name}-" in cmd:
                out.append((int(d), cmd.replace("\0", " ")))
    return out


@pytest.fixture(scope="module")
def sshlab():
    from mwlab import Lab, Topology

    home_before = home_ssh_digest()
    lab = Lab(LAB)
    t0 = time.monotonic()
    lab.up(Topology.from_dict(TOPOLOGY, lab=LAB))
    TIMINGS["up_total_s"] = round(time.monotonic() - t0, 2)
    TIMINGS["rootfs_build_s"] = (lab.load_state() or {}).get("rootfs", {}).get("build_seconds")
    tmp = Path(tempfile.mkdtemp(prefix=f"{LAB}-ssh-"))
    inv = tmp / "inventory.yml"
    inv.write_text(lab.inventory_yaml(connection="ssh"))
    try:
        yield lab, inv, tmp, home_before
    finally:
        lab.down()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
        print("\nssh-management timings:", TIMINGS)


def test_ssh_files_sshd_and_inventory(sshlab):
    lab, inv, _, _ = sshlab
    d = Path(f"/run/mwlab/{LAB}/ssh")
    key = d / "id_ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(d.stat().st_mode) == 0o700
    pub = (d / "id_ed25519.pub").read_text().split()
    # the public key is in the gateway's own /root (its overlay), never in the host's
    upper = Path(f"/var/lib/mwlab/{LAB}/s1/rootfs/upper")
    assert (upper / "root/.ssh/authorized_keys").read_text().split()[:2] == pub[:2]
    assert gw(lab, "cat /root/.ssh/authorized_keys").stdout.split()[:2] == pub[:2]
    assert gw(lab, "stat -c %a /root /root/.ssh /root/.ssh/authorized_keys").stdout.split() == ["700", "700", "600"]
    host_auth = Path.home() / ".ssh" / "authorized_keys"
    assert not (host_auth.exists() and pub[1] in host_auth.read_text())
    # the gateway's own host key, pinned in the lab's known_hosts under its machine name
    host_pub = (upper / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    assert (d / "known_hosts").read_text().split() == [f"{LAB}-s1", *host_pub[:2]]
    wrapper = (d / f"{LAB}-s1-c1" / "ssh").read_text()
    assert f"nsenter --net=/run/netns/{LAB}-s1-c1 -- " in wrapper and wrapper.rstrip().endswith('"$@"')
    # sshd: enabled at boot, active, all addresses on port 22, root by key only
    assert gw(lab, "systemctl is-enabled ssh.service").stdout.strip() == "enabled"
    assert gw(lab, "systemctl is-active ssh.service").stdout.strip() == "active"
    listen = {line.split()[3] for line in gw(lab, "ss -Hltn 'sport = :22'").stdout.splitlines()}
    assert listen == {"0.0.0.0:22", "[::]:22"}, listen
    conf = gw(lab, "sshd -T").stdout
    assert "permitrootlogin without-password" in conf and "passwordauthentication no" in conf
    assert "kbdinteractiveauthentication no" in conf
    # the inventory
    hv = lab.inventory(connection="ssh")["all"]["children"]["gateways"]["hosts"]["s1"]
    assert hv["ansible_connection"] == "ssh" and hv["ansible_host"] == "10.1.0.1" and hv["ansible_user"] == "root"
    assert hv["ansible_ssh_private_key_file"] == str(key)
    assert hv["ansible_ssh_executable"] == str(d / f"{LAB}-s1-c1" / "ssh")
    assert hv["ansible_sftp_executable"] == str(d / f"{LAB}-s1-c1" / "sftp")
    assert hv["ansible_python_interpreter"] == "/usr/bin/python3"
    assert hv["mwlab_mgmt_namespace"] == f"{LAB}-s1-c1" and hv["mwlab_mgmt_address"] == "10.1.0.10"
    for opt in ("StrictHostKeyChecking=yes", f"UserKnownHostsFile={d}/known_hosts", f"HostKeyAlias={LAB}-s1",
                "BindAddress=10.1.0.10", "ServerAliveInterval="):
        assert opt in hv["ansible_ssh_common_args"], opt
    nsenter = lab.inventory()["all"]["children"]["gateways"]["hosts"]["s1"]
    for k, v in nsenter.items():
        if k.startswith("multiwan_"):
            assert hv[k] == v, k


def test_ansible_over_ssh_from_the_lan(sshlab):
    lab, inv, tmp, _ = sshlab
    t0 = time.monotonic()
    assert '"ping": "pong"' in ok(inv, "ansible.builtin.ping")
    TIMINGS["first_ping_s"] = round(time.monotonic() - t0, 2)
    # the session came from the management station c1, through the LAN
    out = ok(inv, "ansible.builtin.command", "printenv SSH_CONNECTION")
    assert "10.1.0.10 " in out and " 10.1.0.1 22" in out, out
    # a file transfer (sftp through the wrapper) and a command that reads it back
    src = tmp / "payload.bin"
    data = os.urandom(65536)
    src.write_bytes(data)
    out = ok(inv, "ansible.builtin.copy", f"src={src} dest=/root/mwtest.bin mode=0600")
    assert "CHANGED" in out, out
    out = ok(inv, "ansible.builtin.command", "sha256sum /root/mwtest.bin")
    assert hashlib.sha256(data).hexdigest() in out, out
    assert gw(lab, "stat -c %a /root/mwtest.bin").stdout.strip() == "600"
    assert not Path("/root/mwtest.bin").exists(), "the copy landed on the host"
    out = ok(inv, "ansible.builtin.copy", f"src={src} dest=/root/mwtest.bin mode=0600")
    assert "SUCCESS" in out and '"changed": false' in out, out
    t0 = time.monotonic()
    ok(inv, "ansible.builtin.ping")
    TIMINGS["warm_ping_s"] = round(time.monotonic() - t0, 2)


def test_cut_management_path_is_unreachable(sshlab):
    lab, inv, _, _ = sshlab
    ok(inv, "ansible.builtin.ping")  # a ControlPersist master is up now
    station = lab.ssh_target("s1")["address"]
    gw(lab, f"ip rule add priority 5 to {station} blackhole")
    try:
        # 1. over the existing (now dead) master connection: ServerAlive ends it
        p, took = ansible(inv, "ansible.builtin.ping")
        TIMINGS["cut_unreachable_master_s"] = round(took, 2)
        assert p.returncode != 0 and "UNREACHABLE" in p.stdout, f"{p.stdout}\n{p.stderr}"
        assert took < CUT_LIMIT, took
        # 2. a fresh connection: ConnectTimeout
        p, took = ansible(inv, "ansible.builtin.ping")
        TIMINGS["cut_unreachable_fresh_s"] = round(took, 2)
        assert p.returncode != 0 and "UNREACHABLE" in p.stdout, f"{p.stdout}\n{p.stderr}"
        assert took < CUT_LIMIT, took
        # the gateway itself is fine (the lab's nsenter path does not use the network)
        assert gw(lab, "systemctl is-active ssh.service").stdout.strip() == "active"
    finally:
        gw(lab, "ip rule del priority 5")
    t0 = time.monotonic()
    assert '"ping": "pong"' in ok(inv, "ansible.builtin.ping")
    TIMINGS["ping_after_repair_s"] = round(time.monotonic() - t0, 2)


def test_manage_through_an_isp_from_the_internet(sshlab):
    lab, _, tmp, _ = sshlab
    inv = tmp / "inet.yml"
    env = dict(os.environ, PYTHONPATH=str(REPO / "lab"))
    p = subprocess.run([sys.executable, "-m", "mwlab", "--lab", LAB, "inventory", "--connection", "ssh", "--via", "inet",
                        "--uplink", "isp1", "-o", str(inv)], capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 0, p.stderr
    hv = lab.inventory(connection="ssh", via="inet")["all"]["children"]["gateways"]["hosts"]["s1"]
    assert hv["ansible_host"] == "100.64.1.2" and hv["mwlab_mgmt_namespace"] == f"{LAB}-inet"
    assert hv["ansible_ssh_executable"].endswith(f"/{LAB}-inet/ssh")
    # the bare gateway has no route back to the internet: like a real one, unreachable
    p, took = ansible(inv, "ansible.builtin.ping")
    assert p.returncode != 0 and "UNREACHABLE" in p.stdout, p.stdout
    assert took < CUT_LIMIT, took
    gw(lab, "ip route add default via 100.64.1.1 dev wan1")
    try:
        out = ok(inv, "ansible.builtin.command", "printenv SSH_CONNECTION")
        assert out.split("\n", 1)[1].split()[:1] == [hv["mwlab_mgmt_address"]] and " 100.64.1.2 22" in out, out
        assert lab.counters("s1", "isp1")["to_cust"] > 0  # really through the ISP router
    finally:
        gw(lab, "ip route del default via 100.64.1.1 dev wan1")


def ssh_masters(name: str) -> dict[int, str]:
    """pid -> network namespace (lab namespace name or "OTHER") of the lab's ControlPersist masters."""
    inodes = {}
    for n in os.listdir("/run/netns"):
        if n.startswith(f"{name}-"):
            st = os.stat(f"/run/netns/{n}")
            inodes[(st.st_dev, st.st_ino)] = n
    out = {}
    for pid, cmd in lab_processes(name):
        if f"/run/mwlab/{name}/ssh/cp/" in cmd and "[mux]" in cmd:
            try:
                st = os.stat(f"/proc/{pid}/ns/net")
            except OSError:
                continue
            out[pid] = inodes.get((st.st_dev, st.st_ino), "OTHER")
    return out


def test_down_leaves_nothing(sshlab):
    lab, _, _, home_before = sshlab
    masters = ssh_masters(LAB)
    # SSH ran inside the lab: its ControlPersist masters live in the station namespaces
    assert f"{LAB}-s1-c1" in masters.values(), masters
    assert set(masters.values()) <= {f"{LAB}-s1-c1", f"{LAB}-inet"}, masters
    lab.down()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{LAB}-")]
    assert not Path(f"/run/mwlab/{LAB}").exists() and not Path(f"/var/lib/mwlab/{LAB}").exists()
    assert not Path(f"/run/mwlab/{LAB}/ssh").exists()
    deadline = time.monotonic() + 5
    while lab_processes(LAB) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not lab_processes(LAB), lab_processes(LAB)
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if f"/mwlab/{LAB}/" in line]
    assert home_ssh_digest() == home_before, "the host's ~/.ssh changed"
