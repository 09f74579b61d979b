"""multiwan.linux.nft_masquerade on a lab gateway, checked with nft (and real packets) afterwards.

Gateway m1: wan1 100.64.1.2/24 (ISP router 100.64.1.1), device-only ppp0 100.64.2.2/32,
lan0 10.1.0.1/24 with client c1.  The ISP routers drop customer packets whose source is not the
uplink's address (BCP38), so a client's packet gets an answer only when it left translated to
the uplink's address.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

MODULE = "nft_masquerade"
OUR_FILE = "/etc/nftables.d/ip-multiwan.nft"
MAIN = "/etc/nftables.conf"
INCLUDE = 'include "%s"  # managed by multiwan.linux.nft_masquerade\n' % OUR_FILE

# Somebody else's table, with a set and rules: must stay byte-for-byte the same.
FOREIGN = """table inet filter {
    set trusted {
        type ipv4_addr
        flags interval
        elements = { 10.1.0.0/24, 192.0.2.7 }
    }
    chain input {
        type filter hook input priority filter; policy accept;
        ct state established,related accept
        ip saddr @trusted tcp dport 22 accept
        iifname "wan1" tcp dport 22 counter drop
    }
}
"""

LAN = ["10.1.0.0/24"]

# What the module persists for uplinks=[{interface: ppp0}] (written directly where a test only
# needs the state, not another module run).
PPP0_ONLY = """#!/usr/sbin/nft -f
table ip multiwan
delete table ip multiwan
table ip multiwan {
	chain nat_postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "ppp0" masquerade
	}
}
"""


def nft_text(gateway, spec):
    proc = gateway.sh("nft list table %s" % spec, check=False)
    return proc.stdout if proc.returncode == 0 else None


def our_rules(gateway):
    """Rules of chain nat_postrouting as nft prints them (None when the table does not exist)."""
    text = nft_text(gateway, "ip multiwan")
    if text is None:
        return None
    return [line.strip() for line in text.splitlines()
            if line.startswith("\t\t") and not line.strip().startswith("type ")]


def our_json(gateway):
    """(chains, rules) of our table from nft -j: base chain properties and rule statement kinds."""
    doc = gateway.json("nft -j list table ip multiwan")["nftables"]
    chains = [item["chain"] for item in doc if "chain" in item]
    rules = [item["rule"]["expr"] for item in doc if "rule" in item]
    return chains, rules


def file_or_none(gateway, path):
    proc = gateway.sh("cat %s" % path, check=False)
    return proc.stdout if proc.returncode == 0 else None


@pytest.fixture
def gw(gateway):
    """The gateway with no table of ours, no persisted files, the stock main config, a foreign table."""
    gateway.sh("nft delete table ip multiwan 2>/dev/null; nft delete table inet filter 2>/dev/null;"
               " rm -f %s; true" % OUR_FILE)
    gateway.sh("sed -i '/managed by multiwan.linux/d' %s" % MAIN)
    gateway.sh("nft -f -", input=FOREIGN)
    gateway.main_before = gateway.read(MAIN)
    gateway.foreign_before = nft_text(gateway, "inet filter")
    assert "ip saddr @trusted" in gateway.foreign_before
    yield gateway
    # Every test ends with the foreign table untouched, whatever the module did.
    assert nft_text(gateway, "inet filter") == gateway.foreign_before


def run(gateway, check=False, diff=False, expect_failure=False, **args):
    result = gateway.module(MODULE, args, check=check, diff=diff, expect_failure=expect_failure)
    assert ("diff" in result) == (diff and not expect_failure), result
    if expect_failure:
        assert "Traceback" not in result["msg"], result
    else:
        assert result.get("table") == "%s %s" % (args.get("family", "ip"), args.get("table", "multiwan")), result
    return result


def test_create_rerun_and_persist(gw):
    result = run(gw, uplinks=[{"interface": "wan1"}, {"interface": "ppp0"}], source_networks=LAN,
                 exclude_destinations=["192.168.0.0/16", "172.16.0.0/12"])
    assert result["changed"] is True
    assert our_rules(gw) == [
        "ip daddr { 172.16.0.0/12, 192.168.0.0/16 } return",
        'oifname "ppp0" ip saddr 10.1.0.0/24 masquerade',
        'oifname "wan1" ip saddr 10.1.0.0/24 masquerade',
    ]
    chains, rules = our_json(gw)
    assert [(c["name"], c["type"], c["hook"], c["prio"], c["policy"]) for c in chains] == [
        ("nat_postrouting", "nat", "postrouting", 100, "accept")]
    assert [next(iter(stmt)) for stmt in rules[1]] == ["match", "match", "masquerade"]
    assert rules[1][0]["match"]["right"] == "ppp0"

    # Persisted: our file holds the same table, the main config got exactly one line at the end.
    persisted = gw.read(OUR_FILE)
    assert persisted.startswith("#!/usr/sbin/nft -f\n")
    assert "\ntable ip multiwan\ndelete table ip multiwan\ntable ip multiwan {\n" in persisted
    assert gw.read(MAIN) == gw.main_before + INCLUDE
    assert result["persist_path"] == OUR_FILE and result["persist_main_config"] == MAIN
    gw.sh("nft -c -f %s && nft -c -f %s" % (OUR_FILE, MAIN))

    again = run(gw, uplinks=[{"interface": "ppp0"}, {"interface": "wan1"}], source_networks=LAN,
                exclude_destinations=["172.16.0.0/12", "192.168.0.0/16"])
    assert again["changed"] is False
    assert again["transaction"] == ""

    # Loading the persisted file (twice, as a glob include plus ours would) changes nothing.
    gw.sh("nft -f %s && nft -f %s" % (OUR_FILE, OUR_FILE))
    assert run(gw, uplinks=[{"interface": "wan1"}, {"interface": "ppp0"}], source_networks=LAN,
               exclude_destinations=["192.168.0.0/16", "172.16.0.0/12"])["changed"] is False


def test_changes_masquerade_snat_uplinks_sources(gw):
    run(gw, uplinks=[{"interface": "wan1"}])
    assert our_rules(gw) == ['oifname "wan1" masquerade']

    result = run(gw, uplinks=[{"interface": "wan1", "snat_address": "100.64.1.2"}, {"interface": "ppp0"}])
    assert result["changed"] is True
    assert our_rules(gw) == ['oifname "ppp0" masquerade', 'oifname "wan1" snat to 100.64.1.2']
    rules = our_json(gw)[1]
    assert rules[1][-1] == {"snat": {"addr": "100.64.1.2"}}

    result = run(gw, uplinks=[{"interface": "wan1", "snat_address": "100.64.1.2"}],
                 source_networks=["10.1.0.0/24", "10.9.0.0/16"])
    assert result["changed"] is True
    assert our_rules(gw) == ['oifname "wan1" ip saddr { 10.1.0.0/24, 10.9.0.0/16 } snat to 100.64.1.2']
    assert "ppp0" not in gw.read(OUR_FILE) and "10.9.0.0/16" in gw.read(OUR_FILE)
    assert run(gw, uplinks=[{"interface": "wan1", "snat_address": "100.64.1.2"}],
               source_networks=["10.9.0.0/16", "10.1.0.0/24"])["changed"] is False


def test_check_mode_changes_nothing(gw):
    result = run(gw, check=True, diff=True, uplinks=[{"interface": "wan1"}])
    assert result["changed"] is True
    assert "delete table ip multiwan" in result["transaction"]
    assert our_rules(gw) is None
    assert file_or_none(gw, OUR_FILE) is None
    assert gw.read(MAIN) == gw.main_before

    run(gw, uplinks=[{"interface": "wan1"}])
    persisted = gw.read(OUR_FILE)
    result = run(gw, check=True, uplinks=[{"interface": "wan1", "snat_address": "100.64.1.2"}])
    assert result["changed"] is True
    assert our_rules(gw) == ['oifname "wan1" masquerade']
    assert gw.read(OUR_FILE) == persisted

    result = run(gw, check=True, state="absent")
    assert result["changed"] is True
    assert our_rules(gw) == ['oifname "wan1" masquerade']
    assert gw.read(MAIN) == gw.main_before + INCLUDE


def test_diff_shows_touched_objects_and_files(gw):
    run(gw, uplinks=[{"interface": "wan1"}])
    result = run(gw, diff=True, uplinks=[{"interface": "wan1"}, {"interface": "ppp0"}])
    tables, *files = result["diff"]
    assert tables["before"].startswith("chain ip multiwan nat_postrouting: ")
    assert '"ppp0"' not in tables["before"] and 'meta oifname \\"ppp0\\" masquerade' in tables["after"]
    assert [f["before_header"] for f in files] == [OUR_FILE]  # the include line is already there
    assert "ppp0" not in files[0]["before"] and 'meta oifname "ppp0" masquerade' in files[0]["after"]

    # Unchanged: nothing in the diff.
    result = run(gw, diff=True, uplinks=[{"interface": "ppp0"}, {"interface": "wan1"}])
    assert result["changed"] is False
    assert result["diff"] == [{"before": "", "after": ""}]


def test_drift_in_our_table_is_repaired(gw):
    run(gw, uplinks=[{"interface": "wan1"}])
    gw.sh("nft add rule ip multiwan nat_postrouting oifname lan0 masquerade"
          " && nft add set ip multiwan junk '{ type ipv4_addr; }'")
    result = run(gw, diff=True, uplinks=[{"interface": "wan1"}])
    assert result["changed"] is True
    assert "set ip multiwan junk" in result["diff"][0]["before"]
    assert our_rules(gw) == ['oifname "wan1" masquerade']
    assert "junk" not in nft_text(gw, "ip multiwan")


def test_absent_removes_table_file_and_include(gw):
    run(gw, uplinks=[{"interface": "wan1"}])
    result = run(gw, diff=True, state="absent")
    assert result["changed"] is True
    assert our_rules(gw) is None
    assert file_or_none(gw, OUR_FILE) is None
    assert gw.read(MAIN) == gw.main_before
    assert [f["before_header"] for f in result["diff"][1:]] == [OUR_FILE, MAIN]
    assert run(gw, state="absent")["changed"] is False


def test_persist_false_and_custom_paths(gw):
    result = run(gw, uplinks=[{"interface": "wan1"}], persist=False)
    assert result["changed"] is True and "persist_path" not in result
    assert file_or_none(gw, OUR_FILE) is None and gw.read(MAIN) == gw.main_before

    custom = {"persist_path": "/etc/mwe-nft/nat.nft", "persist_main_config": "/etc/mwe-nft/main.conf"}
    result = run(gw, uplinks=[{"interface": "wan1"}], **custom)
    assert result["changed"] is True  # only the files
    assert result["transaction"] == ""
    assert gw.read(custom["persist_main_config"]) == (
        '#!/usr/sbin/nft -f\ninclude "/etc/mwe-nft/nat.nft"  # managed by multiwan.linux.nft_masquerade\n')
    gw.sh("nft -c -f /etc/mwe-nft/main.conf")
    run(gw, state="absent", **custom)
    assert file_or_none(gw, custom["persist_path"]) is None
    assert gw.read(custom["persist_main_config"]) == "#!/usr/sbin/nft -f\n"
    gw.sh("rm -rf /etc/mwe-nft")


def test_inet_table_for_both_versions(gw):
    args = dict(family="inet", uplinks=[{"interface": "wan1"}, {"interface": "ppp0", "snat_address": "100.64.2.2"}],
                source_networks=["10.1.0.0/24", "fd00:1::/64"], exclude_destinations=["2001:db8::/32"])
    try:
        assert run(gw, **args)["changed"] is True
        text = nft_text(gw, "inet multiwan")
        assert "ip6 daddr 2001:db8::/32 return" in text
        assert 'oifname "ppp0" ip saddr 10.1.0.0/24 snat ip to 100.64.2.2' in text
        assert 'oifname "wan1" ip6 saddr fd00:1::/64 masquerade' in text
        assert our_rules(gw) is None  # the ip table is a different table
        assert 'include "/etc/nftables.d/inet-multiwan.nft"' in gw.read(MAIN)
        assert run(gw, **args)["changed"] is False
    finally:
        run(gw, family="inet", state="absent")
    assert nft_text(gw, "inet multiwan") is None and gw.read(MAIN) == gw.main_before


@pytest.mark.parametrize("args, message", [
    ({"uplinks": [{"interface": "wan1/x"}]}, r"^uplinks\[0\]\.interface"),
    ({"uplinks": [{"interface": "averyveryverylongname"}]}, r"^uplinks\[0\]\.interface.*15"),
    ({"uplinks": [{"interface": "wan1"}, {"interface": "wan1"}]}, r"^uplinks\[1\]\.interface"),
    ({"uplinks": [{"interface": "wan1", "snat_address": "2001:db8::1"}]}, r"^uplinks\[0\]\.snat_address"),
    ({"uplinks": [{"interface": "wan1", "snat_address": "100.64.1.300"}]}, r"^uplinks\[0\]\.snat_address"),
    ({"uplinks": [{"interface": "wan1"}], "source_networks": ["10.1.0.1/24"]}, r"^source_networks\[0\]"),
    ({"uplinks": [{"interface": "wan1"}], "exclude_destinations": ["fd00::/8"]}, r"^exclude_destinations\[0\]"),
    ({"uplinks": [{"interface": "wan1"}], "table": "no spaces"}, r"^table: 'no spaces' is not a valid table name"),
    ({"uplinks": []}, r"^uplinks: at least one uplink"),
    ({"uplinks": [{"interface": "wan1"}], "persist_path": "relative.nft"}, r"^persist_path: 'relative.nft' must be an absolute path"),
])
def test_bad_parameters_fail_before_touching_anything(gw, args, message):
    # our table, its persisted file and the include line, as a successful run leaves them
    gw.sh("mkdir -p %s && cat > %s && nft -f %s" % (os.path.dirname(OUR_FILE), OUR_FILE, OUR_FILE), input=PPP0_ONLY)
    gw.sh("cat >> %s" % MAIN, input=INCLUDE)
    rules, persisted, main = our_rules(gw), gw.read(OUR_FILE), gw.read(MAIN)
    assert rules == ['oifname "ppp0" masquerade']
    result = run(gw, expect_failure=True, **args)
    assert re.search(message, result["msg"]), result["msg"]
    assert our_rules(gw) == rules and gw.read(OUR_FILE) == persisted and gw.read(MAIN) == main


def test_nft_error_is_a_clear_failure(gw):
    """A keyword as table name passes our check; nft's refusal must come back naming the table."""
    result = run(gw, expect_failure=True, table="table", uplinks=[{"interface": "wan1"}], persist=False)
    assert "table ip table" in result["msg"]
    assert nft_text(gw, "ip table") is None and our_rules(gw) is None


