"""Internet-side reflector for the multiwan lab (standard library only).

Runs inside the lab's internet namespace, listens on every address of the namespace for UDP and
TCP on one port and answers each datagram / each line with a JSON object telling the client what
the internet saw::

    request : {"flow": 7, "seq": 12, "t": 1712.5}
    reply   : {"flow": 7, "seq": 12, "t": 1712.5, "seen": "100.64.1.2", "sport": 40000,
               "dst": "198.18.0.1", "dport": 7777, "proto": "udp"}

Everything the client sent is echoed back unchanged; the reflector only adds ``seen`` (source
address it saw), ``sport`` (source port it saw), ``dst``/``dport`` (the local address and port the
packet was addressed to) and ``proto``. A payload that is not a JSON object is echoed as
``{"payload": "<text>"}`` plus the same fields.

UDP replies leave from the very address the datagram was sent to (IP_PKTINFO), so a client
talking to 198.18.0.2 gets its answer from 198.18.0.2 even though the socket is a wildcard one.

One unroutable client never costs the others their replies. All UDP replies share one socket,
and a reply to a destination whose next hop does not answer ARP/ND (an ISP whose upstream is
cut) is not dropped at once: it waits in the neighbour queue and keeps counting against the
socket's send buffer (up to ``unres_qlen_bytes``, 212992 by default, per neighbour: as much as
the default send buffer). So the UDP sockets get a large send buffer (``SO_SNDBUFFORCE``, 8 MiB),
every send error is caught and counted per reason, and a reply that finds the buffer full
(``EAGAIN``/``ENOBUFS``) waits in a bounded backlog (4096 replies, 256 per destination address,
1 s at most) that is sent as soon as the socket is writable again. ``stats`` counts replies sent,
deferred and dropped (``udp_tx_drop``: errno names such as ``EHOSTUNREACH``, or ``backlog_full``,
``backlog_dst_full``, ``backlog_stale``); with ``--state-dir`` it is written to ``DIR/stats.json``
about once a second and on exit.

Usage::

    python3 -m mwlab.reflector --port 7777 [--bind 0.0.0.0] [--bind-any] [--state-dir DIR]
                               [--pid-file PATH] [--lifetime S] [--max-log-bytes N]

``--bind-any`` adds an IPv6 wildcard listener (``::``, v6 only) beside the IPv4 one; the
reflector still starts when IPv6 is unavailable. ``--state-dir DIR`` appends one JSON record per
flow to ``DIR/flows.jsonl`` (UDP: when a 5-tuple is first seen; TCP: when the connection
closes, with its line count); the file is rotated once to ``flows.jsonl.1`` when it would exceed
``--max-log-bytes``. When ready it prints one line ``{"ready": true, ...}`` on stdout and writes
the pid file. SIGTERM/SIGINT stop it cleanly (sockets closed, pid file removed).
"""

from __future__ import annotations

import argparse
import collections
import errno
import ipaddress
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)

MAX_LINE = 8192  # longest accepted TCP line / UDP datagram
MAX_TCP_CONNS = 4000
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
UDP_SNDBUF = 8 << 20  # room for many dead neighbours' queues (unres_qlen_bytes each) and the rest
UDP_RCVBUF = 4 << 20
UDP_BACKLOG_MAX = 4096  # UDP replies waiting for send-buffer space, all destinations together
UDP_BACKLOG_PER_DST = 256  # ... and for one destination address
UDP_BACKLOG_MAX_AGE = 1.0  # seconds; an older reply is dropped (its client has moved on)
RETRY_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ENOMEM})
MAX_OUTBUF = 256 * 1024  # per TCP connection; a client that never reads is dropped
UDP_FLOW_MEMORY = 65536  # 5-tuples remembered for flow logging


def _norm(addr: str) -> str:
    """'::ffff:1.2.3.4' -> '1.2.3.4'; strip a scope id."""
    addr = addr.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def make_reply(data: bytes, seen: str, sport: int, dst: str, dport: int, proto: str) -> bytes:
    """Build the JSON reply line for one request (pure function, used by the tests)."""
    text = data.decode("utf-8", "replace").strip()
    obj = None
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
    if not isinstance(obj, dict):
        obj = {"payload": text[:MAX_LINE]}
    obj.update(seen=_norm(seen), sport=sport, dst=_norm(dst), dport=dport, proto=proto)
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


