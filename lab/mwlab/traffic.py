"""Traffic generators for the multiwan lab (standard library only, Python 3.11+).

Run inside a LAN client namespace, talking to ``mwlab.reflector`` on the lab's internet hosts.
The reflector reports the source address/port it saw; since ISP routers never NAT, that address
is the gateway's uplink address, i.e. it tells which uplink a flow used.

Modes (``python3 -m mwlab.traffic MODE ...``; every mode prints one JSON object on stdout):

burst     N short flows, each a new socket (new source port), round-robin over the targets, at
          most --concurrency at a time; UDP: --udp-timeout per try, --udp-retries retries;
          TCP: --tcp-timeout for the connect and again for the reply.
stream    M UDP flows, each its own socket, one datagram every --interval-ms for --duration s
          (0 = until SIGTERM/SIGINT; hard cap 600 s). Reports per-flow gaps between replies and
          source-address changes. SIGTERM/SIGINT stop it early and still print the report.
tcp-hold  M long-lived TCP connections, one line every --interval-ms; reports the source seen at
          start, changes, and when/why a connection broke (reset, eof, timeout).

Python API: burst(), stream(), tcp_hold() return the same dicts; run_in_netns() runs a mode in
a namespace and parses its JSON; start_in_netns() runs one in the background (stop() -> dict).
register(subparsers) adds the lab CLI subcommands ``traffic`` and ``flows``.
"""

from __future__ import annotations

import argparse
import errno
import heapq
import ipaddress
import json
import math
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable

DEFAULT_PORT = 7777
DEFAULT_TARGETS = ("198.18.0.1", "198.18.0.2", "198.18.0.3")
STREAM_MAX_DURATION = 600.0
MAX_GAPS_KEPT = 100  # per flow; the count is exact, the list is truncated
MAX_CHANGES_KEPT = 100
UPLINK_NET = ipaddress.ip_network("100.64.0.0/10")
INET_NET = ipaddress.ip_network("198.18.0.0/15")
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)

_now = time.monotonic


# ------------------------------------------------------------------------------------------
# small pure helpers (unit-tested)


def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    vals = sorted(values)
    if not vals:
        return None
    k = max(1, math.ceil(p / 100.0 * len(vals)))
    return vals[min(k, len(vals)) - 1]


def parse_uplink_map(text: str | dict | None) -> dict[str, str]:
    """'isp1=100.64.1.2,isp2=100.64.2.2' (or a dict either way round) -> {address: name}."""
    if not text:
        return {}
    out: dict[str, str] = {}
    items = text.items() if isinstance(text, dict) else (
        part.split("=", 1) for part in re.split(r"[,\s]+", text.strip()) if part)
    for a, b in items:
        a, b = str(a).strip(), str(b).strip()
        if all(map(_is_ip, a.split("|"))) and not all(map(_is_ip, b.split("|"))):
            a, b = b, a
        addrs = b.split("|")  # isp1=100.64.1.2|100.64.9.2 for several addresses
        if not all(map(_is_ip, addrs)):
            raise ValueError(f"uplink map entry {a}={b}: no IP address")
        for addr in addrs:
            out[str(ipaddress.ip_address(addr))] = a
    return out


def parse_targets(text: str | Iterable[str] | None) -> list[str]:
    if not text:
        return list(DEFAULT_TARGETS)
    parts = re.split(r"[,\s]+", text.strip()) if isinstance(text, str) else list(text)
    out = [str(ipaddress.ip_address(p)) for p in parts if p]
    if not out:
        raise ValueError("no targets")
    return out


def _is_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
        return True
    except ValueError:
        return False


def _errname(err: int | None) -> str:
    return {
        errno.ECONNREFUSED: "refused",
        errno.EHOSTUNREACH: "host-unreachable",
        errno.ENETUNREACH: "net-unreachable",
        errno.ETIMEDOUT: "timeout",
        errno.ECONNRESET: "reset",
        errno.EPIPE: "reset",
        errno.ECONNABORTED: "aborted",
    }.get(err or 0, errno.errorcode.get(err or 0, f"errno{err}").lower())


def _msg(flow: int, seq: int) -> bytes:
    """One request: {"flow": id, "seq": n, "t": <client monotonic time>} (hot path)."""
    return b'{"flow":%d,"seq":%d,"t":%.6f}' % (flow, seq, _now())


def _parse_reply(data: bytes) -> dict | None:
    try:
        obj = json.loads(data.decode("utf-8", "replace").strip())
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "seen" in obj else None


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _uplink(umap: dict[str, str], addr: str | None) -> str:
    if addr is None:
        return "none"
    return umap.get(addr, f"unmapped:{addr}")


def _count(d: dict, key, n=1):
    d[key] = d.get(key, 0) + n


class GapTracker:
    """Gaps between consecutive replies of one flow.

    Times are seconds on any monotonic scale. The run starts at ``start`` (first send): the wait
    for the first reply counts as a gap too, so a flow that is dead from the start shows up.
    ``finish(end)`` closes the run at ``end`` (when sending stopped): if the last reply is older
    than the threshold the flow ends in an *open* gap, i.e. it never recovered.
    """

    def __init__(self, start: float, threshold_ms: float, max_kept: int = MAX_GAPS_KEPT):
        self.start = start
        self.threshold = threshold_ms / 1000.0
        self.max_kept = max_kept
        self.last = start
        self.replies = 0
        self.max_gap = 0.0
        self.max_gap_at = None  # start of the largest gap
        self.gaps: list[dict] = []
        self.n_gaps = 0
        self.open_gap_ms: float | None = None

    def reply(self, t: float) -> None:
        gap = t - self.last
        if gap > self.max_gap:
            self.max_gap, self.max_gap_at = gap, self.last
        if gap > self.threshold:
            self.n_gaps += 1
            if len(self.gaps) < self.max_kept:
                self.gaps.append({"start_s": round(self.last - self.start, 4),
                                  "end_s": round(t - self.start, 4),
                                  "ms": round(gap * 1000.0, 1)})
        if t > self.last:
            self.last = t
        self.replies += 1

    def finish(self, end: float) -> None:
        tail = end - self.last
        if tail > self.threshold or self.replies == 0:
            tail = max(tail, 0.0)
            self.open_gap_ms = round(tail * 1000.0, 1)
            if tail > self.max_gap:
                self.max_gap, self.max_gap_at = tail, self.last
            self.n_gaps += 1
            if len(self.gaps) < self.max_kept:
                self.gaps.append({"start_s": round(self.last - self.start, 4), "end_s": None,
                                  "ms": self.open_gap_ms, "open": True})

    @property
    def recovered(self) -> bool:
        return self.replies > 0 and self.open_gap_ms is None

    def as_dict(self) -> dict:
        return {
            "max_gap_ms": round(self.max_gap * 1000.0, 1),
            "max_gap_start_s": None if self.max_gap_at is None
            else round(self.max_gap_at - self.start, 4),
            "gaps_over_threshold": self.n_gaps,
            "gaps": self.gaps,
            "recovered": self.recovered,
        }


