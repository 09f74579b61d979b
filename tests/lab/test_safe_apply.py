"""Safe apply (issue 7) end to end: site.yml over SSH through the lab's network, a push that cuts
the management path, the gateway's own rollback, a good push, a controller killed mid-run.

One systemd-mode site (lab name from MWTEST_SAFE_LAB, default ``mwsa``), uplinks isp1 and isp2.
It is converged once through the nsenter connection; after that Ansible reaches the gateway with
plain OpenSSH from the lab's internet namespace to isp1's address (remote management through an
ISP, as for a school far away). The "bad push" is an inventory mistake validation cannot catch:
isp1's gateway mistyped inside its subnet (``.9`` instead of ``.1``). The gateway's replies from
isp1's address follow isp1's table, whose default route now points at nobody: the management path
is cut, the confirmation cannot come, and the gateway restores itself.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "lab"))
sys.path.insert(0, str(REPO / ".build" / "collections"))
from ansible_collections.multiwan.linux.plugins.module_utils import _nft  # noqa: E402

LAB = os.environ.get("MWTEST_SAFE_LAB", "mwsa")
SITE = "s1"
TIMEOUT = 15  # multiwan_confirm_timeout for the tests
TOPOLOGY = {
    "systemd": True,
    "sites": [{
        "name": SITE,
        "lan": {"network": "10.41.0.0/24", "clients": 1},
        "uplinks": [
            {"name": "isp1", "interface": "wan1", "address": "100.64.41.2/24", "gateway": "100.64.41.1"},
            {"name": "isp2", "interface": "wan2", "address": "100.64.42.2/24", "gateway": "100.64.42.1"},
        ],
    }],
}
ROLLBACK_DIR = "/var/lib/multiwan/rollback"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def env():
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".build" / "collections"), ANSIBLE_NOCOLOR="1",
                ANSIBLE_FORCE_COLOR="0", PYTHONPATH=str(REPO / "lab"))


def playbook(inventory, *extra, timeout=600):
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
            "-e", "multiwan_confirm_timeout=%d" % TIMEOUT] + list(extra) + [str(REPO / "playbooks" / "site.yml")]
    return subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=timeout, check=False)


def recap(proc):
    for line in proc.stdout.splitlines():
        if line.startswith(SITE) and " : ok=" in line:
            return dict((k, int(v)) for k, v in (item.split("=") for item in line.split(":", 1)[1].split()))
    raise AssertionError("no recap for %s:\n%s\n%s" % (SITE, proc.stdout[-3000:], proc.stderr[-2000:]))


class Site:
    def __init__(self, lab, tmp):
        self.lab = lab
        self.tmp = tmp
        nsenter = lab.inventory()
        (tmp / "nsenter.yml").write_text(yaml.safe_dump(nsenter))
        self.ssh_inventory = lab.inventory(connection="ssh", via="inet", uplink="isp1")
        (tmp / "ssh.yml").write_text(yaml.safe_dump(self.ssh_inventory))
        host = self.ssh_inventory["all"]["children"]["gateways"]["hosts"][SITE]
        bad = copy.deepcopy(host["multiwan_uplinks"])
        bad[0]["gateway"] = "100.64.41.9"  # a typo inside the subnet: valid, and it cuts the path
        (tmp / "bad.json").write_text(json.dumps({"multiwan_uplinks": bad}))

    def sh(self, command):
        return self.lab.run(SITE, "gw", ["/bin/sh", "-c", command], timeout=30)

    def state(self):
        """What a rollback must restore, from the kernel (nft tables compared as parsed JSON)."""
        view = {}
        for key, command in (("rules", "ip -j rule show"), ("rules6", "ip -j -6 rule show"),
                             ("routes", "ip -j route show table all"), ("nexthops", "ip -j nexthop show")):
            view[key] = json.loads(self.sh(command).stdout or "[]")
        doc = json.loads(self.sh("nft -j list table ip multiwan").stdout)
        view["nft"] = _nft.parse_table(doc, "ip", "multiwan").states()
        view["files"] = self.sh("cat /etc/multiwan/watchdog.json /etc/iproute2/rt_tables.d/multiwan-*.conf").stdout
        return view

    def settled(self, timeout=40):
        """Both uplinks up in the watchdog's state and in the group (after a rollback or a push)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = json.loads(self.sh("cat /run/multiwan/state.json 2>/dev/null || echo {}").stdout or "{}")
            uplinks = doc.get("uplinks") or {}
            members = [m["uplink"] for m in (doc.get("group") or {}).get("members") or []]
            if uplinks and all(u.get("state") == "up" for u in uplinks.values()) and sorted(members) == ["isp1", "isp2"]:
                return True
            time.sleep(0.5)
        raise AssertionError("the gateway did not settle: %s" % self.sh("multiwan status").stdout)


