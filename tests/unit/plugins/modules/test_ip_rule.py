# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parameters of ip_rule -> canonical desired rules."""

from __future__ import annotations

import pytest

from ansible_collections.multiwan.linux.plugins.module_utils._iproute import Names
from ansible_collections.multiwan.linux.plugins.modules import ip_rule


@pytest.fixture
def names(tmp_path):
    (tmp_path / "etc/iproute2/rt_protos.d").mkdir(parents=True)
    (tmp_path / "etc/iproute2/rt_protos.d/multiwan.conf").write_text("109 multiwan\n")
    return Names(str(tmp_path))


def test_canonical_rule(names):
    rule = ip_rule.desired_rule({"priority": 2101, "fwmark": "0x650000", "fwmask": "0xff0000", "table": "101",
                                 "protocol": "multiwan"}, names, "109", "rule")
    assert rule == {"family": "inet", "priority": 2101, "state": "present", "from": None, "to": None,
                    "fwmark": 0x650000, "fwmask": 0xFF0000, "iif": None, "oif": None, "action": "lookup",
                    "table": 101, "suppress_prefixlength": None, "protocol": 109}
    six = ip_rule.desired_rule({"priority": 3101, "from": "2001:db8::2", "table": "main"}, names, "109", "rule")
    assert (six["family"], six["from"], six["table"]) == ("inet6", "2001:db8::2/128", 254)
    plain_mark = ip_rule.desired_rule({"priority": 1, "fwmark": "7", "table": 1}, names, "109", "rule")
    assert plain_mark["fwmask"] == 0xFFFFFFFF


@pytest.mark.parametrize("item, message", [
    ({"priority": 1, "to": "10.0.0.0/8", "table": "main", "suppress_prefixlength": 200}, "rules[2]: suppress_prefixlength"),
    ({"priority": -1, "table": "main"}, "rules[2]: priority: -1 is out of range"),
    ({"priority": 1, "table": "main", "protocol": 999}, "rules[2]: protocol:"),
])
def test_bad_items_name_the_field(names, item, message):
    with pytest.raises(ValueError) as err:
        ip_rule.desired_rule(item, names, "109", "rules[2]")
    assert message in str(err.value)
