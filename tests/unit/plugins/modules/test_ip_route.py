# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parameters of ip_route -> desired routes, and the health state file (Contract 2)."""

from __future__ import annotations

import json

import pytest

from ansible_collections.multiwan.linux.plugins.module_utils._iproute import Names
from ansible_collections.multiwan.linux.plugins.modules import ip_route


@pytest.fixture
def names(tmp_path):
    (tmp_path / "etc/iproute2/rt_tables.d").mkdir(parents=True)
    (tmp_path / "etc/iproute2/rt_tables.d/multiwan.conf").write_text("101 isp1\n")
    return Names(str(tmp_path))


def test_multipath_defaults(names):
    route = ip_route.desired_route({"destination": "0.0.0.0/0", "table": "isp1",
                                    "nexthops": [{"via": "100.64.1.1", "dev": "wan1", "weight": 2}, {"dev": "ppp0"}]},
                                   names, "route")
    assert route == {"family": "inet", "table": 101, "destination": "default", "metric": 0, "type": "unicast",
                     "state": "present", "group_id": None, "group_type": "mpath", "buckets": None, "idle_timer": None,
                     "nexthops": [{"via": "100.64.1.1", "dev": "wan1", "weight": 2, "onlink": False, "id": None},
                                  {"via": None, "dev": "ppp0", "weight": 1, "onlink": False, "id": None}]}


def test_ipv6_family_and_metric(names):
    route = ip_route.desired_route({"destination": "default", "nexthops": [{"via": "2001:db8::1", "dev": "wan1"}],
                                    "metric": 0}, names, "route")
    assert (route["family"], route["metric"]) == ("inet6", 1024)
    scoped = ip_route.desired_route({"destination": "100.64.1.0/24", "scope": "link", "src": "100.64.1.2",
                                     "nexthops": [{"dev": "wan1"}]}, names, "route")
    assert (scoped["scope"], scoped["src"]) == (253, "100.64.1.2")


@pytest.mark.parametrize("item, message", [
    ({"nexthops": [{"dev": "wan1"}]}, "routes[3]: destination is required"),
    ({"destination": "10.0.0.1/8", "nexthops": [{"dev": "wan1"}]}, "routes[3]: destination:"),
    ({"destination": "default", "nexthops": [{"dev": "wan1"}], "scope": "planet"}, "routes[3]: scope: 'planet'"),
    ({"destination": "default", "nexthops": [{"dev": "wan1"}, {"dev": "wan1"}]}, "dev/via is listed twice"),
    ({"destination": "default", "nexthops": [{"dev": "wan1", "id": 0}]}, "routes[3]: nexthops[0].id: 0 is out of range"),
    ({"destination": "default", "nexthops": [{"dev": "wan1"}], "src": "2001:db8::1"}, "routes[3]: src:"),
])
def test_bad_items_name_the_field(names, item, message):
    with pytest.raises(ValueError) as err:
        ip_route.desired_route(item, names, "routes[3]")
    assert message in str(err.value)


def test_health_state_file(tmp_path):
    path = tmp_path / "state.json"
    assert ip_route.read_health([str(path)]) == {"ids": set(), "devs": set()}  # missing: all up
    path.write_text(json.dumps({"uplinks": {"isp1": {"state": "up", "nexthop_ids": [1], "dev": "wan1"},
                                            "isp2": {"state": "down", "nexthop_ids": [2, 3], "dev": "ppp0"}}}))
    assert ip_route.read_health([str(path)]) == {"ids": {2, 3}, "devs": {"ppp0"}}
    # the IPv6 watchdog's file adds its own down members
    path6 = tmp_path / "state6.json"
    path6.write_text(json.dumps({"uplinks": {"isp3": {"state": "down", "nexthop_ids": [7], "dev": "wan3"}}}))
    assert ip_route.read_health([str(path), str(path6)]) == {"ids": {2, 3, 7}, "devs": {"ppp0", "wan3"}}
    path.write_text("{broken")
    with pytest.raises(ValueError, match="health_state_file"):
        ip_route.read_health([str(path6), str(path)])
