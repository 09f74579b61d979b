#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Manage Linux policy routing rules idempotently."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ip_rule
short_description: Manage Linux policy routing rules (ip rule), one or a whole set at once
version_added: "0.1.0"
description:
  - Adds and removes IPv4 and IPv6 policy routing rules, comparing the live rules
    (C(ip -j -d -N rule show)) with the desired ones structurally.
  - A rule's identity is its O(priority) plus its whole selector (O(from), O(to), O(fwmark)/O(fwmask),
    O(iif), O(oif)). The action part (O(action), O(table), O(suppress_prefixlength), O(protocol))
    is what may change; a changed rule is added before the old one is deleted, so traffic never
    misses the rule.
  - Either one rule (top-level options) or a set of rules (O(rules)) per call. With O(purge), live
    rules that carry O(protocol) or lie within O(purge_priority_range) and are not listed are
    deleted, so a role can pass every rule of a gateway in one call and get one batch.
  - All changes of one call go to the kernel in one C(ip -batch -) per address family.
author:
  - multiwan.linux maintainers (@multiwan)
options:
  rules:
    description:
      - A list of rules; each item takes the single-rule options below (O(priority), O(family),
        O(from), O(to), O(fwmark), O(fwmask), O(iif), O(oif), O(table), O(action),
        O(suppress_prefixlength), O(protocol), O(state)).
      - Mutually exclusive with the single-rule options.
    type: list
    elements: dict
    suboptions:
      priority:
        description: Rule priority (preference), 0..4294967295. Required for a single rule and for every item of O(rules).
        type: int
      family:
        description:
          - Address family. Derived from O(from) or O(to) when they are given; otherwise C(inet).
        type: str
        choices: [inet, inet6]
      from:
        description: Source prefix (C(all), an address or a prefix; host bits must be zero).
        type: str
      to:
        description: Destination prefix (C(all), an address or a prefix; host bits must be zero).
        type: str
      fwmark:
        description: Firewall mark to match (integer; C(0x) hex strings are accepted).
        type: str
      fwmask:
        description: Mask for O(fwmark); defaults to C(0xffffffff) like C(ip rule).
        type: str
      iif:
        description: Incoming interface (C(lo) for locally generated traffic). Need not exist yet.
        type: str
      oif:
        description: Outgoing interface (for sockets bound to a device). Need not exist yet.
        type: str
      action:
        description: What the rule does.
        type: str
        choices: [lookup, unreachable, prohibit, blackhole]
        default: lookup
      table:
        description:
          - Table to look up (name from the iproute2 C(rt_tables) files, or id). Required for O(action=lookup).
        type: str
      suppress_prefixlength:
        description: Reject lookup results with a prefix length less than or equal to this.
        type: int
      protocol:
        description: Protocol tag of this rule; defaults to the top-level O(protocol).
        type: str
      state:
        description: Whether the rule should exist.
        type: str
        choices: [present, absent]
        default: present
  purge:
    description:
      - Delete live rules (of both families) that are not listed in O(rules) and either carry
        O(protocol) or have a priority within O(purge_priority_range).
      - The kernel's own rules (priority 0, 32766 and 32767 looking up local, main and default) are never deleted.
    type: bool
    default: false
  purge_priority_range:
    description:
      - Two priorities C([low, high]), inclusive. With O(purge), unlisted rules in this range are
        deleted whatever their protocol.
    type: list
    elements: int
  priority:
    description: Rule priority (preference), 0..4294967295. Required for a single rule and for every item of O(rules).
    type: int
  family:
    description:
      - Address family. Derived from O(from) or O(to) when they are given; otherwise C(inet).
    type: str
    choices: [inet, inet6]
  from:
    description: Source prefix (C(all), an address or a prefix; host bits must be zero).
    type: str
  to:
    description: Destination prefix (C(all), an address or a prefix; host bits must be zero).
    type: str
  fwmark:
    description: Firewall mark to match (integer; C(0x) hex strings are accepted).
    type: str
  fwmask:
    description: Mask for O(fwmark); defaults to C(0xffffffff) like C(ip rule).
    type: str
  iif:
    description: Incoming interface (C(lo) for locally generated traffic). Need not exist yet.
    type: str
  oif:
    description: Outgoing interface (for sockets bound to a device). Need not exist yet.
    type: str
  action:
    description: What the rule does.
    type: str
    choices: [lookup, unreachable, prohibit, blackhole]
    default: lookup
  table:
    description:
      - Table to look up (name from the iproute2 C(rt_tables) files, or id). Required for O(action=lookup).
    type: str
  suppress_prefixlength:
    description: Reject lookup results with a prefix length less than or equal to this.
    type: int
  protocol:
    description:
      - Protocol tag the rules are created with, and what O(purge) considers ours
        (number, or a name from the iproute2 C(rt_protos) files). 109 is C(multiwan).
      - Given at the top level it is the default for every item of O(rules) and the purge tag.
    type: str
    default: "109"
  state:
    description: Whether the rule should exist.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reads the live rules and reports what would change; changes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Before/after of exactly the rules added or removed, one line per rule.
  idempotent:
    description: When run twice in a row outside check mode with the same arguments, the second invocation indicates no change.
    support: full
    details: A second run with the same options reports no change.
