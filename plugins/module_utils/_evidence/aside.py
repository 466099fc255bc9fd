# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Set aside the files of an incomplete acquisition run: kept, hashed, recorded, moved once, never changed.

A killed run leaves files in ``<case_dir>/<folder>`` that no manifest records (a RAM image, ``.partial``
copies and their ``.partial.json`` sidecars, finished disk copies). They describe a moment that the
teardown has ended, so a rerun neither adopts nor deletes them: it sets them aside.

Every regular file is hashed (sha256 always, plus the algorithms asked for; holes are hashed as
zeros without being read), then ``<case_dir>/set-aside/<UTC stamp>[-N]/`` is made and receives a
record (``set-aside.json``) and a ``SHA256SUMS`` in GNU format, and only then the whole folder is
moved there with one ``rename``. Links, FIFOs, sockets and devices are recorded (never followed, never
opened) and move with the folder. Nothing is opened for writing but the two new files; nothing is
deleted.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import errno
import json
import os
import socket
import stat
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    InvalidInputError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import hash_path, normalize_algorithms
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import fsync_dir, missing_dirs, write_atomic

ASIDE_DIR = "set-aside"
RECORD_NAME = "set-aside.json"
SUMS_NAME = "SHA256SUMS"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
FILE_MODE = 0o640
DIR_MODE = 0o750
ALWAYS = "sha256"
_KINDS = (
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "char_device"),
    (stat.S_ISBLK, "block_device"),
)


# ---------------------------------------------------------------- options


def check_case_dir(case_dir):
    """The case folder, normalised; it must be an absolute path."""
    if not isinstance(case_dir, str) or not os.path.isabs(case_dir):
        raise InvalidInputError("The case folder %r is not an absolute path; give one. Nothing was set aside."
                                % (case_dir,), failed_path=case_dir)
    return os.path.normpath(case_dir)


def check_folder(folder):
    """The evidence folder relative to the case folder, normalised; no ``..``, not absolute, not the set-aside area."""
    if not isinstance(folder, str) or not folder.strip():
        raise InvalidInputError("The folder to set aside must be a non-empty path relative to the case folder. "
                                "Nothing was set aside.")
    if os.path.isabs(folder):
        raise InvalidInputError("The folder %r is an absolute path; give it relative to the case folder (for "
                                "example lab-guest-1234abcd). Nothing was set aside." % (folder,), failed_path=folder)
    if ".." in folder.split("/"):
        raise InvalidInputError("The folder %r contains '..'; give a path inside the case folder. Nothing was set "
                                "aside." % (folder,), failed_path=folder)
    norm = os.path.normpath(folder)
    if norm in (".", "") or norm.split("/")[0] == ASIDE_DIR:
        raise InvalidInputError("The folder %r names the case folder itself or its %s area, which cannot be set "
                                "aside. Nothing was set aside." % (folder, ASIDE_DIR), failed_path=folder)
    return norm


def check_reason(reason):
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInputError("A reason (one sentence why the files are set aside) is needed. Nothing was set aside.")
    return reason.strip()


def hash_algorithms(algorithms):
    """The algorithms asked for (validated, in order), with sha256 added when missing: SHA256SUMS needs it."""
    algs = normalize_algorithms(algorithms)
    if ALWAYS not in algs:
        algs.append(ALWAYS)
    return algs


# ---------------------------------------------------------------- small helpers


