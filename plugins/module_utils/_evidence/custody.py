# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The case's custody log: append-only JSON lines, each record carrying the SHA-256 of the one before.

``custody.jsonl`` holds one record per event, from the plan to the collector's last re-verification.
Each line is one JSON object (keys sorted, compact, ASCII; :func:`record.record_line`) with

* ``format`` (:data:`FORMAT`), ``seq`` (1, 2, ...), ``prev``: the SHA-256 of the previous line's bytes with
  its newline (:data:`GENESIS` for the first): ``sed -n '<seq-1>p' custody.jsonl | sha256sum`` prints it;
* ``recorded_at`` (UTC), ``case_id``, ``host`` (the machine that wrote it), ``event`` (one word), ``module``,
  ``summary`` (a sentence), ``details`` (free form) and ``controller`` (who ran the job from where).

So a changed, removed, inserted or reordered line breaks the chain at that line, and :func:`verify` says where.
Lines are appended under an exclusive ``flock`` with ``O_APPEND`` and fsynced, like :mod:`record`; what the file
holds is never rewritten. A log whose chain is broken, or whose last line is incomplete, is refused: nothing is
appended to it, and the error names the line.

A log can continue another (:func:`append` with ``continue_from``): the collector's log of a volume starts as a
byte-for-byte copy of the log the hypervisor host wrote on the volume (whose chain is verified first) and goes on
with the detach, the read-only switch and each verification. A later run checks that the log it continues still
begins with that copy. :func:`keep_copies` puts byte-for-byte copies of the files its records name (the volume's
manifest and SHA256SUMS) beside it, in the same module run.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import hashlib
import json
import os
import re
import socket

from ansible_collections.dfir.vmcollect.plugins.module_utils._case import check_case_id
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    CustodyError, DestinationError, InvalidInputError)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.record import (
    DIR_MODE, FILE_MODE, record_line)
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import (
    fsync_dir, make_dirs, missing_dirs, write_atomic)
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import utc_now
from ansible_collections.dfir.vmcollect.plugins.module_utils._version import VERSION

FORMAT = "dfir.vmcollect/custody/1"
NAME = "custody.jsonl"
GENESIS = "0" * 64
_EVENT = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_MAX_LOG = 64 * 1024 * 1024
# names whose values never reach a record (extra vars of the command, details): compared in lower case
_SECRET = re.compile(r"(pass|secret|token|credential|chap|private|api_?key|vault)", re.IGNORECASE)
REDACTED = "<redacted>"