# -- real packets -----------------------------------------------------------------------------

INTERNET_HOST = "198.18.0.1"


def client_argv(gateway, cmd):
    """``cmd`` in the site's first LAN client (namespace <lab>-<site>-c1, beside <lab>-<site>-gw)."""
    assert gateway.netns.endswith("-gw"), gateway.netns
    return ["ip", "netns", "exec", gateway.netns[:-len("gw")] + "c1"] + cmd


def client(gateway, cmd):
    return subprocess.run(client_argv(gateway, cmd), capture_output=True, text=True, check=False)


def icmp_bindings(gateway):
    """Reply destinations (= translated sources) of the client's ICMP conntrack entries."""
    out = gateway.sh("conntrack -L -p icmp -d %s 2>/dev/null" % INTERNET_HOST, check=False).stdout
    return re.findall(r"src=%s dst=(\S+)" % re.escape(INTERNET_HOST), out)


@pytest.fixture
def routed(gw):
    gw.sh("sysctl -qw net.ipv4.ip_forward=1 && ip route replace default via 100.64.1.1 dev wan1"
          " && ip addr replace 100.64.1.3/24 dev wan1 && conntrack -F 2>/dev/null; true")
    yield gw
    gw.sh("ip route del default; ip addr del 100.64.1.3/24 dev wan1; sysctl -qw net.ipv4.ip_forward=0;"
          " conntrack -F 2>/dev/null; true")


