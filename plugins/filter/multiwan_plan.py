# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Everything the gateway role applies, computed once on the controller (filter ``multiwan_plan``).

One derivation: the role hands the lists below to the modules unchanged, and the watchdog config
in the plan carries the very same route dicts, so the watchdog later recreates exactly the routes
``ip_route`` made. Ids and priorities are the ones of docs/design.md.

Also ``multiwan_route_conflicts``: the routes of a plan that would replace a live route some other
software owns (same table, destination and metric, another protocol). The role refuses to run its
route stage over such a route instead of taking it over.

The documentation of the filters is in ``multiwan_plan.yml`` and ``multiwan_route_conflicts.yml``
beside this file. Standard library only (``ipaddress``).
"""

from __future__ import annotations

import copy
import ipaddress
import json
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.multiwan.linux.plugins.filter.multiwan_validate import multiwan_problems
from ansible_collections.multiwan.linux.plugins.module_utils import _watchdog as watchdog_core

PLAN_VERSION = 1
PROTOCOL = 109                       # route/rule/nexthop protocol tag "multiwan" (0x6d)
MAIN_TABLE = "main"
MAIN_TABLE_ID = 254
LAN_RULE_PRIORITY = 1000             # to <LAN> lookup main
MARK_RULE_BASE = 2000                # fwmark <table << 16>/0x00ff0000 lookup <table>: reserved (sticky sessions)
SOURCE_RULE_BASE = 3000              # from <uplink address> lookup <table>
MARK_SHIFT = 16
MARK_MASK = 0x00FF0000
NEXTHOP_ID_BASE = {"inet": 0x6D000000, "inet6": 0x6D100000}
GROUP_ID = {"inet": 0x6E000001, "inet6": 0x6E000002}
DEFAULT_METRIC = {"inet": 0, "inet6": 1024}   # what the kernel stores for "no metric"
STATE_FILE = {"inet": "/run/multiwan/state.json", "inet6": "/run/multiwan/state6.json"}
WEIGHT_MAX_MODULE = 255              # ip_route accepts 1..255 (the kernel 1..256)
SYSCTL_FILE = "/etc/sysctl.d/90-multiwan.conf"
NAT_TABLE = "multiwan"
FAMILIES = ("inet", "inet6")
# Per-flow multipath hashing. Policy 3 with the 5-tuple fields (0x0037: source and destination
# address, protocol, source and destination port; kernel 5.12) instead of policy 1: policy 1 uses
# a hash the packet already carries when it has one (skb->l4_hash), and packets that reach the
# gateway over a veth (containers, namespaces - every client of the lab) carry their socket's
# random hash, which changes for a new socket on a reused port and on TCP retransmission timeouts.
# The same connection then leaves by another uplink: masquerade re-translates it (the connection
# breaks), snat sends the other uplink's source address, which the ISP drops. Measured in the lab:
# 2 to 6 of 1000 UDP flows under policy 1, none in 3000 under policy 3.
HASH_POLICY = "3"
HASH_FIELDS = "0x0037"
# multiwan_watchdog keys the plan owns; anything else is passed to the watchdog config as is.
WATCHDOG_OWNED = ("group", "uplinks", "state_file", "protocol", "rules")


def _family(version):
    return "inet6" if version == 6 else "inet"


def _sysctl_if(name):
    """An interface name as a sysctl key component (`eth0.100` is `eth0/100` in sysctl keys)."""
    return name.replace(".", "/")


def _dedupe(items):
    seen, out = set(), []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


class _Uplink(object):
    """One validated uplink with everything derived from it."""

    def __init__(self, raw, host):
        self.raw = raw
        self.name = raw["name"]
        self.interface = raw["interface"]
        self.iface = ipaddress.ip_interface(raw["address"])
        self.family = _family(self.iface.version)
        self.address = str(self.iface.ip)
        self.gateway = str(ipaddress.ip_address(raw["gateway"])) if raw.get("gateway") is not None else None
        self.peer = str(ipaddress.ip_address(raw["peer"])) if raw.get("peer") is not None else None
        self.table = int(raw["table"])
        self.weight = int(raw.get("weight") if raw.get("weight") is not None else 1)
        if self.weight > WEIGHT_MAX_MODULE:
            raise AnsibleFilterError(
                "%s: multiwan_uplinks (%s).weight: %d is not supported yet: module multiwan.linux.ip_route "
                "accepts 1..%d; scale the weights of this gateway down (they are relative)"
                % (host, self.name, self.weight, WEIGHT_MAX_MODULE))
        self.nat = raw.get("nat") or "masquerade"
        self.probe_targets = _dedupe(str(ipaddress.ip_address(t)) for t in raw["probe_targets"])
        self.pinned = _dedupe(str(ipaddress.ip_network(r, strict=True)) for r in (raw.get("routes") or []))
        self.metric = DEFAULT_METRIC[self.family]
        self.nexthop_id = NEXTHOP_ID_BASE[self.family] + self.table
        self.mark = (self.table << MARK_SHIFT) & MARK_MASK

    @property
    def table_text(self):
        return str(self.table)

    def hop(self):
        """The uplink's nexthop without id/weight: `via GW dev IF`, or `dev IF` when device-only."""
        hop = {"dev": self.interface}
        if self.gateway is not None:
            hop = {"via": self.gateway, "dev": self.interface}
        return hop

    def own_routes(self):
        """Routes over this uplink only (its table, and its pinned routes in main)."""
        routes = []
        connected = self._connected_prefix()
        if connected is not None:
            route = {"table": self.table_text, "destination": connected, "family": self.family,
                     "metric": self.metric, "nexthops": [{"dev": self.interface}], "src": self.address}
            if self.family == "inet":
                route["scope"] = "link"
            routes.append(route)
        routes.append({"table": self.table_text, "destination": "default", "family": self.family,
                       "metric": self.metric, "nexthops": [self.hop()]})
        for prefix in self.pinned:
            routes.append({"table": MAIN_TABLE, "destination": prefix, "family": self.family,
                           "metric": self.metric, "nexthops": [self.hop()]})
        return routes

    def _connected_prefix(self):
        """The uplink's on-link prefix: its subnet, or the peer of a point-to-point /32 (/128)."""
        net = self.iface.network
        if net.num_addresses > 1:
            return str(net.with_prefixlen)
        if self.peer is not None:
            return str(ipaddress.ip_network(self.peer).with_prefixlen)
        return None  # a bare /32 without a known peer: the default route names the device


