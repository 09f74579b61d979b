# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place of the collection that runs ``ip`` (Contract 1 in docs/design.md).

Private module_utils (leading underscore): not a public API.  Standard library only and no
Ansible imports: the failover watchdog installs this same file on the gateway and imports it as
a plain module.  Python 3.9+.

Names: table and protocol names are resolved by ``_rt_tables.Names`` (exported here as
:data:`Names`), which reads the iproute2 files with ``ip``'s own precedence; the watchdog
installs ``_rt_tables.py`` beside this file.

Reading: ``ip -j -d -N ...`` (``-N`` makes tables, protocols, scopes and rule actions numeric,
so names configured in /etc/iproute2 never confuse the comparison).  Everything read is turned
into small canonical dicts (see ``parse_rule``, ``parse_route``, ``parse_nexthop``).

Writing: the planned lines run through ``ip -batch -``, in order.  The address family is a global
option of ``ip``, not of a batch line: an IPv6 rule without an address or a device-only IPv6
nexthop object needs ``ip -6 -batch``, while a nexthop group must be created *without* a family
("Invalid family for group").  So each :class:`Line` carries the flag it needs and
:meth:`IpRoute.apply` runs one batch per run of consecutive lines with the same flag: a rule
change is one batch per family, a route change at most two (IPv6 member objects, then the rest).
Route lines write IPv6 destinations as ``::/0`` and never rely on the family flag.
``ip -batch`` stops at the first failing line, so callers plan and validate everything before they
call :meth:`IpRoute.apply`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import zlib

try:
    from ansible_collections.multiwan.linux.plugins.module_utils import _rt_tables
except ImportError:  # on the gateway (watchdog): installed beside this file
    import _rt_tables  # pylint: disable=import-error

# Table and protocol names, resolved exactly like ``ip`` does (one implementation: _rt_tables).
Names = _rt_tables.Names

__all__ = [
    "DEFAULT_PROTOCOL", "FAMILIES", "IpRoute", "IpRouteError", "Line", "Names",
    "RoutePlan", "RulePlan", "default_group_id", "default_nexthop_id", "group_line",
    "is_kernel_rule", "nexthop_line", "normalize_prefix", "parse_nexthop", "parse_route",
    "parse_rule", "plan_routes", "plan_rules", "route_line", "rule_line", "set_group_members",
    "subprocess_runner",
]

DEFAULT_PROTOCOL = 109  # "multiwan" (0x6d), see docs/design.md
FAMILIES = ("inet", "inet6")
FAMILY_FLAG = {"inet": "-4", "inet6": "-6"}

SCOPES = {"global": 0, "universe": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}
ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
               6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat"}
# FR_ACT_* of linux/fib_rules.h; ``ip -N`` prints them as numbers, without -N as names.
RULE_ACTIONS = {"1": "lookup", "2": "goto", "3": "nop", "6": "blackhole", "7": "unreachable",
                "8": "prohibit", "to_tbl": "lookup", "goto": "goto", "nop": "nop",
                "blackhole": "blackhole", "unreachable": "unreachable", "prohibit": "prohibit"}
# The three rules every network namespace starts with: priority -> table.
KERNEL_RULES = {0: 255, 32766: 254, 32767: 253}

NEXTHOP_ID_BASE = 0x6D000000
GROUP_ID_BASE = 0x6E000000


class IpRouteError(Exception):
    """A failure that names the object concerned; modules turn it into ``fail_json``."""


class Line(object):
    """One line of an ``ip -batch``, the object it is about (for error messages) and the family
    option the batch needs (``-4``/``-6``, or None for lines that must run without one)."""

    def __init__(self, text, about, flag=None):
        self.text = text
        self.about = about
        self.flag = flag

    def __repr__(self):
        return "Line(%r)" % self.text


def subprocess_runner(argv, data=None):
    """Default runner: ``(rc, stdout, stderr)`` like Ansible's ``module.run_command``."""
    # The watchdog runs this file without Ansible, so there is no run_command to call here;
    # modules pass their own runner.
    proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False)  # pylint: disable=ansible-bad-function
    return proc.returncode, proc.stdout, proc.stderr


# -- canonical forms ------------------------------------------------------------------------

def family_of(address):
    return "inet6" if ":" in str(address) else "inet"


def normalize_prefix(value, family=None, default_word=True):
    """Canonical text of a prefix: ``default``/None for /0, host routes with their /32 or /128.

    Host bits must be zero (``10.1.0.1/24`` is refused): the kernel would store something other
    than what was written and the next run would never match.
    """
    text = str(value).strip()
    if text in ("default", "all", "any"):
        return "default" if default_word else None
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError("%r is not a valid prefix (%s)" % (value, exc))
    found = "inet6" if network.version == 6 else "inet"
    if family is not None and family != found:
        raise ValueError("%r is not an %s prefix" % (value, family))
    if network.prefixlen == 0:
        return "default" if default_word else None
    return str(network.with_prefixlen)


def normalize_address(value, family=None):
    try:
        address = ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise ValueError("%r is not an IP address" % (value,))
    found = "inet6" if address.version == 6 else "inet"
    if family is not None and family != found:
        raise ValueError("%r is not an %s address" % (value, family))
    return str(address)