@pytest.fixture(scope="module")
def site():
    from mwlab import Lab, Topology
    lab = Lab(LAB)
    tmp = Path(tempfile.mkdtemp(prefix=LAB + "-"))
    try:
        lab.up(Topology.from_dict(TOPOLOGY, lab=LAB))
        s = Site(lab, tmp)
        first = playbook(tmp / "nsenter.yml")
        assert first.returncode == 0, first.stdout[-3000:]
        s.settled()
        yield s
    finally:
        lab.down()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def test_good_push_is_confirmed_and_a_rerun_changes_nothing(site):
    proc = playbook(site.tmp / "ssh.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Confirm | disarm the rollback" in proc.stdout
    assert site.sh("ls %s" % ROLLBACK_DIR).stdout.split() == []  # nothing armed, nothing rolled back
    assert site.sh("systemctl is-active multiwan-rollback.timer").stdout.strip() != "active"
    again = playbook(site.tmp / "ssh.yml")
    assert again.returncode == 0 and recap(again)["changed"] == 0, again.stdout[-3000:]


def test_push_that_cuts_the_management_path_rolls_back(site):
    site.settled()
    before = site.state()
    started = time.time()
    proc = playbook(site.tmp / "ssh.yml", "-e", "@%s" % (site.tmp / "bad.json"))
    if os.environ.get("MWTEST_SAFE_LOG"):
        Path(os.environ["MWTEST_SAFE_LOG"]).write_text(proc.stdout + proc.stderr)
    assert proc.returncode != 0
    assert "%s: the change cut the management path" % SITE in proc.stdout, proc.stdout[-4000:]
    assert "so the gateway rolled back by itself: no confirmation within %d s" % TIMEOUT in proc.stdout
    record = json.loads(site.sh("cat %s/rolled-back.json" % ROLLBACK_DIR).stdout)
    # restored within the timeout + 5 s of the last (re-)arming, every object restored, none failed
    assert record["time"] - record["last_armed"] <= TIMEOUT + 5, record
    assert record["restored"] and record["failed"] == [], record
    assert record["time"] > started
    print("\nsafe-apply lockout: %s" % json.dumps({
        "play_seconds": round(time.time() - started, 1), "rolled_back_after_last_arm_s": round(record["time"] - record["last_armed"], 2),
        "restored": len(record["restored"]), "failed": len(record["failed"])}))
    journal = site.sh("journalctl -u multiwan-rollback.service -o cat --no-pager").stdout
    assert "rollback: no confirmation within" in journal and "restored route" in journal
    site.settled()
    assert site.state() == before
    good = playbook(site.tmp / "ssh.yml")
    assert good.returncode == 0, good.stdout[-3000:]


def test_rollback_survives_the_controller_dying(site):
    site.settled()
    before = site.state()
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(site.tmp / "ssh.yml"),
            "-e", "multiwan_confirm_timeout=%d" % TIMEOUT, "-e", "@%s" % (site.tmp / "bad.json"),
            str(REPO / "playbooks" / "site.yml")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the bad route is in: the push has done its damage
            if "100.64.41.9" in site.sh("ip route show table 101").stdout:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the bad push never changed table 101")
        os.killpg(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    deadline = killed + TIMEOUT + 20
    while time.monotonic() < deadline and not site.sh("test -f %s/rolled-back.json && echo yes" % ROLLBACK_DIR).stdout:
        time.sleep(0.5)
    record = json.loads(site.sh("cat %s/rolled-back.json" % ROLLBACK_DIR).stdout)
    assert record["failed"] == [] and record["time"] - record["last_armed"] <= TIMEOUT + 5, record
    print("\nsafe-apply controller killed: %s" % json.dumps({
        "rolled_back_after_kill_s": round(record["time"] - (time.time() - (time.monotonic() - killed)), 2),
        "rolled_back_after_last_arm_s": round(record["time"] - record["last_armed"], 2), "restored": len(record["restored"])}))
    site.settled()
    assert site.state() == before
    good = playbook(site.tmp / "ssh.yml")
    assert good.returncode == 0, good.stdout[-3000:]
