"""Parse and validate a lab topology description; derive every name and address.

Nothing here touches the system: this module is pure and unit-tested without root.

Address plan (all lab-only ranges; anything else is rejected):

* uplinks (gateway <-> ISP router): 100.64.0.0/10, except 100.127.0.0/16
* transit ISP router <-> internet: 100.127.0.0/16, reserved by the lab. ISP router number g
  (counted over all sites in file order, from 0) gets the /30 ``100.127.0.0 + 4*g``: the
  internet side holds ``.1``, the router's ``up`` interface ``.2``.
* internet hosts: 198.18.0.0/15 (held on ``lo`` of the internet namespace)
* LANs: 10.0.0.0/9 (10.0.x.x .. 10.127.x.x, so never 10.255.x)

IPv6 (optional, dual stack; everything inside 2001:db8::/32):

* internet hosts: 2001:db8:ffff::/48 (``internet.hosts6``, default ::1 ::2 ::3 and
  2001:db8:ffff:7::1), on ``lo`` of the internet namespace
* transit: 2001:db8:fffe::/48 reserved; ISP router g gets 2001:db8:fffe:g::/64 (inet ::1,
  router ::2)
* uplinks (``address6``/``gateway6``) and LANs (``lan.network6``): the rest of 2001:db8::/32.
  ``gateway6`` may be a link-local address (fe80::/64, as many ISPs do). A device-only uplink
  takes ``address6`` as a /128 and no ``gateway6`` (the role routes ``default dev IFACE``).
  LAN: gateway ``::1``, client N ``::10`` + N - 1 (hex, like the .10, .11 of IPv4).

Device-only (PPPoE-like) uplinks have no ``gateway``: the gateway address is a /32 with a peer.
``peer`` defaults to the address minus one (address plus one when the last octet of the address
is 0 or 1, so the peer never ends in .0).
"""

from __future__ import annotations

import ipaddress
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IPv6Address = ipaddress.IPv6Address
IPv6Interface = ipaddress.IPv6Interface
IPv6Network = ipaddress.IPv6Network
IPv4Address = ipaddress.IPv4Address
IPv4Interface = ipaddress.IPv4Interface
IPv4Network = ipaddress.IPv4Network

UPLINK_RANGE = IPv4Network("100.64.0.0/10")
TRANSIT_RANGE = IPv4Network("100.127.0.0/16")
INTERNET_RANGE = IPv4Network("198.18.0.0/15")
LAN_RANGE = IPv4Network("10.0.0.0/9")
DEFAULT_HOSTS = ("198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.7.1")
V6_RANGE = IPv6Network("2001:db8::/32")
INTERNET6_RANGE = IPv6Network("2001:db8:ffff::/48")
TRANSIT6_RANGE = IPv6Network("2001:db8:fffe::/48")
LINK_LOCAL6 = IPv6Network("fe80::/64")
DEFAULT_HOSTS6 = ("2001:db8:ffff::1", "2001:db8:ffff::2", "2001:db8:ffff::3", "2001:db8:ffff:7::1")
DEFAULT_LAB = "mwl"
MAX_UPLINKS = 4
MAX_CLIENTS = 8
TABLE_BASE = 100
CLIENT_HOST_OFFSET = 10  # client N gets network address + 9 + N (.10, .11, ...)

LAB_RE = re.compile(r"^[a-z0-9]{1,5}$")
SITE_RE = re.compile(r"^[a-z0-9]{1,6}$")
UPLINK_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
# Names used by the lab itself inside a site (namespace suffixes) or on the command line.
RESERVED_SITE_NAMES = {"inet"}
RESERVED_UPLINK_RE = re.compile(r"^(gw|sw|inet|c[0-9]+)$")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class TopologyError(ValueError):
    """The topology description is invalid. The message names site/uplink/field."""