def iso_utc_ns(ns):
    """A time in nanoseconds since the epoch as UTC ISO 8601 with all nine fractional digits and a Z."""
    seconds, frac = divmod(int(ns), 1000000000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%09dZ" % frac


def iso_utc(moment):
    """A timezone-aware datetime as UTC ISO 8601 with microseconds and a Z (as the journal's utc_now)."""
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def kind_of(mode):
    for test, name in _KINDS:
        if test(mode):
            return name
    return "other"


def sums_line(hexdigest, name):
    """One line of a GNU ``sha256sum`` file; a name with a backslash or a line break is escaped as coreutils does."""
    if "\\" in name or "\n" in name or "\r" in name:
        name = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return "\\%s  %s\n" % (hexdigest, name)
    return "%s  %s\n" % (hexdigest, name)


def _unsupported_name(rel, src):
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(
            "The name of %r under %s is not valid UTF-8, which the record and SHA256SUMS cannot hold. Nothing was "
            "set aside or moved; rename it by hand (noting both names) and run again." % (rel, src),
            failed_path=os.path.join(src, rel))


def _read_only(exc):
    return " (the filesystem is mounted read-only)" if exc.errno == errno.EROFS else ""


def _os_error(what, exc, src, path=None):
    """A DestinationError for an OSError before the move: nothing was moved."""
    return DestinationError("%s failed: %s%s. Nothing was set aside or moved; %s is as it was."
                            % (what, exc.strerror or exc, _read_only(exc), src), failed_path=path or exc.filename or src)


# ---------------------------------------------------------------- reading the folder


def scan(root):
    """Every entry under ``root`` that is not a folder, links not followed: ``[(relative path, lstat)]`` sorted.

    Empty folders hold nothing; a link to a folder is an entry (it is never followed).
    """
    entries = []
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            children = sorted(it, key=lambda e: e.name)
        for entry in children:
            child = os.path.join(rel, entry.name) if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                pending.append(child)
            else:
                entries.append((child, st))
    entries.sort(key=lambda item: item[0])
    return entries


def _fingerprint(entries):
    return [(rel, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns) for rel, st in entries]


def describe(src, rel, st, was, to):
    """The record entry of one file, without digests: where it goes, where it was, size, mtime, kind."""
    entry = {
        "path": os.path.join(to, rel),
        "was": os.path.join(was, rel),
        "size": st.st_size,
        "mtime": iso_utc_ns(st.st_mtime_ns),
        "kind": kind_of(st.st_mode),
    }
    if entry["kind"] == "symlink":
        entry["target"] = os.readlink(os.path.join(src, rel))
    return entry


def _source(case_dir, folder):
    """lstat of ``<case_dir>/<folder>``, or None when it does not exist; refuses a link or a non-folder."""
    src = os.path.join(case_dir, folder)
    try:
        st = os.lstat(src)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return src, None
        raise _os_error("Looking at %s" % src, exc, src)
    if stat.S_ISLNK(st.st_mode):
        raise DestinationError("%s is a symbolic link, not a folder; it is left as it is and nothing was set aside."
                               % src, failed_path=src)
    if not stat.S_ISDIR(st.st_mode):
        raise DestinationError("%s is not a folder; it is left as it is and nothing was set aside." % src,
                               failed_path=src)
    parent = os.path.dirname(folder)
    if parent and os.path.realpath(os.path.join(case_dir, parent)) != os.path.join(os.path.realpath(case_dir), parent):
        raise DestinationError("A folder on the way from %s to %s is a symbolic link; the folder would not be set "
                               "aside where the case expects it. Nothing was set aside." % (case_dir, src),
                               failed_path=src)
    return src, st


def _hash_all(src, entries, algorithms):
    """``{relative path: {algorithm: hex}}`` for every regular file."""
    digests = {}
    for rel, st in entries:
        if not stat.S_ISREG(st.st_mode):
            continue
        path = os.path.join(src, rel)
        try:
            digests[rel] = hash_path(path, algorithms)["digests"]
        except EvidenceSourceError as exc:
            raise EvidenceSourceError("%s Nothing was set aside or moved; %s is as it was." % (exc.message, src),
                                      **exc.details)
        except OSError as exc:
            raise _os_error("Hashing %s" % path, exc, src, path)
    return digests


# ---------------------------------------------------------------- writing


def _stamp_names(moment):
    base = moment.strftime(STAMP_FORMAT)
    yield base
    n = 1
    while True:
        n += 1
        yield "%s-%d" % (base, n)


def free_stamp(aside_dir, moment):
    """The first stamp name not taken in ``aside_dir`` (for check mode: nothing is made)."""
    for name in _stamp_names(moment):
        if not os.path.lexists(os.path.join(aside_dir, name)):
            return name


def _mkdirs(folders, src):
    """Make ``folders`` (outermost first, mode 0750), each fsynced into its parent."""
    for folder in folders:
        try:
            os.mkdir(folder, DIR_MODE)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise _os_error("Creating the folder %s" % folder, exc, src, folder)
            continue
        try:
            fsync_dir(os.path.dirname(folder))
        except OSError as exc:
            raise _os_error("Syncing the folder %s" % os.path.dirname(folder), exc, src, folder)


def _missing(aside_dir, src):
    try:
        return missing_dirs(aside_dir)
    except NotADirectoryError as exc:
        raise DestinationError("%s exists and is not a folder; nothing can be set aside below it. Nothing was set "
                               "aside or moved; %s is as it was." % (exc.filename, src), failed_path=exc.filename)


def make_stamp(aside_dir, moment, src):
    """Make ``aside_dir`` if needed and a new stamp folder in it; returns the stamp's name (never an existing one)."""
    _mkdirs(_missing(aside_dir, src), src)
    for name in _stamp_names(moment):
        path = os.path.join(aside_dir, name)
        try:
            os.mkdir(path, DIR_MODE)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                continue
            raise _os_error("Creating the folder %s" % path, exc, src, path)
        try:
            fsync_dir(aside_dir)
        except OSError as exc:
            raise _os_error("Syncing the folder %s" % aside_dir, exc, src, path)
        return name


def _same_filesystem(src, src_st, aside_dir, case_dir):
    """Refuse before anything is written when one rename cannot move the folder (another filesystem, a mount)."""
    target = aside_dir if os.path.isdir(aside_dir) else case_dir
    try:
        dev = os.stat(target).st_dev
    except OSError as exc:
        raise _os_error("Looking at %s" % target, exc, src, target)
    if dev != src_st.st_dev:
        raise DestinationError("%s is not on the same filesystem as %s (a mount point?); one rename cannot move it "
                               "there. Nothing was set aside or moved; %s is as it was." % (src, target, src),
                               failed_path=src)


def _record_text(record):
    return json.dumps(record, indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def _sums_text(files, stamp_rel):
    """SHA256SUMS of the regular files, names relative to the stamp folder (``cd <stamp> && sha256sum -c``)."""
    lines = []
    for entry in files:
        if "digests" in entry:
            lines.append(sums_line(entry["digests"][ALWAYS], os.path.relpath(entry["path"], stamp_rel)))
    return "".join(lines)


def _move(src, dest, record_path):
    try:
        os.rename(src, dest)
    except OSError as exc:
        raise DestinationError(
            "Moving %s to %s failed: %s%s. The record of the files that were to be set aside was already written "
            "to %s, but nothing was moved: %s is as it was." % (src, dest, exc.strerror or exc, _read_only(exc),
                                                                record_path, src),
            failed_path=src, record=record_path)


# ---------------------------------------------------------------- the whole step


def _result(changed, files, to, record_path, src_rel, reason, check_mode):
    total = sum(e["size"] for e in files if e["kind"] == "file")
    verb = "would set aside" if check_mode else "set aside"
    return {
        "changed": changed,
        "set_aside": files,
        "to": to,
        "record": record_path,
        "bytes": total,
        "msg": "%s %d file(s) (%d bytes) of an incomplete run from %s to %s: %s"
               % (verb, len(files), total, src_rel, to, reason),
    }


def _nothing(src, why):
    return {"changed": False, "set_aside": [], "to": None, "record": None, "bytes": 0,
            "msg": "nothing to set aside: %s %s" % (src, why)}


def set_aside(case_dir, folder, reason, algorithms=(ALWAYS,), run_id=None, check_mode=False):
    """Set aside ``<case_dir>/<folder>`` (see the module doc): hash, record, then one rename.

    Returns dict(changed, set_aside, to, record, bytes, msg); ``set_aside`` as the record's ``files``.
    """
    case_dir = check_case_dir(case_dir)
    folder = check_folder(folder)
    reason = check_reason(reason)
    algorithms = hash_algorithms(algorithms)
    src, src_st = _source(case_dir, folder)
    if src_st is None:
        return _nothing(src, "does not exist")
    try:
        entries = scan(src)
    except OSError as exc:
        raise _os_error("Listing %s" % src, exc, src)
    if not entries:
        return _nothing(src, "holds no file (empty folders are left as they are)")
    for rel, dummy in entries:
        _unsupported_name(rel, src)
    aside_dir = os.path.join(case_dir, ASIDE_DIR)
    _missing(aside_dir, src)
    _same_filesystem(src, src_st, aside_dir, case_dir)
    if check_mode:
        stamp = free_stamp(aside_dir, datetime.datetime.now(datetime.timezone.utc))
        to = os.path.join(ASIDE_DIR, stamp, folder)
        files = [describe(src, rel, st, folder, to) for rel, st in entries]
        return _result(True, files, to, os.path.join(aside_dir, stamp, RECORD_NAME), folder, reason, True)

    digests = _hash_all(src, entries, algorithms)
    try:
        again = scan(src)
    except OSError as exc:
        raise _os_error("Listing %s" % src, exc, src)
    if _fingerprint(again) != _fingerprint(entries):
        raise DestinationError("The files in %s changed while they were hashed (is a run still writing there?). "
                               "Nothing was set aside or moved; stop what writes there and run again." % src,
                               failed_path=src)

    moment = datetime.datetime.now(datetime.timezone.utc)
    stamp = make_stamp(aside_dir, moment, src)
    stamp_dir = os.path.join(aside_dir, stamp)
    stamp_rel = os.path.join(ASIDE_DIR, stamp)
    to = os.path.join(stamp_rel, folder)
    dest = os.path.join(case_dir, to)
    record_path = os.path.join(stamp_dir, RECORD_NAME)
    try:
        files = [describe(src, rel, st, folder, to) for rel, st in entries]
    except OSError as exc:
        raise _os_error("Reading a link in %s" % src, exc, src)
    for entry, (rel, dummy) in zip(files, entries):
        if rel in digests:
            entry["digests"] = digests[rel]
    record = {
        "set_aside_at": iso_utc(moment),
        "reason": reason,
        "run_id": run_id,
        "host": socket.gethostname(),
        "from": folder,
        "to": to,
        "files": files,
    }
    nested = []
    parent = os.path.dirname(folder)
    while parent:
        nested.insert(0, os.path.join(stamp_dir, parent))
        parent = os.path.dirname(parent)
    _mkdirs(nested, src)
    for name, text in ((SUMS_NAME, _sums_text(files, stamp_rel)), (RECORD_NAME, _record_text(record))):
        path = os.path.join(stamp_dir, name)
        try:
            write_atomic(path, text, durable=True, mode=FILE_MODE)
        except OSError as exc:
            raise DestinationError(
                "Writing %s failed: %s%s. Nothing was moved: %s is as it was; the new folder %s is left as it is "
                "(without a complete record)." % (path, exc.strerror or exc, _read_only(exc), src, stamp_dir),
                failed_path=path)

    _move(src, dest, record_path)
    try:
        fsync_dir(os.path.dirname(src))
        fsync_dir(os.path.dirname(dest))
    except OSError as exc:
        raise DestinationError("%s was moved to %s (its record is %s), but the folders could not be synced: %s. "
                               "A crash now may undo the move; sync the filesystem." % (src, dest, record_path,
                                                                                        exc.strerror or exc),
                               failed_path=dest, record=record_path)
    return _result(True, files, to, record_path, folder, reason, False)
