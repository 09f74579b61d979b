"""diff_objects / DifferenceTracker / StateManager: the bookkeeping every module relies on."""

import pytest

from ansible_collections.multiwan.linux.plugins.module_utils._diff import (
    DifferenceTracker, StateManager, diff_objects)


def test_diff_objects_add_replace_keep():
    live = {"a": {"v": 1}, "b": {"v": 2}}
    desired = {"a": {"v": 1}, "b": {"v": 3}, "c": {"v": 4}}
    changes = diff_objects(live, desired)
    assert changes.add == [("c", {"v": 4})]
    assert changes.replace == [("b", {"v": 2}, {"v": 3})]
    assert changes.remove == []
    assert changes


def test_diff_objects_removes_only_owned_unlisted():
    live = {"ours": {"proto": 109}, "theirs": {"proto": 4}, "kept": {"proto": 109}}
    desired = {"kept": {"proto": 109}}
    changes = diff_objects(live, desired, remove_unlisted=True, removable=lambda k, o: o["proto"] == 109)
    assert changes.remove == [("ours", {"proto": 109})]
    assert not diff_objects(live, live, remove_unlisted=True)


def test_tracker_renders_only_touched_objects():
    tracker = DifferenceTracker()
    tracker.add("same", {"x": 1}, {"x": 1})
    tracker.add("new", None, {"x": 2})
    tracker.add("gone", {"x": 3}, None)
    assert tracker.has_differences()
    diff = tracker.get_diff()
    assert diff["before"] == 'gone: {"x": 3}\n'
    assert diff["after"] == 'new: {"x": 2}\n'


class _FakeModule:
    def __init__(self, check_mode, diff):
        self.check_mode = check_mode
        self._diff = diff
        self.exited = None

    def exit_json(self, **kwargs):
        self.exited = kwargs


class _Manager(StateManager):
    def __init__(self, module, live, desired):
        super().__init__(module)
        self.live, self.desired, self.applied = live, desired, []

    def plan(self):
        return diff_objects(self.live, self.desired)

    def apply(self, changes):
        self.applied.append(changes)


@pytest.mark.parametrize("check_mode", [True, False])
def test_state_manager_check_mode_never_applies(check_mode):
    module = _FakeModule(check_mode, diff=True)
    manager = _Manager(module, {}, {"k": {"v": 1}})
    manager.run()
    assert module.exited["changed"] is True
    assert module.exited["diff"]["after"] == '"k": {"v": 1}\n'
    assert bool(manager.applied) is (not check_mode)


def test_state_manager_no_change_no_apply():
    module = _FakeModule(False, diff=False)
    manager = _Manager(module, {"k": {"v": 1}}, {"k": {"v": 1}})
    manager.run()
    assert module.exited == {"changed": False}
    assert manager.applied == []
