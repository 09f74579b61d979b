#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module commit_confirm: a change that is not confirmed in time undoes itself."""

from __future__ import annotations

DOCUMENTATION = r"""
module: commit_confirm
short_description: Roll a gateway's routing, NAT and settings back unless the change is confirmed in time
version_added: 0.1.0
description:
  - Like a router's C(commit confirmed). O(state=armed) saves everything the collection manages on
    the gateway (policy rules, routes and nexthop objects carrying O(protocol), the nftables tables
    in O(nft_tables), the sysctls in O(sysctls) and the files in O(files)) and arms a restore on
    the gateway itself, O(timeout) seconds later, that does not depend on the controller or the
    connection (a transient systemd timer, C(multiwan-rollback.timer); without systemd a detached
    process).
  - O(state=confirmed) disarms it. Run it only after the play's changes, over a B(new) connection
    (run C(meta reset_connection) first), so that a change that cut the management path cannot be
    confirmed, and the gateway restores the saved state by itself.
  - If the restore already ran, O(state=confirmed) fails with what was rolled back and why, and
    O(state=status) reports it without failing.
  - Arming again while armed keeps the older snapshot, the last confirmed state, and only moves
    the deadline. The collection's role re-arms after every changing stage, so the deadline is
    always O(timeout) seconds after the last step that still reached the gateway (a long run over
    a slow link never rolls back by itself), and a run after a controller that died mid-run does
    not replace the good snapshot with a broken state.
  - The restore (C(multiwan rollback), installed by the collection's role beside the watchdog)
    uses the same code as the modules (module_utils C(_rollback), C(_iproute), C(_nft)), writes
    back the files (the watchdog's config among them), reloads the watchdog, and logs one line per
    restored object.
author:
  - multiwan.linux maintainers (@multiwan)
options:
  state:
    description: V(armed) saves and arms, V(confirmed) disarms, V(status) only reports.
    type: str
    choices: [armed, confirmed, status]
    required: true
  timeout:
    description: Seconds from arming to the restore (O(state=armed)).
    type: int
    default: 60
  directory:
    description: Where the snapshot and the state of the guard are kept on the gateway.
    type: path
    default: /var/lib/multiwan/rollback
  protocol:
    description: Protocol tag of the rules, routes and nexthops that are saved (number or name).
    type: str
    default: "109"
  nft_tables:
    description: nftables tables to save, as C(FAMILY NAME).
    type: list
    elements: str
    default: [ip multiwan]
  sysctls:
    description: Sysctl keys to save (dotted names).
    type: list
    elements: str
    default: []
  files:
    description:
      - Files to save; shell patterns are allowed (C(/etc/iproute2/rt_tables.d/multiwan-*.conf)).
        On restore, files that match a pattern but did not exist at arming time are removed.
    type: list
    elements: path
    default: []
  command:
    description: The C(multiwan) command on the gateway that runs the restore.
    type: path
    default: /usr/local/sbin/multiwan
  reason:
    description: What is being applied, for the gateway's log.
    type: str
    default: ansible run
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Check mode arms and confirms nothing (a check run changes nothing that could need a rollback).
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  idempotent:
    description: When run twice in a row with the same arguments, the second run reports no changes.
    support: partial
    details: Arming twice moves the deadline; confirming twice reports no change the second time.
"""

EXAMPLES = r"""
- name: Save the state and arm a rollback in 60 s
  multiwan.linux.commit_confirm:
    state: armed
    timeout: 60
    sysctls: [net.ipv4.ip_forward]
    files: [/etc/multiwan/watchdog.json, /etc/iproute2/rt_tables.d/multiwan-*.conf]

- name: A new connection, so that a cut management path is noticed
  ansible.builtin.meta: reset_connection

- name: Confirm (disarm the rollback)
  multiwan.linux.commit_confirm:
    state: confirmed
"""

RETURN = r"""
armed:
  description: Whether a rollback is armed after the call.
  returned: always
  type: bool
deadline:
  description: Unix time at which the armed rollback runs.
  returned: when armed
  type: float
rolled_back:
  description: The record of a rollback that ran (time, reason, restored and failed objects), if one ran since the last arming.
  returned: when one ran
  type: dict
"""

import glob
import os
import shutil
import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.multiwan.linux.plugins.module_utils import _iproute, _nft, _rollback

TIMER_UNIT = "multiwan-rollback"


def _paths(directory):
    return dict((name, os.path.join(directory, name + ".json")) for name in ("snapshot", "armed", "rolled-back"))


def _systemd():
    return os.path.isdir("/run/systemd/system")


def disarm(module, armed):
    """Stop the pending restore, wherever it waits."""
    if armed and armed.get("pid"):
        try:
            os.killpg(int(armed["pid"]), 15)
        except OSError:
            pass
    if _systemd():
        module.run_command(["systemctl", "stop", TIMER_UNIT + ".timer", TIMER_UNIT + ".service"])
        module.run_command(["systemctl", "reset-failed", TIMER_UNIT + ".timer", TIMER_UNIT + ".service"])


