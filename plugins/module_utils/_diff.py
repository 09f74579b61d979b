# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Desired-versus-live bookkeeping shared by every module of the collection.

Private module_utils (leading underscore): not a public API.  Standard library only, because the
same code runs on gateways with nothing but python3 installed.

Each module reads the live objects it owns as plain dicts, builds the desired dicts, and asks
``diff_objects`` which keys to add, remove or replace.  A :class:`DifferenceTracker` (the idea
comes from community.docker) records every difference so that diff mode shows exactly the
objects touched, as ``before``/``after`` text.
"""

from __future__ import annotations

import json

__all__ = ["DifferenceTracker", "ObjectChanges", "diff_objects", "render"]


def render(obj):
    """Stable, human-readable text for one object (sorted keys, no None values)."""
    if isinstance(obj, dict):
        obj = dict((k, v) for k, v in obj.items() if v is not None)
    return json.dumps(obj, sort_keys=True)


class ObjectChanges(object):
    """Result of comparing keyed desired objects with keyed live objects."""

    def __init__(self, add, remove, replace):
        self.add = add          # list of (key, desired)
        self.remove = remove    # list of (key, live)
        self.replace = replace  # list of (key, live, desired)

    def __bool__(self):
        return bool(self.add or self.remove or self.replace)

    __nonzero__ = __bool__


def diff_objects(live, desired, remove_unlisted=False, removable=None):
    """Compare two ``{key: object}`` maps structurally.

    ``remove_unlisted`` drops live objects whose key is not desired; ``removable(key, obj)``, when
    given, limits that to the objects we own (for example rules carrying our protocol tag).
    """
    add, remove, replace = [], [], []
    for key in sorted(desired, key=render):
        want = desired[key]
        have = live.get(key)
        if have is None:
            add.append((key, want))
        elif have != want:
            replace.append((key, have, want))
    if remove_unlisted:
        for key in sorted(live, key=render):
            if key not in desired and (removable is None or removable(key, live[key])):
                remove.append((key, live[key]))
    return ObjectChanges(add, remove, replace)


class DifferenceTracker(object):
    """Collects named differences and renders them for Ansible's diff mode."""

    def __init__(self):
        self._entries = []

    def add(self, name, before=None, after=None):
        """Record that ``name`` goes from ``before`` to ``after`` (None means absent)."""
        if before != after:
            self._entries.append((name, before, after))

    def add_changes(self, changes, name=render):
        """Record every entry of an :class:`ObjectChanges`."""
        for key, want in changes.add:
            self.add(name(key), None, want)
        for key, have in changes.remove:
            self.add(name(key), have, None)
        for key, have, want in changes.replace:
            self.add(name(key), have, want)

    def has_differences(self):
        return bool(self._entries)

    def entries(self):
        return list(self._entries)

    def get_diff(self):
        """``{'before': text, 'after': text}``: one line per touched object, absent ones omitted."""
        before, after = [], []
        for name, old, new in self._entries:
            if old is not None:
                before.append("%s: %s\n" % (name, render(old)))
            if new is not None:
                after.append("%s: %s\n" % (name, render(new)))
        return {"before": "".join(before), "after": "".join(after)}


class StateManager(object):
    """Small base for the collection's state modules (the shape follows community.crypto).

    A subclass reads the live objects, builds the desired ones and returns an
    :class:`ObjectChanges` from :meth:`plan`; :meth:`apply` makes all of them in one atomic step.
    :meth:`run` is the only place that decides about check mode, so no module can forget it.
    """

    def __init__(self, module):
        self.module = module
        self.tracker = DifferenceTracker()

    def plan(self):
        """Return the :class:`ObjectChanges` between live and desired state."""
        raise NotImplementedError

    def apply(self, changes):
        """Make ``changes`` real, all at once."""
        raise NotImplementedError

    def describe(self, key):
        """Name of one object in diff output."""
        return render(key)

    def result(self):
        """Extra return values (after apply, or what would be in check mode)."""
        return {}

    def run(self):
        changes = self.plan()
        self.tracker.add_changes(changes, self.describe)
        if changes and not self.module.check_mode:
            self.apply(changes)
        result = dict(changed=bool(changes))
        result.update(self.result())
        if self.module._diff:  # pylint: disable=protected-access
            result["diff"] = self.tracker.get_diff()
        self.module.exit_json(**result)
