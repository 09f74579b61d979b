# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Routing table and protocol names (``rt_tables``, ``rt_protos``) exactly the way ``ip`` reads them.

Private module_utils (leading underscore): not a public API.  Standard library only and no
Ansible imports: ``_iproute`` (and through it the watchdog, which the role installs with this
file beside it) imports it as a plain module.  :class:`Names` is the one resolver of table and
protocol names of the collection.

What ``ip`` reads (iproute2 >= 6.5, lib/rt_names.c ``rtnl_rttable_initialize``):

1. ``/etc/iproute2/rt_tables``; only if that file does not exist (ENOENT), the vendor file
   ``<CONF_USR_DIR>/rt_tables`` instead.  CONF_USR_DIR was ``/usr/lib/iproute2`` in 6.5 and is
   ``/usr/share/iproute2`` since; we look at both (a build only has one of them).
2. ``<CONF_USR_DIR>/rt_tables.d/*.conf``, except a file whose name also exists in
   ``/etc/iproute2/rt_tables.d/`` (the /etc copy overrides it),
3. ``/etc/iproute2/rt_tables.d/*.conf``.

Older iproute2 (< 6.5, e.g. 6.1 in Debian 12) only reads steps 1 (without the fallback) and 3.
Reading the vendor files as well is harmless: they do not exist where such an ``ip`` runs.
Protocol names are read from ``rt_protos`` and ``rt_protos.d`` with the same precedence
(``rtnl_rtprot_initialize``).

Within a file ``ip`` skips blank lines and lines starting with ``#``, accepts ``0xHEX NAME`` or
``DECIMAL NAME`` (anything after the name is ignored) and *stops reading the file* at the first
line it cannot parse ("Database ... is corrupted").  Ids that do not fit a signed int are
skipped.  Names resolve by walking hash buckets ``id & 255`` from 0 to 255, newest entry first
in each bucket; ids resolve to the newest entry with that id.  :func:`resolve_table` follows
the same rules, so a name means here what it means to ``ip``.

Protocols live in a 256-slot array instead (ids 0..255; a later file overwrites an id, the
built-in names of ``ip`` are the starting point); a name resolves to the lowest id carrying it.
Both kinds fall back to ``strtoul(text, 0)`` (hex ``0x..``, octal ``0..``, decimal) when no
file names the word.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from collections import namedtuple

__all__ = [
    "ETC_DIR", "VENDOR_DIRS", "RESERVED_IDS", "RESERVED_NAMES", "MAX_TABLE_ID", "BUILTIN_PROTOCOLS",
    "Names", "TableEntry", "TablesFile", "UnknownNameError", "UnknownTableError", "files_ip_reads",
    "load_files", "read_tables", "resolve_protocol", "resolve_table", "validate_table", "plan_entry",
    "write_atomic",
]

ETC_DIR = "/etc/iproute2"
VENDOR_DIRS = ("/usr/share/iproute2", "/usr/lib/iproute2")
MAIN_FILE = "rt_tables"
DROPIN_DIR = "rt_tables.d"
PROTOS_FILE = "rt_protos"

# Built into ip (default/main/local) or shipped in every rt_tables (unspec): never ours.
RESERVED_IDS = {0: "unspec", 253: "default", 254: "main", 255: "local"}
RESERVED_NAMES = dict((name, table_id) for table_id, name in RESERVED_IDS.items())
# ip parses ids in files with sscanf("%d") / ("0x%x") into an int and skips negative ones.
MAX_TABLE_ID = 2 ** 31 - 1
# The kernel's table ids are u32; ``ip ... table 4000000000`` works even without a name.
MAX_KERNEL_TABLE_ID = 2 ** 32 - 1
# Route/rule protocols are a u8; ip keeps their names in an array of 256.
MAX_PROTOCOL_ID = 255
# Names ``ip`` knows without any file (iproute2 lib/rt_names.c rtnl_rtprot_tab).
BUILTIN_PROTOCOLS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated",
                     9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp",
                     15: "ntk", 16: "dhcp", 18: "keepalived", 42: "babel", 99: "openr", 186: "bgp",
                     187: "isis", 188: "ospf", 189: "rip", 192: "eigrp"}

# Written at the top of a drop-in file this collection creates; a drop-in holding nothing but
# this header and blank lines is ours to delete when its last entry goes.
HEADER = "# Managed by multiwan.linux.rt_table (names for routing tables, see ip-route(8)).\n"

_HEX_LINE = re.compile(r"0x([0-9a-fA-F]+)\s*(\S+)")
_DEC_LINE = re.compile(r"([+-]?[0-9]+)\s*(\S+)")
# Conservative on purpose: no whitespace or '#' (ip would cut the name there), no leading digit
# or sign (ip tries names before numbers, so a numeric-looking name would hide a table id), no
# '/' and no leading '.' (the name becomes a drop-in file name and ip skips dot files).
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.@-]*$")
_NAME_MAX = 255


class TableEntry(namedtuple("TableEntry", "table_id name path line")):
    """One ``id name`` line that ``ip`` reads: where it is and what it says."""

    __slots__ = ()

    def describe(self):
        return "'%d %s' in %s line %d" % (self.table_id, self.name, self.path, self.line)

    def as_dict(self):
        return {"id": self.table_id, "name": self.name, "path": self.path, "line": self.line}


class UnknownNameError(ValueError):
    """A table or protocol name that no file read by ``ip`` defines (and that is no number)."""


class UnknownTableError(UnknownNameError):
    """A table name that no file read by ``ip`` defines (and that is no number)."""


def _match_line(line):
    """(regex match, base) for an entry line, None for blank/comment lines; ValueError if corrupt."""
    text = line.lstrip(" \t")
    if not text.strip() or text.startswith("#"):
        return None
    offset = len(line) - len(text)
    match = _HEX_LINE.match(line, offset)
    if match:
        return match, 16
    match = _DEC_LINE.match(line, offset)
    if match:
        return match, 10
    raise ValueError("cannot parse %r" % line.rstrip("\n"))


def parse_line(line):
    """``(id, name)`` for an entry line, ``None`` for a blank/comment line.

    Raises ValueError for a line ``ip`` calls corrupted (it stops reading the file there).
    """
    found = _match_line(line)
    if found is None:
        return None
    match, base = found
    return int(match.group(1), base), match.group(2)


class TablesFile(object):
    """The lines of one rt_tables file and the entries ``ip`` takes from it."""

    def __init__(self, path, text, max_id=MAX_TABLE_ID):
        self.path = path
        self.text = text               # None: the file does not exist
        self.entries = []              # TableEntry, in file order
        self.problems = []             # human-readable notes (corruption, ignored ids)
        self.corrupt_line = None       # first line ip refuses; nothing after it is read
        for number, line in enumerate((text or "").splitlines(True), 1):
            try:
                parsed = parse_line(line)
            except ValueError:
                self.corrupt_line = number
                self.problems.append("%s line %d: ip stops reading this file here (%r)"
                                     % (path, number, line.rstrip("\n")))
                break
            if parsed is None:
                continue
            table_id, name = parsed
            if table_id < 0 or table_id > max_id:
                self.problems.append("%s line %d: ip ignores id %d (outside 0..%d)"
                                     % (path, number, table_id, max_id))
                continue
            self.entries.append(TableEntry(table_id, name, path, number))

    @property
    def exists(self):
        return self.text is not None

    @classmethod
    def read(cls, path, max_id=MAX_TABLE_ID):
        try:
            with open(path, "r", encoding="utf-8", errors="surrogateescape") as handle:
                return cls(path, handle.read(), max_id)
        except (IOError, OSError) as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return cls(path, None, max_id)
            raise


def _dropins(directory):
    """Drop-in file names ip would load from ``directory`` (sorted; ip uses readdir order)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(n for n in names
                  if not n.startswith(".") and len(n) > 5 and n.endswith(".conf")
                  and os.path.isfile(os.path.join(directory, n)))


def files_ip_reads(etc_dir=ETC_DIR, vendor_dirs=VENDOR_DIRS, kind=MAIN_FILE):
    """Existing ``kind`` files (``rt_tables`` or ``rt_protos``) in the order ``ip`` loads them
    (see the module docstring)."""
    files = []
    main = os.path.join(etc_dir, kind)
    if os.path.exists(main):
        files.append(main)
    else:
        files.extend(p for p in (os.path.join(d, kind) for d in vendor_dirs)
                     if os.path.isfile(p))
    etc_dropins = os.path.join(etc_dir, kind + ".d")
    for vendor in vendor_dirs:
        directory = os.path.join(vendor, kind + ".d")
        files.extend(os.path.join(directory, n) for n in _dropins(directory)
                     if not os.path.lexists(os.path.join(etc_dropins, n)))
    files.extend(os.path.join(etc_dropins, n) for n in _dropins(etc_dropins))
    return files


def load_files(paths=None, etc_dir=ETC_DIR, vendor_dirs=VENDOR_DIRS, kind=MAIN_FILE):
    """:class:`TablesFile` objects for ``paths`` (default: every ``kind`` file ``ip`` reads), in order."""
    if paths is None:
        paths = files_ip_reads(etc_dir, vendor_dirs, kind)
    max_id = MAX_PROTOCOL_ID if kind == PROTOS_FILE else MAX_TABLE_ID
    return [TablesFile.read(p, max_id) for p in paths]


def _buckets(files):
    """ip's hash: bucket ``id & 255``, newest entry first, built-in entries at the tails."""
    buckets = [[] for dummy in range(256)]
    for table_id in (253, 254, 255):
        buckets[table_id].append(TableEntry(table_id, RESERVED_IDS[table_id], "(built into ip)", 0))
    for tables_file in files:
        for entry in tables_file.entries:
            buckets[entry.table_id & 255].insert(0, entry)
    return buckets


def _lookup_name(buckets, name):
    for bucket in buckets:
        for entry in bucket:
            if entry.name == name:
                return entry
    return None


def read_tables(paths=None, etc_dir=ETC_DIR, vendor_dirs=VENDOR_DIRS):
    """``{name: id}`` as ``ip`` resolves each name (built-in default/main/local included)."""
    buckets = _buckets(load_files(paths, etc_dir, vendor_dirs))
    names = set(e.name for bucket in buckets for e in bucket)
    return dict((name, _lookup_name(buckets, name).table_id) for name in names)


def _parse_number(text):
    """strtoul(text, 0) as ip uses it: 0x.. hex, 0.. octal, else decimal; whole string."""
    if re.match(r"^0[xX][0-9a-fA-F]+$", text):
        return int(text, 16)
    if re.match(r"^0[0-7]*$", text):
        return int(text, 8)
    if re.match(r"^[1-9][0-9]*$", text):
        return int(text, 10)
    return None


def _files_read(files):
    return ", ".join(f.path for f in files) or "no %s file found" % MAIN_FILE


def _resolve_table_in(files, name_or_id, buckets=None):
    if isinstance(name_or_id, bool):
        raise UnknownTableError("table must be a name or a number, not %r" % (name_or_id,))
    if isinstance(name_or_id, int):
        if 0 <= name_or_id <= MAX_KERNEL_TABLE_ID:
            return name_or_id
        raise UnknownTableError("table id %d is outside 0..%d" % (name_or_id, MAX_KERNEL_TABLE_ID))
    text = str(name_or_id).strip()
    entry = _lookup_name(buckets if buckets is not None else _buckets(files), text)
    if entry is not None:
        return entry.table_id
    number = _parse_number(text)
    if number is not None and number <= MAX_KERNEL_TABLE_ID:
        return number
    raise UnknownTableError("unknown table name %r: not a number and no file ip reads names it (read: %s)"
                            % (text, _files_read(files)))


def resolve_table(name_or_id, paths=None, etc_dir=ETC_DIR, vendor_dirs=VENDOR_DIRS):
    """Table id for a name or number, resolved like ``ip ... table X`` (names first).

    Raises :class:`UnknownTableError` naming the files that were read.
    """
    return _resolve_table_in(load_files(paths, etc_dir, vendor_dirs), name_or_id)


def _protocol_slots(files):
    """ip's ``rtnl_rtprot_tab``: id -> name, built-in names first, later files overwrite."""
    slots = dict(BUILTIN_PROTOCOLS)
    for names_file in files:
        for entry in names_file.entries:
            slots[entry.table_id] = entry.name
    return slots


def _resolve_protocol_in(files, name_or_id, slots=None):
    if isinstance(name_or_id, bool):
        raise UnknownNameError("protocol must be a name or a number, not %r" % (name_or_id,))
    if isinstance(name_or_id, int):
        if 0 <= name_or_id <= MAX_PROTOCOL_ID:
            return name_or_id
        raise UnknownNameError("protocol %d is outside 0..%d" % (name_or_id, MAX_PROTOCOL_ID))
    text = str(name_or_id).strip()
    slots = slots if slots is not None else _protocol_slots(files)
    found = sorted(i for i, name in slots.items() if name == text)
    if found:
        return found[0]
    number = _parse_number(text)
    if number is not None and number <= MAX_PROTOCOL_ID:
        return number
    if number is not None:
        raise UnknownNameError("protocol %s is outside 0..%d" % (text, MAX_PROTOCOL_ID))
    raise UnknownNameError("unknown protocol name %r: not a number, not built into ip and no file ip reads "
                           "names it (read: %s)" % (text, ", ".join(f.path for f in files) or
                                                    "no %s file found" % PROTOS_FILE))


def resolve_protocol(name_or_id, paths=None, etc_dir=ETC_DIR, vendor_dirs=VENDOR_DIRS):
    """Protocol number for a name or number, resolved like ``ip ... protocol X`` (names first)."""
    return _resolve_protocol_in(load_files(paths, etc_dir, vendor_dirs, PROTOS_FILE), name_or_id)


class Names(object):
    """Table and protocol names of one system, resolved exactly like ``ip`` (files read once).

    ``root`` prefixes the standard directories (tests); ``etc_dir``/``vendor_dirs`` replace them.
    Both methods raise :class:`UnknownNameError` (a ValueError) for a word ``ip`` would refuse.
    """

    def __init__(self, root="/", etc_dir=None, vendor_dirs=None):
        self.etc_dir = etc_dir or os.path.join(root, ETC_DIR.lstrip("/"))
        self.vendor_dirs = tuple(vendor_dirs) if vendor_dirs is not None else tuple(
            os.path.join(root, d.lstrip("/")) for d in VENDOR_DIRS)
        self._cache = {}

    def _load(self, kind):
        if kind not in self._cache:
            files = load_files(None, self.etc_dir, self.vendor_dirs, kind)
            index = _protocol_slots(files) if kind == PROTOS_FILE else _buckets(files)
            self._cache[kind] = (files, index)
        return self._cache[kind]

    def table(self, name_or_id):
        """Table id (0..2**32-1) for a name or number."""
        files, buckets = self._load(MAIN_FILE)
        return _resolve_table_in(files, name_or_id, buckets)

    def protocol(self, name_or_id):
        """Protocol number (0..255) for a name or number."""
        files, slots = self._load(PROTOS_FILE)
        return _resolve_protocol_in(files, name_or_id, slots)


def validate_table(name, table_id):
    """Error message for a name/id this collection must not write, else None."""
    if name is not None:
        if name in RESERVED_NAMES:
            return "name: '%s' is reserved (table %d is built into the kernel and ip)" % (
                name, RESERVED_NAMES[name])
        if not _NAME.match(name) or len(name) > _NAME_MAX:
            return ("name: %r is not a usable table name (letters, digits, '_', '.', '@', '-'; it must "
                    "start with a letter or '_' and be at most %d characters)" % (name, _NAME_MAX))
    if table_id is not None:
        if table_id in RESERVED_IDS:
            return "id: %d is reserved for table '%s'" % (table_id, RESERVED_IDS[table_id])
        if not 1 <= table_id <= MAX_TABLE_ID:
            return "id: %d is outside 1..%d (ip ignores larger ids in rt_tables files)" % (
                table_id, MAX_TABLE_ID)
    return None


def dropin_path(name, etc_dir=ETC_DIR):
    return os.path.join(etc_dir, DROPIN_DIR, name + ".conf")


def main_path(etc_dir=ETC_DIR):
    return os.path.join(etc_dir, MAIN_FILE)


def check_target_path(path, etc_dir=ETC_DIR):
    """Error message unless ``ip`` reads ``path`` (the main file or an /etc drop-in)."""
    path = os.path.normpath(path)
    if path == main_path(etc_dir):
        return None
    directory, base = os.path.split(path)
    if directory == os.path.join(etc_dir, DROPIN_DIR) and not base.startswith(".") \
            and len(base) > 5 and base.endswith(".conf"):
        return None
    return ("path: ip does not read %s; use %s or %s/<name>.conf"
            % (path, main_path(etc_dir), os.path.join(etc_dir, DROPIN_DIR)))


class EntryPlan(object):
    """What writing (or removing) one table entry means for one file, computed without writing.

    ``live``/``desired`` are ``{name: {"id": ...}}`` maps for :func:`_diff.diff_objects`;
    ``before``/``after`` are the whole file texts (None: absent) for diff mode and the writer.
    """

    def __init__(self, path):
        self.path = path
        self.before = None
        self.after = None
        self.live = {}
        self.desired = {}
        self.conflicts = []        # TableEntry objects that contradict the desired entry
        self.duplicates = []       # the same id/name pair in another file (harmless)
        self.problems = []         # notes about files ip reads (corruption, ignored ids)
        self.resolves_to = None    # the entry ip will use for the name afterwards

    @property
    def changed(self):
        return self.before != self.after


def _seed_text(path, etc_dir, vendor_dirs):
    """Content for a file we create that hides a vendor file of the same name, else ''."""
    relative = os.path.relpath(path, etc_dir)
    for vendor in vendor_dirs:
        candidate = os.path.join(vendor, relative)
        if os.path.isfile(candidate):
            with open(candidate, "r", encoding="utf-8", errors="surrogateescape") as handle:
                text = handle.read()
            return text if not text or text.endswith("\n") else text + "\n"
    return ""


def _rewrite(text, name, table_id, only_id=None):
    """``text`` with exactly one line for ``name`` (id ``table_id``), or none if table_id is None.

    When removing, ``only_id`` limits the removal to lines with that id.

    Every other line (comments, other entries, blank lines) is kept byte for byte; a line that
    already says the right thing keeps its formatting and trailing comment.
    """
    out, seen = [], False
    for line in text.splitlines(True):
        parsed = None
        try:
            parsed = parse_line(line)
        except ValueError:
            pass
        if parsed is None or parsed[1] != name or (
                table_id is None and only_id is not None and parsed[0] != only_id):
            out.append(line)
            continue
        if table_id is None or seen:
            continue
        seen = True
        if parsed[0] == table_id:
            out.append(line)
        else:
            match = _match_line(line)[0]
            indent, rest = line[:match.start()], line[match.end():]
            out.append("%s%d\t%s%s" % (indent, table_id, name, rest if rest.strip() else "\n"))
    if table_id is not None and not seen:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append("%d\t%s\n" % (table_id, name))
    return "".join(out)


def _only_our_header(text):
    lines = [line for line in text.splitlines(True) if line.strip()]
    return all(line == HEADER for line in lines)


def plan_entry(path, name, table_id, present=True, etc_dir=ETC_DIR, vendor_dirs=VENDOR_DIRS):
    """Plan putting ``table_id name`` into ``path`` (present) or taking ``name`` out (absent;
    only the line with ``table_id`` if that is not None).

    Reads every file ``ip`` reads; never writes.  Conflicts are *reported* in the plan: whether
    they are fatal (or ``force``\\ d) is the caller's decision.
    """
    plan = EntryPlan(path)
    target = TablesFile.read(path)
    # Removing "name with this id" leaves an entry with another id alone: it is someone else's.
    only_id = None if present else table_id
    if target.corrupt_line is not None:
        raise ValueError("%s line %d cannot be parsed and ip ignores everything after it; fix the file first"
                         % (path, target.corrupt_line))
    plan.before = target.text
    mine = [e for e in target.entries if e.name == name and only_id in (None, e.table_id)]
    if mine:
        ids = [e.table_id for e in mine]
        plan.live[name] = {"id": ids[0] if len(ids) == 1 else ids}

    others = [f for f in load_files(None, etc_dir, vendor_dirs) if os.path.normpath(f.path) != os.path.normpath(path)]
    for tables_file in others:
        plan.problems.extend(tables_file.problems)

    if present:
        plan.desired[name] = {"id": table_id}
        for entry in [e for f in others for e in f.entries] + [e for e in target.entries if e.name != name]:
            if entry.table_id in RESERVED_IDS and entry.name == RESERVED_IDS[entry.table_id]:
                continue
            same_name, same_id = entry.name == name, entry.table_id == table_id
            if same_name and same_id:
                plan.duplicates.append(entry)
            elif same_name or same_id:
                plan.conflicts.append(entry)
        base = target.text if target.exists else HEADER + _seed_text(path, etc_dir, vendor_dirs)
        plan.after = _rewrite(base, name, table_id)
    else:
        plan.duplicates = [e for f in others for e in f.entries if e.name == name]
        plan.duplicates += [e for e in target.entries if e.name == name and e not in mine]
        if target.exists:
            after = _rewrite(target.text, name, None, only_id)
            is_dropin = os.path.dirname(os.path.normpath(path)) == os.path.join(etc_dir, DROPIN_DIR)
            plan.after = None if (is_dropin and mine and _only_our_header(after)) else after

    # What ip will make of the name once the plan is written.
    after_file = TablesFile(path, plan.after)
    order = [f.path for f in load_files(None, etc_dir, vendor_dirs)]
    if plan.after is not None and path not in order:
        order.append(path)
    files = [after_file if os.path.normpath(p) == os.path.normpath(path) else TablesFile.read(p) for p in order]
    plan.resolves_to = _lookup_name(_buckets(files), name)
    return plan


def write_atomic(path, text, default_mode=0o644):
    """Replace ``path`` with ``text`` atomically (temp file in the same directory + rename).

    Missing directories are created (0755).  An existing file keeps its mode and owner.  The
    temp file starts with '.', so ip never reads a half-written file even in rt_tables.d.
    """
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    try:
        current = os.stat(path)
    except OSError:
        current = None
    handle, temp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        if current is not None:
            os.chmod(temp, stat.S_IMODE(current.st_mode))
            try:
                os.chown(temp, current.st_uid, current.st_gid)
            except OSError:
                pass
        else:
            os.chmod(temp, default_mode)
        os.rename(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def remove_file(path):
    os.unlink(path)
    _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
