"""Parsing, canonicalisation, rendering and validation of _nft with JSON captured from nft 1.0.6.

The fixtures come from ``fixtures/nft/capture.sh`` (real ``nft -j list table`` in a namespace).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.multiwan.linux.plugins.module_utils import _nft
from ansible_collections.multiwan.linux.plugins.module_utils._diff import diff_objects

FIXTURES = Path(__file__).parent / "fixtures" / "nft"


def captured(name):
    return json.loads((FIXTURES / (name + ".json")).read_text())


def live(name, family="ip"):
    return _nft.parse_table(captured(name), family, "multiwan")


UPLINKS = [{"interface": "wan1"}, {"interface": "ppp0", "snat_address": "100.64.2.2"}]


# -- captured JSON equals what we build --------------------------------------------------------

@pytest.mark.parametrize("fixture, family, uplinks, sources, excluded", [
    ("ip_masquerade_snat", "ip", UPLINKS, ["10.2.0.0/24", "10.1.0.0/24", "10.1.0.0/25"], ["192.168.1.7/32", "10.0.0.0/8"]),
    ("ip_minimal", "ip", [{"interface": "wan1"}], [], []),
    ("inet_mixed", "inet", UPLINKS, ["fd00:1::/64", "10.1.0.0/24"], ["192.168.0.0/16", "2001:db8::/32", "10.0.0.0/8"]),
    ("ip6_snat", "ip6", [{"interface": "wan1", "snat_address": "2001:db8::1"}], ["fd00::/64"], ["2001:db8:1::5/128"]),
])
def test_captured_table_equals_desired(fixture, family, uplinks, sources, excluded):
    desired = _nft.masquerade_table(family, "multiwan", uplinks, sources, excluded)
    assert live(fixture, family).states() == desired.states()
    assert not diff_objects(live(fixture, family).states(), desired.states(), remove_unlisted=True)


def test_handwritten_spellings_canonicalise_to_ours():
    """One-element sets, /32 and "priority srcnat" written by hand equal our rules; order still counts."""
    desired = _nft.masquerade_table("ip", "multiwan", UPLINKS, ["10.1.0.0/24"], ["10.0.0.0/8", "192.168.0.0/16"])
    handwritten = live("ip_handwritten").chains["nat_postrouting"]
    ours = desired.chains["nat_postrouting"]
    assert sorted(handwritten.rules, key=_nft.describe_rule) == sorted(ours.rules, key=_nft.describe_rule)
    # The admin put wan1 before ppp0; we sort by interface, so this is (correctly) a change.
    assert handwritten.state() != ours.state()


def test_changed_parameters_differ_from_captured():
    desired = _nft.masquerade_table("ip", "multiwan", [{"interface": "wan1", "snat_address": "100.64.1.2"}])
    changes = diff_objects(live("ip_minimal").states(), desired.states(), remove_unlisted=True)
    assert [entry[0] for entry in changes.replace] == [("chain", "nat_postrouting")]
    assert not changes.add and not changes.remove


def test_parse_ignores_handles_and_keeps_chain_properties():
    table = live("ip_minimal")
    assert table.states() == {
        ("table",): {"family": "ip", "name": "multiwan"},
        ("chain", "nat_postrouting"): {
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept",
            "rules": [[{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "wan1"}},
                       {"masquerade": None}]],
        },
    }


def test_drift_in_our_table_is_seen_and_removed():
    desired = _nft.masquerade_table("ip", "multiwan", [{"interface": "wan1"}])
    table = live("ip_drift")
    assert sorted(table.objects) == [("set", "blocked")]
    changes = diff_objects(table.states(), desired.states(), remove_unlisted=True)
    assert sorted(entry[0] for entry in changes.remove) == [("chain", "mangle_prerouting"), ("object", "set", "blocked")]
    assert [entry[0] for entry in changes.replace] == [("chain", "nat_postrouting")]
    # Statements we never write are still shown, as JSON.
    (rule,) = table.chains["mangle_prerouting"].view()["rules"]
    assert rule.startswith("ct state") or '"counter"' in rule
    assert '"counter"' in rule and rule.endswith("drop")


# -- canonical form ----------------------------------------------------------------------------

def test_canonical_undoes_nft_rewrites():
    one = {"set": [{"prefix": {"addr": "10.1.0.0", "len": 24}}]}
    assert _nft.canonical(one) == "10.1.0.0/24"
    assert _nft.canonical({"prefix": {"addr": "100.64.2.2", "len": 32}}) == "100.64.2.2"
    assert _nft.canonical({"prefix": {"addr": "2001:db8:0::1", "len": 128}}) == "2001:db8::1"
    two = _nft.canonical({"set": ["10.0.0.2", "10.0.0.1"]})
    assert two == {"set": ["10.0.0.1", "10.0.0.2"]}
    assert _nft.canonical(two) == two


def test_addresses_merges_overlaps():
    import ipaddress
    nets = [ipaddress.ip_network(n) for n in ("10.1.0.0/25", "10.1.0.0/24", "10.1.0.128/25")]
    assert _nft.addresses(nets) == "10.1.0.0/24"


# -- rendering ---------------------------------------------------------------------------------

def test_render_table_text():
    desired = _nft.masquerade_table("inet", "multiwan", UPLINKS, ["10.1.0.0/24", "fd00:1::/64"], ["10.0.0.0/8"])
    assert _nft.render_table(desired) == (
        "table inet multiwan {\n"
        "\tchain nat_postrouting {\n"
        "\t\ttype nat hook postrouting priority 100; policy accept;\n"
        "\t\tip daddr 10.0.0.0/8 return\n"
        "\t\tmeta oifname \"ppp0\" ip saddr 10.1.0.0/24 snat ip to 100.64.2.2\n"
        "\t\tmeta oifname \"wan1\" ip saddr 10.1.0.0/24 masquerade\n"
        "\t\tmeta oifname \"wan1\" ip6 saddr fd00:1::/64 masquerade\n"
        "\t}\n"
        "}\n")


def test_replace_script_is_atomic_replacement():
    desired = _nft.masquerade_table("ip", "multiwan", [{"interface": "wan1"}])
    script = _nft.replace_table_script(desired)
    assert script.startswith("table ip multiwan\ndelete table ip multiwan\ntable ip multiwan {\n")
    assert _nft.delete_table_script("ip", "multiwan") == "delete table ip multiwan\n"


def test_render_refuses_foreign_objects():
    with pytest.raises(ValueError, match="set"):
        _nft.render_table(live("ip_drift"))


# -- persistence helpers -----------------------------------------------------------------------

DEBIAN_DEFAULT = "#!/usr/sbin/nft -f\n\nflush ruleset\n\ntable inet filter {\n}\n"
PATH = "/etc/nftables.d/ip-multiwan.nft"


def test_include_added_once_at_the_end_and_removed_exactly():
    added = _nft.with_include(DEBIAN_DEFAULT, PATH, "owner")
    assert added == DEBIAN_DEFAULT + 'include "%s"  # managed by owner\n' % PATH
    assert _nft.with_include(added, PATH, "owner") == added
    assert _nft.without_include(added, PATH) == DEBIAN_DEFAULT
    assert _nft.without_include(DEBIAN_DEFAULT, PATH) == DEBIAN_DEFAULT


def test_include_respects_existing_line_and_missing_newline():
    text = 'flush ruleset\n  include "%s"\n' % PATH
    assert _nft.with_include(text, PATH, "owner") == text
    assert _nft.with_include("flush ruleset", PATH, "o") == 'flush ruleset\ninclude "%s"  # managed by o\n' % PATH
    other = 'include "/etc/nftables.d/ip-multiwan.nft.bak"\n'
    assert _nft.without_include(other, PATH) == other


def test_persist_file_loads_twice():
    text = _nft.persist_file_text(_nft.masquerade_table("ip", "multiwan", [{"interface": "wan1"}]), "owner")
    assert text.startswith("#!/usr/sbin/nft -f\n")
    assert "\ntable ip multiwan\ndelete table ip multiwan\ntable ip multiwan {\n" in text


# -- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    (dict(uplinks=[{"interface": "a-very-long-name0"}]), r"uplinks\[0\]\.interface.*15"),
    (dict(uplinks=[{"interface": "wan/1"}]), r"uplinks\[0\]\.interface"),
    (dict(uplinks=[{"interface": "wan 1"}]), r"uplinks\[0\]\.interface"),
    (dict(uplinks=[{"interface": "wan:1"}]), r"uplinks\[0\]\.interface"),
    (dict(uplinks=[{"interface": 'wan"1'}]), r"uplinks\[0\]\.interface"),
    (dict(uplinks=[{"interface": ""}]), r"uplinks\[0\]\.interface"),
    (dict(uplinks=[{"interface": "wan1"}, {"interface": "wan1"}]), r"uplinks\[1\]\.interface.*uplinks\[0\]"),
    (dict(uplinks=[{"interface": "wan1", "snat_address": "2001:db8::1"}]), r"uplinks\[0\]\.snat_address.*IPv6"),
    (dict(uplinks=[{"interface": "wan1", "snat_address": "100.64.1.0/24"}]), r"uplinks\[0\]\.snat_address"),
    (dict(uplinks=[]), r"uplinks"),
    (dict(source_networks=["10.1.0.1/24"]), r"source_networks\[0\].*host bits"),
    (dict(source_networks=["10.1.0.0/24", "fd00::/64"]), r"source_networks\[1\].*IPv6"),
    (dict(exclude_destinations=["nonsense"]), r"exclude_destinations\[0\]"),
    (dict(name="bad name"), r"table"),
    (dict(family="arp"), r"family"),
])
def test_bad_parameters_name_the_field(kwargs, field):
    args = dict(family="ip", name="multiwan", uplinks=[{"interface": "wan1"}])
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        _nft.masquerade_table(args["family"], args["name"], args["uplinks"], args.get("source_networks"),
                              args.get("exclude_destinations"))


def test_inet_snat_needs_matching_source_version():
    with pytest.raises(ValueError, match=r"uplinks\[0\]\.snat_address.*IPv4"):
        _nft.masquerade_table("inet", "multiwan", [{"interface": "wan1", "snat_address": "100.64.1.2"}],
                              source_networks=["fd00::/64"])


# -- running nft -------------------------------------------------------------------------------

class FakeRunner(object):
    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, argv, data=None):
        self.calls.append((argv, data))
        return self.answers.pop(0)


def test_list_table_reads_json():
    runner = FakeRunner((0, (FIXTURES / "ip_minimal.json").read_text(), ""))
    table = _nft.Nft(runner).list_table("ip", "multiwan")
    assert runner.calls == [(["nft", "-j", "list", "table", "ip", "multiwan"], None)]
    assert table.chains["nat_postrouting"].view()["rules"] == ['meta oifname "wan1" masquerade']


def test_list_missing_table_is_none():
    stderr = "Error: No such file or directory\nlist table ip multiwan\n              ^^^^^^^^\n"
    assert _nft.Nft(FakeRunner((1, "", stderr))).list_table("ip", "multiwan") is None


def test_list_errors_name_the_table():
    with pytest.raises(_nft.NftError, match="table ip multiwan: Error: Operation not permitted"):
        _nft.Nft(FakeRunner((1, "", "Error: Operation not permitted\n"))).list_table("ip", "multiwan")
    with pytest.raises(_nft.NftError, match="invalid JSON"):
        _nft.Nft(FakeRunner((0, "{", ""))).list_table("ip", "multiwan")


def test_apply_is_one_transaction_and_errors_name_the_object():
    runner = FakeRunner((0, "", ""), (1, "", "Error: Could not process rule: No such file or directory\n"))
    nft = _nft.Nft(runner, binary="/usr/sbin/nft")
    nft.apply("delete table ip multiwan\n", "table ip multiwan")
    assert runner.calls == [(["/usr/sbin/nft", "-f", "-"], "delete table ip multiwan\n")]
    with pytest.raises(_nft.NftError, match="table ip multiwan: Error: Could not process rule"):
        nft.apply("x", "table ip multiwan")


# -- connection marks and port forwards (sticky connections) -----------------------------------

STICKY_UPLINKS = [{"interface": "wan1", "mark": 0x650000}, {"interface": "wan2", "mark": 0x660000, "snat_address": "100.64.2.2"}]


@pytest.mark.parametrize("fixture, family, forwards, sources", [
    ("ip_sticky", "ip", [{"interface": "wan2", "protocol": "tcp", "port": 8080, "to": "10.1.0.10", "to_port": 80},
                         {"interface": "wan1", "protocol": "udp", "port": 5060, "to": "10.1.0.11",
                          "destination": "100.64.1.2"}], ["10.1.0.0/24"]),
    ("inet_sticky", "inet", [{"interface": "wan2", "protocol": "tcp", "port": 8080, "to": "10.1.0.10", "to_port": 80},
                             {"interface": "wan2", "protocol": "tcp", "port": 8443, "to": "2001:db8:1::10",
                              "to_port": 443}], ["10.1.0.0/24", "2001:db8:1::/64"]),
])
def test_captured_sticky_table_equals_desired(fixture, family, forwards, sources):
    desired = _nft.masquerade_table(family, "multiwan", STICKY_UPLINKS, sources, [], port_forwards=forwards)
    assert live(fixture, family).states() == desired.states()
    assert sorted(desired.chains) == ["mark_postrouting", "mark_prerouting", "nat_postrouting", "nat_prerouting"]


def test_marks_keep_other_bits_and_render_as_nft_stores_them():
    desired = _nft.masquerade_table("ip", "multiwan", STICKY_UPLINKS, ["10.1.0.0/24"])
    text = _nft.render_table(desired)
    # our bits only: everything outside 0x00ff0000 is kept (nft folds the value into the and-mask)
    assert "ct mark set ct mark & 0xff65ffff | 0x00650000" in text
    assert "ct mark & 0x00ff0000 == 6619136 meta mark set meta mark & 0xff65ffff | 0x00650000" in text
    assert "ct state new ct mark & 0x00ff0000 == 0 meta oifname \"wan2\"" in text
    assert "nat_prerouting" not in desired.chains  # no port forwards, no dnat chain
    plain = _nft.masquerade_table("ip", "multiwan", [{"interface": "wan1"}], ["10.1.0.0/24"])
    assert sorted(plain.chains) == ["nat_postrouting"]  # no marks, no mark chains


@pytest.mark.parametrize("uplinks, forwards, field", [
    ([{"interface": "wan1", "mark": 0x1}], [], "uplinks[0].mark"),                       # outside the mask
    ([{"interface": "wan1", "mark": "x"}], [], "uplinks[0].mark"),
    ([{"interface": "wan1", "mark": 0x650000}, {"interface": "wan2", "mark": 0x650000}], [], "uplinks[1].mark"),
    ([{"interface": "wan1"}], [{"interface": "wan9", "port": 80, "to": "10.1.0.1"}], "port_forwards[0].interface"),
    ([{"interface": "wan1"}], [{"interface": "wan1", "port": 0, "to": "10.1.0.1"}], "port_forwards[0].port"),
    ([{"interface": "wan1"}], [{"interface": "wan1", "port": 80, "to": "10.1.0.1", "protocol": "icmp"}],
     "port_forwards[0].protocol"),
    ([{"interface": "wan1"}], [{"interface": "wan1", "port": 80, "to": "nothere"}], "port_forwards[0].to"),
    ([{"interface": "wan1"}], [{"interface": "wan1", "port": 80, "to": "10.1.0.1", "to_port": 70000}],
     "port_forwards[0].to_port"),
    ([{"interface": "wan1"}], [{"interface": "wan1", "port": 80, "to": "10.1.0.1"},
                               {"interface": "wan1", "port": 80, "to": "10.1.0.2"}], "port_forwards[1]"),
])
def test_bad_sticky_parameters_name_the_field(uplinks, forwards, field):
    with pytest.raises(ValueError) as err:
        _nft.masquerade_table("ip", "multiwan", uplinks, ["10.1.0.0/24"], port_forwards=forwards)
    assert str(err.value).startswith(field), str(err.value)