def redact(value):
    """``value`` with every entry whose key names a secret replaced by :data:`REDACTED` (dicts, lists, nested)."""
    if isinstance(value, dict):
        return dict((k, REDACTED if _SECRET.search(str(k)) else redact(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def line_digest(line):
    return hashlib.sha256(line).hexdigest()


def parse(data, path="the custody log"):
    """Check the chain of a log's bytes; returns a list of (record, line bytes). Raises CustodyError where broken."""
    if data and not data.endswith(b"\n"):
        raise CustodyError("The last line of %s is not complete (no newline at its end: a write was cut short). It is "
                           "left as it is and nothing was appended; look at the file." % path,
                           failed_path=path, broken_at=data.count(b"\n") + 1)
    out = []
    prev = GENESIS
    for number, line in enumerate(data.splitlines(True), 1):
        try:
            rec = json.loads(line.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise CustodyError("Line %d of %s is not a JSON record: the custody log was changed or is not one. Nothing "
                               "was appended." % (number, path), failed_path=path, broken_at=number)
        if not isinstance(rec, dict) or rec.get("format") != FORMAT:
            raise CustodyError("Line %d of %s is not a %s record. Nothing was appended." % (number, path, FORMAT),
                               failed_path=path, broken_at=number)
        if rec.get("seq") != number or rec.get("prev") != prev:
            raise CustodyError(
                "The hash chain of %s is broken at line %d: its seq is %r and its prev %r, where %d and %s were "
                "expected. A line before it was changed, removed or inserted. Nothing was appended; keep the file as "
                "it is for examination." % (path, number, rec.get("seq"), rec.get("prev"), number, prev),
                failed_path=path, broken_at=number)
        if record_line(rec) != line:
            raise CustodyError("Line %d of %s is not in the canonical form it was written in (keys sorted, compact, "
                               "ASCII): it was rewritten. Nothing was appended." % (number, path),
                               failed_path=path, broken_at=number)
        out.append((rec, line))
        prev = line_digest(line)
    return out


def _read(path, what="custody log"):
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_LOG + 1)
    except IOError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise CustodyError("The %s %s cannot be read: %s." % (what, path, exc.strerror), failed_path=path)
    if len(data) > _MAX_LOG:
        raise CustodyError("%s is larger than %d bytes; it is not a %s of this collection." % (path, _MAX_LOG, what),
                           failed_path=path)
    return data


def verify(path):
    """dict(path, records, last_sha256, intact) of a log whose chain holds; raises CustodyError where it breaks."""
    data = _read(path)
    if data is None:
        raise CustodyError("The custody log %s does not exist." % path, failed_path=path)
    lines = parse(data, path)
    return {"path": path, "records": len(lines), "intact": True,
            "last_sha256": line_digest(lines[-1][1]) if lines else GENESIS, "sha256": hashlib.sha256(data).hexdigest()}


def _event(entry, case_id, controller, host):
    if not isinstance(entry, dict):
        raise InvalidInputError("Each custody event must be a dictionary, not %s." % type(entry).__name__)
    event = entry.get("event")
    if not isinstance(event, str) or not _EVENT.match(event):
        raise InvalidInputError("A custody event needs 'event', one lower-case word (letters, digits, '_'); it is %r."
                                % (event,))
    unknown = sorted(set(entry) - set(["event", "module", "summary", "details"]))
    if unknown:
        raise InvalidInputError("A custody event has only event, module, summary and details; %s is not one of them."
                                % ", ".join(unknown))
    details = entry.get("details") or {}
    if not isinstance(details, dict):
        raise InvalidInputError("The details of the custody event %s must be a dictionary." % event)
    return {"format": FORMAT, "case_id": case_id, "event": event, "module": entry.get("module") or "",
            "summary": entry.get("summary") or "", "details": redact(details), "host": host,
            "controller": redact(dict(controller or {}, collection_version=VERSION))}


def append(path, case_id, events, controller=None, continue_from=None, check_mode=False, create=True):
    """Append ``events`` (dicts: event, module, summary, details) to the log at ``path``, each chained to the last.

    ``continue_from``: a log the one at ``path`` continues (copied whole first when ``path`` does not exist yet; else
    ``path`` must begin with it). ``create=False``: a log that does not exist is left so (nothing is written, and the
    result says ``missing``). Returns dict(changed, path, created, imported, first_seq, records, sha256 ...).
    """
    check_case_id(case_id)
    if not isinstance(path, str) or not os.path.isabs(path):
        raise InvalidInputError("The custody log's path %r is not absolute; give one. Nothing was written." % (path,))
    path = os.path.normpath(path)
    if not create and not os.path.lexists(path):
        return {"changed": False, "path": path, "missing": True, "created": False, "imported": False,
                "first_seq": None, "appended": 0, "records": 0, "created_folders": []}
    host = socket.gethostname()
    new = [_event(e, case_id, controller, host) for e in events or []]
    base = None
    if continue_from:
        base = _read(continue_from)
        if base is None:
            raise CustodyError("The custody log %s, which %s continues, does not exist. Nothing was written."
                               % (continue_from, path), failed_path=continue_from)
        base_records = parse(base, continue_from)
        _check_case(base_records, case_id, continue_from)
    folder = os.path.dirname(path)
    try:
        missing = missing_dirs(folder)
    except NotADirectoryError as exc:
        raise DestinationError("%s exists and is not a folder; the custody log cannot be written below it. Nothing "
                               "was written." % exc.filename, failed_path=exc.filename)
    if check_mode:
        data = None if missing else _read(path)
        existing = parse(data, path) if data else []
        _check_case(existing, case_id, path)
        imported = _imported(existing, data, base, path)
        first = (len(existing) or (len(base_records) if imported else 0)) + 1
        return {"changed": bool(new or imported), "path": path, "created": data is None, "imported": imported,
                "first_seq": first, "appended": len(new), "records": first - 1 + len(new), "created_folders": missing}
    try:
        make_dirs(missing, DIR_MODE)
    except OSError as exc:
        raise DestinationError("The folder %s cannot be created: %s. Nothing was written."
                               % (exc.filename, exc.strerror), failed_path=exc.filename)
    fd, created = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = _read_fd(fd, path)
        existing = parse(data, path)
        _check_case(existing, case_id, path)
        imported = _imported(existing, data, base, path)
        lines = []
        if imported:
            lines.append(base)
            existing = parse(base, continue_from)
        prev = line_digest(existing[-1][1]) if existing else GENESIS
        seq = len(existing)
        first = seq + 1
        for rec in new:
            seq += 1
            rec = dict(rec, seq=seq, prev=prev, recorded_at=utc_now())
            line = record_line(rec)
            lines.append(line)
            prev = line_digest(line)
        blob = b"".join(lines)
        if blob:
            _write_all(fd, blob, path, len(data))
    finally:
        os.close(fd)
    if created:
        fsync_dir(folder)
    return {"changed": bool(blob), "path": path, "created": created, "imported": imported, "first_seq": first,
            "appended": len(new), "records": seq, "last_sha256": prev, "created_folders": missing}


def append_keeping(path, case_id, events, controller=None, continue_from=None, keep=(), check_mode=False, create=True):
    """``append``, then ``keep_copies`` of ``keep`` into the log's folder (not when ``create=False`` left a missing log
    so); the result of ``append`` with ``copied`` added, ``changed`` when either wrote (or would)."""
    result = append(path, case_id, events, controller=controller, continue_from=continue_from, check_mode=check_mode,
                    create=create)
    result["copied"] = [] if result.get("missing") else keep_copies(os.path.dirname(result["path"]), keep,
                                                                    check_mode=check_mode)
    result["changed"] = result["changed"] or bool(result["copied"])
    return result


def keep_copies(folder, sources, check_mode=False):
    """Copy each file of ``sources`` byte for byte into ``folder`` under its own name (mode :data:`FILE_MODE`, written
    whole then renamed, fsynced). A copy that already holds the same bytes is left as it is; one that differs is
    replaced (a later run of the case made the file anew). Returns the copies written (or that would be)."""
    sources = list(sources or [])
    for source in sources:
        if not isinstance(source, str) or not os.path.isabs(source):
            raise InvalidInputError("The file to keep a copy of, %r, is not an absolute path. Nothing was copied."
                                    % (source,))
    names = [os.path.basename(os.path.normpath(source)) for source in sources]
    twice = sorted(set(name for name in names if names.count(name) > 1))
    if twice:
        raise InvalidInputError("Two files to keep a copy of have the same name (%s): each copy is named after its file. "
                                "Nothing was copied." % ", ".join(twice))
    written = []
    for source, name in zip(sources, names):
        data = _read(source, "record to keep with the custody log")
        if data is None:
            raise DestinationError("%s cannot be read to keep a copy with the custody log: it does not exist."
                                   % source, failed_path=source)
        dest = os.path.join(folder, name)
        try:
            with open(dest, "rb") as f:
                same = f.read(len(data) + 1) == data
        except (IOError, OSError):
            same = False
        if same:
            continue
        written.append(dest)
        if check_mode:
            continue
        try:
            write_atomic(dest, data, mode=FILE_MODE)
        except (IOError, OSError) as exc:
            raise DestinationError("The copy %s of %s cannot be written: %s." % (dest, source, exc.strerror),
                                   failed_path=dest)
    return written


def _check_case(records, case_id, path):
    other = sorted(set(r.get("case_id") for r, _line in records) - set([case_id]))
    if other:
        raise CustodyError("The custody log %s belongs to case %s, not %s; the records of two cases are never mixed. "
                           "Nothing was written." % (path, ", ".join(str(o) for o in other), case_id), failed_path=path)


def _imported(existing, data, base, path):
    """Whether the log ``base`` must be copied in first (``path`` is empty); refuses a log that does not begin with it."""
    if base is None:
        return False
    if not existing:
        return bool(base)
    if not data.startswith(base):
        raise CustodyError("The custody log %s does not begin with the log it continues (the one written beside the "
                           "evidence): one of them was changed. Nothing was appended; keep both for examination."
                           % path, failed_path=path)
    return False


def _open(path):
    flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
        os.fchmod(fd, FILE_MODE)
        return fd, True
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise DestinationError("The custody log %s cannot be created: %s. Nothing was written."
                                   % (path, exc.strerror), failed_path=path)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise DestinationError("The custody log %s cannot be opened: %s." % (path, exc.strerror), failed_path=path)
    return fd, False


def _read_fd(fd, path):
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1024 * 1024, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        if offset > _MAX_LOG:
            raise CustodyError("%s is larger than %d bytes; it is not a custody log of this collection."
                               % (path, _MAX_LOG), failed_path=path)
    return b"".join(chunks)


def _write_all(fd, blob, path, size):
    try:
        done = os.write(fd, blob)
        if done != len(blob):
            raise OSError(errno.EIO, "only %d of %d bytes were written" % (done, len(blob)))
        os.fsync(fd)
    except OSError as exc:
        raise DestinationError("Appending to the custody log %s failed: %s. Its first %d bytes are as they were; a "
                               "partial line may follow them (the next append refuses the log until it is looked at)."
                               % (path, exc.strerror, size), failed_path=path)
