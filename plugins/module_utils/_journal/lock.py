# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Locks that name their holder: one per case and host, one per VM and host (whatever the case).

* The case lock ``<journal_dir>/<case_id>/<host>.lock.json`` keeps two runs of one case apart: they would
  share the case's journal, and one run's teardown would undo the other's changes.
* The VM lock ``<journal_dir>/vm-locks/<uuid>.json`` keeps two cases off one VM at once.

A lock file is a small JSON document (kind, case, run id, the holder as the caller gave it, the
host name, when it was taken and the step its holder is at). It is written completely to a
temporary file, fsync'ed, and linked into place (``link`` fails if the lock exists: atomic, and a
reader never sees half a lock). Taking a lock is a journaled change of the case (recorded before
the link), undone by the handler ``lock.held``, which removes the file only while it still names
the run that took it: teardown after a killed run releases it, and never another run's lock.

A run that finds the lock held by another run waits (polling) up to ``wait`` seconds, then is
refused with a sentence naming the holder. Before it is refused it writes nothing: not a journal
record, not a file (the case's journal belongs to the other run while it holds the lock).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import json
import os
import re
import socket
import time

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, JournalError, LockHeldError
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import fsync_dir, write_atomic
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import UndoContext, undo_handler, utc_now

ACTION = "lock.held"
VM_LOCK_DIR = "vm-locks"
# the journal's ``module`` of each kind of lock: teardown's keep_modules=[case_lock] keeps the case's lock
# (it outlives each VM) and releases the VM's
MODULE_OF = {"case": "case_lock", "vm": "vm_lock"}
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TEARDOWN_HINT = "ansible-playbook dfir.vmcollect.teardown -e vmcollect_case_id=%s"


def _check_token(value, what):
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise InvalidInputError("The %s %r must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter "
                                "or digit. Nothing was changed." % (what, value))
    return value


def lock_path(journal_dir, case_id, vm_uuid=None, hostname=None):
    """The lock file of a case on this host (``vm_uuid`` None; beside the host's journal, named like it) or of a
    VM on this host."""
    if vm_uuid:
        return os.path.join(journal_dir, VM_LOCK_DIR, "%s.json" % vm_uuid.lower())
    return os.path.join(journal_dir, case_id, "%s.lock.json" % (hostname or socket.gethostname()))


def read_lock(path):
    """The lock at ``path`` as a dict, or None when there is none. A lock file is only ever linked into place
    complete, so one that does not parse was damaged by something else: that is said, not guessed around."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (IOError, OSError) as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    try:
        lock = json.loads(data.decode("utf-8"))
        if not isinstance(lock, dict):
            raise ValueError("not an object")
    except ValueError:
        raise JournalError("The lock file %s is damaged (it is not a lock this collection wrote). If no run of the "
                           "case is going on, remove it by hand. Nothing was changed." % path, lock_file=path)
    return lock


def describe_holder(lock):
    """One phrase naming who holds ``lock``: host, run, who, started, step (and the case, for a VM lock)."""
    holder = lock.get("holder") or {}
    where = "on %s" % lock.get("host", "?")
    if lock.get("kind") == "vm":
        where += " by case %s" % lock.get("case_id", "?")
    parts = ["run %s" % lock.get("run_id", "?")]
    who = holder.get("user")
    if who and holder.get("controller"):
        who = "%s@%s" % (who, holder["controller"])
    if who:
        parts.append("by %s" % who)
    if holder.get("pid"):
        parts.append("ansible-playbook pid %s" % holder["pid"])
    if holder.get("awx_job_id"):
        parts.append("AWX job %s%s" % (holder["awx_job_id"],
                                       (" of %s" % holder["awx_user_name"]) if holder.get("awx_user_name") else ""))
    parts.append("started %s" % (holder.get("started") or lock.get("locked_at", "?")))
    if holder.get("step"):
        parts.append("at step '%s'" % holder["step"])
    known = ("user", "controller", "pid", "awx_job_id", "awx_user_name", "started", "step")
    parts.extend("%s %s" % (k, holder[k]) for k in sorted(holder) if k not in known and holder[k] not in (None, ""))
    return "%s (%s)" % (where, ", ".join(parts))


def refusal(lock, path, case_id, waited):
    """The sentence of a refused lock: who holds it and what to do."""
    owner_case = lock.get("case_id") or case_id
    if lock.get("kind") == "vm":
        what = "The VM %s (%s) is locked" % (lock.get("vm_name") or lock.get("vm_uuid"), lock.get("vm_uuid"))
    else:
        what = "The case %s is locked" % case_id
    return ("%s %s; lock file %s%s. Wait for that run to end; if it was killed, run playbooks/teardown.yml for "
            "case %s first (%s). Nothing was changed."
            % (what, describe_holder(lock), path, ("; waited %d s" % waited) if waited else "", owner_case,
               TEARDOWN_HINT % owner_case))


class _Taken(Exception):
    """The lock appeared between the look and the link."""


def take(journal, run_id, holder, vm_uuid=None, vm_name=None, wait=0, check_mode=False, poll=1.0,
         hostname=None, clock=time.monotonic, sleep=time.sleep):
    """Take the case's lock (or a VM's, with ``vm_uuid``) for ``run_id``; see the module docstring.

    Returns dict(changed, taken, path, lock, msg); ``taken`` is true when this call took it (or would, in check
    mode), false when the run held it already. Raises LockHeldError (nothing changed) when another run holds it
    after ``wait`` seconds.
    """
    _check_token(run_id, "run id")
    if vm_uuid is not None:
        vm_uuid = _check_token(vm_uuid, "VM UUID").lower()
    if not isinstance(holder, dict):
        raise InvalidInputError("The holder must be a dict (who, started, step...). Nothing was changed.")
    if wait < 0:
        raise InvalidInputError("wait must be 0 or more seconds. Nothing was changed.")
    kind = "vm" if vm_uuid else "case"
    path = lock_path(journal.journal_dir, journal.case_id, vm_uuid, journal.hostname)
    hostname = hostname or socket.gethostname()
    started = clock()
    while True:
        current = read_lock(path)
        if current is not None and current.get("run_id") == run_id:
            return _again(path, current, holder, check_mode)
        if current is None:
            wanted = {"kind": kind, "case_id": journal.case_id, "run_id": run_id, "holder": dict(holder),
                      "host": hostname, "locked_at": utc_now(), "pid": os.getpid(), "journal": journal.path}
            if vm_uuid:
                wanted.update(vm_uuid=vm_uuid, vm_name=vm_name)
            if check_mode:
                return {"changed": True, "taken": True, "path": path, "lock": wanted,
                        "msg": "would take the %s lock %s for run %s" % (kind, path, run_id)}
            try:
                _create(journal, path, wanted, kind)
            except _Taken:
                continue
            return {"changed": True, "taken": True, "path": path, "lock": wanted,
                    "msg": "took the %s lock %s for run %s" % (kind, path, run_id)}
        waited = clock() - started
        if waited >= wait:
            raise LockHeldError(refusal(current, path, journal.case_id, int(round(waited))),
                                lock_file=path, holder=current)
        sleep(max(0.0, min(poll, wait - waited)))


def _again(path, current, holder, check_mode):
    """The same run takes its lock again: nothing to take; the holder's step (and what else it says) is updated."""
    merged = dict(current.get("holder") or {})
    merged.update(holder)
    if merged != current.get("holder") and not check_mode:
        current = dict(current, holder=merged, updated_at=utc_now())
        write_atomic(path, json.dumps(current, sort_keys=True) + "\n", mode=0o600)
    return {"changed": False, "taken": False, "path": path, "lock": current,
            "msg": "run %s already holds the lock %s" % (current.get("run_id"), path)}


