"""Fixtures for the lab's own tests. Lab names used here: ``mwa`` and ``mwa2`` only."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

LAB_ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = LAB_ROOT / "topologies"
LAB = "mwa"
LAB2 = "mwa2"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)")


@pytest.fixture(scope="module")
def lab():
    """Two sites x two uplinks (s2/isp2 device-only), built once per test module."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    from mwlab import Lab

    lab = Lab(LAB)
    lab.up(TOPOLOGIES / "two-sites.yml")
    try:
        yield lab
    finally:
        lab.down()


def sh(lab, site: str, role: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return lab.run(site, role, list(cmd), timeout=timeout)


def ping(lab, site: str, role: str, dst: str, src: str | None = None, wait: float = 1, tries: int = 2) -> bool:
    """One echo request per try; True on the first answer. Negative checks pass tries=1 so
    that exactly one packet is sent (the counter assertions rely on it)."""
    cmd = ["ping", "-n", "-c1", f"-W{wait}"] + (["-I", src] if src else []) + [dst]
    return any(sh(lab, site, role, *cmd).returncode == 0 for _ in range(tries))


def ip_json(lab, site: str, role: str, *args: str):
    p = sh(lab, site, role, "ip", "-j", *args)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout or "[]")