class SourceTracker:
    """Sequence of source addresses the reflector saw for one flow (changes only)."""

    def __init__(self, start: float, umap: dict[str, str]):
        self.start = start
        self.umap = umap
        self.current: str | None = None
        self.changes: list[dict] = []
        self.n_changes = 0  # changes after the first source
        self.first: dict | None = None

    def seen(self, t: float, addr: str, sport) -> None:
        if addr == self.current:
            return
        rec = {"t_s": round(t - self.start, 4), "seen": addr, "sport": sport}
        if self.umap:
            rec["uplink"] = _uplink(self.umap, addr)
        if self.current is None:
            self.first = rec
        else:
            self.n_changes += 1
        self.current = addr
        if len(self.changes) < MAX_CHANGES_KEPT:
            self.changes.append(rec)


def summarize_flows(per_flow: list[dict], umap: dict[str, str]) -> dict:
    """Overall summary of stream()/tcp_hold() per-flow reports (pure)."""
    max_gaps = [f["max_gap_ms"] for f in per_flow]
    by_src: dict[str, int] = {}
    by_first: dict[str, int] = {}
    for f in per_flow:
        if f.get("last_source"):
            _count(by_src, f["last_source"])
        if f.get("first_source"):
            _count(by_first, f["first_source"])
    out = {
        "max_gap_ms": max(max_gaps) if max_gaps else None,
        "p50_max_gap_ms": percentile(max_gaps, 50),
        "p95_max_gap_ms": percentile(max_gaps, 95),
        "flows_with_gaps": sum(1 for f in per_flow if f["gaps_over_threshold"]),
        "not_recovered": [f["flow"] for f in per_flow if not f["recovered"]],
        "never_answered": [f["flow"] for f in per_flow if not f["received"]],
        "source_changes": sum(f["source_changes"] for f in per_flow),
        "flows_changed_source": sum(1 for f in per_flow if f["source_changes"]),
        "by_first_source": by_first,
        "by_last_source": by_src,
    }
    if umap:
        out["by_first_uplink"] = _remap(by_first, umap)
        out["by_last_uplink"] = _remap(by_src, umap)
    return out