def _prefix_from(raw, addr_key, len_key):
    address = raw.get(addr_key)
    if address in (None, "all"):
        return None
    length = raw.get(len_key)
    if length is None:
        length = 128 if ":" in address else 32
    return str(ipaddress.ip_network("%s/%s" % (address, length), strict=False).with_prefixlen)


def _int(value, default=None):
    if value is None:
        return default
    if isinstance(value, int):
        return value
    return int(str(value), 0)


# -- rules ----------------------------------------------------------------------------------

# Selectors ``ip -j rule`` may show that the modules do not manage; they still belong to a
# rule's identity, so a live rule carrying them never matches a desired rule by accident.
RULE_EXTRA_SELECTORS = ("not", "tos", "l3mdev", "ipproto", "sport", "dport", "uidrange")
RULE_SELECTOR_FIELDS = ("from", "to", "fwmark", "fwmask", "iif", "oif")
RULE_ACTION_FIELDS = ("action", "table", "suppress_prefixlength", "protocol")


def parse_rule(raw, family):
    """Canonical dict of one rule from ``ip -j -d -N rule show``."""
    fwmark = raw.get("fwmark")
    fwmask = raw.get("fwmask")
    if fwmark is not None and fwmask is None:
        fwmask = "0xffffffff"  # ip prints the mask only when it is not the full one
    extra = []
    for name in RULE_EXTRA_SELECTORS:
        if name in raw:
            value = raw[name]
            if isinstance(value, dict):
                value = "%s-%s" % (value.get("start"), value.get("end"))
            extra.append((name, value))
    action = RULE_ACTIONS.get(str(raw.get("action", "1")), str(raw.get("action")))
    rule = {
        "family": family,
        "priority": _int(raw.get("priority"), 0),
        "from": _prefix_from(raw, "src", "srclen"),
        "to": _prefix_from(raw, "dst", "dstlen"),
        "fwmark": _int(fwmark),
        "fwmask": _int(fwmask),
        "iif": raw.get("iif"),
        "oif": raw.get("oif"),
        "action": action,
        "table": _int(raw.get("table")) if action == "lookup" else None,
        "suppress_prefixlength": _int(raw.get("suppress_prefixlen")),
        "protocol": _int(raw.get("protocol"), 0),
    }
    if action == "goto":
        extra.append(("goto", raw.get("target")))
    if extra:
        rule["extra"] = extra
    return rule


def rule_key(rule):
    """Identity: family, priority and the whole selector."""
    return (rule["family"], rule["priority"]) + tuple(rule.get(f) for f in RULE_SELECTOR_FIELDS) + (
        tuple(tuple(x) for x in rule.get("extra") or ()),)


def rule_value(rule):
    return dict((f, rule.get(f)) for f in RULE_ACTION_FIELDS)


def is_kernel_rule(rule):
    """True for the kernel's own ``lookup local/main/default`` rules (never touched)."""
    return (KERNEL_RULES.get(rule["priority"]) == rule.get("table") and rule.get("action") == "lookup"
            and not any(rule.get(f) is not None for f in RULE_SELECTOR_FIELDS) and not rule.get("extra")
            and rule.get("suppress_prefixlength") is None)


def describe_rule(rule):
    words = ["rule", rule["family"], "priority %s" % rule["priority"]]
    words += ["%s %s" % (f, rule[f] if f not in ("fwmark", "fwmask") else hex(rule[f]))
              for f in RULE_SELECTOR_FIELDS if rule.get(f) is not None]
    words += [name if value is None else "%s %s" % (name, value) for name, value in rule.get("extra") or ()]
    return " ".join(words)


def rule_line(verb, rule):
    """``rule add|del`` line for the batch of ``rule['family']``."""
    words = ["rule", verb, "priority", str(rule["priority"])]
    for name, value in rule.get("extra") or ():
        if name == "not":
            words.insert(4, "not")
        elif name == "l3mdev":
            words.append("l3mdev")
        elif name == "ipproto":
            words += ["ipproto", str(value).replace("ipproto-", "")]
        elif name != "goto":
            words += [name, str(value)]
    words += ["from", rule["from"] or "all"]
    if rule.get("to"):
        words += ["to", rule["to"]]
    if rule.get("fwmark") is not None:
        words += ["fwmark", "%s/%s" % (hex(rule["fwmark"]), hex(rule["fwmask"]))]
    if rule.get("iif"):
        words += ["iif", rule["iif"]]
    if rule.get("oif"):
        words += ["oif", rule["oif"]]
    action = rule.get("action") or "lookup"
    if action == "lookup":
        if rule.get("table") is not None:  # l3mdev rules look up without a table
            words += ["lookup", str(rule["table"])]
    elif action == "goto":
        words += ["goto", str(dict(rule.get("extra") or ()).get("goto"))]
    else:
        words.append(action)
    if rule.get("suppress_prefixlength") is not None:
        words += ["suppress_prefixlength", str(rule["suppress_prefixlength"])]
    if rule.get("protocol"):
        words += ["protocol", str(rule["protocol"])]
    return " ".join(words)


