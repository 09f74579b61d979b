#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kernel_check
short_description: Check that the running kernel and userland can run a multi-ISP gateway
version_added: "0.1.0"
description:
  - Reads the running kernel's build configuration and reports, option by option, whether the
    features the collection relies on are there (V(y)), available as a loadable module (V(m)),
    missing (V(missing)) or could not be determined (V(unknown)), and which feature needs each one.
  - The configuration is taken from the first of C(/proc/config.gz),
    C(/boot/config-RELEASE) and C(/lib/modules/RELEASE/config) that exists (or from
    O(config_path)). The result says which one in RV(source).
  - For an option built as a module (V(=m)) the module must be loaded already
    (C(/sys/module/NAME)) or be installed for the running kernel (C(modules.dep) or
    C(modules.builtin) under C(/lib/modules/RELEASE)); if C(/lib/modules/RELEASE) does not exist
    the module cannot be loaded and the option counts as missing.
  - Without any configuration file (or with O(method=probes)) the module probes the live kernel
    instead and says so (RV(source=probes)); see the notes for what the probes do.
  - Also checks the userland the collection uses - C(ip) (with JSON output and C(ip nexthop)),
    C(nft) (with JSON output) and C(conntrack) - and reports missing tools like missing options.
  - Fails with one message listing everything that is missing and why it matters.
options:
  required:
    description:
      - Additional kernel options that must be present, beside the built-in list
        (IP_ADVANCED_ROUTER, IP_MULTIPLE_TABLES, IP_ROUTE_MULTIPATH, NF_TABLES, NF_TABLES_IPV4 or
        NF_TABLES_INET, NFT_NAT, NFT_MASQ, NF_NAT, NF_CONNTRACK, NFT_CT, NF_CT_NETLINK).
      - Each element is an option name (with or without C(CONFIG_)) or a dict with C(option) (a name,
        or a list of names of which any one is enough), C(feature) (why it is needed) and optionally
        C(module) (the kernel module that provides it, used to check V(=m) options).
    type: list
    elements: raw
    default: []
  optional:
    description:
      - Additional options that are reported but never make the module fail (same format as
        O(required)). IPV6_MULTIPLE_TABLES is always reported as optional.
    type: list
    elements: raw
    default: []
  skip:
    description:
      - Names of options (built-in or given) or userland checks (V(ip), V(ip_json), V(nexthop), V(nft),
        V(nft_json), V(conntrack)) not to check.
    type: list
    elements: str
    default: []
  config_path:
    description:
      - Read the kernel configuration from this file (plain or gzip) instead of looking for the
        running kernel's. The file must exist.
    type: path
  modules_dir:
    description:
      - Directory with the running kernel's modules, used for V(=m) options.
      - Defaults to C(/lib/modules/RELEASE) of the running kernel.
    type: path
  method:
    description:
      - V(auto) reads the configuration and falls back to probes when there is none.
      - V(config) fails if no configuration can be read.
      - V(probes) ignores any configuration and probes the live kernel.
    type: str
    choices: [auto, config, probes]
    default: auto
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Runs for real in check mode too, because it changes nothing (the live probes create throwaway objects and remove them in the same run).
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
    details: Nothing is changed, so there is nothing to show.
  idempotent:
    description: When run twice in a row outside check mode with the same arguments, the second invocation indicates no change.
    support: full
    details: Never changes anything; the task never reports a change.
notes:
  - The probes run in the network namespace of the target. Each probe uses a throwaway table id
    and a firewall mark that no configuration uses, checked to be unused first, and is removed
    again even when it fails - an ip rule that looks up an empty table, a single-path and a
    multipath route in that empty table (no rule points there once the rule probe is gone) and an
    IPv6 rule; nftables features are probed by one transaction that creates a dormant table with
    a NAT chain, masquerade, snat and ct rules matching an unused mark and deletes the table again,
    so nothing is ever committed to the ruleset.
  - Probes need root. Options that no probe covers are reported as V(unknown) with a warning,
    and never make the module fail.
  - The correct Kconfig symbol for ctnetlink (what C(conntrack -D) needs) is NF_CT_NETLINK;
    NF_CONNTRACK_NETLINK (a common misspelling that no kernel has) is accepted as an alias for it in
    O(required), O(optional) and O(skip).