def _remap(by_addr: dict[str, int], umap: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for addr, n in by_addr.items():
        _count(out, _uplink(umap, addr), n)
    return out


def _stopper(stop) -> Callable[[], bool]:
    if stop is None:
        return lambda: False
    if hasattr(stop, "is_set"):
        return stop.is_set
    return stop


def _write_ready(path: str | None, **info) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(dict(info, pid=os.getpid()), fh)
    os.replace(tmp, path)


def _new_socket(target: str, kind: int, bind: str | None) -> socket.socket:
    s = socket.socket(_family(target), kind)
    s.setblocking(False)
    if bind:
        s.bind((bind, 0))
    return s


# ------------------------------------------------------------------------------------------
# burst


class _BurstFlow:
    __slots__ = ("i", "proto", "target", "sock", "deadline", "tries", "state", "t_sent",
                 "t_start", "buf", "result")

    def __init__(self, i, proto, target):
        self.i, self.proto, self.target = i, proto, target
        self.sock = None
        self.deadline = 0.0
        self.tries = 0
        self.state = "new"
        self.t_sent = self.t_start = 0.0
        self.buf = b""
        self.result: dict | None = None


def burst(targets: Iterable[str] | str | None = None, flows: int = 100, proto: str = "udp",
          dst_port: int = DEFAULT_PORT, concurrency: int = 64, udp_timeout: float = 1.0,
          udp_retries: int = 2, tcp_timeout: float = 2.0,
          uplink_map: dict | str | None = None, details: bool = False,
          bind: str | None = None) -> dict:
    """N short flows, each on a new socket; returns counts by source/uplink/target/proto.

    proto: "udp", "tcp" or "both" (flows alternate udp/tcp; ``flows`` is the total).
    Every flow is bounded: UDP by udp_timeout * (udp_retries + 1), TCP by 2 * tcp_timeout.
    """
    targets = parse_targets(targets)
    umap = parse_uplink_map(uplink_map)
    if proto not in ("udp", "tcp", "both"):
        raise ValueError("proto must be udp, tcp or both")
    flows = max(0, int(flows))
    concurrency = max(1, int(concurrency))
    protos = ["udp", "tcp"] if proto == "both" else [proto]
    queue = [_BurstFlow(i, protos[i % len(protos)], targets[i % len(targets)])
             for i in range(flows)]
    queue.reverse()
    active: dict[int, _BurstFlow] = {}
    done: list[_BurstFlow] = []
    sel = selectors.DefaultSelector()
    t0 = _now()

    def finish(f: _BurstFlow, ok: bool, error: str | None = None, reply: dict | None = None):
        now = _now()
        res = {"flow": f.i, "proto": f.proto, "target": f.target, "ok": ok,
               "elapsed_ms": round((now - f.t_start) * 1000, 2)}
        if f.sock is not None:
            try:
                res["local"] = "%s:%d" % f.sock.getsockname()[:2]
            except OSError:
                pass
            try:
                sel.unregister(f.sock)
            except (KeyError, ValueError):
                pass
            f.sock.close()
            active.pop(id(f), None)
        if f.proto == "udp":
            res["tries"] = f.tries
        if ok and reply is not None:
            res.update(seen=reply.get("seen"), sport=reply.get("sport"), dst=reply.get("dst"),
                       rtt_ms=round((now - f.t_sent) * 1000, 3))
            if umap:
                res["uplink"] = _uplink(umap, reply.get("seen"))
        if error:
            res["error"] = error
        f.result = res
        f.state = "done"
        done.append(f)

    def udp_send(f: _BurstFlow):
        f.tries += 1
        f.t_sent = _now()
        f.deadline = f.t_sent + udp_timeout
        try:
            f.sock.send(_msg(f.i, f.tries - 1))
        except BlockingIOError:
            pass
        except OSError as exc:
            finish(f, False, _errname(exc.errno))

    def start(f: _BurstFlow):
        f.t_start = _now()
        try:
            if f.proto == "udp":
                f.sock = _new_socket(f.target, socket.SOCK_DGRAM, bind)
                f.sock.connect((f.target, dst_port))
                active[id(f)] = f
                sel.register(f.sock, selectors.EVENT_READ, f)
                udp_send(f)
            else:
                f.sock = _new_socket(f.target, socket.SOCK_STREAM, bind)
                active[id(f)] = f
                rc = f.sock.connect_ex((f.target, dst_port))
                if rc not in (0, errno.EINPROGRESS):
                    finish(f, False, _errname(rc))
                    return
                f.state = "connecting"
                f.deadline = f.t_start + tcp_timeout
                sel.register(f.sock, selectors.EVENT_WRITE, f)
        except OSError as exc:
            finish(f, False, _errname(exc.errno))

    def on_event(f: _BurstFlow, mask):
        if f.state == "done":
            return
        if f.proto == "udp":
            try:
                data = f.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                finish(f, False, _errname(exc.errno))
                return
            rep = _parse_reply(data)
            if rep is not None and rep.get("flow") == f.i:
                finish(f, True, reply=rep)
            return
        if f.state == "connecting":
            err = f.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                finish(f, False, _errname(err))
                return
            f.t_sent = _now()
            try:
                f.sock.send(_msg(f.i, 0) + b"\n")
            except OSError as exc:
                finish(f, False, _errname(exc.errno))
                return
            f.state = "waiting"
            f.deadline = f.t_sent + tcp_timeout
            sel.modify(f.sock, selectors.EVENT_READ, f)
            return
        try:
            data = f.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            finish(f, False, _errname(exc.errno))
            return
        if not data:
            finish(f, False, "eof")
            return
        f.buf += data
        if b"\n" in f.buf:
            rep = _parse_reply(f.buf.split(b"\n", 1)[0])
            finish(f, rep is not None, None if rep else "bad-reply", rep)
        elif len(f.buf) > 65536:
            finish(f, False, "bad-reply")

    try:
        while queue or active:
            while queue and len(active) < concurrency:
                start(queue.pop())
            if not active:
                continue
            now = _now()
            nearest = min(f.deadline for f in active.values())
            for key, mask in sel.select(max(0.0, nearest - now)):
                on_event(key.data, mask)
            now = _now()
            for f in [f for f in active.values() if f.deadline <= now]:
                if f.proto == "udp" and f.tries <= udp_retries:
                    udp_send(f)
                else:
                    finish(f, False, "timeout" if f.proto == "udp" or f.state == "waiting"
                           else "connect-timeout")
    finally:
        for f in list(active.values()):
            finish(f, False, "aborted")
        sel.close()

    results = sorted((f.result for f in done), key=lambda r: r["flow"])
    out = burst_summary(results, umap)
    out["elapsed_s"] = round(_now() - t0, 3)
    out["params"] = {"proto": proto, "targets": targets, "dst_port": dst_port,
                     "concurrency": concurrency, "udp_timeout": udp_timeout,
                     "udp_retries": udp_retries, "tcp_timeout": tcp_timeout}
    if details:
        out["per_flow"] = results
    return out


def burst_summary(results: list[dict], umap: dict[str, str]) -> dict:
    """Aggregate per-flow burst results (pure)."""
    by_source: dict[str, int] = {}
    by_target: dict[str, dict] = {}
    by_proto: dict[str, dict] = {}
    errors: dict[str, int] = {}
    rtts = []
    for r in results:
        key = "ok" if r["ok"] else "failed"
        by_target.setdefault(r["target"], {"ok": 0, "failed": 0})[key] += 1
        by_proto.setdefault(r["proto"], {"ok": 0, "failed": 0})[key] += 1
        if r["ok"]:
            _count(by_source, r["seen"])
            rtts.append(r["rtt_ms"])
        else:
            _count(errors, r.get("error", "unknown"))
    ok = sum(1 for r in results if r["ok"])
    out = {"flows": len(results), "ok": ok, "failed": len(results) - ok,
           "by_source": dict(sorted(by_source.items())), "by_target": by_target,
           "by_proto": by_proto, "errors": errors,
           "rtt_ms": {"p50": percentile(rtts, 50), "p95": percentile(rtts, 95),
                      "max": max(rtts) if rtts else None}}
    if umap:
        out["by_uplink"] = dict(sorted(_remap(by_source, umap).items()))
    return out


# ------------------------------------------------------------------------------------------
# stream


class _StreamFlow:
    __slots__ = ("i", "target", "sock", "sent", "received", "late", "send_errors", "max_seq",
                 "gaps", "src", "rtt_sum", "rtt_max", "local", "next_send", "errors")

    def __init__(self, i, target):
        self.i, self.target = i, target
        self.sent = self.received = self.late = self.send_errors = 0
        self.max_seq = -1
        self.rtt_sum = self.rtt_max = 0.0
        self.errors: dict[str, int] = {}


def stream(targets: Iterable[str] | str | None = None, flows: int = 50,
           interval_ms: float = 5.0, duration: float = 10.0, dst_port: int = DEFAULT_PORT,
           gap_threshold_ms: float = 100.0, uplink_map: dict | str | None = None,
           bind: str | None = None, stop=None, ready_file: str | None = None,
           drain_ms: float = 250.0, details: bool = True) -> dict:
    """M UDP flows sending every interval_ms for duration s (0 = until stop; cap 600 s).

    ``stop`` is a threading.Event or a callable returning True to end the run early (the report
    is still produced). Gap/source times in the report are seconds since the first send
    (``started_at`` gives that moment as wall-clock time).
    """
    targets = parse_targets(targets)
    umap = parse_uplink_map(uplink_map)
    should_stop = _stopper(stop)
    flows = max(1, int(flows))
    interval = max(0.0005, float(interval_ms) / 1000.0)
    duration = float(duration)
    capped = duration <= 0 or duration > STREAM_MAX_DURATION
    if capped:
        duration = STREAM_MAX_DURATION
    sel = selectors.DefaultSelector()
    fl: list[_StreamFlow] = []
    try:
        for i in range(flows):
            f = _StreamFlow(i, targets[i % len(targets)])
            f.sock = _new_socket(f.target, socket.SOCK_DGRAM, bind)
            f.sock.connect((f.target, dst_port))
            f.local = "%s:%d" % f.sock.getsockname()[:2]
            sel.register(f.sock, selectors.EVENT_READ, f)
            fl.append(f)
        wall0 = time.time()
        t0 = _now()
        end = t0 + duration
        heap = []
        for f in fl:  # spread the flows evenly over one interval
            f.next_send = t0 + interval * f.i / flows
            f.gaps = GapTracker(f.next_send, gap_threshold_ms)
            f.src = SourceTracker(t0, umap)
            heap.append((f.next_send, f.i))
        heapq.heapify(heap)
        _write_ready(ready_file, started_at=wall0, flows=flows)
        missed = 0
        stop_reason = "duration"

        def receive(f: _StreamFlow):
            for _ in range(64):
                try:
                    data = f.sock.recv(65536)
                except BlockingIOError:
                    return
                except OSError as exc:  # ICMP errors reported on the connected socket
                    _count(f.errors, _errname(exc.errno))
                    continue
                now = _now()
                rep = _parse_reply(data)
                if rep is None or rep.get("flow") != f.i:
                    continue
                seq = rep.get("seq", -1)
                if seq <= f.max_seq:
                    f.late += 1
                    continue
                f.max_seq = seq
                f.received += 1
                f.gaps.reply(now)
                f.src.seen(now, rep.get("seen"), rep.get("sport"))
                if isinstance(rep.get("t"), (int, float)):
                    rtt = now - rep["t"]
                    f.rtt_sum += rtt
                    if rtt > f.rtt_max:
                        f.rtt_max = rtt

        while True:
            now = _now()
            if now >= end:
                break
            if should_stop():
                stop_reason = "stopped"
                break
            # send everything due (with 0.3 ms slack to batch wakeups)
            while heap and heap[0][0] <= now + 0.0003:
                due, i = heap[0]
                f = fl[i]
                try:
                    f.sock.send(_msg(i, f.sent))
                except BlockingIOError:
                    f.send_errors += 1
                except OSError as exc:
                    f.send_errors += 1
                    _count(f.errors, _errname(exc.errno))
                f.sent += 1
                nxt = due + interval
                if nxt <= now:  # fell behind: skip, don't burst
                    skip = int((now - nxt) / interval) + 1
                    missed += skip
                    nxt += skip * interval
                heapq.heapreplace(heap, (nxt, i))
            timeout = max(0.0, min(heap[0][0], end) - _now())
            for key, _mask in sel.select(min(timeout, 0.05)):
                receive(key.data)
        t_stop = _now()
        drain_end = t_stop + max(0.0, drain_ms) / 1000.0
        while True:
            left = drain_end - _now()
            if left <= 0 or all(f.received + f.late >= f.sent for f in fl):
                break
            for key, _mask in sel.select(left):
                receive(key.data)
    finally:
        for f in fl:
            f.sock.close()
        sel.close()

    per_flow = []
    for f in fl:
        f.gaps.finish(t_stop)
        rec = {"flow": f.i, "target": f.target, "local": f.local, "sent": f.sent,
               "received": f.received, "lost": max(0, f.sent - f.received), "late": f.late,
               **f.gaps.as_dict(),
               "first_source": f.src.first["seen"] if f.src.first else None,
               "last_source": f.src.current, "source_changes": f.src.n_changes,
               "sources": f.src.changes,
               "rtt_ms": {"avg": round(f.rtt_sum / f.received * 1000, 3) if f.received
                          else None, "max": round(f.rtt_max * 1000, 3)}}
        if f.errors:
            rec["errors"] = f.errors
        per_flow.append(rec)
    sent = sum(f.sent for f in fl)
    recv = sum(f.received for f in fl)
    summary = {"flows": flows, "sent": sent, "received": recv,
               "loss_pct": round(100.0 * (sent - recv) / sent, 3) if sent else None,
               "duration_s": round(t_stop - t0, 3), "missed_sends": missed,
               **summarize_flows(per_flow, umap)}
    out = {"mode": "stream", "started_at": round(wall0, 6), "stop_reason": stop_reason,
           "params": {"targets": targets, "dst_port": dst_port, "interval_ms": interval_ms,
                      "duration": duration, "capped": capped,
                      "gap_threshold_ms": gap_threshold_ms},
           "summary": summary}
    if details:
        out["per_flow"] = per_flow
    return out


# ------------------------------------------------------------------------------------------
# tcp-hold


class _HoldConn:
    __slots__ = ("i", "target", "sock", "state", "t_open", "t_est", "deadline", "inbuf",
                 "outbuf", "sent", "received", "gaps", "src", "broken_at", "reason", "local",
                 "next_send", "last_rx")

    def __init__(self, i, target):
        self.i, self.target = i, target
        self.state = "connecting"
        self.inbuf = self.outbuf = b""
        self.sent = self.received = 0
        self.gaps = self.src = self.broken_at = self.reason = self.local = None
        self.t_est = None


def tcp_hold(targets: Iterable[str] | str | None = None, conns: int = 20,
             interval_ms: float = 100.0, duration: float = 10.0, dst_port: int = DEFAULT_PORT,
             gap_threshold_ms: float = 500.0, break_timeout_ms: float = 5000.0,
             connect_timeout: float = 2.0, uplink_map: dict | str | None = None,
             bind: str | None = None, stop=None, ready_file: str | None = None,
             details: bool = True) -> dict:
    """M long-lived TCP connections, each sending a line every interval_ms.

    A connection is declared broken on reset/eof/error, or ``timeout`` when no reply came for
    break_timeout_ms (TCP_USER_TIMEOUT is set to the same value). Broken ones are not reopened.
    """
    targets = parse_targets(targets)
    umap = parse_uplink_map(uplink_map)
    should_stop = _stopper(stop)
    conns = max(1, int(conns))
    interval = max(0.001, float(interval_ms) / 1000.0)
    duration = float(duration)
    if duration <= 0 or duration > STREAM_MAX_DURATION:
        duration = STREAM_MAX_DURATION
    brk = max(0.05, break_timeout_ms / 1000.0)
    sel = selectors.DefaultSelector()
    cl: list[_HoldConn] = []
    wall0 = time.time()
    t0 = _now()
    end = t0 + duration
    stop_reason = "duration"

    def broken(c: _HoldConn, reason: str):
        if c.state == "closed":
            return
        if c.state == "connecting":
            c.reason = reason if reason != "timeout" else "connect-timeout"
        else:
            c.reason = reason
            c.broken_at = _now()
        c.state = "closed"
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def on_event(c: _HoldConn, mask):
        if c.state == "closed":
            return
        now = _now()
        if c.state == "connecting":
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                broken(c, _errname(err))
                return
            c.state = "up"
            c.t_est = now
            c.local = "%s:%d" % c.sock.getsockname()[:2]
            c.gaps = GapTracker(now, gap_threshold_ms)
            c.src = SourceTracker(t0, umap)
            c.last_rx = now
            c.next_send = now
            sel.modify(c.sock, selectors.EVENT_READ, c)
            return
        if mask & selectors.EVENT_READ:
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError as exc:
                broken(c, _errname(exc.errno))
                return
            if data == b"":
                broken(c, "eof")
                return
            if data:
                c.inbuf += data
                while b"\n" in c.inbuf:
                    line, c.inbuf = c.inbuf.split(b"\n", 1)
                    rep = _parse_reply(line)
                    if rep is None:
                        continue
                    c.received += 1
                    c.last_rx = now
                    c.gaps.reply(now)
                    c.src.seen(now, rep.get("seen"), rep.get("sport"))
        if mask & selectors.EVENT_WRITE:
            flush(c)

    def flush(c: _HoldConn):
        if c.outbuf:
            try:
                n = c.sock.send(c.outbuf)
                c.outbuf = c.outbuf[n:]
            except BlockingIOError:
                pass
            except OSError as exc:
                broken(c, _errname(exc.errno))
                return
        if c.state == "up":
            sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.outbuf else 0),
                       c)

    try:
        for i in range(conns):
            c = _HoldConn(i, targets[i % len(targets)])
            c.sock = _new_socket(c.target, socket.SOCK_STREAM, bind)
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                c.sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(brk * 1000))
            except OSError:
                pass
            cl.append(c)
            c.t_open = _now()
            c.deadline = c.t_open + connect_timeout
            rc = c.sock.connect_ex((c.target, dst_port))
            if rc not in (0, errno.EINPROGRESS):
                broken(c, _errname(rc))
                continue
            sel.register(c.sock, selectors.EVENT_WRITE, c)
        _write_ready(ready_file, started_at=wall0, conns=conns)
        while True:
            now = _now()
            if now >= end:
                break
            if should_stop():
                stop_reason = "stopped"
                break
            live = [c for c in cl if c.state != "closed"]
            if not live:
                stop_reason = "all-closed"
                break
            nearest = end
            for c in live:
                if c.state == "connecting":
                    if now >= c.deadline:
                        broken(c, "timeout")
                        continue
                    nearest = min(nearest, c.deadline)
                    continue
                if now - c.last_rx > brk and c.sent > c.received:
                    broken(c, "timeout")
                    continue
                if now >= c.next_send:
                    if len(c.outbuf) < 65536:
                        c.outbuf += _msg(c.i, c.sent) + b"\n"
                        c.sent += 1
                    c.next_send += interval
                    if c.next_send <= now:
                        c.next_send = now + interval
                    flush(c)
                nearest = min(nearest, c.next_send, c.last_rx + brk)
            for key, mask in sel.select(max(0.0, min(nearest - _now(), 0.05))):
                on_event(key.data, mask)
        t_stop = _now()
        drain_end = t_stop + 0.25
        while _now() < drain_end and any(c.state == "up" and c.received < c.sent for c in cl):
            for key, mask in sel.select(max(0.0, drain_end - _now())):
                on_event(key.data, mask)
    finally:
        for c in cl:
            if c.state != "closed":
                try:
                    sel.unregister(c.sock)
                except (KeyError, ValueError):
                    pass
                c.sock.close()
        sel.close()

    per = []
    for c in cl:
        rec = {"conn": c.i, "flow": c.i, "target": c.target, "local": c.local,
               "established": c.t_est is not None,
               "established_at_s": None if c.t_est is None else round(c.t_est - t0, 4),
               "sent": c.sent, "received": c.received}
        if c.gaps is not None:
            if c.reason is None:
                c.gaps.finish(t_stop)
            else:
                c.gaps.finish(c.broken_at)
            rec.update(c.gaps.as_dict())
            rec.update(first_source=c.src.first["seen"] if c.src.first else None,
                       first_sport=c.src.first["sport"] if c.src.first else None,
                       last_source=c.src.current, source_changes=c.src.n_changes,
                       sources=c.src.changes)
            if umap:
                rec["first_uplink"] = _uplink(umap, rec["first_source"])
        else:
            rec.update(max_gap_ms=0.0, gaps_over_threshold=0, gaps=[], recovered=False,
                       first_source=None, last_source=None, source_changes=0, sources=[])
        rec["broken"] = c.reason is not None
        rec["reason"] = c.reason
        rec["broken_at_s"] = None if c.broken_at is None else round(c.broken_at - t0, 4)
        if c.reason is not None:
            rec["recovered"] = False
        per.append(rec)
    reasons: dict[str, int] = {}
    for r in per:
        if r["reason"]:
            _count(reasons, r["reason"])
    summary = {"conns": conns, "established": sum(1 for r in per if r["established"]),
               "broken": sum(1 for r in per if r["broken"] and r["established"]),
               "connect_failed": sum(1 for r in per if not r["established"]),
               "alive_at_end": sum(1 for r in per if not r["broken"]),
               "reasons": reasons, "duration_s": round(t_stop - t0, 3),
               **summarize_flows(per, umap)}
    out = {"mode": "tcp-hold", "started_at": round(wall0, 6), "stop_reason": stop_reason,
           "params": {"targets": targets, "dst_port": dst_port, "interval_ms": interval_ms,
                      "duration": duration, "gap_threshold_ms": gap_threshold_ms,
                      "break_timeout_ms": break_timeout_ms},
           "summary": summary}
    if details:
        out["per_conn"] = per
    return out


