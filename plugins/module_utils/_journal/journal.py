# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The undo journal: every change to a host is written down before it is made.

One JSON-lines file per case and host: ``<journal_dir>/<case_id>/<hostname>.jsonl``. A module
that changes the host appends a ``change`` record holding everything needed to undo it, fsyncs
it, and only then makes the change; after the change it appends ``applied``. ``teardown``
replays the journal newest first: every change not yet ``undone`` is handed to the undo
handler registered for its action, then an ``undone`` record is appended. Handlers must be
idempotent and must cope with a change that was recorded but never (or only half) applied:
a crash or ``kill -9`` can fall between the record and the change.

There is one replay loop, ``Journal.replay(records, ctx)``: teardown, ``iscsi_attach``'s
detach and rollback, ``loop_mount``, ``setup_iscsi_target state=absent`` and the memory
acquisition's own clean-up all use it; each caller only chooses which records to hand it.

The handler contract::

    @undo_handler("provider.thing")
    def undo_thing(undo, ctx):
        ...
        return "removed the thing"      # one short sentence, said in the past tense
                                        # ("would remove ..." when ctx.check_mode)

* ``undo`` is the dict the module journaled with ``record_change``: everything needed to undo
  the change, and nothing secret (the journal is a plain file that ends up in the case manifest).
* ``ctx`` is an ``UndoContext``: ``ctx.check_mode`` (say what would be done, change nothing) and
  ``ctx.options``, the connection options teardown's caller passed (for example the hostname,
  username and password of a vCenter or ESXi host a provider must log in to). Credentials come
  from ``ctx.options`` only, never from the journal; they are not written anywhere: secret option
  values are masked in every result and error message before the journal or the task sees them.
* A handler is idempotent, copes with a change recorded but never made, and raises the
  collection's exception (``_errors``) with a sentence when it cannot undo; the replay stops there
  and says which change failed and that the older ones are still in place.

Records are only ever appended, under an exclusive ``flock``, so two tasks on one host cannot
interleave lines, and a torn last line (a crash mid-write) is ignored with a note.