class Plan(object):
    """Changes decided by a planner: batch lines per family and one entry per touched object.

    ``add``/``remove``/``replace`` give the entries in the shape of ``_diff.ObjectChanges`` (keys
    are the objects' names), so modules hand a plan straight to ``StateManager``.
    """

    def __init__(self):
        self.lines = []    # Line, in the order they must run
        self.entries = []  # (name, before, after)
        self.warnings = []

    def __bool__(self):
        return bool(self.entries)

    __nonzero__ = __bool__

    @property
    def add(self):
        return [(name, after) for name, before, after in self.entries if before is None]

    @property
    def remove(self):
        return [(name, before) for name, before, after in self.entries if after is None]

    @property
    def replace(self):
        return [(name, before, after) for name, before, after in self.entries
                if before is not None and after is not None]

    def batch_text(self):
        """All lines, prefixed with the family flag of their batch (for the result and tests)."""
        return [("%s %s" % (line.flag, line.text)) if line.flag else line.text for line in self.lines]


class RulePlan(Plan):
    """What :func:`plan_rules` decided."""


def _rule_number(value, field, limit=0xFFFFFFFF):
    try:
        number = int(str(value), 0)
    except ValueError:
        raise ValueError("%s: %r is not a number" % (field, value))
    if not 0 <= number <= limit:
        raise ValueError("%s: %r is out of range" % (field, value))
    return number


def canonical_rule(item, names, default_protocol, where):
    """Canonical rule dict (see :func:`parse_rule`) from ip_rule-style options; ValueError names the bad field.

    ip_rule and the watchdog (its config's ``rules``, restored at start) both build rules here.
    """
    try:
        if item.get("priority") is None:
            raise ValueError("priority is required")
        _rule_number(item["priority"], "priority")
        family = item.get("family")
        for field in ("from", "to"):
            if item.get(field) not in (None, "all") and family is None:
                family = family_of(item[field])
        family = family or "inet"
        rule = {"family": family, "priority": item["priority"], "state": item.get("state") or "present"}
        for field in ("from", "to"):
            try:
                rule[field] = normalize_prefix(item[field], family, default_word=False) if item.get(field) else None
            except ValueError as exc:
                raise ValueError("%s: %s" % (field, exc))
        rule["fwmark"] = _rule_number(item["fwmark"], "fwmark") if item.get("fwmark") is not None else None
        if item.get("fwmask") is not None and rule["fwmark"] is None:
            raise ValueError("fwmask needs fwmark")
        rule["fwmask"] = (_rule_number(item["fwmask"], "fwmask") if item.get("fwmask") is not None else 0xFFFFFFFF) \
            if rule["fwmark"] is not None else None
        rule["iif"] = item.get("iif") or None
        rule["oif"] = item.get("oif") or None
        rule["action"] = item.get("action") or "lookup"
        if rule["action"] == "lookup":
            if item.get("table") is None and rule["state"] == "present":
                raise ValueError("table is required for action lookup")
            try:
                rule["table"] = names.table(item["table"]) if item.get("table") is not None else None
            except ValueError as exc:
                raise ValueError("table: %s" % exc)
        elif item.get("table") is not None:
            raise ValueError("table only goes with action lookup, not %s" % rule["action"])
        else:
            rule["table"] = None
        rule["suppress_prefixlength"] = item.get("suppress_prefixlength")
        if rule["suppress_prefixlength"] is not None and not 0 <= rule["suppress_prefixlength"] <= 128:
            raise ValueError("suppress_prefixlength: %s is out of range 0..128" % rule["suppress_prefixlength"])
        try:
            rule["protocol"] = names.protocol(item.get("protocol") or default_protocol)
        except ValueError as exc:
            raise ValueError("protocol: %s" % exc)
        return rule
    except ValueError as exc:
        raise ValueError("%s: %s" % (where, exc))


def plan_rules(live_rules, desired_rules, protocol=DEFAULT_PROTOCOL, purge=False, purge_priority_range=None):
    """Plan rule changes.

    ``desired_rules`` are canonical rule dicts with an extra ``state`` (present/absent).  With
    ``purge``, live rules that are not desired and either carry ``protocol`` or lie within
    ``purge_priority_range`` (inclusive pair) are deleted; the kernel's own rules never are.
    A changed rule is added before the old one is deleted, so the selector never goes unmatched.
    """
    live_by_key = {}
    for rule in live_rules:
        live_by_key.setdefault(rule_key(rule), []).append(rule)
    plan = RulePlan()
    seen = set()
    for want in desired_rules:
        key = rule_key(want)
        if key in seen:
            raise IpRouteError("%s is listed twice" % describe_rule(want))
        seen.add(key)
        have = live_by_key.get(key, [])
        if want.get("state", "present") == "absent":
            if is_kernel_rule(want):
                raise IpRouteError("%s is one of the kernel's own rules and is never removed" % describe_rule(want))
            for old in have:
                plan.lines.append(Line(rule_line("del", old), describe_rule(old), FAMILY_FLAG[old["family"]]))
                plan.entries.append((describe_rule(old), rule_value(old), None))
            continue
        clean = dict((k, v) for k, v in want.items() if k != "state")
        matching = [old for old in have if rule_value(old) == rule_value(clean)]
        if not matching:
            plan.lines.append(Line(rule_line("add", clean), describe_rule(clean), FAMILY_FLAG[clean["family"]]))
        for old in have:
            if old is not (matching[0] if matching else None):
                if is_kernel_rule(old):
                    raise IpRouteError("%s would replace the kernel's own rule" % describe_rule(clean))
                plan.lines.append(Line(rule_line("del", old), describe_rule(old), FAMILY_FLAG[old["family"]]))
        if not matching or len(have) > 1:
            plan.entries.append((describe_rule(clean), rule_value(have[0]) if have else None, rule_value(clean)))
    if purge:
        low, high = purge_priority_range or (None, None)
        for key in sorted(live_by_key, key=repr):
            if key in seen:
                continue
            for old in live_by_key[key]:
                in_range = low is not None and low <= old["priority"] <= high
                if (old["protocol"] == protocol or in_range) and not is_kernel_rule(old):
                    plan.lines.append(Line(rule_line("del", old), describe_rule(old), FAMILY_FLAG[old["family"]]))
                    plan.entries.append((describe_rule(old), rule_value(old), None))
    return plan


