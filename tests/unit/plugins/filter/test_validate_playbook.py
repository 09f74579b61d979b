# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""End to end: the gateway role validates on the controller, before any connection is used.

Every host gets the collection's nsenter connection with an anchor pid that cannot exist, so any
use of the connection fails the host as UNREACHABLE ("anchor process ... is not running"). The
play runs the role and then pings:
- the three example schools pass the validation and only then reach the connection, at the ping
  (the positive control: the fake connection does fail when it is used);
- a host with cross-field problems fails in the role's validation with all its problems in one
  message, and is never unreachable;
- hosts violating the role's argument specs fail in the spec validation Ansible inserts at the
  start of the role (an action plugin, on the controller), and are never unreachable either;
- a host with warnings only is shown them and goes on.
The play runs as is, in check mode, and with --tags naming no task (validation is tagged always).
No network is used; nothing outside the test's temporary directory is written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[4]
COLLECTIONS = REPO / ".build" / "collections"
EXAMPLE = REPO / "inventories" / "example" / "hosts.yml"
PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"
EXAMPLE_HOSTS = ("gw-east", "gw-north", "gw-south")
FAKE_PID = 999999999
NOT_RUNNING = "anchor process %d is not running" % FAKE_PID
FIRST_ROLE_TASK = "multiwan.linux.gateway : Init | look for /run/systemd/system"


def _uplink(name, interface, third, **extra):
    uplink = {"name": name, "interface": interface, "address": "100.64.%d.2/24" % third,
              "gateway": "100.64.%d.1" % third, "table": 100 + third, "probe_targets": ["198.18.0.1"]}
    uplink.update(extra)
    return uplink


BAD_HOSTS = {
    # cross-field problems: the filter's message, all problems at once
    "bad-cross": {
        "multiwan_lan_networks": ["10.1.0.0/16"],
        "multiwan_uplinks": [_uplink("isp1", "eth1", 1),
                             _uplink("isp2", "eth2", 2, gateway="100.64.9.1", probe_targets=["10.1.0.53"])],
    },
    # argument spec: a weight that is not an integer
    "bad-spec": {
        "multiwan_lan_networks": ["10.1.0.0/16"],
        "multiwan_uplinks": [_uplink("isp1", "eth1", 1), _uplink("isp2", "eth2", 2, weight="two")],
    },
    # argument spec: a required variable missing
    "bad-missing": {"multiwan_lan_networks": ["10.1.0.0/16"]},
    # warnings only: goes on
    "warn-single": {"multiwan_lan_networks": ["10.1.0.0/16"], "multiwan_uplinks": [_uplink("isp1", "eth1", 1)]},
}

PLAY = [{
    "name": "Validate and then touch the gateways",
    "hosts": "all",
    "gather_facts": False,
    "roles": ["multiwan.linux.gateway"],
    "tasks": [{"name": "Use the connection", "ansible.builtin.ping": None, "tags": ["always"]}],
}]


def _fatal_tasks(output):
    """{host: (task name, 'FAILED' or 'UNREACHABLE')} from the default callback's output."""
    fatal, task = {}, None
    for line in output.splitlines():
        match = re.match(r"^TASK \[(.*)\] \**$", line)
        if match:
            task = match.group(1)
            continue
        match = re.match(r"^fatal: \[([^\]]+)\]: (FAILED|UNREACHABLE)!", line)
        if match:
            fatal[match.group(1)] = (task, match.group(2))
    return fatal


def _recap(output):
    recap = {}
    for host, fields in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        recap[host] = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", fields))
    return recap


