# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The only code of the collection that runs ``nft``.

Private module_utils (leading underscore): not a public API.  Standard library only and no
Ansible imports, so the watchdog can import the same file on a gateway.

In: ``nft -j list table FAMILY NAME`` parsed into a :class:`Table` whose rules are *canonical*
JSON expressions.  Out: one ``nft -f -`` transaction.  Comparing canonical JSON instead of the text
``nft list`` prints makes the comparison independent of nft's pretty printing; canonicalisation
only undoes the rewrites nft itself makes (a one-element set becomes its element, a host prefix
``/32`` or ``/128`` becomes the plain address, set elements are unordered, handles are ignored).

Desired rules are built as the same canonical JSON (the builders below) and rendered to nft
syntax by :func:`render_statement`, so there is exactly one description of every rule.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess

__all__ = [
    "FAMILIES", "Chain", "Nft", "NftError", "Table",
    "addresses", "canonical", "include_line", "masquerade", "match", "meta", "parse_table",
    "payload", "render_statement", "render_table", "replace_table_script", "delete_table_script",
    "persist_file_text", "ret", "snat", "with_include", "without_include",
    "masquerade_table", "validate_ifname", "NAT_CHAIN",
]

FAMILIES = ("ip", "ip6", "inet")
# Address versions a table family can match without an explicit protocol qualifier.
FAMILY_VERSIONS = {"ip": (4,), "ip6": (6,), "inet": (4, 6)}
PAYLOAD_PROTOCOL = {4: "ip", 6: "ip6"}
# nft spells string operands of these meta keys in quotes; every other operand we emit is a number,
# an address or a prefix and stays bare.
QUOTED_META_KEYS = ("iifname", "oifname")
IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
NAT_CHAIN = "nat_postrouting"
SRCNAT_PRIORITY = 100  # "priority srcnat" for ip, ip6 and inet
DNAT_CHAIN = "nat_prerouting"
DSTNAT_PRIORITY = -100  # "priority dstnat"
MARK_PREROUTING = "mark_prerouting"
MARK_POSTROUTING = "mark_postrouting"
MANGLE_PRIORITY = -150  # "priority mangle"
DEFAULT_MARK_MASK = 0x00FF0000  # docs/design.md: an uplink's mark is table << 16 under this mask


class NftError(Exception):
    """A failed nft command or unusable nft output; the message names the object."""


def default_runner(argv, data=None):
    """Run ``argv`` with ``data`` on stdin; return ``(rc, stdout, stderr)``."""
    try:
        # The watchdog has no AnsibleModule.run_command; modules inject that as the runner instead.
        proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False)  # pylint: disable=ansible-bad-function
    except OSError as exc:
        return 127, "", "%s: %s" % (argv[0], exc)
    return proc.returncode, proc.stdout, proc.stderr


# -- canonical form ---------------------------------------------------------------------------

def _sort_key(value):
    return json.dumps(value, sort_keys=True)


def _prefix(addr, length):
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return "%s/%s" % (addr, length)
    if length == ip.max_prefixlen:
        return ip.compressed
    return "%s/%d" % (ip.compressed, length)


def canonical(value):
    """Canonical form of an nft JSON expression (see the module docstring)."""
    if isinstance(value, list):
        return [canonical(item) for item in value]
    if isinstance(value, dict):
        if list(value) == ["prefix"] and isinstance(value["prefix"], dict):
            return _prefix(value["prefix"].get("addr"), value["prefix"].get("len"))
        if list(value) == ["set"] and isinstance(value["set"], list):
            items = [canonical(item) for item in value["set"]]
            if len(items) == 1:
                return items[0]
            return {"set": sorted(items, key=_sort_key)}
        return dict((key, canonical(item)) for key, item in value.items())
    return value


# -- model ------------------------------------------------------------------------------------