# -- nexthops -------------------------------------------------------------------------------

def default_nexthop_id(family, dev, via):
    """Module default nexthop id: ``0x6d000000 | crc32("family|dev|via") & 0xffffff``."""
    text = "%s|%s|%s" % (family, dev or "", via or "")
    return NEXTHOP_ID_BASE | (zlib.crc32(text.encode("utf-8")) & 0x00FFFFFF)


def default_group_id(family, table, destination):
    """Module default group id: ``0x6e000000 | crc32("family|table|destination") & 0xffffff``."""
    text = "%s|%s|%s" % (family, table, destination)
    return GROUP_ID_BASE | (zlib.crc32(text.encode("utf-8")) & 0x00FFFFFF)


def parse_nexthop(raw, family=None):
    """Canonical dict of one ``ip -j -d -N nexthop show`` entry (a nexthop or a group)."""
    nh = {"id": int(raw["id"]), "protocol": _int(raw.get("protocol"), 0)}
    if "group" in raw:
        nh["group"] = [(int(m["id"]), int(m.get("weight", 1))) for m in raw["group"]]
        nh["type"] = raw.get("type", "mpath")
        args = raw.get("resilient_args") or {}
        nh["buckets"] = args.get("buckets")
        nh["idle_timer"] = args.get("idle_timer")
        return nh
    via = raw.get("gateway")
    nh["family"] = family or (family_of(via) if via else "inet")
    nh["via"] = via
    nh["dev"] = raw.get("dev")
    nh["onlink"] = "onlink" in (raw.get("flags") or [])
    if "blackhole" in raw:
        nh["blackhole"] = True
    return nh


def nexthop_definition(nh):
    """What a (non-group) nexthop object is, without its id and owner."""
    return dict((k, nh.get(k)) for k in ("family", "via", "dev", "onlink"))


def group_definition(group, compare_to=None):
    """What a group is; buckets/idle_timer only count where the desired side names them."""
    definition = {"group": sorted(group["group"]), "type": group.get("type", "mpath")}
    for name in ("buckets", "idle_timer"):
        wanted = (compare_to or group).get(name)
        if wanted is not None:
            definition[name] = group.get(name)
    return definition


def nexthop_line(verb, nh):
    """``nexthop add|replace|del`` line of one non-group nexthop object."""
    if verb == "del":
        return "nexthop del id %d" % nh["id"]
    words = ["nexthop", verb, "id", str(nh["id"])]
    if nh.get("via"):
        words += ["via", nh["via"]]
    words += ["dev", nh["dev"]]
    if nh.get("onlink"):
        words.append("onlink")
    if nh.get("protocol"):
        words += ["protocol", str(nh["protocol"])]
    return " ".join(words)


def group_line(group, verb="replace"):
    """``nexthop replace id G group a,w/b,w [type resilient ...]`` for one group dict."""
    members = "/".join("%d,%d" % (member, weight) for member, weight in group["group"])
    words = ["nexthop", verb, "id", str(group["id"]), "group", members]
    if group.get("type", "mpath") == "resilient":
        words += ["type", "resilient"]
        for name in ("buckets", "idle_timer"):
            if group.get(name) is not None:
                words += [name, str(group[name])]
    if group.get("protocol"):
        words += ["protocol", str(group["protocol"])]
    return " ".join(words)


def set_group_members(group_id, members, protocol=DEFAULT_PROTOCOL, group_type="mpath"):
    """One batch line that swaps a group's members atomically: ``[(nexthop_id, weight), ...]``.

    The watchdog's apply step; run it with :meth:`IpRoute.apply`.
    """
    if not members:
        raise IpRouteError("nexthop group %d: a group needs at least one member" % group_id)
    return group_line({"id": int(group_id), "group": [(int(m), int(w)) for m, w in members],
                       "type": group_type, "protocol": protocol})


# -- routes ---------------------------------------------------------------------------------

