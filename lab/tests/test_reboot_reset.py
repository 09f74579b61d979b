"""A gateway reboot resets the kernel's network state of its namespace (container.py, netns.reset_netns).

The namespace of a systemd-mode gateway outlives its container, so without a reset every rule,
route, nexthop, nftables table, conntrack entry and sysctl set before a reboot would still be
there afterwards. These tests

* check the pure parts (which rules are the kernel's defaults, which routes a reboot keeps);
* run ``reset_netns`` on the gateway namespace of a plain lab (lab ``mwhp``, no container, quick):
  everything set after the snapshot is gone, addresses/links/sysctls are as in the snapshot;
* boot a systemd-mode lab (lab ``mwhr``), dirty the gateway's namespace from inside the container,
  reboot it (``systemctl reboot``, then a hard reboot) and check that the namespace looks as it did
  after the first boot: only what the boot itself configures (here a unit that adds one policy
  rule) comes back.

Lab names: ``MWTEST_RESET_LAB`` (default ``mwhr``) and ``MWTEST_RESET_PLAIN_LAB`` (default ``mwhp``).
Run: cd /work/main && PYTHONPATH=lab .venv/bin/python -m pytest -q -p no:cacheprovider lab/tests/test_reboot_reset.py
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from conftest import needs_root
from mwlab.netns import is_default_rule, reset_netns, reset_summary, routes_to_remove, snapshot_netns

LAB = os.environ.get("MWTEST_RESET_LAB", "mwhr")
PLAIN_LAB = os.environ.get("MWTEST_RESET_PLAIN_LAB", "mwhp")

TOPOLOGY = {
    "internet": {"hosts": ["198.18.0.1", "198.18.0.2"], "hosts6": ["2001:db8:ffff::1"]},
    "sites": [{
        "name": "s1",
        "lan": {"network": "10.1.0.0/24", "network6": "2001:db8:1::/64", "clients": 1},
        "uplinks": [
            {"name": "isp1", "interface": "wan1", "address": "100.64.1.2/24", "gateway": "100.64.1.1",
             "address6": "2001:db8:101::2/64", "gateway6": "2001:db8:101::1"},
            {"name": "isp2", "interface": "ppp0", "address": "100.64.2.2/32", "peer": "100.64.2.1"},
        ],
    }],
}

# Set from inside the gateway; every line must succeed. A reboot must remove all of it.
DIRT = [
    "ip rule add priority 100 from 100.64.1.2 lookup 101",
    "ip rule add priority 0 from 10.1.0.0/24 lookup 102",
    "ip -6 rule add priority 200 from 2001:db8:1::/64 lookup 101",
    "ip route add default via 100.64.1.1 dev wan1 table 101",
    "ip route add 198.18.0.0/24 dev ppp0 proto static",
    "ip route add local 192.0.2.1 dev lo table local",
    "ip -6 route add default via 2001:db8:101::1 dev wan1 table 101",
    "ip nexthop add id 11 via 100.64.1.1 dev wan1",
    "ip nexthop add id 12 dev ppp0",
    "ip nexthop add id 20 group 11/12",
    "ip route add default nhid 20",
    "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.wan1.rp_filter=1 "
    "net.ipv4.fib_multipath_hash_policy=1 net.ipv6.conf.all.forwarding=1 net.ipv6.conf.wan1.accept_ra=2",
    "printf 'table inet mwtest {\\n chain post {\\n  type nat hook postrouting priority srcnat;\\n"
    "  oifname \"wan1\" masquerade\\n }\\n chain out {\\n  type filter hook output priority 0;\\n"
    "  ct state new counter\\n }\\n}\\n' | nft -f -",
    "python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.bind(('100.64.1.2', 40001)); s.sendto(b'x', ('198.18.0.1', 7777))\"",
    "ip address add 100.64.1.99/24 dev wan1",
    "ip link add mwx0 type veth peer name mwx1",
    "ip neigh replace 100.64.1.77 lladdr 02:00:00:00:00:77 dev wan1 nud permanent",
]


# ---- pure ------------------------------------------------------------------------------------------

def test_default_rules():
    assert is_default_rule({"priority": 0, "src": "all", "table": "local", "protocol": "kernel"}, "4")
    assert is_default_rule({"priority": 32767, "src": "all", "table": "default"}, "4")
    assert not is_default_rule({"priority": 32767, "src": "all", "table": "default"}, "6")
    assert not is_default_rule({"priority": 0, "src": "10.1.0.0", "srclen": 24, "table": "102"}, "4")
    assert not is_default_rule({"priority": 32766, "src": "all", "table": "main", "fwmark": "0x1"}, "4")
    assert not is_default_rule({"priority": 32766, "src": "all", "table": "main", "protocol": "static"}, "4")


def test_routes_to_remove_keeps_kernel_and_link_local():
    routes = [
        {"dst": "100.64.1.0/24", "table": "main", "protocol": "kernel", "type": "unicast"},
        {"dst": "100.64.1.2", "table": "local", "protocol": "kernel", "type": "local"},
        {"dst": "default", "table": "main", "protocol": "boot", "type": "unicast", "nhid": 20},
        {"dst": "192.0.2.1", "table": "local", "protocol": "boot", "type": "local"},
        {"dst": "default", "table": "101", "protocol": "static", "type": "unicast"},
    ]
    assert [r["dst"] for r in routes_to_remove(routes, "4")] == ["default", "192.0.2.1", "default"]
    routes6 = [{"dst": "fe80::/64", "table": "main", "protocol": "boot"},
               {"dst": "ff00::/8", "table": "local", "protocol": "kernel", "type": "multicast"},
               {"dst": "2001:db8::/32", "table": "main", "protocol": "ra"}]
    assert [r["dst"] for r in routes_to_remove(routes6, "6")] == ["2001:db8::/32"]


def test_reset_summary_line():
    line = reset_summary({"netns": "/run/netns/x-s1-gw", "removed": {"rules": 2, "routes": 5, "nft_tables": 1},
                          "restored": {"sysctls": 3}, "left": {}, "seconds": 0.2})
    assert line.startswith("reset /run/netns/x-s1-gw: removed 2 rules, 0 nexthops, 5 routes, 1 nft tables")
    assert "restored 3 sysctls" in line and "still off" not in line


def test_reset_refuses_the_root_namespace():
    from mwlab.netns import LabError

    for bad in ("/proc/self/ns/net", "/run/netns/../netns/x", "nolabdash", "/tmp/x-s1-gw"):
        with pytest.raises(LabError):
            reset_netns(bad, {})


# ---- helpers -----------------------------------------------------------------------------------------

def kernel_view(ns: str) -> dict:
    """What the kernel has in namespace ``ns`` (volatile fields left out), for comparisons."""
    def ipj(*args):
        out = subprocess.run(["ip", "-n", ns, "-j", *args], capture_output=True, text=True, check=True).stdout
        return json.loads(out or "[]")

    view = {}
    for fam in ("4", "6"):
        view[f"rules{fam}"] = sorted((r["priority"], json.dumps(r, sort_keys=True)) for r in ipj(f"-{fam}", "-d", "rule", "show"))
        view[f"routes{fam}"] = sorted((r.get("table", "main"), r.get("type", ""), r.get("dst", ""), r.get("dev", ""),
                                       r.get("gateway", ""), r.get("protocol", ""), str(r.get("nhid", "")))
                                      for r in ipj(f"-{fam}", "-d", "route", "show", "table", "all"))
    view["nexthops"] = ipj("nexthop", "show")
    view["links"] = sorted((link["ifname"], "UP" in link["flags"]) for link in ipj("link", "show"))
    view["addresses"] = sorted((link["ifname"], a["family"], a["local"], a["prefixlen"], a.get("address", ""))
                               for link in ipj("address", "show") for a in link.get("addr_info", []))
    nsenter = ["nsenter", f"--net=/run/netns/{ns}", "--"]
    nft = json.loads(subprocess.run(nsenter + ["nft", "-j", "list", "ruleset"], capture_output=True, text=True, check=True).stdout)
    view["nft"] = [x for x in nft["nftables"] if "metainfo" not in x]
    ct = subprocess.run(nsenter + ["conntrack", "-L"], capture_output=True, text=True)
    view["conntrack"] = [line for line in ct.stdout.splitlines() if line.strip()]
    view["neigh_permanent"] = sorted(n["dst"] for n in ipj("neigh", "show", "nud", "permanent"))
    return view


def diff(before: dict, after: dict) -> dict:
    return {k: {"before": before[k], "after": after.get(k)} for k in before if before[k] != after.get(k)}


def sysctl_diff(before: dict, after: dict) -> dict:
    return {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v}


# ---- reset_netns on a plain lab's gateway namespace ----------------------------------------------------

@needs_root
def test_reset_netns_on_a_plain_gateway():
    from mwlab import Lab, Topology

    lab = Lab(PLAIN_LAB)
    lab.up(Topology.from_dict(TOPOLOGY, lab=PLAIN_LAB))
    try:
        ns = f"{PLAIN_LAB}-s1-gw"
        snap = snapshot_netns(f"/run/netns/{ns}")
        before = kernel_view(ns)
        assert before["conntrack"] == [] and before["nft"] == []
        for cmd in DIRT:
            p = lab.run("s1", "gw", ["/bin/sh", "-c", cmd])
            assert p.returncode == 0, f"{cmd}: {p.stderr}"
        lab.run("s1", "gw", ["ip", "link", "set", "dev", "lan0", "down"], check=True)  # takes lan0's routes along
        dirty = kernel_view(ns)
        assert dirty["conntrack"] and dirty["nft"] and dirty["nexthops"] and dirty != before

        res = reset_netns(ns, snap)
        print("\n" + reset_summary(res))
        assert res["left"] == {} and "errors" not in res, res
        rm = res["removed"]
        assert rm["rules"] == 3 and rm["nexthops"] == 3 and rm["nft_tables"] == 1 and rm["conntrack"] >= 1
        assert rm["routes"] >= 4 and rm["addresses"] == 1 and rm["links"] == 2 and rm["neighbours"] >= 1
        assert res["restored"]["link_states"] == 1 and res["restored"]["sysctls"] >= 6
        assert diff(before, kernel_view(ns)) == {}
        assert sysctl_diff(snap["sysctls"], snapshot_netns(ns)["sysctls"]) == {}
        # idempotent: a second reset finds nothing to do
        again = reset_netns(ns, snap)
        assert sum(again["removed"].values()) == 0 and again["restored"]["sysctls"] == 0, again
        # the gateway still works after the reset: connected uplinks answer
        assert lab.run("s1", "gw", ["ping", "-c1", "-W2", "100.64.1.1"]).returncode == 0
        assert lab.run("s1", "gw", ["ping", "-c1", "-W2", "-I", "ppp0", "100.64.2.1"]).returncode == 0
        assert lab.run("s1", "c1", ["ping", "-c1", "-W2", "10.1.0.1"]).returncode == 0
    finally:
        lab.down()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{PLAIN_LAB}-")]


# ---- systemd mode: reboots -----------------------------------------------------------------------------

pytest_systemd = pytest.mark.skipif(not os.path.exists("/usr/bin/systemd-nspawn") and not os.path.exists("/usr/sbin/debootstrap")
                                    and os.system("command -v apt-get >/dev/null") != 0,
                                    reason="systemd mode needs systemd-nspawn and debootstrap (apt-get)")


def gw(lab, cmd, check=True):
    p = lab.run("s1", "gw", ["/bin/sh", "-c", cmd], timeout=30)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p


@needs_root
@pytest_systemd
def test_reboot_resets_the_gateway_namespace():
    from mwlab import Lab, Topology

    lab = Lab(LAB)
    lab.up(Topology.from_dict({**TOPOLOGY, "systemd": True}, lab=LAB))
    ns = f"{LAB}-s1-gw"
    try:
        # a boot-time unit: what it configures must come back after every reboot
        unit = ("[Unit]\nDescription=one policy rule at boot\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
                "ExecStart=/usr/bin/ip rule add priority 3101 from 100.64.1.2 lookup 201\n"
                "[Install]\nWantedBy=multi-user.target\n")
        p = lab.run("s1", "gw", ["/bin/sh", "-c", "cat > /etc/systemd/system/mwtest-boot-rule.service && "
                                 "systemctl enable -q mwtest-boot-rule.service && systemctl start mwtest-boot-rule.service"],
                    input=unit)
        assert p.returncode == 0, p.stderr
        assert "3101:" in gw(lab, "ip rule").stdout
        baseline = kernel_view(ns)
        base_sysctls = snapshot_netns(ns)["sysctls"]
        assert baseline["nexthops"] == [] and baseline["nft"] == []
        assert not [r for r in baseline["routes4"] if r[5] != "kernel"], "a bare gateway: connected routes only"

        for hard in (False, True):
            for cmd in DIRT:
                gw(lab, cmd)
            dirty = kernel_view(ns)
            assert dirty["conntrack"] and dirty["nft"] and dirty["nexthops"]
            assert gw(lab, "sysctl -n net.ipv4.ip_forward net.ipv4.conf.all.rp_filter").stdout.split() == ["1", "2"]
            boots = len(lab.container_info("s1")["boots"])
            t0 = time.monotonic()
            lab.reboot("s1", hard=hard)
            took = time.monotonic() - t0
            info = lab.container_info("s1")
            assert len(info["boots"]) == boots + 1
            res = info["boots"][-2].get("reset")
            assert res and res["left"] == {} and "errors" not in res, res
            print(f"\n{'hard' if hard else 'soft'} reboot {took:.1f} s, " + reset_summary(res))
            assert res["removed"]["nexthops"] == 3 and res["removed"]["nft_tables"] == 1
            assert res["removed"]["rules"] >= 3 and res["removed"]["routes"] >= 4 and res["removed"]["conntrack"] >= 1
            # the boot-time rule came back (the unit ran again); everything else is as after the first boot
            assert gw(lab, "systemctl is-active mwtest-boot-rule.service").stdout.strip() == "active"
            after = kernel_view(ns)
            assert diff(baseline, after) == {}, (hard, diff(baseline, after))
            assert sysctl_diff(base_sysctls, snapshot_netns(ns)["sysctls"]) == {}
            assert gw(lab, "sysctl -n net.ipv4.ip_forward net.ipv4.conf.all.rp_filter").stdout.split() == ["0", "0"]
            assert gw(lab, "ip -br addr show wan1").stdout.split()[2] == "100.64.1.2/24"
            assert "100.64.1.0/24 dev wan1 proto kernel" in gw(lab, "ip route show table main").stdout
            assert gw(lab, "ping -c1 -W2 100.64.1.1", check=False).returncode == 0
        log = (lab.run_dir / "s1.gw.log").read_text()
        assert log.count(f"reset /run/netns/{ns}: removed") == 2, log[-2000:]
    finally:
        lab.down()
    assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{LAB}-")]