class FlowLog:
    """Bounded append-only JSON-lines log (rotated once)."""

    def __init__(self, state_dir: str | None, max_bytes: int):
        self.path = os.path.join(state_dir, "flows.jsonl") if state_dir else None
        self.max_bytes = max(4096, max_bytes)
        self.fh = None
        self.size = 0
        self.dirty = False
        if self.path:
            os.makedirs(state_dir, exist_ok=True)
            self.fh = open(self.path, "a", encoding="utf-8")
            self.size = self.fh.tell()

    def write(self, rec: dict) -> None:
        if not self.fh:
            return
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        if self.size + len(line) > self.max_bytes // 2:
            self.fh.close()
            os.replace(self.path, self.path + ".1")
            self.fh = open(self.path, "a", encoding="utf-8")
            self.size = 0
        self.fh.write(line)
        self.size += len(line)
        self.dirty = True

    def flush(self) -> None:
        if self.fh and self.dirty:
            self.fh.flush()
            self.dirty = False

    def close(self) -> None:
        if self.fh:
            self.fh.close()
            self.fh = None


def _set_buf(sock, force_opt: int, opt: int, size: int) -> int:
    """Set a socket buffer to SIZE, beyond net.core.[rw]mem_max when allowed (root); return the
    size the kernel granted (it reports twice what was asked, for its bookkeeping)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass
    return sock.getsockopt(socket.SOL_SOCKET, opt)


class _UdpOut:
    """A UDP listener and its backlog of replies that found the send buffer full."""

    __slots__ = ("sock", "fam", "backlog", "per_dst", "want_write")

    def __init__(self, sock, fam):
        self.sock = sock
        self.fam = fam
        self.backlog: collections.deque = collections.deque()  # (t, reply, ancdata, peer)
        self.per_dst: collections.Counter = collections.Counter()
        self.want_write = False


class _TcpConn:
    __slots__ = ("sock", "peer", "local", "inbuf", "outbuf", "lines", "opened", "flow")

    def __init__(self, sock, peer, local):
        self.sock = sock
        self.peer = peer
        self.local = local
        self.inbuf = b""
        self.outbuf = b""
        self.lines = 0
        self.opened = time.time()
        self.flow = None


class Reflector:
    def __init__(self, port: int, bind: str = "0.0.0.0", bind_any: bool = False,
                 state_dir: str | None = None, max_log_bytes: int = 16 << 20):
        self.port = port
        self.sel = selectors.DefaultSelector()
        self.log = FlowLog(state_dir, max_log_bytes)
        self.udp_seen: collections.OrderedDict = collections.OrderedDict()
        self.conns: dict[int, _TcpConn] = {}
        self.stopping = False
        self.stats = {"udp_rx": 0, "udp_rx_errors": 0, "udp_tx": 0, "udp_tx_deferred": 0, "udp_tx_drop": {},
                      "udp_backlog": 0, "udp_backlog_max": 0, "udp_sndbuf": 0, "tcp_conns": 0, "tcp_lines": 0}
        self.stats_path = os.path.join(state_dir, "stats.json") if state_dir else None
        self._stats_written = ""
        self.udp_outs: list[_UdpOut] = []
        self.socks = []
        fams = [(socket.AF_INET, bind)]
        if bind_any:
            fams.append((socket.AF_INET6, "::"))
        for fam, addr in fams:
            try:
                self._listen(fam, addr)
            except OSError as exc:
                if fam == socket.AF_INET6:
                    print(f"reflector: IPv6 listener unavailable: {exc}", file=sys.stderr)
                    continue
                raise
        # self-pipe so a signal wakes the selector immediately
        self._wr, self._ww = socket.socketpair()
        self._wr.setblocking(False)
        self._ww.setblocking(False)
        self.sel.register(self._wr, selectors.EVENT_READ, ("wake", None))

    def _listen(self, fam, addr):
        u = socket.socket(fam, socket.SOCK_DGRAM)
        t = socket.socket(fam, socket.SOCK_STREAM)
        try:
            for s in (u, t):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:  # start even before the lab has put the addresses in place
                    s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
                except OSError:
                    pass
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if fam == socket.AF_INET:
                u.setsockopt(socket.SOL_IP, IP_PKTINFO, 1)
            else:
                u.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            u.bind((addr, self.port))
            t.bind((addr, self.port))
            t.listen(1024)
        except OSError:
            u.close()
            t.close()
            raise
        _set_buf(u, SO_RCVBUFFORCE, socket.SO_RCVBUF, UDP_RCVBUF)
        self.stats["udp_sndbuf"] = _set_buf(u, SO_SNDBUFFORCE, socket.SO_SNDBUF, UDP_SNDBUF)
        u.setblocking(False)
        t.setblocking(False)
        out = _UdpOut(u, fam)
        self.udp_outs.append(out)
        self.sel.register(u, selectors.EVENT_READ, ("udp", out))
        self.sel.register(t, selectors.EVENT_READ, ("listen", fam))
        self.socks += [u, t]

    def wake(self):
        try:
            self._ww.send(b"x")
        except OSError:
            pass

    # ---- UDP ---------------------------------------------------------------------------
    def _drop(self, reason: str) -> None:
        drops = self.stats["udp_tx_drop"]
        drops[reason] = drops.get(reason, 0) + 1

    def _try_send(self, sock, reply: bytes, anc: list, peer) -> bool:
        """Send one reply. False: no room in the send buffer now (try again later); True: sent,
        or dropped for good (unroutable, refused...: counted per reason, never raised)."""
        try:
            sock.sendmsg([reply], anc, 0, peer)
        except InterruptedError:
            return False
        except OSError as exc:
            if exc.errno in RETRY_ERRNOS:
                return False
            self._drop(errno.errorcode.get(exc.errno, str(exc.errno)))
            return True
        self.stats["udp_tx"] += 1
        return True

    def _set_write_interest(self, out: _UdpOut, want: bool) -> None:
        if out.want_write != want:
            out.want_write = want
            try:
                self.sel.modify(out.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0), ("udp", out))
            except (KeyError, ValueError):
                pass

    def _drain(self, out: _UdpOut, now: float | None = None) -> None:
        """Send backlogged replies, oldest first, until the buffer is full again; drop stale ones."""
        now = time.monotonic() if now is None else now
        while out.backlog:
            t, reply, anc, peer = out.backlog[0]
            if now - t > UDP_BACKLOG_MAX_AGE:
                self._drop("backlog_stale")
            elif not self._try_send(out.sock, reply, anc, peer):
                break
            out.backlog.popleft()
            out.per_dst[peer[0]] -= 1
            if out.per_dst[peer[0]] <= 0:
                del out.per_dst[peer[0]]
        self.stats["udp_backlog"] = sum(len(o.backlog) for o in self.udp_outs)
        self._set_write_interest(out, bool(out.backlog))

    def _send(self, out: _UdpOut, reply: bytes, anc: list, peer) -> None:
        """Reply now, or queue the reply (bounded) when the send buffer is full."""
        now = time.monotonic()
        if out.backlog:
            self._drain(out, now)
        if not out.backlog and self._try_send(out.sock, reply, anc, peer):
            return
        if out.per_dst[peer[0]] >= UDP_BACKLOG_PER_DST:
            self._drop("backlog_dst_full")  # one destination never takes the whole backlog
            return
        if len(out.backlog) >= UDP_BACKLOG_MAX // max(1, len(self.udp_outs)):
            _t, _r, _a, old = out.backlog.popleft()
            out.per_dst[old[0]] -= 1
            if out.per_dst[old[0]] <= 0:
                del out.per_dst[old[0]]
            self._drop("backlog_full")
        out.backlog.append((now, reply, anc, peer))
        out.per_dst[peer[0]] += 1
        self.stats["udp_tx_deferred"] += 1
        backlog = sum(len(o.backlog) for o in self.udp_outs)
        self.stats["udp_backlog"] = backlog
        self.stats["udp_backlog_max"] = max(self.stats["udp_backlog_max"], backlog)
        self._set_write_interest(out, True)

    def _udp(self, out: _UdpOut):
        sock, fam = out.sock, out.fam
        for _ in range(256):  # drain, bounded per wakeup
            try:
                data, anc, _flags, peer = sock.recvmsg(MAX_LINE, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # a pending socket error: reported once, the next read goes on
                self.stats["udp_rx_errors"] += 1
                return
            self.stats["udp_rx"] += 1
            dst, ifindex, pktinfo = None, 0, None
            for level, typ, cdata in anc:
                if fam == socket.AF_INET and level == socket.SOL_IP and typ == IP_PKTINFO:
                    ifindex, _spec, addr = struct.unpack("=I4s4s", cdata[:12])
                    dst = socket.inet_ntop(socket.AF_INET, addr)
                    pktinfo = (socket.SOL_IP, IP_PKTINFO,
                               struct.pack("=I4s4s", 0, addr, b"\0" * 4))
                elif fam == socket.AF_INET6 and level == socket.IPPROTO_IPV6 \
                        and typ == IPV6_PKTINFO:
                    addr, ifindex = struct.unpack("=16sI", cdata[:20])
                    dst = socket.inet_ntop(socket.AF_INET6, addr)
                    pktinfo = (socket.IPPROTO_IPV6, IPV6_PKTINFO, struct.pack("=16sI", addr, 0))
            if dst is None:
                dst = sock.getsockname()[0]
            reply = make_reply(data, peer[0], peer[1], dst, self.port, "udp")
            self._send(out, reply, [pktinfo] if pktinfo else [], peer)
            if self.log.path:
                key = (peer[0], peer[1], dst)
                if key in self.udp_seen:
                    self.udp_seen.move_to_end(key)
                else:
                    self.udp_seen[key] = True
                    if len(self.udp_seen) > UDP_FLOW_MEMORY:
                        self.udp_seen.popitem(last=False)
                    flow = None
                    try:
                        flow = json.loads(reply).get("flow")
                    except ValueError:
                        pass
                    self.log.write({"proto": "udp", "t": round(time.time(), 6), "flow": flow,
                                    "seen": _norm(peer[0]), "sport": peer[1],
                                    "dst": _norm(dst), "dport": self.port})

    # ---- TCP ---------------------------------------------------------------------------
    def _accept(self, lsock):
        for _ in range(128):
            try:
                s, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                return
            if len(self.conns) >= MAX_TCP_CONNS:
                s.close()
                continue
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = _TcpConn(s, peer, s.getsockname())
            self.conns[s.fileno()] = c
            self.stats["tcp_conns"] += 1
            self.sel.register(s, selectors.EVENT_READ, ("tcp", c))

    def _close(self, c: _TcpConn, why: str):
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        self.conns.pop(c.sock.fileno(), None)
        try:
            c.sock.close()
        except OSError:
            pass
        self.log.write({"proto": "tcp", "t": round(c.opened, 6), "flow": c.flow,
                        "seen": _norm(c.peer[0]), "sport": c.peer[1], "dst": _norm(c.local[0]),
                        "dport": self.port, "lines": c.lines,
                        "duration_s": round(time.time() - c.opened, 3), "closed": why})

    def _tcp(self, c: _TcpConn, mask):
        if mask & selectors.EVENT_READ:
            try:
                data = c.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._close(c, "reset")
                return
            if data == b"":
                self._close(c, "eof")
                return
            if data:
                c.inbuf += data
                while b"\n" in c.inbuf:
                    line, c.inbuf = c.inbuf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    c.lines += 1
                    self.stats["tcp_lines"] += 1
                    rep = make_reply(line, c.peer[0], c.peer[1], c.local[0], self.port, "tcp")
                    if c.flow is None:
                        try:
                            c.flow = json.loads(rep).get("flow")
                        except ValueError:
                            pass
                    c.outbuf += rep
                if len(c.inbuf) > MAX_LINE or len(c.outbuf) > MAX_OUTBUF:
                    self._close(c, "overflow")
                    return
        if c.outbuf:
            try:
                n = c.sock.send(c.outbuf)
                c.outbuf = c.outbuf[n:]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._close(c, "reset")
                return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if c.outbuf else 0)
        try:
            self.sel.modify(c.sock, want, ("tcp", c))
        except (KeyError, ValueError):
            pass

    # ---- loop --------------------------------------------------------------------------
    def serve(self, lifetime: float = 0.0) -> None:
        end = time.monotonic() + lifetime if lifetime > 0 else None
        last_flush = last_stats = time.monotonic()
        while not self.stopping:
            timeout = 0.05 if self.log.dirty else 1.0
            if end is not None:
                timeout = min(timeout, max(0.0, end - time.monotonic()))
                if timeout <= 0:
                    break
            events = self.sel.select(timeout)
            for key, mask in events:
                kind, extra = key.data
                if kind == "udp":
                    if mask & selectors.EVENT_WRITE:
                        self._drain(extra)
                    if mask & selectors.EVENT_READ:
                        self._udp(extra)
                elif kind == "tcp":
                    self._tcp(extra, mask)
                elif kind == "listen":
                    self._accept(key.fileobj)
                elif kind == "wake":
                    try:
                        while self._wr.recv(64):
                            pass
                    except OSError:
                        pass
            now = time.monotonic()
            if self.log.dirty and (now - last_flush > 0.2 or not events):
                self.log.flush()  # promptly when idle, at most 5 times a second under load
                last_flush = now
            if now - last_stats >= 1.0:
                for out in self.udp_outs:
                    if out.backlog:  # drops stale replies even when the socket never gets writable
                        self._drain(out, now)
                self.write_stats()
                last_stats = now
        self.close()

    def write_stats(self) -> None:
        """Write ``stats`` to STATE_DIR/stats.json (atomically) when it changed."""
        if not self.stats_path:
            return
        text = json.dumps(self.stats, sort_keys=True)
        if text == self._stats_written:
            return
        try:
            tmp = self.stats_path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            os.replace(tmp, self.stats_path)
            self._stats_written = text
        except OSError:
            pass

    def close(self):
        for c in list(self.conns.values()):
            self._close(c, "shutdown")
        for s in self.socks:
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
        self.socks = []
        self.udp_outs = []
        self.log.close()
        self.write_stats()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read()
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return b"mwlab.reflector" in cmd and state != b"Z"


def read_pid(pid_file: str) -> int | None:
    """Pid of a running reflector from its pid file, else None."""
    try:
        with open(pid_file, encoding="ascii") as fh:
            pid = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def find_in_netns(ns: str, port: int = 7777) -> int | None:
    """Pid of a live reflector serving PORT inside namespace NS (read-only lookup)."""
    import subprocess  # noqa: PLC0415

    try:
        res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for tok in res.stdout.split():
        if not tok.isdigit() or not _alive(int(tok)):
            continue
        try:
            with open(f"/proc/{tok}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"mwlab.reflector" not in argv:
            continue
        p = 7777
        for i, a in enumerate(argv[:-1]):
            if a == b"--port" and argv[i + 1].isdigit():
                p = int(argv[i + 1])
            elif a.startswith(b"--port="):
                p = int(a.split(b"=", 1)[1] or 0)
        if p == port:
            return int(tok)
    return None


def ensure_running(ns: str, port: int = 7777, state_dir: str | None = None,
                   python: str | None = None, timeout: float = 5.0) -> int | None:
    """Start a reflector inside namespace NS unless one (ours, by pid file) already runs.

    Runs detached (own session); pid file and log live in STATE_DIR (default
    /run/mwlab/reflector-NS-PORT). Returns the pid, or None when the port is already served by
    a reflector started by someone else. Raises RuntimeError on any other failure.
    """
    import subprocess  # noqa: PLC0415

    state_dir = state_dir or f"/run/mwlab/reflector-{ns}-{port}"
    os.makedirs(state_dir, exist_ok=True)
    pid_file = os.path.join(state_dir, "reflector.pid")
    pid = read_pid(pid_file)
    if pid:
        return pid
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    log = open(os.path.join(state_dir, "reflector.log"), "ab")
    try:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, python or sys.executable, "-m", "mwlab.reflector",
             "--port", str(port), "--state-dir", state_dir, "--pid-file", pid_file],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            start_new_session=True)
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = read_pid(pid_file)
        if pid:
            return pid
        rc = proc.poll()
        if rc is not None:
            with open(os.path.join(state_dir, "reflector.log"), encoding="utf-8",
                      errors="replace") as fh:
                tail = fh.read()[-2000:]
            if "Address already in use" in tail:
                return None
            raise RuntimeError(f"reflector in {ns} exited ({rc}): {tail}")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"reflector in {ns} did not start within {timeout} s")


def stop(pid_file: str, timeout: float = 5.0) -> bool:
    """SIGTERM the reflector named by PID_FILE and wait until it is gone; True if one was running.

    "Gone" is judged by /proc/PID's state, not by its command line: an exiting process (tearing
    down its large socket buffers) has an empty command line while it is still "R" or "D".
    """
    pid = read_pid(pid_file)
    if not pid:
        return False
    os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 2.0)
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _proc_state(pid) not in (None, "Z", "X"):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="mwlab.reflector", description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=7777)
    ap.add_argument("--bind", default="0.0.0.0", help="IPv4 address to listen on (default all)")
    ap.add_argument("--bind-any", action="store_true", help="also listen on IPv6 (::)")
    ap.add_argument("--state-dir", help="append per-flow records to DIR/flows.jsonl")
    ap.add_argument("--max-log-bytes", type=int, default=16 << 20)
    ap.add_argument("--pid-file", help="write the pid here once listening; removed on exit")
    ap.add_argument("--lifetime", type=float, default=0.0, help="exit after S seconds (0=never)")
    args = ap.parse_args(argv)

    refl = Reflector(args.port, args.bind, args.bind_any, args.state_dir, args.max_log_bytes)

    def _stop(_signo, _frame):
        refl.stopping = True
        refl.wake()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.pid_file:
        tmp = args.pid_file + ".tmp"
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(f"{os.getpid()}\n")
        os.replace(tmp, args.pid_file)
    print(json.dumps({"ready": True, "pid": os.getpid(), "port": args.port}), flush=True)
    try:
        refl.serve(args.lifetime)
    finally:
        if args.pid_file:
            try:
                with open(args.pid_file, encoding="ascii") as fh:
                    if fh.read().strip() == str(os.getpid()):
                        os.unlink(args.pid_file)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
