"""The two-site lab: connectivity, BCP38, overlay, failures, impairment, inventory (root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LAB, TOPOLOGIES, ip_json, needs_root, ping, sh

pytestmark = needs_root

HOSTS = ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.7.1"]


def test_namespaces_and_bare_gateway(lab):
    names = set(lab.ns.list())
    expected = {f"{LAB}-inet"} | {f"{LAB}-{s}-{r}" for s in ("s1", "s2") for r in ("gw", "sw", "c1", "isp1", "isp2")}
    assert names == expected
    addrs = {a["ifname"]: [f"{i['local']}/{i['prefixlen']}" for i in a["addr_info"] if i["family"] == "inet"]
             for a in ip_json(lab, "s1", "gw", "addr")}
    assert addrs["lan0"] == ["10.1.0.1/24"] and addrs["wan1"] == ["100.64.1.2/24"] and addrs["wan2"] == ["100.64.2.2/24"]
    for site in ("s1", "s2"):
        routes = ip_json(lab, site, "gw", "route", "show", "table", "all")
        assert not [r for r in routes if r["dst"] == "default"], routes
        assert sh(lab, site, "gw", "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
        assert sh(lab, site, "gw", "nft", "list", "ruleset").stdout.strip() == ""
    # device-only uplink: /32 with peer, no ARP, same MAC on both ends
    ppp = ip_json(lab, "s2", "gw", "addr", "show", "dev", "ppp0")[0]
    assert "NOARP" in ppp["flags"]
    inet4 = [i for i in ppp["addr_info"] if i["family"] == "inet"][0]
    assert (inet4["local"], inet4["address"], inet4["prefixlen"]) == ("100.64.12.2", "100.64.12.1", 32)
    cust = ip_json(lab, "s2", "isp2", "link", "show", "dev", "cust")[0]
    assert cust["address"] == ppp["address"] and "NOARP" in cust["flags"]


def test_pidfiles_and_state(lab):
    st = json.loads(lab.state_file.read_text())
    assert st["status"] == "up" and st["lab"] == LAB
    for site in ("s1", "s2"):
        pid = int(lab.pidfile(site).read_text())
        assert pid == st["pids"][f"{site}.gw"]["pid"] == lab.gateway_pid(site)
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(f"{LAB}-{site}-anchor".encode())


def test_basic_reachability(lab):
    assert ping(lab, "s1", "c1", "10.1.0.1", wait=2)
    assert ping(lab, "s2", "c1", "10.2.0.1", wait=2)
    for site, isp, addr in (("s1", "isp1", "100.64.1.1"), ("s1", "isp2", "100.64.2.1"),
                            ("s2", "isp1", "100.64.11.1"), ("s2", "isp2", "100.64.12.1")):
        assert ping(lab, site, "gw", addr, wait=2), (site, isp)
        assert ping(lab, site, isp, "198.18.7.1", wait=2), (site, isp)
    # the gateway has no default route: the internet is unreachable before the role runs
    assert sh(lab, "s1", "gw", "ping", "-n", "-c1", "-W1", "198.18.0.1").returncode != 0


def test_routing_back_via_isp_and_bcp38(lab):
    cases = [("s1", "isp1", "wan1", "100.64.1.2", "via 100.64.1.1"), ("s1", "isp2", "wan2", "100.64.2.2", "via 100.64.2.1"),
             ("s2", "isp1", "wan1", "100.64.11.2", "via 100.64.11.1"), ("s2", "isp2", "ppp0", "100.64.12.2", "")]
    for i, (site, isp, dev, src, via) in enumerate(cases):
        host = HOSTS[i]
        route = f"ip route replace {host}/32 {via} dev {dev}"
        assert sh(lab, site, "gw", "sh", "-c", route).returncode == 0
        try:
            before = lab.counters(site, isp)
            assert ping(lab, site, "gw", host, src=src, wait=2), (site, isp)
            mid = lab.counters(site, isp)
            assert mid["from_cust"] > before["from_cust"] and mid["to_cust"] > before["to_cust"]
            lan = "10.1.0.1" if site == "s1" else "10.2.0.1"
            assert not ping(lab, site, "gw", host, src=lan, wait=0.5, tries=1), "foreign source must be dropped"
            after = lab.counters(site, isp)
            assert after["bcp38_drop"] == mid["bcp38_drop"] + 1
            assert after["from_cust"] == mid["from_cust"]
        finally:
            sh(lab, site, "gw", "ip", "route", "del", f"{host}/32")


def test_reflector_answers_through_uplink(lab):
    st = lab.status()
    if "reflector" not in st["processes"]:
        pytest.skip("mwlab.reflector not available")
    assert st["processes"]["reflector"]["alive"]
    sh(lab, "s1", "gw", "ip", "route", "replace", "198.18.0.1/32", "via", "100.64.1.1", "dev", "wan1")
    try:
        code = ("import socket,json;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('100.64.1.2',0));"
                "s.settimeout(3);s.sendto(b'{\"flow\":1}',('198.18.0.1',7777));print(s.recv(4096).decode())")
        p = sh(lab, "s1", "gw", "python3", "-c", code)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["seen"] == "100.64.1.2"
    finally:
        sh(lab, "s1", "gw", "ip", "route", "del", "198.18.0.1/32")


def test_overlay_isolates_gateway_files(lab):
    marker = f"mwlab-{LAB}-overlay-test"
    p = sh(lab, "s1", "gw", "sh", "-c", f"echo hi > /etc/{marker} && mkdir -p /etc/iproute2/rt_tables.d && "
                                        f"echo '101 isp1' > /etc/iproute2/rt_tables.d/{marker}.conf && cat /etc/{marker} "
                                        f"&& touch /root/{marker} /var/tmp/{marker} /run/{marker}")
    assert p.returncode == 0 and p.stdout.strip() == "hi", p.stderr
    for d in ("/etc", "/root", "/var/tmp", "/run"):
        assert not Path(f"{d}/{marker}").exists()
    assert not Path(f"/etc/iproute2/rt_tables.d/{marker}.conf").exists()
    assert (lab.var_dir / "s1" / "etc" / "upper" / marker).exists()
    # the other gateway does not see it either; /sys shows the gateway's own interfaces
    assert sh(lab, "s2", "gw", "test", "-e", f"/etc/{marker}").returncode != 0
    assert set(sh(lab, "s1", "gw", "ls", "/sys/class/net").stdout.split()) == {"lo", "lan0", "wan1", "wan2"}
    run = sh(lab, "s1", "gw", "ls", "/run").stdout.split()
    assert marker in run and "netns" not in run and "mwlab" not in run, run  # private tmpfs


def _gw_route(lab):
    sh(lab, "s1", "gw", "ip", "route", "replace", "198.18.0.0/15", "via", "100.64.1.1", "dev", "wan1")


def _neigh(lab):
    n = ip_json(lab, "s1", "gw", "neigh", "show", "100.64.1.1", "dev", "wan1")
    return n[0] if n else {}


def test_fail_upstream(lab):
    _gw_route(lab)
    assert ping(lab, "s1", "gw", "198.18.0.1", wait=2)
    lab.fail("s1", "isp1", "upstream")
    try:
        p = sh(lab, "s1", "gw", "ping", "-n", "-c1", "-W1", "198.18.0.1")
        assert p.returncode != 0 and "Net Unreachable" in p.stdout, p.stdout
        assert ping(lab, "s1", "gw", "100.64.1.1")
        assert "NO-CARRIER" not in ip_json(lab, "s1", "gw", "link", "show", "dev", "wan1")[0]["flags"]
        assert lab.status()["sites"][0]["uplinks"][0]["failure"] == "upstream"
    finally:
        assert lab.restore("s1", "isp1") == "upstream"
    assert ping(lab, "s1", "gw", "198.18.0.1", wait=2)
    assert lab.restore("s1", "isp1") is None


def test_fail_link(lab):
    _gw_route(lab)
    lab.fail("s1", "isp1", "link")
    try:
        link = ip_json(lab, "s1", "gw", "link", "show", "dev", "wan1")[0]
        assert "NO-CARRIER" in link["flags"] and link["operstate"] == "DOWN"
        assert not ping(lab, "s1", "gw", "100.64.1.1", wait=0.5, tries=1)
    finally:
        lab.restore("s1", "isp1")
    assert "NO-CARRIER" not in ip_json(lab, "s1", "gw", "link", "show", "dev", "wan1")[0]["flags"]
    _gw_route(lab)  # carrier loss flushed the gateway's route over wan1 (as on real hardware)
    assert ping(lab, "s1", "gw", "198.18.0.1", wait=2)


def test_fail_blackhole(lab):
    _gw_route(lab)
    assert ping(lab, "s1", "gw", "100.64.1.1", wait=2)
    lab.fail("s1", "isp1", "blackhole")
    try:
        before = lab.counters("s1", "isp1")["fail_drop"]
        p = sh(lab, "s1", "gw", "ping", "-n", "-c1", "-W0.5", "198.18.0.1")
        assert p.returncode != 0 and "Unreachable" not in p.stdout  # silent
        assert not ping(lab, "s1", "gw", "100.64.1.1", wait=0.5, tries=1)
        assert lab.counters("s1", "isp1")["fail_drop"] >= before + 2
        n = _neigh(lab)
        assert n.get("lladdr") and "FAILED" not in n.get("state", []) and "INCOMPLETE" not in n.get("state", []), n
        assert "NO-CARRIER" not in ip_json(lab, "s1", "gw", "link", "show", "dev", "wan1")[0]["flags"]
    finally:
        lab.restore("s1", "isp1")
    assert ping(lab, "s1", "gw", "100.64.1.1", wait=2)
    assert ping(lab, "s1", "gw", "198.18.0.1", wait=2)


def test_fail_switch_mode_and_device_only(lab):
    # switching mode undoes the previous one; device-only uplinks fail the same way
    lab.fail("s2", "isp2", "link")
    lab.fail("s2", "isp2", "upstream")
    try:
        assert "NO-CARRIER" not in ip_json(lab, "s2", "gw", "link", "show", "dev", "ppp0")[0]["flags"]
        assert ping(lab, "s2", "gw", "100.64.12.1")
        sh(lab, "s2", "gw", "ip", "route", "replace", "198.18.0.0/15", "dev", "ppp0")
        assert not ping(lab, "s2", "gw", "198.18.0.2", wait=0.5, tries=1)
    finally:
        lab.restore("s2", "isp2")
    assert ping(lab, "s2", "gw", "198.18.0.2", wait=2)
    sh(lab, "s2", "gw", "ip", "route", "del", "198.18.0.0/15")


def test_impair_loss(lab):
    _gw_route(lab)
    lab.impair("s1", "isp1", loss=100)
    try:
        assert not ping(lab, "s1", "gw", "100.64.1.1", wait=0.5, tries=1)
        assert lab.counters("s1", "isp1")["loss_drop"] >= 1
        lab.impair("s1", "isp1", loss=30)
        p = sh(lab, "s1", "gw", "ping", "-n", "-q", "-c", "100", "-i", "0.002", "-W", "1", "198.18.0.1", timeout=30)
        received = int(p.stdout.split(" received")[0].split()[-1])
        assert 20 <= received <= 80, p.stdout  # 0.7 * 0.7 = 49 % expected
    finally:
        lab.impair("s1", "isp1", clear=True)
    assert ping(lab, "s1", "gw", "100.64.1.1", wait=2)
    assert "s1/isp1" not in json.loads(lab.state_file.read_text())["impairments"]


def test_inventory(lab, tmp_path):
    inv = lab.inventory()
    hosts = inv["all"]["children"]["gateways"]["hosts"]
    assert set(hosts) == {"s1", "s2"}
    s2 = hosts["s2"]
    assert s2["ansible_connection"] == "multiwan.linux.nsenter"
    assert s2["multiwan_nsenter_pidfile"] == f"/run/mwlab/{LAB}/s2.gw.pid"
    assert s2["ansible_pipelining"] is True and s2["ansible_python_interpreter"] == "/usr/bin/python3"
    assert s2["multiwan_lan_networks"] == ["10.2.0.0/24"]
    u1, u2 = s2["multiwan_uplinks"]
    assert u1 == {"name": "isp1", "interface": "wan1", "address": "100.64.11.2/24", "gateway": "100.64.11.1",
                  "table": 101, "weight": 1, "probe_targets": ["198.18.0.1", "198.18.0.2", "198.18.0.3"]}
    assert "gateway" not in u2 and u2["address"] == "100.64.12.2/32" and u2["table"] == 102
    assert (s2["mwlab_lab"], s2["mwlab_site"]) == (LAB, "s2")
    yaml = pytest.importorskip("yaml")
    out = tmp_path / "inv.yml"
    env = {**os.environ, "PYTHONPATH": str(TOPOLOGIES.parent)}
    subprocess.run([sys.executable, "-m", "mwlab", "--lab", LAB, "inventory", "--output", str(out)], check=True, env=env)
    assert yaml.safe_load(out.read_text()) == inv


def test_cli_status_exec_and_delay(lab):
    env = {**os.environ, "PYTHONPATH": str(TOPOLOGIES.parent)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "mwlab", "--lab", LAB, *a], capture_output=True, text=True, env=env)
    p = run("status", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "up"
    assert "s2" in run("status").stdout
    p = run("exec", "s1", "gw", "--", "cat", "/proc/sys/net/ipv4/ip_forward")
    assert p.stdout.strip() == "0"
    p = run("exec", "inet", "--", "ip", "-br", "addr", "show", "dev", "lo")
    assert "198.18.7.1/32" in p.stdout
    p = run("impair", "s1", "isp1", "--delay", "50")
    assert p.returncode == 2 and "netem" in p.stderr
    p = run("fail", "s1", "nope")
    assert p.returncode == 1 and "no uplink named 'nope'" in p.stderr
