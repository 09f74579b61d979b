# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The failover watchdog of multiwan.linux (issue 5): which uplinks are in the default group now.

Private module_utils (leading underscore): not a public API.  Standard library only, Python 3.9+.
The role installs this file on the gateway beside ``_iproute.py`` and the tiny ``multiwan``
launcher (roles/gateway/files/multiwan), which calls :func:`main`.  Everything that changes
routes goes through ``_iproute`` (Contract 1 in docs/design.md); this file never builds an
``ip`` command line itself.

Layers, from pure to impure:

* :class:`Settings`, :func:`load_config` - validate the JSON config (below) before anything runs.
* :class:`UplinkMachine` - the per-uplink state machine.  No I/O and no clock: every input
  carries the time.  Inputs are probe rounds (per target: answered in time? RTT), late replies
  and link (carrier) events; outputs are :class:`Transition` events.
* :func:`decide_members` and :class:`Core` - the global decision: the default group holds the
  uplinks that are up; if none is up it holds every uplink whose link is up (``all_down``), so
  traffic still flows and recovers without us when our probe targets are the problem.
* :func:`state_document`, :func:`metrics_text`, :func:`status_text` - renderings.
* :func:`build_echo`, :func:`parse_echo`, :func:`parse_netlink` - wire formats.
* :class:`Daemon` - the I/O shell: one process, one thread, one ``selectors`` loop with an ICMP
  socket per uplink (``SO_BINDTODEVICE`` to its interface *and* bound to its source address, so
  the ``from <address> lookup <table>`` rule applies and an uplink outside the default group is
  still probed), a netlink socket for link events (no polling), background hooks and conntrack
  clean-ups, atomic state and metrics files.

Config file (JSON, rendered by the role; ``multiwan watchdog --config PATH``)::

    {
      "interval": 0.15,            # s between probe rounds (a round pings every target at once)
      "timeout": 0.3,              # s a probe may take to count as answered in its round
      "down_after": 4,             # consecutive bad rounds -> down
      "up_after": 20,              # consecutive good rounds -> up again (hold-down)
      "min_targets_up": 1,         # a round is good when at least this many targets answered
      "max_rtt_ms": null,          # optional: an answer slower than this does not count
      "max_loss_pct": null,        # optional: a round is bad while loss over the window exceeds it
      "loss_window": 50,           # rounds in the loss window (stats and max_loss_pct)
      "hooks_dir": "/etc/multiwan/hooks.d",
      "hook_timeout": 10,          # s before a hook is killed
      "state_file": "/run/multiwan/state.json",
      "state_max_age": 120,        # s: a previous run's state file younger than this is trusted
      "metrics_file": null,        # Prometheus textfile path, e.g. /var/lib/node_exporter/multiwan.prom
      "write_interval": 1.0,       # s between state/metrics refreshes (transitions write at once)
      "verify_interval": 10,       # s between checks that the live group is what we decided
      "conntrack": "conntrack",    # conntrack command ("" disables the clean-up)
      "protocol": 109,             # route/nexthop protocol tag (docs/design.md)
      "rules": [                     # optional: policy rules (ip_rule options) added at start and
        {"priority": 3101, "from": "100.64.1.2", "table": "101"}  # on reload when missing
      ],                             # (a reboot); never removed by the watchdog
      "group": {"id": 1845493761, "family": "inet", "table": 254, "destination": "default",
                "metric": 0, "type": "mpath", "buckets": null, "idle_timer": null},
      "uplinks": [
        {"name": "isp1", "interface": "wan1", "address": "100.64.1.2",
         "gateway": "100.64.1.1",      # optional: absent for device-only (PPPoE-like) uplinks
         "onlink": false, "table": 101, "weight": 1, "nexthop_id": 1828716645,
         "probe_targets": ["192.0.2.1", "198.51.100.1", "203.0.113.1"],
         "routes": [                   # optional: the uplink's own routes exactly as the role
           {"table": 101, "destination": "default",  # gives them to ip_route; default: one
            "nexthops": [{"via": "100.64.1.1", "dev": "wan1"}]}  # default route in "table"
         ],
         # optional per-uplink overrides: timeout, down_after, up_after, min_targets_up,
         # max_rtt_ms, max_loss_pct (e.g. a longer timeout for an LTE or satellite uplink)
        }
      ]
    }

Routes (``routes`` items and the group route) use the canonical shape of ``_iproute.plan_routes``
(table as a number or a name known to ``ip``; ``destination`` ``default`` or a prefix; optional
``metric``, ``scope``, ``src``, ``type``).  The kernel deletes an uplink's nexthop object and
every route over its device when the link goes down and restores nothing: on link up the
watchdog recreates them from this config, and on start it brings everything in line with it.

State file (atomic tmp+rename; ``ip_route``'s ``health_state_file`` reads ``state``,
``nexthop_ids`` and ``dev``; Contract 2)::

    {"version": 1, "updated": <unix time>, "pid": 1234, "all_down": false,
     "group": {"id": .., "family": .., "table": .., "destination": .., "type": ..,
               "members": [{"uplink": "isp1", "nexthop_id": .., "weight": 1}], "error": null},
     "uplinks": {"isp1": {"state": "up"|"down", "since": <unix time>, "reason": "probes",
                          "detail": "...", "assumed": false, "dev": "wan1", "address": "...",
                          "link": "up"|"down", "nexthop_ids": [..], "in_group": true,
                          "transitions": 2, "loss": 0.0,
                          "last_change": {"time": .., "from": "down", "to": "up", "reason": ..,
                                          "detail": ..},
                          "targets": {"192.0.2.1": {"rtt_ms": 12.1, "rtt_ewma_ms": 11.8,
                                                    "loss": 0.02, "sent": 100, "lost": 2,
                                                    "late": 0}}}}}

``group.members`` are the members in the kernel (or about to be: the file is written just
before a change); ``[]`` with ``group.error`` "no uplink has a usable link ..." when no uplink's
link can carry a nexthop, so there is no group route until one comes back; ``group.error`` is
also set while bringing routing in line fails (tried again after 1 s, doubling up to 10 s, or
``verify_interval`` if that is shorter).

Reasons: ``start`` (assumed up), ``previous`` (kept from a recent state file), ``carrier`` (link
down or no carrier), ``probes`` (too few targets answered), ``rtt`` (answers slower than
``max_rtt_ms``), ``loss`` (loss over the window above ``max_loss_pct``).

Command line (the ``multiwan`` launcher)::

    multiwan watchdog [--config /etc/multiwan/watchdog.json] [--check]
    multiwan status [--json] [--state-file PATH]

``status`` shows ``--state-file``, or else each family's state file as the role configures them
(:data:`STATE_FILES`: /run/multiwan/state.json for IPv4, /run/multiwan/state6.json for IPv6)
that exists; it fails (exit 1) only when none does.  Text: one table per family, each titled
with its family and file when there are two.  ``--json``: the document when there is one
(the output of one state file is unchanged), a list of the documents when there are two.

Defaults and why (numbers from :func:`false_failover_probability` and :func:`failover_time`):

* A round pings every target at once, every ``interval`` = 0.15 s; a probe counts when its answer
  comes within ``timeout`` = 0.3 s.  A round is bad when fewer than ``min_targets_up`` = 1 of
  the (typically 3) targets answered, so a single unreliable target never takes an uplink down.
* Failover time: the first bad round is the first one sent after the failure, so detection is
  U(0, interval) + (down_after - 1) * interval + timeout = 0.45-0.6 s + 0.3 s: 0.83 s on average,
  0.9 s at worst, plus a few ms for one ``ip -batch``.  Target: <= 1 s median, <= 1.5 s p95.
* False failovers: with 10 % independent loss each way a probe is lost with q = 1 - 0.9^2 = 0.19,
  a 3-target round is bad with p = q^3 = 0.0069, and 4 bad rounds in a row happen with
  probability p^4 per round.  Over 10 minutes (4000 rounds) that is ~9e-6 (no false failover);
  at 15 % loss 8e-4, at 20 % 1.8 %, at 25 % 17 % (the margin: false alarms start beyond 20 %).
  With one of the 3 targets dead for good and 10 % loss: ~0.7 % per 10 minutes (down_after 3
  would give 17 %, which is why it is 4).  Alternating good/bad rounds (flapping) never fail over.
* ``up_after`` = 20 rounds (3 s of unbroken good rounds) before an uplink is used again, so a
  flapping ISP is not put back between two drops.
