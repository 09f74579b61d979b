"""Fixtures that run collection content through Ansible on a lab gateway.

The ``gateway`` fixture gives a gateway namespace (network + mount namespace with its own /etc)
and helpers: ``sh`` runs a command in the gateway's view, ``module`` runs one of our modules
through ``ansible`` with the nsenter connection plugin and returns Ansible's result.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".build"
COLLECTIONS = BUILD / "collections"

sys.path.insert(0, str(REPO / "lab"))

from mwlab import Lab, Topology  # noqa: E402  pylint: disable=wrong-import-position

# A small topology for module tests: one site, a static uplink, a device-only uplink, a LAN.
MODULE_TOPOLOGY = {
    "internet": {"hosts": ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.7.1"]},
    "sites": [
        {
            "name": "m1",
            "lan": {"interface": "lan0", "network": "10.1.0.0/24", "clients": 1},
            "uplinks": [
                {"name": "isp1", "interface": "wan1", "address": "100.64.1.2/24", "gateway": "100.64.1.1"},
                {"name": "isp2", "interface": "ppp0", "address": "100.64.2.2/32", "peer": "100.64.2.1"},
            ],
        }
    ],
}

def ensure_collection_link():
    """Make ``multiwan.linux`` importable by Ansible from the work tree."""
    target = COLLECTIONS / "ansible_collections" / "multiwan"
    target.mkdir(parents=True, exist_ok=True)
    link = target / "linux"
    if not link.is_symlink():
        if link.exists():
            shutil.rmtree(link)
        try:
            link.symlink_to(REPO)
        except FileExistsError:  # another xdist worker made it at the same moment
            pass
    return COLLECTIONS


def ansible_env(extra=None):
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_COLLECTIONS_PATH": str(ensure_collection_link()),
            "ANSIBLE_CALLBACKS_ENABLED": "result_file",
            "ANSIBLE_CALLBACK_PLUGINS": str(Path(__file__).resolve().parent / "callback_plugins"),
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_DEPRECATION_WARNINGS": "0",
        }
    )
    env.update(extra or {})
    return env


def ansible_bin(name):
    """The ansible executables of the venv that runs these tests."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


class Gateway:
    """One lab gateway as seen by a test."""

    def __init__(self, lab, site, inventory):
        self.lab = lab
        self.site = site
        self.inventory = inventory
        self.netns = lab.namespace(site, "gw")
        self.pid = lab.gateway_pid(site)
        self.hostvars = lab.inventory()["all"]["children"]["gateways"]["hosts"][site]

    # -- inside the gateway -------------------------------------------------------------------
    def sh(self, cmd, check=True, input=None):  # pylint: disable=redefined-builtin
        argv = ["nsenter", "--target", str(self.pid), "--net", "--mount", "--", "/bin/sh", "-c", cmd]
        proc = subprocess.run(argv, capture_output=True, text=True, input=input, check=False)
        if check and proc.returncode != 0:
            raise AssertionError("%s failed (%d): %s%s" % (cmd, proc.returncode, proc.stdout, proc.stderr))
        return proc

    def json(self, cmd):
        out = self.sh(cmd).stdout.strip()
        return json.loads(out) if out else []

    def read(self, path):
        return self.sh("cat %s" % path).stdout

    # -- Ansible ------------------------------------------------------------------------------
    def module(self, name, args, check=False, diff=False, expect_failure=False):
        """Run ``multiwan.linux.<name>`` with ``args`` (a dict) and return the host's result."""
        return self.run("multiwan.linux." + name, args, check=check, diff=diff, expect_failure=expect_failure)

    def run(self, fqcn, args, check=False, diff=False, expect_failure=False):
        """Run any module by its full name through ``ansible`` and return the host's result."""
        argv = [ansible_bin("ansible"), "-i", str(self.inventory), self.site, "-m", fqcn]
        if args:  # "-a {}" would be taken as free-form arguments; no -a means no arguments
            argv += ["-a", json.dumps(args)]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        with tempfile.TemporaryDirectory(prefix="mw-result-") as tree:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  env=ansible_env({"MULTIWAN_RESULT_DIR": tree}))
            try:
                result = json.loads((Path(tree) / self.site).read_text())
            except (OSError, ValueError):
                result = None
        if result is None:
            raise AssertionError("no result from ansible:\n%s\n%s" % (proc.stdout, proc.stderr))
        failed = bool(result.get("failed"))
        if failed != expect_failure:
            raise AssertionError("module %s %s unexpectedly: %s" % (fqcn, "failed" if failed else "succeeded",
                                                                   json.dumps(result, indent=1)))
        return result


def worker_suffix():
    """``""`` without pytest-xdist, else the worker's index (``gw3`` -> ``"3"``)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return worker[2:] if worker.startswith("gw") else worker


@pytest.fixture(scope="session")
def module_lab():
    """A one-site lab shared by the module tests of a session (lab name from MWTEST_LAB).

    Under pytest-xdist every worker builds its own lab, named MWTEST_LAB + worker index
    (``mwt0``, ``mwt1``, ...), so workers never share a namespace.
    """
    name = os.environ.get("MWTEST_LAB", "mwt") + worker_suffix()
    lab = Lab(name)
    lab.up(Topology.from_dict(MODULE_TOPOLOGY, lab=name))
    workdir = Path(tempfile.mkdtemp(prefix="%s-inv-" % name))
    inventory = workdir / "inventory.yml"
    inventory.write_text(lab.inventory_yaml())
    try:
        yield lab, inventory
    finally:
        lab.down()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def gateway(module_lab):
    lab, inventory = module_lab
    return Gateway(lab, "m1", inventory)
