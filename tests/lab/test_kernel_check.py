"""multiwan.linux.kernel_check on a lab gateway: the real kernel, via its config and via probes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "plugins" / "modules" / "fixtures" / "kernel_check"
REQUIRED = ["IP_ADVANCED_ROUTER", "IP_MULTIPLE_TABLES", "IP_ROUTE_MULTIPATH", "NF_TABLES", "NF_TABLES_IPV4",
            "NFT_NAT", "NFT_MASQ", "NF_NAT", "NF_CONNTRACK", "NFT_CT", "NF_CT_NETLINK"]


def fails(gw, args, **kwargs):
    """Run kernel_check expecting a failure; it must leave the namespace exactly as it was."""
    before = snapshot(gw)
    result = gw.module("kernel_check", args, expect_failure=True, **kwargs)
    assert "Traceback" not in result["msg"]
    assert snapshot(gw) == before
    return result


def snapshot(gw):
    """Everything a probe could leave behind in the gateway's namespace."""
    return {
        "rules4": gw.json("ip -4 -j rule show"),
        "rules6": gw.json("ip -6 -j rule show"),
        "routes4": gw.json("ip -4 -j route show table all"),
        "routes6": gw.json("ip -6 -j route show table all"),
        "nexthops": gw.json("ip -j nexthop show"),
        "nft": gw.json("nft -j list ruleset"),
    }


_RUNS = {}


def once(gateway, args):
    """``(result, snapshot before, snapshot after)`` of one real kernel_check run with ``args``.

    kernel_check changes nothing, so tests that only read the same report share one run per lab.
    """
    key = (gateway.lab.name, json.dumps(args, sort_keys=True))
    if key not in _RUNS:
        before = snapshot(gateway)
        result = gateway.module("kernel_check", args)
        _RUNS[key] = (result, before, snapshot(gateway))
    return _RUNS[key]


def put_fixture(gw, name, text=None):
    path = "/tmp/mwf-%s" % name
    gw.sh("cat > %s" % path, input=text if text is not None else (FIXTURES / name).read_text())
    return path


def test_passes_on_this_kernel(gateway):
    result = once(gateway, {})[0]  # the defaults, as in the first EXAMPLE
    assert result["changed"] is False
    assert result["missing"] == []
    config = gateway.sh("for f in /proc/config.gz /boot/config-$(uname -r) /lib/modules/$(uname -r)/config; "
                        "do [ -f $f ] && echo $f && break; done; true").stdout.strip()
    assert result["source"] == (config or "probes")
    for option in REQUIRED:
        assert result["options"][option]["ok"] is True, (option, result["options"][option])
    assert result["options"]["IPV6_MULTIPLE_TABLES"]["required"] is False
    assert result["kernel"]["release"] == gateway.sh("uname -r").stdout.strip()
    assert set(result["userland"]) == {"ip", "ip_json", "nexthop", "nft", "nft_json", "conntrack"}
    assert all(entry["ok"] for entry in result["userland"].values())


def test_probes_pass_and_leave_nothing_behind(gateway):
    result, before, after = once(gateway, {"method": "probes"})
    assert result["source"] == "probes"
    assert result["missing"] == [] and result["unknown"] == []
    for option in REQUIRED + ["NF_TABLES_INET", "IPV6_MULTIPLE_TABLES"]:
        assert result["options"][option]["status"] == "y", (option, result["options"][option])
    probes = result["probes"]
    assert any(p.startswith("ip -4 rule add") and p.endswith(": ok") for p in probes), probes
    assert any("nexthop dev lo nexthop dev lo: ok" in p for p in probes), probes
    assert "nft: NFT_MASQ in a dormant throwaway table: ok" in probes
    assert after == before


def test_probes_agree_with_the_config(gateway):
    config = once(gateway, {})[0]
    if config["source"] == "probes":
        pytest.skip("this kernel has no configuration file to compare with")
    probes = once(gateway, {"method": "probes"})[0]
    for option in REQUIRED:
        assert probes["options"][option]["ok"] == config["options"][option]["ok"], option