* A late answer (after ``timeout``) does not make a round good but resets the failure streak of
  an uplink that is up: it proves the path works, only slowly (bufferbloat on a loaded uplink).
  A dead path sends no late answers, so detection is not slowed.  An uplink whose normal RTT
  exceeds ``timeout`` needs a longer per-uplink ``timeout`` (status shows the late answers).
"""

from __future__ import annotations

import argparse
import collections
import copy
import errno
import json
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

try:
    from ansible_collections.multiwan.linux.plugins.module_utils import _iproute
except ImportError:  # on the gateway: installed beside this file
    import _iproute  # pylint: disable=import-error

UP = "up"
DOWN = "down"
STATE_VERSION = 1
EWMA_ALPHA = 0.125     # RTT smoothing, as TCP's SRTT
LATE_LIMIT = 5.0       # s: a reply later than this is forgotten
RETRY_FIRST = 1.0      # s before a failed reconcile is tried again; doubles per failure ...
RETRY_LIMIT = 10.0     # ... up to this (or verify_interval, if shorter)
DEFAULT_STATE_FILE = "/run/multiwan/state.json"
# The state file of each family's watchdog as the role configures them; ``multiwan status`` reads both.
STATE_FILES = (("inet", DEFAULT_STATE_FILE), ("inet6", "/run/multiwan/state6.json"))

# Link states: the words of ``_iproute.parse_links``; a device that does not exist has none (None).
LINK_UP = "up"                  # administratively up with carrier: can carry a nexthop
LINK_NO_CARRIER = "no-carrier"
LINK_DOWN = "down"


def usable(link_state):
    """True when a link in ``link_state`` can carry a nexthop (the only test of a link state).

    Link states are words, never booleans: ``down`` and ``no-carrier`` are true as strings.
    """
    return link_state == LINK_UP


DEFAULTS = {
    "interval": 0.15,
    "timeout": 0.3,
    "down_after": 4,
    "up_after": 20,
    "min_targets_up": 1,
    "max_rtt_ms": None,
    "max_loss_pct": None,
    "loss_window": 50,
    "hooks_dir": "/etc/multiwan/hooks.d",
    "hook_timeout": 10.0,
    "state_file": DEFAULT_STATE_FILE,
    "state_max_age": 120.0,
    "metrics_file": None,
    "write_interval": 1.0,
    "verify_interval": 10.0,
    "conntrack": "conntrack",
    "protocol": _iproute.DEFAULT_PROTOCOL,
}
# Settings an uplink may override.
PER_UPLINK = ("timeout", "down_after", "up_after", "min_targets_up", "max_rtt_ms", "max_loss_pct")


# -- the numbers behind the defaults ----------------------------------------------------------

def false_failover_probability(loss, targets, down_after, rounds, min_targets_up=1, both_ways=True):
    """Probability of at least one false failover in ``rounds`` rounds under random loss.

    ``loss`` is the independent per-packet loss rate (applied to request and reply when
    ``both_ways``).  A round is bad when fewer than ``min_targets_up`` of ``targets`` answer; a
    failover needs ``down_after`` bad rounds in a row.  Exact, by dynamic programming over the
    length of the current bad streak.
    """
    q = 1.0 - (1.0 - loss) ** (2 if both_ways else 1)
    p = 0.0  # P(bad round) = P(answers < min_targets_up), binomial
    for answered in range(0, min_targets_up):
        p += _binomial(targets, answered) * (1 - q) ** answered * q ** (targets - answered)
    streaks = [1.0] + [0.0] * (down_after - 1)
    hit = 0.0
    for dummy in range(rounds):
        new = [0.0] * down_after
        for length, prob in enumerate(streaks):
            new[0] += prob * (1 - p)
            if length + 1 >= down_after:
                hit += prob * p
            else:
                new[length + 1] += prob * p
        streaks = new
    return hit


def _binomial(n, k):
    result = 1
    for i in range(k):
        result = result * (n - i) // (i + 1)
    return result


def failover_time(interval, timeout, down_after):
    """(mean, worst) seconds from a silent failure to the down decision (RTT and apply aside)."""
    base = (down_after - 1) * interval + timeout
    return base + interval / 2.0, base + interval


# -- config ---------------------------------------------------------------------------------

class ConfigError(ValueError):
    """The config file is unusable; names the offending key."""


class Settings(object):
    """Decision settings of one uplink (globals with its overrides)."""

    def __init__(self, timeout, down_after, up_after, min_targets_up, max_rtt_ms=None,
                 max_loss_pct=None, loss_window=50, interval=0.15):
        self.timeout = float(timeout)
        self.down_after = int(down_after)
        self.up_after = int(up_after)
        self.min_targets_up = int(min_targets_up)
        self.max_rtt_ms = None if max_rtt_ms is None else float(max_rtt_ms)
        self.max_loss_pct = None if max_loss_pct is None else float(max_loss_pct)
        self.loss_window = int(loss_window)
        self.interval = float(interval)


class Uplink(object):
    """One configured uplink: identity, routes and decision settings."""

    def __init__(self, data, settings, family, names):
        self.name = data["name"]
        self.interface = data["interface"]
        self.address = data["address"]
        self.gateway = data.get("gateway")
        self.onlink = bool(data.get("onlink"))
        self.table = data["table"]
        self.weight = int(data.get("weight") or 1)
        self.nexthop_id = int(data["nexthop_id"])
        self.targets = list(data["probe_targets"])
        self.family = family
        self.settings = settings
        self.routes = [canonical_route(r, family, names, "uplinks[%s].routes" % self.name)
                       for r in (data.get("routes") or [self.default_table_route()])]

    def default_table_route(self):
        return {"table": self.table, "destination": "default",
                "nexthops": [{"via": self.gateway, "dev": self.interface, "onlink": self.onlink}]}

    def group_hop(self):
        return {"via": self.gateway, "dev": self.interface, "weight": self.weight,
                "onlink": self.onlink, "id": self.nexthop_id}


class Config(object):
    def __init__(self, data, uplinks, group, rules=()):
        self.data = data
        self.uplinks = uplinks
        self.group = group
        self.rules = list(rules)
        for key in DEFAULTS:
            setattr(self, key, data[key])

    def uplink(self, name):
        for uplink in self.uplinks:
            if uplink.name == name:
                return uplink
        return None


def _number(data, key, where, minimum, maximum, integer=False, optional=False):
    value = data.get(key)
    if value is None:
        if optional:
            return None
        raise ConfigError("%s%s is required" % (where, key))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError("%s%s: %r is not a%s number" % (where, key, value, "n integer" if integer else ""))
    if not minimum <= value <= maximum:
        raise ConfigError("%s%s: %r is outside %s..%s" % (where, key, value, minimum, maximum))
    return value


def _check_settings(data, where, partial=False):
    limits = {"interval": (0.01, 60, False), "timeout": (0.01, 60, False), "down_after": (1, 1000, True),
              "up_after": (1, 100000, True), "min_targets_up": (1, 64, True), "max_rtt_ms": (1, 600000, False),
              "max_loss_pct": (0, 100, False), "loss_window": (1, 100000, True), "hook_timeout": (0.1, 3600, False),
              "state_max_age": (0, 86400 * 365, False), "write_interval": (0.05, 3600, False),
              "verify_interval": (0, 86400, False), "protocol": (1, 255, True)}
    for key, (low, high, integer) in limits.items():
        if key in data:
            optional = key in ("max_rtt_ms", "max_loss_pct") or partial
            _number(data, key, where, low, high, integer, optional)


# The inventory validation (filter multiwan_problems) judges settings with the same checks.
check_settings = _check_settings


def canonical_route(item, family, names, where):
    """A route of the config in the shape ``_iproute.plan_routes`` wants."""
    if not isinstance(item, dict) or not item.get("nexthops"):
        raise ConfigError("%s: every route needs nexthops" % where)
    try:
        route = {"family": family, "table": names.table(item.get("table", "main")),
                 "destination": _iproute.normalize_prefix(item.get("destination", "default"), family),
                 "metric": int(item.get("metric") or 0), "type": item.get("type") or "unicast",
                 "scope": item.get("scope"), "src": item.get("src"), "protocol": None,
                 "nexthops": [{"via": h.get("via"), "dev": h["dev"], "weight": int(h.get("weight") or 1),
                               "onlink": bool(h.get("onlink")), "id": h.get("id")} for h in item["nexthops"]]}
        if isinstance(route["scope"], str):
            route["scope"] = _iproute.SCOPES[route["scope"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError("%s: %s" % (where, exc))
    for key in ("group_id", "group_type", "buckets", "idle_timer"):
        if item.get(key) is not None:
            route[key] = item[key]
    return route


def load_config(data, names=None):
    """Validate the config dict (see the module docstring) into a :class:`Config`."""
    names = names or _iproute.Names()
    if not isinstance(data, dict):
        raise ConfigError("the config is not a JSON object")
    data = dict(DEFAULTS, **data)
    _check_settings(data, "")
    for key in ("hooks_dir", "state_file", "metrics_file", "conntrack"):
        if data[key] is not None and not isinstance(data[key], str):
            raise ConfigError("%s: %r is not a string" % (key, data[key]))
    if not data["state_file"]:
        raise ConfigError("state_file is required")
    group = data.get("group")
    if not isinstance(group, dict) or not isinstance(group.get("id"), int):
        raise ConfigError("group: an object with an integer id is required")
    family = group.get("family", "inet")
    if family not in _iproute.FAMILIES:
        raise ConfigError("group.family: %r is not inet or inet6" % (family,))
    if group.get("type", "mpath") not in ("mpath", "resilient"):
        raise ConfigError("group.type: %r is not mpath or resilient" % (group.get("type"),))
    uplinks_raw = data.get("uplinks")
    if not isinstance(uplinks_raw, list) or not uplinks_raw:
        raise ConfigError("uplinks: a non-empty list is required")
    uplinks, seen = [], {}
    for index, raw in enumerate(uplinks_raw):
        where = "uplinks[%d]." % index
        if not isinstance(raw, dict):
            raise ConfigError("%s: not an object" % where[:-1])
        for key in ("name", "interface", "address"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ConfigError("%s%s is required (a string)" % (where, key))
        if not isinstance(raw.get("table"), str):
            _number(raw, "table", where, 1, 0xFFFFFFFF, integer=True)
        _number(raw, "nexthop_id", where, 1, 0xFFFFFFFF, integer=True)
        _number(raw, "weight", where, 1, 256, integer=True, optional=True)
        _check_settings(raw, where, partial=True)
        for key in (("name", raw["name"]), ("interface+address", (raw["interface"], raw["address"])),
                    ("nexthop_id", raw["nexthop_id"])):
            if key in seen:
                raise ConfigError("%s%s: %r is used by two uplinks" % (where, key[0], key[1]))
            seen[key] = True
        try:
            _iproute.normalize_address(raw["address"], family)
            if raw.get("gateway"):
                _iproute.normalize_address(raw["gateway"], family)
            targets = [_iproute.normalize_address(t, family) for t in raw.get("probe_targets") or []]
        except ValueError as exc:
            raise ConfigError("%s: %s (group family %s)" % (where[:-1], exc, family))
        if not targets:
            raise ConfigError("%sprobe_targets: at least one target is required" % where)
        if len(set(targets)) != len(targets):
            raise ConfigError("%sprobe_targets: a target is listed twice" % where)
        merged = dict((key, raw.get(key, data[key])) for key in PER_UPLINK)
        if merged["min_targets_up"] > len(targets):
            raise ConfigError("%smin_targets_up: %d is more than the %d probe_targets"
                              % (where, merged["min_targets_up"], len(targets)))
        settings = Settings(loss_window=data["loss_window"], interval=data["interval"], **merged)
        uplinks.append(Uplink(dict(raw, probe_targets=targets), settings, family, names))
    try:
        group_table = names.table(group.get("table", "main"))
    except ValueError as exc:
        raise ConfigError("group.table: %s" % exc)
    group = dict(group, family=family, table=group_table, destination=_iproute.normalize_prefix(
        group.get("destination", "default"), family), metric=int(group.get("metric") or 0),
        type=group.get("type", "mpath"))
    return Config(data, uplinks, group, _config_rules(data.get("rules"), family, names, data["protocol"]))


def _config_rules(raw_rules, family, names, protocol):
    """The config's ``rules`` (ip_rule options, as the role gives them) as canonical rules."""
    if raw_rules is None:
        return []
    if not isinstance(raw_rules, list):
        raise ConfigError("rules: a list is required")
    rules = []
    for index, item in enumerate(raw_rules):
        where = "rules[%d]" % index
        if not isinstance(item, dict):
            raise ConfigError("%s: not an object" % where)
        try:
            rule = _iproute.canonical_rule(dict(item, family=item.get("family", family)), names, str(protocol), where)
        except ValueError as exc:
            raise ConfigError(str(exc))
        if rule["family"] != family or rule["state"] != "present":
            raise ConfigError("%s: only present %s rules belong in this config" % (where, family))
        rules.append(rule)
    return rules


