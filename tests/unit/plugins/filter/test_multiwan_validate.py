# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The multiwan_problems filter against a corpus of bad, good and warning-only inventories.

fixtures/bad/*.yml   `expect`: every error the filter must report (fragments, one per error; the
                     number of errors must match, so a case cannot hide unrelated noise).
fixtures/warn/*.yml  no errors; `expect_warnings` as above for warnings.
fixtures/good/*.yml  neither errors nor warnings.
The example inventory (inventories/example) must pass without errors or warnings.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from ansible.errors import AnsibleFilterError
from ansible_collections.multiwan.linux.plugins.filter import multiwan_validate
from ansible_collections.multiwan.linux.plugins.filter.multiwan_validate import FilterModule, multiwan_problems

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
REPO = HERE.parents[3]
EXAMPLE = REPO / "inventories" / "example"
HOST = "gw-test"


def _cases(kind):
    return sorted(FIXTURES.joinpath(kind).glob("*.yml"))


def _load(path):
    with path.open() as handle:
        return yaml.safe_load(handle)


def _match(expected, messages, what, path):
    """Each expected fragment matches exactly one message, and every message is expected."""
    unmatched = list(messages)
    for fragment in expected:
        hits = [msg for msg in unmatched if fragment in msg]
        assert hits, "%s: expected %s %r not among %r" % (path.name, what, fragment, messages)
        unmatched.remove(hits[0])
    assert not unmatched, "%s: unexpected %s(s) %r" % (path.name, what, unmatched)


@pytest.mark.parametrize("path", _cases("bad"), ids=lambda p: p.stem)
def test_bad_inventory(path):
    case = _load(path)
    assert case.get("expect"), "%s states no expected message" % path.name
    errors = multiwan_problems(case["vars"], host=HOST)
    _match(case["expect"], errors, "error", path)
    for msg in errors:
        assert msg.startswith(HOST + ": multiwan_"), msg
        assert "\n" not in msg


@pytest.mark.parametrize("path", _cases("warn"), ids=lambda p: p.stem)
def test_warning_inventory(path):
    case = _load(path)
    assert multiwan_problems(case["vars"], host=HOST) == []
    _match(case["expect_warnings"], multiwan_problems(case["vars"], host=HOST, severity="warning"), "warning", path)


@pytest.mark.parametrize("path", _cases("good"), ids=lambda p: p.stem)
def test_good_inventory(path):
    case = _load(path)
    assert multiwan_problems(case["vars"], host=HOST) == []
    assert multiwan_problems(case["vars"], host=HOST, severity="warning") == []


def test_corpus_size():
    assert len(_cases("bad")) >= 20


def _example_hosts():
    hosts = _load(EXAMPLE / "hosts.yml")["all"]["children"]["gateways"]["hosts"]
    return sorted(hosts)


def test_example_inventory_has_three_different_schools():
    hosts = _example_hosts()
    assert sorted(p.stem for p in (EXAMPLE / "host_vars").glob("*.yml")) == hosts
    shapes = set()
    for host in hosts:
        uplinks = _load(EXAMPLE / "host_vars" / ("%s.yml" % host))["multiwan_uplinks"]
        shapes.add((len(uplinks), tuple(sorted(set(u.get("weight", 1) for u in uplinks))),
                    any("gateway" not in u for u in uplinks)))
    assert len(shapes) == 3
    assert any(n == 3 and len(weights) > 1 for n, weights, _dev in shapes)
    assert any(device_only for _n, _w, device_only in shapes)


@pytest.mark.parametrize("host", _example_hosts())
def test_example_inventory_passes(host):
    variables = dict(_load(EXAMPLE / "group_vars" / "gateways.yml"))
    variables.update(_load(EXAMPLE / "host_vars" / ("%s.yml" % host)))
    assert multiwan_problems(variables, host=host) == []
    assert multiwan_problems(variables, host=host, severity="warning") == []


def test_message_format_of_the_brief():
    case = _load(FIXTURES / "bad" / "gateway_outside.yml")
    assert multiwan_problems(case["vars"], host="gw-school1") == [
        "gw-school1: multiwan_uplinks[1] (isp2).gateway: 100.64.9.1 is not inside 100.64.2.0/24"]


def test_without_host_there_is_no_prefix():
    case = _load(FIXTURES / "bad" / "gateway_outside.yml")
    assert multiwan_problems(case["vars"]) == [
        "multiwan_uplinks[1] (isp2).gateway: 100.64.9.1 is not inside 100.64.2.0/24"]


def test_mark_collision_is_reported(monkeypatch):
    """The derived fwmark keeps 8 bits of the table id; with a wider table range ids 1 and 257
    would share a mark. The range 1..252 rules that out; the check guards the invariant."""
    monkeypatch.setattr(multiwan_validate, "TABLE_MAX", 1000)
    case = _load(FIXTURES / "bad" / "gateway_outside.yml")
    variables = copy.deepcopy(case["vars"])
    variables["multiwan_uplinks"][1]["gateway"] = "100.64.2.1"
    variables["multiwan_uplinks"][0]["table"] = 1
    variables["multiwan_uplinks"][1]["table"] = 257
    assert multiwan_problems(variables, host=HOST) == [
        "gw-test: multiwan_uplinks[1] (isp2).table: fwmark 0x00010000 (table 257 << 16 under 0x00ff0000) "
        "collides with multiwan_uplinks[0] (isp1) (table 1)"]


def test_marks_follow_design():
    assert multiwan_validate._mark(101) == 0x00650000
    assert all(multiwan_validate._mark(t) & ~multiwan_validate.MARK_MASK == 0 for t in range(1, 253))
    assert len(set(multiwan_validate._mark(t) for t in range(1, 253))) == 252


def test_input_is_not_modified():
    case = _load(FIXTURES / "bad" / "many_problems.yml")
    before = copy.deepcopy(case["vars"])
    multiwan_problems(case["vars"], host=HOST)
    assert case["vars"] == before


@pytest.mark.parametrize("args, kwargs, fragment", [
    (([],), {}, "input must be a mapping"),
    (({},), {"severity": "fatal"}, "severity must be one of error, warning"),
    (({},), {"host": 3}, "host must be a string"),
])
def test_bad_filter_arguments(args, kwargs, fragment):
    with pytest.raises(AnsibleFilterError, match=fragment):
        multiwan_problems(*args, **kwargs)


def test_filter_is_registered():
    assert FilterModule().filters()["multiwan_problems"] is multiwan_problems