@dataclass
class Uplink:
    site: str
    name: str
    index: int  # 1-based within the site
    number: int  # 0-based over the whole lab (transit /30)
    interface: str
    address: IPv4Interface  # device-only: always /32
    gateway: IPv4Address | None
    peer: IPv4Address | None  # device-only: the ISP router's address
    weight: int
    lab: str
    address6: IPv6Interface | None = None  # device-only: always /128
    gateway6: IPv6Address | None = None  # may be link-local; None for device-only

    @property
    def device_only(self) -> bool:
        return self.gateway is None

    @property
    def table(self) -> int:
        return TABLE_BASE + self.index

    @property
    def router_ns(self) -> str:
        return f"{self.lab}-{self.site}-{self.name}"

    @property
    def router_address(self) -> IPv4Address:
        """The ISP router's address on the customer link."""
        return self.peer if self.device_only else self.gateway  # type: ignore[return-value]

    @property
    def customer_network(self) -> IPv4Network:
        """What the internet routes back to this ISP router."""
        return self.address.network

    @property
    def inet_ifname(self) -> str:
        return f"{self.lab}{self.site}u{self.index}"

    @property
    def transit(self) -> IPv4Network:
        return IPv4Network((int(TRANSIT_RANGE.network_address) + 4 * self.number, 30))

    @property
    def transit_inet(self) -> IPv4Address:
        return self.transit.network_address + 1

    @property
    def transit_router(self) -> IPv4Address:
        return self.transit.network_address + 2

    @property
    def transit6(self) -> IPv6Network:
        return IPv6Network((int(TRANSIT6_RANGE.network_address) + (self.number << 64), 64))

    @property
    def transit6_inet(self) -> IPv6Address:
        return self.transit6.network_address + 1

    @property
    def transit6_router(self) -> IPv6Address:
        return self.transit6.network_address + 2

    @property
    def mac(self) -> str:
        """Shared MAC of both ends of a device-only link (locally administered)."""
        h = zlib.crc32(f"{self.lab}/{self.site}/{self.name}".encode())
        return "02:6d:" + ":".join(f"{(h >> s) & 0xFF:02x}" for s in (24, 16, 8, 0))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "interface": self.interface,
            "address": str(self.address),
            "weight": self.weight,
        }
        if self.device_only:
            d["peer"] = str(self.peer)
        else:
            d["gateway"] = str(self.gateway)
        if self.address6 is not None:
            d["address6"] = str(self.address6)
        if self.gateway6 is not None:
            d["gateway6"] = str(self.gateway6)
        return d


@dataclass
class Site:
    name: str
    lan_interface: str
    lan_network: IPv4Network
    clients: int
    uplinks: list[Uplink]
    lab: str
    lan_network6: IPv6Network | None = None
    systemd: bool = False  # gateway boots Debian under systemd-nspawn (container.py)

    @property
    def gw_ns(self) -> str:
        return f"{self.lab}-{self.name}-gw"

    @property
    def switch_ns(self) -> str:
        return f"{self.lab}-{self.name}-sw"

    def client_ns(self, n: int) -> str:
        return f"{self.lab}-{self.name}-c{n}"

    @property
    def gw_lan_address(self) -> IPv4Interface:
        return IPv4Interface((int(self.lan_network.network_address) + 1, self.lan_network.prefixlen))

    def client_address(self, n: int) -> IPv4Interface:
        return IPv4Interface(
            (int(self.lan_network.network_address) + CLIENT_HOST_OFFSET - 1 + n, self.lan_network.prefixlen)
        )

    @property
    def gw_lan_address6(self) -> IPv6Interface | None:
        n = self.lan_network6
        return None if n is None else IPv6Interface((int(n.network_address) + 1, n.prefixlen))

    def client_address6(self, n: int) -> IPv6Interface | None:
        net = self.lan_network6
        return None if net is None else IPv6Interface((int(net.network_address) + 0x10 - 1 + n, net.prefixlen))

    def uplink(self, name: str) -> Uplink:
        for u in self.uplinks:
            if u.name == name:
                return u
        raise TopologyError(f"site {self.name}: no uplink named {name!r} (have {', '.join(u.name for u in self.uplinks)})")

    @property
    def namespaces(self) -> list[str]:
        return (
            [self.gw_ns, self.switch_ns]
            + [self.client_ns(n) for n in range(1, self.clients + 1)]
            + [u.router_ns for u in self.uplinks]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lan": {"interface": self.lan_interface, "network": str(self.lan_network), "clients": self.clients,
                    **({"network6": str(self.lan_network6)} if self.lan_network6 else {})},
            "uplinks": [u.to_dict() for u in self.uplinks],
            **({"systemd": True} if self.systemd else {}),
        }


