"""The classic two-ISP recipe, configured by hand with plain ip/nft, on a lab gateway.

This is the lab's proof that it can show what the collection promises: real per-flow multipath
split seen from the internet side, and the reason a watchdog is needed (an ISP dying beyond its
first router goes unnoticed by the kernel, which keeps hashing flows into it).
"""

from __future__ import annotations

import pytest

from conftest import sh
from mwlab import traffic

SITE = "s1"
UPLINKS = {"isp1": ("wan1", "100.64.1.2", "100.64.1.1", 101),
           "isp2": ("wan2", "100.64.2.2", "100.64.2.1", 102)}
LAN = "10.1.0.0/24"

# Deliberately plain commands, not the collection's modules: the lab is tested on its own.
RECIPE = [
    "sysctl -qw net.ipv4.ip_forward=1",
    "sysctl -qw net.ipv4.fib_multipath_hash_policy=1",
    "sysctl -qw net.ipv4.conf.all.rp_filter=2",
]
for _name, (_dev, _addr, _gw, _table) in UPLINKS.items():
    RECIPE += [
        f"ip route replace default via {_gw} dev {_dev} table {_table}",
        f"ip rule add from {_addr} lookup {_table} priority {3000 + _table}",
        f"ip nexthop replace id {_table} via {_gw} dev {_dev}",
    ]
RECIPE += [
    f"ip rule add to {LAN} lookup main priority 1000",
    "ip nexthop replace id 1 group 101/102",
    "ip route replace default nhid 1",
    "nft -f - <<'EOF'\n"
    "table ip mwtest {\n"
    "  chain post { type nat hook postrouting priority srcnat; policy accept;\n"
    f"    oifname \"wan1\" ip saddr {LAN} masquerade\n"
    f"    oifname \"wan2\" ip saddr {LAN} masquerade\n"
    "  }\n"
    "}\n"
    "EOF",
]


@pytest.fixture(scope="module")
def recipe_gateway(lab):
    for command in RECIPE:
        proc = sh(lab, SITE, "gw", "sh", "-c", command)
        assert proc.returncode == 0, (command, proc.stderr)
    # Warm up: resolve every neighbour on the way (gateway, ISP routers, internet) so that the
    # measurements below see routing, not the first seconds of a freshly built lab.
    warm = burst(lab, 16, timeout=2.0)
    assert warm["ok"] == 16, warm
    return lab


def burst(lab, flows, timeout=1.0):
    uplink_map = {addr: name for name, (_dev, addr, _gw, _table) in UPLINKS.items()}
    return traffic.run_in_netns(lab.namespace(SITE, "c1"), [
        "burst", "--flows", str(flows), "--proto", "udp", "--udp-timeout", str(timeout), "--udp-retries", "1",
        "--uplink-map", ",".join("%s=%s" % (name, addr) for addr, name in uplink_map.items())])


def test_udp_flows_split_across_both_uplinks(recipe_gateway):
    report = burst(recipe_gateway, 200)
    assert report["ok"] == 200, report["errors"]
    shares = {name: report["by_uplink"].get(name, 0) / 200 for name in UPLINKS}
    assert all(0.35 <= share <= 0.65 for share in shares.values()), shares
    # Every flow arrived with one of the uplink addresses: NAT worked and BCP38 dropped nothing.
    assert set(report["by_source"]) == {addr for _dev, addr, _gw, _table in UPLINKS.values()}
    assert all(recipe_gateway.counters(SITE, name)["bcp38_drop"] == 0 for name in UPLINKS)


def test_kernel_keeps_routing_into_an_uplink_dead_beyond_its_router(recipe_gateway):
    recipe_gateway.fail(SITE, "isp1", "upstream")
    try:
        report = burst(recipe_gateway, 100)
        # The gateway's link to ISP 1 and its ARP entry stay up, so the multipath route keeps
        # isp1 and the flows hashed to it die: only active probing (the watchdog) can notice.
        nexthops = sh(recipe_gateway, SITE, "gw", "ip", "nexthop", "show", "id", "1").stdout
        assert "101" in nexthops and "102" in nexthops
        assert report["by_uplink"].get("isp1", 0) == 0
        assert report["failed"] >= 20, report
        assert report["ok"] == report["by_uplink"].get("isp2", 0)
    finally:
        recipe_gateway.restore(SITE, "isp1")
    after = burst(recipe_gateway, 100)
    assert after["failed"] == 0 and after["by_uplink"].get("isp1", 0) > 0