def parse_route(raw, family):
    """Canonical dict of one route from ``ip -j -d -N route show table all``."""
    metric = _int(raw.get("metric"), 0)
    route = {
        "family": family,
        "table": _int(raw.get("table"), 254),
        "destination": normalize_prefix(raw["dst"]) if raw.get("dst") != "default" else "default",
        "metric": metric,
        "protocol": _int(raw.get("protocol"), 0),
        "type": ROUTE_TYPES.get(_int(raw.get("type"), 1), str(raw.get("type"))),
        "scope": _int(raw.get("scope"), 0),
        "src": raw.get("prefsrc"),
    }
    if raw.get("nhid") is not None:
        route["nhid"] = int(raw["nhid"])
    elif raw.get("nexthops"):
        route["nexthops"] = sorted(
            ({"via": hop.get("gateway"), "dev": hop.get("dev"), "weight": int(hop.get("weight", 1)),
              "onlink": "onlink" in (hop.get("flags") or [])} for hop in raw["nexthops"]),
            key=lambda hop: (hop["dev"] or "", hop["via"] or ""))
    elif raw.get("dev") or raw.get("gateway"):
        route["nexthops"] = [{"via": raw.get("gateway"), "dev": raw.get("dev"), "weight": 1,
                              "onlink": "onlink" in (raw.get("flags") or [])}]
    return route


def route_key(route):
    return (route["family"], route["table"], route["destination"], route["metric"])


def describe_route(route):
    return "route %s table %s %s metric %s" % (route["family"], route["table"], route["destination"], route["metric"])


def route_line(verb, route):
    """``route replace|del`` line; ``route`` carries ``nhid`` or ``nexthops``.

    The destination is always written with its family (``::/0`` for an IPv6 default) because
    route lines run in batches without a family flag (see the module docstring).
    """
    destination = route["destination"]
    if destination == "default":
        destination = "::/0" if route["family"] == "inet6" else "0.0.0.0/0"
    words = ["route", verb, destination, "table", str(route["table"]), "metric", str(route["metric"])]
    if verb == "del":
        return " ".join(words)
    if route.get("type", "unicast") != "unicast":
        words.insert(2, route["type"])
    if route.get("protocol"):
        words += ["protocol", str(route["protocol"])]
    if route.get("scope") is not None:
        words += ["scope", str(route["scope"])]
    if route.get("src"):
        words += ["src", route["src"]]
    if route.get("nhid") is not None:
        words += ["nhid", str(route["nhid"])]
        return " ".join(words)
    hops = route.get("nexthops") or []
    if len(hops) == 1:
        words += _hop_words(hops[0])
    else:
        for hop in hops:
            words += ["nexthop"] + _hop_words(hop) + ["weight", str(hop.get("weight") or 1)]
    return " ".join(words)


def _hop_words(hop):
    words = ["via", hop["via"]] if hop.get("via") else []
    words += ["dev", hop["dev"]]
    if hop.get("onlink"):
        words.append("onlink")
    return words


class RoutePlan(Plan):
    """What :func:`plan_routes` decided; also which nexthops were left out and why."""

    def __init__(self):
        Plan.__init__(self)
        self.skipped = []    # nexthops left out because their device is unusable
        self.held_down = []  # nexthops kept out of a group by the health state file
        self.routes = []     # what each desired route resolved to


def _route_view(route):
    """The part of a route that diff mode shows and comparison uses."""
    view = dict((k, route.get(k)) for k in ("protocol", "type", "scope", "src"))
    if route.get("nhid") is not None:
        view["nhid"] = route["nhid"]
    else:
        view["nexthops"] = route.get("nexthops") or []
    return view