@dataclass
class Topology:
    lab: str
    hosts: list[IPv4Address]
    probe_targets: list[IPv4Address]
    sites: list[Site] = field(default_factory=list)
    hosts6: list[IPv6Address] = field(default_factory=list)
    probe_targets6: list[IPv6Address] = field(default_factory=list)

    # ---- derived names -------------------------------------------------------------------
    @property
    def inet_ns(self) -> str:
        return f"{self.lab}-inet"

    @property
    def namespaces(self) -> list[str]:
        out = [self.inet_ns]
        for s in self.sites:
            out += s.namespaces
        return out

    @property
    def uplinks(self) -> list[Uplink]:
        return [u for s in self.sites for u in s.uplinks]

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise TopologyError(f"no site named {name!r} (have {', '.join(s.name for s in self.sites)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "lab": self.lab,
            "internet": {
                "hosts": [str(h) for h in self.hosts],
                "probe_targets": [str(h) for h in self.probe_targets],
                "hosts6": [str(h) for h in self.hosts6],
                "probe_targets6": [str(h) for h in self.probe_targets6],
            },
            "sites": [s.to_dict() for s in self.sites],
        }

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, lab: str | None = None) -> "Topology":
        text = Path(path).read_text()
        return cls.from_dict(parse_text(text, str(path)), lab=lab)

    @classmethod
    def from_dict(cls, data: Any, lab: str | None = None) -> "Topology":
        return _build(data, lab)


def parse_text(text: str, name: str = "<topology>") -> Any:
    """JSON or YAML (YAML needs PyYAML)."""
    stripped = text.lstrip()
    if name.endswith(".json") or stripped.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise TopologyError(f"{name}: invalid JSON: {e}") from None
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - depends on the interpreter
        raise TopologyError(f"{name}: reading YAML needs PyYAML; write the topology as JSON instead") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TopologyError(f"{name}: invalid YAML: {e}") from None


# ---- validation helpers ------------------------------------------------------------------------