# ------------------------------------------------------------------------------------------
# running inside namespaces

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ns_prefix(ns) -> list[str]:
    if isinstance(ns, int) or (isinstance(ns, str) and ns.isdigit()):
        return ["nsenter", "--target", str(ns), "--net", "--"]
    return ["ip", "netns", "exec", str(ns)]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = _PKG_PARENT + (os.pathsep + env["PYTHONPATH"]
                                       if env.get("PYTHONPATH") else "")
    return env


def _parse_output(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON in output: {stdout[-500:]!r}")


def _bound_for(argv: list[str]) -> float:
    """Generous wall-clock bound for one CLI invocation (used as subprocess timeout)."""
    ns = _parse_args(argv)
    if ns.mode == "burst":
        per = max(ns.udp_timeout * (ns.udp_retries + 1), 2 * ns.tcp_timeout)
        return per * math.ceil(max(1, ns.flows) / max(1, ns.concurrency)) + 30
    dur = ns.duration if 0 < ns.duration <= STREAM_MAX_DURATION else STREAM_MAX_DURATION
    return dur + 30


def run_in_netns(ns: str | int, argv: list[str], timeout: float | None = None,
                 python: str | None = None) -> dict:
    """Run ``python -m mwlab.traffic ARGV`` inside namespace NS (name, or a pid for nsenter)
    and return its JSON. Raises RuntimeError when it fails."""
    argv = [str(a) for a in argv]
    cmd = _ns_prefix(ns) + [python or sys.executable, "-m", "mwlab.traffic", *argv]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(),
                         timeout=timeout or _bound_for(argv))
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return _parse_output(res.stdout)