def _group_route(family, uplinks):
    hops = []
    for up in uplinks:
        hop = dict(up.hop(), weight=up.weight, id=up.nexthop_id)
        hops.append(hop)
    return {"table": MAIN_TABLE, "destination": "default", "family": family,
            "metric": DEFAULT_METRIC[family], "group_id": GROUP_ID[family], "nexthops": hops}


def _rule_family(rule):
    if rule.get("family"):
        return rule["family"]
    address = rule.get("from") or rule.get("to")
    return _family(ipaddress.ip_network(address, strict=False).version)


def _watchdog(family, uplinks, settings, rules):
    config = dict((k, copy.deepcopy(v)) for k, v in settings.items() if k not in WATCHDOG_OWNED)
    config.update({
        # restored by the watchdog at start (a reboot), never removed by it
        "rules": [dict(rule, family=family) for rule in rules if _rule_family(rule) == family],
        "state_file": STATE_FILE[family],
        "protocol": PROTOCOL,
        "group": {"id": GROUP_ID[family], "family": family, "table": MAIN_TABLE, "destination": "default",
                  "metric": DEFAULT_METRIC[family], "type": "mpath"},
        "uplinks": [],
    })
    for up in uplinks:
        item = {"name": up.name, "interface": up.interface, "address": up.address, "onlink": False,
                "table": up.table, "weight": up.weight, "nexthop_id": up.nexthop_id,
                "probe_targets": list(up.probe_targets), "routes": up.own_routes()}
        if up.gateway is not None:
            item["gateway"] = up.gateway
        item.update(copy.deepcopy(up.raw.get("watchdog") or {}))  # per-uplink overrides (timeout, ...)
        config["uplinks"].append(item)
    return config