seealso:
  - module: multiwan.linux.rt_table
author:
  - multiwan.linux maintainers (@multiwan)
"""

EXAMPLES = r"""
- name: Stop early on a kernel that cannot do policy routing, multipath or NAT
  multiwan.linux.kernel_check:

- name: Also require IPv6 policy routing and nft numgen (random loss in the lab)
  multiwan.linux.kernel_check:
    required:
      - IPV6_MULTIPLE_TABLES
      - option: CONFIG_NFT_NUMGEN
        feature: random loss in the lab
        module: nft_numgen
  register: kernel

- name: Show where the answer came from
  ansible.builtin.debug:
    msg: "{{ kernel.source }}: {{ kernel.options | dict2items | map(attribute='key') | join(', ') }}"

- name: Check a configuration file copied from another kernel build
  multiwan.linux.kernel_check:
    config_path: /root/config-6.12.0-custom
    skip: [conntrack]
"""

RETURN = r"""
source:
  description: Where the kernel answers came from - the configuration file read, or V(probes).
  returned: always
  type: str
  sample: /proc/config.gz
kernel:
  description: The running kernel and where its modules would be.
  returned: always
  type: dict
  sample: {"release": "6.1.0-18-amd64", "modules_dir": "/lib/modules/6.1.0-18-amd64", "modules_dir_exists": true}
options:
  description: One entry per kernel option checked.
  returned: always
  type: dict
  sample:
    IP_MULTIPLE_TABLES: {"status": "y", "ok": true, "required": true, "feature": "policy routing (ip rules per uplink)"}
    NFT_MASQ: {"status": "m", "ok": true, "required": true, "feature": "masquerade", "module": "nft_masq",
               "detail": "installed: kernel/net/netfilter/nft_masq.ko.xz"}
userland:
  description: One entry per userland check (V(status) is V(ok), V(missing) or V(unknown)), with version where known.
  returned: always
  type: dict
  sample: {"nft": {"status": "ok", "ok": true, "version": "1.0.6", "path": "/usr/sbin/nft", "feature": "nftables rulesets"}}
missing:
  description: Everything required that is missing, with the feature that needs it.
  returned: always
  type: list
  elements: str
  sample: ["CONFIG_NFT_MASQ (masquerade on uplinks whose address changes): not set"]
unknown:
  description: Required things that could not be determined (warned about, not fatal).
  returned: always
  type: list
  elements: str
probes:
  description: What was probed on the live kernel and the outcome (empty unless RV(source=probes)).
  returned: always
  type: list
  elements: str