def read_config(path):
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (IOError, OSError, ValueError) as exc:
        raise ConfigError("%s: %s" % (path, exc))
    return load_config(data)


# -- the pure state machine -------------------------------------------------------------------

Transition = collections.namedtuple("Transition", "uplink old new reason detail time")


class TargetStats(object):
    """Per-target statistics: loss over a sliding window of rounds, last and smoothed RTT."""

    def __init__(self, target, window):
        self.target = target
        self.window = collections.deque(maxlen=window)  # True = answered in time
        self.sent = 0
        self.lost = 0
        self.late = 0
        self.last_rtt = None
        self.ewma_rtt = None

    def record(self, rtt):
        self.sent += 1
        self.window.append(rtt is not None)
        if rtt is None:
            self.lost += 1
        else:
            self._rtt(rtt)

    def record_late(self, rtt):
        self.late += 1
        self._rtt(rtt)

    def _rtt(self, rtt):
        self.last_rtt = rtt
        self.ewma_rtt = rtt if self.ewma_rtt is None else self.ewma_rtt + EWMA_ALPHA * (rtt - self.ewma_rtt)

    @property
    def loss(self):
        if not self.window:
            return None
        return 1.0 - sum(self.window) / float(len(self.window))

    def as_dict(self):
        return {"rtt_ms": _ms(self.last_rtt), "rtt_ewma_ms": _ms(self.ewma_rtt),
                "loss": None if self.loss is None else round(self.loss, 4),
                "sent": self.sent, "lost": self.lost, "late": self.late}


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)