notes:
  - Runs C(ip); needs iproute2 with JSON output (C(ip -j), iproute2 4.17 or later).
  - Rules are read with C(-N), so tables and protocols are compared as numbers; names are
    resolved through C(/etc/iproute2/rt_tables), C(rt_tables.d/*.conf) and C(/usr/share/iproute2)
    the way C(ip) reads them.
  - The kernel's own rules are never touched; asking to remove one fails.
  - Live rules with selectors this module does not manage (C(not), C(ipproto), C(dport), C(l3mdev) ...)
    never match a listed rule; O(purge) can still delete them when they carry O(protocol) or lie
    in O(purge_priority_range).
  - C(ip -batch) stops at the first failing line; everything is validated before, and a failure names the rule.
seealso:
  - module: multiwan.linux.ip_route
"""

EXAMPLES = r"""
- name: LAN traffic to the LAN stays in main
  multiwan.linux.ip_rule:
    priority: 1000
    to: 10.1.0.0/24
    table: main

- name: All rules of a gateway in one atomic call; stale rules of ours disappear
  multiwan.linux.ip_rule:
    purge: true
    rules:
      - {priority: 1000, to: 10.1.0.0/24, table: main}
      - {priority: 2101, fwmark: "0x650000", fwmask: "0xff0000", table: 101}
      - {priority: 3101, from: 100.64.1.2, table: 101}
      - {priority: 3102, from: 100.64.2.2, table: 102}

- name: Never route 10.9.0.0/16 out
  multiwan.linux.ip_rule:
    priority: 500
    from: 10.9.0.0/16
    action: unreachable

- name: Remove a rule
  multiwan.linux.ip_rule:
    priority: 3102
    from: 100.64.2.2
    state: absent
"""

RETURN = r"""
rules:
  description: The rules this call manages, in canonical form (tables and protocols as numbers).
  returned: always
  type: list
  elements: dict
  sample: [{"family": "inet", "priority": 3101, "from": "100.64.1.2/32", "to": null, "fwmark": null,
            "fwmask": null, "iif": null, "oif": null, "action": "lookup", "table": 101,
            "suppress_prefixlength": null, "protocol": 109, "state": "present"}]
commands:
  description: The C(ip -batch) lines run (or that would run in check mode), prefixed with the family flag.
  returned: always
  type: list
  elements: str
  sample: ["-4 rule add priority 3101 from 100.64.1.2/32 lookup 101 protocol 109"]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.multiwan.linux.plugins.module_utils._diff import StateManager
from ansible_collections.multiwan.linux.plugins.module_utils._iproute import (
    FAMILIES, IpRoute, IpRouteError, Names, plan_rules)
# Options -> canonical rule, shared with the watchdog (which restores the role's rules at boot).
from ansible_collections.multiwan.linux.plugins.module_utils._iproute import canonical_rule as desired_rule

RULE_OPTIONS = {
    "priority": dict(type="int"),
    "family": dict(type="str", choices=list(FAMILIES)),
    "from": dict(type="str"),
    "to": dict(type="str"),
    "fwmark": dict(type="str"),
    "fwmask": dict(type="str"),
    "iif": dict(type="str"),
    "oif": dict(type="str"),
    "action": dict(type="str", choices=["lookup", "unreachable", "prohibit", "blackhole"], default="lookup"),
    "table": dict(type="str"),
    "suppress_prefixlength": dict(type="int"),
    "state": dict(type="str", choices=["present", "absent"], default="present"),
}
SINGLE_ONLY = list(RULE_OPTIONS)  # checked before defaults are filled in


class RuleManager(StateManager):
    """Live rules of both families versus the desired set."""

    def __init__(self, module, desired, protocol):
        StateManager.__init__(self, module)
        self.iproute = IpRoute(runner=lambda argv, data=None: module.run_command(argv, data=data),
                               ip=(module.get_bin_path("ip", required=True),))
        self.desired = desired
        self.protocol = protocol
        self.planned = None

    def plan(self):
        live = []
        for family in FAMILIES:
            live.extend(self.iproute.rules(family))
        params = self.module.params
        self.planned = plan_rules(live, self.desired, self.protocol, purge=params["purge"],
                                  purge_priority_range=params["purge_priority_range"])
        return self.planned

    def apply(self, changes):
        self.iproute.apply(changes.lines)

    def describe(self, key):
        return key

    def result(self):
        return {"rules": self.desired, "commands": self.planned.batch_text()}


def main():
    argument_spec = dict(RULE_OPTIONS)
    argument_spec.update(
        rules=dict(type="list", elements="dict",
                   options=dict(RULE_OPTIONS, protocol=dict(type="str"))),
        purge=dict(type="bool", default=False),
        purge_priority_range=dict(type="list", elements="int"),
        protocol=dict(type="str", default="109"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[["rules", name] for name in SINGLE_ONLY])
    params = module.params
    names = Names()
    try:
        protocol = names.protocol(params["protocol"])
    except ValueError as exc:
        module.fail_json(msg="protocol: %s" % exc)
    range_ = params["purge_priority_range"]
    if range_ is not None and (len(range_) != 2 or range_[0] > range_[1]):
        module.fail_json(msg="purge_priority_range: give two priorities [low, high], low <= high")
    if params["rules"] is not None:
        items = [(item, "rules[%d]" % index) for index, item in enumerate(params["rules"])]
    else:
        if params["purge"]:
            module.fail_json(msg="purge: only with rules (the whole set)")
        items = [(params, "rule")]
    try:
        desired = [desired_rule(item, names, params["protocol"], where) for item, where in items]
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    manager = RuleManager(module, desired, protocol)
    try:
        manager.run()
    except IpRouteError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
