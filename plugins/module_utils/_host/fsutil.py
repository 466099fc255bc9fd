# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durable file-system writes shared by every module: fsync of a folder, atomic replacement of a file."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import os


def missing_dirs(path):
    """The folders that must be made for ``path`` to exist as a folder, outermost first (empty if it does).

    Raises NotADirectoryError (``filename``: the path in the way) when something that is not a folder, or a
    link to nothing, stands where a folder would have to be.
    """
    missing = []
    cur = path
    while not os.path.isdir(cur):
        if os.path.lexists(cur):
            raise NotADirectoryError(errno.ENOTDIR, "%s exists and is not a folder" % cur, cur)
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    return list(reversed(missing))


def make_dirs(folders, mode):
    """Make each of ``folders`` (outermost first, as :func:`missing_dirs` lists them) with ``mode``, each fsynced into
    its parent; one made meanwhile by another writer is taken as it is. Returns those made here. Raises the OSError
    of a folder that cannot be made (its ``filename`` names it)."""
    made = []
    for folder in folders:
        try:
            os.mkdir(folder, mode)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            continue
        fsync_dir(os.path.dirname(folder))
        made.append(folder)
    return made


def remove_empty_dirs(folders):
    """Remove the folders of ``folders`` that are empty, innermost first (folders this collection made, recorded when
    it made them); one that is not empty or is gone already is left. Returns those removed."""
    removed = []
    for folder in sorted(folders, key=len, reverse=True):
        try:
            os.rmdir(folder)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                raise
            continue
        removed.append(folder)
    return removed


def fsync_dir(path):
    """Make a folder's entries (a new, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, text, durable=True, mode=0o644):
    """Replace ``path`` with ``text`` (str, written as UTF-8, or bytes as they are): temporary file beside it, (fsync),
    rename, (fsync of the folder).

    A reader sees the old content or the new, never a mix; with ``durable`` the new content
    survives a crash once this returns.
    """
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        data = text.encode("utf-8") if isinstance(text, str) else text
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    if durable:
        fsync_dir(os.path.dirname(path))
