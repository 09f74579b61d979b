#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Manage Linux routes, including weighted multipath through nexthop groups."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ip_route
short_description: Manage Linux routes, including weighted multipath routes over nexthop groups
version_added: "0.1.0"
description:
  - Manages unicast routes in any routing table, IPv4 and IPv6, comparing the live state
    (C(ip -j -d -N route/nexthop show)) with the desired one structurally.
  - One nexthop makes a plain route (C(via X dev Y), or C(dev Y) for a device-only uplink such as PPP),
    unless O(group_id) is set, which makes it a group with one member, so that a site with one uplink
    (or a watchdog with one usable uplink) never flips between a plain route and a group.
    Several nexthops make a weighted multipath route; by default through kernel nexthop objects and
    one nexthop group, whose members can later be swapped atomically (the watchdog does that).
  - A route is identified by family, table, destination and metric. It is changed with
    C(ip route replace) and C(ip nexthop replace), never deleted and added again, so it is present
    at every moment. Order inside the batch - new nexthop objects, then the group, then the route,
    then deletions (routes, then orphaned groups and nexthop objects of ours).
  - Either one route (top-level options) or a set (O(routes)); with O(purge), routes carrying
    O(protocol) in the purged tables that are not listed are deleted. All changes of one call go
    to the kernel in one C(ip -batch -); a second one (C(ip -6 -batch -), run first) only when new
    IPv6 nexthop objects are needed, because C(ip) cannot create a device-only IPv6 nexthop and a
    nexthop group in the same batch.
author:
  - multiwan.linux maintainers (@multiwan)