def arm_timer(module, params, deadline):
    """A restore at ``deadline`` that lives on the gateway, independent of this connection."""
    argv = [params["command"], "rollback", "--dir", params["directory"]]
    delay = max(1, int(round(deadline - time.time())))
    if _systemd():
        rc, out, err = module.run_command(["systemd-run", "--unit", TIMER_UNIT, "--on-active", "%ds" % delay,
                                           "--timer-property=AccuracySec=100ms", "--property=Type=oneshot",
                                           "--description=multiwan.linux rollback unless confirmed"] + argv)
        if rc != 0:
            module.fail_json(msg="arming the rollback timer failed: %s" % (err or out).strip())
        return None
    # No systemd: a detached session that sleeps, then restores (confirm kills its process group).
    # The outer shell only starts it and prints its pid; the session outlives this module.
    launcher = 'setsid "$@" </dev/null >/dev/null 2>&1 & echo $!'
    rc, out, err = module.run_command(["/bin/sh", "-c", launcher, "sh", "/bin/sh", "-c", 'sleep "$0" && exec "$@"',
                                       str(delay)] + argv)
    if rc != 0 or not out.strip().isdigit():
        module.fail_json(msg="arming the rollback failed: %s" % (err or out).strip())
    return int(out.strip())


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["armed", "confirmed", "status"], required=True),
            timeout=dict(type="int", default=60),
            directory=dict(type="path", default="/var/lib/multiwan/rollback"),
            protocol=dict(type="str", default="109"),
            nft_tables=dict(type="list", elements="str", default=["ip multiwan"]),
            sysctls=dict(type="list", elements="str", default=[]),
            files=dict(type="list", elements="path", default=[]),
            command=dict(type="path", default="/usr/local/sbin/multiwan"),
            reason=dict(type="str", default="ansible run"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    paths = _paths(params["directory"])
    armed = _rollback.read_json(paths["armed"])
    rolled_back = _rollback.read_json(paths["rolled-back"])
    result = dict(changed=False, armed=armed is not None)
    if rolled_back and (armed is None or rolled_back.get("time", 0) >= armed.get("armed_at", 0)):
        result["rolled_back"] = rolled_back

    if params["state"] == "status":
        module.exit_json(**result)

    if params["state"] == "confirmed":
        if "rolled_back" in result:
            module.fail_json(msg="the gateway rolled back at %s (%s): %s; restored %d objects%s" % (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rolled_back["time"])), rolled_back.get("why"),
                rolled_back.get("reason"), len(rolled_back.get("restored", [])),
                "; failed: %s" % "; ".join(rolled_back["failed"]) if rolled_back.get("failed") else ""), **result)
        if armed is None:
            module.exit_json(**result)
        if not module.check_mode:
            disarm(module, armed)
            for name in ("armed", "snapshot"):
                if os.path.exists(paths[name]):
                    os.unlink(paths[name])
        result.update(changed=True, armed=False)
        module.exit_json(**result)

    # armed
    if params["timeout"] < 1:
        module.fail_json(msg="timeout: %r must be at least 1 second" % params["timeout"])
    for spec in params["nft_tables"]:
        if len(spec.split()) != 2 or spec.split()[0] not in _nft.FAMILIES:
            module.fail_json(msg="nft_tables: %r is not 'FAMILY NAME'" % spec)
    if module.check_mode:
        module.exit_json(**result)
    try:
        protocol = _iproute.Names().protocol(params["protocol"])
    except ValueError as exc:
        module.fail_json(msg="protocol: %s" % exc)
    deadline = time.time() + params["timeout"]
    if armed is None or not os.path.exists(paths["snapshot"]):
        files = []
        for pattern in params["files"]:
            files += sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        try:
            document = _rollback.snapshot(_iproute.IpRoute(module.run_command), _nft.Nft(_nft_runner(module)),
                                          protocol, params["nft_tables"], params["sysctls"], files)
        except (_iproute.IpRouteError, _nft.NftError) as exc:
            module.fail_json(msg="saving the state failed, nothing was armed: %s" % exc)
        document["file_patterns"] = [p for p in params["files"] if glob.has_magic(p)]
        if rolled_back and os.path.exists(paths["rolled-back"]):  # keep the record, out of the way
            shutil.move(paths["rolled-back"], paths["rolled-back"][:-5] + "-%d.json" % int(rolled_back.get("time", 0)))
        _rollback.save(document, paths["snapshot"])
        armed = {"armed_at": time.time()}
    else:
        disarm(module, armed)  # re-arm: keep the older snapshot (the last confirmed state)
    armed.update(deadline=deadline, timeout=params["timeout"], reason=params["reason"], last_armed=time.time())
    armed["pid"] = arm_timer(module, params, deadline)
    _rollback.save(armed, paths["armed"])
    result.update(changed=True, armed=True, deadline=deadline)
    result.pop("rolled_back", None)
    module.exit_json(**result)


def _nft_runner(module):
    def run(argv, data=None):
        return module.run_command(argv, data=data, binary_data=False)
    return run


if __name__ == "__main__":
    main()
