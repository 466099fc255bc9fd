# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sparse-aware reading: which ranges of a file hold data, and opening sources read-only.

Cost should follow allocated data, not virtual size: ``iter_extents`` asks the filesystem
(SEEK_DATA/SEEK_HOLE) where the data is, so holes are never read from disk.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os
import stat

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import EvidenceSourceError

# lseek() whence values; os.SEEK_DATA/SEEK_HOLE exist on Linux builds of Python 3.3+.
SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)


def _refuse_type(path, st):
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise EvidenceSourceError(
            "The path %s is neither a regular file nor a block device." % path, failed_path=path)


def open_noatime(path, flags=os.O_RDONLY):
    """``os.open`` with O_NOATIME and O_CLOEXEC, falling back to no O_NOATIME where it is refused.

    O_NOATIME (owner or CAP_FOWNER only) keeps a read from moving the file's access time.
    Raises OSError like ``os.open``.
    """
    flags |= getattr(os, "O_CLOEXEC", 0)
    noatime = getattr(os, "O_NOATIME", 0)
    try:
        return os.open(path, flags | noatime)
    except OSError as exc:
        if not noatime or exc.errno != errno.EPERM:
            raise
    return os.open(path, flags)


def open_source(path):
    """Open an evidence source for reading only, without touching its access time.

    Returns ``(fd, stat_result)``. Only regular files and block devices are accepted; the
    type is checked before the open, and the open is non-blocking, so a FIFO or a device
    that would wait for a peer can never hang the caller.
    """
    try:
        _refuse_type(path, os.stat(path))
        fd = open_noatime(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise EvidenceSourceError("The path %s does not exist." % path, failed_path=path)
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise EvidenceSourceError("The path %s cannot be read: permission denied." % path, failed_path=path)
        raise EvidenceSourceError("The path %s cannot be opened: %s." % (path, exc.strerror), failed_path=path)
    st = os.fstat(fd)
    try:
        _refuse_type(path, st)  # it may have been swapped between stat and open
    except EvidenceSourceError:
        os.close(fd)
        raise
    return fd, st


def source_size(fd, st):
    """Size in bytes of a regular file or a block device."""
    if stat.S_ISBLK(st.st_mode):
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, 0, os.SEEK_SET)
        return size
    return st.st_size


def iter_extents(fd, size):
    """Yield ``(offset, length, is_data)`` ranges that cover ``[0, size)`` in order.

    Holes (``is_data`` False) read as zeros. Where the file or device cannot tell
    (block devices, filesystems without SEEK_DATA), everything is reported as data.
    """
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                data = size
            elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                yield pos, size - pos, True
                return
            else:
                raise
        data = min(data, size)
        if data > pos:
            yield pos, data - pos, False
        if data >= size:
            return
        hole = min(os.lseek(fd, data, SEEK_HOLE), size)
        yield data, hole - data, True
        pos = hole


_PAGE = 4096
_ZERO_PAGE = bytes(_PAGE)
ZERO_GRAIN = 64 * 1024  # the pieces of a block a sparse writer checks for zeros (file offsets, aligned)
_ZEROS = {}  # length -> bytes of zeros, for the few block lengths a copy sees


def is_zero(view):
    """Whether every byte of ``view`` (a buffer) is zero: a block a sparse writer can leave as a hole.

    The first page decides most blocks at once; only a block that starts with zeros is compared whole.
    """
    n = len(view)
    if view[:_PAGE].tobytes() != _ZERO_PAGE[:min(n, _PAGE)]:
        return False
    if n <= _PAGE:
        return True
    zeros = _ZEROS.get(n)
    if zeros is None:
        if len(_ZEROS) > 8:
            _ZEROS.clear()
        zeros = _ZEROS[n] = bytes(n)
    return view.tobytes() == zeros


def data_runs(view, offset, grain=ZERO_GRAIN):
    """``[(start, length)]`` within ``view`` (which holds the file's bytes from ``offset``) of the runs of
    ``grain``-aligned pieces that are not all zeros: what a sparse writer writes, the rest staying holes."""
    runs = []
    total = len(view)
    pos = 0
    run = None
    while pos < total:
        end = min(total, pos + grain - (offset + pos) % grain)
        if is_zero(view[pos:end]):
            if run is not None:
                runs.append((run, pos - run))
                run = None
        elif run is None:
            run = pos
        pos = end
    if run is not None:
        runs.append((run, total - run))
    return runs