options:
  routes:
    description:
      - A list of routes; each item takes the single-route options (O(table), O(destination),
        O(family), O(nexthops), O(metric), O(src), O(scope), O(type), O(state), O(group_id),
        O(group_type), O(buckets), O(idle_timer)). Mutually exclusive with them.
    type: list
    elements: dict
    suboptions:
      table:
        description: Routing table, a name from the iproute2 C(rt_tables) files or an id.
        type: str
        default: main
      destination:
        description: C(default) or a prefix (host bits must be zero). Required.
        type: str
      family:
        description:
          - C(inet) or C(inet6). Derived from O(destination) or the nexthops when not given; C(default) alone means C(inet).
        type: str
        choices: [inet, inet6]
      nexthops:
        description:
          - Where the route leads. One item makes a plain route (a one-member group with O(group_id)), several a weighted multipath route.
          - Required with O(state=present).
        type: list
        elements: dict
        suboptions:
          via:
            description: Gateway address; leave out for a device-only nexthop (point-to-point links).
            type: str
          dev:
            description: Output device.
            type: str
            required: true
          weight:
            description: Relative weight in a multipath route, 1..255. Ignored for a plain route.
            type: int
            default: 1
          onlink:
            description: Pretend the gateway is directly reachable on O(nexthops[].dev).
            type: bool
            default: false
          id:
            description:
              - Nexthop object id (multipath with nexthop objects only). Default
                C(0x6d000000 | crc32("family|dev|via") & 0xffffff) (docs/design.md).
              - A live object with this id but another definition that is not ours (other protocol) makes the call fail.
            type: int
      metric:
        description: Route metric (priority). Default 0 for IPv4, 1024 for IPv6 (the kernel turns an IPv6 metric 0 into 1024).
        type: int
      src:
        description: Preferred source address.
        type: str
      scope:
        description: Route scope (C(global), C(link), C(host), C(site) or a number). Left to the kernel when not given.
        type: str
      type:
        description: Route type; only C(unicast) is supported.
        type: str
        choices: [unicast]
        default: unicast
      state:
        description: Whether the route should exist.
        type: str
        choices: [present, absent]
        default: present
      group_id:
        description:
          - Nexthop group id of a multipath route. Default C(0x6e000000 | crc32("family|table|destination") & 0xffffff).
        type: int
      group_type:
        description:
          - C(mpath) (hash-threshold) or C(resilient) (needs kernel 5.13). Changing the type (or the
            buckets) of a live group recreates it; the route is bridged over a classic multipath route
            inside the same batch so it never disappears.
        type: str
        choices: [mpath, resilient]
        default: mpath
      buckets:
        description: Number of buckets of a resilient group.
        type: int
      idle_timer:
        description: Idle timer (seconds) of a resilient group.
        type: int
  purge:
    description:
      - Delete live routes that carry O(protocol), lie in a purged table (O(purge_tables), or else
        every table named in O(routes)) and are not listed. Both families.
    type: bool
    default: false
  purge_tables:
    description: Tables (names or ids) that O(purge) cleans.
    type: list
    elements: str
  table:
    description: Routing table, a name from the iproute2 C(rt_tables) files or an id.
    type: str
    default: main
  destination:
    description: C(default) or a prefix (host bits must be zero). Required.
    type: str
  family:
    description:
      - C(inet) or C(inet6). Derived from O(destination) or the nexthops when not given; C(default) alone means C(inet).
    type: str
    choices: [inet, inet6]
  nexthops:
    description:
      - Where the route leads. One item makes a plain route (a one-member group with O(group_id)), several a weighted multipath route.
      - Required with O(state=present).
    type: list
    elements: dict
    suboptions:
      via:
        description: Gateway address; leave out for a device-only nexthop (point-to-point links).
        type: str
      dev:
        description: Output device.
        type: str
        required: true
      weight:
        description: Relative weight in a multipath route, 1..255. Ignored for a plain route.
        type: int
        default: 1
      onlink:
        description: Pretend the gateway is directly reachable on O(nexthops[].dev).
        type: bool
        default: false
      id:
        description:
          - Nexthop object id (multipath with nexthop objects only). Default
            C(0x6d000000 | crc32("family|dev|via") & 0xffffff) (docs/design.md).
          - A live object with this id but another definition that is not ours (other protocol) makes the call fail.
        type: int
  metric:
    description: Route metric (priority). Default 0 for IPv4, 1024 for IPv6 (the kernel turns an IPv6 metric 0 into 1024).
    type: int
  src:
    description: Preferred source address.
    type: str
  scope:
    description: Route scope (C(global), C(link), C(host), C(site) or a number). Left to the kernel when not given.
    type: str
  type:
    description: Route type; only C(unicast) is supported.
    type: str
    choices: [unicast]
    default: unicast
  state:
    description: Whether the route should exist.
    type: str
    choices: [present, absent]
    default: present
  group_id:
    description:
      - Nexthop group id of a multipath route. Default C(0x6e000000 | crc32("family|table|destination") & 0xffffff).
    type: int
  group_type:
    description:
      - C(mpath) (hash-threshold) or C(resilient) (needs kernel 5.13). Changing the type (or the
        buckets) of a live group recreates it; the route is bridged over a classic multipath route
        inside the same batch so it never disappears.
    type: str
    choices: [mpath, resilient]
    default: mpath
  buckets:
    description: Number of buckets of a resilient group.
    type: int
  idle_timer:
    description: Idle timer (seconds) of a resilient group.
    type: int
  protocol:
    description:
      - Protocol tag of the routes and nexthop objects we create, and what O(purge) and the
        orphan clean-up consider ours (number or C(rt_protos) name). 109 is C(multiwan).
    type: str
    default: "109"
  use_nexthop_objects:
    description:
      - C(auto) uses nexthop objects for multipath routes when C(ip nexthop) works, classic
        C(nexthop via X dev Y weight W) routes otherwise. C(true) requires them (fails without), C(false) never uses them.
    type: raw
    default: auto
  health_state_file:
    description:
      - Paths of the watchdog's state files (Contract 2 in docs/design.md), usually C(/run/multiwan/state.json)
        and, with IPv6 uplinks, C(/run/multiwan/state6.json). One path or a list; the members
        marked down in any of them are held down.
      - 'Format: C({"uplinks": {"<name>": {"state": "up"|"down", "nexthop_ids": [<id>, ...], "dev": "<device>"}, ...}}).
        A multipath member is held down when an uplink with C(state: down) lists its nexthop id in
        C(nexthop_ids) or names its device in C(dev). Other keys are ignored.'
      - Held-down members keep their nexthop objects but are left out of the group (or the classic
        multipath route). If every member would be held down, all stay in. A missing file means all up;
        a file that is not valid JSON makes the call fail.
      - A device marked down holds down the members on that device in both address families (nexthop
        ids are per uplink and family, so groups of nexthop objects are held down per family).
    type: list
    elements: path
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reads the live state and reports what would change, with the batch lines; changes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Before/after of exactly the routes, groups and nexthop objects touched.
  idempotent:
    description: When run twice in a row outside check mode with the same arguments, the second invocation indicates no change.
    support: full
    details: A second run with the same options and the same link/health state reports no change.
