#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module nft_masquerade: source NAT on the uplinks, in one nftables table we own."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nft_masquerade
short_description: Masquerade or SNAT traffic leaving a multi-ISP gateway's uplinks (nftables)
version_added: 0.1.0
description:
  - Owns one dedicated nftables table (default C(ip multiwan)) with a chain C(nat_postrouting)
    (C(type nat hook postrouting priority srcnat)). Per uplink interface the chain holds a
    C(masquerade) rule, or C(snat to ADDRESS) when O(uplinks[].snat_address) is set.
  - Traffic to O(exclude_destinations) is never translated (C(ip daddr {...} return) first). When
    O(source_networks) is given, only traffic from those networks is translated.
  - The module owns the B(whole) table. Anything else found in it (other chains, sets, maps) is
    removed and shown in the diff.
  - Sticky connections (O(uplinks[].mark)) add chains C(mark_prerouting) and C(mark_postrouting)
    (C(type filter), C(priority mangle)) to the same table. A new connection is marked with the
    uplink it leaves by (its first packet's multipath choice) or arrives on (inbound, port
    forwards); every later packet of a marked connection gets the mark as its packet mark, so
    C(ip rule fwmark MARK/MASK lookup TABLE) (module M(multiwan.linux.ip_rule)) keeps the whole
    connection, replies included, on that uplink. Only the bits of O(mark_mask) are used; marks
    other software sets in the other bits keep working.
  - O(port_forwards) add a chain C(nat_prerouting) (C(type nat hook prerouting priority dstnat))
    with one C(dnat) rule per forward.
  - The live table is read with C(nft -j list table) and compared as normalised JSON expressions
    with the desired rules; nothing is changed when they are equal. A change replaces the whole
    table in one C(nft -f) transaction (C(table X), C(delete table X), new definition), which the
    kernel applies atomically, so there is no moment without NAT rules. Other tables are never
    touched.
  - Existing connections keep their translation over a reload, because NAT bindings live in the
    conntrack entries, not in the rules; only new connections use the new rules (checked by the
    collection's lab tests).
  - With O(persist=true) the same table definition is written to O(persist_path) and one include
    line for it is added to O(persist_main_config), so the NAT survives a reboot when the
    distribution's C(nftables) service is enabled (the module does not enable it).
author:
  - multiwan.linux maintainers (@multiwan)
options:
  state:
    description:
      - V(present) creates or updates the table; V(absent) deletes the table (and, with
        O(persist=true), the persisted file and its include line).
    type: str
    choices: [present, absent]
    default: present
  family:
    description:
      - Table family. V(ip) translates IPv4, V(ip6) IPv6, V(inet) both.
      - Addresses and networks must belong to the family (either version for V(inet)).
    type: str
    choices: [ip, ip6, inet]
    default: ip
  table:
    description:
      - Name of the table this module owns. A letter, then letters, digits, C(_) or C(-).
    type: str
    default: multiwan
  uplinks:
    description:
      - Interfaces whose outgoing traffic is translated. Required (non-empty) with V(present).
      - Rules are ordered by interface name, so the order of this list does not matter.
    type: list
    elements: dict
    default: []
    suboptions:
      interface:
        description:
          - Outgoing interface (C(oifname)). Kernel naming rules apply (at most 15 characters,
            no C(/), C(:) or whitespace); C("), C(\) and C(*) are rejected because nft gives them
            a special meaning. Each interface may appear once.
        type: str
        required: true
      snat_address:
        description:
          - Translate to this fixed address (C(snat to)). Omit it to use C(masquerade), which
            picks the interface's current address and follows address changes (DHCP, PPPoE).
          - In an V(inet) table an IPv4 address translates only IPv4 traffic and an IPv6 address
            only IPv6 traffic.
        type: str
      mark:
        description:
          - Connection mark of this uplink (sticky connections), inside O(mark_mask) and unique.
            The collection's role uses the uplink's table id shifted left by 16 (docs/design.md).
          - Omit it (or give 0) for no marking on this uplink.
        type: int
  mark_mask:
    description:
      - The bits of the packet and connection marks this table uses for O(uplinks[].mark); other
        bits are left alone.
    type: int
    default: 16711680
  port_forwards:
    description:
      - Inbound port forwards to LAN servers, one C(dnat) rule each. With marks, replies leave by
        the uplink the connection came in on.
    type: list
    elements: dict
    default: []
    suboptions:
      interface:
        description: The uplink interface the connections arrive on; one of O(uplinks[].interface).
        type: str
        required: true
      protocol:
        description: Transport protocol.
        type: str
        choices: [tcp, udp]
        default: tcp
      port:
        description: Destination port on the uplink.
        type: int
        required: true
      to:
        description: The LAN server's address.
        type: str
        required: true
      to_port:
        description: The server's port; default the same as O(port_forwards[].port).
        type: int
      destination:
        description: Only connections to this address of the gateway (default any address of the interface).
        type: str
  source_networks:
    description:
      - Translate only traffic from these networks (for example the LANs). Empty means all
        traffic leaving an uplink, including the gateway's own.
      - Overlapping networks are merged. Host bits must be zero.
    type: list
    elements: str
    default: []
  exclude_destinations:
    description:
      - Never translate traffic to these networks (for example a VPN's or a partner's networks
        reached through an uplink without NAT).
    type: list
    elements: str
    default: []
  persist:
    description:
      - Write the table to O(persist_path) and include that file from O(persist_main_config).
      - V(false) leaves both files alone (it does not remove an earlier persisted copy).
    type: bool
    default: true
  persist_path:
    description:
      - File that receives the table definition. It starts with C(table F N) and
        C(delete table F N), so loading it twice (for example through an existing
        C(include "/etc/nftables.d/*.nft")) is harmless.
      - Default on Debian/Ubuntu C(/etc/nftables.d/FAMILY-TABLE.nft), on RHEL-likes
        C(/etc/nftables/FAMILY-TABLE.nft).
    type: path
  persist_main_config:
    description:
      - >-
        The configuration file the distribution's C(nftables) service loads. One line
        C(include "PERSIST_PATH"  # managed by multiwan.linux.nft_masquerade) is appended to it
        (after any C(flush ruleset)), unless it already includes that path. Nothing else in it is
        changed. It is created (a C(#!/usr/sbin/nft -f) line and the include) when missing.
      - Default C(/etc/sysconfig/nftables.conf) when that file exists (RHEL-likes), otherwise
        C(/etc/nftables.conf) (Debian/Ubuntu).
    type: path
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Reads the live table and the files and reports what would change; writes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - The first entry shows each touched table object (table, chains with their rules as nft
        text, foreign sets or maps that would be removed) before and after.
      - One more entry per touched file shows its content before and after.
  idempotent:
    description: When run twice in a row outside check mode with the same arguments, the second invocation indicates no change.
    support: full
notes:
  - Needs C(nft) with JSON support (nftables 0.9.3 or later; Debian, Ubuntu and RHEL builds have
    it) and a kernel with nftables NAT (C(inet) NAT needs Linux 5.2 or later).
  - Masquerade re-translates a flow whose output interface changed after a failover (dropping one
    packet); SNAT does not, so flows of a dead uplink with a fixed address need their conntrack
    entries removed (the collection's watchdog does that).
  - After a change the module reads the table back and warns if it does not match what was
    written (that would make the next run report a change).
seealso:
  - name: nftables wiki, Performing Network Address Translation
    description: masquerade and snat in nftables.
    link: https://wiki.nftables.org/wiki-nftables/index.php/Performing_Network_Address_Translation_(NAT)
"""

EXAMPLES = r"""
- name: Masquerade the LAN on a static uplink and a PPPoE uplink
  multiwan.linux.nft_masquerade:
    uplinks:
      - interface: wan1
      - interface: ppp0
    source_networks:
      - 10.1.0.0/24
    exclude_destinations:
      - 10.0.0.0/8

- name: Fixed SNAT address on one uplink, masquerade on the other, not persisted
  multiwan.linux.nft_masquerade:
    uplinks:
      - interface: wan1
        snat_address: 100.64.1.2
      - interface: ppp0
    persist: false

- name: NAT for IPv4 and IPv6 in one inet table
  multiwan.linux.nft_masquerade:
    family: inet
    table: multiwan
    uplinks:
      - interface: wan1
    source_networks:
      - 10.1.0.0/24
      - fd00:1::/64

- name: Sticky connections (marks 0x650000 / 0x660000 under 0x00ff0000) and a port forward on wan2
  multiwan.linux.nft_masquerade:
    uplinks:
      - interface: wan1
        mark: 0x650000     # table 101 << 16; ip rule fwmark 0x650000/0xff0000 lookup 101
      - interface: wan2
        mark: 0x660000
    source_networks:
      - 10.1.0.0/24
    port_forwards:
      - interface: wan2
        protocol: tcp
        port: 8080
        to: 10.1.0.10
        to_port: 80

- name: Remove the NAT table, its persisted file and the include line
  multiwan.linux.nft_masquerade:
    state: absent
"""

RETURN = r"""
table:
  description: The table the module owns, as C(FAMILY NAME).
  returned: always
  type: str
  sample: ip multiwan
rules:
  description: The desired rules of chain C(nat_postrouting) in nft syntax (empty for V(absent)).
  returned: always
  type: list
  elements: str
  sample:
    - ip daddr 10.0.0.0/8 return
    - meta oifname "wan1" ip saddr 10.1.0.0/24 masquerade
transaction:
  description: The C(nft -f) transaction that was applied (or would be, in check mode); empty when nothing changed in the kernel.
  returned: always
  type: str
  sample: "delete table ip multiwan\n"
persist_path:
  description: The persisted table file (when O(persist=true)).
  returned: when persist is true
  type: str
  sample: /etc/nftables.d/ip-multiwan.nft
persist_main_config:
  description: The file that got (or lost) the include line (when O(persist=true)).
  returned: when persist is true
  type: str
  sample: /etc/nftables.conf
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.multiwan.linux.plugins.module_utils import _nft
from ansible_collections.multiwan.linux.plugins.module_utils._diff import (
    DifferenceTracker, ObjectChanges, StateManager, diff_objects)

OWNER = "multiwan.linux.nft_masquerade"
RHEL_MAIN_CONFIG = "/etc/sysconfig/nftables.conf"
DEBIAN_MAIN_CONFIG = "/etc/nftables.conf"


class TableAndFilesTracker(DifferenceTracker):
    """Diff mode as a list: one entry for the nftables objects, one per file (shown as text)."""

    def __init__(self):
        super(TableAndFilesTracker, self).__init__()
        self.files = []

    def add(self, name, before=None, after=None):
        # MasqueradeManager.describe() names files by their ("file", path) key, tables by text.
        if isinstance(name, tuple):
            if before != after:
                self.files.append(dict(before_header=name[1], after_header=name[1],
                                       before=before or "", after=after or ""))
            return
        super(TableAndFilesTracker, self).add(name, before, after)

    def has_differences(self):
        return bool(self.files) or super(TableAndFilesTracker, self).has_differences()

    def get_diff(self):
        return [super(TableAndFilesTracker, self).get_diff()] + self.files


class MasqueradeManager(StateManager):
    """Plans and applies the NAT table plus its persisted copy."""

    def __init__(self, module, nft, family, name, desired, persist_path, main_config):
        super(MasqueradeManager, self).__init__(module)
        self.tracker = TableAndFilesTracker()
        self.nft = nft
        self.family = family
        self.name = name
        self.desired = desired            # _nft.Table, or None for state=absent
        self.persist_path = persist_path  # None when persist=false
        self.main_config = main_config
        self.transaction = ""

    # -- planning ------------------------------------------------------------------------------
    def _file_states(self):
        """(live, desired) file contents keyed by ("file", path); None content means absent."""
        live, desired = {}, {}
        if not self.persist_path:
            return live, desired
        own, main = read_file(self.persist_path), read_file(self.main_config)
        if own is not None:
            live[("file", self.persist_path)] = own
        if main is not None:
            live[("file", self.main_config)] = main
        if self.desired is not None:
            desired[("file", self.persist_path)] = _nft.persist_file_text(self.desired, OWNER)
            desired[("file", self.main_config)] = _nft.with_include(
                main if main is not None else "#!/usr/sbin/nft -f\n", self.persist_path, OWNER)
        elif main is not None:
            desired[("file", self.main_config)] = _nft.without_include(main, self.persist_path)
        return live, desired

    def plan(self):
        live_table = self.nft.list_table(self.family, self.name)
        live = live_table.states() if live_table else {}
        live_views = live_table.views() if live_table else {}
        desired = self.desired.states() if self.desired else {}
        desired_views = self.desired.views() if self.desired else {}
        live_files, desired_files = self._file_states()
        live.update(live_files)
        live_views.update(live_files)
        desired.update(desired_files)
        desired_views.update(desired_files)

        # Compare the canonical states, report readable views of the same keys.
        changes = diff_objects(live, desired, remove_unlisted=True)
        touched = [entry[0] for entry in changes.add + changes.remove + changes.replace]
        if any(key[0] != "file" for key in touched):
            if self.desired is not None:
                self.transaction = _nft.replace_table_script(self.desired)
            else:
                self.transaction = _nft.delete_table_script(self.family, self.name)
        return ObjectChanges(
            [(entry[0], desired_views[entry[0]]) for entry in changes.add],
            [(entry[0], live_views[entry[0]]) for entry in changes.remove],
            [(entry[0], live_views[entry[0]], desired_views[entry[0]]) for entry in changes.replace])

    def describe(self, key):
        if key[0] == "file":
            return key
        if key[0] == "table":
            return "table %s %s" % (self.family, self.name)
        if key[0] == "chain":
            return "chain %s %s %s" % (self.family, self.name, key[1])
        return "%s %s %s %s" % (key[1], self.family, self.name, key[2])

    # -- applying ------------------------------------------------------------------------------
    def apply(self, changes):
        # Wanted content per touched file; None deletes the file.
        files = dict((key[1], want) for key, want in changes.add if key[0] == "file")
        files.update((entry[0][1], entry[2]) for entry in changes.replace if entry[0][0] == "file")
        files.update((entry[0][1], None) for entry in changes.remove if entry[0][0] == "file")

        # The kernel validates the rules first: nothing is persisted that nft rejects.
        if self.transaction:
            self.nft.apply(self.transaction, "table %s %s" % (self.family, self.name))
            self.verify()
        # A missing included file breaks the whole boot ruleset: write our file before the
        # include line, drop the include line before our file.
        order = [self.persist_path, self.main_config] if self.desired is not None else [self.main_config, self.persist_path]
        for path in order:
            if path in files:
                write_file(self.module, path, files[path])

    def verify(self):
        after = self.nft.list_table(self.family, self.name)
        wanted = self.desired.states() if self.desired else None
        if (after.states() if after else None) != wanted:
            self.module.warn("table %s %s as read back differs from what was written; the next run "
                             "will report a change (please report this as a bug)" % (self.family, self.name))

    def result(self):
        result = dict(table="%s %s" % (self.family, self.name), transaction=self.transaction,
                      rules=self.desired.chains[_nft.NAT_CHAIN].view()["rules"] if self.desired else [])
        if self.persist_path:
            result.update(persist_path=self.persist_path, persist_main_config=self.main_config)
        return result


def read_file(path):
    """Content of ``path``, None when it does not exist."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError("cannot read %s: %s" % (path, exc))


def write_file(module, path, content):
    """Write ``content`` (None: delete) with write-then-rename, so readers never see half a file."""
    if content is None:
        if os.path.exists(path):
            os.unlink(path)
        return
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    fd, tmp = tempfile.mkstemp(prefix=".%s." % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        module.atomic_move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_persist_paths(family, table):
    """(table file, main config) for this distribution, detected by the main config's presence."""
    if os.path.exists(RHEL_MAIN_CONFIG):
        return "/etc/nftables/%s-%s.nft" % (family, table), RHEL_MAIN_CONFIG
    return "/etc/nftables.d/%s-%s.nft" % (family, table), DEBIAN_MAIN_CONFIG


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            family=dict(type="str", choices=list(_nft.FAMILIES), default="ip"),
            table=dict(type="str", default="multiwan"),
            uplinks=dict(type="list", elements="dict", default=[], options=dict(
                interface=dict(type="str", required=True),
                snat_address=dict(type="str"),
                mark=dict(type="int"),
            )),
            mark_mask=dict(type="int", default=_nft.DEFAULT_MARK_MASK),
            port_forwards=dict(type="list", elements="dict", default=[], options=dict(
                interface=dict(type="str", required=True),
                protocol=dict(type="str", choices=["tcp", "udp"], default="tcp"),
                port=dict(type="int", required=True),
                to=dict(type="str", required=True),
                to_port=dict(type="int"),
                destination=dict(type="str"),
            )),
            source_networks=dict(type="list", elements="str", default=[]),
            exclude_destinations=dict(type="list", elements="str", default=[]),
            persist=dict(type="bool", default=True),
            persist_path=dict(type="path"),
            persist_main_config=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    family, table = params["family"], params["table"]

    # Every parameter is checked before anything is read or touched.
    try:
        _nft.validate_table_name(table)
        desired = None
        if params["state"] == "present":
            desired = _nft.masquerade_table(family, table, params["uplinks"], params["source_networks"],
                                            params["exclude_destinations"], params["mark_mask"],
                                            params["port_forwards"])
        persist_path = main_config = None
        if params["persist"]:
            default_path, default_main = default_persist_paths(family, table)
            persist_path = params["persist_path"] or default_path
            main_config = params["persist_main_config"] or default_main
            for field, path in (("persist_path", persist_path), ("persist_main_config", main_config)):
                if not os.path.isabs(path):
                    raise ValueError("%s: %r must be an absolute path" % (field, path))
            if os.path.normpath(persist_path) == os.path.normpath(main_config):
                raise ValueError("persist_path: must differ from persist_main_config (%s)" % main_config)
    except ValueError as exc:
        module.fail_json(msg=str(exc))

    binary = module.get_bin_path("nft", required=True)

    def runner(argv, data=None):
        return module.run_command(argv, data=data, binary_data=True)

    manager = MasqueradeManager(module, _nft.Nft(runner, binary), family, table, desired, persist_path, main_config)
    try:
        manager.run()
    except (_nft.NftError, OSError, ValueError) as exc:
        module.fail_json(msg=str(exc), transaction=manager.transaction)


if __name__ == "__main__":
    main()
