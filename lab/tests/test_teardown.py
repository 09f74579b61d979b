"""Teardown: nothing left behind, idempotent, works after a crash, never touches other labs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import LAB, LAB2, TOPOLOGIES, needs_root

pytestmark = needs_root


def _proc_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _mounts_mentioning(path: str) -> list[str]:
    hits = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                text = Path(f"/proc/{d}/mountinfo").read_text()
            except OSError:
                continue
            hits += [f"{d}: {line}" for line in text.splitlines() if path in line]
    return hits


def assert_clean(name: str, pids: list[int]) -> None:
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{name}-")]
    assert not [p for p in pids if _proc_alive(p)], "lab processes survived"
    assert not _mounts_mentioning(f"/var/lib/mwlab/{name}/")
    assert not Path(f"/var/lib/mwlab/{name}").exists() and not Path(f"/run/mwlab/{name}").exists()
    root_links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout)
    assert not [link["ifname"] for link in root_links if link["ifname"].startswith(name)]


def _pids(lab) -> list[int]:
    return [r["pid"] for r in json.loads(lab.state_file.read_text())["pids"].values()]


@pytest.fixture
def fresh():
    from mwlab import Lab

    labs = []

    def make(name=LAB):
        lab = Lab(name)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.down()


def test_down_leaves_nothing_and_is_idempotent(fresh):
    lab = fresh()
    lab.up(TOPOLOGIES / "two-sites.yml")
    pids = _pids(lab)
    # something the role would start inside the gateway (a watchdog) keeps overlays alive: it must go too
    stray = subprocess.Popen(["nsenter", "--target", str(lab.gateway_pid("s1")), "--net", "--mount", "sleep", "600"],
                             start_new_session=True)
    # and one that entered only the gateway's mount namespace (not its netns)
    stray2 = subprocess.Popen(["nsenter", "--target", str(lab.gateway_pid("s2")), "--mount", "sleep", "600"],
                              start_new_session=True)
    assert _mounts_mentioning(f"/var/lib/mwlab/{LAB}/")
    lab.down()
    stray.wait(timeout=5)
    stray2.wait(timeout=5)
    assert_clean(LAB, pids + [stray.pid, stray2.pid])
    lab.down()
    assert_clean(LAB, pids)


def test_down_after_crash(fresh):
    lab = fresh()
    lab.up(TOPOLOGIES / "two-sites.yml")
    pids = _pids(lab)
    for p in pids:
        os.kill(p, signal.SIGKILL)
    lab.state_file.unlink()
    assert lab.status()["status"] == "stale"
    lab.down()
    assert_clean(LAB, pids)
    assert lab.status()["status"] == "down"


def test_down_half_built_lab(fresh):
    lab = fresh()
    subprocess.run(["ip", "netns", "add", f"{LAB}-s9-gw"], check=True)
    Path(f"/var/lib/mwlab/{LAB}/s9/etc/upper").mkdir(parents=True)
    Path(f"/run/mwlab/{LAB}").mkdir(parents=True, exist_ok=True)
    Path(f"/run/mwlab/{LAB}/state.json").write_text("{not json")
    lab.down()
    assert_clean(LAB, [])


def test_failed_build_rolls_back(fresh, monkeypatch):
    lab = fresh()

    real = lab._start_anchor
    started = []

    def second_fails(site):
        if started:
            raise RuntimeError("injected failure")
        rec = real(site)
        started.append(rec["pid"])
        return rec

    monkeypatch.setattr(lab, "_start_anchor", second_fails)
    with pytest.raises(RuntimeError, match="injected"):
        lab.up(TOPOLOGIES / "two-sites.yml")
    assert started
    assert_clean(LAB, started)


def test_up_replaces_and_labs_are_isolated(fresh):
    a, b = fresh(LAB), fresh(LAB2)
    b.up(TOPOLOGIES / "schools.yml")
    a.up(TOPOLOGIES / "two-sites.yml")
    old = _pids(a)
    a.up(TOPOLOGIES / "two-sites.yml")  # same name again: old lab torn down first
    assert not [p for p in old if _proc_alive(p)]
    b_pids = _pids(b)
    a_pids = _pids(a)
    a.down()
    assert_clean(LAB, a_pids)
    # the other lab is untouched and still works
    assert all(_proc_alive(p) for p in b_pids)
    assert len(b.ns.list()) == len(b.topology.namespaces) == 18
    assert b.run("south", "c2", ["ping", "-n", "-c1", "-W2", "10.20.0.1"]).returncode == 0
    assert b.run("east", "gw", ["ping", "-n", "-c1", "-W2", "100.64.70.1"]).returncode == 0
    b.down()
    assert_clean(LAB2, b_pids)