notes:
  - Runs C(ip); needs iproute2 with JSON output. Nexthop objects need kernel 5.3 and iproute2 5.3.
  - 'Unusable devices: the kernel deletes nexthop objects (and routes through them) of a device that goes down or
    loses carrier, and refuses to create them. A multipath member whose device is missing, down or
    without carrier is therefore left out with a warning and listed in RV(skipped_nexthops); the
    call fails only when no member is usable. Run the module again (the watchdog does) when the link
    is back. A plain one-nexthop route over a missing or administratively down device (a PPP
    interface while its session is down) is left out the same way, so the routes of the other uplinks are
    still made; over a device without carrier it is made (the kernel accepts it and marks it C(linkdown)).'
  - Orphans - a nexthop group or object carrying O(protocol) that a changed or deleted route of this
    call used and that nothing uses any more is deleted at the end of the batch.
  - IPv4 routes over IPv6 gateways (RFC 5549) are not supported; all nexthops must be of the route's family.
seealso:
  - module: multiwan.linux.ip_rule
"""

EXAMPLES = r"""
- name: Per-uplink table - connected subnet and default route
  multiwan.linux.ip_route:
    purge: true
    routes:
      - {table: 101, destination: 100.64.1.0/24, nexthops: [{dev: wan1}], scope: link, src: 100.64.1.2}
      - {table: 101, destination: default, nexthops: [{via: 100.64.1.1, dev: wan1}]}
      - {table: 102, destination: default, nexthops: [{dev: ppp0}]}

- name: Weighted default route over both uplinks, watchdog decides who is in
  multiwan.linux.ip_route:
    destination: default
    group_id: 0x6e000001
    nexthops:
      - {via: 100.64.1.1, dev: wan1, weight: 2, id: 0x6d000065}
      - {dev: ppp0, weight: 1, id: 0x6d000066}
    health_state_file: /run/multiwan/state.json

- name: Classic multipath route (no nexthop objects)
  multiwan.linux.ip_route:
    table: 103
    destination: default
    use_nexthop_objects: false
    nexthops:
      - {via: 100.64.1.1, dev: wan1}
      - {dev: ppp0}

- name: Remove it again
  multiwan.linux.ip_route:
    table: 103
    destination: default
    state: absent
"""

RETURN = r"""
routes:
  description: What each listed route resolved to (table as a number; group id and members, or nexthops).
  returned: always
  type: list
  elements: dict
  sample: [{"family": "inet", "table": 254, "destination": "default", "group_id": 1845493761,
            "members": [{"id": 1828716545, "dev": "wan1", "via": "100.64.1.1", "weight": 2}]}]
skipped_nexthops:
  description:
    - Nexthops left out because their device is unusable - multipath members whose device is missing,
      down or without carrier, and one-nexthop routes whose device is missing or down.
  returned: always
  type: list
  elements: dict
  sample: [{"route": "route inet table 254 default metric 0", "dev": "ppp0", "via": null,
            "reason": "device ppp0 has no carrier"}]
held_down:
  description: Multipath members kept out of the group because the health state file marks them down.
  returned: always
  type: list
  elements: dict
commands:
  description: The C(ip -batch) lines run (or that would run in check mode), prefixed with the family flag.
  returned: always
  type: list
  elements: str
  sample: ["-4 nexthop replace id 1828716545 via 100.64.1.1 dev wan1 protocol 109",
           "-4 nexthop replace id 1845493761 group 1828716545,2/1828716546,1 protocol 109",
           "-4 route replace default table 254 metric 0 protocol 109 nhid 1845493761"]
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.multiwan.linux.plugins.module_utils._diff import StateManager
from ansible_collections.multiwan.linux.plugins.module_utils._iproute import (
    FAMILIES, SCOPES, IpRoute, IpRouteError, Names, family_of, normalize_address,
    normalize_prefix, plan_routes)

