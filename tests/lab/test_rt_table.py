"""multiwan.linux.rt_table on a lab gateway: files where ip reads them, checked with ip itself."""

from __future__ import annotations

import os
import subprocess

import pytest

ETC = "/etc/iproute2"
DROPIN = ETC + "/rt_tables.d"


@pytest.fixture(scope="module")
def host_iproute2():
    """The host's /etc/iproute2 as a tar stream (only read), to reset the gateway's copy."""
    return subprocess.run(["tar", "-C", "/etc", "-cf", "-", "iproute2"], capture_output=True, check=True).stdout


@pytest.fixture
def gw(gateway, host_iproute2):
    """The gateway, with its /etc/iproute2 reset to the host's content after each test."""
    # The claim every test here relies on: /etc in the gateway is its own overlay, in its own
    # mount namespace, so writing (or deleting) there never reaches the host.
    assert gateway.sh("findmnt -n -o FSTYPE /etc").stdout.strip() == "overlay"
    assert gateway.sh("readlink /proc/self/ns/mnt").stdout.strip() != os.readlink("/proc/self/ns/mnt")
    yield gateway
    gateway.sh("ip route flush table 101; ip route flush table 111; true")
    gateway.sh("umount /usr/share 2>/dev/null; rm -rf /tmp/mwf-usr; true")
    proc = subprocess.run(["nsenter", "--target", str(gateway.pid), "--net", "--mount", "--", "sh", "-c",
                           "rm -rf /etc/iproute2 && tar -C /etc -xf -"], input=host_iproute2, capture_output=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def fails(gw, args):
    """Run rt_table expecting a failure; the files ip reads must be exactly as before."""
    before = snapshot(gw)
    result = gw.module("rt_table", args, expect_failure=True)
    assert "Traceback" not in result["msg"]
    assert snapshot(gw) == before, "a failing rt_table run changed files"
    return result


def snapshot(gw):
    """Every file (with content) under /etc/iproute2 and /usr/share/iproute2 of the gateway."""
    return gw.sh("for d in /etc/iproute2 /usr/share/iproute2; do [ -d $d ] && find $d -type f | sort"
                 " | while read f; do echo \"== $f\"; cat \"$f\"; done; done; true").stdout


def exists(gw, path):
    return gw.sh("test -e %s" % path, check=False).returncode == 0


def name_known(gw, name):
    """Whether ip accepts ``table NAME`` (an empty table is a kernel error, an unknown name is ip's)."""
    proc = gw.sh("ip route show table %s" % name, check=False)
    return "table id value is invalid" not in proc.stderr


def resolves(gw, name, table_id):
    """ip itself resolves ``name`` to ``table_id``: a route added by name shows up under the id,
    and ``ip route show table NAME`` lists it."""
    gw.sh("ip route add blackhole 198.51.100.0/24 table %s" % name)
    try:
        routes = gw.json("ip -j route show table %d" % table_id)
        by_name = gw.json("ip -j route show table %s" % name)
        return any(r.get("dst") == "198.51.100.0/24" for r in routes) and routes == by_name
    finally:
        gw.sh("ip route del blackhole 198.51.100.0/24 table %d" % table_id, check=False)


def test_create_resolve_and_rerun(gw):
    result = gw.module("rt_table", {"name": "isp1", "id": 101}, diff=True)
    assert result["changed"] is True
    assert result["path"] == DROPIN + "/isp1.conf"
    assert result["resolves_to"]["id"] == 101
    assert result["diff"]["before"] == ""
    assert result["diff"]["after"] == gw.read(DROPIN + "/isp1.conf")
    lines = [l for l in gw.read(DROPIN + "/isp1.conf").splitlines() if l and not l.startswith("#")]
    assert lines == ["101\tisp1"]
    assert name_known(gw, "isp1")
    assert resolves(gw, "isp1", 101)
    again = gw.module("rt_table", {"name": "isp1", "id": 101})
    assert again["changed"] is False
    # Nothing of this reached the host.
    assert not os.path.exists(DROPIN + "/isp1.conf")


def test_check_mode_changes_nothing(gw):
    result = gw.module("rt_table", {"name": "isp1", "id": 101}, check=True, diff=True)
    assert result["changed"] is True
    assert "101\tisp1" in result["diff"]["after"]
    assert not exists(gw, DROPIN + "/isp1.conf")
    assert not name_known(gw, "isp1")
    gw.sh("mkdir -p %s && printf '101\\tisp1\\n' > %s/isp1.conf" % (DROPIN, DROPIN))  # as if created earlier
    change = gw.module("rt_table", {"name": "isp1", "id": 111}, check=True)
    assert change["changed"] is True
    assert gw.read(DROPIN + "/isp1.conf") == "101\tisp1\n"
    assert resolves(gw, "isp1", 101)


def test_change_id_with_diff(gw):
    gw.module("rt_table", {"name": "isp1", "id": 101})
    result = gw.module("rt_table", {"name": "isp1", "id": 111}, diff=True)
    assert result["changed"] is True
    assert "101\tisp1" in result["diff"]["before"] and "111\tisp1" not in result["diff"]["before"]
    assert "111\tisp1" in result["diff"]["after"] and "101\tisp1" not in result["diff"]["after"]
    assert result["diff"]["after_header"] == DROPIN + "/isp1.conf"
    assert result["diff"]["after"] == gw.read(DROPIN + "/isp1.conf")
    assert resolves(gw, "isp1", 111)
    assert gw.module("rt_table", {"name": "isp1", "id": 111})["changed"] is False


def test_conflicts_name_both_entries_unless_force(gw):
    gw.sh("printf '# someone else\\n120 foreign\\n121 isp4\\n' > %s/other.conf" % DROPIN)
    same_id = fails(gw, {"name": "isp3", "id": 120})
    assert "foreign" in same_id["msg"] and DROPIN + "/other.conf" in same_id["msg"] and "isp3" in same_id["msg"]
    same_name = fails(gw, {"name": "isp4", "id": 122})
    assert "121" in same_name["msg"] and "122" in same_name["msg"] and DROPIN + "/other.conf" in same_name["msg"]
    assert not exists(gw, DROPIN + "/isp3.conf") and not exists(gw, DROPIN + "/isp4.conf")

    forced = gw.module("rt_table", {"name": "isp3", "id": 120, "force": True})
    assert forced["changed"] is True
    assert forced["conflicts"] == [{"id": 120, "name": "foreign", "path": DROPIN + "/other.conf", "line": 2}]
    # force writes only our entry: the other file is untouched.
    assert gw.read(DROPIN + "/other.conf") == "# someone else\n120 foreign\n121 isp4\n"
    assert "120\tisp3" in gw.read(DROPIN + "/isp3.conf")


def test_conflict_inside_the_main_file(gw):
    original = gw.read(ETC + "/rt_tables")
    gw.sh("printf '130 legacy\\n' >> %s/rt_tables" % ETC)
    failed = fails(gw, {"name": "isp1", "id": 130})
    assert "legacy" in failed["msg"] and ETC + "/rt_tables line" in failed["msg"]
    main = fails(gw, {"name": "isp1", "id": 130, "use_main_file": True})
    assert "legacy" in main["msg"]
    assert gw.read(ETC + "/rt_tables") == original + "130 legacy\n"


@pytest.mark.parametrize("args, field", [
    ({"name": "main", "id": 100}, "name"),
    ({"name": "local", "id": 100}, "name"),
    ({"name": "default", "id": 100}, "name"),
    ({"name": "unspec", "id": 100}, "name"),
    ({"name": "isp1", "id": 0}, "id"),
    ({"name": "isp1", "id": 253}, "id"),
    ({"name": "isp1", "id": 254}, "id"),
    ({"name": "isp1", "id": 255}, "id"),
    ({"name": "isp1", "id": 2 ** 31}, "id"),
    ({"name": "1isp", "id": 100}, "name"),
    ({"name": "isp one", "id": 100}, "name"),
    ({"name": "../isp", "id": 100}, "name"),
    ({"name": "isp1", "id": 100, "path": "/etc/iproute2/rt_tables.d/isp1.txt"}, "path"),
    ({"name": "isp1", "id": 100, "path": "/tmp/rt_tables"}, "path"),
])
def test_bad_parameters_fail_before_anything(gw, args, field):
    before = gw.sh("ls -la %s %s" % (ETC, DROPIN)).stdout + gw.read(ETC + "/rt_tables")
    result = fails(gw, args)
    assert result["msg"].startswith(field + ":"), result["msg"]
    assert gw.sh("ls -la %s %s" % (ETC, DROPIN)).stdout + gw.read(ETC + "/rt_tables") == before


def test_missing_id_and_exclusive_options(gw):
    assert "id" in fails(gw, {"name": "isp1"})["msg"]
    both = fails(gw, {"name": "isp1", "id": 101, "use_main_file": True, "path": DROPIN + "/x.conf"})
    assert "path" in both["msg"] and "use_main_file" in both["msg"]


def test_main_file_keeps_comments_and_other_entries(gw):
    gw.sh("printf '# our school\\n  77\\tlegacy   # keep me\\n' >> %s/rt_tables" % ETC)
    original = gw.read(ETC + "/rt_tables")
    created = gw.module("rt_table", {"name": "isp2", "id": 102, "use_main_file": True}, diff=True)
    assert created["changed"] is True
    assert created["diff"]["before"] == original
    assert gw.read(ETC + "/rt_tables") == original + "102\tisp2\n"
    assert resolves(gw, "isp2", 102)
    assert gw.module("rt_table", {"name": "isp2", "id": 102, "use_main_file": True})["changed"] is False
    gw.module("rt_table", {"name": "isp2", "id": 112, "use_main_file": True})
    assert gw.read(ETC + "/rt_tables") == original + "112\tisp2\n"
    removed = gw.module("rt_table", {"name": "isp2", "state": "absent", "use_main_file": True})
    assert removed["changed"] is True
    assert gw.read(ETC + "/rt_tables") == original
    assert exists(gw, ETC + "/rt_tables")


def test_absent(gw):
    gw.module("rt_table", {"name": "isp1", "id": 101})
    wrong_id = gw.module("rt_table", {"name": "isp1", "id": 999, "state": "absent"})
    assert wrong_id["changed"] is False and exists(gw, DROPIN + "/isp1.conf")
    check = gw.module("rt_table", {"name": "isp1", "state": "absent"}, check=True, diff=True)
    assert check["changed"] is True and "101\tisp1" in check["diff"]["before"] and check["diff"]["after"] == ""
    assert exists(gw, DROPIN + "/isp1.conf")
    removed = gw.module("rt_table", {"name": "isp1", "state": "absent"})
    assert removed["changed"] is True
    assert not exists(gw, DROPIN + "/isp1.conf")
    assert not name_known(gw, "isp1")
    assert gw.module("rt_table", {"name": "isp1", "state": "absent"})["changed"] is False


def test_absent_keeps_foreign_lines_of_a_dropin(gw):
    gw.sh("printf '# shared\\n101 isp1\\n140 neighbour\\n' > %s/shared.conf" % DROPIN)
    result = gw.module("rt_table", {"name": "isp1", "state": "absent", "path": DROPIN + "/shared.conf"})
    assert result["changed"] is True
    assert gw.read(DROPIN + "/shared.conf") == "# shared\n140 neighbour\n"


def test_without_etc_iproute2_and_with_vendor_files(gw):
    # Newer distributions ship the defaults in /usr/share/iproute2 and may have no /etc/iproute2.
    # /usr/share is given a private overlay in the gateway's mount namespace for this test.
    gw.sh("mkdir -p /tmp/mwf-usr/upper /tmp/mwf-usr/work && mount -t overlay overlay "
          "-o lowerdir=/usr/share,upperdir=/tmp/mwf-usr/upper,workdir=/tmp/mwf-usr/work /usr/share")
    gw.sh("mkdir -p /usr/share/iproute2/rt_tables.d && "
          "printf '255\\tlocal\\n254\\tmain\\n253\\tdefault\\n0\\tunspec\\n' > /usr/share/iproute2/rt_tables && "
          "printf '150 vendortable\\n' > /usr/share/iproute2/rt_tables.d/vendor.conf")
    assert not os.path.exists("/usr/share/iproute2"), "the /usr/share overlay leaked to the host"
    gw.sh("rm -rf /etc/iproute2")
    assert os.path.isfile(ETC + "/rt_tables"), "deleting /etc/iproute2 in the gateway touched the host"

    conflict = fails(gw, {"name": "isp5", "id": 150})
    assert "/usr/share/iproute2/rt_tables.d/vendor.conf" in conflict["msg"] and "vendortable" in conflict["msg"]

    created = gw.module("rt_table", {"name": "isp5", "id": 105})
    assert created["changed"] is True
    assert "105\tisp5" in gw.read(DROPIN + "/isp5.conf")
    assert not exists(gw, ETC + "/rt_tables")  # ip keeps using the vendor file
    assert resolves(gw, "isp5", 105)
    assert gw.module("rt_table", {"name": "isp5", "id": 105})["changed"] is False

    main = gw.module("rt_table", {"name": "isp6", "id": 106, "use_main_file": True})
    assert main["changed"] is True
    # Creating /etc/iproute2/rt_tables hides the vendor file from ip: its entries are carried over.
    text = gw.read(ETC + "/rt_tables")
    assert "254\tmain" in text and text.rstrip().endswith("106\tisp6")
    assert resolves(gw, "isp6", 106)
