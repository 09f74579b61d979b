"""Config parsing, module checks, probes bookkeeping and the verdict of kernel_check."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ansible_collections.multiwan.linux.plugins.modules import kernel_check as kc

FIXTURES = Path(__file__).parent / "fixtures" / "kernel_check"
TOOLS = json.loads((FIXTURES / "tool-outputs.json").read_text())["commands"]


def captured(argv):
    for entry in TOOLS:
        if entry["argv"] == argv:
            return entry["rc"], entry["stdout"], entry["stderr"]
    raise KeyError(argv)


class FakeModule(object):
    """run_command answers from a table (default: the captured tool outputs)."""

    def __init__(self, answers=None, bins=("ip", "nft", "conntrack")):
        self.answers = answers or {}
        self.bins = bins
        self.calls = []

    def get_bin_path(self, name):
        return name if name in self.bins else None

    def run_command(self, argv, data=None, binary_data=False):
        self.calls.append((list(argv), data))
        key = tuple(argv)
        for prefix, answer in self.answers.items():
            if key[:len(prefix)] == prefix:
                return answer(argv, data) if callable(answer) else answer
        return captured(list(argv))


def requirements(required=(), optional=(), skip=()):
    return kc.build_requirements(kc.parse_requirements(list(required), "required", True),
                                 kc.parse_requirements(list(optional), "optional", False), list(skip))


# -- configuration ------------------------------------------------------------------------------

def test_parse_real_config_excerpt():
    values = kc.parse_config((FIXTURES / "config-6.18.44-excerpt").read_text())
    assert values["IP_MULTIPLE_TABLES"] == "y"
    assert values["NF_CT_NETLINK"] == "y"
    assert values["NET_SCH_NETEM"] == "n"
    assert values["MODULES"] == "n"
    assert values["LOCALVERSION"] == '"-fc-v782"'
    assert "NF_CONNTRACK_NETLINK" not in values  # the Kconfig symbol is NF_CT_NETLINK


def test_read_gzip_and_plain(tmp_path):
    text = (FIXTURES / "config-6.18.44-excerpt").read_text()
    (tmp_path / "config.gz").write_bytes(gzip.compress(text.encode()))
    assert kc.read_config_file(str(tmp_path / "config.gz")) == text
    assert kc.read_config_file(str(FIXTURES / "config-6.18.44-excerpt")) == text


def test_find_config_first_found(tmp_path):
    (tmp_path / "boot-6.1").write_text("")
    (tmp_path / "lib-6.1").write_text("")
    candidates = (str(tmp_path / "proc"), str(tmp_path / "boot-{release}"), str(tmp_path / "lib-{release}"))
    assert kc.find_config("6.1", candidates) == str(tmp_path / "boot-6.1")
    assert kc.find_config("6.2", candidates) is None


def test_this_kernel_passes_everything():
    reqs = requirements()
    values = kc.parse_config((FIXTURES / "config-6.18.44-excerpt").read_text())
    options = kc.evaluate_config(reqs, values, kc.ModuleIndex("/nonexistent-mwf"))
    assert all(options[o]["status"] == "y" for o in options)
    assert kc.verdict(reqs, options, {}) == ([], [])


def test_module_options_with_a_modules_dir(tmp_path):
    (tmp_path / "modules.dep").write_text((FIXTURES / "modules.dep").read_text())
    (tmp_path / "modules.builtin").write_text("kernel/net/netfilter/nf_conntrack_netlink.ko\n")
    reqs = requirements()
    values = kc.parse_config((FIXTURES / "config-debian-style").read_text())
    index = kc.ModuleIndex(str(tmp_path), sys_module=str(tmp_path / "sys-module"))
    options = kc.evaluate_config(reqs, values, index)
    assert options["NFT_MASQ"]["status"] == "m" and options["NFT_MASQ"]["ok"] is True
    assert options["NFT_MASQ"]["detail"] == "installed: kernel/net/netfilter/nft_masq.ko.xz"
    assert options["NF_CT_NETLINK"]["detail"].startswith("built in")
    assert options["NF_TABLES_INET"]["status"] == "y"
    assert kc.verdict(reqs, options, {}) == ([], [])


def test_module_options_without_modules_dir(tmp_path):
    (tmp_path / "sys-module" / "nf_conntrack").mkdir(parents=True)
    reqs = requirements()
    values = kc.parse_config((FIXTURES / "config-debian-style").read_text())
    index = kc.ModuleIndex(str(tmp_path / "lib-modules"), sys_module=str(tmp_path / "sys-module"))
    options = kc.evaluate_config(reqs, values, index)
    assert options["NF_CONNTRACK"]["ok"] is True and options["NF_CONNTRACK"]["detail"].startswith("loaded")
    assert options["NFT_MASQ"]["ok"] is False
    assert "does not exist, so it cannot be loaded" in options["NFT_MASQ"]["detail"]
    missing, unknown = kc.verdict(reqs, options, {})
    assert unknown == []
    assert [line.split(" ")[0] for line in missing] == [
        "CONFIG_NF_TABLES", "CONFIG_NFT_NAT", "CONFIG_NFT_MASQ", "CONFIG_NF_NAT", "CONFIG_NFT_CT", "CONFIG_NF_CT_NETLINK"]
    assert any(line.startswith("CONFIG_NFT_MASQ (masquerade") for line in missing)


def test_alternatives_any_one_is_enough():
    reqs = requirements()
    options = kc.evaluate_config(reqs, {"NF_TABLES_INET": "y"}, kc.ModuleIndex("/nonexistent-mwf"))
    missing, dummy = kc.verdict(reqs, options, {})
    assert not any("NF_TABLES_IPV4" in line for line in missing)
    options = kc.evaluate_config(reqs, {}, kc.ModuleIndex("/nonexistent-mwf"))
    missing, dummy = kc.verdict(reqs, options, {})
    assert any(line.startswith("CONFIG_NF_TABLES_IPV4 or CONFIG_NF_TABLES_INET") for line in missing)


# -- parameters ---------------------------------------------------------------------------------

def test_user_requirements_merge_and_skip():
    reqs = requirements(required=["CONFIG_MULTIWAN_DOES_NOT_EXIST",
                                  {"option": "NFT_MASQ", "feature": "our reason", "module": "nft_masq"}],
                        optional=[{"option": ["A_ONE", "A_TWO"], "feature": "either"}],
                        skip=["CONFIG_NF_CT_NETLINK"])
    by_first = dict((r.options[0], r) for r in reqs)
    assert by_first["MULTIWAN_DOES_NOT_EXIST"].required is True
    assert by_first["NFT_MASQ"].feature == "our reason"
    assert by_first["A_ONE"].options == ["A_ONE", "A_TWO"] and by_first["A_ONE"].required is False
    assert "NF_CT_NETLINK" not in by_first
    assert by_first["IPV6_MULTIPLE_TABLES"].required is False


def test_nf_conntrack_netlink_is_an_alias_of_the_real_symbol():
    assert kc.normalize_option("CONFIG_NF_CONNTRACK_NETLINK") == "NF_CT_NETLINK"
    reqs = requirements(required=[{"option": "NF_CONNTRACK_NETLINK", "feature": "ours"}])
    assert [r.feature for r in reqs if "NF_CT_NETLINK" in r.options] == ["ours"]
    assert "NF_CONNTRACK_NETLINK" not in [o for r in reqs for o in r.options]
    assert not [r for r in requirements(skip=["NF_CONNTRACK_NETLINK"]) if "NF_CT_NETLINK" in r.options]


@pytest.mark.parametrize("items, message", [
    ([{"feature": "x"}], "required[0]: needs 'option'"),
    (["OK", "bad name!"], "required[1]: 'bad name!' is not a kernel option name"),
    ([{"option": "X", "colour": "red"}], "required[0]: unknown key(s) colour"),
    ([{"option": []}], "required[0]: 'option' is an empty list"),
    ([{"option": "X", "module": "../evil"}], "required[0]: 'module' must be a kernel module name"),
    ([42], "required[0]: must be an option name"),
])
def test_bad_requirements_name_the_field(items, message):
    with pytest.raises(ValueError) as info:
        kc.parse_requirements(items, "required", True)
    assert str(info.value).startswith(message)


# -- userland -----------------------------------------------------------------------------------

def test_userland_from_captured_outputs():
    report, ip_bin, nft_bin, conntrack_bin = kc.check_userland(FakeModule(), set())
    assert (ip_bin, nft_bin, conntrack_bin) == ("ip", "nft", "conntrack")
    assert report["ip"]["version"] == "6.1.0"
    assert report["nft"]["version"] == "1.0.6"
    assert report["conntrack"]["version"] == "1.4.7"
    assert all(entry["ok"] is True for entry in report.values()), report


def test_userland_missing_tools_and_old_ip():
    old_ip = {("ip", "nexthop", "help"): (255, "", 'Object "nexthop" is unknown, try "ip help".\n')}
    report, dummy, nft_bin, conntrack_bin = kc.check_userland(FakeModule(old_ip, bins=("ip",)), {"conntrack"})
    assert nft_bin is None and conntrack_bin is None
    assert report["nexthop"]["ok"] is False and "5.3" in report["nexthop"]["detail"]
    assert report["nft"]["status"] == "missing" and report["nft_json"]["status"] == "missing"
    assert "conntrack" not in report  # skipped
    missing, dummy = kc.verdict([], {}, report)
    assert [line.split(" ")[0] for line in missing] == ["nexthop", "nft", "nft_json"]


def test_nft_without_json():
    no_json = {("nft", "-j"): (1, "", "Error: JSON support not compiled-in\n")}
    report, dummy, dummy, dummy = kc.check_userland(FakeModule(no_json), set())
    assert report["nft_json"]["ok"] is False and "JSON support" in report["nft_json"]["detail"]


# -- probes -------------------------------------------------------------------------------------

def ok(argv, data):
    return 0, "", ""


def test_probes_all_accepted_and_cleaned_up():
    module = FakeModule({("ip", "-4", "-j"): captured(["ip", "-j", "-d", "rule", "show"]), ("ip", "-6", "-j"): (0, "[]", ""),
                         ("ip", "-4", "rule"): ok, ("ip", "-6", "rule", "add"): ok, ("ip", "-6", "rule", "del"): (2, "", "no such rule"),
                         ("ip", "-j", "route", "show"): (0, "[]", ""), ("ip", "-4", "route"): ok,
                         ("nft",): ok})
    prober = kc.Prober(module, "ip", "nft", "conntrack")
    prober.probe_routing()
    prober.probe_nftables()
    prober.probe_ctnetlink()
    options = kc.evaluate_probes(requirements(), prober.results)
    assert all(entry["status"] == "y" for entry in options.values()), options
    argvs = [" ".join(argv) for argv, dummy in module.calls]
    added = [a for a in argvs if " rule add " in a]
    assert all(a.replace(" add ", " del ") in argvs for a in added)
    assert any(a.startswith("ip -4 route flush table ") for a in argvs)
    scripts = [data for argv, data in module.calls if argv[:2] == ["nft", "-f"]]
    assert scripts and all("flags dormant" in s and s.rstrip().splitlines()[-1].startswith("delete table") for s in scripts)
    assert any("masquerade" in s for s in scripts) and any("ct mark set" in s for s in scripts)


def test_probe_table_is_unused():
    rules = captured(["ip", "-j", "-d", "rule", "show"])
    busy = {"n": 0}

    def route_show(argv, data):
        busy["n"] += 1
        return (0, '[{"dst":"10.0.0.0/8"}]', "") if busy["n"] == 1 else (0, "[]", "")

    answers = {("ip", "-4", "-j", "-d", "rule"): rules, ("ip", "-6", "-j", "-d", "rule"): (0, "[]", ""),
               ("ip", "-j", "route", "show"): route_show}
    prober = kc.Prober(FakeModule(answers), "ip", "nft", None)
    table, dummy = prober.pick_ids()
    assert table & 0xFF000000 == kc.PROBE_TAG and busy["n"] == 2  # the first candidate was in use


def test_probes_report_what_the_kernel_refuses():
    refused = (2, "", "Error: Multipath support not enabled in kernel.\n")
    module = FakeModule({("ip", "-4", "-j"): (0, "[]", ""), ("ip", "-6", "-j"): (0, "[]", ""),
                         ("ip", "-4", "route", "add", "198.51.100.253/32"): refused, ("ip", "-4", "rule"): ok,
                         ("ip", "-6", "rule"): ok, ("ip", "-j", "route", "show"): (0, "[]", ""),
                         ("ip", "-4", "route"): ok,
                         ("nft",): lambda argv, data: (1, "", "Error: Could not process rule: No such file or directory\n")
                         if data and "masquerade" in data else (0, "", "")})
    prober = kc.Prober(module, "ip", "nft", "conntrack")
    prober.probe_routing()
    prober.probe_nftables()
    prober.probe_ctnetlink()
    reqs = requirements()
    options = kc.evaluate_probes(reqs, prober.results)
    assert options["IP_ROUTE_MULTIPATH"]["status"] == "missing"
    assert options["NFT_MASQ"]["status"] == "missing"
    assert options["NFT_NAT"]["status"] == "y"
    missing, unknown = kc.verdict(reqs, options, {})
    assert [line.split(" ")[0] for line in missing] == ["CONFIG_IP_ROUTE_MULTIPATH", "CONFIG_NFT_MASQ"]
    assert unknown == []
    # The route probe's table is flushed even though the multipath route failed.
    assert any(argv[:4] == ["ip", "-4", "route", "flush"] for argv, dummy in module.calls)


def test_unprobeable_options_are_unknown_not_missing():
    reqs = requirements(required=["MULTIWAN_DOES_NOT_EXIST"])
    options = kc.evaluate_probes(reqs, {"IP_MULTIPLE_TABLES": ("y", "")})
    assert options["MULTIWAN_DOES_NOT_EXIST"]["status"] == "unknown"
    missing, unknown = kc.verdict(reqs, options, {})
    assert missing == [] and any(line.startswith("CONFIG_MULTIWAN_DOES_NOT_EXIST") for line in unknown)