def _create(journal, path, lock, kind):
    """Journal the lock, then link it into place complete. Raises _Taken when another run linked first."""
    tmp = "%s.%s.tmp" % (path, lock["run_id"])
    undo = {"path": path, "run_id": lock["run_id"], "tmp": tmp, "kind": kind, "case_id": lock["case_id"]}
    if kind == "vm":
        undo.update(vm_uuid=lock["vm_uuid"], vm_name=lock.get("vm_name"), remove_dir=os.path.dirname(path))
        description = "lock the VM %s (%s) for case %s, run %s" % (lock.get("vm_name") or lock["vm_uuid"],
                                                                   lock["vm_uuid"], lock["case_id"], lock["run_id"])
    else:
        description = "lock the case %s on this host for run %s" % (lock["case_id"], lock["run_id"])
    change = journal.record_change(ACTION, undo, description, module=MODULE_OF[kind])
    text = (json.dumps(lock, sort_keys=True) + "\n").encode("utf-8")
    for _attempt in range(5):
        folder = os.path.dirname(path)
        try:
            os.mkdir(folder, 0o700)  # the VM locks' folder (the case's exists: the journal made it)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                os.write(fd, text)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            finally:
                os.unlink(tmp)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue  # another case removed the empty VM locks' folder meanwhile: make it again
            if exc.errno == errno.EEXIST:
                # another run linked its lock between our look and our link: ours was never taken
                journal.mark_undone(change, "not taken: another run took the lock first")
                raise _Taken()
            raise
        fsync_dir(folder)
        journal.mark_applied(change, lock_file=path)
        return
    raise JournalError("The lock folder %s keeps disappearing while the lock %s is taken; another process removes "
                       "it. Find it, then run again." % (os.path.dirname(path), path))


