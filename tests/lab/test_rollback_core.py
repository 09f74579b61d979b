"""module_utils/_rollback against the real kernel: a snapshot, a bad change, the restore.

A throwaway network namespace (``mwr<pid>-rb``, removed at the end) with two veth uplinks (no dummy driver in this kernel) gets
rules, routes, nexthops, a group and an nft table of ours plus foreign ones; the test takes a
snapshot, then breaks things the way a bad push would (a blackhole rule in front of everything,
a deleted route, a changed group, an extra route, the NAT table gone), restores, and compares the
kernel's state (``ip -j``, ``nft -j``) with the state before. Foreign objects stay untouched.
Sysctls and files are not part of this test: they are per-process views (the restore runs on the
gateway itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".build" / "collections"))
from ansible_collections.multiwan.linux.plugins.module_utils import _iproute, _nft, _rollback  # noqa: E402

NS = "mwr%d-rb" % os.getpid()
PROTO = 109
SETUP = """
link add wan1 type veth peer name wan1p
link add wan2 type veth peer name wan2p
link set wan1p up
link set wan2p up
link set wan1 up
link set wan2 up
addr add 100.64.1.2/24 dev wan1
addr add 100.64.2.2/24 dev wan2
nexthop add id 1828716645 via 100.64.1.1 dev wan1 protocol 109
nexthop add id 1828716646 via 100.64.2.1 dev wan2 protocol 109
nexthop add id 1845493761 group 1828716645,2/1828716646,1 protocol 109
route add default nhid 1845493761 protocol 109
route add default via 100.64.1.1 dev wan1 table 101 protocol 109
route add default via 100.64.2.1 dev wan2 table 102 protocol 109
rule add priority 1000 to 10.1.0.0/24 lookup main protocol 109
rule add priority 3101 from 100.64.1.2 lookup 101 protocol 109
rule add priority 3102 from 100.64.2.2 lookup 102 protocol 109
"""
# Somebody else's route and rule, each in its own ip call: in one `ip -batch`, iproute2 6.1 keeps
# the previous line's `protocol` for a rule (measured: `protocol static` came out as 109).
FOREIGN = [["ip", "route", "add", "198.18.7.0/24", "via", "100.64.2.1", "dev", "wan2", "table", "250", "protocol", "static"],
           ["ip", "rule", "add", "priority", "4000", "from", "10.9.9.9", "lookup", "250", "protocol", "static"]]
NAT = """table ip multiwan {
\tchain nat_postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "wan1" ip saddr 10.1.0.0/24 masquerade
\t}
}
table inet foreign {
\tchain input {
\t\ttype filter hook input priority 0; policy accept;
\t\ttcp dport 22 accept
\t}
}
"""
BREAK = """
rule add priority 5 to 10.1.0.10 blackhole protocol 109
route del default table 101
nexthop replace id 1845493761 group 1828716646 protocol 109
route add 198.18.8.0/24 via 100.64.1.1 dev wan1 protocol 109
rule del priority 3102
"""


def in_ns(argv, data=None):
    proc = subprocess.run(["ip", "netns", "exec", NS] + argv, input=data, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def ip_batch(text):
    rc, out, err = in_ns(["ip", "-batch", "-"], text.strip() + "\n")
    assert rc == 0, err


def kernel_view():
    views = {}
    for args in (["rule"], ["-6", "rule"], ["route", "show", "table", "all"], ["nexthop"]):
        views[" ".join(args)] = in_ns(["ip", "-j", "-d"] + args + ([] if "show" in args else ["show"]))[1]
    # per table: a re-created table is listed after the others, which is no difference
    for spec in (["ip", "multiwan"], ["inet", "foreign"]):
        views[" ".join(spec)] = in_ns(["nft", "list", "table"] + spec)[1]
    return views


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        ip_batch(SETUP)
        for argv in FOREIGN:
            assert in_ns(argv)[0] == 0
        rc, out, err = in_ns(["nft", "-f", "-"], NAT)
        assert rc == 0, err
        yield
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


def test_snapshot_break_restore_equals_before(netns):
    iproute = _iproute.IpRoute(runner=in_ns)
    nft = _nft.Nft(runner=in_ns)
    saved = _rollback.snapshot(iproute, nft, PROTO, nft_tables=["ip multiwan"])
    assert len(saved["rules"]) == 3 and len(saved["nexthops"]) == 3 and saved["nft"]["ip multiwan"]
    assert not [r for r in saved["routes"] if r["table"] == 250]  # foreign routes are not ours
    before = kernel_view()
    ip_batch(BREAK)
    assert in_ns(["nft", "delete", "table", "ip", "multiwan"])[0] == 0
    assert kernel_view() != before
    report = _rollback.restore(saved, iproute, nft)
    assert report["failed"] == [], report
    assert kernel_view() == before
    # a second restore finds nothing to do on the nft side and changes nothing
    again = _rollback.restore(saved, iproute, nft)
    assert again["failed"] == [] and kernel_view() == before
    assert not [what for what in again["restored"] if what.startswith("nft")]


def test_snapshot_file_round_trip(tmp_path, netns):
    iproute = _iproute.IpRoute(runner=in_ns)
    saved = _rollback.snapshot(iproute, _nft.Nft(runner=in_ns), PROTO, nft_tables=["ip multiwan", "ip nothere"])
    assert saved["nft"]["ip nothere"] is None
    path = str(tmp_path / "rollback" / "snapshot.json")
    _rollback.save(saved, path)
    loaded = _rollback.load(path)
    assert loaded == json.loads(json.dumps(saved))  # tuples come back as lists, nothing else changes
    # nothing changed since the snapshot: the restore would only re-assert, never delete or add rules
    texts = [line.text for line in _rollback.routing_lines(loaded, _rollback.live_routing(iproute))]
    assert texts and all(text.startswith(("nexthop replace", "route replace")) for text in texts), texts
    (tmp_path / "bad.json").write_text('{"version": 99}')
    with pytest.raises(ValueError, match="not a multiwan rollback snapshot"):
        _rollback.load(str(tmp_path / "bad.json"))
