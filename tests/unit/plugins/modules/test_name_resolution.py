# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""ip_rule and ip_route resolve table and protocol names exactly as _rt_tables does (one parser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.multiwan.linux.plugins.module_utils import _iproute, _rt_tables as rt
from ansible_collections.multiwan.linux.plugins.modules import ip_route, ip_rule

CAPTURE = Path(__file__).resolve().parents[1] / "module_utils" / "fixtures" / "rt_tables" / "ip61_resolution.json"


def make_tree(tmp_path, files):
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path / "etc"), (str(tmp_path / "usr-share"), str(tmp_path / "usr-lib"))


@pytest.fixture
def captured(tmp_path):
    """The tricky rt_tables files ip 6.1 was run against, and what ip made of each word."""
    data = json.loads(CAPTURE.read_text())
    etc, vendors = make_tree(tmp_path, dict(("etc/" + k, v) for k, v in data["files"].items()))
    return etc, vendors, data["resolved_table_ids"]


def module_tables(names, word):
    """The table id each module puts into its desired object for ``word`` (or the error)."""
    outcomes = []
    for build in (lambda: ip_rule.desired_rule({"priority": 100, "table": word}, names, "109", "rule")["table"],
                  lambda: ip_route.desired_route({"destination": "default", "table": word, "nexthops": [{"dev": "lo"}]},
                                                 names, "route")["table"]):
        try:
            outcomes.append(build())
        except ValueError as exc:
            outcomes.append("error: " + str(exc).split("table: ", 1)[1])
    return outcomes


def test_modules_resolve_tables_exactly_like_rt_tables(captured):
    etc, vendors, words = captured
    names = _iproute.Names(etc_dir=etc, vendor_dirs=vendors)
    assert _iproute.Names is rt.Names  # one implementation, re-exported for the watchdog
    for word in words:
        try:
            expected = rt.resolve_table(word, etc_dir=etc, vendor_dirs=vendors)
        except rt.UnknownTableError as exc:
            expected = "error: " + str(exc)
        assert module_tables(names, word) == [expected, expected], word


def test_and_both_agree_with_what_ip_printed(captured):
    etc, vendors, words = captured
    names = rt.Names(etc_dir=etc, vendor_dirs=vendors)
    for word, expected in words.items():
        if word == "unspec":
            # ip resolves unspec to 0; the kernel files a route for table 0 under main (254).
            assert names.table(word) == 0
        elif expected is None:
            with pytest.raises(rt.UnknownTableError, match=r"unknown table name"):
                names.table(word)
        else:
            assert names.table(word) == expected, word


def test_protocols_follow_ip_precedence(tmp_path):
    etc, vendors = make_tree(tmp_path, {
        # /etc/iproute2/rt_protos exists: the vendor main file is not read at all
        "etc/rt_protos": "# admin\n109 multiwan\n0x2a babel\n",
        "usr-share/rt_protos": "77 vendoronly\n",
        # a vendor drop-in is hidden by the /etc drop-in of the same name
        "usr-share/rt_protos.d/routing.conf": "120 vendordrop\n",
        "etc/rt_protos.d/routing.conf": "121 etcdrop\n",
        "usr-share/rt_protos.d/other.conf": "122 othervendor\n",
        # a later file overwrites an id; a broken line stops that file
        "etc/rt_protos.d/zz.conf": "4 mystatic\nbroken line here\n123 neverread\n",
    })
    names = rt.Names(etc_dir=etc, vendor_dirs=vendors)
    assert names.protocol("multiwan") == 109
    assert names.protocol("babel") == 42
    assert names.protocol("etcdrop") == 121 and names.protocol("othervendor") == 122
    assert names.protocol("mystatic") == 4
    assert names.protocol("kernel") == 2  # built into ip
    assert names.protocol("0x6d") == 109 and names.protocol("010") == 8 and names.protocol(109) == 109
    for word in ("vendoronly", "vendordrop", "neverread", "static"):
        with pytest.raises(rt.UnknownNameError, match="unknown protocol name %r" % word):
            names.protocol(word)
    for word in ("256", 256, "0x100"):
        with pytest.raises(rt.UnknownNameError, match=r"outside 0\.\.255"):
            names.protocol(word)
    # the modules take the protocol from the same resolver
    rule = ip_rule.desired_rule({"priority": 100, "table": 1, "protocol": "multiwan"}, names, "109", "rule")
    assert rule["protocol"] == 109
    with pytest.raises(ValueError, match="rule: protocol: unknown protocol name 'static'"):
        ip_rule.desired_rule({"priority": 100, "table": 1, "protocol": "static"}, names, "109", "rule")
