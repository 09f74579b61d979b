"""Config validation, state file, metrics, status table, hooks and commands of the watchdog."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.multiwan.linux.plugins.module_utils import _watchdog as w

TARGETS = ["192.0.2.1", "198.51.100.1"]


def raw_config():
    return {"group": {"id": 0x6E000001, "type": "resilient", "buckets": 64},
            "uplinks": [{"name": "isp1", "interface": "wan1", "address": "100.64.1.2", "gateway": "100.64.1.1",
                         "table": 101, "nexthop_id": 0x6D000065, "probe_targets": TARGETS},
                        {"name": "isp2", "interface": "ppp0", "address": "100.64.2.2", "table": 102, "weight": 2,
                         "nexthop_id": 0x6D000066, "probe_targets": TARGETS, "timeout": 1.5,
                         "routes": [{"table": 102, "destination": "default", "nexthops": [{"dev": "ppp0"}]},
                                    {"table": "main", "destination": "203.0.113.0/24",
                                     "nexthops": [{"dev": "ppp0"}], "scope": "link"}]}]}


def test_config_defaults_overrides_and_derived_routes():
    config = w.load_config(raw_config())
    assert config.interval == 0.15 and config.state_file == "/run/multiwan/state.json"
    isp1, isp2 = config.uplinks
    assert isp1.settings.timeout == 0.3 and isp2.settings.timeout == 1.5
    assert isp1.routes == [{"family": "inet", "table": 101, "destination": "default", "metric": 0, "type": "unicast",
                            "scope": None, "src": None, "protocol": None,
                            "nexthops": [{"via": "100.64.1.1", "dev": "wan1", "weight": 1, "onlink": False,
                                          "id": None}]}]
    assert isp2.routes[1]["table"] == 254 and isp2.routes[1]["scope"] == 253
    assert isp2.group_hop() == {"via": None, "dev": "ppp0", "weight": 2, "onlink": False, "id": 0x6D000066}
    assert config.group["table"] == 254 and config.group["destination"] == "default"


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(interval=0), "interval"),
    (lambda c: c.update(down_after=1.5), "down_after"),
    (lambda c: c["uplinks"][0].update(min_targets_up=3), "more than the 2 probe_targets"),
    (lambda c: c["uplinks"][0].update(probe_targets=[]), "at least one target"),
    (lambda c: c["uplinks"][0].update(probe_targets=["2001:db8::1"]), "not an inet address"),
    (lambda c: c["uplinks"][1].update(name="isp1"), "used by two uplinks"),
    (lambda c: c["uplinks"][1].update(nexthop_id=0x6D000065), "used by two uplinks"),
    (lambda c: c["uplinks"][0].pop("address"), "address is required"),
    (lambda c: c.update(group={"id": "x"}), "group"),
    (lambda c: c.update(uplinks=[]), "uplinks"),
    (lambda c: c["uplinks"][1]["routes"].append({"table": 102}), "needs nexthops"),
    (lambda c: c["uplinks"][1]["routes"].append({"table": "nosuchtable", "nexthops": [{"dev": "x"}]}), "unknown table"),
])
def test_config_errors_name_the_key(change, message):
    data = raw_config()
    change(data)
    with pytest.raises(w.ConfigError, match=message):
        w.load_config(data)


def test_read_config_reports_bad_json(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{nope")
    with pytest.raises(w.ConfigError, match=str(path)):
        w.read_config(str(path))


def core_with_history():
    config = w.load_config(raw_config())
    core = w.Core(config, 1000.0)
    core.round_result(1000.1, "isp1", {TARGETS[0]: 0.012, TARGETS[1]: None})
    for i in range(4):
        core.round_result(1001.0 + i, "isp2", {})
    return core


def test_state_document_is_what_ip_route_reads():
    doc = w.state_document(core_with_history(), 1010.0, pid=42)
    assert doc["all_down"] is False and doc["updated"] == 1010.0 and doc["version"] == 1
    isp2 = doc["uplinks"]["isp2"]
    assert (isp2["state"], isp2["dev"], isp2["nexthop_ids"], isp2["in_group"]) == ("down", "ppp0", [0x6D000066], False)
    assert isp2["last_change"]["from"] == "up" and isp2["reason"] == "probes"
    isp1 = doc["uplinks"]["isp1"]
    assert isp1["targets"][TARGETS[0]]["rtt_ms"] == 12.0 and isp1["targets"][TARGETS[1]]["loss"] == 1.0
    assert doc["group"]["members"] == [{"uplink": "isp1", "nexthop_id": 0x6D000065, "weight": 1}]
    json.dumps(doc)  # serialisable
    # the reading side of Contract 2 (ip_route's read_health) finds the held-down member
    down = set(i for u in doc["uplinks"].values() if u["state"] == "down" for i in u["nexthop_ids"])
    assert down == {0x6D000066}


def test_metrics_text():
    text = w.metrics_text(w.state_document(core_with_history(), 1010.0))
    lines = text.splitlines()
    assert 'multiwan_uplink_up{uplink="isp1",dev="wan1"} 1' in lines
    assert 'multiwan_uplink_up{uplink="isp2",dev="ppp0"} 0' in lines
    assert 'multiwan_uplink_transitions_total{uplink="isp2"} 1' in lines
    assert 'multiwan_probe_rtt_seconds{uplink="isp1",target="192.0.2.1"} 0.012' in lines
    assert 'multiwan_probe_loss_ratio{uplink="isp1",target="198.51.100.1"} 1.0' in lines
    assert "multiwan_all_down 0" in lines
    for line in lines:  # every sample belongs to a declared family
        if not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert "# TYPE %s " % name in text
    assert w._label('a"b\\c') == 'a\\"b\\\\c'


def test_status_table():
    doc = w.state_document(core_with_history(), 1010.0)
    text = w.status_text(doc, 1012.0)
    assert text.splitlines()[0] == "group %d: isp1" % 0x6E000001
    row = [line for line in text.splitlines() if line.startswith("isp2")][0]
    assert "down" in row and "ppp0" in row and "up->down" in row and "probes" in row
    assert "192.0.2.1 12.0ms" in text and "198.51.100.1 lost" in text
    assert "warning" not in text
    assert "is the watchdog running?" in w.status_text(doc, 1100.0)
    doc["all_down"] = True
    assert "ALL UPLINKS DOWN" in w.status_text(doc, 1012.0)


def test_status_command(tmp_path, capsys):
    path = str(tmp_path / "state.json")
    w.write_atomic(path, json.dumps(w.state_document(core_with_history(), 1010.0)))
    assert w.main(["status", "--state-file", path]) == 0
    assert "UPLINK" in capsys.readouterr().out
    assert w.main(["status", "--json", "--state-file", path]) == 0
    assert json.loads(capsys.readouterr().out)["uplinks"]["isp2"]["state"] == "down"
    assert w.main(["status", "--state-file", str(tmp_path / "missing")]) == 1


def test_status_command_shows_every_family(tmp_path, capsys, monkeypatch):
    inet, inet6 = str(tmp_path / "state.json"), str(tmp_path / "state6.json")
    monkeypatch.setattr(w, "STATE_FILES", (("inet", inet), ("inet6", inet6)), raising=False)
    assert w.main(["status"]) == 1
    assert "no state in %s or %s" % (inet, inet6) in capsys.readouterr().err
    # one family: as with one file
    w.write_atomic(inet, json.dumps(w.state_document(core_with_history(), 1010.0)))
    assert w.main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "group %d: isp1" % 0x6E000001 and out.count("UPLINK") == 1
    assert w.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["group"]["family"] == "inet"
    # both: one table per family, a list of documents
    data = raw_config()
    data["group"]["family"] = "inet6"
    data["uplinks"] = [dict(data["uplinks"][0], address="2001:db8:1::2", gateway="2001:db8:1::1",
                            probe_targets=["2001:db8:ffff::1"])]
    w.write_atomic(inet6, json.dumps(w.state_document(w.Core(w.load_config(data), 1000.0), 1010.0)))
    assert w.main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.count("UPLINK") == 2
    assert "inet (%s)" % inet in out.splitlines() and "inet6 (%s)" % inet6 in out.splitlines()
    assert w.main(["status", "--json"]) == 0
    assert [d["group"]["family"] for d in json.loads(capsys.readouterr().out)] == ["inet", "inet6"]
    # --state-file: that file only
    assert w.main(["status", "--json", "--state-file", inet6]) == 0
    assert json.loads(capsys.readouterr().out)["group"]["family"] == "inet6"
    # a file that is there but unreadable is named; the other family is still shown
    open(inet, "w").write("{broken")
    assert w.main(["status"]) == 0
    captured = capsys.readouterr()
    assert "cannot read %s" % inet in captured.err and captured.out.count("UPLINK") == 1


def test_watchdog_check_command(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw_config()))
    assert w.main(["watchdog", "--check", "--config", str(path)]) == 0
    path.write_text("[]")
    assert w.main(["watchdog", "--check", "--config", str(path)]) == 2


def test_write_atomic_creates_the_directory_and_leaves_no_temp(tmp_path):
    path = str(tmp_path / "run" / "multiwan" / "state.json")
    w.write_atomic(path, "one")
    w.write_atomic(path, "two")
    assert open(path).read() == "two"
    assert os.listdir(os.path.dirname(path)) == ["state.json"]


def test_hook_scripts_and_environment(tmp_path):
    for name, mode in (("20-b", 0o755), ("10-a", 0o755), ("30-not-exec", 0o644), (".hidden", 0o755), ("40-c~", 0o755)):
        path = tmp_path / name
        path.write_text("#!/bin/sh\n")
        path.chmod(mode)
    (tmp_path / "50-dir").mkdir()
    assert [os.path.basename(p) for p in w.hook_scripts(str(tmp_path))] == ["10-a", "20-b"]
    assert w.hook_scripts(str(tmp_path / "missing")) == []
    config = w.load_config(raw_config())
    t = w.Transition("isp1", "up", "down", "probes", "0 of 2", 1000.5)
    env = w.hook_environment(t, config.uplink("isp1"), False, base={"PATH": "/bin"})
    assert env == {"PATH": "/bin", "MULTIWAN_UPLINK": "isp1", "MULTIWAN_OLD_STATE": "up", "MULTIWAN_NEW_STATE": "down",
                   "MULTIWAN_REASON": "probes", "MULTIWAN_DETAIL": "0 of 2", "MULTIWAN_TIME": "1000.500",
                   "MULTIWAN_DEV": "wan1", "MULTIWAN_ADDRESS": "100.64.1.2", "MULTIWAN_ALL_DOWN": "0"}


def test_children_run_hooks_in_order_in_the_background_and_kill_on_timeout(tmp_path):
    import time
    out = tmp_path / "out"
    for name, body in (("10-a", "echo a >> %s" % out), ("20-slow", "sleep 30"), ("30-c", "echo c >> %s" % out)):
        path = tmp_path / name
        path.write_text("#!/bin/sh\n%s\n" % body)
        path.chmod(0o755)
    children = w.Children()
    start = time.monotonic()
    children.queue_hooks(w.hook_scripts(str(tmp_path)), dict(os.environ), 0.5)
    children.poll(time.monotonic())
    assert time.monotonic() - start < 0.3  # starting is not waiting
    while children.busy() and time.monotonic() - start < 5:
        children.poll(time.monotonic())
        time.sleep(0.02)
    assert not children.busy()
    assert out.read_text().split() == ["a", "c"]


def test_conntrack_command_only_names_the_uplink():
    config = w.load_config(raw_config())
    assert w.conntrack_command("conntrack", config.uplink("isp1")) == ["conntrack", "-D", "--reply-dst", "100.64.1.2"]
    data = raw_config()
    data["group"]["family"] = "inet6"
    data["uplinks"] = [dict(data["uplinks"][0], address="2001:db8:1::2", gateway="2001:db8:1::1",
                            probe_targets=["2001:db8:ffff::1"])]
    v6 = w.load_config(data)
    assert w.conntrack_command("conntrack", v6.uplinks[0]) == ["conntrack", "-D", "--reply-dst", "2001:db8:1::2",
                                                               "-f", "ipv6"]