class Chain(object):
    """One chain: base chain properties (or None for a regular chain) and canonical rules."""

    def __init__(self, name, type=None, hook=None, prio=None, policy=None, rules=None):  # pylint: disable=redefined-builtin
        self.name = name
        self.type = type
        self.hook = hook
        self.prio = prio
        self.policy = policy
        self.rules = [canonical(rule) for rule in (rules or [])]

    def state(self):
        """Everything that makes two chains equal, as plain data."""
        state = dict(type=self.type, hook=self.hook, prio=self.prio, policy=self.policy, rules=self.rules)
        return dict((key, value) for key, value in state.items() if value is not None)

    def view(self):
        """Human-readable :meth:`state` for diff output (rules as nft text where we can)."""
        state = self.state()
        state["rules"] = [describe_rule(rule) for rule in self.rules]
        return state


class Table(object):
    """One table: chains by name plus any other objects (sets, maps...) found in it."""

    def __init__(self, family, name, chains=None, objects=None):
        self.family = family
        self.name = name
        self.chains = dict((chain.name, chain) for chain in (chains or []))
        self.objects = dict(objects or {})  # (kind, name) -> canonical JSON

    @property
    def spec(self):
        return "%s %s" % (self.family, self.name)

    def states(self):
        """``{key: plain data}`` for every object of the table (and the table itself)."""
        states = {("table",): {"family": self.family, "name": self.name}}
        for name, chain in self.chains.items():
            states[("chain", name)] = chain.state()
        for key, obj in self.objects.items():
            states[("object",) + key] = obj
        return states

    def views(self):
        """Like :meth:`states` but readable (for diff mode)."""
        views = self.states()
        for name, chain in self.chains.items():
            views[("chain", name)] = chain.view()
        return views


def parse_table(document, family, name):
    """:class:`Table` from the parsed output of ``nft -j list table FAMILY NAME``."""
    try:
        items = document["nftables"]
    except (TypeError, KeyError):
        raise NftError("table %s %s: nft -j output has no 'nftables' list" % (family, name))
    table = Table(family, name)
    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            raise NftError("table %s %s: unexpected item in nft -j output: %r" % (family, name, item))
        kind, body = next(iter(item.items()))
        if kind in ("metainfo", "table"):
            continue
        if kind == "chain":
            table.chains[body["name"]] = Chain(body["name"], body.get("type"), body.get("hook"),
                                               body.get("prio"), body.get("policy"))
        elif kind == "rule":
            chain = table.chains.get(body["chain"])
            if chain is None:  # nft lists chains before their rules; be safe anyway
                chain = table.chains[body["chain"]] = Chain(body["chain"])
            chain.rules.append(canonical(body.get("expr", [])))
        else:
            obj = dict((key, value) for key, value in body.items() if key not in ("family", "table", "handle"))
            table.objects[(kind, str(body.get("name", "")))] = canonical(obj)
    return table


# -- statement builders (canonical JSON, the shape ``nft -j`` prints) ---------------------------

def meta(key):
    return {"meta": {"key": key}}


def payload(protocol, field):
    return {"payload": {"protocol": protocol, "field": field}}


