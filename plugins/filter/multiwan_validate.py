# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller-side validation of a gateway's multiwan inventory (filter ``multiwan_problems``).

Runs on the controller only, before anything on the gateway is touched. Uses the standard
library ``ipaddress`` module (strict: no host bits in networks, no leading zeros, no zone ids),
so it needs nothing beyond ansible-core on the controller.

The documentation of the filter is in ``multiwan_problems.yml`` beside this file.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.multiwan.linux.plugins.module_utils import _watchdog

# Field names of one uplink; anything else is refused (a typo such as "gatway" would otherwise
# silently turn an uplink into a device-only one).
UPLINK_FIELDS = ("name", "interface", "address", "gateway", "peer", "table", "weight",
                 "probe_targets", "routes", "nat", "watchdog")
UPLINK_REQUIRED = ("name", "interface", "address", "table", "probe_targets")

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
# Built into the kernel/ip (rt_tables), plus the words `ip route show table ...` treats specially.
RESERVED_TABLE_NAMES = ("unspec", "default", "main", "local", "all", "cache")
RESERVED_TABLE_IDS = {0: "unspec", 253: "default", 254: "main", 255: "local"}
TABLE_MIN = 1
TABLE_MAX = 252
WEIGHT_MIN = 1
WEIGHT_MAX = 256
MARK_SHIFT = 16
MARK_MASK = 0x00FF0000
NAT_MODES = ("masquerade", "snat")
IFNAMSIZ = 16
# Names the kernel refuses, or that clash with /proc/sys/net/ipv*/conf/{all,default}.
RESERVED_INTERFACE_NAMES = (".", "..", "all", "default", "lo")

SEVERITIES = ("error", "warning")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str(value):
    return isinstance(value, str)


def _is_list(value):
    return isinstance(value, (list, tuple))


