#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rt_table
short_description: Name a Linux routing table in the files C(ip) reads (rt_tables)
version_added: "0.1.0"
description:
  - Gives a routing table id a name, so that C(ip route show table NAME), C(ip rule ... lookup NAME)
    and the collection's other modules can use the name.
  - By default the entry goes into its own drop-in file C(/etc/iproute2/rt_tables.d/NAME.conf),
    which this module owns; O(use_main_file=true) writes into C(/etc/iproute2/rt_tables) instead.
  - Before writing, the module reads every file C(ip) reads, with C(ip)'s own precedence
    (iproute2 6.5 and later) - C(/etc/iproute2/rt_tables), or the vendor file
    C(/usr/share/iproute2/rt_tables) (C(/usr/lib/iproute2) on some builds) when the former does not
    exist, the vendor C(rt_tables.d/*.conf) files not overridden by a file of the same name in
    C(/etc/iproute2/rt_tables.d/), and C(/etc/iproute2/rt_tables.d/*.conf).
  - The same id under another name, or the same name under another id, in any of those files is a
    conflict and fails naming both entries and their files (unless O(force=true)).
  - Comments, blank lines and other entries of the file are preserved. The file is replaced
    atomically (temporary file in the same directory, then rename); missing directories are
    created.
options:
  name:
    description:
      - Name of the routing table.
      - Letters, digits, V(_), V(.), V(@), V(-); must start with a letter or V(_) (C(ip) resolves
        names before numbers, so a name that looks like a number would hide a table id).
      - The reserved names V(unspec), V(default), V(main) and V(local) are refused.
    type: str
    required: true
  id:
    description:
      - Numeric table id, 1 to 2147483647 (C(ip) ignores larger ids in rt_tables files).
      - The reserved ids 0, 253, 254 and 255 are refused.
      - Required with O(state=present). With O(state=absent) it is optional; when given, only an
        entry with this id is removed.
    type: int
  state:
    description:
      - V(present) writes the entry, V(absent) removes the entry for O(name) from the managed file.
      - With V(absent), a drop-in file left with nothing but the header this module writes is
        deleted. Entries for the same name in other files are left alone and reported as a warning.
    type: str
    choices: [present, absent]
    default: present
  path:
    description:
      - The file to manage. Defaults to C(/etc/iproute2/rt_tables.d/NAME.conf).
      - Must be a file C(ip) reads, that is C(/etc/iproute2/rt_tables) or
        C(/etc/iproute2/rt_tables.d/*.conf) (not starting with a dot).
    type: path
  use_main_file:
    description:
      - Write into C(/etc/iproute2/rt_tables) instead of a drop-in file.
      - If that file does not exist yet (newer distributions ship only
        C(/usr/share/iproute2/rt_tables)), it is created as a copy of the vendor file plus the entry,
        because C(ip) stops reading the vendor file as soon as the C(/etc) file exists.
    type: bool
    default: false
  force:
    description:
      - Write the entry even if other files (or other lines of the managed file) define the same id
        under another name or the same name under another id.
      - V(force) only ever writes this module's own entry; the conflicting entries are never changed
        or removed. The conflicts are returned in RV(conflicts) and as warnings, including which id
        C(ip) will actually use for the name.
    type: bool
    default: false
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Computes the new file content and reports it; writes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Shows the whole managed file before and after.
  idempotent:
    description: When run twice in a row outside check mode with the same arguments, the second invocation indicates no change.
    support: full
    details: A second run with the same parameters reports no change.
notes:
  - Only the file content is managed. The kernel does not know table names; nothing is changed in
    the kernel and routes in the table are not touched.
  - Conflicts are checked against the files C(ip) reads on the target at the time of the run.
  - C(ip) reads drop-in files in directory order; when two files define the same name, C(ip) uses
    the entry in the lowest hash bucket (id modulo 256) and, within a bucket, the file read last.
    The module computes this the same way and reports it in RV(resolves_to).
  - A file with a line C(ip) cannot parse makes C(ip) ignore the rest of that file; the module
    refuses to write into such a file and warns about such lines in other files.
seealso:
  - name: ip-route(8)
    description: Routing tables and their names.
    link: https://man7.org/linux/man-pages/man8/ip-route.8.html
author:
  - multiwan.linux maintainers (@multiwan)
"""

EXAMPLES = r"""
- name: Name table 101 after the first uplink (drop-in /etc/iproute2/rt_tables.d/isp1.conf)
  multiwan.linux.rt_table:
    name: isp1
    id: 101

- name: Keep all names in the classic file instead
  multiwan.linux.rt_table:
    name: isp2
    id: 102
    use_main_file: true

- name: Take an entry over that another tool wrote with a different id
  multiwan.linux.rt_table:
    name: isp1
    id: 111
    force: true

- name: Remove the name again
  multiwan.linux.rt_table:
    name: isp1
    state: absent
"""

RETURN = r"""
name:
  description: The table name.
  returned: always
  type: str
  sample: isp1
id:
  description: The table id (as given; null for O(state=absent) without O(id)).
  returned: always
  type: int
  sample: 101
path:
  description: The managed file.
  returned: always
  type: str
  sample: /etc/iproute2/rt_tables.d/isp1.conf
conflicts:
  description: Entries in files C(ip) reads that contradict the desired entry (only non-empty with O(force=true), otherwise the module fails).
  returned: always
  type: list
  elements: dict
  sample: [{"id": 101, "name": "foo", "path": "/etc/iproute2/rt_tables", "line": 12}]
resolves_to:
  description: The entry C(ip) uses for O(name) after the run (or would, in check mode); null if the name does not resolve.
  returned: always
  type: dict
  sample: {"id": 101, "name": "isp1", "path": "/etc/iproute2/rt_tables.d/isp1.conf", "line": 2}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.multiwan.linux.plugins.module_utils import _rt_tables as rt_tables
from ansible_collections.multiwan.linux.plugins.module_utils._diff import (
    DifferenceTracker,
    ObjectChanges,
    StateManager,
    diff_objects,
)


class FileDiff(DifferenceTracker):
    """The difference is one text file; diff mode shows that file, not a JSON line per entry."""

    def __init__(self):
        super(FileDiff, self).__init__()
        self.path = None
        self.before = None
        self.after = None

    def get_diff(self):
        return {
            "before_header": self.path if self.before is not None else "%s (absent)" % self.path,
            "after_header": self.path if self.after is not None else "%s (absent)" % self.path,
            "before": self.before or "",
            "after": self.after or "",
        }


class RoutingTableName(StateManager):
    """One ``id name`` entry in one rt_tables file."""

    def __init__(self, module, name, table_id, path, present, force):
        super(RoutingTableName, self).__init__(module)
        self.tracker = FileDiff()
        self.name = name
        self.table_id = table_id
        self.path = path
        self.present = present
        self.force = force
        self.entry_plan = None

    def plan(self):
        try:
            plan = rt_tables.plan_entry(self.path, self.name, self.table_id, present=self.present)
        except (IOError, OSError, ValueError) as exc:
            self.module.fail_json(msg="table '%s': %s" % (self.name, exc), name=self.name, path=self.path)
        for problem in plan.problems:
            self.module.warn(problem)
        if plan.conflicts:
            described = "; ".join(self._conflict_text(e) for e in plan.conflicts)
            if not self.force:
                self.module.fail_json(
                    msg="table '%s' id %d conflicts with entries ip already reads: %s. "
                        "Fix or remove them, or set force=true to write this entry anyway."
                        % (self.name, self.table_id, described),
                    name=self.name, path=self.path, conflicts=[e.as_dict() for e in plan.conflicts])
            self.module.warn("force: writing '%d %s' to %s despite: %s" % (self.table_id, self.name, self.path, described))
        resolved = plan.resolves_to
        if self.present and resolved is not None and resolved.table_id != self.table_id:
            self.module.warn("ip will resolve '%s' to %s, not to %d" % (self.name, resolved.describe(), self.table_id))
        if not self.present:
            for entry in plan.duplicates:
                self.module.warn("'%s' is still defined by %s (not managed by this task)" % (self.name, entry.describe()))
        self.entry_plan = plan
        self.tracker.path, self.tracker.before, self.tracker.after = self.path, plan.before, plan.after
        changes = diff_objects(plan.live, plan.desired, remove_unlisted=True)
        if not changes and plan.changed:
            # Only the file's shape changes (e.g. a header-only drop-in goes away): still a change.
            changes = ObjectChanges([], [(("file", self.path), {"path": self.path})], [])
        return changes

    def _conflict_text(self, entry):
        if entry.name == self.name:
            return "name '%s' already has id %d: %s" % (self.name, entry.table_id, entry.describe())
        return "id %d is already named '%s': %s" % (self.table_id, entry.name, entry.describe())

    def describe(self, key):
        return "table %s in %s" % (key, self.path)

    def apply(self, changes):
        plan = self.entry_plan
        try:
            if plan.after is None:
                rt_tables.remove_file(self.path)
            else:
                rt_tables.write_atomic(self.path, plan.after)
        except (IOError, OSError) as exc:
            self.module.fail_json(msg="table '%s': cannot write %s: %s" % (self.name, self.path, exc),
                                  name=self.name, path=self.path)

    def result(self):
        plan = self.entry_plan
        return {
            "name": self.name,
            "id": self.table_id,
            "path": self.path,
            "conflicts": [e.as_dict() for e in plan.conflicts],
            "resolves_to": plan.resolves_to.as_dict() if plan.resolves_to is not None else None,
        }


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            id=dict(type="int"),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            path=dict(type="path"),
            use_main_file=dict(type="bool", default=False),
            force=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("path", "use_main_file")],
        required_if=[("state", "present", ("id",))],
        supports_check_mode=True,
    )
    params = module.params
    name, table_id = params["name"], params["id"]
    error = rt_tables.validate_table(name, table_id)
    if params["use_main_file"]:
        path = rt_tables.main_path()
    else:
        path = params["path"] or rt_tables.dropin_path(name)
        error = error or rt_tables.check_target_path(path)
    if error:
        module.fail_json(msg=error, name=name, path=path)
    present = params["state"] == "present"
    RoutingTableName(module, name, table_id, path, present, params["force"]).run()


if __name__ == "__main__":
    main()