"""

import gzip
import json
import os
import random
import re

from ansible.module_utils.basic import AnsibleModule

# (option or options of which one is enough, feature, kernel module providing it when =m)
DEFAULT_REQUIRED = [
    ("IP_ADVANCED_ROUTER", "advanced routing (needed for policy routing and multipath)", None),
    ("IP_MULTIPLE_TABLES", "policy routing (ip rules per uplink)", None),
    ("IP_ROUTE_MULTIPATH", "weighted multipath default route over the uplinks", None),
    ("NF_TABLES", "nftables (NAT and connection marks)", "nf_tables"),
    (("NF_TABLES_IPV4", "NF_TABLES_INET"), "nftables tables of family ip (or inet)", None),
    ("NFT_NAT", "nftables NAT chains and snat", "nft_nat"),
    ("NFT_MASQ", "masquerade on uplinks whose address changes (DHCP, PPPoE)", "nft_masq"),
    ("NF_NAT", "NAT core (translating LAN addresses to the uplink's)", "nf_nat"),
    ("NF_CONNTRACK", "connection tracking (NAT, connections stay on their uplink)", "nf_conntrack"),
    ("NFT_CT", "ct mark in nftables (keep each connection on the uplink it started on)", "nft_ct"),
    ("NF_CT_NETLINK", "ctnetlink: conntrack -D drops only a dead uplink's connections", "nf_conntrack_netlink"),
]
DEFAULT_OPTIONAL = [
    ("IPV6_MULTIPLE_TABLES", "IPv6 policy routing (IPv6 uplinks)", None),
]
USERLAND = [
    ("ip", "iproute2: every route, rule and nexthop is written with ip -batch"),
    ("ip_json", "ip -j: live state is read as JSON"),
    ("nexthop", "nexthop objects and groups (ip nexthop; atomic failover of the default route)"),
    ("nft", "nftables userland: the NAT ruleset is written with nft -f"),
    ("nft_json", "nft -j: the live ruleset is read as JSON"),
    ("conntrack", "conntrack-tools: removing a dead uplink's connections after a failover"),
]
CONFIG_CANDIDATES = ("/proc/config.gz", "/boot/config-{release}", "/lib/modules/{release}/config")
_OPTION = re.compile(r"^[A-Z0-9_]+$")
_CONFIG_LINE = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_NOT_SET_LINE = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")
_MODULE_SUFFIX = re.compile(r"\.ko(\.(xz|gz|zst|bz2))?$")
# Mark and table ids for the probes: 0x6d is the collection's tag (docs/design.md); the rest is
# random and checked to be unused, so a probe never touches something that exists.
PROBE_TAG = 0x6D000000
# Names people write for options whose Kconfig symbol is different (ctnetlink is NF_CT_NETLINK).
OPTION_ALIASES = {"NF_CONNTRACK_NETLINK": "NF_CT_NETLINK"}


class Requirement(object):
    """One line of the report: options of which any one is enough, and why they are needed."""

    def __init__(self, options, feature, module=None, required=True):
        self.options = list(options)
        self.feature = feature
        self.module = module
        self.required = required


# -- parameters ---------------------------------------------------------------------------------

def normalize_option(name):
    if not isinstance(name, str):
        raise ValueError("must be a string, got %r" % (name,))
    text = name.strip().upper()
    if text.startswith("CONFIG_"):
        text = text[len("CONFIG_"):]
    if not _OPTION.match(text):
        raise ValueError("%r is not a kernel option name" % (name,))
    return OPTION_ALIASES.get(text, text)


def parse_requirements(items, field, required):
    """User ``required``/``optional`` entries as :class:`Requirement`; ValueError names the field."""
    result = []
    for index, item in enumerate(items or []):
        where = "%s[%d]" % (field, index)
        try:
            if isinstance(item, str):
                options, feature, module = [normalize_option(item)], "requested by the playbook", None
            elif isinstance(item, dict):
                unknown = set(item) - {"option", "feature", "module"}
                if unknown:
                    raise ValueError("unknown key(s) %s (allowed: option, feature, module)" % ", ".join(sorted(unknown)))
                if "option" not in item:
                    raise ValueError("needs 'option'")
                raw = item["option"]
                names = raw if isinstance(raw, list) else [raw]
                if not names:
                    raise ValueError("'option' is an empty list")
                options = [normalize_option(n) for n in names]
                feature = item.get("feature") or "requested by the playbook"
                if not isinstance(feature, str):
                    raise ValueError("'feature' must be a string")
                module = item.get("module")
                if module is not None and (not isinstance(module, str) or not re.match(r"^[A-Za-z0-9_-]+$", module)):
                    raise ValueError("'module' must be a kernel module name")
            else:
                raise ValueError("must be an option name or a dict with option/feature/module")
        except ValueError as exc:
            raise ValueError("%s: %s" % (where, exc))
        result.append(Requirement(options, feature, module, required))
    return result


def build_requirements(required, optional, skip):
    """Built-in list + user entries (a user entry for a built-in option replaces it) - skip."""
    merged = {}
    for options, feature, module in DEFAULT_REQUIRED:
        names = [options] if isinstance(options, str) else list(options)
        merged[names[0]] = Requirement(names, feature, module, True)
    for options, feature, module in DEFAULT_OPTIONAL:
        merged[options] = Requirement([options], feature, module, False)
    for requirement in optional + required:
        merged[requirement.options[0]] = requirement
    skipped = set()
    for name in skip:
        try:
            skipped.add(normalize_option(name))
        except ValueError:
            pass
    return [r for r in merged.values() if not skipped.intersection(r.options)]


# -- kernel configuration -----------------------------------------------------------------------

def parse_config(text):
    """``{OPTION: value}`` from a kernel .config: 'y', 'm', 'n' (is not set) or the raw value."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        match = _CONFIG_LINE.match(line)
        if match:
            values[match.group(1)] = match.group(2)
            continue
        match = _NOT_SET_LINE.match(line)
        if match:
            values[match.group(1)] = "n"
    return values