class UplinkMachine(object):
    """Up/down decision of one uplink.  Pure: no I/O, ``now`` comes with every input.

    * :meth:`round` - one finished probe round: ``{target: rtt seconds or None}``.  A round is
      good when at least ``min_targets_up`` targets answered (within ``max_rtt_ms`` if set) and the
      loss over the window is not above ``max_loss_pct`` (once the window is full).
      ``down_after`` bad rounds in a row take an up uplink down; ``up_after`` good rounds in a row
      bring a down uplink back (only while its link is up).
    * :meth:`late_reply` - an answer that came after its round was judged: resets the bad streak.
    * :meth:`link` - carrier/administrative state: down takes the uplink down at once (reason
      ``carrier``); up only allows probes to bring it back.
    """

    def __init__(self, name, targets, settings, now, state=UP, reason="start",
                 detail="assumed up at start", assumed=True, since=None):
        self.name = name
        self.targets = list(targets)
        self.settings = settings
        self.state = state
        self.since = now if since is None else since
        self.reason = reason
        self.detail = detail
        self.assumed = assumed and state == UP
        self.link_up = True
        self.good = 0
        self.bad = 0
        self.bad_reason = None
        self.transitions = 0
        self.stats = collections.OrderedDict((t, TargetStats(t, settings.loss_window)) for t in self.targets)
        self.rounds = collections.deque(maxlen=settings.loss_window)  # (sent, lost) per round
        self.last_change = {"time": self.since, "from": None, "to": state, "reason": reason, "detail": detail}

    def _set(self, now, new, reason, detail):
        old = self.state
        self.state, self.since, self.reason, self.detail = new, now, reason, detail
        self.assumed = False
        self.transitions += 1
        self.good = self.bad = 0
        self.last_change = {"time": now, "from": old, "to": new, "reason": reason, "detail": detail}
        return Transition(self.name, old, new, reason, detail, now)

    @property
    def loss(self):
        """Loss ratio of all probes over the window (None before the first round)."""
        sent = sum(s for s, dummy in self.rounds)
        return None if not sent else sum(lost for dummy, lost in self.rounds) / float(sent)

    def link(self, now, up):
        if up == self.link_up:
            return None
        self.link_up = up
        self.good = self.bad = 0
        if up:
            return None  # probes must prove it first
        if self.state == UP:
            return self._set(now, DOWN, "carrier", "link down or no carrier")
        self.reason, self.detail = "carrier", "link down or no carrier"
        return None

    def round(self, now, results, error=None):
        """Judge one finished round; returns a :class:`Transition` or None."""
        if not self.link_up:
            return None  # nothing can get through; the link event already decided
        s = self.settings
        answered = slow = 0
        for target in self.targets:
            rtt = results.get(target)
            if target in self.stats:
                self.stats[target].record(rtt)
            if rtt is None:
                continue
            if s.max_rtt_ms is not None and rtt * 1000.0 > s.max_rtt_ms:
                slow += 1
            else:
                answered += 1
        self.rounds.append((len(self.targets), sum(1 for t in self.targets if results.get(t) is None)))
        why = None
        if answered < s.min_targets_up:
            if slow and answered + slow >= s.min_targets_up:
                why = ("rtt", "%d of %d targets answered within %g ms (need %d)"
                       % (answered, len(self.targets), s.max_rtt_ms, s.min_targets_up))
            else:
                why = ("probes", "%d of %d targets answered (need %d)%s"
                       % (answered, len(self.targets), s.min_targets_up, "; " + error if error else ""))
        elif s.max_loss_pct is not None and len(self.rounds) == self.rounds.maxlen \
                and self.loss * 100.0 > s.max_loss_pct:
            why = ("loss", "loss %.1f %% over the last %d rounds (limit %g %%)"
                   % (self.loss * 100.0, len(self.rounds), s.max_loss_pct))
        if why is None:
            self.good += 1
            self.bad = 0
            self.bad_reason = None
            if self.state == UP:
                self.assumed = False
                return None
            if self.good >= s.up_after:
                return self._set(now, UP, "probes", "%d good rounds in a row" % self.good)
            return None
        self.bad += 1
        self.good = 0
        self.bad_reason = why
        if self.state == UP and self.bad >= s.down_after:
            return self._set(now, DOWN, why[0], "%s, %d rounds in a row" % (why[1], self.bad))
        return None

    def late_reply(self, now, target, rtt):
        if target in self.stats:
            self.stats[target].record_late(rtt)
        slow = self.settings.max_rtt_ms is not None and rtt * 1000.0 > self.settings.max_rtt_ms
        if self.state == UP and self.link_up and self.bad and not slow and \
                (self.bad_reason is None or self.bad_reason[0] == "probes"):
            self.bad = 0

    def as_dict(self):
        return {"state": self.state, "since": self.since, "reason": self.reason, "detail": self.detail,
                "assumed": self.assumed, "link": UP if self.link_up else DOWN,
                "transitions": self.transitions,
                "loss": None if self.loss is None else round(self.loss, 4),
                "last_change": dict(self.last_change),
                "targets": collections.OrderedDict((t, st.as_dict()) for t, st in self.stats.items())}


def decide_members(machines):
    """``(names, all_down)``: the uplinks for the default group.

    The uplinks that are up; if none is, every uplink whose link is up (the kernel cannot hold a
    nexthop over a dead link) or, if no link is up either, every uplink.  Keeping them all in
    lets traffic flow and recover without us when the problem is our probe targets.
    """
    up = [m.name for m in machines if m.state == UP]
    if up:
        return up, False
    alive = [m.name for m in machines if m.link_up]
    return (alive or [m.name for m in machines]), True


class Core(object):
    """All uplink machines of one config, the previous run's decisions and the group decision."""

    def __init__(self, config, now, previous=None, old_machines=None):
        self.config = config
        self.machines = collections.OrderedDict()
        prev = {}
        if isinstance(previous, dict) and isinstance(previous.get("updated"), (int, float)) \
                and 0 <= now - previous["updated"] <= config.state_max_age:
            prev = previous.get("uplinks") or {}
        for uplink in config.uplinks:
            old = (old_machines or {}).get(uplink.name)
            if old is not None:  # reload: keep the decision and what is known of the link
                machine = UplinkMachine(uplink.name, uplink.targets, uplink.settings, now, old.state,
                                        old.reason, old.detail, old.assumed, old.since)
                machine.link_up = old.link_up
                machine.transitions = old.transitions
                machine.last_change = old.last_change
            elif (prev.get(uplink.name) or {}).get("state") == DOWN:
                before = prev[uplink.name]
                machine = UplinkMachine(uplink.name, uplink.targets, uplink.settings, now, DOWN, "previous",
                                        "kept from the previous run (%s: %s)" % (before.get("reason"), before.get("detail")),
                                        False, before.get("since") if isinstance(before.get("since"), (int, float)) else now)
            else:
                machine = UplinkMachine(uplink.name, uplink.targets, uplink.settings, now)
            self.machines[uplink.name] = machine

    def link_event(self, now, interface, up):
        transitions = []
        for uplink in self.config.uplinks:
            if uplink.interface == interface:
                t = self.machines[uplink.name].link(now, up)
                if t:
                    transitions.append(t)
        return transitions

    def round_result(self, now, name, results, error=None):
        return self.machines[name].round(now, results, error)

    def late_reply(self, now, name, target, rtt):
        self.machines[name].late_reply(now, target, rtt)

    def members(self):
        return decide_members(list(self.machines.values()))

    def group_members(self):
        """``[(nexthop_id, weight)]`` of the decided members, in config order."""
        names, dummy = self.members()
        return [(u.nexthop_id, u.weight) for u in self.config.uplinks if u.name in names]


# -- renderings ------------------------------------------------------------------------------

def state_document(core, now, applied=None, error=None, pid=None):
    """The state file's content (see the module docstring)."""
    config = core.config
    names, all_down = core.members()
    members = applied if applied is not None else names
    group = dict((k, config.group.get(k)) for k in ("id", "family", "table", "destination", "type"))
    group["members"] = [{"uplink": u.name, "nexthop_id": u.nexthop_id, "weight": u.weight}
                        for u in config.uplinks if u.name in members]
    group["error"] = error
    uplinks = collections.OrderedDict()
    for uplink in config.uplinks:
        entry = core.machines[uplink.name].as_dict()
        entry.update(dev=uplink.interface, address=uplink.address, nexthop_ids=[uplink.nexthop_id],
                     in_group=uplink.name in members)
        uplinks[uplink.name] = entry
    return {"version": STATE_VERSION, "updated": now, "pid": pid, "all_down": all_down, "group": group,
            "uplinks": uplinks}