def test_lan_client_reaches_isp_only_through_nat(routed):
    assert client(routed, ["ping", "-c", "1", "-W", "1", INTERNET_HOST]).returncode != 0  # no NAT, no reply
    run(routed, uplinks=[{"interface": "wan1"}], source_networks=LAN, persist=False)
    assert client(routed, ["ping", "-c", "2", "-W", "1", INTERNET_HOST]).returncode == 0
    assert "100.64.1.2" in icmp_bindings(routed)


def test_reload_keeps_existing_translations(routed):
    """NAT bindings live in conntrack: a reload to another SNAT address does not move live flows."""
    run(routed, uplinks=[{"interface": "wan1"}], source_networks=LAN, persist=False)
    flow = subprocess.Popen(client_argv(routed, ["ping", "-i", "0.1", "-w", "120", INTERNET_HOST]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)
        changed = run(routed, uplinks=[{"interface": "wan1", "snat_address": "100.64.1.3"}],
                      source_networks=LAN, persist=False)
        assert changed["changed"] is True
        assert flow.poll() is None, "the ping ended before the reload; the test proves nothing"
        time.sleep(1)  # about ten more echoes after the reload
        flow.send_signal(signal.SIGINT)
        output = flow.communicate(timeout=30)[0]
    finally:
        if flow.poll() is None:
            flow.kill()
    answered = [int(seq) for seq in re.findall(r"icmp_seq=(\d+) ttl=", output)]
    assert len(answered) > 20, output
    # Every echo up to the last answered one was answered (the one in flight at SIGINT may not be).
    assert answered == list(range(1, max(answered) + 1)), output
    assert icmp_bindings(routed) == ["100.64.1.2"]  # the old flow kept its translation
    # A new flow uses the new rule (the ISP's BCP38 filter drops 100.64.1.3, so no answer).
    client(routed, ["ping", "-c", "1", "-W", "1", INTERNET_HOST])
    assert sorted(icmp_bindings(routed)) == ["100.64.1.2", "100.64.1.3"]


def test_marks_and_port_forwards_create_rerun_check_and_drop(gw):
    """Sticky-connection marks and a port forward: created, idempotent, check mode, removed again."""
    sticky = dict(uplinks=[{"interface": "wan1", "mark": 0x650000}, {"interface": "ppp0", "mark": 0x660000}],
                  source_networks=LAN,
                  port_forwards=[{"interface": "ppp0", "protocol": "tcp", "port": 8080, "to": "10.1.0.10",
                                  "to_port": 80}])
    predicted = run(gw, check=True, diff=True, **sticky)
    assert predicted["changed"] is True and nft_text(gw, "ip multiwan") is None  # check mode: nothing
    assert run(gw, **sticky)["changed"] is True
    text = nft_text(gw, "ip multiwan")
    assert 'ct state new iifname "wan1" ct mark set ct mark & 0xff65ffff | 0x00650000' in text
    assert "ct mark & 0x00ff0000 == 0x00660000 meta mark set meta mark & 0xff66ffff | 0x00660000" in text
    assert 'ct state new ct mark & 0x00ff0000 == 0x00000000 oifname "ppp0" ct mark set' in text
    assert 'iifname "ppp0" tcp dport 8080 dnat to 10.1.0.10:80' in text
    chains, dummy = our_json(gw)
    assert sorted((c["name"], c["type"], c["hook"], c["prio"]) for c in chains) == [
        ("mark_postrouting", "filter", "postrouting", -150), ("mark_prerouting", "filter", "prerouting", -150),
        ("nat_postrouting", "nat", "postrouting", 100), ("nat_prerouting", "nat", "prerouting", -100)]
    assert "dnat to 10.1.0.10:80" in gw.read(OUR_FILE)  # persisted like the rest
    assert run(gw, **sticky)["changed"] is False          # idempotent against the kernel's own spelling
    assert run(gw, check=True, **sticky)["changed"] is False  # check mode agrees
    plain = run(gw, diff=True, uplinks=[{"interface": "wan1"}, {"interface": "ppp0"}], source_networks=LAN)
    assert plain["changed"] is True
    chains, dummy = our_json(gw)
    assert [c["name"] for c in chains] == ["nat_postrouting"]
