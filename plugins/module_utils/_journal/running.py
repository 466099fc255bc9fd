# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A module at work for a case is written in the case's journal, so that teardown can stop it first.

Killing ``ansible-playbook`` does not stop a module already running on a host: it runs on to its end
(a RAM capture, a disk copy, a verification), while a teardown started meanwhile would unfreeze the
disks under it or fail to unmount the volume it writes ("target is busy"). So a module that works
for a case (``at_work``) journals a change of action ``module.running`` before it starts: its pid, its
start time in clock ticks (a pid with another start time is another process), its module name and
what it does. It marks the record undone itself when it ends, however it ends.

The undo handler stops the process if it still runs: SIGTERM (the module's ``at_work`` turns it into
StoppedError, so its own clean-up runs: a migration cancelled, a partial file closed), then SIGKILL
after ``STOP_WAIT`` seconds, and it waits until the process is gone. ``Journal.teardown`` replays the
``module.running`` records before every other change, so nothing is undone under a running module.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import contextlib
import os
import signal
import threading
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import JournalError, StoppedError
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import procfs
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import RUNNING, undo_handler

STOP_WAIT = 60.0  # seconds a module gets to clean up after SIGTERM (a migration to cancel, a file to close)
KILL_WAIT = 15.0
POLL = 0.1


def _stopped(signum, frame):
    raise StoppedError("Stopped by signal %d: the case's teardown stops a module still at work after its playbook "
                       "ended; run the acquisition again to finish the case." % signum)


@contextlib.contextmanager
def at_work(journal, module, what):
    """Journal this process as at work for the case while the block runs (see the module docstring).

    ``journal`` None (a module run without a case) journals nothing. SIGTERM raises StoppedError inside the
    block (main thread only); the handler that was there before is put back at the end. A journal this call made
    (there was none) is removed again at the end when nothing in it is left to undo: a module that refused, or that
    only reads, leaves no trace."""
    if journal is None:
        yield None
        return
    pid = os.getpid()
    made_journal = not journal.exists()
    undo = {"pid": pid, "start_ticks": procfs.start_ticks(pid), "module": module, "what": what}
    change = journal.record_change(RUNNING, undo, "%s at work (pid %d): %s" % (module, pid, what), module=module)
    journal.mark_applied(change)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _stopped)
    outcome = "ended"
    try:
        yield change
    except StoppedError:
        outcome = "stopped by SIGTERM"
        raise
    except BaseException as exc:
        outcome = "ended with an error (%s)" % type(exc).__name__
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if journal.exists():  # never re-create a journal a teardown removed
            journal.mark_undone(change, "%s (pid %d) %s" % (module, pid, outcome))
            if made_journal and not journal.pending():
                # a module that changed nothing (it refused, or it only reads) leaves no journal it made: no trace
                journal._remove()  # pylint: disable=protected-access


def _wait_gone(pid, ticks, seconds, clock=time.monotonic, sleep=time.sleep):
    deadline = clock() + seconds
    while procfs.is_alive(pid, ticks):
        if clock() > deadline:
            return False
        sleep(POLL)
    return True


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except OSError:  # ended between the look and the signal
        pass


@undo_handler(RUNNING)
def _undo_running(undo, ctx):
    """A module at work for the case: stopped if it still runs (SIGTERM, then SIGKILL), and waited for."""
    pid, ticks, module = int(undo["pid"]), undo.get("start_ticks"), undo.get("module", "a module")
    if pid == os.getpid() or not procfs.is_alive(pid, ticks):
        return "%s (pid %d) had ended" % (module, pid)
    if ctx.check_mode:
        return "would stop %s (pid %d), still at work: %s" % (module, pid, undo.get("what", ""))
    _signal(pid, signal.SIGTERM)
    if _wait_gone(pid, ticks, STOP_WAIT):
        return "stopped %s (pid %d), still at work after its playbook ended: %s" % (module, pid, undo.get("what", ""))
    _signal(pid, signal.SIGKILL)
    if _wait_gone(pid, ticks, KILL_WAIT):
        return ("killed %s (pid %d), which did not stop within %d s of SIGTERM: %s"
                % (module, pid, STOP_WAIT, undo.get("what", "")))
    raise JournalError("%s (pid %d) still runs %d s after SIGKILL (a process stuck in the kernel, in state D on a "
                       "storage that does not answer); nothing of the case was undone under it. Find out why with "
                       "`cat /proc/%d/stack`, then run teardown again." % (module, pid, STOP_WAIT + KILL_WAIT, pid))