def plan_routes(state, desired_routes, protocol=DEFAULT_PROTOCOL, use_objects=True, health=None,
                purge_tables=None):
    """Plan route, nexthop and group changes.

    ``state`` holds the live objects: ``routes`` (list of canonical routes, both families),
    ``nexthops`` (``{id: canonical nexthop or group}``) and ``links`` (``{name: state}``, see
    :func:`parse_links`).
    ``desired_routes``: canonical desired routes with ``nexthops`` of
    ``{"via", "dev", "weight", "onlink", "id"}`` and optional ``group_id``/``group_type``/
    ``buckets``/``idle_timer``, plus ``state``.  ``health`` is ``{"ids": set, "devs": set}`` of
    members marked down.  Returns a :class:`RoutePlan` whose lines are ordered so that a route
    never disappears: member objects, then groups, then routes, then deletions.

    With ``use_objects`` a route of several nexthops, or of one nexthop and a ``group_id``, is a
    nexthop group (members as nexthop objects); a one-nexthop route without ``group_id`` is a
    plain route.

    Unusable devices: a multipath or group member needs its device up with carrier (the kernel
    refuses nexthop objects otherwise and deletes them on carrier loss); it is left out with a
    warning, and only a route without any usable member fails.  A plain route is left out with a
    warning when its device is missing or down; without carrier it is still made (the kernel
    accepts it and marks it ``linkdown``).
    """
    health = health or {"ids": set(), "devs": set()}
    live_routes = dict((route_key(r), r) for r in state["routes"])
    live_nh = state["nexthops"]
    links = state["links"]
    plan = RoutePlan()
    phases = {"members": [], "groups": [], "routes": [], "delete_routes": [], "delete_nh": []}
    wanted_nh = {}       # id -> desired nexthop object or group (all of this run)
    dropped_routes = set()
    replaced_keys = set()
    old_refs = set()     # nexthop ids referenced by live routes this run replaces or deletes
    seen = set()

    def note(name, before, after):
        if before != after:
            plan.entries.append((name, before, after))

    for want in desired_routes:
        key = route_key(want)
        name = describe_route(want)
        if key in seen:
            raise IpRouteError("%s is listed twice" % name)
        seen.add(key)
        have = live_routes.get(key)
        family = want["family"]
        if want.get("state", "present") == "absent":
            if have is not None:
                phases["delete_routes"].append(Line(route_line("del", have), name))
                dropped_routes.add(key)
                old_refs.update(_route_refs(have, live_nh))
                note(name, _route_view(have), None)
            continue
        hops = want["nexthops"]
        route = dict((k, want.get(k)) for k in ("family", "table", "destination", "metric", "protocol", "type", "src"))
        route["scope"] = want.get("scope")
        recreate = False
        resolved = {"destination": want["destination"], "table": want["table"], "family": family}
        # A route with a group_id stays a group with one member: the watchdog swaps the members of
        # that group, and a route that turned plain whenever one uplink was left would flip between
        # a plain route and a group (and its nexthop objects would be deleted and made again).
        if len(hops) == 1 and not (use_objects and want.get("group_id") is not None):
            hop = hops[0]
            if links.get(hop["dev"]) not in ("up", "no-carrier"):
                # The kernel refuses a route over a missing or administratively down device (a PPP
                # interface vanishes while its session is down): leave the route out, like an
                # unusable multipath member, so the other uplinks' routes are still made.
                _skip(plan, name, hop, links)
                continue
            route["nexthops"] = [dict(via=hop.get("via"), dev=hop["dev"], weight=1, onlink=bool(hop.get("onlink")))]
            resolved["nexthops"] = route["nexthops"]
        else:
            usable = []
            for hop in hops:
                if links.get(hop["dev"]) == "up":  # nexthop objects need carrier too
                    hop = dict(hop)
                    if hop.get("id") is None:
                        hop["id"] = default_nexthop_id(family, hop["dev"], hop.get("via"))
                    usable.append(hop)
                else:
                    _skip(plan, name, hop, links)
            if not usable:
                raise IpRouteError("%s: no usable nexthop (%s)" % (name, "; ".join(s["reason"] for s in plan.skipped if s["route"] == name)))
            active = [h for h in usable if h["id"] not in health["ids"] and h["dev"] not in health["devs"]]
            if not active:
                active = usable  # every member marked down: keep them all (same rule as the watchdog)
            for hop in usable:
                if hop not in active:
                    plan.held_down.append({"route": name, "id": hop["id"], "dev": hop["dev"], "via": hop.get("via")})
            if use_objects:
                group_id = want.get("group_id") or default_group_id(family, want["table"], want["destination"])
                for hop in usable:
                    obj = {"id": hop["id"], "family": family, "via": hop.get("via"), "dev": hop["dev"],
                           "onlink": bool(hop.get("onlink")), "protocol": protocol}
                    _want_nexthop(obj, live_nh, wanted_nh, phases["members"], note)
                group = {"id": group_id, "group": sorted((h["id"], int(h.get("weight") or 1)) for h in active),
                         "type": want.get("group_type") or "mpath", "buckets": want.get("buckets"),
                         "idle_timer": want.get("idle_timer"), "protocol": protocol}
                recreate = _want_group(group, live_nh, wanted_nh, note)
                if group_id in live_nh:
                    old_refs.update(_route_refs({"nhid": group_id}, live_nh))
                if recreate:
                    bridge = dict(route, nexthops=[dict(via=h.get("via"), dev=h["dev"], weight=int(h.get("weight") or 1),
                                                        onlink=bool(h.get("onlink"))) for h in active])
                    bridge.pop("nhid", None)
                    users = [r for r in state["routes"] if r.get("nhid") == group_id and route_key(r) != key]
                    if users:
                        raise IpRouteError("nexthop group %d must be recreated (type or buckets change) but %s also uses it; "
                                           "choose another group_id" % (group_id, describe_route(users[0])))
                    if have is not None:
                        phases["groups"].append(Line(route_line("replace", bridge), name + " (bridge while group %d is recreated)" % group_id))
                    if group_id in live_nh:
                        phases["groups"].append(Line("nexthop del id %d" % group_id, "nexthop group %d" % group_id))
                    phases["groups"].append(Line(group_line(group, "add"), "nexthop group %d" % group_id))
                elif wanted_nh[group_id].get("_changed"):
                    phases["groups"].append(Line(group_line(group), "nexthop group %d" % group_id))
                route["nhid"] = group_id
                resolved.update(group_id=group_id, members=[{"id": h["id"], "dev": h["dev"], "via": h.get("via"),
                                                             "weight": int(h.get("weight") or 1)} for h in active])
            else:
                if len(active) == 1:
                    active = [dict(active[0], weight=1)]  # the kernel keeps no weight on a plain route
                route["nexthops"] = sorted(
                    (dict(via=h.get("via"), dev=h["dev"], weight=int(h.get("weight") or 1), onlink=bool(h.get("onlink")))
                     for h in active), key=lambda h: (h["dev"] or "", h["via"] or ""))
                resolved["nexthops"] = route["nexthops"]
        plan.routes.append(resolved)
        before = _route_view(have) if have is not None else None
        after = _route_view(route)
        if route["scope"] is None:
            after["scope"] = before["scope"] if before else None  # not given: the kernel derives it
        if before != after or recreate:
            phases["routes"].append(Line(route_line("replace", route), name))
            replaced_keys.add(key)
            if have is not None:
                old_refs.update(_route_refs(have, live_nh))
            note(name, before, after)
    if purge_tables:
        for key in sorted(live_routes, key=repr):
            old = live_routes[key]
            if key in seen or old["table"] not in purge_tables or old["protocol"] != protocol:
                continue
            phases["delete_routes"].append(Line(route_line("del", old), describe_route(old)))
            dropped_routes.add(key)
            old_refs.update(_route_refs(old, live_nh))
            note(describe_route(old), _route_view(old), None)
    _collect_orphans(state, wanted_nh, old_refs, dropped_routes, replaced_keys, protocol, phases, note)
    for phase in ("members", "groups", "routes", "delete_routes", "delete_nh"):
        plan.lines.extend(phases[phase])
    return plan