def multiwan_plan(data, host=None):
    """The plan of one gateway (see multiwan_plan.yml) from its multiwan_* variables."""
    if not isinstance(data, Mapping):
        raise AnsibleFilterError("multiwan_plan: input must be a mapping of multiwan_* variables")
    host = host or "gateway"
    errors = multiwan_problems(data, host=host)
    if errors:
        raise AnsibleFilterError("multiwan_plan: the inventory has problems (run the role's validation):\n  "
                                 + "\n  ".join(errors))
    uplinks = [_Uplink(raw, host) for raw in data["multiwan_uplinks"]]
    lans = [ipaddress.ip_network(n, strict=True) for n in data["multiwan_lan_networks"]]
    settings = data.get("multiwan_watchdog") or {}
    families = [f for f in FAMILIES if any(up.family == f for up in uplinks)]

    rt_tables = [{"name": up.name, "id": up.table} for up in uplinks]

    sysctls = {}
    if "inet" in families:
        sysctls.update({
            "net.ipv4.ip_forward": "1",
            "net.ipv4.conf.all.rp_filter": "2",
            "net.ipv4.fib_multipath_hash_policy": HASH_POLICY,
            "net.ipv4.fib_multipath_hash_fields": HASH_FIELDS,
            "net.ipv4.fib_multipath_use_neigh": "1",
        })
        for up in uplinks:
            if up.family == "inet":
                sysctls["net.ipv4.conf.%s.rp_filter" % _sysctl_if(up.interface)] = "2"
    if "inet6" in families:
        sysctls.update({
            "net.ipv6.conf.all.forwarding": "1",
            "net.ipv6.fib_multipath_hash_policy": HASH_POLICY,
            "net.ipv6.fib_multipath_hash_fields": HASH_FIELDS,
        })

    rules = []
    for lan in lans:
        rules.append({"priority": LAN_RULE_PRIORITY, "to": str(lan.with_prefixlen), "table": MAIN_TABLE})
    sticky = boolean(data.get("multiwan_sticky_connections", True), strict=True)
    if sticky:
        # Connections marked by the NAT table's mark chains keep their uplink (issue 6).
        for up in uplinks:
            rules.append({"priority": MARK_RULE_BASE + up.table, "family": up.family, "fwmark": "%#x" % up.mark,
                          "fwmask": "%#x" % MARK_MASK, "table": up.table_text})
    for up in uplinks:
        rules.append({"priority": SOURCE_RULE_BASE + up.table, "from": up.address, "table": up.table_text})

    table_routes, main_routes = [], []
    for up in uplinks:
        for route in up.own_routes():
            (main_routes if route["table"] == MAIN_TABLE else table_routes).append(route)
    for family in families:
        main_routes.append(_group_route(family, [up for up in uplinks if up.family == family]))

    nat_families = set(up.family for up in uplinks)
    nat = {
        "family": "ip" if nat_families == {"inet"} else ("ip6" if nat_families == {"inet6"} else "inet"),
        "table": NAT_TABLE,
        "uplinks": [],
        "source_networks": [str(lan.with_prefixlen) for lan in lans if _family(lan.version) in nat_families],
        "exclude_destinations": [str(lan.with_prefixlen) for lan in lans if _family(lan.version) in nat_families],
    }
    for up in sorted(uplinks, key=lambda u: u.interface):
        item = {"interface": up.interface}
        if up.nat == "snat":
            item["snat_address"] = up.address
        if sticky:
            item["mark"] = up.mark
        nat["uplinks"].append(item)
    nat["mark_mask"] = MARK_MASK
    by_name = dict((up.name, up) for up in uplinks)
    nat["port_forwards"] = []
    for forward in data.get("multiwan_port_forwards") or []:
        item = {"interface": by_name[forward["uplink"]].interface, "protocol": forward.get("protocol") or "tcp",
                "port": int(forward["port"]), "to": str(ipaddress.ip_address(forward["to"]))}
        if forward.get("to_port") is not None:
            item["to_port"] = int(forward["to_port"])
        nat["port_forwards"].append(item)

    watchdog = dict((family, _watchdog(family, [up for up in uplinks if up.family == family], settings, rules))
                    for family in families)
    for family, config in watchdog.items():
        # The daemon's own check, on the controller: a config it would refuse stops the run here,
        # before anything on the gateway changed.
        try:
            watchdog_core.load_config(copy.deepcopy(config))
        except watchdog_core.ConfigError as exc:
            raise AnsibleFilterError("%s: the %s watchdog config computed from multiwan_watchdog and multiwan_uplinks "
                                     "is refused by the watchdog: %s" % (host, family, exc))

    return {
        "version": PLAN_VERSION,
        "host": host,
        "protocol": PROTOCOL,
        "families": families,
        "uplinks": [{"name": up.name, "interface": up.interface, "family": up.family, "address": up.address,
                     "table": up.table, "weight": up.weight, "mark": up.mark, "nexthop_id": up.nexthop_id,
                     "rule_priority": SOURCE_RULE_BASE + up.table,
                     "mark_rule_priority": MARK_RULE_BASE + up.table}
                    for up in uplinks],
        "rt_tables": rt_tables,
        "sysctl_file": SYSCTL_FILE,
        "sysctls": dict(sorted(sysctls.items())),
        "rules": rules,
        "table_routes": table_routes,
        "main_routes": main_routes,
        "route_tables": sorted(set(up.table for up in uplinks)) + [MAIN_TABLE_ID],
        "health_state_file": [STATE_FILE[family] for family in families],
        "nat": nat,
        "watchdog": watchdog.get("inet"),
        "watchdog6": watchdog.get("inet6"),
    }