def _label(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def metrics_text(document):
    """Prometheus textfile exposition of a state document."""
    out = []

    def family(name, kind, text, samples):
        out.append("# HELP %s %s" % (name, text))
        out.append("# TYPE %s %s" % (name, kind))
        for labels, value in samples:
            label_text = ",".join('%s="%s"' % (k, _label(v)) for k, v in labels)
            out.append("%s{%s} %s" % (name, label_text, repr(float(value)) if isinstance(value, float) else value))

    uplinks = document["uplinks"]
    family("multiwan_uplink_up", "gauge", "1 when probes through the uplink pass, 0 when it is down.",
           [((("uplink", n), ("dev", u["dev"])), 1 if u["state"] == UP else 0) for n, u in uplinks.items()])
    family("multiwan_uplink_in_group", "gauge", "1 when the uplink is a member of the default group.",
           [((("uplink", n),), 1 if u["in_group"] else 0) for n, u in uplinks.items()])
    family("multiwan_uplink_transitions_total", "counter", "Up/down transitions since the watchdog started.",
           [((("uplink", n),), u["transitions"]) for n, u in uplinks.items()])
    rtt, loss = [], []
    for name, u in uplinks.items():
        for target, t in u["targets"].items():
            if t["rtt_ewma_ms"] is not None:
                rtt.append(((("uplink", name), ("target", target)), t["rtt_ewma_ms"] / 1000.0))
            if t["loss"] is not None:
                loss.append(((("uplink", name), ("target", target)), float(t["loss"])))
    family("multiwan_probe_rtt_seconds", "gauge", "Smoothed round-trip time of the probes to a target.", rtt)
    family("multiwan_probe_loss_ratio", "gauge", "Share of probes lost over the loss window.", loss)
    out.append("# HELP multiwan_all_down 1 when every uplink is down and all are kept in the group.")
    out.append("# TYPE multiwan_all_down gauge")
    out.append("multiwan_all_down %d" % (1 if document["all_down"] else 0))
    out.append("# HELP multiwan_state_updated_seconds When the watchdog last wrote its state (unix time).")
    out.append("# TYPE multiwan_state_updated_seconds gauge")
    out.append("multiwan_state_updated_seconds %s" % repr(float(document["updated"])))
    return "\n".join(out) + "\n"


def _ago(seconds):
    seconds = max(0, int(seconds))
    if seconds < 120:
        return "%ds" % seconds
    if seconds < 7200:
        return "%dm%02ds" % (seconds // 60, seconds % 60)
    if seconds < 172800:
        return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)
    return "%dd%02dh" % (seconds // 86400, seconds % 86400 // 3600)


def status_text(document, now):
    """The table of ``multiwan status``."""
    lines = []
    age = now - document.get("updated", 0)
    members = [m["uplink"] for m in document["group"]["members"]]
    head = "group %s: %s" % (document["group"]["id"], ", ".join(members) or "(none)")
    if document.get("all_down"):
        head += "  ALL UPLINKS DOWN: all kept in the group"
    if document["group"].get("error"):
        head += "  ERROR: %s" % document["group"]["error"]
    lines.append(head)
    if age > 10:
        lines.append("warning: state last written %s ago (is the watchdog running?)" % _ago(age))
    rows = [("UPLINK", "DEV", "STATE", "SINCE", "LOSS", "RTT PER TARGET", "LAST CHANGE")]
    for name, u in document["uplinks"].items():
        state = u["state"] + (" (assumed)" if u.get("assumed") else "")
        if u.get("link") == DOWN:
            state += " [no link]"
        rtts = []
        for target, t in u["targets"].items():
            if not t.get("sent"):
                rtts.append("%s -" % target)
            elif t["loss"] == 1 or t["rtt_ewma_ms"] is None:
                rtts.append("%s lost" % target)
            else:
                rtts.append("%s %.1fms" % (target, t["rtt_ewma_ms"]))
        loss = "-" if u.get("loss") is None else "%.1f%%" % (u["loss"] * 100)
        change = u.get("last_change") or {}
        what = "%s->%s" % (change.get("from"), change.get("to")) if change.get("from") else "start"
        rows.append((name, u["dev"], state, _ago(now - u["since"]) + " ago", loss, ", ".join(rtts),
                     "%s %s ago: %s (%s)" % (what, _ago(now - change.get("time", now)), change.get("reason"),
                                             change.get("detail"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return "\n".join(lines) + "\n"


# -- wire formats ----------------------------------------------------------------------------

ICMP_ECHO_REPLY, ICMP_ECHO = 0, 8
ICMP6_ECHO, ICMP6_ECHO_REPLY = 128, 129
PAYLOAD = b"multiwan-probe\x00\x00"


def checksum(data):
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_echo(family, ident, seq, payload=PAYLOAD):
    """An ICMP (or ICMPv6) echo request; the kernel fills in the ICMPv6 checksum."""
    if family == "inet6":
        return struct.pack("!BBHHH", ICMP6_ECHO, 0, 0, ident & 0xFFFF, seq & 0xFFFF) + payload
    header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    csum = checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, csum, ident & 0xFFFF, seq & 0xFFFF) + payload


def parse_echo(data, family, ip_header):
    """``(ident, seq)`` of an echo reply, or None for anything else (or a bad IPv4 checksum).

    ``ip_header``: IPv4 raw sockets deliver the IP header too; ping sockets and IPv6 do not.
    """
    if ip_header:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8:
        return None
    kind, code, dummy, ident, seq = struct.unpack("!BBHHH", data[:8])
    if code != 0 or kind != (ICMP6_ECHO_REPLY if family == "inet6" else ICMP_ECHO_REPLY):
        return None
    if family == "inet" and checksum(data) != 0:
        return None
    return ident, seq


NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
IFLA_IFNAME = 3
IFF_UP, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x40, 0x10000
RTMGRP_LINK = 1
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300


def link_state(flags):
    """The link state (``_iproute.parse_links``'s word) of a link with these ``ifi_flags``.

    ``up`` needs IFF_UP, IFF_LOWER_UP and IFF_RUNNING: the kernel needs LOWER_UP to accept a
    nexthop; ``ip`` prints NO-CARRIER (and ``parse_links`` says ``no-carrier``) until RUNNING,
    which follows LOWER_UP a moment later (linkwatch).  Waiting for all three keeps this view and
    the reconcile's view (``ip link``) the same.
    """
    if not flags & IFF_UP:
        return LINK_DOWN
    if flags & (IFF_LOWER_UP | IFF_RUNNING) != IFF_LOWER_UP | IFF_RUNNING:
        return LINK_NO_CARRIER
    return LINK_UP


def parse_netlink(data):
    """Link messages in a netlink datagram: dicts ``type, index, ifname, flags, state``.

    ``state`` is :func:`link_state` of the flags, or None for a deleted link (RTM_DELLINK): like a
    device missing from ``ip link``.  NLMSG_DONE and errors come back as ``{"type": "done"}`` /
    ``{"type": "error", "errno": n}``.
    """
    messages = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16 or offset + length > len(data):
            break
        body = data[offset + 16:offset + length]
        if kind == NLMSG_DONE:
            messages.append({"type": "done"})
        elif kind == NLMSG_ERROR:
            messages.append({"type": "error", "errno": -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0})
        elif kind in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= 16:
            _family, _pad, _type, index, flags, _change = struct.unpack_from("=BBHiII", body)
            name = None
            pos = 16
            while pos + 4 <= len(body):
                rta_len, rta_type = struct.unpack_from("=HH", body, pos)
                if rta_len < 4:
                    break
                if rta_type == IFLA_IFNAME:
                    name = body[pos + 4:pos + rta_len].split(b"\x00", 1)[0].decode("utf-8", "replace")
                pos += (rta_len + 3) & ~3
            messages.append({"type": "new" if kind == RTM_NEWLINK else "del", "index": index, "ifname": name,
                             "flags": flags, "state": link_state(flags) if kind == RTM_NEWLINK else None})
        offset += (length + 3) & ~3
    return messages


def link_dump_request(seq=1):
    """RTM_GETLINK dump request (header + ifinfomsg)."""
    body = struct.pack("=BBHiII", socket.AF_UNSPEC, 0, 0, 0, 0, 0)
    return struct.pack("=IHHII", 16 + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


# -- files -----------------------------------------------------------------------------------

def write_atomic(path, text, mode=0o644):
    """Write ``path`` through a temporary file in the same directory and rename."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    with open(tmp, "w") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def read_state(path):
    try:
        with open(path) as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else None
    except (IOError, OSError, ValueError):
        return None


def hook_scripts(directory):
    """Executable regular files of ``directory``, sorted; no dot files or editor backups."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    paths = []
    for name in names:
        path = os.path.join(directory, name)
        if name.startswith(".") or name.endswith("~") or not os.path.isfile(path) or not os.access(path, os.X_OK):
            continue
        paths.append(path)
    return paths


def hook_environment(transition, uplink, all_down, base=None):
    env = dict(os.environ if base is None else base)
    env.update(MULTIWAN_UPLINK=transition.uplink, MULTIWAN_OLD_STATE=transition.old,
               MULTIWAN_NEW_STATE=transition.new, MULTIWAN_REASON=transition.reason,
               MULTIWAN_DETAIL=transition.detail or "", MULTIWAN_TIME="%.3f" % transition.time,
               MULTIWAN_DEV=uplink.interface if uplink else "", MULTIWAN_ADDRESS=uplink.address if uplink else "",
               MULTIWAN_ALL_DOWN="1" if all_down else "0")
    return env


def conntrack_command(conntrack, uplink):
    """Delete only this uplink's conntrack entries (never the whole table)."""
    argv = [conntrack, "-D", "--reply-dst", uplink.address]
    if uplink.family == "inet6":
        argv += ["-f", "ipv6"]
    return argv


# -- the I/O shell ---------------------------------------------------------------------------

def log(message):
    sys.stderr.write("multiwan: %s\n" % message)
    sys.stderr.flush()


class Children(object):
    """Background processes (hooks run one after another, conntrack clean-ups at once), each with
    a deadline; polled from the loop, never waited for."""

    def __init__(self):
        self.hook_queue = collections.deque()
        self.hook = None        # (Popen, deadline, path)
        self.others = []        # (Popen, deadline, what)

    def busy(self):
        return bool(self.hook or self.hook_queue or self.others)

    def queue_hooks(self, paths, env, timeout):
        for path in paths:
            self.hook_queue.append((path, env, timeout))
        while len(self.hook_queue) > 200:
            path = self.hook_queue.popleft()[0]
            log("hook queue full, skipping %s" % path)

    def spawn(self, argv, timeout, what, now):
        try:
            # A daemon, not a module: there is no run_command here, and children must not block.
            proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except OSError as exc:
            log("%s: cannot start %s: %s" % (what, argv[0], exc))
            return
        self.others.append((proc, now + timeout, what))

    def poll(self, now):
        if self.hook is not None:
            proc, deadline, path = self.hook
            if proc.poll() is not None:
                if proc.returncode:
                    log("hook %s exited with %s" % (path, proc.returncode))
                self.hook = None
            elif now >= deadline:
                self._kill(proc)
                log("hook %s killed after its timeout" % path)
                self.hook = None
        while self.hook is None and self.hook_queue:
            path, env, timeout = self.hook_queue.popleft()
            try:
                proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
                    [path], env=env, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
                self.hook = (proc, now + timeout, path)
            except OSError as exc:
                log("hook %s: %s" % (path, exc))
        keep = []
        for proc, deadline, what in self.others:
            if proc.poll() is None:
                if now >= deadline:
                    self._kill(proc)
                    log("%s killed after its timeout" % what)
                else:
                    keep.append((proc, deadline, what))
        self.others = keep

    @staticmethod
    def _kill(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            proc.wait(1)
        except subprocess.TimeoutExpired:
            pass

    def stop(self):
        for proc, dummy, dummy2 in ([self.hook] if self.hook else []) + self.others:
            self._kill(proc)
        self.hook, self.others = None, []
        self.hook_queue.clear()


class ProbeSocket(object):
    """ICMP echo socket of one uplink: bound to its interface and its source address.

    A raw socket (needs CAP_NET_RAW, which the unit grants) where allowed, a ping socket
    (SOCK_DGRAM, net.ipv4.ping_group_range) otherwise; with a ping socket the kernel chooses the
    identifier and delivers only our own replies.
    """

    def __init__(self, uplink, ident):
        self.uplink = uplink
        self.ident = ident & 0xFFFF
        self.sock = None
        self.raw = True
        self.error = None

    def open(self):
        family = socket.AF_INET6 if self.uplink.family == "inet6" else socket.AF_INET
        proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
        try:
            sock = socket.socket(family, socket.SOCK_RAW, proto)
            self.raw = True
        except PermissionError:
            sock = socket.socket(family, socket.SOCK_DGRAM, proto)
            self.raw = False
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.uplink.interface.encode() + b"\x00")
            if self.raw and family == socket.AF_INET:
                # ICMP_FILTER (SOL_RAW): block every type but echo reply
                sock.setsockopt(255, 1, struct.pack("I", 0xFFFFFFFF & ~(1 << ICMP_ECHO_REPLY)))
            elif self.raw:
                # ICMP6_FILTER: 256 bits, a set bit blocks the type
                bits = [0xFFFFFFFF] * 8
                bits[ICMP6_ECHO_REPLY >> 5] &= ~(1 << (ICMP6_ECHO_REPLY & 31))
                sock.setsockopt(socket.IPPROTO_ICMPV6, 1, struct.pack("8I", *bits))
            sock.bind((self.uplink.address, 0))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.error = None

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, target, seq):
        data = build_echo(self.uplink.family, self.ident, seq)
        self.sock.sendto(data, (target, 0))

    def receive(self):
        """``[(source, ident, seq)]`` of the echo replies waiting on the socket."""
        replies = []
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ENETDOWN reported on the socket
                self.error = str(exc)
                break
            parsed = parse_echo(data, self.uplink.family, self.raw and self.uplink.family == "inet")
            if parsed is None or (self.raw and parsed[0] != self.ident):
                continue
            replies.append((addr[0], parsed[0], parsed[1]))
        return replies


class Round(object):
    __slots__ = ("number", "deadline", "results", "error", "waiting")

    def __init__(self, number, deadline, targets):
        self.number = number
        self.deadline = deadline
        self.results = {}
        self.error = None
        self.waiting = set(targets)


class Retry(object):
    """When to try a failing action again: ``first`` s after the first failure of a streak, then
    twice as long after each further failure, up to the ``limit`` given with the failure; a success
    ends the streak.  Pure: the caller passes the (monotonic) time."""

    def __init__(self, first):
        self.first = first
        self.failures = 0      # failed attempts in the current streak
        self.delay = None      # s from the last failure to the next attempt
        self.next_try = None   # time of the next attempt; None: whenever asked

    def failed(self, now, limit):
        """Count a failure; returns the delay before the next attempt."""
        self.failures += 1
        self.delay = min(self.first if self.delay is None else self.delay * 2.0, max(limit, self.first))
        self.next_try = now + self.delay
        return self.delay

    def succeeded(self):
        """End the streak; returns how many attempts of it had failed."""
        failures = self.failures
        self.failures, self.delay, self.next_try = 0, None, None
        return failures

    def due(self, now):
        return self.next_try is None or now >= self.next_try


def forget_expired(pending, now):
    """Drop the probes of ``pending`` (in send order) sent more than LATE_LIMIT before ``now``."""
    while pending:
        seq, (dummy, dummy2, sent) = next(iter(pending.items()))
        if now - sent <= LATE_LIMIT:
            break  # the rest were sent later
        del pending[seq]


class Daemon(object):
    """The watchdog process: probe loop, link events, group updates, files, hooks."""

    def __init__(self, config_path, iproute=None, clock=time.monotonic, wall=time.time):
        self.config_path = config_path
        self.iproute = iproute or _iproute.IpRoute()
        self.clock = clock
        self.wall = wall
        self.config = read_config(config_path)
        self.core = None
        self.selector = selectors.DefaultSelector()
        self.sockets = {}      # uplink name -> ProbeSocket
        self.pending = {}      # uplink name -> OrderedDict {seq: (Round, target, sent time)}, in send order
        self.open_rounds = {}  # uplink name -> deque of Round
        self.seq = {}
        self.round_number = 0
        self.children = Children()
        self.applied = None    # member names last applied to the group ([]: there is no group)
        self.group_error = None
        self.links = {}        # interface -> link state (see usable()), from netlink
        self.links_complete = False  # the link dump was answered: a device not in links does not exist
        self.netlink = None
        self.stop = False
        self.reload = False
        self.need_reconcile = True
        self.retry = Retry(RETRY_FIRST)  # of a failed reconcile, by the main loop
        self.dirty = True      # decisions changed since the state file was written
        self.written_group = None  # (members, error) the state file shows
        self.wakeup = None

    # setup -------------------------------------------------------------------------------
    def _signals(self):
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self.wakeup = (reader, writer)
        self.selector.register(reader, selectors.EVENT_READ, ("wakeup", None))

        def on_stop(signum, frame):
            self.stop = True

        def on_hup(signum, frame):
            self.reload = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wake the loop to reap

    def _open_netlink(self):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, RTMGRP_LINK))
        self.netlink = sock
        self.selector.register(sock, selectors.EVENT_READ, ("netlink", None))
        sock.send(link_dump_request())

    def _start_core(self, now, old_machines=None):
        previous = None if old_machines else read_state(self.config.state_file)
        self.core = Core(self.config, now, previous, old_machines)
        for name, machine in self.core.machines.items():
            uplink = self.config.uplink(name)
            # a device missing from a complete dump does not exist (a PPP link between sessions)
            if self.links_complete or uplink.interface in self.links:
                machine.link(now, usable(self.links.get(uplink.interface)))
        for index, uplink in enumerate(self.config.uplinks):
            self.sockets[uplink.name] = ProbeSocket(uplink, (os.getpid() * 16 + index) & 0xFFFF)
            self.pending[uplink.name] = collections.OrderedDict()
            self.open_rounds[uplink.name] = collections.deque()
            self.seq.setdefault(uplink.name, 0)

    def _close_probes(self):
        for probe in self.sockets.values():
            if probe.sock is not None:
                self.selector.unregister(probe.sock)
                probe.close()
        self.sockets, self.pending, self.open_rounds = {}, {}, {}

    # routing -----------------------------------------------------------------------------
    def desired_routes(self, links):
        """Routes to bring in line: each uplink's own routes over usable devices, and the group
        route over the usable uplinks (none when no uplink is usable: a group needs a member)."""
        desired = []
        for uplink in self.config.uplinks:
            for route in uplink.routes:
                if all(usable(links.get(h["dev"])) for h in route["nexthops"]):
                    desired.append(copy.deepcopy(route))
        group = self.config.group
        hops = [u.group_hop() for u in self.config.uplinks if usable(links.get(u.interface))]
        if hops:
            desired.append({"family": group["family"], "table": group["table"], "destination": group["destination"],
                            "metric": group["metric"], "type": "unicast", "scope": None, "src": None,
                            "protocol": None, "nexthops": hops, "group_id": group["id"],
                            "group_type": group["type"], "buckets": group.get("buckets"),
                            "idle_timer": group.get("idle_timer")})
        return desired

    def planned_members(self, plan):
        """Names of the uplinks ``plan`` puts in the group ([] when it plans no group route)."""
        ids = set()
        for resolved in plan.routes:
            if resolved.get("group_id") == self.config.group["id"]:
                ids.update(member["id"] for member in resolved["members"])
        return [u.name for u in self.config.uplinks if u.nexthop_id in ids]

    def restore_rules(self):
        """Add the config's policy rules that are missing (at start and on reload only).

        After a reboot the kernel has none of the role's rules; the watchdog puts them back with
        the ip_rule code (Contract 1). It never deletes a rule: removing rules is the role's job
        (ip_rule purge), and doing it here, on an old config during a playbook run, could undo
        the role's work. Not repeated on verify for the same reason.
        """
        if not self.config.rules:
            return True
        try:
            live = self.iproute.rules(self.config.group["family"])
            plan = _iproute.plan_rules(live, self.config.rules, self.config.protocol)
            missing = [line for line in plan.lines if line.text.startswith("rule add")]
            if missing:
                self.iproute.apply(missing)
                log("policy rules restored: %s" % "; ".join(line.about for line in missing))
        except (_iproute.IpRouteError, ValueError, OSError) as exc:
            log("restoring the policy rules failed: %s" % exc)
            return False
        return True

    def reconcile(self, now_wall):
        """Bring routes, nexthop objects and the group in line with the config and decisions.

        On failure ``need_reconcile`` is set and the main loop tries again when ``retry`` says.
        """
        names, dummy = self.core.members()
        health = {"ids": set(u.nexthop_id for u in self.config.uplinks if u.name not in names), "devs": set()}
        try:
            links = self.iproute.links()
            state = {"routes": [r for f in _iproute.FAMILIES for r in self.iproute.routes(f)],
                     "nexthops": self.iproute.nexthops(), "links": links}
            desired = self.desired_routes(links)
            for route in desired:
                route["protocol"] = self.config.protocol
            plan = _iproute.plan_routes(state, desired, self.config.protocol, True, health)
            members = self.planned_members(plan)
            if plan.lines:
                self.write_files(now_wall, members)  # Contract 2: the file says it before the kernel does
                self.iproute.apply(plan.lines)
                log("routing brought in line: %s" % "; ".join(line.text for line in plan.lines))
        except (_iproute.IpRouteError, ValueError, OSError) as exc:
            delay = self.retry.failed(self.clock(), min(self.config.verify_interval or RETRY_LIMIT, RETRY_LIMIT))
            if self.retry.failures == 1:  # once per streak, not per attempt
                log("reconcile failed: %s; trying again in %g s, then less often" % (exc, delay))
            self.group_error = "reconcile failed: %s" % exc
            self.need_reconcile = True
            return False
        failures = self.retry.succeeded()
        if failures:
            log("routing in line again after %d failed attempt%s" % (failures, "" if failures == 1 else "s"))
        error = None
        if not members:
            group = self.config.group
            error = ("no uplink has a usable link: no route %s in table %s until one comes back"
                     % (group["destination"], group["table"]))
            if error != self.group_error:
                log(error)
        self.applied, self.group_error, self.need_reconcile = members, error, False
        return True

    def set_members(self, now_wall, members, all_down):
        """The fast path: swap the group's members with one atomic ``ip nexthop replace``."""
        group_id = self.config.group["id"]
        line = _iproute.Line(_iproute.set_group_members(
            group_id, [(u.nexthop_id, u.weight) for u in self.config.uplinks if u.name in members],
            self.config.protocol, self.config.group["type"]), "nexthop group %d" % group_id)
        self.write_files(now_wall, members)  # Contract 2: the file says it before the kernel does
        try:
            self.iproute.apply([line])
        except _iproute.IpRouteError as exc:
            log("group update failed (%s); bringing routing in line" % exc)
            self.reconcile(now_wall)
            return
        self.applied, self.group_error = members, None
        log("group %d: %s%s" % (group_id, ", ".join(members), " (all uplinks down: all kept)" if all_down else ""))

    def sync_group(self, now_wall):
        """Bring the group in line with the decision, then the state file if it lags behind."""
        names, all_down = self.core.members()
        before = self.applied
        if self.need_reconcile or before is None:
            self.reconcile(now_wall)
        else:
            # only members over a usable link: the kernel deleted the nexthop objects of the others
            members = [u.name for u in self.config.uplinks if u.name in names and usable(self.links.get(u.interface))]
            if members != before:
                if members and before:
                    self.set_members(now_wall, members, all_down)
                else:  # no group route to swap members in, or none to give it: only reconcile knows
                    self.reconcile(now_wall)
        if before is not None and self.config.conntrack:
            for name in before:
                if name not in (self.applied or names):
                    uplink = self.config.uplink(name)
                    if uplink is not None:
                        self.children.spawn(conntrack_command(self.config.conntrack, uplink), 10.0,
                                            "conntrack clean-up of %s" % name, self.clock())
        if self.dirty or self.written_group != (self.applied, self.group_error):
            self.write_files(now_wall)

    def retry_reconcile(self, now):
        """The main loop's retry of a failed reconcile: when ``retry`` says, not on every wake-up."""
        if self.need_reconcile and self.retry.due(now):
            self.sync_group(self.wall())

    def verify(self):
        """Every ``verify_interval``: bring routing in line again (plans nothing when it is).

        Repairs what others changed behind us, e.g. a playbook run that read the state file
        just before a transition and put a dead uplink back.
        """
        self.need_reconcile = True
        self.sync_group(self.wall())

    # events ------------------------------------------------------------------------------
    def handle_transitions(self, transitions, now_wall):
        """Log the transitions, queue their hooks and bring the group (and state file) in line."""
        if not transitions:
            return
        self.dirty = True
        dummy, all_down = self.core.members()
        hooks = hook_scripts(self.config.hooks_dir) if self.config.hooks_dir else []  # once per batch
        for t in transitions:
            log("%s: %s -> %s (%s: %s)" % (t.uplink, t.old, t.new, t.reason, t.detail))
            if hooks:
                self.children.queue_hooks(hooks, hook_environment(t, self.config.uplink(t.uplink), all_down),
                                          self.config.hook_timeout)
        if all_down:
            log("all uplinks are down: all of them stay in the default group")
        self.sync_group(now_wall)

    def on_netlink(self):
        messages = []
        while True:
            try:
                data = self.netlink.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # events lost: ask for the whole picture again
                    log("netlink overrun; dumping links again")
                    self.netlink.send(link_dump_request())
                    continue
                raise
            messages += parse_netlink(data)
        self.link_messages(messages, self.wall())

    def link_messages(self, messages, now_wall):
        """Apply netlink link messages to ``links`` and the machines; when an uplink's link became
        usable or unusable, bring routing in line (once for all the messages)."""
        transitions = []
        changed = False
        for msg in messages:
            if msg["type"] not in ("new", "del") or not msg["ifname"]:
                continue
            name, state = msg["ifname"], msg["state"]
            was = usable(self.links.get(name))
            if state is None:
                self.links.pop(name, None)
            else:
                self.links[name] = state
            if usable(state) == was or not any(u.interface == name for u in self.config.uplinks):
                continue
            log("link %s %s" % (name, state or "deleted"))
            changed = True
            if not usable(state):
                for uplink in self.config.uplinks:
                    if uplink.interface == name:
                        self._fail_open_rounds(uplink.name)
            transitions += self.core.link_event(now_wall, name, usable(state))
        if not changed:
            return
        # up: the kernel deleted this device's nexthops and routes, recreate them; down: the
        # group (and the default route, if it was the last member) may be gone too
        self.need_reconcile = True
        if transitions:
            self.handle_transitions(transitions, now_wall)
        else:
            self.sync_group(now_wall)

    def _fail_open_rounds(self, name):
        self.pending[name].clear()
        self.open_rounds[name].clear()

    def start_round(self, now):
        self.round_number += 1
        for uplink in self.config.uplinks:
            forget_expired(self.pending[uplink.name], now)  # here, not per reply: once a round is enough
            machine = self.core.machines[uplink.name]
            if not machine.link_up:
                continue
            probe = self.sockets[uplink.name]
            rnd = Round(self.round_number, now + uplink.settings.timeout, uplink.targets)
            self.open_rounds[uplink.name].append(rnd)
            if probe.sock is None:
                try:
                    probe.open()
                    self.selector.register(probe.sock, selectors.EVENT_READ, ("probe", uplink.name))
                except OSError as exc:
                    if probe.error != str(exc):
                        log("%s: cannot bind a probe socket to %s on %s: %s"
                            % (uplink.name, uplink.address, uplink.interface, exc))
                    probe.error = str(exc)
                    rnd.error = "source %s on %s unusable: %s" % (uplink.address, uplink.interface, exc.strerror or exc)
                    rnd.waiting.clear()
                    continue
            pending = self.pending[uplink.name]
            for target in uplink.targets:
                seq = self.seq[uplink.name] = (self.seq[uplink.name] + 1) & 0xFFFF
                try:
                    probe.send(target, seq)
                except OSError as exc:
                    rnd.error = "send to %s: %s" % (target, exc.strerror or exc)
                    rnd.waiting.discard(target)
                    if exc.errno in (errno.ENODEV, errno.ENXIO, errno.EADDRNOTAVAIL, errno.EBADF):
                        self.selector.unregister(probe.sock)
                        probe.close()
                        break
                    continue
                pending.pop(seq, None)  # a reused sequence number goes to the end: send order
                pending[seq] = (rnd, target, self.clock())

    def on_probe(self, name):
        probe = self.sockets.get(name)
        if probe is None or probe.sock is None:
            return
        now = self.clock()
        pending = self.pending[name]
        for source, _ident, seq in probe.receive():
            entry = pending.get(seq)
            if entry is None or entry[1] != source:
                continue
            del pending[seq]
            rnd, target, sent = entry
            rtt = now - sent
            if target in rnd.waiting:
                rnd.results[target] = rtt
                rnd.waiting.discard(target)
            else:
                self.core.late_reply(self.wall(), name, target, rtt)

    def finish_rounds(self, now):
        transitions = []
        for uplink in self.config.uplinks:
            rounds = self.open_rounds[uplink.name]
            while rounds and (not rounds[0].waiting or rounds[0].deadline <= now):
                rnd = rounds.popleft()
                rnd.waiting.clear()
                t = self.core.round_result(self.wall(), uplink.name, rnd.results, rnd.error)
                if t:
                    transitions.append(t)
        self.handle_transitions(transitions, self.wall())

    def next_deadline(self):
        deadlines = [r[0].deadline for r in self.open_rounds.values() if r]
        return min(deadlines) if deadlines else None

    # files -------------------------------------------------------------------------------
    def write_files(self, now, members=None):
        """Write the state (and metrics) file.  ``members``: the group members about to be applied
        (Contract 2: the file says it before the kernel does); by default the applied ones."""
        shown = self.applied if members is None else members
        document = state_document(self.core, now, shown, self.group_error, os.getpid())
        try:
            write_atomic(self.config.state_file, json.dumps(document, indent=1, sort_keys=False) + "\n")
        except (IOError, OSError) as exc:
            log("cannot write %s: %s" % (self.config.state_file, exc))
        if self.config.metrics_file:
            try:
                write_atomic(self.config.metrics_file, metrics_text(document))
            except (IOError, OSError) as exc:
                log("cannot write %s: %s" % (self.config.metrics_file, exc))
        self.dirty = False
        self.written_group = (shown, self.group_error)

    # reload ------------------------------------------------------------------------------
    def do_reload(self):
        self.reload = False
        try:
            config = read_config(self.config_path)
        except ConfigError as exc:
            log("reload: keeping the old config: %s" % exc)
            return
        old = self.core.machines
        self._close_probes()
        self.config = config
        self._start_core(self.wall(), old_machines=old)
        self.need_reconcile = True
        self.dirty = True
        log("config reloaded: %s" % ", ".join(u.name for u in config.uplinks))
        self.restore_rules()
        self.sync_group(self.wall())

    # the loop ----------------------------------------------------------------------------
    def run(self):
        self._signals()
        self._open_netlink()
        # the answer to the dump gives every link's state before anything is decided
        deadline = self.clock() + 2.0
        answered = False
        while not answered and self.clock() < deadline:
            select.select([self.netlink], [], [], 0.2)
            answered = self.on_netlink_initial()
        self._start_core(self.wall())
        log("started: %s; interval %gs, timeout %gs, down after %d, up after %d rounds"
            % (", ".join("%s (%s)" % (u.name, u.interface) for u in self.config.uplinks), self.config.interval,
               self.config.timeout, self.config.down_after, self.config.up_after))
        self.restore_rules()
        self.sync_group(self.wall())
        next_round = self.clock()
        next_write = next_round + self.config.write_interval
        next_verify = next_round + (self.config.verify_interval or 1e9)
        try:
            while not self.stop:
                now = self.clock()
                wake = [next_round, next_write, next_verify]
                deadline = self.next_deadline()
                if deadline is not None:
                    wake.append(deadline)
                if self.need_reconcile and self.retry.next_try is not None:
                    wake.append(self.retry.next_try)
                if self.children.busy():
                    wake.append(now + 0.2)
                for key, dummy in self.selector.select(max(0.0, min(wake) - now)):
                    kind, name = key.data
                    if kind == "probe":
                        self.on_probe(name)
                    elif kind == "netlink":
                        self.on_netlink()
                    else:
                        try:
                            while key.fileobj.recv(512):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                if self.stop:
                    break
                if self.reload:
                    self.do_reload()
                now = self.clock()
                self.finish_rounds(now)
                if now >= next_round:
                    self.start_round(now)
                    next_round += self.config.interval
                    if next_round < now:  # we were held up: skip, never burst
                        next_round = now + self.config.interval
                self.retry_reconcile(now)
                if now >= next_verify:
                    next_verify = now + self.config.verify_interval
                    self.verify()
                if now >= next_write:
                    next_write = now + self.config.write_interval
                    self.write_files(self.wall())
                self.children.poll(now)
        finally:
            if self.core is not None:
                self.write_files(self.wall())
            self.children.stop()
            self._close_probes()
            log("stopped; routes left as they are")
        return 0

    def on_netlink_initial(self):
        """Read the dump's answer into ``links`` (before the machines exist); True when answered."""
        while True:
            try:
                data = self.netlink.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return False
            for msg in parse_netlink(data):
                if msg["type"] == "new" and msg["ifname"]:
                    self.links[msg["ifname"]] = msg["state"]
                elif msg["type"] == "done":
                    self.links_complete = True
                    return True
                elif msg["type"] == "error":
                    log("link dump failed (errno %d); links are learnt from events" % msg["errno"])
                    return True


# -- command line ----------------------------------------------------------------------------

def status_command(paths, as_json):
    """``multiwan status``: the state of every file of ``paths`` that exists; 1 when none does."""
    found = []
    for path in paths:
        document = read_state(path)
        if document is not None:
            found.append((path, document))
        elif os.path.exists(path):
            sys.stderr.write("cannot read %s: not a state file\n" % path)
    if not found:
        sys.stderr.write("no state in %s (is the watchdog running?)\n" % " or ".join(paths))
        return 1
    documents = [document for dummy, document in found]
    if as_json:
        # one: the document itself, so the output for one state file stays what it was; two: a list
        sys.stdout.write(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2) + "\n")
        return 0
    now = time.time()
    if len(found) == 1:
        sys.stdout.write(status_text(documents[0], now))
    else:
        sys.stdout.write("\n".join("%s (%s)\n%s" % ((document.get("group") or {}).get("family"), path,
                                                    status_text(document, now)) for path, document in found))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="multiwan", description="multiwan.linux failover watchdog")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("watchdog", help="run the watchdog daemon")
    run.add_argument("--config", default="/etc/multiwan/watchdog.json")
    run.add_argument("--check", action="store_true", help="only validate the config")
    status = sub.add_parser("status", help="show the uplinks' state")
    status.add_argument("--json", action="store_true")
    status.add_argument("--state-file", help="show this state file only (default: %s, whichever exist)"
                        % " and ".join(path for dummy, path in STATE_FILES))
    args = parser.parse_args(argv)
    if args.command == "watchdog":
        try:
            if args.check:
                read_config(args.config)
                return 0
            return Daemon(args.config).run()
        except ConfigError as exc:
            log("config: %s" % exc)
            return 2
    if args.command == "status":
        return status_command([args.state_file] if args.state_file else [path for dummy, path in STATE_FILES],
                              args.json)
    parser.print_help()
    return 2