def match(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def masquerade():
    return {"masquerade": None}


def ret():
    return {"return": None}


def snat(address, family=None):
    """``snat [ip|ip6] to ADDRESS``; inet tables need the family qualifier."""
    body = {"addr": ipaddress.ip_address(address).compressed}
    if family:
        body["family"] = family
    return {"snat": body}


def ct(key):
    return {"ct": {"key": key}}


def masked(left, mask):
    """``LEFT & MASK`` (the left side of a mark match)."""
    return {"&": [left, mask]}


def ct_new():
    """``ct state new``."""
    return match(ct("state"), "new", op="in")


def set_mark_bits(key_expr, mask, value):
    """``KEY set KEY & ~MASK | VALUE``: our bits under ``mask``, every other bit kept.

    Spelled the way nft stores it: nft folds ``& ~MASK | VALUE`` into ``& (~MASK | VALUE) | VALUE``.
    """
    keep = ((~mask) & 0xFFFFFFFF) | value
    return {"mangle": {"key": key_expr, "value": {"|": [{"&": [key_expr, keep]}, value]}}}


def dnat(address, port=None, family=None):
    """``dnat [ip|ip6] to ADDRESS[:PORT]``; inet tables need the family qualifier."""
    body = {"addr": ipaddress.ip_address(address).compressed}
    if family:
        body["family"] = family
    if port is not None:
        body["port"] = int(port)
    return {"dnat": body}


def addresses(networks):
    """Canonical right-hand side matching any of ``networks`` (ip_network objects, one version)."""
    collapsed = list(ipaddress.collapse_addresses(networks))
    return canonical({"set": [{"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
                              for net in collapsed]})


# -- rendering --------------------------------------------------------------------------------

def _render_operand(value, quoted):
    if isinstance(value, dict) and list(value) == ["set"]:
        return "{ %s }" % ", ".join(_render_operand(item, quoted) for item in value["set"])
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("cannot render operand %r" % (value,))
    if isinstance(value, str) and quoted:
        return '"%s"' % value
    return str(value)


def _render_left(left):
    if list(left) == ["&"] and isinstance(left["&"], list) and len(left["&"]) == 2:
        return "%s & 0x%08x" % (_render_left(left["&"][0]), left["&"][1])
    if list(left) == ["|"] and isinstance(left["|"], list) and len(left["|"]) == 2:
        return "%s | 0x%08x" % (_render_left(left["|"][0]), left["|"][1])
    if list(left) == ["meta"]:
        return "meta %s" % left["meta"]["key"]
    if list(left) == ["payload"]:
        return "%s %s" % (left["payload"]["protocol"], left["payload"]["field"])
    if list(left) == ["ct"]:
        return "ct %s" % left["ct"]["key"]
    raise ValueError("cannot render expression %r" % (left,))


def render_statement(stmt):
    """nft syntax for one canonical statement; ValueError for kinds we never emit."""
    if not isinstance(stmt, dict) or len(stmt) != 1:
        raise ValueError("cannot render statement %r" % (stmt,))
    kind, body = next(iter(stmt.items()))
    if kind == "match":
        left = body["left"]
        quoted = list(left) == ["meta"] and left["meta"]["key"] in QUOTED_META_KEYS
        # a bare "ct mark & M V" would not parse: masked matches spell out "=="
        op = {"==": "== " if "&" in left else "", "in": ""}.get(body["op"], body["op"] + " ")
        return "%s %s%s" % (_render_left(left), op, _render_operand(body["right"], quoted))
    if kind == "mangle":
        return "%s set %s" % (_render_left(body["key"]), _render_left(body["value"]))
    if kind == "dnat" and isinstance(body, dict) and set(body) <= {"addr", "family", "port"}:
        family = body.get("family")
        address = body["addr"]
        if "port" in body:
            address = ("[%s]:%d" if ":" in address else "%s:%d") % (address, body["port"])
        return "dnat %sto %s" % (family + " " if family else "", address)
    if kind in ("masquerade", "return", "accept", "drop") and body is None:
        return kind
    if kind == "snat" and isinstance(body, dict) and set(body) <= {"addr", "family"}:
        family = body.get("family")
        return "snat %sto %s" % (family + " " if family else "", body["addr"])
    raise ValueError("cannot render statement %r" % (stmt,))


def describe_rule(rule):
    """Rule text for humans; statements we cannot render are shown as JSON."""
    parts = []
    for stmt in rule:
        try:
            parts.append(render_statement(stmt))
        except (ValueError, KeyError, TypeError):
            parts.append(json.dumps(stmt, sort_keys=True))
    return " ".join(parts)


def render_table(table):
    """``table F N { ... }`` definition in nft syntax (only objects this code can build)."""
    if table.objects:
        raise ValueError("table %s: cannot render objects %s" % (table.spec, sorted(table.objects)))
    lines = ["table %s {" % table.spec]
    for name in sorted(table.chains):
        chain = table.chains[name]
        lines.append("\tchain %s {" % name)
        if chain.hook:
            lines.append("\t\ttype %s hook %s priority %d; policy %s;"
                         % (chain.type, chain.hook, chain.prio, chain.policy or "accept"))
        for rule in chain.rules:
            lines.append("\t\t" + " ".join(render_statement(stmt) for stmt in rule))
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def replace_table_script(table):
    """Transaction that replaces the whole table atomically and loads fine when run twice.

    ``table X`` creates the table when missing so that ``delete table X`` cannot fail; the new
    definition follows in the same transaction, so the kernel never runs without our rules.
    """
    return "table %s\ndelete table %s\n%s" % (table.spec, table.spec, render_table(table))


def delete_table_script(family, name):
    return "delete table %s %s\n" % (family, name)


# -- persistence ------------------------------------------------------------------------------

def persist_file_text(table, owner):
    return ("#!/usr/sbin/nft -f\n# Managed by %s: local changes are overwritten.\n"
            "# Loading this file replaces table %s as a whole, so including it twice is harmless.\n%s"
            % (owner, table.spec, replace_table_script(table)))


def include_line(path, owner):
    return 'include "%s"  # managed by %s' % (path, owner)


def _include_pattern(path):
    return re.compile(r'^\s*include\s+"%s"' % re.escape(path))


def with_include(text, path, owner):
    """``text`` with one include of ``path`` appended, unless it already includes it.

    Appended at the end: Debian's stock file starts with ``flush ruleset``, which would wipe a
    table included before it.
    """
    pattern = _include_pattern(path)
    if any(pattern.match(line) for line in text.splitlines()):
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return text + include_line(path, owner) + "\n"


def without_include(text, path):
    """``text`` without the lines that include ``path`` (everything else byte-for-byte)."""
    pattern = _include_pattern(path)
    return "".join(line for line in text.splitlines(True) if not pattern.match(line))


# -- validation and the masquerade table --------------------------------------------------------

def validate_ifname(name, field):
    """Kernel rules for interface names (dev_valid_name) plus what nft quoting cannot carry."""
    if not isinstance(name, str) or not name:
        raise ValueError("%s: interface name must be a non-empty string" % field)
    if len(name) > 15:
        raise ValueError("%s: interface name %r is longer than 15 characters" % (field, name))
    if name in (".", ".."):
        raise ValueError("%s: %r is not a valid interface name" % (field, name))
    for char in name:
        if char in "/:" or char.isspace() or not char.isprintable():
            raise ValueError("%s: interface name %r contains %r, which the kernel rejects" % (field, name, char))
        if char in '"\\*':
            raise ValueError("%s: interface name %r contains %r, which nft treats specially" % (field, name, char))
    return name


def _versions(family, field):
    if family not in FAMILY_VERSIONS:
        raise ValueError("%s: family must be one of %s, got %r" % (field, ", ".join(FAMILIES), family))
    return FAMILY_VERSIONS[family]


def parse_address(value, family, field):
    try:
        address = ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise ValueError("%s: %r is not an IP address" % (field, value))
    if address.version not in _versions(family, "family"):
        raise ValueError("%s: %s is an IPv%d address, table family %s needs IPv%s"
                         % (field, address, address.version, family, "/".join(map(str, _versions(family, "family")))))
    return address


def parse_network(value, family, field):
    try:
        network = ipaddress.ip_network(str(value).strip())
    except ValueError as exc:
        raise ValueError("%s: %r is not a network (%s)" % (field, value, exc))
    if network.version not in _versions(family, "family"):
        raise ValueError("%s: %s is an IPv%d network, table family %s needs IPv%s"
                         % (field, network, network.version, family, "/".join(map(str, _versions(family, "family")))))
    return network


def validate_table_name(name, field="table"):
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise ValueError("%s: %r is not a valid table name (a letter, then letters, digits, '_' or '-', at most 64)"
                         % (field, name))
    return name


def _by_version(networks):
    grouped = {}
    for network in networks:
        grouped.setdefault(network.version, []).append(network)
    return grouped


def masquerade_table(family, name, uplinks, source_networks=None, exclude_destinations=None,
                     mark_mask=DEFAULT_MARK_MASK, port_forwards=None):
    """The desired NAT table; ValueError naming the field for every bad parameter.

    ``uplinks``: list of ``{"interface": str, "snat_address": str or None, "mark": int or None}``.
    Chain ``nat_postrouting``: first ``ip[6] daddr {excluded} return``, then per uplink (sorted by
    interface) and per address version of ``source_networks`` one ``oifname X [ip saddr {...}]
    masquerade|snat to A`` rule.

    Uplinks with a ``mark`` get connection marks (sticky connections, docs/design.md): chains
    ``mark_prerouting`` and ``mark_postrouting`` (see :func:`mark_chains`). ``port_forwards``
    (list of ``{"interface", "protocol", "port", "to", "to_port", "destination"}``) become
    ``dnat`` rules in chain ``nat_prerouting``.
    """
    _versions(family, "family")
    validate_table_name(name)
    sources = [parse_network(value, family, "source_networks[%d]" % index)
               for index, value in enumerate(source_networks or [])]
    excluded = [parse_network(value, family, "exclude_destinations[%d]" % index)
                for index, value in enumerate(exclude_destinations or [])]
    if not uplinks:
        raise ValueError("uplinks: at least one uplink is needed")
    seen = {}
    planned = []
    marks = {}
    for index, uplink in enumerate(uplinks):
        field = "uplinks[%d]" % index
        if not isinstance(uplink, dict):
            raise ValueError("%s: must be a dict with 'interface' and optional 'snat_address'" % field)
        interface = validate_ifname(uplink.get("interface"), field + ".interface")
        if interface in seen:
            raise ValueError("%s.interface: %s is already listed as uplinks[%d]" % (field, interface, seen[interface]))
        seen[interface] = index
        address = uplink.get("snat_address")
        if address not in (None, ""):
            address = parse_address(address, family, field + ".snat_address")
            if sources and address.version not in [net.version for net in sources]:
                raise ValueError("%s.snat_address: %s is IPv%d but source_networks has no IPv%d network, so "
                                 "nothing would be translated" % (field, address, address.version, address.version))
        else:
            address = None
        planned.append((interface, address))
        if uplink.get("mark") not in (None, 0):
            marks[interface] = _check_mark(uplink["mark"], mark_mask, field + ".mark", marks)

    rules = []
    excluded_by_version = _by_version(excluded)
    for version in sorted(excluded_by_version):
        rules.append([match(payload(PAYLOAD_PROTOCOL[version], "daddr"), addresses(excluded_by_version[version])),
                      ret()])
    sources_by_version = _by_version(sources)
    for interface, address in sorted(planned, key=lambda item: item[0]):
        out = match(meta("oifname"), interface)
        if address is None:
            action = masquerade()
            versions = sorted(sources_by_version)
        else:
            # inet needs "snat ip to" / "snat ip6 to"; and an IPv4 address can only NAT IPv4.
            action = snat(address, PAYLOAD_PROTOCOL[address.version] if family == "inet" else None)
            versions = [address.version] if sources else []
        if not sources:
            rules.append([out, action])
        for version in versions:
            rules.append([out, match(payload(PAYLOAD_PROTOCOL[version], "saddr"),
                                     addresses(sources_by_version[version])), action])
    chains = [Chain(NAT_CHAIN, "nat", "postrouting", SRCNAT_PRIORITY, "accept", rules)]
    if marks:
        chains += mark_chains(marks, mark_mask)
    forwards = _port_forward_rules(family, port_forwards or [], seen)
    if forwards:
        chains.append(Chain(DNAT_CHAIN, "nat", "prerouting", DSTNAT_PRIORITY, "accept", forwards))
    return Table(family, name, chains)


def _check_mark(value, mask, field, taken):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("%s: %r is not a number" % (field, value))
    if not isinstance(mask, int) or isinstance(mask, bool) or not 0 < mask <= 0xFFFFFFFF:
        raise ValueError("mark_mask: %r is not a 32-bit mask" % (mask,))
    if value & ~mask & 0xFFFFFFFF or not value & mask:
        raise ValueError("%s: %#x has bits outside mark_mask %#010x (or none inside)" % (field, value, mask))
    for interface, other in taken.items():
        if other == value:
            raise ValueError("%s: %#x is also the mark of %s" % (field, value, interface))
    return value


def mark_chains(marks, mask):
    """Connection marks of the uplinks (``{interface: mark}``), under ``mask`` only.

    ``mark_prerouting`` (filter, prerouting, mangle): a new connection arriving on uplink X is
    marked X (inbound, port forwards); every packet of a marked connection gets the mark as its
    packet mark, which the ``fwmark`` rules route by (replies and later packets keep the uplink).
    ``mark_postrouting`` (filter, postrouting, mangle): a new connection still unmarked is marked
    with the uplink it leaves by (the multipath choice of its first packet).
    Other software's bits of the packet and connection marks are kept.
    """
    inbound, restore, outbound = [], [], []
    for interface in sorted(marks):
        mark = marks[interface]
        inbound.append([ct_new(), match(meta("iifname"), interface), set_mark_bits(ct("mark"), mask, mark)])
        restore.append([match(masked(ct("mark"), mask), mark), set_mark_bits(meta("mark"), mask, mark)])
        outbound.append([ct_new(), match(masked(ct("mark"), mask), 0), match(meta("oifname"), interface),
                         set_mark_bits(ct("mark"), mask, mark)])
    return [Chain(MARK_PREROUTING, "filter", "prerouting", MANGLE_PRIORITY, "accept", inbound + restore),
            Chain(MARK_POSTROUTING, "filter", "postrouting", MANGLE_PRIORITY, "accept", outbound)]


PORT_FORWARD_PROTOCOLS = ("tcp", "udp")


def _port(value, field):
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError("%s: %r is not a port (1..65535)" % (field, value))
    return value


def _port_forward_rules(family, forwards, interfaces):
    rules, seen = [], {}
    for index, forward in enumerate(forwards):
        field = "port_forwards[%d]" % index
        if not isinstance(forward, dict):
            raise ValueError("%s: must be a dict with interface, protocol, port and to" % field)
        interface = validate_ifname(forward.get("interface"), field + ".interface")
        if interface not in interfaces:
            raise ValueError("%s.interface: %s is not one of the uplinks" % (field, interface))
        protocol = forward.get("protocol") or "tcp"
        if protocol not in PORT_FORWARD_PROTOCOLS:
            raise ValueError("%s.protocol: %r is not tcp or udp" % (field, protocol))
        port = _port(forward.get("port"), field + ".port")
        to = parse_address(forward.get("to"), family, field + ".to")
        to_port = _port(forward["to_port"], field + ".to_port") if forward.get("to_port") is not None else None
        key = (interface, protocol, port)
        if key in seen:
            raise ValueError("%s: %s %s port %d is already forwarded by port_forwards[%d]"
                             % (field, interface, protocol, port, seen[key]))
        seen[key] = index
        rule = [match(meta("iifname"), interface)]
        if forward.get("destination"):
            destination = parse_address(forward["destination"], family, field + ".destination")
            if destination.version != to.version:
                raise ValueError("%s.destination: IPv%d, but to is IPv%d" % (field, destination.version, to.version))
            rule.append(match(payload(PAYLOAD_PROTOCOL[destination.version], "daddr"), destination.compressed))
        elif family == "inet":
            rule.append(match(meta("nfproto"), "ipv%d" % to.version))
        rule.append(match(payload(protocol, "dport"), port))
        rule.append(dnat(to, to_port, PAYLOAD_PROTOCOL[to.version] if family == "inet" else None))
        rules.append(rule)
    return rules


# -- running nft ------------------------------------------------------------------------------

class Nft(object):
    """Runs nft through an injectable ``runner(argv, data) -> (rc, stdout, stderr)``."""

    def __init__(self, runner=None, binary="nft"):
        self.runner = runner or default_runner
        self.binary = binary

    def list_table(self, family, name):
        """The live :class:`Table`, or None when it does not exist."""
        rc, out, err = self.runner([self.binary, "-j", "list", "table", family, name], None)
        if rc != 0:
            # nft's messages are not translated; ENOENT is how a missing table is reported.
            if "No such file or directory" in err:
                return None
            raise NftError("nft could not list table %s %s: %s" % (family, name, (err or out).strip()))
        try:
            document = json.loads(out)
        except ValueError as exc:
            raise NftError("nft -j list table %s %s printed invalid JSON: %s" % (family, name, exc))
        return parse_table(document, family, name)

    def apply(self, script, what):
        """Run ``script`` as one ``nft -f -`` transaction (all or nothing)."""
        rc, out, err = self.runner([self.binary, "-f", "-"], script)
        if rc != 0:
            raise NftError("nft rejected the transaction for %s: %s" % (what, (err or out).strip()))

    def check(self, script, what):
        """Like :meth:`apply` with ``nft -c``: parse and validate against the kernel, change nothing."""
        rc, out, err = self.runner([self.binary, "-c", "-f", "-"], script)
        if rc != 0:
            raise NftError("nft -c rejected %s: %s" % (what, (err or out).strip()))