def _skip(plan, name, hop, links):
    problem = {None: "does not exist", "down": "is down", "no-carrier": "has no carrier"}[links.get(hop["dev"])]
    reason = "device %s %s" % (hop["dev"], problem)
    plan.skipped.append({"route": name, "dev": hop["dev"], "via": hop.get("via"), "reason": reason})
    plan.warnings.append("%s: nexthop %s left out: %s" % (name, _hop_text(hop), reason))


def _hop_text(hop):
    return ("via %s dev %s" % (hop["via"], hop["dev"])) if hop.get("via") else "dev %s" % hop["dev"]


def member_ids(group_members):
    """Ids of ``[(id, weight), ...]``."""
    return [member for member, weight in group_members]  # pylint: disable=unused-variable


def _nexthop_view(nh):
    """A nexthop object as diff mode shows and comparison uses it."""
    return dict(nexthop_definition(nh), protocol=nh["protocol"])


def _route_refs(route, live_nh):
    """Nexthop ids a live route uses: its group and the group's members."""
    refs = set()
    if route.get("nhid") is not None:
        refs.add(route["nhid"])
        refs.update(member_ids((live_nh.get(route["nhid"]) or {}).get("group", [])))
    return refs


def _want_nexthop(obj, live_nh, wanted_nh, lines, note):
    name = "nexthop %d" % obj["id"]
    if obj["id"] in wanted_nh:
        if nexthop_definition(wanted_nh[obj["id"]]) != nexthop_definition(obj):
            raise IpRouteError("%s is wanted twice with different definitions: %s and %s"
                               % (name, _hop_text(wanted_nh[obj["id"]]), _hop_text(obj)))
        return
    wanted_nh[obj["id"]] = obj
    have = live_nh.get(obj["id"])
    if have is not None and "group" in have:
        raise IpRouteError("%s (%s) collides with live nexthop group %d; choose another id" % (name, _hop_text(obj), obj["id"]))
    if have is not None and nexthop_definition(have) != nexthop_definition(obj) and have["protocol"] != obj["protocol"]:
        raise IpRouteError("%s (%s, protocol %s) collides with a live nexthop object we do not own: %s (protocol %s)"
                           % (name, _hop_text(obj), obj["protocol"], _hop_text(have), have["protocol"]))
    if have is None or _nexthop_view(have) != _nexthop_view(obj):
        # a device-only IPv6 nexthop can only be written with ``ip -6``
        lines.append(Line(nexthop_line("replace", obj), name, "-6" if obj["family"] == "inet6" else None))
        note(name, _nexthop_view(have) if have else None, _nexthop_view(obj))


def _want_group(group, live_nh, wanted_nh, note):
    """Record a desired group; True when the live group must be deleted and added again."""
    name = "nexthop group %d" % group["id"]
    if group["id"] in wanted_nh:
        raise IpRouteError("%s is used by two routes of this run; give each its own group_id" % name)
    wanted_nh[group["id"]] = group
    have = live_nh.get(group["id"])
    if have is not None and "group" not in have:
        raise IpRouteError("%s collides with live nexthop object %d (%s); choose another group_id"
                           % (name, group["id"], _hop_text(have)))
    want_view = dict(group_definition(group), protocol=group["protocol"])
    have_view = dict(group_definition(have, group), protocol=have["protocol"]) if have else None
    if have is not None and have["protocol"] != group["protocol"] and group_definition(have, group) != group_definition(group):
        raise IpRouteError("%s (%s) collides with a live group we do not own: %s (protocol %s)"
                           % (name, group_line(group), group_line(have), have["protocol"]))
    if have_view != want_view:
        group["_changed"] = True
        note(name, have_view, want_view)
    return have is not None and (have.get("type", "mpath") != group["type"] or
                                 (group.get("buckets") is not None and have.get("buckets") != group["buckets"]))