def _keys(where: str, d: Any, allowed: set[str], required: set[str] = frozenset()) -> dict:  # type: ignore[assignment]
    if not isinstance(d, dict):
        raise TopologyError(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise TopologyError(f"{where}: unknown field(s) {', '.join(map(str, unknown))} (allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(d))
    if missing:
        raise TopologyError(f"{where}: missing field(s) {', '.join(missing)}")
    return d


def _addr(where: str, value: Any, rng: IPv4Network, what: str) -> IPv4Address:
    try:
        a = IPv4Address(str(value))
    except ValueError:
        raise TopologyError(f"{where}: {value!r} is not an IPv4 address") from None
    if a not in rng:
        raise TopologyError(f"{where}: {a} is outside {rng} ({what})")
    if a in TRANSIT_RANGE:
        raise TopologyError(f"{where}: {a} is inside {TRANSIT_RANGE}, which the lab reserves for ISP transit")
    return a


def _addr6(where: str, value: Any, what: str, allow_link_local: bool = False) -> IPv6Address:
    try:
        a = IPv6Address(str(value))
    except ValueError:
        raise TopologyError(f"{where}: {value!r} is not an IPv6 address") from None
    if allow_link_local and a in LINK_LOCAL6:
        return a
    if a not in V6_RANGE:
        raise TopologyError(f"{where}: {a} is outside {V6_RANGE} ({what})")
    return a


def _net6(where: str, net: IPv6Network) -> IPv6Network:
    if not net.subnet_of(V6_RANGE):
        raise TopologyError(f"{where}: {net} is outside {V6_RANGE}")
    for r, what in ((INTERNET6_RANGE, "the internet hosts"), (TRANSIT6_RANGE, "ISP transit")):
        if net.overlaps(r):
            raise TopologyError(f"{where}: {net} overlaps {r}, which the lab reserves for {what}")
    return net


def _hostlist6(where: str, raw: Any, allowed: list[IPv6Address] | None = None) -> list[IPv6Address]:
    if not isinstance(raw, list) or not raw:
        raise TopologyError(f"{where}: expected a non-empty list of IPv6 addresses")
    out: list[IPv6Address] = []
    for i, h in enumerate(raw):
        a = _addr6(f"{where}[{i}]", h, "internet hosts live in 2001:db8:ffff::/48")
        if a not in INTERNET6_RANGE:
            raise TopologyError(f"{where}[{i}]: {a} is outside {INTERNET6_RANGE}")
        if a in out:
            raise TopologyError(f"{where}[{i}]: duplicate address {a}")
        if allowed is not None and a not in allowed:
            raise TopologyError(f"{where}[{i}]: {a} is not one of internet.hosts6")
        out.append(a)
    return out


def _int(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(f"{where}: expected an integer {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise TopologyError(f"{where}: {value} is out of range {lo}..{hi}")
    return value


def _ifname(where: str, value: Any) -> str:
    if not isinstance(value, str) or not IFNAME_RE.match(value) or value in (".", "..", "lo"):
        raise TopologyError(f"{where}: {value!r} is not a usable interface name (1-15 chars of [A-Za-z0-9_.-], not lo)")
    return value


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TopologyError(f"{where}: {value!r} is not a boolean (true/false)")
    return value


def default_peer(address: IPv4Address) -> IPv4Address:
    last = int(address) & 0xFF
    return address + 1 if last in (0, 1) else address - 1


def _build(data: Any, lab_override: str | None) -> Topology:
    top = _keys("topology", data, {"lab", "internet", "sites", "systemd"}, {"sites"})
    lab_systemd = _bool("systemd", top.get("systemd", False))
    lab = lab_override or top.get("lab") or DEFAULT_LAB
    if not isinstance(lab, str) or not LAB_RE.match(lab):
        raise TopologyError(f"lab: {lab!r} must be 1-5 characters of [a-z0-9]")

    inet = _keys("internet", top.get("internet") or {}, {"hosts", "probe_targets", "hosts6", "probe_targets6"})
    raw_hosts = inet.get("hosts", list(DEFAULT_HOSTS))
    if not isinstance(raw_hosts, list) or not raw_hosts:
        raise TopologyError("internet.hosts: expected a non-empty list of addresses")
    hosts: list[IPv4Address] = []
    for i, h in enumerate(raw_hosts):
        a = _addr(f"internet.hosts[{i}]", h, INTERNET_RANGE, "internet hosts live in 198.18.0.0/15")
        if a in hosts:
            raise TopologyError(f"internet.hosts[{i}]: duplicate address {a}")
        hosts.append(a)
    raw_probe = inet.get("probe_targets")
    if raw_probe is None:
        probe = hosts[:3]
    else:
        if not isinstance(raw_probe, list) or not raw_probe:
            raise TopologyError("internet.probe_targets: expected a non-empty list of addresses")
        probe = []
        for i, h in enumerate(raw_probe):
            a = _addr(f"internet.probe_targets[{i}]", h, INTERNET_RANGE, "internet hosts live in 198.18.0.0/15")
            if a not in hosts:
                raise TopologyError(f"internet.probe_targets[{i}]: {a} is not one of internet.hosts")
            probe.append(a)

    hosts6 = _hostlist6("internet.hosts6", inet.get("hosts6", list(DEFAULT_HOSTS6)))
    probe6 = (_hostlist6("internet.probe_targets6", inet["probe_targets6"], hosts6)
              if inet.get("probe_targets6") is not None else hosts6[:3])

    raw_sites = top["sites"]
    if not isinstance(raw_sites, list) or not raw_sites:
        raise TopologyError("sites: expected a non-empty list")

    sites: list[Site] = []
    site_names: set[str] = set()
    lans: list[tuple[str, IPv4Network]] = []
    used_addrs: dict[IPv4Address, str] = {}
    cust_nets: list[tuple[str, IPv4Network]] = []
    nets6: list[tuple[str, IPv6Network]] = []  # LAN and uplink IPv6 networks: no overlaps

    def claim6(where: str, owner: str, net: IPv6Network) -> None:
        for other, onet in nets6:
            if onet.overlaps(net):
                raise TopologyError(f"{where}: {net} overlaps {other} ({onet})")
        nets6.append((owner, net))

    number = 0
    for si, rs in enumerate(raw_sites):
        rs = _keys(f"sites[{si}]", rs, {"name", "lan", "uplinks", "systemd"}, {"name", "lan", "uplinks"})
        sname = rs["name"]
        if not isinstance(sname, str) or not SITE_RE.match(sname) or sname in RESERVED_SITE_NAMES:
            raise TopologyError(f"sites[{si}].name: {sname!r} must be 1-6 characters of [a-z0-9] and not 'inet'")
        if sname in site_names:
            raise TopologyError(f"site {sname}: duplicate site name")
        site_names.add(sname)
        w = f"site {sname}"

        lan = _keys(f"{w}: lan", rs["lan"], {"interface", "network", "clients", "network6"}, {"network"})
        lan_if = _ifname(f"{w}: lan.interface", lan.get("interface", "lan0"))
        try:
            lan_net = IPv4Network(str(lan["network"]))
        except ValueError as e:
            raise TopologyError(f"{w}: lan.network: {e}") from None
        if not lan_net.subnet_of(LAN_RANGE):
            raise TopologyError(f"{w}: lan.network: {lan_net} is outside {LAN_RANGE}")
        clients = _int(f"{w}: lan.clients", lan.get("clients", 1), 0, MAX_CLIENTS)
        if lan_net.num_addresses < CLIENT_HOST_OFFSET + clients + 1:
            raise TopologyError(f"{w}: lan.network: {lan_net} is too small for the gateway and {clients} clients (.{CLIENT_HOST_OFFSET}...)")
        for other, onet in lans:
            if onet.overlaps(lan_net):
                raise TopologyError(f"{w}: lan.network: {lan_net} overlaps the LAN of site {other} ({onet})")
        lans.append((sname, lan_net))
        lan_net6 = None
        if lan.get("network6") is not None:
            try:
                lan_net6 = IPv6Network(str(lan["network6"]))
            except ValueError as e:
                raise TopologyError(f"{w}: lan.network6: {e}") from None
            _net6(f"{w}: lan.network6", lan_net6)
            if lan_net6.prefixlen > 120:
                raise TopologyError(f"{w}: lan.network6: {lan_net6} is too small (use /120 or larger)")
            claim6(f"{w}: lan.network6", f"the LAN of site {sname}", lan_net6)

        raw_ups = rs["uplinks"]
        if not isinstance(raw_ups, list) or not 1 <= len(raw_ups) <= MAX_UPLINKS:
            n = len(raw_ups) if isinstance(raw_ups, list) else raw_ups
            raise TopologyError(f"{w}: uplinks: need 1..{MAX_UPLINKS} uplinks, got {n}")
        site = Site(sname, lan_if, lan_net, clients, [], lab, lan_net6,
                    _bool(f"{w}: systemd", rs.get("systemd", lab_systemd)))
        ifnames = {lan_if: "lan.interface"}
        for ui, ru in enumerate(raw_ups, start=1):
            where0 = f"{w}: uplinks[{ui - 1}]"
            ru = _keys(where0, ru, {"name", "interface", "address", "gateway", "peer", "weight", "address6", "gateway6"},
                       {"name", "interface", "address"})
            uname = ru["name"]
            if not isinstance(uname, str) or not UPLINK_RE.match(uname) or RESERVED_UPLINK_RE.match(uname):
                raise TopologyError(f"{where0}.name: {uname!r} must be 1-8 characters of [a-z0-9] starting with a letter, not gw/sw/inet/cN")
            if any(u.name == uname for u in site.uplinks):
                raise TopologyError(f"{w} uplink {uname}: duplicate uplink name")
            uw = f"{w} uplink {uname}"
            ifn = _ifname(f"{uw}: interface", ru["interface"])
            if ifn in ifnames:
                raise TopologyError(f"{uw}: interface: {ifn} is already used by {ifnames[ifn]}")
            ifnames[ifn] = f"uplink {uname}"
            weight = _int(f"{uw}: weight", ru.get("weight", 1), 1, 256)
            raw_addr = str(ru["address"])
            try:
                iface = IPv4Interface(raw_addr)
            except ValueError as e:
                raise TopologyError(f"{uw}: address: {e}") from None
            _addr(f"{uw}: address", iface.ip, UPLINK_RANGE, "uplinks live in 100.64.0.0/10")
            gateway = peer = None
            if ru.get("gateway") is not None:
                if ru.get("peer") is not None:
                    raise TopologyError(f"{uw}: peer: only device-only uplinks (no gateway) take a peer")
                gateway = _addr(f"{uw}: gateway", ru["gateway"], UPLINK_RANGE, "uplinks live in 100.64.0.0/10")
                if iface.network.prefixlen > 30 and iface.network.prefixlen != 31:
                    raise TopologyError(f"{uw}: address: {iface} leaves no room for a gateway (use /8../31)")
                if iface.network.prefixlen < 31 and iface.ip in (iface.network.network_address, iface.network.broadcast_address):
                    raise TopologyError(f"{uw}: address: {iface.ip} is the network or broadcast address of {iface.network}")
                if gateway not in iface.network:
                    raise TopologyError(f"{uw}: gateway: {gateway} is not inside {iface.network}")
                if gateway == iface.ip:
                    raise TopologyError(f"{uw}: gateway: {gateway} equals the uplink address")
                if iface.network.prefixlen < 31 and gateway in (iface.network.network_address, iface.network.broadcast_address):
                    raise TopologyError(f"{uw}: gateway: {gateway} is the network or broadcast address of {iface.network}")
                if not iface.network.subnet_of(UPLINK_RANGE):
                    raise TopologyError(f"{uw}: address: {iface.network} is not inside {UPLINK_RANGE}")
                if iface.network.overlaps(TRANSIT_RANGE):
                    raise TopologyError(f"{uw}: address: {iface.network} overlaps {TRANSIT_RANGE}, which the lab reserves for ISP transit")
            else:
                if "/" in raw_addr and iface.network.prefixlen != 32:
                    raise TopologyError(f"{uw}: address: a device-only uplink (no gateway) takes a /32 address, got {iface}")
                iface = IPv4Interface((iface.ip, 32))
                if ru.get("peer") is not None:
                    peer = _addr(f"{uw}: peer", ru["peer"], UPLINK_RANGE, "uplinks live in 100.64.0.0/10")
                else:
                    peer = default_peer(iface.ip)
                    _addr(f"{uw}: peer (default)", peer, UPLINK_RANGE, "uplinks live in 100.64.0.0/10")
                if peer == iface.ip:
                    raise TopologyError(f"{uw}: peer: {peer} equals the uplink address")
            for a, what in ((iface.ip, "address"), (gateway or peer, "gateway" if gateway else "peer")):
                if a in used_addrs:
                    raise TopologyError(f"{uw}: {what}: {a} is already used by {used_addrs[a]}")
                used_addrs[a] = uw
            for other, onet in cust_nets:
                if onet.overlaps(iface.network):
                    raise TopologyError(f"{uw}: address: {iface.network} overlaps {other} ({onet})")
            cust_nets.append((uw, iface.network))
            address6 = gateway6 = None
            if ru.get("address6") is not None:
                raw6 = str(ru["address6"])
                try:
                    address6 = IPv6Interface(raw6)
                except ValueError as e:
                    raise TopologyError(f"{uw}: address6: {e}") from None
                _addr6(f"{uw}: address6", address6.ip, "IPv6 lives in 2001:db8::/32")
                if gateway is None:  # device-only
                    if ru.get("gateway6") is not None:
                        raise TopologyError(f"{uw}: gateway6: a device-only uplink (no gateway) takes no gateway6")
                    if "/" in raw6 and address6.network.prefixlen != 128:
                        raise TopologyError(f"{uw}: address6: a device-only uplink takes a /128, got {address6}")
                    address6 = IPv6Interface((address6.ip, 128))
                else:
                    if ru.get("gateway6") is None:
                        raise TopologyError(f"{uw}: gateway6: required with address6 (a 2001:db8:: address in the subnet, or link-local fe80::/64)")
                    if address6.network.prefixlen > 127:
                        raise TopologyError(f"{uw}: address6: {address6} leaves no room for a gateway6")
                    gateway6 = _addr6(f"{uw}: gateway6", ru["gateway6"], "IPv6 lives in 2001:db8::/32", allow_link_local=True)
                    if gateway6 not in LINK_LOCAL6 and gateway6 not in address6.network:
                        raise TopologyError(f"{uw}: gateway6: {gateway6} is neither inside {address6.network} nor link-local")
                    if gateway6 == address6.ip:
                        raise TopologyError(f"{uw}: gateway6: {gateway6} equals address6")
                _net6(f"{uw}: address6", address6.network)
                claim6(f"{uw}: address6", uw, address6.network)
            elif ru.get("gateway6") is not None:
                raise TopologyError(f"{uw}: gateway6: needs address6")
            site.uplinks.append(Uplink(sname, uname, ui, number, ifn, iface, gateway, peer, weight, lab, address6, gateway6))
            number += 1
        sites.append(site)

    # Device-only peers are /32s but must not fall inside another uplink's subnet either.
    for u in (u for s in sites for u in s.uplinks):
        ra = u.router_address
        for other, onet in cust_nets:
            if ra in onet and other != f"site {u.site} uplink {u.name}":
                raise TopologyError(f"site {u.site} uplink {u.name}: {'peer' if u.device_only else 'gateway'}: {ra} lies inside {other} ({onet})")
    return Topology(lab, hosts, probe, sites, hosts6, probe6)
