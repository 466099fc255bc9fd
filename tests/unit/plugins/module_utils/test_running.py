# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A module at work for a case (_journal.running): journaled while it runs, stopped by the case's teardown first."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import StoppedError
from ansible_collections.dfir.vmcollect.plugins.module_utils._host import procfs
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import journal as j
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import running

COLLECTIONS_ROOT = j.__file__
for _level in range(7):
    COLLECTIONS_ROOT = os.path.dirname(COLLECTIONS_ROOT)
ORDER = []


@j.undo_handler("test.note_order")
def _undo_note_order(undo, ctx):
    # the worker must be gone before any other change of the case is undone
    ORDER.append(("undo", procfs.is_alive(undo["pid"], undo["ticks"]) if "pid" in undo else None))
    return "noted"


def _journal(tmp_path):
    return j.Journal("case-42", str(tmp_path / "jr"), hostname="hostA")


def _worker(tmp_path, body=""):
    """A child process at work for the case until stopped; it writes 'cleaned' when its clean-up runs."""
    ready = tmp_path / "ready"
    code = textwrap.dedent("""
        import os, signal, sys, time
        sys.path.insert(0, %r)
        from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import journal as j
        from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import running
        journal = j.Journal("case-42", %r, hostname="hostA")
        try:
            with running.at_work(journal, "evidence_copy", "copy /a to /b"):
                %s
                open(%r, "w").close()
                time.sleep(120)
        finally:
            open(%r, "w").close()
    """) % (COLLECTIONS_ROOT, str(tmp_path / "jr"), body or "pass", str(ready), str(tmp_path / "cleaned"))
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.02)
    return proc


def test_at_work_is_journaled_and_marked_ended_by_the_module_itself(tmp_path):
    journal = _journal(tmp_path)
    journal.record_change("test.note_order", {}, "the case's lock, say")
    with running.at_work(journal, "hash_verify", "hash 2 file(s)"):
        (rec,) = journal.find(j.RUNNING)
        assert rec["applied"] and rec["undo"]["pid"] == os.getpid() and rec["module"] == "hash_verify"
        assert rec["undo"]["start_ticks"] == procfs.start_ticks(os.getpid())
    assert [r["action"] for r in journal.pending()] == ["test.note_order"]
    assert journal.records()[-1]["result"] == "hash_verify (pid %d) ended" % os.getpid()


def test_a_journal_made_only_for_the_record_is_removed_with_its_folders(tmp_path):
    journal = _journal(tmp_path)
    with running.at_work(journal, "pmemsave", "capture"):
        assert journal.exists()
    assert not journal.exists() and not os.path.exists(str(tmp_path / "jr"))


def test_a_journal_made_here_is_kept_while_a_change_in_it_is_pending(tmp_path):
    journal = _journal(tmp_path)
    with pytest.raises(RuntimeError):
        with running.at_work(journal, "pmemsave", "capture"):
            journal.record_change("test.note_order", {}, "a sysctl it could not put back")
            raise RuntimeError("failed half way")
    assert [r["action"] for r in journal.pending()] == ["test.note_order"]


def test_an_error_inside_is_said_in_the_journal_and_raised(tmp_path):
    journal = _journal(tmp_path)
    journal.record_change("test.note_order", {}, "the case's lock, say")
    with pytest.raises(ZeroDivisionError):
        with running.at_work(journal, "evidence_copy", "copy"):
            1 / 0  # pylint: disable=pointless-statement
    assert len(journal.pending()) == 1 and "ZeroDivisionError" in journal.records()[-1]["result"]


def test_no_journal_no_record():
    with running.at_work(None, "evidence_copy", "copy") as change:
        assert change is None


def test_a_journal_removed_meanwhile_is_not_made_again(tmp_path):
    journal = _journal(tmp_path)
    with running.at_work(journal, "evidence_copy", "copy"):
        os.unlink(journal.path)
    assert not journal.exists()


def test_teardown_stops_a_module_still_at_work_first_and_it_cleans_up(tmp_path):
    journal = _journal(tmp_path)
    journal.record_change("test.note_order", {}, "an older change (a freeze)")
    proc = _worker(tmp_path)
    (rec,) = journal.find(j.RUNNING)
    del ORDER[:]
    result = journal.teardown()
    assert proc.wait(10) != 0 and b"StoppedError" in proc.stderr.read()
    assert (tmp_path / "cleaned").exists()  # SIGTERM became an exception: the module's clean-up ran
    assert result["undone"][0]["result"].startswith("stopped evidence_copy (pid %d)" % proc.pid)
    assert [u["action"] for u in result["undone"]] == [j.RUNNING, "test.note_order"]
    assert ORDER == [("undo", None)] and not procfs.is_alive(rec["undo"]["pid"], rec["undo"]["start_ticks"])
    assert result["removed"] and not journal.exists()


def test_a_module_that_ignores_sigterm_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(running, "STOP_WAIT", 0.5)
    journal = _journal(tmp_path)
    proc = _worker(tmp_path, "signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    result = journal.teardown()
    assert proc.wait(10) == -9
    assert result["undone"][0]["result"].startswith("killed evidence_copy (pid %d), which did not stop" % proc.pid)


def test_check_mode_says_it_would_stop_and_leaves_it_running(tmp_path):
    journal = _journal(tmp_path)
    proc = _worker(tmp_path)
    try:
        result = journal.teardown(check_mode=True)
        assert result["undone"][0]["result"].startswith("would stop evidence_copy (pid %d)" % proc.pid)
        assert proc.poll() is None and journal.find(j.RUNNING)
    finally:
        proc.kill()
        proc.wait()


def test_a_pid_reused_by_another_process_is_left_alone(tmp_path):
    journal = _journal(tmp_path)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        # the record names the sleeper's pid with another start time: it is another process, never signalled
        change = journal.record_change(j.RUNNING, {"pid": sleeper.pid, "start_ticks": 1, "module": "evidence_copy",
                                                   "what": "copy"}, "evidence_copy at work")
        journal.mark_applied(change)
        result = journal.teardown()
        assert result["undone"][0]["result"] == "evidence_copy (pid %d) had ended" % sleeper.pid
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sigterm_in_the_block_is_a_stopped_error_and_the_old_handler_comes_back(tmp_path):
    journal = _journal(tmp_path)
    journal.record_change("test.note_order", {}, "the case's lock, say")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StoppedError):
        with running.at_work(journal, "pmemsave", "capture"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) == before
    assert journal.records()[-1]["result"].endswith("stopped by SIGTERM")


def test_start_ticks_of_this_process_and_of_none():
    assert procfs.start_ticks(os.getpid()) > 0 and procfs.is_alive(os.getpid(), procfs.start_ticks(os.getpid()))
    assert procfs.start_ticks(2 ** 22 + 7) is None and not procfs.is_alive(2 ** 22 + 7, 5)