def _collect_orphans(state, wanted_nh, old_refs, dropped_routes, replaced_keys, protocol, phases, note):
    """Delete groups and nexthop objects of ours that this run left without any user."""
    live_nh = state["nexthops"]
    still = set(wanted_nh)
    for group in wanted_nh.values():
        still.update(member_ids(group.get("group", [])))
    for route in state["routes"]:
        key = route_key(route)
        if key in dropped_routes or key in replaced_keys:
            continue
        if route.get("nhid") in wanted_nh:
            still.add(route["nhid"])  # its members are the desired ones, already counted
        else:
            still.update(_route_refs(route, live_nh))
    for nh_id, nh in live_nh.items():
        if "group" in nh and nh_id not in old_refs and nh_id not in wanted_nh:
            still.update(member_ids(nh["group"]))
    for nh_id in sorted(old_refs - still, key=lambda i: ("group" not in live_nh.get(i, {}), i)):
        nh = live_nh.get(nh_id)
        if nh is None or nh["protocol"] != protocol:
            continue
        phases["delete_nh"].append(Line("nexthop del id %d" % nh_id, "nexthop %d" % nh_id))
        view = dict(group_definition(nh), protocol=nh["protocol"]) if "group" in nh else \
            dict(nexthop_definition(nh), protocol=nh["protocol"])
        note(("nexthop group %d" if "group" in nh else "nexthop %d") % nh_id, view, None)


# -- the live system ------------------------------------------------------------------------

class IpRoute(object):
    """Reads the kernel's state through ``ip -j`` and applies batches.

    ``runner(argv, data=None) -> (rc, stdout, stderr)``; ``ip`` is the command prefix (for
    example ``["ip", "-n", "lab-gw"]`` in tests).
    """

    def __init__(self, runner=None, ip=("ip",)):
        self.runner = runner or subprocess_runner
        self.ip = list(ip)
        self._nexthops_supported = None  # asked once: the running kernel does not gain or lose it

    def _json(self, args, what):
        rc, out, err = self.runner(self.ip + ["-j", "-d", "-N"] + list(args))
        if rc != 0:
            raise IpRouteError("reading %s failed (ip %s): %s" % (what, " ".join(args), (err or out).strip()))
        out = (out or "").strip()
        if not out:
            return []
        try:
            return json.loads(out)
        except ValueError as exc:
            raise IpRouteError("reading %s: ip printed something that is not JSON (%s)" % (what, exc))

    def rules(self, family):
        return [parse_rule(raw, family) for raw in self._json([FAMILY_FLAG[family], "rule", "show"], "%s rules" % family)]

    def routes(self, family, table="all"):
        return [parse_route(raw, family) for raw in
                self._json([FAMILY_FLAG[family], "route", "show", "table", str(table)], "%s routes" % family)]

    def nexthops_supported(self):
        """True when ``ip nexthop`` works here (kernel 5.3+); runs ``ip`` only the first time."""
        if self._nexthops_supported is None:
            self._nexthops_supported = self.runner(self.ip + ["-j", "nexthop", "show"])[0] == 0
        return self._nexthops_supported

    def nexthops(self):
        """``{id: nexthop or group}``; empty where the kernel has no nexthop objects."""
        if not self.nexthops_supported():
            return {}
        inet6 = set(int(raw["id"]) for raw in self._json(["-6", "nexthop", "show"], "IPv6 nexthops"))
        result = {}
        for raw in self._json(["nexthop", "show"], "nexthops"):
            nh = parse_nexthop(raw, "inet6" if int(raw["id"]) in inet6 else "inet")
            result[nh["id"]] = nh
        return result

    def links(self):
        """``{name: "up" | "no-carrier" | "down"}``, see :func:`parse_links`."""
        rc, out, err = self.runner(self.ip + ["-j", "link", "show"])
        if rc != 0:
            raise IpRouteError("reading links failed: %s" % (err or out).strip())
        try:
            return parse_links(json.loads(out or "[]"))
        except (ValueError, KeyError, TypeError) as exc:
            raise IpRouteError("reading links: ip printed something unexpected (%s)" % exc)

    def apply(self, lines):
        """Run ``lines`` in order, one ``ip -batch -`` per run of lines with the same family flag.

        Reports the failing line and its object.
        """
        batches = []
        for line in lines:
            if batches and batches[-1][0] == line.flag:
                batches[-1][1].append(line)
            else:
                batches.append((line.flag, [line]))
        for flag, batch in batches:
            text = "".join(line.text + "\n" for line in batch)
            rc, out, err = self.runner(self.ip + ([flag] if flag else []) + ["-batch", "-"], data=text)
            if rc != 0:
                raise IpRouteError(batch_failure(batch, out, err))


def parse_links(raw_links):
    """``{name: state}`` from ``ip -j link show``: ``up`` (up, with carrier), ``no-carrier`` or ``down``."""
    states = {}
    for link in raw_links:
        flags = link.get("flags") or []
        states[link["ifname"]] = "down" if "UP" not in flags else "no-carrier" if "NO-CARRIER" in flags else "up"
    return states


def batch_failure(lines, out, err):
    """Message for a failed batch: the line ``ip`` stopped at, its object and ip's words."""
    message = " ".join(x for x in ((err or "").strip(), (out or "").strip()) if x)
    match = re.search(r"Command failed -:(\d+)", message)
    if match and 0 < int(match.group(1)) <= len(lines):
        line = lines[int(match.group(1)) - 1]
        detail = re.sub(r"\s*Command failed -:\d+\s*", " ", message).strip()
        return "%s: ip -batch line %s (%s) failed: %s" % (line.about, match.group(1), line.text, detail)
    return "ip -batch failed: %s" % message