def release(journal, run_id, vm_uuid=None, check_mode=False, remove_journal=True):
    """Release the lock ``run_id`` holds, through the journal's replay of its record (the journal shows it undone).

    With ``remove_journal``, a journal left with nothing to undo is removed as teardown would (the case lock is the
    last change of a run). Returns dict(changed, path, undone, msg, journal_removed).
    """
    _check_token(run_id, "run id")
    if vm_uuid is not None:
        vm_uuid = _check_token(vm_uuid, "VM UUID").lower()
    path = lock_path(journal.journal_dir, journal.case_id, vm_uuid, journal.hostname)
    records = journal.find(ACTION, path=path, run_id=run_id)
    if not records:
        current = read_lock(path)
        if current is not None and current.get("run_id") != run_id:
            msg = "run %s holds no lock %s; it is held %s and was left alone" % (run_id, path, describe_holder(current))
        else:
            msg = "run %s holds no lock %s" % (run_id, path)
        return {"changed": False, "path": path, "undone": [], "msg": msg, "journal_removed": False}
    undone = journal.replay(records, UndoContext(check_mode))
    removed = False
    if remove_journal and not check_mode and journal.exists() and not journal.pending():
        removed = journal._remove()  # pylint: disable=protected-access
    return {"changed": True, "path": path, "undone": undone, "journal_removed": removed,
            "msg": "; ".join(u["result"] for u in undone)}


@undo_handler(ACTION)
def _undo_lock(undo, ctx):
    """A lock this run took: removed only while it still names this run (never another run's lock)."""
    path = undo["path"]
    tmp = undo.get("tmp")
    if tmp and os.path.lexists(tmp) and not ctx.check_mode:
        os.unlink(tmp)
    current = read_lock(path)
    if current is None:
        return "the lock %s was already released" % path
    if current.get("run_id") != undo["run_id"]:
        return "left the lock %s: it is held %s, not by run %s" % (path, describe_holder(current), undo["run_id"])
    if ctx.check_mode:
        return "would release the lock %s of run %s" % (path, undo["run_id"])
    os.unlink(path)
    folder = os.path.dirname(path)
    fsync_dir(folder)
    if undo.get("remove_dir"):
        try:
            os.rmdir(undo["remove_dir"])  # the VM locks' folder, when no other lock is in it
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                raise
    return "released the lock %s of run %s" % (path, undo["run_id"])