The journal itself is a trace on the host: the folders it had to create are recorded in the
first record, and a complete teardown returns the records (for the case's custody log) and
removes the file and those folders.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import errno
import fcntl
import json
import os
import re
import socket
import uuid

from ansible_collections.dfir.vmcollect.plugins.module_utils._case import check_case_id
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, JournalError
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import fsync_dir, remove_empty_dirs

DEFAULT_JOURNAL_DIR = "/var/lib/dfir-vmcollect/journal"
# a module at work for the case (_journal.running): teardown stops these before it undoes anything else
RUNNING = "module.running"

# action name -> function(undo_dict, ctx) -> short sentence of what was (or would be) done
UNDO_HANDLERS = {}
# functions(action) that import the module registering ``action``'s handler, asked by ``replay`` when it has none
# (_journal.handlers: the teardown module loads only what its journal needs)
UNDO_LOADERS = []
_MASK = "********"
_SECRET_OPTION = re.compile(r"pass|secret|token|key", re.IGNORECASE)


class UndoContext(object):
    """What every undo handler gets besides the record's ``undo`` dict (see the module docstring).

    ``check_mode``: report what would be undone, change nothing. ``options``: connection options
    from teardown's caller (never from the journal). ``secrets``: further values to mask; the values
    of options whose name says pass/secret/token/key are masked anyway.
    """

    def __init__(self, check_mode=False, options=None, secrets=()):
        self.check_mode = bool(check_mode)
        self.options = dict(options or {})
        values = set(s for s in secrets if isinstance(s, str))
        values.update(v for k, v in self.options.items() if isinstance(v, str) and _SECRET_OPTION.search(k))
        self._secrets = sorted((v for v in values if v), key=len, reverse=True)

    def scrub(self, text):
        """``text`` with every secret value replaced by a mask, before it is written or returned."""
        for value in self._secrets:
            text = text.replace(value, _MASK)
        return text

    def __repr__(self):
        # never the values: a repr can end up in a traceback
        return "UndoContext(check_mode=%r, options=[%s])" % (self.check_mode, ", ".join(sorted(self.options)))


def undo_handler(action):
    """Decorator: register the function that undoes changes recorded with ``action``."""

    def register(fn):
        UNDO_HANDLERS[action] = fn
        return fn

    return register


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _makedirs_recorded(path, private_from=None):
    """Create ``path`` and missing parents; return the folders created, outermost first.

    ``private_from`` (the journal folder) and the folders below it are 0700. Its parents are 0711: others may pass
    through, not list them. They are shared with the collection's other folders (``/var/lib/dfir-vmcollect`` holds
    the journal, the evidence, the volume's mountpoint), and QEMU, which writes a pmemsave RAM image itself as its own
    user, must pass through them to reach it."""
    missing = []
    cur = os.path.abspath(path)
    while not os.path.isdir(cur):
        missing.append(cur)
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        cur = parent
    created = []
    for folder in reversed(missing):
        private = private_from is None or folder == private_from or folder.startswith(private_from.rstrip("/") + "/")
        try:
            os.mkdir(folder, 0o700 if private else 0o711)
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            continue
        created.append(folder)
        fsync_dir(os.path.dirname(folder))
    return created


class Journal(object):
    """The journal of one case on this host."""

    def __init__(self, case_id, journal_dir=DEFAULT_JOURNAL_DIR, hostname=None):
        self.case_id = check_case_id(case_id)
        if not os.path.isabs(journal_dir):
            raise InvalidInputError("The journal folder %s is relative; give an absolute path." % journal_dir)
        self.journal_dir = journal_dir
        self.hostname = hostname or socket.gethostname()
        self.case_dir = os.path.join(journal_dir, self.case_id)
        self.path = os.path.join(self.case_dir, "%s.jsonl" % self.hostname)

    # -- reading --------------------------------------------------------------------------
    def exists(self):
        return os.path.exists(self.path)

    def records(self):
        """All complete records in file order; a torn last line is skipped."""
        if not self.exists():
            return []
        result = []
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                result.append(json.loads(line.decode("utf-8")))
            except ValueError:
                if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
                    continue  # torn last line: the write never completed, so its change never began
                raise JournalError("Line %d of the journal %s is damaged; it cannot be replayed safely."
                                   % (number, self.path), journal=self.path)
        return result

    def pending(self):
        """Change records not undone yet, newest first."""
        records = self.records()
        undone = set(r["ref"] for r in records if r.get("kind") == "undone")
        applied = set(r["ref"] for r in records if r.get("kind") == "applied")
        changes = [r for r in records if r.get("kind") == "change" and r["id"] not in undone]
        for r in changes:
            r["applied"] = r["id"] in applied
        return sorted(changes, key=lambda r: r["seq"], reverse=True)

    def find(self, action, **match):
        """Pending change records of ``action`` whose ``undo`` holds every key/value of ``match``."""
        return [r for r in self.pending() if r["action"] == action
                and all(r["undo"].get(k) == v for k, v in match.items())]

    # -- writing --------------------------------------------------------------------------
    def _append(self, record):
        created = []
        if not os.path.isdir(self.case_dir):
            created = _makedirs_recorded(self.case_dir, self.journal_dir)
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                # the journal's folder was removed with another journal meanwhile: make it again
                created = _makedirs_recorded(self.case_dir, self.journal_dir)
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink:
                break
            # the journal was removed (its last change undone) between our open and our lock: write a new one
            os.close(fd)
            if not os.path.isdir(self.case_dir):
                created = _makedirs_recorded(self.case_dir, self.journal_dir)
        try:
            size = os.fstat(fd).st_size
            seq = self._next_seq() if size else 1
            if not size:
                # the first record says which folders the journal had to create, so the
                # final teardown can remove them too; the journals of other hosts in the same folder (a
                # journal folder shared between hosts) hand theirs on, so the last journal removed removes them
                created = self._siblings_created_dirs(created)
                first = {"seq": seq, "kind": "journal", "time": utc_now(), "case_id": self.case_id,
                         "host": self.hostname, "created_dirs": created}
                os.write(fd, (json.dumps(first, sort_keys=True) + "\n").encode("utf-8"))
                seq += 1
            record = dict(record, seq=seq, time=utc_now())
            os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
            os.fsync(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        if not size:
            fsync_dir(self.case_dir)
        return record

    def _siblings_created_dirs(self, created):
        """``created`` plus the folders the other hosts' journals of this case say they created."""
        result = list(created)
        try:
            names = sorted(os.listdir(self.case_dir))
        except OSError:
            return result
        for name in names:
            other = os.path.join(self.case_dir, name)
            if not name.endswith(".jsonl") or other == self.path:
                continue
            try:
                with open(other, "rb") as f:
                    first = json.loads(f.readline().decode("utf-8"))
            except (IOError, OSError, ValueError):
                continue
            if isinstance(first, dict) and first.get("kind") == "journal":
                result.extend(d for d in first.get("created_dirs", []) if d not in result)
        return sorted(result, key=len)

    def _next_seq(self):
        records = self.records()
        return (max(r.get("seq", 0) for r in records) + 1) if records else 1

    def record_change(self, action, undo, description, module=None):
        """Write down a change before it is made; returns its id. ``undo`` must be JSON-able."""
        if action not in UNDO_HANDLERS:
            raise JournalError("No undo handler is known for the action %r; refusing to make a change "
                               "that teardown could not undo." % action)
        record = {"kind": "change", "id": uuid.uuid4().hex, "action": action, "undo": undo,
                  "description": description, "module": module, "host": self.hostname, "pid": os.getpid()}
        return self._append(record)["id"]

    def mark_applied(self, change_id, **facts):
        self._append({"kind": "applied", "ref": change_id, "facts": facts})

    def mark_undone(self, change_id, result):
        self._append({"kind": "undone", "ref": change_id, "result": result})

    # -- replay and teardown ----------------------------------------------------------------
    def replay(self, records, ctx=None):
        """Undo ``records`` (change records of this journal, e.g. from ``pending()``) newest first,
        each through the handler registered for its action, and mark each one undone (not in check
        mode). The one replay loop of the collection; callers choose the records.

        Stops at the first failure (older changes may depend on it) with a JournalError that names
        the change and carries ``undone`` (what was undone before it) and ``failed_change``; a rerun
        continues where it stopped. Returns the undone changes: dict(id, action, description, result).
        """
        ctx = ctx if ctx is not None else UndoContext()
        records = sorted(records, key=lambda r: r["seq"], reverse=True)
        undone = []
        for rec in records:
            handler = UNDO_HANDLERS.get(rec["action"])
            if handler is None:
                for loader in UNDO_LOADERS:
                    loader(rec["action"])
                handler = UNDO_HANDLERS.get(rec["action"])
            if handler is None:
                raise JournalError("The journal %s holds a change of kind %r that this version cannot undo."
                                   % (self.path, rec["action"]), journal=self.path, undone=undone)
            try:
                result = handler(rec["undo"], ctx)
            except JournalError as exc:
                exc.message = ctx.scrub(exc.message)
                exc.args = (exc.message,)
                raise
            except Exception as exc:  # pylint: disable=broad-except
                raise JournalError("Undoing '%s' failed: %s. %d earlier change(s) are still in place; fix the "
                                   "cause and run teardown again."
                                   % (rec["description"], ctx.scrub(str(exc)).rstrip("."), len(records) - len(undone)),
                                   journal=self.path, undone=undone, failed_change=rec)
            result = ctx.scrub(result if isinstance(result, str) else str(result))
            if not ctx.check_mode:
                self.mark_undone(rec["id"], result)
            undone.append({"id": rec["id"], "action": rec["action"], "description": rec["description"],
                           "result": result})
        return undone

    def teardown(self, check_mode=False, remove_when_done=True, keep_modules=(), options=None, secrets=()):
        """Undo every pending change, newest first (``replay``). Stops at the first failure (later
        undos may depend on it); a rerun continues where it stopped.

        Changes made by a module named in ``keep_modules`` stay in place and in the journal (an
        attached evidence volume outlives the teardown of each VM acquired onto it); the journal
        is removed only when nothing is left pending.

        ``options`` (connection options, credentials included) and ``secrets`` go to the handlers in
        their ``UndoContext``; they are never written to the journal nor returned.

        Returns dict(undone=[...], pending=[...], kept=[...], records=[...], removed=bool).
        """
        ctx = UndoContext(check_mode, options, secrets)
        pending = self.pending()
        # first stop the modules still at work for the case (a killed playbook's copy runs on): they may append
        # or undo changes until they end, so the rest is read again after them
        at_work = [r for r in pending if r["action"] == RUNNING]
        undone = self.replay(at_work, ctx)
        if at_work and not check_mode:
            pending = self.pending()
        pending = [r for r in pending if r["action"] != RUNNING]
        kept = [r for r in pending if r.get("module") in keep_modules]
        pending = [r for r in pending if r.get("module") not in keep_modules]
        undone += self.replay(pending, ctx)
        records = self.records()
        removed = False
        if not check_mode and remove_when_done and not kept and self.exists():
            removed = self._remove()
        return {"undone": undone, "pending": [] if not check_mode else [r["description"] for r in pending],
                "kept": [r["description"] for r in kept], "records": records, "removed": removed}

    def _remove(self):
        """Remove the journal and the folders it created, under its lock, unless a change was appended meanwhile."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.pending():
                return False
            return self._remove_locked()
        finally:
            os.close(fd)

    def _remove_locked(self):
        records = self.records()
        created = []
        for r in records:
            if r.get("kind") == "journal":
                created = r.get("created_dirs", [])
        os.unlink(self.path)
        fsync_dir(self.case_dir)
        remove_empty_dirs(created)
        return True


# -- generic undo handlers usable by every module ---------------------------------------------

@undo_handler("file.created")
def _undo_file_created(undo, ctx):
    """A file this collection created on the host (an overlay, a FIFO, a temporary image)."""
    path = undo["path"]
    if not os.path.lexists(path):
        return "%s was already gone" % path
    if ctx.check_mode:
        return "would remove %s" % path
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EIO):
            raise
        # a file on a volume that failed (an iSCSI LUN whose link was lost turns its filesystem read-only):
        # it cannot be removed and it is on no host's own storage; say so and let the undo go on, so the
        # changes before it (a frozen VM) are still put back
        return "left %s: its filesystem refuses the removal (%s); it is on a volume that failed" % (path, exc.strerror)
    return "removed %s" % path


@undo_handler("sysctl")
def _undo_sysctl(undo, ctx):
    """A kernel setting changed through /proc/sys: put the original value back."""
    path = "/proc/sys/" + undo["name"].replace(".", "/")
    with open(path) as f:
        current = f.read().strip()
    if current == undo["original"]:
        return "%s is %s as found" % (undo["name"], current)
    if ctx.check_mode:
        return "would set %s back from %s to %s" % (undo["name"], current, undo["original"])
    with open(path, "w") as f:
        f.write(undo["original"] + "\n")
    return "set %s back from %s to %s" % (undo["name"], current, undo["original"])