class Background:
    """A traffic client running in the background (see start_in_netns)."""

    def __init__(self, cmd: list[str], ready_file: str, tmpdir: str):
        self.cmd = cmd
        self.ready_file = ready_file
        self._tmpdir = tmpdir
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=_env())
        self.result: dict | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 10.0) -> dict:
        """Block until the client has opened its sockets and started sending."""
        deadline = _now() + timeout
        while _now() < deadline:
            if os.path.exists(self.ready_file):
                with open(self.ready_file, encoding="utf-8") as fh:
                    return json.load(fh)
            if self.proc.poll() is not None:
                raise RuntimeError(f"traffic client exited early: {self.proc.stderr.read()}")
            time.sleep(0.01)
        raise TimeoutError("traffic client not ready")

    def stop(self, timeout: float = 15.0) -> dict:
        """SIGTERM the client (if still running) and return its report."""
        if self.result is not None:
            return self.result
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._cleanup()
        if self.proc.returncode != 0:
            raise RuntimeError(f"traffic client failed ({self.proc.returncode}): {err[-2000:]}")
        self.result = _parse_output(out)
        return self.result

    def wait(self, timeout: float | None = None) -> dict:
        """Wait for the run to end by itself (duration) and return its report."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is not None:
                self._cleanup()
        if self.proc.returncode != 0:
            raise RuntimeError(f"traffic client failed ({self.proc.returncode}): {err[-2000:]}")
        self.result = _parse_output(out)
        return self.result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._cleanup()

    def _cleanup(self):
        for p in (self.ready_file, self.ready_file + ".tmp"):
            try:
                os.unlink(p)
            except OSError:
                pass
        try:
            os.rmdir(self._tmpdir)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def start_in_netns(ns: str | int, argv: list[str], python: str | None = None,
                   wait_ready: float | None = 10.0) -> Background:
    """Start ``stream``/``tcp-hold`` in the background inside NS; returns a Background whose
    stop() sends SIGTERM and returns the report."""
    tmpdir = tempfile.mkdtemp(prefix="mwlab-traffic-")
    ready = os.path.join(tmpdir, "ready.json")
    argv = [str(a) for a in argv] + ["--ready-file", ready]
    cmd = _ns_prefix(ns) + [python or sys.executable, "-m", "mwlab.traffic", *argv]
    bg = Background(cmd, ready, tmpdir)
    if wait_ready:
        try:
            bg.wait_ready(wait_ready)
        except Exception:
            bg.kill()
            raise
    return bg


# ------------------------------------------------------------------------------------------
# CLI inside the namespace


def _common(p: argparse.ArgumentParser):
    p.add_argument("--targets", help="comma-separated addresses (default 198.18.0.1-3)")
    p.add_argument("--dst-port", "--port", dest="dst_port", type=int, default=DEFAULT_PORT)
    p.add_argument("--uplink-map", help="name=addr,... to count per uplink")
    p.add_argument("--bind", help="source address to bind")
    p.add_argument("--no-details", dest="details", action="store_false")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mwlab.traffic")
    sub = ap.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("burst", help="N short flows")
    _common(b)
    b.add_argument("--flows", type=int, default=100)
    b.add_argument("--proto", choices=("udp", "tcp", "both"), default="udp")
    b.add_argument("--concurrency", type=int, default=64)
    b.add_argument("--udp-timeout", type=float, default=1.0)
    b.add_argument("--udp-retries", type=int, default=2)
    b.add_argument("--tcp-timeout", type=float, default=2.0)
    b.add_argument("--details", dest="details", action="store_true", default=False)
    s = sub.add_parser("stream", help="M long UDP flows, gaps and source changes")
    _common(s)
    s.add_argument("--flows", type=int, default=50)
    s.add_argument("--interval-ms", type=float, default=5.0)
    s.add_argument("--duration", type=float, default=10.0, help="seconds; 0 = until SIGTERM")
    s.add_argument("--gap-threshold-ms", type=float, default=100.0)
    s.add_argument("--drain-ms", type=float, default=250.0)
    s.add_argument("--ready-file")
    t = sub.add_parser("tcp-hold", help="M long-lived TCP connections")
    _common(t)
    t.add_argument("--conns", "--flows", dest="flows", type=int, default=20)
    t.add_argument("--interval-ms", type=float, default=100.0)
    t.add_argument("--duration", type=float, default=10.0, help="seconds; 0 = until SIGTERM")
    t.add_argument("--gap-threshold-ms", type=float, default=500.0)
    t.add_argument("--break-timeout-ms", type=float, default=5000.0)
    t.add_argument("--connect-timeout", type=float, default=2.0)
    t.add_argument("--ready-file")
    return ap


def _parse_args(argv):
    return _parser().parse_args(argv)


def run_args(ns: argparse.Namespace, stop=None) -> dict:
    common = dict(targets=ns.targets, dst_port=ns.dst_port, uplink_map=ns.uplink_map,
                  bind=ns.bind, details=ns.details)
    if ns.mode == "burst":
        return burst(flows=ns.flows, proto=ns.proto, concurrency=ns.concurrency,
                     udp_timeout=ns.udp_timeout, udp_retries=ns.udp_retries,
                     tcp_timeout=ns.tcp_timeout, **common)
    if ns.mode == "stream":
        return stream(flows=ns.flows, interval_ms=ns.interval_ms, duration=ns.duration,
                      gap_threshold_ms=ns.gap_threshold_ms, drain_ms=ns.drain_ms, stop=stop,
                      ready_file=ns.ready_file, **common)
    return tcp_hold(conns=ns.flows, interval_ms=ns.interval_ms, duration=ns.duration,
                    gap_threshold_ms=ns.gap_threshold_ms,
                    break_timeout_ms=ns.break_timeout_ms, connect_timeout=ns.connect_timeout,
                    stop=stop, ready_file=ns.ready_file, **common)


def main(argv=None) -> int:
    ns = _parse_args(argv)
    flag = {"stop": False}

    def _sig(_signo, _frame):
        flag["stop"] = True

    signal.signal(signal.SIGTERM, _sig)
    signal.signal(signal.SIGINT, _sig)
    try:
        out = run_args(ns, stop=lambda: flag["stop"])
    except (OSError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    json.dump(out, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


# ------------------------------------------------------------------------------------------
# lab CLI integration (mwlab.__main__ calls register(subparsers))

STATE_PATH = "/run/mwlab/{lab}/state.json"


def _load_state(lab: str, path: str | None = None) -> dict:
    try:
        with open(path or STATE_PATH.format(lab=lab), encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _walk(obj, path=()):
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, path + (str(k),))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, path + (str(i),))


def _ip_in(value, net) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        ip = ipaddress.ip_interface(value).ip
    except ValueError:
        return None
    return str(ip) if ip in net else None


def targets_from_state(state: dict) -> list[str]:
    """Internet hosts from the lab state: a list of 198.18/15 addresses under a key named
    targets / hosts / internet_hosts / inet_hosts. Empty when nothing fits."""
    for path, val in _walk(state):
        if path and path[-1].lower() in ("targets", "traffic_targets", "internet_hosts",
                                         "inet_hosts", "hosts") and isinstance(val, list):
            addrs = []
            for item in val:
                if isinstance(item, dict):
                    item = next((v for v in item.values() if _ip_in(v, INET_NET)), None)
                a = _ip_in(item, INET_NET)
                if a:
                    addrs.append(a)
            if addrs:
                return addrs
    return []


_GOOD_KEYS = ("gw_address", "gw_addr", "gw_ip", "local", "local_address", "address", "addr",
              "ip", "source", "src")
_BAD_KEY = re.compile(r"peer|router|isp|gateway|via|nexthop|next_hop|remote|upstream", re.I)


def uplink_map_from_state(state: dict, site: str) -> dict[str, str]:
    """address -> uplink name from a state file of unknown layout (best effort)."""
    root = None
    for _path, val in _walk(state):  # the first "sites" (dict by name or list of {name:})
        if not isinstance(val, dict) or "sites" not in val:
            continue
        sites = val["sites"]
        if isinstance(sites, dict) and isinstance(sites.get(site), dict):
            root = sites[site]
        elif isinstance(sites, list):
            root = next((s for s in sites if isinstance(s, dict) and s.get("name") == site),
                        None)
        if root is not None:
            break
    if root is None:
        root = state.get(site) if isinstance(state.get(site), dict) else state
    out: dict[str, str] = {}
    for path, val in _walk(root):
        if not isinstance(val, dict):
            continue
        name = val.get("name") or val.get("uplink")
        if not isinstance(name, str):
            if path and path[-2:-1] == ("uplinks",) and not path[-1].isdigit():
                name = path[-1]
            else:
                continue
        for k in _GOOD_KEYS:
            if k in val and not _BAD_KEY.search(k):
                a = _ip_in(val[k], UPLINK_NET)
                if a:
                    out[a] = name
                    break
    return out


def _ip_json(args: list[str]):
    try:
        res = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if res.returncode != 0 or not res.stdout.strip():
        return []
    try:
        return json.loads(res.stdout)
    except ValueError:
        return []


def _netns_names() -> list[str]:
    return [n.get("name") for n in _ip_json(["netns", "list"]) if n.get("name")]


def _addrs(ns: str) -> list[dict]:
    out = []
    for link in _ip_json(["-n", ns, "addr", "show"]):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                out.append(a)
    return out


def uplink_map_from_kernel(lab: str, site: str, names: list[str] | None = None) -> dict:
    """address -> uplink name from the live lab (read-only `ip -j`): the ISP router namespaces
    are {lab}-{site}-{uplink}; the gateway's 100.64/10 address on the ISP's subnet (or whose
    peer is the ISP's address) is that uplink's address."""
    names = _netns_names() if names is None else names
    prefix = f"{lab}-{site}-"
    gw = prefix + "gw"
    if gw not in names:
        return {}
    isps = {n[len(prefix):]: n for n in names if n.startswith(prefix)
            and not re.fullmatch(r"gw|sw|inet|c\d+", n[len(prefix):])}
    gw_addrs = [a for a in _addrs(gw) if _ip_in(a.get("local"), UPLINK_NET)]
    out = {}
    for up, ns in isps.items():
        isp_addrs = [a for a in _addrs(ns) if _ip_in(a.get("local"), UPLINK_NET)]
        for g in gw_addrs:
            gnet = ipaddress.ip_interface(f"{g['local']}/{g.get('prefixlen', 32)}").network
            for i in isp_addrs:
                inet = ipaddress.ip_interface(f"{i['local']}/{i.get('prefixlen', 32)}").network
                iip = ipaddress.ip_address(i["local"])
                if (iip in gnet and gnet.prefixlen < 32) or g.get("address") == i["local"] \
                        or i.get("address") == g["local"] \
                        or (ipaddress.ip_address(g["local"]) in inet and inet.prefixlen < 32):
                    out[g["local"]] = up
    return out


def lab_context(args) -> dict:
    """client namespace, targets and uplink map for a lab CLI invocation."""
    lab = getattr(args, "traffic_lab", None) or getattr(args, "lab", None) \
        or os.environ.get("MWLAB_NAME") or "mwl"
    site = args.site
    state = _load_state(lab, getattr(args, "state_file", None))
    client_ns = args.client_ns or f"{lab}-{site}-{args.client}"
    targets = parse_targets(args.targets) if args.targets else (
        targets_from_state(state) or list(DEFAULT_TARGETS))
    if args.uplink_map:
        umap = parse_uplink_map(args.uplink_map)
    else:
        umap = uplink_map_from_state(state, site) or uplink_map_from_kernel(lab, site)
    return {"lab": lab, "site": site, "client_ns": client_ns, "targets": targets,
            "uplink_map": umap, "inet_ns": f"{lab}-inet"}


def _map_arg(umap: dict[str, str]) -> str:
    return ",".join(f"{name}={addr}" for addr, name in umap.items())


def _cli_common(p):
    p.add_argument("site")
    p.add_argument("--client", default="c1", help="client name within the site (default c1)")
    p.add_argument("--client-ns", help="namespace to run in (overrides {lab}-{site}-{client})")
    p.add_argument("--targets", help="comma-separated internet hosts")
    p.add_argument("--uplink-map", help="name=addr,... (default: from the live lab / state)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="reflector port")
    p.add_argument("--lab", dest="traffic_lab", help="lab name (default mwl)")
    p.add_argument("--state-file", help="lab state file (default /run/mwlab/LAB/state.json)")
    p.add_argument("--no-reflector", action="store_true",
                   help="do not start a reflector in {lab}-inet when none runs")
    p.add_argument("--json", action="store_true", help="print the JSON report")


def register(subparsers) -> None:
    """Add `traffic` and `flows` to the lab CLI (mwlab.__main__)."""
    p = subparsers.add_parser("traffic", help="burst of short flows from a LAN client; "
                              "counts per uplink")
    _cli_common(p)
    p.add_argument("--flows", type=int, default=200)
    p.add_argument("--proto", choices=("udp", "tcp", "both"), default="udp")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--details", action="store_true")
    p.set_defaults(func=cmd_traffic, handler=cmd_traffic)
    f = subparsers.add_parser("flows", help="long-running flows: gaps and source changes")
    _cli_common(f)
    f.add_argument("--flows", type=int, default=50)
    f.add_argument("--interval-ms", type=float, default=None,
                   help="default 5 (udp) / 100 (tcp)")
    f.add_argument("--duration", type=float, default=10.0, help="seconds; 0 = until Ctrl-C")
    f.add_argument("--gap-threshold-ms", type=float, default=None)
    f.add_argument("--tcp", action="store_true", help="long-lived TCP connections (tcp-hold)")
    f.add_argument("--details", action="store_true", help="include per-flow reports")
    f.set_defaults(func=cmd_flows, handler=cmd_flows)


def _maybe_reflector(args, ctx) -> None:
    if args.no_reflector:
        return
    from . import reflector  # noqa: PLC0415
    if reflector.find_in_netns(ctx["inet_ns"], args.port):
        return  # the lab's own reflector (or an earlier one) serves this port
    reflector.ensure_running(ctx["inet_ns"], args.port,
                             f"/run/mwlab/{ctx['lab']}/reflector-{args.port}")


def _cli_guard(fn):
    def wrapper(args, *a, **kw) -> int:
        try:
            return fn(args, *a, **kw)
        except (RuntimeError, ValueError, TimeoutError, subprocess.TimeoutExpired) as exc:
            print(f"mwlab: {args.verb if hasattr(args, 'verb') else 'traffic'}: {exc}",
                  file=sys.stderr)
            return 1
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_cli_guard
def cmd_traffic(args, *_ignored, **_kw) -> int:
    """Lab CLI `traffic SITE`: a burst from {lab}-{site}-{client}; exit 1 when nothing got
    through."""
    ctx = lab_context(args)
    _maybe_reflector(args, ctx)
    argv = ["burst", "--flows", args.flows, "--proto", args.proto, "--targets",
            ",".join(ctx["targets"]), "--dst-port", args.port,
            "--concurrency", args.concurrency]
    if ctx["uplink_map"]:
        argv += ["--uplink-map", _map_arg(ctx["uplink_map"])]
    if args.details:
        argv.append("--details")
    out = run_in_netns(ctx["client_ns"], argv)
    out["client_ns"] = ctx["client_ns"]
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        by = out.get("by_uplink") or out["by_source"]
        print(f"{ctx['client_ns']}: {out['ok']}/{out['flows']} ok, {out['failed']} failed "
              f"in {out['elapsed_s']} s")
        for k, n in by.items():
            print(f"  {k:24} {n:6}  {100.0 * n / max(1, out['ok']):5.1f} %")
        if out["errors"]:
            print("  errors: " + ", ".join(f"{k}={v}" for k, v in out["errors"].items()))
    return 0 if out["ok"] else 1


@_cli_guard
def cmd_flows(args, *_ignored, **_kw) -> int:
    """Lab CLI `flows SITE`: stream (or --tcp: tcp-hold) from {lab}-{site}-{client}."""
    ctx = lab_context(args)
    _maybe_reflector(args, ctx)
    mode = "tcp-hold" if args.tcp else "stream"
    argv = [mode, "--flows", args.flows, "--duration", args.duration, "--targets",
            ",".join(ctx["targets"]), "--dst-port", args.port]
    if args.interval_ms is not None:
        argv += ["--interval-ms", args.interval_ms]
    if args.gap_threshold_ms is not None:
        argv += ["--gap-threshold-ms", args.gap_threshold_ms]
    if ctx["uplink_map"]:
        argv += ["--uplink-map", _map_arg(ctx["uplink_map"])]
    if not args.details:
        argv.append("--no-details")
    bg = start_in_netns(ctx["client_ns"], argv)
    try:
        out = bg.wait()
    except KeyboardInterrupt:
        out = bg.stop()
    finally:
        bg.kill()
    out["client_ns"] = ctx["client_ns"]
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        s = out["summary"]
        print(f"{ctx['client_ns']}: {mode} {s.get('flows', s.get('conns'))} flows, "
              f"{s['duration_s']} s, max gap {s['max_gap_ms']} ms "
              f"(p50 {s['p50_max_gap_ms']}, p95 {s['p95_max_gap_ms']}), "
              f"{s['source_changes']} source changes, not recovered: "
              f"{len(s['not_recovered'])}")
        if "by_last_uplink" in s:
            print("  by uplink at end: " + ", ".join(f"{k}={v}"
                                                     for k, v in s["by_last_uplink"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