@pytest.fixture(scope="module", params=[[], ["--check"], ["--tags", "no-such-tag"]], ids=["run", "check", "tags"])
def playbook_run(request, tmp_path_factory):
    if not PLAYBOOK_BIN.exists():
        pytest.skip("no ansible-playbook beside %s" % sys.executable)
    if not (COLLECTIONS / "ansible_collections" / "multiwan" / "linux").exists():
        pytest.skip("%s does not hold multiwan.linux (run make bootstrap)" % COLLECTIONS)
    tmp = tmp_path_factory.mktemp("validate-playbook")
    inventory = tmp / "bad.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"broken": {"hosts": BAD_HOSTS}}}}))
    playbook = tmp / "play.yml"
    playbook.write_text(yaml.safe_dump(PLAY, sort_keys=False))
    tree = tmp / "tree"
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("ANSIBLE_"):
            del env[key]
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "local-tmp"),
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.tree",
        "ANSIBLE_CALLBACK_TREE_DIR": str(tree),
        "ANSIBLE_CONFIG": str(tmp / "none.cfg"),
    })
    argv = [str(PLAYBOOK_BIN), "-i", str(EXAMPLE), "-i", str(inventory),
            "-e", "ansible_connection=multiwan.linux.nsenter", "-e", "multiwan_nsenter_pid=%d" % FAKE_PID,
            str(playbook)]
    argv.extend(request.param)
    proc = subprocess.run(argv, cwd=str(tmp), env=env, capture_output=True, text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    results = {}
    for path in tree.glob("*"):
        results[path.name] = json.loads(path.read_text())
    return proc.returncode, output, _recap(proc.stdout), results, _fatal_tasks(proc.stdout)


def test_all_hosts_ran(playbook_run):
    returncode, output, recap, dummy, dummy = playbook_run
    assert returncode != 0, output
    assert sorted(recap) == sorted(EXAMPLE_HOSTS + tuple(BAD_HOSTS)), output


@pytest.mark.parametrize("host", EXAMPLE_HOSTS + ("warn-single",))
def test_good_hosts_pass_validation_and_only_then_connect(playbook_run, host):
    dummy, output, recap, results, fatal = playbook_run
    assert recap[host]["failed"] == 0, output
    assert recap[host]["unreachable"] == 1, output
    assert NOT_RUNNING in results[host]["msg"], results[host]
    # the first task that uses the connection: the role's kernel check (after validation and the
    # plan, both on the controller), or the play's ping when --tags skips the role's stages
    assert fatal[host] in (("Use the connection", "UNREACHABLE"), (FIRST_ROLE_TASK, "UNREACHABLE")), output


@pytest.mark.parametrize("host", sorted(BAD_HOSTS.keys() - {"warn-single"}))
def test_bad_hosts_fail_before_any_connection(playbook_run, host):
    dummy, output, recap, results, fatal = playbook_run
    assert recap[host]["failed"] == 1, output
    assert recap[host]["unreachable"] == 0, output
    assert NOT_RUNNING not in json.dumps(results[host])
    assert fatal[host][1] == "FAILED", output
    assert fatal[host][0].startswith("multiwan.linux.gateway : Validat"), output


def test_cross_field_problems_in_one_message(playbook_run):
    dummy, output, dummy, results, fatal = playbook_run
    msg = results["bad-cross"]["msg"]
    assert fatal["bad-cross"][0].startswith("multiwan.linux.gateway : Validate | stop this gateway"), output
    assert msg.startswith("2 problem(s) in the multiwan inventory, nothing was changed on the gateway:"), msg
    assert "bad-cross: multiwan_uplinks[1] (isp2).gateway: 100.64.9.1 is not inside 100.64.2.0/24" in msg
    assert ("bad-cross: multiwan_uplinks[1] (isp2).probe_targets[0]: 10.1.0.53 is inside the LAN "
            "multiwan_lan_networks[0] 10.1.0.0/16") in msg


def test_argument_spec_violations(playbook_run):
    dummy, output, dummy, results, fatal = playbook_run
    assert "argument 'weight' is of type str found in 'multiwan_uplinks'" in results["bad-spec"]["msg"]
    assert "multiwan_uplinks" in results["bad-missing"]["msg"]
    assert "missing required arguments" in results["bad-missing"]["msg"]
    for host in ("bad-spec", "bad-missing"):
        assert results[host]["validate_args_context"]["name"] == "gateway"
        assert fatal[host][0].startswith("multiwan.linux.gateway : Validating arguments against arg spec 'main'"), output


def test_warnings_are_shown(playbook_run):
    dummy, output, dummy, dummy, dummy = playbook_run
    assert "warn-single: multiwan_uplinks: only one uplink: there is nothing to fail over to" in output