def _type_name(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def _show(value):
    """A value as the admin wrote it, short."""
    if isinstance(value, str):
        text = repr(str(value))
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _parse_address(text):
    """ip_address() that refuses zone ids (`fe80::1%eth0`), which `ip route` does not accept."""
    if "%" in text:
        raise ValueError("zone ids (%...) are not accepted")
    return ipaddress.ip_address(text)


def _unicast_problem(addr):
    """Why ``addr`` cannot be a unicast host address of a gateway, ISP router or probe target."""
    if addr.is_unspecified:
        return "is the unspecified address"
    if addr.is_multicast:
        return "is a multicast address"
    if addr.is_loopback:
        return "is a loopback address"
    if addr.version == 4 and addr.is_link_local:
        return "is a link-local address"
    if addr.version == 4 and addr.is_reserved:
        return "is in the reserved range 240.0.0.0/4"
    return None


def _has_broadcast(net):
    """IPv4 subnets with a network and a broadcast address (not /31 and /32, RFC 3021)."""
    return net.version == 4 and net.prefixlen <= 30


def _has_anycast(net):
    """IPv6 subnets whose first address is the subnet-router anycast address (not /127, /128)."""
    return net.version == 6 and net.prefixlen <= 126


def _mark(table):
    return (table << MARK_SHIFT) & MARK_MASK


class _Checker(object):
    """Collects problems of one host; each problem is (severity, path, message)."""

    def __init__(self, host):
        self.host = host
        self.problems = []

    def add(self, severity, path, message):
        self.problems.append((severity, path, message))

    def error(self, path, message):
        self.add("error", path, message)

    def warning(self, path, message):
        self.add("warning", path, message)

    def render(self, severity):
        prefix = "%s: " % self.host if self.host else ""
        return ["%s%s: %s" % (prefix, path, message)
                for sev, path, message in self.problems if sev == severity]


class _Uplink(object):
    """What the cross-uplink checks need from one uplink (None where the field was bad)."""

    def __init__(self, index):
        self.index = index
        self.label = "multiwan_uplinks[%d]" % index
        self.name = None
        self.interface = None
        self.interface_addr = None   # ipaddress.IPv4Interface / IPv6Interface
        self.table = None
        self.probe_targets = []       # (position, ip_address)
        self.routes = []              # (position, ip_network)

    def field(self, name):
        return "%s.%s" % (self.label, name)

    @property
    def network(self):
        return self.interface_addr.network if self.interface_addr is not None else None

    @property
    def family(self):
        return self.interface_addr.version if self.interface_addr is not None else None

    def describe(self):
        return "multiwan_uplinks[%d]%s" % (self.index, " (%s)" % self.name if self.name else "")


def _check_lan_networks(chk, value):
    """Returns [(position, network)] of the well-formed LAN prefixes."""
    path = "multiwan_lan_networks"
    if value is None:
        chk.error(path, "missing: list the LAN prefixes behind the gateway (e.g. [10.1.0.0/16])")
        return []
    if not _is_list(value):
        chk.error(path, "must be a list of prefixes, got %s %s" % (_type_name(value), _show(value)))
        return []
    if not value:
        chk.error(path, "is empty: list at least one LAN prefix (without one nothing is NATed and "
                        "LAN traffic would leave un-translated)")
        return []
    nets = []
    for pos, item in enumerate(value):
        ipath = "%s[%d]" % (path, pos)
        net = _parse_network(chk, ipath, item, "LAN prefix")
        if net is None:
            continue
        if net.prefixlen == 0:
            chk.error(ipath, "%s covers every address and cannot be a LAN prefix" % net)
            continue
        if net.network_address.is_multicast or net.network_address.is_loopback or (
                net.version == 4 and net.network_address.is_link_local):
            chk.error(ipath, "%s is not a unicast range usable as a LAN" % net)
            continue
        nets.append((pos, net))
    for i, (pos_a, net_a) in enumerate(nets):
        for pos_b, net_b in nets[i + 1:]:
            if net_a.version != net_b.version or not net_a.overlaps(net_b):
                continue
            if net_a == net_b:
                chk.error("%s[%d]" % (path, pos_b), "%s is listed twice (also at [%d])" % (net_b, pos_a))
            else:
                chk.error("%s[%d]" % (path, pos_b), "%s overlaps %s[%d] %s" % (net_b, path, pos_a, net_a))
    return nets


def _parse_network(chk, path, item, what):
    """A strict network from a string with an explicit prefix length, or None (problem recorded)."""
    if not _is_str(item):
        chk.error(path, "must be a %s string like 10.1.0.0/16, got %s %s" % (what, _type_name(item), _show(item)))
        return None
    if "/" not in item:
        chk.error(path, "%s has no prefix length; write it as %s/%d or the whole network"
                  % (_show(item), item, 128 if ":" in item else 32))
        return None
    if "%" in item:
        chk.error(path, "%s: zone ids (%%...) are not accepted" % _show(item))
        return None
    try:
        return ipaddress.ip_network(item, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(item, strict=False)
        except ValueError:
            chk.error(path, "%s is not a valid %s: %s" % (_show(item), what, exc))
            return None
        chk.error(path, "%s has host bits set; the network is %s" % (_show(item), loose))
        return None


def _check_name(chk, up, value):
    path = up.field("name")
    if not _is_str(value):
        chk.error(path, "must be a string, got %s %s" % (_type_name(value), _show(value)))
        return
    if not NAME_RE.match(value):
        chk.error(path, "%s is not a valid routing table name (a letter, then up to 31 letters, "
                        "digits, '_' or '-')" % _show(value))
        return
    if value.lower() in RESERVED_TABLE_NAMES:
        chk.error(path, "%s is reserved by ip/rt_tables (%s)" % (_show(value), ", ".join(RESERVED_TABLE_NAMES)))
        return
    up.name = value


def _check_interface(chk, up, value):
    path = up.field("interface")
    if not _is_str(value):
        chk.error(path, "must be a string, got %s %s" % (_type_name(value), _show(value)))
        return
    if not value or len(value) >= IFNAMSIZ:
        chk.error(path, "%s is not a valid Linux interface name (1 to %d characters)" % (_show(value), IFNAMSIZ - 1))
        return
    if "/" in value or ":" in value or any(ch.isspace() for ch in value):
        chk.error(path, "%s is not a valid Linux interface name (no '/', ':' or whitespace)" % _show(value))
        return
    if value in RESERVED_INTERFACE_NAMES:
        chk.error(path, "%s cannot be an uplink interface" % _show(value))
        return
    up.interface = value


def _check_address(chk, up, value):
    path = up.field("address")
    if not _is_str(value):
        chk.error(path, "must be a string like 100.64.1.2/24, got %s %s" % (_type_name(value), _show(value)))
        return
    if "/" not in value:
        chk.error(path, "%s has no prefix length; write the address as configured on the interface, "
                        "e.g. %s/24" % (_show(value), value))
        return
    if "%" in value:
        chk.error(path, "%s: zone ids (%%...) are not accepted" % _show(value))
        return
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError as exc:
        chk.error(path, "%s is not a valid interface address: %s" % (_show(value), exc))
        return
    reason = _unicast_problem(iface.ip)
    if reason is None and iface.version == 6 and iface.ip.is_link_local:
        reason = "is a link-local address (the uplink needs a routable address)"
    if reason:
        chk.error(path, "%s %s" % (iface.ip, reason))
        return
    net = iface.network
    if _has_broadcast(net) and iface.ip == net.network_address:
        chk.error(path, "%s is the network address of %s" % (iface.ip, net))
        return
    if _has_broadcast(net) and iface.ip == net.broadcast_address:
        chk.error(path, "%s is the broadcast address of %s" % (iface.ip, net))
        return
    if _has_anycast(net) and iface.ip == net.network_address:
        chk.error(path, "%s is the subnet-router anycast address of %s" % (iface.ip, net))
        return
    up.interface_addr = iface


def _check_gateway(chk, up, value):
    path = up.field("gateway")
    if not _is_str(value):
        chk.error(path, "must be an address string like 100.64.1.1, got %s %s" % (_type_name(value), _show(value)))
        return
    if "/" in value:
        chk.error(path, "%s must be a plain address without a prefix length" % _show(value))
        return
    try:
        gw = _parse_address(value)
    except ValueError as exc:
        chk.error(path, "%s is not a valid address: %s" % (_show(value), exc))
        return
    reason = _unicast_problem(gw)
    if reason:
        chk.error(path, "%s %s" % (gw, reason))
        return
    iface = up.interface_addr
    if iface is None:
        return  # the address problem is reported already
    net = iface.network
    if gw.version != iface.version:
        chk.error(path, "%s is IPv%d but the uplink address %s is IPv%d" % (gw, gw.version, iface, iface.version))
        return
    if gw == iface.ip:
        chk.error(path, "%s is the gateway's own address on this uplink" % gw)
        return
    if gw.version == 6 and gw.is_link_local:
        return  # IPv6 routers are usually reached by their link-local address on the interface
    if gw not in net:
        hint = ""
        if net.num_addresses == 1:
            hint = " (for a point-to-point uplink omit gateway and set peer)"
        chk.error(path, "%s is not inside %s%s" % (gw, net, hint))
        return
    if _has_broadcast(net) and gw == net.network_address:
        chk.error(path, "%s is the network address of %s" % (gw, net))
    elif _has_broadcast(net) and gw == net.broadcast_address:
        chk.error(path, "%s is the broadcast address of %s" % (gw, net))
    elif _has_anycast(net) and gw == net.network_address:
        chk.error(path, "%s is the subnet-router anycast address of %s" % (gw, net))


def _check_peer(chk, up, value, has_gateway):
    path = up.field("peer")
    if has_gateway:
        chk.error(path, "is only for device-only uplinks; this uplink has a gateway (remove one of them)")
        return
    if not _is_str(value):
        chk.error(path, "must be an address string, got %s %s" % (_type_name(value), _show(value)))
        return
    if "/" in value:
        chk.error(path, "%s must be a plain address without a prefix length" % _show(value))
        return
    try:
        peer = _parse_address(value)
    except ValueError as exc:
        chk.error(path, "%s is not a valid address: %s" % (_show(value), exc))
        return
    reason = _unicast_problem(peer)
    if reason:
        chk.error(path, "%s %s" % (peer, reason))
        return
    iface = up.interface_addr
    if iface is None:
        return
    if peer.version != iface.version:
        chk.error(path, "%s is IPv%d but the uplink address %s is IPv%d" % (peer, peer.version, iface, iface.version))
    elif peer == iface.ip:
        chk.error(path, "%s is the gateway's own address on this uplink" % peer)


def _check_table(chk, up, value):
    path = up.field("table")
    if not _is_int(value):
        chk.error(path, "must be an integer routing table id, got %s %s" % (_type_name(value), _show(value)))
        return
    if value in RESERVED_TABLE_IDS:
        chk.error(path, "%d is the reserved table '%s'; use %d..%d" % (value, RESERVED_TABLE_IDS[value], TABLE_MIN, TABLE_MAX))
    elif not TABLE_MIN <= value <= TABLE_MAX:
        chk.error(path, "%d is out of range %d..%d (the fwmark is table << 16 under 0x%08x)"
                  % (value, TABLE_MIN, TABLE_MAX, MARK_MASK))
    else:
        up.table = value


def _check_weight(chk, up, value):
    path = up.field("weight")
    if not _is_int(value):
        chk.error(path, "must be an integer %d..%d, got %s %s" % (WEIGHT_MIN, WEIGHT_MAX, _type_name(value), _show(value)))
    elif not WEIGHT_MIN <= value <= WEIGHT_MAX:
        chk.error(path, "%d is out of range %d..%d" % (value, WEIGHT_MIN, WEIGHT_MAX))


def _check_nat(chk, up, value):
    path = up.field("nat")
    if not _is_str(value) or value not in NAT_MODES:
        chk.error(path, "%s is not one of %s" % (_show(value), ", ".join(NAT_MODES)))


def _check_probe_targets(chk, up, value):
    path = up.field("probe_targets")
    if not _is_list(value):
        chk.error(path, "must be a list of host addresses, got %s %s" % (_type_name(value), _show(value)))
        return
    if not value:
        chk.error(path, "is empty: list at least one host the watchdog pings through this uplink")
        return
    seen = {}
    for pos, item in enumerate(value):
        ipath = "%s[%d]" % (path, pos)
        if not _is_str(item):
            chk.error(ipath, "must be an address string, got %s %s" % (_type_name(item), _show(item)))
            continue
        if "/" in item:
            chk.error(ipath, "%s is a network; probe targets are single host addresses" % _show(item))
            continue
        try:
            addr = _parse_address(item)
        except ValueError as exc:
            chk.error(ipath, "%s is not a valid address: %s" % (_show(item), exc))
            continue
        reason = _unicast_problem(addr)
        if reason is None and addr.version == 6 and addr.is_link_local:
            reason = "is a link-local address"
        if reason:
            chk.error(ipath, "%s %s" % (addr, reason))
            continue
        if up.interface_addr is not None:
            if addr.version != up.family:
                chk.error(ipath, "%s is IPv%d but the uplink address %s is IPv%d"
                          % (addr, addr.version, up.interface_addr, up.family))
                continue
            if addr == up.interface_addr.ip:
                chk.error(ipath, "%s is the gateway's own address on this uplink" % addr)
                continue
        if addr in seen:
            chk.warning(ipath, "%s is listed twice (also at [%d])" % (addr, seen[addr]))
            continue
        seen[addr] = pos
        up.probe_targets.append((pos, addr))


def _check_routes(chk, up, value):
    path = up.field("routes")
    if not _is_list(value):
        chk.error(path, "must be a list of prefixes, got %s %s" % (_type_name(value), _show(value)))
        return
    seen = {}
    for pos, item in enumerate(value):
        ipath = "%s[%d]" % (path, pos)
        net = _parse_network(chk, ipath, item, "prefix")
        if net is None:
            continue
        if net.prefixlen == 0:
            chk.error(ipath, "%s would send all traffic by this uplink; use weight to share traffic" % net)
            continue
        if up.family is not None and net.version != up.family:
            chk.error(ipath, "%s is IPv%d but the uplink address %s is IPv%d"
                      % (net, net.version, up.interface_addr, up.family))
            continue
        if net in seen:
            chk.warning(ipath, "%s is listed twice (also at [%d])" % (net, seen[net]))
            continue
        seen[net] = pos
        up.routes.append((pos, net))


# Watchdog settings an inventory may give (the role computes the rest: group, uplinks, state file,
# protocol). The watchdog's own checks (module_utils/_watchdog.py) judge the values, so the
# controller and the daemon never disagree on what is valid.
WATCHDOG_SETTINGS = tuple(sorted(set(_watchdog.DEFAULTS) - {"state_file", "protocol"}))
WATCHDOG_STRINGS = ("hooks_dir", "metrics_file", "conntrack")
WATCHDOG_OWNED = ("group", "uplinks", "state_file", "protocol", "rules")


def _check_watchdog(chk, path, value, allowed):
    if not isinstance(value, Mapping):
        chk.error(path, "must be a mapping of watchdog settings, got %s %s" % (_type_name(value), _show(value)))
        return
    for key in value:
        if key in WATCHDOG_OWNED:
            chk.error("%s.%s" % (path, key), "is computed by the role (from multiwan_uplinks and docs/design.md); "
                      "leave it out")
        elif key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = " (did you mean %s?)" % close[0] if close else ""
            chk.error("%s.%s" % (path, key), "unknown setting%s; known settings: %s" % (hint, ", ".join(allowed)))
    for key in WATCHDOG_STRINGS:
        if key in value and value[key] is not None and not _is_str(value[key]):
            chk.error("%s.%s" % (path, key), "must be a string, got %s %s" % (_type_name(value[key]), _show(value[key])))
        elif key in ("hooks_dir", "metrics_file") and value.get(key) and not str(value[key]).startswith("/"):
            chk.error("%s.%s" % (path, key), "must be an absolute path, got %s" % _show(value[key]))
    numbers = dict((k, v) for k, v in value.items() if k in allowed and k not in WATCHDOG_STRINGS)
    for key in sorted(numbers):
        try:
            _watchdog.check_settings({key: numbers[key]}, "", partial=True)
        except _watchdog.ConfigError as exc:
            chk.error("%s.%s" % (path, key), str(exc).split(": ", 1)[-1])


def _check_uplink(chk, index, value):
    up = _Uplink(index)
    if not isinstance(value, Mapping):
        chk.error(up.label, "must be a mapping with name, interface, address, ..., got %s %s"
                  % (_type_name(value), _show(value)))
        return None
    # The name first, so that every other message can say which uplink it is about.
    if value.get("name") is not None:
        _check_name(chk, up, value["name"])
    up.label = up.describe()
    for key in value:
        if key not in UPLINK_FIELDS:
            close = difflib.get_close_matches(str(key), UPLINK_FIELDS, n=1)
            hint = " (did you mean %s?)" % close[0] if close else ""
            chk.error(up.field(str(key)), "unknown field%s; known fields: %s" % (hint, ", ".join(UPLINK_FIELDS)))
    for key in UPLINK_REQUIRED:
        if value.get(key) is None:
            chk.error(up.field(key), "missing (required)")
    for key in UPLINK_FIELDS:
        if key not in UPLINK_REQUIRED and key in value and value[key] is None:
            # `gateway:` with nothing after it must not quietly make a device-only uplink.
            chk.error(up.field(key), "is empty (null); give a value or leave the field out")
    present = dict((key, value[key]) for key in UPLINK_FIELDS if value.get(key) is not None)
    if "interface" in present:
        _check_interface(chk, up, present["interface"])
    if "address" in present:
        _check_address(chk, up, present["address"])
    if "gateway" in present:
        _check_gateway(chk, up, present["gateway"])
    if "peer" in present:
        _check_peer(chk, up, present["peer"], "gateway" in present)
    if "table" in present:
        _check_table(chk, up, present["table"])
    if "watchdog" in present:
        _check_watchdog(chk, up.field("watchdog"), present["watchdog"], _watchdog.PER_UPLINK)
    if "weight" in present:
        _check_weight(chk, up, present["weight"])
    if "nat" in present:
        _check_nat(chk, up, present["nat"])
    if "probe_targets" in present:
        _check_probe_targets(chk, up, present["probe_targets"])
    if "routes" in present:
        _check_routes(chk, up, present["routes"])
    return up


def _check_uniques(chk, uplinks):
    names, interfaces, tables, marks, addresses = {}, {}, {}, {}, {}
    for up in uplinks:
        if up.name is not None:
            key = up.name.lower()
            if key in names:
                other = names[key]
                chk.error(up.field("name"), "%s is already used by %s%s" % (
                    _show(up.name), other.describe(),
                    "" if other.name == up.name else " (names are compared ignoring case)"))
            else:
                names[key] = up
        if up.interface is not None:
            if up.interface in interfaces:
                chk.error(up.field("interface"), "%s is already used by %s"
                          % (_show(up.interface), interfaces[up.interface].describe()))
            else:
                interfaces[up.interface] = up
        if up.table is not None:
            if up.table in tables:
                chk.error(up.field("table"), "%d is already used by %s" % (up.table, tables[up.table].describe()))
            else:
                tables[up.table] = up
                mark = _mark(up.table)
                if mark in marks:
                    chk.error(up.field("table"), "fwmark 0x%08x (table %d << 16 under 0x%08x) collides with %s (table %d)"
                              % (mark, up.table, MARK_MASK, marks[mark].describe(), marks[mark].table))
                else:
                    marks[mark] = up
        if up.interface_addr is not None:
            ip = up.interface_addr.ip
            if ip in addresses:
                chk.error(up.field("address"), "%s is already the address of %s" % (ip, addresses[ip].describe()))
            else:
                addresses[ip] = up


def _check_cross(chk, uplinks, lans):
    with_net = [up for up in uplinks if up.network is not None]
    # Uplink subnets must be disjoint: two connected routes for one prefix make the main table
    # (and ARP/ND) depend on interface order.
    for i, up_a in enumerate(with_net):
        for up_b in with_net[i + 1:]:
            if up_a.family == up_b.family and up_a.network.overlaps(up_b.network):
                if up_a.interface_addr.ip == up_b.interface_addr.ip:
                    continue  # reported as a duplicate address
                chk.error(up_b.field("address"), "subnet %s overlaps %s subnet %s (re-number one of the "
                          "ISP routers' networks)" % (up_b.network, up_a.describe(), up_a.network))
    # LAN prefixes must not overlap any uplink subnet.
    for pos, lan in lans:
        for up in with_net:
            if lan.version == up.family and lan.overlaps(up.network):
                chk.error("multiwan_lan_networks[%d]" % pos, "%s overlaps %s subnet %s"
                          % (lan, up.describe(), up.network))
    # A LAN family without any uplink of that family has no way out.
    families = set(up.family for up in with_net)
    if with_net:
        for pos, lan in lans:
            if lan.version not in families:
                chk.warning("multiwan_lan_networks[%d]" % pos, "%s is IPv%d but no uplink has an IPv%d address, so "
                            "this LAN has no way out" % (lan, lan.version, lan.version))
    route_owner = {}
    for up in uplinks:
        for pos, addr in up.probe_targets:
            ipath = "%s[%d]" % (up.field("probe_targets"), pos)
            for lpos, lan in lans:
                if addr.version == lan.version and addr in lan:
                    chk.error(ipath, "%s is inside the LAN multiwan_lan_networks[%d] %s" % (addr, lpos, lan))
            for other in with_net:
                if other.family != addr.version or addr not in other.network:
                    continue
                if other is up:
                    chk.warning(ipath, "%s is inside this uplink's own subnet %s: the probe only tests the "
                                "first hop, not the ISP" % (addr, other.network))
                else:
                    chk.error(ipath, "%s is inside %s subnet %s, so it cannot be reached through this "
                              "uplink" % (addr, other.describe(), other.network))
            for other in uplinks:
                if other is up:
                    continue
                for rpos, net in other.routes:
                    if net.version == addr.version and addr in net:
                        chk.warning(ipath, "%s is inside %s.routes[%d] %s, which always leave by %s; "
                                    "choose a probe target outside pinned routes"
                                    % (addr, other.describe(), rpos, net, other.name or other.describe()))
        for pos, net in up.routes:
            ipath = "%s[%d]" % (up.field("routes"), pos)
            for lpos, lan in lans:
                if net.version == lan.version and net.overlaps(lan):
                    chk.error(ipath, "%s overlaps the LAN multiwan_lan_networks[%d] %s" % (net, lpos, lan))
            for other in with_net:
                if other.family == net.version and net.overlaps(other.network):
                    owner = "this uplink's" if other is up else other.describe()
                    chk.error(ipath, "%s overlaps %s subnet %s" % (net, owner, other.network))
            if net in route_owner and route_owner[net][0] is not up:
                owner, opos = route_owner[net]
                chk.error(ipath, "%s is also pinned to %s.routes[%d]; a destination can leave by one uplink "
                          "only" % (net, owner.describe(), opos))
            else:
                route_owner.setdefault(net, (up, pos))


def multiwan_problems(data, host=None, severity="error"):
    """Problems of one gateway's multiwan inventory, as a list of one-line messages.

    ``data`` is a mapping holding the multiwan_* variables of the host (missing keys are treated as
    unset). ``severity`` selects ``error`` (the role refuses to run) or ``warning`` messages.
    """
    if severity not in SEVERITIES:
        raise AnsibleFilterError("multiwan_problems: severity must be one of %s, got %r" % (", ".join(SEVERITIES), severity))
    if not isinstance(data, Mapping):
        raise AnsibleFilterError("multiwan_problems: input must be a mapping of multiwan_* variables, got %s"
                                 % _type_name(data))
    if host is not None and not _is_str(host):
        raise AnsibleFilterError("multiwan_problems: host must be a string, got %s" % _type_name(host))
    chk = _Checker(host)

    lans = _check_lan_networks(chk, data.get("multiwan_lan_networks"))

    if data.get("multiwan_watchdog") is not None:
        _check_watchdog(chk, "multiwan_watchdog", data["multiwan_watchdog"], WATCHDOG_SETTINGS)

    value = data.get("multiwan_uplinks")
    uplinks = []
    if value is None:
        chk.error("multiwan_uplinks", "missing: list at least one uplink")
    elif not _is_list(value):
        chk.error("multiwan_uplinks", "must be a list of uplinks, got %s %s" % (_type_name(value), _show(value)))
    elif not value:
        chk.error("multiwan_uplinks", "is empty: list at least one uplink")
    else:
        if len(value) == 1:
            chk.warning("multiwan_uplinks", "only one uplink: there is nothing to fail over to")
        for index, item in enumerate(value):
            up = _check_uplink(chk, index, item)
            if up is not None:
                uplinks.append(up)
        _check_uniques(chk, uplinks)
        _check_cross(chk, uplinks, lans)
        _check_min_targets(chk, uplinks, value, data.get("multiwan_watchdog"))
    sticky = data.get("multiwan_sticky_connections")
    if sticky is not None:
        try:
            boolean(sticky, strict=True)  # what the argument spec accepts (-e x=false is a string)
        except TypeError:
            chk.error("multiwan_sticky_connections", "must be true or false, got %s %s" % (_type_name(sticky), _show(sticky)))
    _check_port_forwards(chk, data.get("multiwan_port_forwards"), uplinks, lans)
    return chk.render(severity)


PORT_FORWARD_FIELDS = ("uplink", "protocol", "port", "to", "to_port")


def _is_port(value):
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _check_port_forwards(chk, value, uplinks, lans):
    path = "multiwan_port_forwards"
    if value is None:
        return
    if not _is_list(value):
        chk.error(path, "must be a list of port forwards, got %s %s" % (_type_name(value), _show(value)))
        return
    by_name = dict((up.name, up) for up in uplinks if up.name)
    seen = {}
    for index, item in enumerate(value):
        where = "%s[%d]" % (path, index)
        if not isinstance(item, Mapping):
            chk.error(where, "must be a mapping with uplink, protocol, port, to, got %s %s" % (_type_name(item), _show(item)))
            continue
        for key in item:
            if key not in PORT_FORWARD_FIELDS:
                close = difflib.get_close_matches(str(key), PORT_FORWARD_FIELDS, n=1)
                hint = " (did you mean %s?)" % close[0] if close else ""
                chk.error("%s.%s" % (where, key), "unknown field%s; known fields: %s" % (hint, ", ".join(PORT_FORWARD_FIELDS)))
        up = by_name.get(item.get("uplink"))
        if up is None:
            chk.error(where + ".uplink", "%s is not the name of an uplink (%s)"
                      % (_show(item.get("uplink")), ", ".join(sorted(by_name)) or "none"))
        protocol = item.get("protocol", "tcp")
        if protocol not in ("tcp", "udp"):
            chk.error(where + ".protocol", "must be tcp or udp, got %s" % _show(protocol))
        for key in ("port", "to_port"):
            if (key in item or key == "port") and not _is_port(item.get(key)):
                chk.error("%s.%s" % (where, key), "must be a port number 1..65535, got %s" % _show(item.get(key)))
        try:
            to = ipaddress.ip_address(item.get("to")) if _is_str(item.get("to")) else None
        except ValueError:
            to = None
        if to is None:
            chk.error(where + ".to", "must be the LAN server's address, got %s" % _show(item.get("to")))
        elif not any(to in lan for dummy, lan in lans):
            chk.error(where + ".to", "%s is not inside any of multiwan_lan_networks" % to)
        elif up is not None and up.family is not None and up.family != to.version:
            chk.error(where + ".to", "%s is IPv%d but %s is IPv%d" % (to, to.version, up.describe(), up.family))
        key = (item.get("uplink"), protocol, item.get("port"))
        if key in seen:
            chk.error(where, "%s %s port %s is already forwarded by %s[%d]" % (key[0], key[1], key[2], path, seen[key]))
        else:
            seen[key] = index


def _check_min_targets(chk, uplinks, raw_uplinks, settings):
    """Each uplink needs at least ``min_targets_up`` probe targets (its own setting or the global one)."""
    settings = settings if isinstance(settings, Mapping) else {}
    for up in uplinks:
        raw = raw_uplinks[up.index] if isinstance(raw_uplinks[up.index], Mapping) else {}
        own = raw.get("watchdog") if isinstance(raw.get("watchdog"), Mapping) else {}
        if "min_targets_up" in own:
            path, wanted = up.field("watchdog.min_targets_up"), own["min_targets_up"]
        else:
            path, wanted = "multiwan_watchdog.min_targets_up", settings.get("min_targets_up", 1)
        if isinstance(wanted, int) and not isinstance(wanted, bool) and up.probe_targets \
                and wanted > len(up.probe_targets):
            chk.error(path, "%d is more than the %d probe_targets of %s" % (wanted, len(up.probe_targets), up.describe()))


class FilterModule(object):
    """multiwan.linux validation filters."""

    def filters(self):
        return {"multiwan_problems": multiwan_problems}
