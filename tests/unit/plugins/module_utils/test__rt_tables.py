"""Parsing, resolving and planning of rt_tables files (plugins/module_utils/_rt_tables.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ansible_collections.multiwan.linux.plugins.module_utils import _rt_tables as rt
from ansible_collections.multiwan.linux.plugins.module_utils._diff import diff_objects

FIXTURES = Path(__file__).parent / "fixtures" / "rt_tables"


def make_tree(tmp_path, files):
    """Write ``{relative path: text}`` under tmp_path; return (etc_dir, vendor_dirs)."""
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path / "etc"), (str(tmp_path / "usr-share"), str(tmp_path / "usr-lib"))


# -- what ip 6.1 itself made of tricky files ------------------------------------------------------

def test_resolution_matches_real_ip(tmp_path):
    captured = json.loads((FIXTURES / "ip61_resolution.json").read_text())
    etc, vendors = make_tree(tmp_path, dict(("etc/" + k, v) for k, v in captured["files"].items()))
    for name, expected in captured["resolved_table_ids"].items():
        if name == "unspec":
            # ip resolves unspec to 0; the kernel files a route for table 0 under main.
            assert rt.resolve_table(name, etc_dir=etc, vendor_dirs=vendors) == 0
            continue
        if expected is None:
            with pytest.raises(rt.UnknownTableError):
                rt.resolve_table(name, etc_dir=etc, vendor_dirs=vendors)
        else:
            assert rt.resolve_table(name, etc_dir=etc, vendor_dirs=vendors) == expected, name


def test_corrupt_line_stops_the_file_only(tmp_path):
    captured = json.loads((FIXTURES / "ip61_resolution.json").read_text())
    etc, vendors = make_tree(tmp_path, dict(("etc/" + k, v) for k, v in captured["files"].items()))
    main = rt.TablesFile.read(os.path.join(etc, "rt_tables"))
    assert main.corrupt_line is not None
    assert "afterbogus" not in [e.name for e in main.entries]
    assert any("stops reading" in p for p in main.problems)
    assert any("ignores id 2147483648" in p for p in main.problems)
    tables = rt.read_tables(etc_dir=etc, vendor_dirs=vendors)
    assert tables["fromdropin"] == 60  # the drop-in is still read
    assert "hidden" not in tables and "nonconf" not in tables and "short" not in tables


def test_debian_default_file():
    parsed = rt.TablesFile(str(FIXTURES / "debian12_rt_tables"), (FIXTURES / "debian12_rt_tables").read_text())
    assert [(e.table_id, e.name) for e in parsed.entries] == [(255, "local"), (254, "main"), (253, "default"), (0, "unspec")]
    assert parsed.problems == []


@pytest.mark.parametrize("line, expected", [
    ("100 isp1\n", (100, "isp1")),
    ("\t 100\tisp1   # comment\n", (100, "isp1")),
    ("0x64 isp1\n", (100, "isp1")),
    ("100isp1\n", (100, "isp1")),       # sscanf("%d %s") needs no blank between
    ("  # comment\n", None),
    ("\n", None),
    ("", None),
])
def test_parse_line(line, expected):
    assert rt.parse_line(line) == expected


def test_parse_line_refuses_what_ip_calls_corrupted():
    with pytest.raises(ValueError):
        rt.parse_line("isp1 100\n")


# -- which files ip reads -----------------------------------------------------------------------

def test_files_ip_reads_precedence(tmp_path):
    etc, vendors = make_tree(tmp_path, {
        "usr-share/rt_tables": "254 main\n",
        "usr-share/rt_tables.d/vendor.conf": "150 vendortable\n",
        "usr-share/rt_tables.d/overridden.conf": "151 old\n",
        "etc/rt_tables.d/overridden.conf": "151 new\n",
        "etc/rt_tables.d/a.conf": "152 a\n",
        "etc/rt_tables.d/.hidden.conf": "153 hidden\n",
        "etc/rt_tables.d/notes.txt": "154 txt\n",
    })
    # Without /etc/iproute2/rt_tables, ip falls back to the vendor file.
    assert rt.files_ip_reads(etc, vendors) == [
        str(tmp_path / "usr-share/rt_tables"),
        str(tmp_path / "usr-share/rt_tables.d/vendor.conf"),
        os.path.join(etc, "rt_tables.d/a.conf"),
        os.path.join(etc, "rt_tables.d/overridden.conf"),
    ]
    (tmp_path / "etc/rt_tables").write_text("254 main\n")
    assert rt.files_ip_reads(etc, vendors)[0] == os.path.join(etc, "rt_tables")
    assert str(tmp_path / "usr-share/rt_tables") not in rt.files_ip_reads(etc, vendors)
    assert rt.read_tables(etc_dir=etc, vendor_dirs=vendors)["new"] == 151
    assert "old" not in rt.read_tables(etc_dir=etc, vendor_dirs=vendors)


def test_nothing_at_all(tmp_path):
    etc, vendors = str(tmp_path / "etc"), (str(tmp_path / "usr"),)
    assert rt.files_ip_reads(etc, vendors) == []
    assert rt.read_tables(etc_dir=etc, vendor_dirs=vendors) == {"default": 253, "main": 254, "local": 255}
    assert rt.resolve_table("main", etc_dir=etc, vendor_dirs=vendors) == 254
    assert rt.resolve_table(101, etc_dir=etc, vendor_dirs=vendors) == 101
    assert rt.resolve_table("0x65", etc_dir=etc, vendor_dirs=vendors) == 101
    with pytest.raises(rt.UnknownTableError, match="no rt_tables file found"):
        rt.resolve_table("isp1", etc_dir=etc, vendor_dirs=vendors)
    with pytest.raises(rt.UnknownTableError):
        rt.resolve_table(True)


def test_explicit_paths(tmp_path):
    etc, dummy = make_tree(tmp_path, {"etc/one": "1 one\n", "etc/two": "2 two\n1 uno\n"})
    assert rt.read_tables(paths=[os.path.join(etc, "one"), os.path.join(etc, "two")])["uno"] == 1


# -- validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, table_id, field", [
    ("main", 100, "name"), ("local", 100, "name"), ("default", 100, "name"), ("unspec", 100, "name"),
    ("isp1", 0, "id"), ("isp1", 253, "id"), ("isp1", 254, "id"), ("isp1", 255, "id"),
    ("isp1", -1, "id"), ("isp1", 2 ** 31, "id"),
    ("1isp", 100, "name"), ("isp 1", 100, "name"), (".isp", 100, "name"), ("is/p", 100, "name"),
    ("isp#1", 100, "name"), ("", 100, "name"), ("x" * 256, 100, "name"),
])
def test_validate_refuses(name, table_id, field):
    assert rt.validate_table(name, table_id).startswith(field + ":")


@pytest.mark.parametrize("name, table_id", [("isp1", 1), ("ISP_2", 252), ("isp-3.v4@school", 256), ("_x", 2 ** 31 - 1)])
def test_validate_accepts(name, table_id):
    assert rt.validate_table(name, table_id) is None


def test_target_paths():
    assert rt.check_target_path("/etc/iproute2/rt_tables") is None
    assert rt.check_target_path("/etc/iproute2/rt_tables.d/isp1.conf") is None
    assert rt.check_target_path("/etc/iproute2/rt_tables.d/../rt_tables") is None
    for bad in ("/etc/iproute2/rt_tables.d/isp1", "/etc/iproute2/rt_tables.d/.x.conf", "/tmp/rt_tables",
                "/etc/iproute2/rt_tables.d/.conf", "/usr/share/iproute2/rt_tables"):
        assert rt.check_target_path(bad).startswith("path:"), bad


# -- planning -----------------------------------------------------------------------------------

def plan(tmp_path, files, target, name, table_id, present=True):
    etc, vendors = make_tree(tmp_path, files)
    return rt.plan_entry(os.path.join(etc, target), name, table_id, present=present, etc_dir=etc, vendor_dirs=vendors)


def test_plan_new_dropin(tmp_path):
    p = plan(tmp_path, {"etc/rt_tables": (FIXTURES / "debian12_rt_tables").read_text()}, "rt_tables.d/isp1.conf", "isp1", 101)
    assert p.before is None
    assert p.after == rt.HEADER + "101\tisp1\n"
    assert p.conflicts == [] and p.changed
    assert p.resolves_to.table_id == 101
    changes = diff_objects(p.live, p.desired, remove_unlisted=True)
    assert changes.add == [("isp1", {"id": 101})]


def test_plan_unchanged_keeps_formatting(tmp_path):
    text = "# mine\n  101   isp1   # first uplink\n"
    p = plan(tmp_path, {"etc/rt_tables.d/isp1.conf": text}, "rt_tables.d/isp1.conf", "isp1", 101)
    assert p.after == text and not p.changed
    assert not diff_objects(p.live, p.desired, remove_unlisted=True)


def test_plan_change_id_keeps_comments_and_collapses_duplicates(tmp_path):
    text = "# mine\n  101   isp1   # first uplink\n140 neighbour\n102 isp1\n"
    p = plan(tmp_path, {"etc/rt_tables": text}, "rt_tables", "isp1", 111)
    assert p.after == "# mine\n  111\tisp1   # first uplink\n140 neighbour\n"
    assert p.live == {"isp1": {"id": [101, 102]}}


def test_plan_hex_id_rewrite_does_not_touch_the_name(tmp_path):
    p = plan(tmp_path, {"etc/rt_tables": "0x1a a\n"}, "rt_tables", "a", 27)
    assert p.after == "27\ta\n"


def test_plan_appends_newline_when_missing(tmp_path):
    p = plan(tmp_path, {"etc/rt_tables": "140 neighbour"}, "rt_tables", "isp1", 101)
    assert p.after == "140 neighbour\n101\tisp1\n"


def test_plan_reports_conflicts_everywhere_ip_reads(tmp_path):
    p = plan(tmp_path, {
        "etc/rt_tables": "255 local\n254 main\n253 default\n0 unspec\n101 other\n",
        "usr-share/rt_tables.d/vendor.conf": "100 isp1\n",
        "etc/rt_tables.d/isp1.conf": "7 unrelated\n",
        "etc/rt_tables.d/same.conf": "101 isp1\n",
    }, "rt_tables.d/isp1.conf", "isp1", 101)
    conflicts = sorted((e.name, e.table_id, os.path.basename(e.path)) for e in p.conflicts)
    assert conflicts == [("isp1", 100, "vendor.conf"), ("other", 101, "rt_tables")]
    assert [(e.name, e.table_id) for e in p.duplicates] == [("isp1", 101)]


def test_plan_conflict_with_another_line_of_the_target(tmp_path):
    p = plan(tmp_path, {"etc/rt_tables": "130 legacy\n"}, "rt_tables", "isp1", 130)
    assert [(e.name, e.line) for e in p.conflicts] == [("legacy", 1)]


def test_plan_refuses_a_corrupt_target(tmp_path):
    with pytest.raises(ValueError, match="line 2"):
        plan(tmp_path, {"etc/rt_tables": "1 one\nnot an entry\n"}, "rt_tables", "isp1", 101)


def test_plan_seeds_a_new_main_file_from_the_vendor_file(tmp_path):
    vendor = "255\tlocal\n254\tmain\n253\tdefault\n0\tunspec\n77 vendor\n"
    p = plan(tmp_path, {"usr-share/rt_tables": vendor}, "rt_tables", "isp1", 101)
    assert p.after == rt.HEADER + vendor + "101\tisp1\n"


def test_plan_absent(tmp_path):
    p = plan(tmp_path, {"etc/rt_tables.d/isp1.conf": rt.HEADER + "101\tisp1\n"}, "rt_tables.d/isp1.conf", "isp1", None, present=False)
    assert p.after is None and p.changed  # our header-only drop-in goes away
    changes = diff_objects(p.live, p.desired, remove_unlisted=True)
    assert changes.remove == [("isp1", {"id": 101})]


def test_plan_absent_keeps_foreign_content(tmp_path):
    p = plan(tmp_path, {"etc/rt_tables.d/shared.conf": "# shared\n101 isp1\n140 neighbour\n",
                        "etc/rt_tables": "101 isp1\n"},
             "rt_tables.d/shared.conf", "isp1", None, present=False)
    assert p.after == "# shared\n140 neighbour\n"
    assert [os.path.basename(e.path) for e in p.duplicates] == ["rt_tables"]
    assert p.resolves_to.table_id == 101  # still named by the main file


def test_plan_absent_with_id_only_removes_that_id(tmp_path):
    files = {"etc/rt_tables.d/isp1.conf": rt.HEADER + "101\tisp1\n"}
    p = plan(tmp_path, files, "rt_tables.d/isp1.conf", "isp1", 999, present=False)
    assert not p.changed and p.live == {}


def test_plan_main_file_is_never_deleted(tmp_path):
    p = plan(tmp_path, {"etc/rt_tables": rt.HEADER + "101\tisp1\n"}, "rt_tables", "isp1", None, present=False)
    assert p.after == rt.HEADER


def test_resolves_to_follows_ip_bucket_order(tmp_path):
    # Same name twice: ip walks buckets (id & 255) upwards and takes the first match.
    p = plan(tmp_path, {"etc/rt_tables": "50 isp1\n"}, "rt_tables.d/isp1.conf", "isp1", 300)
    assert p.resolves_to.table_id == 300  # bucket 44 comes before bucket 50
    p = plan(tmp_path, {"etc/rt_tables": "40 isp1\n"}, "rt_tables.d/isp1.conf", "isp1", 300)
    assert p.resolves_to.table_id == 40
    assert [e.table_id for e in p.conflicts] == [40]


# -- writing ------------------------------------------------------------------------------------

def test_write_atomic_creates_dirs_and_keeps_mode(tmp_path):
    target = tmp_path / "etc" / "iproute2" / "rt_tables.d" / "isp1.conf"
    rt.write_atomic(str(target), "101\tisp1\n")
    assert target.read_text() == "101\tisp1\n"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    target.chmod(0o600)
    rt.write_atomic(str(target), "102\tisp1\n")
    assert target.read_text() == "102\tisp1\n"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(target.parent)) == ["isp1.conf"]  # no temp file left
    rt.remove_file(str(target))
    assert not target.exists()