NEXTHOP_OPTIONS = dict(
    via=dict(type="str"),
    dev=dict(type="str", required=True),
    weight=dict(type="int", default=1),
    onlink=dict(type="bool", default=False),
    id=dict(type="int"),
)
ROUTE_OPTIONS = dict(
    table=dict(type="str", default="main"),
    destination=dict(type="str"),
    family=dict(type="str", choices=list(FAMILIES)),
    nexthops=dict(type="list", elements="dict", options=NEXTHOP_OPTIONS),
    metric=dict(type="int"),
    src=dict(type="str"),
    scope=dict(type="str"),
    type=dict(type="str", choices=["unicast"], default="unicast"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    group_id=dict(type="int"),
    group_type=dict(type="str", choices=["mpath", "resilient"], default="mpath"),
    buckets=dict(type="int"),
    idle_timer=dict(type="int"),
)
SINGLE_ONLY = list(ROUTE_OPTIONS)  # checked before defaults are filled in


def desired_route(item, names, where):
    """Canonical desired route from one set of options; ValueError names the bad field."""
    try:
        return _desired_route(item, names)
    except ValueError as exc:
        raise ValueError("%s: %s" % (where, exc))


def _desired_route(item, names):
    if not item.get("destination"):
        raise ValueError("destination is required")
    hops = item.get("nexthops") or []
    family = item.get("family")
    if family is None and item["destination"] not in ("default", "all", "any"):
        family = family_of(item["destination"])
    if family is None:
        family = next((family_of(h["via"]) for h in hops if h.get("via")), "inet")
    try:
        destination = normalize_prefix(item["destination"], family)
    except ValueError as exc:
        raise ValueError("destination: %s" % exc)
    try:
        table = names.table(item.get("table") or "main")
    except ValueError as exc:
        raise ValueError("table: %s" % exc)
    metric = item.get("metric")
    if metric is not None and not 0 <= metric <= 0xFFFFFFFF:
        raise ValueError("metric: %s is out of range" % metric)
    if family == "inet6" and not metric:
        metric = 1024  # the kernel's IPv6 default, and what it makes of metric 0
    route = {"family": family, "table": table, "destination": destination, "metric": metric or 0,
             "type": item.get("type") or "unicast", "state": item.get("state") or "present"}
    if route["state"] == "absent":
        return route
    if not hops:
        raise ValueError("nexthops: at least one nexthop is required with state present")
    route["nexthops"] = []
    for index, hop in enumerate(hops):
        field = "nexthops[%d]" % index
        via = None
        if hop.get("via"):
            try:
                via = normalize_address(hop["via"], family)
            except ValueError as exc:
                raise ValueError("%s.via: %s" % (field, exc))
        weight = hop["weight"] if hop.get("weight") is not None else 1
        if not 1 <= weight <= 255:
            raise ValueError("%s.weight: %s is out of range 1..255" % (field, weight))
        if hop.get("id") is not None and not 1 <= hop["id"] <= 0xFFFFFFFF:
            raise ValueError("%s.id: %s is out of range" % (field, hop["id"]))
        route["nexthops"].append({"via": via, "dev": hop["dev"], "weight": weight,
                                  "onlink": bool(hop.get("onlink")), "id": hop.get("id")})
    if len(set((h["dev"], h["via"]) for h in route["nexthops"])) != len(route["nexthops"]):
        raise ValueError("nexthops: the same dev/via is listed twice")
    if item.get("src"):
        try:
            route["src"] = normalize_address(item["src"], family)
        except ValueError as exc:
            raise ValueError("src: %s" % exc)
    if item.get("scope") is not None:
        scope = str(item["scope"])
        route["scope"] = SCOPES.get(scope, int(scope) if scope.isdigit() else None)
        if route["scope"] is None or not 0 <= route["scope"] <= 255:
            raise ValueError("scope: %r is not a scope name or number" % item["scope"])
    for name in ("group_id", "buckets", "idle_timer"):
        if item.get(name) is not None and not 0 < item[name] <= 0xFFFFFFFF:
            raise ValueError("%s: %s is out of range" % (name, item[name]))
    route["group_id"] = item.get("group_id")
    route["group_type"] = item.get("group_type") or "mpath"
    if route["group_type"] != "resilient" and (item.get("buckets") or item.get("idle_timer")):
        raise ValueError("buckets/idle_timer only go with group_type resilient")
    route["buckets"] = item.get("buckets")
    route["idle_timer"] = item.get("idle_timer")
    return route


def read_health(paths):
    """Members marked down by the watchdog's state files: ``{"ids": set, "devs": set}``."""
    health = {"ids": set(), "devs": set()}
    for path in paths or []:
        _read_health_file(path, health)
    return health


def _read_health_file(path, health):
    if not os.path.exists(path):
        return
    try:
        with open(path) as handle:
            data = json.load(handle)
        for uplink in (data.get("uplinks") or {}).values():
            if uplink.get("state") == "down":
                health["ids"].update(int(i) for i in uplink.get("nexthop_ids") or [])
                if uplink.get("dev"):
                    health["devs"].add(uplink["dev"])
    except (IOError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError("health_state_file: %s is not a readable state file (%s)" % (path, exc))


class RouteManager(StateManager):
    """Live routes, nexthop objects and links versus the desired routes."""

    def __init__(self, module, desired, protocol, use_objects, health, purge_tables):
        StateManager.__init__(self, module)
        self.iproute = IpRoute(runner=lambda argv, data=None: module.run_command(argv, data=data),
                               ip=(module.get_bin_path("ip", required=True),))
        self.desired = desired
        self.protocol = protocol
        self.use_objects = use_objects
        self.health = health
        self.purge_tables = purge_tables
        self.planned = None

    def plan(self):
        supported = self.iproute.nexthops_supported()
        if self.use_objects is True and not supported:
            raise IpRouteError("use_nexthop_objects: true, but 'ip nexthop' does not work here (kernel < 5.3?)")
        use_objects = supported if self.use_objects == "auto" else self.use_objects
        state = {"routes": [r for f in FAMILIES for r in self.iproute.routes(f)],
                 "nexthops": self.iproute.nexthops() if supported else {},
                 "links": self.iproute.links()}
        for route in self.desired:
            route["protocol"] = self.protocol
        self.planned = plan_routes(state, self.desired, self.protocol, use_objects, self.health, self.purge_tables)
        for warning in self.planned.warnings:
            self.module.warn(warning)
        return self.planned

    def apply(self, changes):
        self.iproute.apply(changes.lines)

    def describe(self, key):
        return key

    def result(self):
        return {"routes": self.planned.routes, "skipped_nexthops": self.planned.skipped,
                "held_down": self.planned.held_down, "commands": self.planned.batch_text()}


def main():
    argument_spec = dict(ROUTE_OPTIONS)
    argument_spec.update(
        routes=dict(type="list", elements="dict", options=ROUTE_OPTIONS),
        purge=dict(type="bool", default=False),
        purge_tables=dict(type="list", elements="str"),
        protocol=dict(type="str", default="109"),
        use_nexthop_objects=dict(type="raw", default="auto"),
        health_state_file=dict(type="list", elements="path"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[["routes", name] for name in SINGLE_ONLY])
    params = module.params
    names = Names()
    try:
        try:
            protocol = names.protocol(params["protocol"])
        except ValueError as exc:
            raise ValueError("protocol: %s" % exc)
        use_objects = params["use_nexthop_objects"]
        if str(use_objects).lower() != "auto":
            try:
                use_objects = boolean(use_objects)
            except TypeError:
                raise ValueError("use_nexthop_objects: %r is not auto, true or false" % (use_objects,))
        else:
            use_objects = "auto"
        if params["routes"] is not None:
            desired = [desired_route(item, names, "routes[%d]" % i) for i, item in enumerate(params["routes"])]
        else:
            if params["purge"]:
                raise ValueError("purge: only with routes (the whole set)")
            desired = [desired_route(params, names, "route")]
        purge_tables = None
        if params["purge"]:
            try:
                purge_tables = set(names.table(t) for t in params["purge_tables"]) if params["purge_tables"] \
                    else set(r["table"] for r in desired)
            except ValueError as exc:
                raise ValueError("purge_tables: %s" % exc)
        health = read_health(params["health_state_file"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    manager = RouteManager(module, desired, protocol, use_objects, health, purge_tables)
    try:
        manager.run()
    except IpRouteError as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