def read_config_file(path):
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", "replace")


def find_config(release, candidates=CONFIG_CANDIDATES):
    for pattern in candidates:
        path = pattern.format(release=release)
        if os.path.isfile(path):
            return path
    return None


class ModuleIndex(object):
    """Which kernel modules the running kernel can load: loaded, built in, or installed."""

    def __init__(self, modules_dir, sys_module="/sys/module"):
        self.modules_dir = modules_dir
        self.sys_module = sys_module
        self.exists = os.path.isdir(modules_dir)
        self.builtin = self._names(os.path.join(modules_dir, "modules.builtin"))
        self.installed = self._names(os.path.join(modules_dir, "modules.dep"), dep=True)

    @staticmethod
    def canonical(name):
        return name.replace("-", "_")

    def _names(self, path, dep=False):
        names = {}
        try:
            with open(path, "r", encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    module_path = line.split(":", 1)[0].strip() if dep else line.strip()
                    if module_path:
                        base = _MODULE_SUFFIX.sub("", os.path.basename(module_path))
                        names[self.canonical(base)] = module_path
        except (IOError, OSError):
            pass
        return names

    def available(self, module):
        """(True/False, detail) for a module name."""
        name = self.canonical(module)
        if os.path.isdir(os.path.join(self.sys_module, name)):
            return True, "loaded (%s)" % os.path.join(self.sys_module, name)
        if name in self.builtin:
            return True, "built in (modules.builtin: %s)" % self.builtin[name]
        if name in self.installed:
            return True, "installed: %s" % self.installed[name]
        if not self.exists:
            return False, "module %s is not loaded and %s does not exist, so it cannot be loaded" % (module, self.modules_dir)
        return False, "module %s is neither loaded nor listed in %s/modules.dep" % (module, self.modules_dir)


def evaluate_config(requirements, values, modules):
    """Report entries ``{OPTION: {...}}`` for every option of every requirement."""
    report = {}
    for requirement in requirements:
        for option in requirement.options:
            value = values.get(option)
            entry = {"feature": requirement.feature, "required": requirement.required}
            if value == "y" or (value not in (None, "n", "m") and value != ""):
                entry.update(status="y", ok=True)
            elif value == "m":
                entry.update(status="m")
                module = requirement.module if len(requirement.options) == 1 else None
                if module is None:
                    entry.update(ok=None, detail="built as a module; which module provides it is not known, so it was not verified")
                else:
                    ok, detail = modules.available(module)
                    entry.update(ok=ok, module=module, detail=detail)
            else:
                entry.update(status="missing", ok=False,
                             detail="is not set" if value == "n" else "not in the configuration")
            report[option] = entry
    return report


# -- live probes --------------------------------------------------------------------------------

def _not_supported(text):
    text = text.lower()
    return any(s in text for s in ("not supported", "not enabled", "unknown family", "no such file or directory"))


class Prober(object):
    """Probes of the live kernel that leave nothing behind (see the module notes)."""

    def __init__(self, module, ip_bin, nft_bin, conntrack_bin):
        self.module = module
        self.ip = ip_bin
        self.nft = nft_bin
        self.conntrack = conntrack_bin
        self.log = []
        self.results = {}

    def run(self, argv, data=None):
        rc, out, err = self.module.run_command(argv, data=data, binary_data=data is not None)
        return rc, out, err

    def note(self, text):
        self.log.append(text)

    def set(self, option, status, detail):
        self.results[option] = (status, detail)

    def pick_ids(self):
        """A table id and a mark that nothing uses right now."""
        used = ""
        for family in ("-4", "-6"):
            rc, out, dummy = self.run([self.ip, family, "-j", "-d", "rule", "show"])
            if rc == 0 and out.strip():
                used += json.dumps(json.loads(out))
        for dummy in range(20):
            suffix = random.randint(1, 0x00FFFFFE)
            table = PROBE_TAG | suffix
            if str(table) in used or hex(table) in used:
                continue
            rc, out, dummy = self.run([self.ip, "-j", "route", "show", "table", str(table)])
            if rc == 0 and json.loads(out or "[]"):
                continue
            return table, table
        raise RuntimeError("could not find an unused table id for the probes")

    def probe_routing(self):
        if not self.ip:
            for option in ("IP_ADVANCED_ROUTER", "IP_MULTIPLE_TABLES", "IP_ROUTE_MULTIPATH", "IPV6_MULTIPLE_TABLES"):
                self.set(option, "unknown", "ip is not installed, no routing probe possible")
            return
        table, mark = self.pick_ids()
        rule = ["priority", "32765", "fwmark", "%#x/0xffffffff" % mark, "table", str(table)]
        try:
            rc, dummy, err = self.run([self.ip, "-4", "rule", "add"] + rule)
            self.note("ip -4 rule add %s: %s" % (" ".join(rule), "ok" if rc == 0 else err.strip()))
            if rc == 0:
                self.set("IP_MULTIPLE_TABLES", "y", "an ip rule looking up table %d was accepted" % table)
                self.set("IP_ADVANCED_ROUTER", "y", "implied by IP_MULTIPLE_TABLES")
            elif _not_supported(err):
                self.set("IP_MULTIPLE_TABLES", "missing", "the kernel refused an ip rule: %s" % err.strip())
                self.set("IP_ADVANCED_ROUTER", "unknown", "ip rules refused; cannot tell")
            else:
                self.set("IP_MULTIPLE_TABLES", "unknown", "ip rule add failed: %s" % err.strip())
                self.set("IP_ADVANCED_ROUTER", "unknown", "ip rule add failed")
        finally:
            self._delete_rules("-4", rule)
        try:
            single = ["198.51.100.254/32", "dev", "lo", "table", str(table)]
            rc, dummy, err = self.run([self.ip, "-4", "route", "add"] + single)
            self.note("ip -4 route add %s: %s" % (" ".join(single), "ok" if rc == 0 else err.strip()))
            if rc != 0:
                self.set("IP_ROUTE_MULTIPATH", "unknown", "even a single-path route into a throwaway table failed: %s" % err.strip())
            else:
                multi = ["198.51.100.253/32", "table", str(table), "nexthop", "dev", "lo", "nexthop", "dev", "lo"]
                rc, dummy, err = self.run([self.ip, "-4", "route", "add"] + multi)
                self.note("ip -4 route add %s: %s" % (" ".join(multi), "ok" if rc == 0 else err.strip()))
                if rc == 0:
                    self.set("IP_ROUTE_MULTIPATH", "y", "a two-nexthop route was accepted")
                else:
                    self.set("IP_ROUTE_MULTIPATH", "missing", "the kernel refused a multipath route: %s" % err.strip())
        finally:
            # The table was verified empty before: flushing it removes only what the probe added.
            self.run([self.ip, "-4", "route", "flush", "table", str(table)])
        if not os.path.exists("/proc/net/if_inet6"):
            self.set("IPV6_MULTIPLE_TABLES", "unknown", "IPv6 is disabled here")
            return
        try:
            rc, dummy, err = self.run([self.ip, "-6", "rule", "add"] + rule)
            self.note("ip -6 rule add %s: %s" % (" ".join(rule), "ok" if rc == 0 else err.strip()))
            if rc == 0:
                self.set("IPV6_MULTIPLE_TABLES", "y", "an IPv6 ip rule was accepted")
            elif _not_supported(err):
                self.set("IPV6_MULTIPLE_TABLES", "missing", "the kernel refused an IPv6 ip rule: %s" % err.strip())
            else:
                self.set("IPV6_MULTIPLE_TABLES", "unknown", "ip -6 rule add failed: %s" % err.strip())
        finally:
            self._delete_rules("-6", rule)

    def _delete_rules(self, family, rule):
        # Delete by the full selector, so only the probe's own rule can match; repeat in case it
        # was added twice.
        for dummy in range(3):
            rc = self.run([self.ip, family, "rule", "del"] + rule)[0]
            if rc != 0:
                break

    def _nft_batch(self, name, family, body):
        script = "add table %s %s { flags dormant; }\n%sdelete table %s %s\n" % (family, name, body, family, name)
        rc, dummy, err = self.run([self.nft, "-f", "-"], data=script)
        return rc, err.strip()

    def probe_nftables(self):
        options = ("NF_TABLES", "NF_TABLES_IPV4", "NF_TABLES_INET", "NF_NAT", "NFT_NAT", "NFT_MASQ", "NF_CONNTRACK", "NFT_CT")
        if not self.nft:
            for option in options:
                self.set(option, "unknown", "nft is not installed, no nftables probe possible")
            return
        name = "mwprobe_%08x" % random.randint(0, 0xFFFFFFFF)
        mark = "%#x" % (PROBE_TAG | random.randint(1, 0x00FFFFFE))
        chain = "add chain {f} {t} post {{ type nat hook postrouting priority 100; policy accept; }}\n"
        steps = [
            (("NF_TABLES", "NF_TABLES_IPV4"), ""),
            (("NF_NAT", "NFT_NAT"), chain),
            (("NFT_MASQ",), chain + "add rule {f} {t} post meta mark " + mark + " masquerade\n"),
            (("NFT_NAT",), chain + "add rule {f} {t} post meta mark " + mark + " snat to 192.0.2.1\n"),
            (("NF_CONNTRACK", "NFT_CT"), chain + "add rule {f} {t} post meta mark " + mark + " ct state new ct mark set 0x1\n"),
        ]
        try:
            for family in ("ip", "inet"):
                rc, err = self._nft_batch(name, family, "")
                self.note("nft: add+delete dormant table %s %s: %s" % (family, name, "ok" if rc == 0 else err))
                option = "NF_TABLES_IPV4" if family == "ip" else "NF_TABLES_INET"
                self.set(option, "y" if rc == 0 else ("missing" if _not_supported(err) else "unknown"),
                         "table of family %s: %s" % (family, "accepted" if rc == 0 else err))
            usable = [f for f, o in (("ip", "NF_TABLES_IPV4"), ("inet", "NF_TABLES_INET")) if self.results[o][0] == "y"]
            if not usable:
                self.set("NF_TABLES", "missing" if self.results["NF_TABLES_IPV4"][0] == "missing" else "unknown",
                         "no nftables table could be created")
                for option in options[3:]:
                    self.set(option, "unknown", "nftables itself is not usable")
                return
            self.set("NF_TABLES", "y", "a table was accepted")
            family = usable[0]
            for index, (covered, body) in enumerate(steps[1:]):
                rc, err = self._nft_batch(name, family, body.format(f=family, t=name))
                self.note("nft: %s in a dormant throwaway table: %s" % ("/".join(covered), "ok" if rc == 0 else err))
                if index == 0 and rc != 0:
                    # Without a NAT chain the rule probes below cannot say anything.
                    for option in ("NF_NAT", "NFT_NAT"):
                        self.set(option, "missing" if _not_supported(err) else "unknown", err)
                    for option in ("NFT_MASQ", "NF_CONNTRACK", "NFT_CT"):
                        self.set(option, "unknown", "not probed: no NAT chain could be created")
                    break
                for option in covered:
                    if option in self.results and self.results[option][0] != "y":
                        continue
                    if rc == 0:
                        self.set(option, "y", "accepted by the kernel")
                    else:
                        self.set(option, "missing" if _not_supported(err) else "unknown", err)
        finally:
            # Each transaction deletes its own table; this only matters if one was cut short.
            for family in ("ip", "inet"):
                self.run([self.nft, "delete", "table", family, name])

    def probe_ctnetlink(self):
        if not self.conntrack:
            self.set("NF_CT_NETLINK", "unknown", "conntrack is not installed, ctnetlink not probed")
            return
        argv = [self.conntrack, "-G", "-p", "udp", "-s", "192.0.2.255", "-d", "192.0.2.254", "--sport", "9", "--dport", "9"]
        rc, dummy, err = self.run(argv)
        text = err.strip()
        self.note("conntrack -G (lookup of a flow that does not exist): %s" % (text or "ok"))
        if rc == 0 or "doesn't exist" in text or "does not exist" in text:
            self.set("NF_CT_NETLINK", "y", "ctnetlink answered a lookup")
        elif _not_supported(text):
            self.set("NF_CT_NETLINK", "missing", text)
        else:
            self.set("NF_CT_NETLINK", "unknown", text)


def evaluate_probes(requirements, results):
    report = {}
    for requirement in requirements:
        for option in requirement.options:
            status, detail = results.get(option, ("unknown", "no probe covers this option"))
            ok = True if status == "y" else (False if status == "missing" else None)
            report[option] = {"feature": requirement.feature, "required": requirement.required,
                              "status": status, "ok": ok, "detail": detail}
    return report


# -- userland -----------------------------------------------------------------------------------

def check_userland(module, skip):
    features = dict(USERLAND)
    report = {}

    def put(name, ok, detail=None, **extra):
        if name in skip:
            return
        entry = {"status": "ok" if ok else ("missing" if ok is False else "unknown"), "ok": ok,
                 "feature": features[name]}
        if detail:
            entry["detail"] = detail
        entry.update(extra)
        report[name] = entry

    ip_bin = module.get_bin_path("ip")
    if ip_bin:
        rc, out, err = module.run_command([ip_bin, "-V"])
        version = re.search(r"iproute2-([0-9][\w.-]*)", out + err)
        put("ip", True, path=ip_bin, version=version.group(1) if version else (out + err).strip())
        rc, out, err = module.run_command([ip_bin, "-j", "link", "show", "dev", "lo"])
        put("ip_json", rc == 0 and _is_json(out), None if rc == 0 else err.strip())
        rc, out, err = module.run_command([ip_bin, "nexthop", "help"])
        if "ip nexthop" not in out + err:
            put("nexthop", False, "this ip does not know 'ip nexthop' (iproute2 5.3 or later needed)")
        else:
            rc, out, err = module.run_command([ip_bin, "-j", "nexthop", "show"])
            put("nexthop", rc == 0, "kernel: %s" % err.strip() if rc != 0 else "ip -j nexthop show works")
    else:
        for name in ("ip", "ip_json", "nexthop"):
            put(name, False, "ip (iproute2) is not installed")

    nft_bin = module.get_bin_path("nft")
    if nft_bin:
        rc, out, err = module.run_command([nft_bin, "-v"])
        version = re.search(r"v([0-9][\w.]*)", out)
        put("nft", True, path=nft_bin, version=version.group(1) if version else out.strip())
        rc, out, err = module.run_command([nft_bin, "-j", "list", "tables"])
        put("nft_json", rc == 0 and _is_json(out), None if rc == 0 else err.strip())
    else:
        put("nft", False, "nft (nftables) is not installed")
        put("nft_json", False, "nft (nftables) is not installed")

    conntrack_bin = module.get_bin_path("conntrack")
    if conntrack_bin:
        rc, out, err = module.run_command([conntrack_bin, "-V"])
        version = re.search(r"v([0-9][\w.]*)", out + err)
        put("conntrack", True, path=conntrack_bin, version=version.group(1) if version else None)
    else:
        put("conntrack", False, "conntrack (conntrack-tools) is not installed")
    return report, ip_bin, nft_bin, conntrack_bin


def _is_json(text):
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


# -- verdict ------------------------------------------------------------------------------------

def verdict(requirements, options, userland):
    """(missing, unknown) lists of human-readable lines, for required things only."""
    missing, unknown = [], []
    for requirement in requirements:
        if not requirement.required:
            continue
        entries = [(o, options[o]) for o in requirement.options]
        if any(e["ok"] for dummy, e in entries):
            continue
        names = " or ".join("CONFIG_%s" % o for o, dummy in entries)
        details = "; ".join("%s: %s" % (o, e.get("detail", e["status"])) if len(entries) > 1 else e.get("detail", e["status"])
                            for o, e in entries)
        line = "%s (%s): %s" % (names, requirement.feature, details)
        if any(e["ok"] is None for dummy, e in entries):
            unknown.append(line)
        else:
            missing.append(line)
    for name, entry in sorted(userland.items()):
        if entry["ok"] is False:
            missing.append("%s (%s): %s" % (name, entry["feature"], entry.get("detail", "missing")))
        elif entry["ok"] is None:
            unknown.append("%s (%s): %s" % (name, entry["feature"], entry.get("detail", "unknown")))
    return missing, unknown


def main():
    module = AnsibleModule(
        argument_spec=dict(
            required=dict(type="list", elements="raw", default=[]),
            optional=dict(type="list", elements="raw", default=[]),
            skip=dict(type="list", elements="str", default=[]),
            config_path=dict(type="path"),
            modules_dir=dict(type="path"),
            method=dict(type="str", default="auto", choices=["auto", "config", "probes"]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        extra = parse_requirements(params["required"], "required", True) + \
            parse_requirements(params["optional"], "optional", False)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    if params["config_path"] and params["method"] == "probes":
        module.fail_json(msg="config_path: cannot be combined with method=probes")
    if params["config_path"] and not os.path.isfile(params["config_path"]):
        module.fail_json(msg="config_path: %s does not exist or is not a file" % params["config_path"])
    requirements = build_requirements([r for r in extra if r.required], [r for r in extra if not r.required],
                                      params["skip"])
    skip = set(params["skip"])

    release = os.uname()[2]
    modules_dir = params["modules_dir"] or "/lib/modules/%s" % release
    kernel = {"release": release, "modules_dir": modules_dir, "modules_dir_exists": os.path.isdir(modules_dir)}
    userland, ip_bin, nft_bin, conntrack_bin = check_userland(module, skip)

    config = None
    if params["method"] != "probes":
        config = params["config_path"] or find_config(release)
        if config is None and params["method"] == "config":
            module.fail_json(msg="method=config: no kernel configuration found (looked for %s)"
                             % ", ".join(c.format(release=release) for c in CONFIG_CANDIDATES), kernel=kernel)
    probes = []
    if config is not None:
        try:
            values = parse_config(read_config_file(config))
        except (IOError, OSError, ValueError, EOFError) as exc:
            module.fail_json(msg="config_path: cannot read %s: %s" % (config, exc), kernel=kernel)
        options = evaluate_config(requirements, values, ModuleIndex(modules_dir))
        source = config
    else:
        prober = Prober(module, ip_bin, nft_bin, conntrack_bin)
        try:
            prober.probe_routing()
            prober.probe_nftables()
            prober.probe_ctnetlink()
        except (RuntimeError, ValueError) as exc:
            module.fail_json(msg="kernel probes failed: %s" % exc, probes=prober.log, kernel=kernel)
        options = evaluate_probes(requirements, prober.results)
        probes = prober.log
        source = "probes"

    missing, unknown = verdict(requirements, options, userland)
    for line in unknown:
        module.warn("could not verify %s" % line)
    result = dict(changed=False, source=source, kernel=kernel, options=options, userland=userland,
                  missing=missing, unknown=unknown, probes=probes)
    if missing:
        module.fail_json(msg="this system cannot run a multiwan gateway (kernel checked via %s): %s"
                         % (source, "; ".join(missing)), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
