"""ICMP and netlink wire formats, against bytes captured from the real kernel (fixtures/watchdog/capture.py)."""

from __future__ import annotations

import json
import os
import struct

from ansible_collections.multiwan.linux.plugins.module_utils import _iproute as I
from ansible_collections.multiwan.linux.plugins.module_utils import _watchdog as w

with open(os.path.join(os.path.dirname(__file__), "fixtures", "watchdog", "kernel_bytes.json")) as _handle:
    KERNEL = json.load(_handle)
IDENT, SEQ = KERNEL["_about"]["ident"], KERNEL["_about"]["seq"]


def test_checksum_rfc1071_example():
    # RFC 1071 section 3 example: 0001 f203 f4f5 f6f7 sums to ddf2, checksum 220d
    assert w.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert w.checksum(b"\x01") == ~0x0100 & 0xFFFF  # odd length is padded


def test_build_echo_v4_has_a_valid_checksum():
    packet = w.build_echo("inet", 0x1234, 0xBEEF)
    assert packet[0] == 8 and packet[1] == 0
    assert struct.unpack("!HH", packet[4:8]) == (0x1234, 0xBEEF)
    assert w.checksum(packet) == 0
    assert packet.endswith(w.PAYLOAD)
    assert w.build_echo("inet", 0x11234, 0x1BEEF)[4:8] == packet[4:8]  # 16-bit wrap


def test_build_echo_v6_leaves_the_checksum_to_the_kernel():
    packet = w.build_echo("inet6", 1, 2)
    assert packet[:8] == bytes([128, 0, 0, 0, 0, 1, 0, 2])


def test_parse_echo_from_a_raw_ipv4_socket_with_ip_header():
    (reply,) = KERNEL["inet_raw"]
    data = bytes.fromhex(reply["hex"])
    assert w.parse_echo(data, "inet", ip_header=True) == (IDENT, SEQ)
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF
    assert w.parse_echo(bytes(corrupt), "inet", ip_header=True) is None
    assert w.parse_echo(data[:10], "inet", ip_header=True) is None
    # our own request (type 8) is not a reply
    assert w.parse_echo(w.build_echo("inet", IDENT, SEQ), "inet", ip_header=False) is None


def test_parse_echo_from_a_ping_socket():
    (reply,) = KERNEL["inet_dgram"]
    ident, seq = w.parse_echo(bytes.fromhex(reply["hex"]), "inet", ip_header=False)
    assert seq == SEQ  # the kernel chose the identifier of a ping socket


def test_parse_echo_ipv6_skips_other_icmpv6():
    parsed = [w.parse_echo(bytes.fromhex(r["hex"]), "inet6", ip_header=False) for r in KERNEL["inet6_raw"]]
    assert (IDENT, SEQ) in parsed
    assert parsed.count(None) == len(parsed) - 1  # neighbour advertisement and the like


def links(key):
    out = []
    for datagram in KERNEL[key]:
        out += [m for m in w.parse_netlink(bytes.fromhex(datagram)) if m["type"] in ("new", "del")]
    return out


def test_netlink_link_down_and_up_as_the_kernel_sends_them():
    down = links("link_down")
    assert down and all(m["ifname"] == "mwhc0" for m in down)
    assert down[-1]["state"] == "down" and not down[-1]["flags"] & w.IFF_UP
    up = links("link_up")
    assert up[-1]["state"] == "up" and w.usable(up[-1]["state"])
    assert up[-1]["flags"] & w.IFF_LOWER_UP and up[-1]["flags"] & w.IFF_UP
    # a veth reports carrier (LOWER_UP) before operstate (RUNNING); `ip link` says NO-CARRIER (and
    # _iproute.parse_links no-carrier) until RUNNING, so the watchdog waits for it as well
    assert up[0]["flags"] & w.IFF_LOWER_UP and not up[0]["flags"] & w.IFF_RUNNING
    assert up[0]["state"] == "no-carrier" and not w.usable(up[0]["state"])
    # link down starts with a notification that still carries the old flags: only changes count
    assert down[0]["state"] == "up"


def test_link_states_are_the_words_of_ip_link_and_only_up_is_usable():
    assert w.link_state(w.IFF_UP | w.IFF_LOWER_UP | w.IFF_RUNNING) == "up"
    assert w.link_state(w.IFF_UP | w.IFF_LOWER_UP) == "no-carrier"
    assert w.link_state(w.IFF_UP) == "no-carrier"
    assert w.link_state(w.IFF_LOWER_UP | w.IFF_RUNNING) == "down"
    # the words of _iproute.parse_links for the same links
    assert I.parse_links([{"ifname": "a", "flags": ["UP", "LOWER_UP"]}, {"ifname": "b", "flags": ["NO-CARRIER", "UP"]},
                          {"ifname": "c", "flags": ["BROADCAST"]}]) == {"a": "up", "b": "no-carrier", "c": "down"}
    # every state is a true string: only the predicate tells a usable link
    assert [w.usable(state) for state in ("up", "no-carrier", "down", None)] == [True, False, False, False]


def test_netlink_dump_answer_ends_with_done():
    messages = []
    for datagram in KERNEL["dump"]:
        messages += w.parse_netlink(bytes.fromhex(datagram))
    names = dict((m["ifname"], m["state"]) for m in messages if m["type"] == "new")
    assert names == {"lo": "up", "mwhc0": "up"}
    assert messages[-1] == {"type": "done"}


def test_netlink_truncated_and_error_messages():
    data = bytes.fromhex(KERNEL["link_up"][-1])
    assert w.parse_netlink(data[:20]) == []
    error = struct.pack("=IHHII", 36, w.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -95) + b"\x00" * 16
    assert w.parse_netlink(error) == [{"type": "error", "errno": 95}]
    deleted = bytearray(data)
    struct.pack_into("=H", deleted, 4, w.RTM_DELLINK)
    (msg,) = w.parse_netlink(bytes(deleted))
    assert msg["type"] == "del" and msg["state"] is None  # gone, like a device ip link does not list


def test_link_dump_request_shape():
    request = w.link_dump_request(9)
    length, kind, flags, seq, dummy = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq) == (len(request), w.RTM_GETLINK, w.NLM_F_REQUEST | w.NLM_F_DUMP, 9)