def test_check_mode_still_reports(gateway):
    before = snapshot(gateway)
    result = gateway.module("kernel_check", {"method": "probes"}, check=True)
    assert result["changed"] is False and result["source"] == "probes" and result["probes"]
    assert result["options"]["IP_ROUTE_MULTIPATH"]["status"] == "y"
    assert snapshot(gateway) == before
    path = put_fixture(gateway, "config-6.18.44-excerpt")
    missing = fails(gateway, {"config_path": path, "required": ["CONFIG_MULTIWAN_DOES_NOT_EXIST"]}, check=True)
    assert "CONFIG_MULTIWAN_DOES_NOT_EXIST" in missing["msg"]


def test_fails_listing_what_is_missing(gateway):
    path = put_fixture(gateway, "config-6.18.44-excerpt")
    result = fails(gateway, {"config_path": path, "required": [
        "CONFIG_MULTIWAN_DOES_NOT_EXIST",
        {"option": "NET_SCH_NETEM", "feature": "delay emulation in the lab"},
    ]})
    assert result["source"] == path
    assert "CONFIG_MULTIWAN_DOES_NOT_EXIST (requested by the playbook): not in the configuration" in result["msg"]
    assert "CONFIG_NET_SCH_NETEM (delay emulation in the lab): is not set" in result["msg"]
    assert result["options"]["MULTIWAN_DOES_NOT_EXIST"]["status"] == "missing"
    assert result["options"]["NFT_MASQ"]["status"] == "y"
    assert len(result["missing"]) == 2
    optional = gateway.module("kernel_check", {"config_path": path, "optional": ["CONFIG_MULTIWAN_DOES_NOT_EXIST"]})
    assert optional["options"]["MULTIWAN_DOES_NOT_EXIST"]["ok"] is False and optional["missing"] == []


def test_module_options_need_their_module(gateway):
    config = put_fixture(gateway, "config-debian-style")
    no_modules = fails(gateway, {"config_path": config, "modules_dir": "/tmp/mwf-no-such-dir"})
    assert "nft_masq is not loaded and /tmp/mwf-no-such-dir does not exist" in no_modules["msg"]
    gateway.sh("mkdir -p /tmp/mwf-modules && cat > /tmp/mwf-modules/modules.dep", input=(FIXTURES / "modules.dep").read_text())
    gateway.sh("cp /tmp/mwf-modules/modules.dep /tmp/mwf-modules/modules.dep.keep")
    ok = gateway.module("kernel_check", {"config_path": config, "modules_dir": "/tmp/mwf-modules"})
    assert ok["options"]["NFT_MASQ"] == {
        "status": "m", "ok": True, "module": "nft_masq", "required": True,
        "feature": "masquerade on uplinks whose address changes (DHCP, PPPoE)",
        "detail": "installed: kernel/net/netfilter/nft_masq.ko.xz"}
    gateway.sh("grep -v nft_masq /tmp/mwf-modules/modules.dep.keep > /tmp/mwf-modules/modules.dep")
    gone = fails(gateway, {"config_path": config, "modules_dir": "/tmp/mwf-modules"})
    assert "CONFIG_NFT_MASQ" in gone["msg"] and "neither loaded nor listed" in gone["msg"]
    assert len(gone["missing"]) == 1


@pytest.mark.parametrize("args, words", [
    ({"required": [{"feature": "x"}]}, ["required[0]", "option"]),
    ({"required": ["IP_MULTIPLE_TABLES", "not an option!"]}, ["required[1]", "not an option!"]),
    ({"optional": [{"option": "X", "colour": "red"}]}, ["optional[0]", "colour"]),
    ({"required": [42]}, ["required[0]"]),
    ({"config_path": "/tmp/mwf-does-not-exist"}, ["config_path", "/tmp/mwf-does-not-exist"]),
    ({"config_path": "/proc/config.gz", "method": "probes"}, ["config_path", "probes"]),
    ({"method": "guess"}, ["method", "guess"]),
])
def test_bad_parameters(gateway, args, words):
    before = snapshot(gateway)
    result = fails(gateway, args)
    for word in words:
        assert word in result["msg"], result["msg"]
    assert "probes" not in result or not result["probes"]
    assert snapshot(gateway) == before