# -- conflicts with live routes ---------------------------------------------------------------

def _live_key(raw, family):
    """(family, table, destination, metric) of one `ip -j -d -N route show table all` entry, or None."""
    if str(raw.get("type", "1")) not in ("1", "unicast"):
        return None
    dst = raw.get("dst")
    if dst is None:
        return None
    if dst != "default":
        dst = str(ipaddress.ip_network(dst, strict=False).with_prefixlen)
    table = int(raw.get("table", MAIN_TABLE_ID)) if str(raw.get("table", MAIN_TABLE_ID)).isdigit() else raw.get("table")
    if table == "main":
        table = MAIN_TABLE_ID
    metric = int(raw.get("metric", 0))
    if family == "inet6" and metric == 0:
        metric = 1024
    return (family, table, dst, metric)


def _protocol(raw):
    proto = str(raw.get("protocol", "0"))
    return int(proto) if proto.isdigit() else proto


def _parse_live(live):
    if isinstance(live, str):
        live = json.loads(live or "[]")
    return live or []


def multiwan_route_conflicts(plan, live4, live6=None):
    """Live routes another owner holds where the plan wants a route (same table/destination/metric).

    ``live4``/``live6``: output (text or parsed) of ``ip -j -d -N -4|-6 route show table all``.
    Returns one message per conflict.
    """
    if not isinstance(plan, Mapping) or "table_routes" not in plan:
        raise AnsibleFilterError("multiwan_route_conflicts: the first argument must be a multiwan_plan result")
    live = {}
    for family, raw_list in (("inet", _parse_live(live4)), ("inet6", _parse_live(live6))):
        for raw in raw_list:
            key = _live_key(raw, family)
            if key is not None:
                live.setdefault(key, raw)
    problems = []
    for route in list(plan["table_routes"]) + list(plan["main_routes"]):
        table = MAIN_TABLE_ID if route["table"] == MAIN_TABLE else int(route["table"])
        key = (route["family"], table, route["destination"], route["metric"])
        raw = live.get(key)
        if raw is None or _protocol(raw) == plan.get("protocol", PROTOCOL):
            continue
        owner = "proto %s" % raw.get("protocol", "?")
        via = " via %s" % raw["gateway"] if raw.get("gateway") else ""
        dev = " dev %s" % raw["dev"] if raw.get("dev") else ""
        problems.append("%s: table %s already holds %s%s%s metric %d (%s), which multiwan.linux does not own; "
                        "the role never replaces another owner's route: remove it or give it another metric"
                        % (plan.get("host", "gateway"), route["table"], route["destination"], via, dev,
                           route["metric"], owner))
    return problems


def multiwan_purge_tables(plan, live4, live6=None):
    """Tables ip_route must purge: the plan's, plus every table where live routes carry our protocol."""
    tables = set(plan["route_tables"])
    for raw_list in (_parse_live(live4), _parse_live(live6)):
        for raw in raw_list:
            if _protocol(raw) != plan.get("protocol", PROTOCOL):
                continue
            table = str(raw.get("table", MAIN_TABLE_ID))
            tables.add(MAIN_TABLE_ID if table == "main" else int(table) if table.isdigit() else table)
    return [str(t) for t in sorted(tables, key=lambda t: (isinstance(t, str), t))]


def multiwan_sysctl_drift(plan, live):
    """Keys of ``plan.sysctls`` whose live value (``sysctl -e KEY...`` output) differs.

    Keys the kernel does not have (an uplink interface that does not exist yet, such as a PPP
    device while its session is down) are not drift: ``sysctl -e`` skips them, and so does this.
    """
    now = {}
    for line in (live or "").splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            now[key.strip()] = " ".join(value.split())
    return [key for key, value in plan["sysctls"].items() if key in now and _norm(now[key]) != _norm(value)]


def _norm(value):
    """A sysctl value for comparison: the kernel prints 0x0037 back as 55."""
    text = " ".join(str(value).split())
    try:
        return str(int(text, 0))
    except ValueError:
        return text


class FilterModule(object):
    """multiwan.linux plan filters."""

    def filters(self):
        return {
            "multiwan_plan": multiwan_plan,
            "multiwan_route_conflicts": multiwan_route_conflicts,
            "multiwan_purge_tables": multiwan_purge_tables,
            "multiwan_sysctl_drift": multiwan_sysctl_drift,
        }
