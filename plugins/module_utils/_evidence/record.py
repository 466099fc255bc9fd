# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Append-only JSON-lines records (the collector's verification record, custody notes).

A record is one JSON object on one line, appended with ``O_APPEND`` under an exclusive ``flock``
and fsynced (the folder too when the file or a folder was created). What is in the file already is
never rewritten, truncated or moved: a second verification adds a line beside the first.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import hashlib
import json
import os
import stat

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import DestinationError, InvalidInputError
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import fsync_dir, make_dirs, missing_dirs
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import utc_now

FILE_MODE = 0o640
DIR_MODE = 0o750
TIME_KEY = "recorded_at"
_READ = 1024 * 1024


def record_line(record):
    """The record as one line of JSON (keys sorted, ASCII only, ending with a newline), as bytes."""
    if not isinstance(record, dict):
        raise InvalidInputError("The record must be a dictionary (one JSON object), not %s." % type(record).__name__)
    try:
        text = json.dumps(record, sort_keys=True, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError("The record cannot be written as JSON: %s." % exc)
    return (text + "\n").encode("ascii")


def _missing_dirs(folder):
    try:
        return missing_dirs(folder)
    except NotADirectoryError as exc:
        raise DestinationError("%s exists and is not a folder; the record cannot be written below it. Nothing was "
                               "written." % exc.filename, failed_path=exc.filename)


def _count_lines(fd, path):
    """Complete lines in the open file; refuses a file whose last line is not complete."""
    lines = 0
    offset = 0
    last = b"\n"
    while True:
        chunk = os.pread(fd, _READ, offset)
        if not chunk:
            break
        lines += chunk.count(b"\n")
        last = chunk[-1:]
        offset += len(chunk)
    if last != b"\n":
        raise DestinationError(
            "The last line of %s is not complete (the file does not end with a newline: a write was cut short, or "
            "it is not a JSON-lines file). It is left as it is and nothing was appended; look at the file." % path,
            failed_path=path)
    return lines, offset


def _open_existing(path, flags):
    try:
        return os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise DestinationError("The record file %s cannot be opened: %s." % (path, exc.strerror), failed_path=path)


def append_record(path, record, create=False, check_mode=False):
    """Append ``record`` (plus ``recorded_at`` unless it has one) as one line of ``path``.

    Returns dict(changed, created, line, sha256, record, bytes): ``line`` is the 1-based number of the
    appended line, ``sha256`` the digest of that line with its newline (``sed -n <line>p | sha256sum``).
    """
    if not isinstance(path, str) or not os.path.isabs(path):
        raise InvalidInputError("The path %r is not an absolute path; give one. Nothing was written." % (path,))
    path = os.path.normpath(path)
    if not isinstance(record, dict):
        raise InvalidInputError("The record must be a dictionary (one JSON object), not %s." % type(record).__name__)
    record = dict(record)
    if TIME_KEY not in record:
        record[TIME_KEY] = utc_now()
    line = record_line(record)
    folder = os.path.dirname(path)
    missing = _missing_dirs(folder)
    if missing and not create:
        raise DestinationError("The folder %s of the record file %s does not exist; set create=true to make it. Nothing "
                               "was written." % (folder, path), failed_path=path)
    flags = (os.O_RDONLY if check_mode else os.O_RDWR | os.O_APPEND) | getattr(os, "O_CLOEXEC", 0)
    fd = None if missing else _open_existing(path, flags)
    created = fd is None
    if created and not create:
        raise DestinationError("The record file %s does not exist; set create=true to create it. Nothing was written."
                               % path, failed_path=path)
    result = {"changed": True, "created": created, "record": record, "sha256": hashlib.sha256(line).hexdigest(),
              "bytes": len(line), "created_folders": missing}
    if check_mode:
        if fd is None:
            result["line"] = 1
            return result
        try:
            _check_regular(fd, path)
            result["line"] = _count_lines(fd, path)[0] + 1
        finally:
            os.close(fd)
        return result
    if fd is None:
        fd, created = _create(path, missing, flags)
        result["created"] = created
    try:
        _check_regular(fd, path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        lines, size = _count_lines(fd, path)
        try:
            done = os.write(fd, line)
            if done != len(line):
                raise OSError(errno.EIO, "only %d of %d bytes were written" % (done, len(line)))
            os.fsync(fd)
        except OSError as exc:
            raise DestinationError("Appending to %s failed: %s. Its first %d lines (%d bytes) are as they were; a "
                                   "partial line may follow them." % (path, exc.strerror, lines, size),
                                   failed_path=path)
    finally:
        os.close(fd)  # releases the lock
    if created:
        fsync_dir(folder)
    result["line"] = lines + 1
    return result


def _check_regular(fd, path):
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise DestinationError("The record file %s is not a regular file; nothing was written." % path,
                               failed_path=path)


def _create(path, missing, flags):
    """Make the missing folders (each fsynced into its parent) and the file (mode 0640): ``(fd, created)``."""
    try:
        make_dirs(missing, DIR_MODE)
    except OSError as exc:
        raise DestinationError("The folder %s cannot be created: %s. Nothing was written."
                               % (exc.filename, exc.strerror), failed_path=exc.filename)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.EEXIST:  # made meanwhile by another writer: append to it
            return _open_existing(path, flags), False
        raise DestinationError("The record file %s cannot be created: %s. Nothing was written." % (path, exc.strerror),
                               failed_path=path)
    os.fchmod(fd, FILE_MODE)
    return fd, True
