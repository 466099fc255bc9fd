# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one reader of processes in /proc: a process's argv, whether it is a zombie, and a scan by argv.

Every function takes ``proc`` (the /proc root) so unit tests can point it at a fake tree. A process
can end between any two reads: a process that is gone or unreadable is None or skipped, never an
error. The link watchdog of ``_iscsi.initiator`` runs as a separate program from source text that
cannot import this package, so it keeps its own two-line reader of ``/proc/<pid>/cmdline``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

PROC = "/proc"


def pids(proc=PROC):
    """The pids in ``proc``, in its order (those of processes that end meanwhile included)."""
    try:
        entries = os.listdir(proc)
    except OSError:
        return []
    return [int(entry) for entry in entries if entry.isdigit()]


def read_cmdline(pid, proc=PROC):
    """A process's argv as a list of text, [] for a kernel thread or a zombie, None when it is gone or unreadable."""
    try:
        with open(os.path.join(proc, str(pid), "cmdline"), "rb") as f:
            raw = f.read()
    except (IOError, OSError):
        return None
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0")] if raw else []


def is_zombie(pid, proc=PROC):
    """Whether the process has ended and waits to be reaped (state Z in /proc/<pid>/stat)."""
    try:
        with open(os.path.join(proc, str(pid), "stat")) as f:
            stat = f.read()
    except (IOError, OSError):
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def fd_targets(pid, proc=PROC):
    """Where a process's open file descriptors point (``socket:[inode]``, paths...); [] when it is gone or unreadable."""
    folder = os.path.join(proc, str(pid), "fd")
    try:
        fds = os.listdir(folder)
    except OSError:
        return []
    found = []
    for fd in fds:
        try:
            found.append(os.readlink(os.path.join(folder, fd)))
        except OSError:  # closed meanwhile
            continue
    return found


def find_pids(match, proc=PROC):
    """The pids, in /proc's order, of live processes whose argv (a non-empty list) satisfies ``match(argv)``."""
    found = []
    for pid in pids(proc):
        argv = read_cmdline(pid, proc)  # None when the process ended meanwhile
        if argv and match(argv) and not is_zombie(pid, proc):
            found.append(pid)
    return found


def start_ticks(pid, proc=PROC):
    """When the process started, in clock ticks since boot (field 22 of /proc/<pid>/stat), or None when it is gone.

    A pid with another start time is another process (the pid was reused): what names a process across time is
    the pair (pid, start_ticks)."""
    try:
        with open(os.path.join(proc, str(pid), "stat")) as f:
            stat = f.read()
    except (IOError, OSError):
        return None
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[19])  # fields[0] is field 3 (state): field 22 is fields[19]
    except (IndexError, ValueError):
        return None


def is_alive(pid, ticks, proc=PROC):
    """Whether the process (pid, start ticks) still runs: it exists with that start time and is no zombie."""
    return ticks is not None and start_ticks(pid, proc) == ticks and not is_zombie(pid, proc)
