# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The undo journal on real files: ordering, crash cases, concurrency, removal."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import journal as j
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, JournalError

CALLS = []
# the folder that holds ansible_collections/, for child processes
COLLECTIONS_ROOT = j.__file__
for _level in range(7):
    COLLECTIONS_ROOT = os.path.dirname(COLLECTIONS_ROOT)


@j.undo_handler("test.append")
def _undo_append(undo, ctx):
    if not ctx.check_mode:
        CALLS.append(undo["n"])
    return "undid %s" % undo["n"]


@j.undo_handler("test.fail_once")
def _undo_fail_once(undo, ctx):
    if os.path.exists(undo["flag"]):
        os.unlink(undo["flag"])
        raise RuntimeError("the disk is busy")
    return "ok"


@pytest.fixture(autouse=True)
def _reset():
    del CALLS[:]


@pytest.fixture
def journal(tmp_path):
    return j.Journal("case-42", str(tmp_path / "var" / "lib" / "vmc"), hostname="hostA")


def test_records_first_then_undone_newest_first_then_removed(journal, tmp_path):
    ids = [journal.record_change("test.append", {"n": n}, "change %d" % n, module="unit") for n in range(3)]
    journal.mark_applied(ids[0])
    assert [r["undo"]["n"] for r in journal.pending()] == [2, 1, 0]
    assert [r["applied"] for r in journal.pending()] == [False, False, True]
    assert journal.path == str(tmp_path / "var" / "lib" / "vmc" / "case-42" / "hostA.jsonl")
    assert oct(os.stat(journal.path).st_mode & 0o777) == "0o600"

    result = journal.teardown()
    assert CALLS == [2, 1, 0]
    assert [u["result"] for u in result["undone"]] == ["undid 2", "undid 1", "undid 0"]
    kinds = [r["kind"] for r in result["records"]]
    assert kinds[0] == "journal" and kinds.count("change") == 3 and kinds.count("undone") == 3
    assert all(r["time"].endswith("Z") for r in result["records"])
    # the journal and every folder it created are gone: the host is as found
    assert result["removed"] and not os.path.exists(str(tmp_path / "var"))


def test_a_journal_folder_shared_by_two_hosts_is_removed_by_the_last_journal(journal, tmp_path):
    """Two hosts with one journal folder (the lab's KVM host and collector): whichever journal is removed last
    removes the folders the first one created."""
    other = j.Journal("case-42", journal.journal_dir, hostname="hostB")
    journal.record_change("test.append", {"n": 0}, "change A", module="unit")
    other.record_change("test.append", {"n": 1}, "change B", module="unit")
    assert journal.teardown()["removed"]
    assert os.path.isdir(journal.case_dir)  # hostB's journal is still in it
    assert other.teardown()["removed"]
    assert not os.path.exists(str(tmp_path / "var"))


def test_keep_modules_leaves_their_changes_and_the_journal_until_a_full_teardown(journal, tmp_path):
    journal.record_change("test.append", {"n": 0}, "attach the volume", module="iscsi_attach")
    journal.record_change("test.append", {"n": 1}, "freeze the disks", module="take_snapshot")
    first = journal.teardown(keep_modules=("iscsi_attach",))
    assert CALLS == [1]
    assert first["kept"] == ["attach the volume"] and not first["removed"] and journal.exists()
    # the next VM's changes go into the same journal, and a plain teardown undoes everything left
    journal.record_change("test.append", {"n": 2}, "freeze the next VM", module="take_snapshot")
    second = journal.teardown()
    assert CALLS == [1, 2, 0]
    assert second["kept"] == [] and second["removed"] and not os.path.exists(str(tmp_path / "var"))


def test_teardown_is_idempotent_and_keeps_folders_it_did_not_create(tmp_path):
    base = tmp_path / "existing"
    base.mkdir()
    journal = j.Journal("c1", str(base), hostname="h")
    journal.record_change("test.append", {"n": 1}, "one")
    journal.teardown()
    assert base.is_dir() and not (base / "c1").exists()
    again = journal.teardown()
    assert again["undone"] == [] and CALLS == [1]


def test_check_mode_reports_the_plan_and_changes_nothing(journal):
    journal.record_change("test.append", {"n": 7}, "seven")
    before = open(journal.path).read()
    result = journal.teardown(check_mode=True)
    assert result["pending"] == ["seven"] and CALLS == []
    assert open(journal.path).read() == before


def test_failure_stops_and_a_rerun_continues(journal, tmp_path):
    flag = str(tmp_path / "busy")
    open(flag, "w").close()
    journal.record_change("test.append", {"n": 1}, "first change")
    journal.record_change("test.fail_once", {"flag": flag}, "second change")
    journal.record_change("test.append", {"n": 3}, "third change")
    with pytest.raises(JournalError, match="Undoing 'second change' failed: the disk is busy") as info:
        journal.teardown()
    assert CALLS == [3] and len(info.value.details["undone"]) == 1
    assert [r["description"] for r in journal.pending()] == ["second change", "first change"]
    journal.teardown()
    assert CALLS == [3, 1] and not journal.exists()


def test_unknown_action_is_refused_before_any_change(journal):
    with pytest.raises(JournalError, match="No undo handler"):
        journal.record_change("nobody.knows", {}, "x")
    assert not journal.exists()


def test_torn_last_line_is_ignored_but_damage_inside_is_an_error(journal):
    journal.record_change("test.append", {"n": 1}, "one")
    with open(journal.path, "ab") as f:
        f.write(b'{"kind": "change", "id": "tor')  # the crash hit mid-write
    assert [r["description"] for r in journal.pending()] == ["one"]
    with open(journal.path, "ab") as f:
        f.write(b"\n" + json.dumps({"kind": "applied", "ref": "x", "seq": 99}).encode() + b"\n")
    with pytest.raises(JournalError, match="is damaged"):
        journal.pending()


@pytest.mark.parametrize("case_id", ["", "../etc", "a/b", ".hidden", "x" * 200, "sp ace"])
def test_case_ids_that_are_not_file_names_are_refused(case_id, tmp_path):
    with pytest.raises(InvalidInputError, match="not usable in file names"):
        j.Journal(case_id, str(tmp_path))


def test_relative_journal_dir_refused():
    with pytest.raises(InvalidInputError, match="relative"):
        j.Journal("c", "journal")


def _child(tmp_path, body):
    code = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, %r)
        from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import journal as j
        journal = j.Journal("case-42", %r, hostname="hostA")
    """) % (COLLECTIONS_ROOT, str(tmp_path / "jr")) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code])


def test_concurrent_writers_never_interleave(tmp_path):
    body = """
        for n in range(200):
            journal.record_change("file.created", {"path": "/nonexistent/%d-%d" % (os.getpid(), n)}, "w")
    """
    procs = [_child(tmp_path, body) for dummy in range(4)]
    assert [p.wait() for p in procs] == [0, 0, 0, 0]
    journal = j.Journal("case-42", str(tmp_path / "jr"), hostname="hostA")
    records = journal.records()
    assert len(records) == 801  # 4 x 200 changes + the journal header
    assert sorted(r["seq"] for r in records) == list(range(1, 802))


def test_kill_between_record_and_change_is_undone_safely(tmp_path):
    target = str(tmp_path / "overlay.qcow2")
    body = """
        journal.record_change("file.created", {"path": %r}, "create the overlay")
        os.kill(os.getpid(), 9)  # dies before the change is made
        open(%r, "w").close()
    """ % (target, target)
    proc = _child(tmp_path, body)
    assert proc.wait() == -signal.SIGKILL
    assert not os.path.exists(target)
    journal = j.Journal("case-42", str(tmp_path / "jr"), hostname="hostA")
    result = journal.teardown()
    assert result["undone"][0]["result"] == "%s was already gone" % target


def test_file_created_handler_removes_what_was_made(tmp_path, journal):
    made = tmp_path / "made.img"
    journal.record_change("file.created", {"path": str(made)}, "create a file")
    made.write_bytes(b"x")
    assert journal.teardown(check_mode=True)["undone"][0]["result"] == "would remove %s" % made
    assert made.exists()
    journal.teardown()
    assert not made.exists()


def test_file_on_a_failed_volume_is_left_and_the_undo_goes_on(tmp_path, journal, monkeypatch):
    """A partial image on an iSCSI LUN whose link was lost (its ext4 turned read-only): the older change
    (here: the VM's frozen disks) must still be undone."""
    import errno as _errno
    journal.record_change("test.append", {"n": 1}, "freeze the disks")
    made = tmp_path / "memory.raw.partial"
    made.write_bytes(b"x")
    journal.record_change("file.created", {"path": str(made)}, "the memory image")

    def refuse(path):
        raise OSError(_errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(j.os, "unlink", refuse)
    result = journal.teardown(remove_when_done=False)
    assert result["undone"][0]["result"].startswith("left %s: its filesystem refuses the removal" % made)
    assert CALLS == [1]


def test_sysctl_handler_leaves_a_value_as_found_alone(journal):
    with open("/proc/sys/kernel/ostype") as f:
        value = f.read().strip()
    journal.record_change("sysctl", {"name": "kernel.ostype", "original": value}, "read-only sysctl")
    assert journal.teardown()["undone"][0]["result"] == "kernel.ostype is %s as found" % value


# -- the one replay loop and the handlers' context ---------------------------------------------------

SEEN = []
PASSWORD = "Pa55-w0rd-never-written"


@j.undo_handler("test.remote")
def _undo_remote(undo, ctx):
    """A provider whose change lives on another system: it logs in with teardown's options."""
    SEEN.append((dict(ctx.options), ctx.check_mode, repr(ctx)))
    if undo.get("fail"):
        opts = ctx.options
        raise RuntimeError("login to %s as %s with %s refused" % (opts["hostname"], opts["username"], opts["password"]))
    # a careless handler that says too much: the replay masks it before the journal or the task sees it
    said = "removed the snapshot on %s (logged in with %s)" % (ctx.options["hostname"], ctx.options["password"])
    return said + (", session %s" % ctx.options["session"] if "session" in ctx.options else "")


@pytest.fixture(autouse=True)
def _reset_seen():
    del SEEN[:]


def test_replay_undoes_the_records_given_newest_first_and_marks_each(journal):
    ids = [journal.record_change("test.append", {"n": n}, "change %d" % n) for n in range(4)]
    chosen = [r for r in journal.pending() if r["id"] in (ids[0], ids[2])]
    undone = journal.replay(list(reversed(chosen)))  # the order given does not matter: newest first
    assert CALLS == [2, 0]
    assert [(u["id"], u["action"], u["description"], u["result"]) for u in undone] == [
        (ids[2], "test.append", "change 2", "undid 2"), (ids[0], "test.append", "change 0", "undid 0")]
    assert [r["undo"]["n"] for r in journal.pending()] == [3, 1]
    undone_records = [r for r in journal.records() if r["kind"] == "undone"]
    assert [(r["ref"], r["result"]) for r in undone_records] == [(ids[2], "undid 2"), (ids[0], "undid 0")]


def test_replay_in_check_mode_marks_nothing(journal):
    journal.record_change("test.append", {"n": 5}, "five")
    before = open(journal.path).read()
    assert [u["result"] for u in journal.replay(journal.pending(), j.UndoContext(check_mode=True))] == ["undid 5"]
    assert CALLS == [] and open(journal.path).read() == before


def test_replay_stops_at_the_first_failure_with_teardowns_sentence(journal, tmp_path):
    flag = str(tmp_path / "busy")
    open(flag, "w").close()
    journal.record_change("test.append", {"n": 1}, "first change")
    journal.record_change("test.fail_once", {"flag": flag}, "second change")
    journal.record_change("test.append", {"n": 3}, "third change")
    with pytest.raises(JournalError) as info:
        journal.replay(journal.pending())
    assert info.value.message == ("Undoing 'second change' failed: the disk is busy. 2 earlier change(s) are still in "
                                  "place; fix the cause and run teardown again.")
    assert [u["description"] for u in info.value.details["undone"]] == ["third change"]
    assert info.value.details["failed_change"]["description"] == "second change"
    assert CALLS == [3]


def test_replay_refuses_an_action_without_handler(journal):
    journal.record_change("test.append", {"n": 1}, "one")
    rec = dict(journal.pending()[0], action="nobody.knows")
    with pytest.raises(JournalError, match="this version cannot undo"):
        journal.replay([rec])


def test_handlers_get_teardowns_options_and_nothing_of_them_is_written(journal):
    journal.record_change("test.remote", {"snapshot": "snap-1"}, "snapshot on the ESXi host")
    options = {"hostname": "esxi1.lab", "username": "root", "password": PASSWORD}
    result = journal.teardown(options=options, remove_when_done=False)
    assert SEEN[0][0] == options and SEEN[0][1] is False
    assert PASSWORD not in SEEN[0][2] and "password" in SEEN[0][2]  # the repr names the keys, not the values
    assert result["undone"][0]["result"] == "removed the snapshot on esxi1.lab (logged in with ********)"
    assert PASSWORD not in json.dumps(result)
    assert PASSWORD not in open(journal.path).read()


def test_a_failing_handlers_message_is_masked_too(journal):
    journal.record_change("test.remote", {"fail": True}, "snapshot on the ESXi host")
    with pytest.raises(JournalError) as info:
        journal.teardown(options={"hostname": "esxi1.lab", "username": "root", "password": PASSWORD})
    assert "login to esxi1.lab as root with ******** refused" in info.value.message
    assert PASSWORD not in str(info.value) and PASSWORD not in json.dumps(info.value.details)
    assert PASSWORD not in open(journal.path).read()


def test_secrets_given_explicitly_are_masked(journal):
    """teardown passes AnsibleModule.no_log_values: whatever the option is called."""
    journal.record_change("test.remote", {}, "x")
    result = journal.teardown(options={"hostname": "h", "username": "u", "password": "p1", "session": "tok-42"},
                              secrets=("tok-42",), check_mode=True)
    assert SEEN[0][1] is True
    assert result["undone"][0]["result"] == "removed the snapshot on h (logged in with ********), session ********"


def test_an_append_to_a_journal_removed_meanwhile_writes_a_new_one(journal, monkeypatch):
    """A run's last undo removes the journal while another process is about to append: the record is not lost in
    the removed file."""
    journal.record_change("test.append", {"n": 0}, "change 0", module="unit")
    real = j.fcntl.flock
    removed = []

    def flock(fd, op):
        if op == j.fcntl.LOCK_EX and not removed:
            removed.append(1)
            os.unlink(journal.path)
        return real(fd, op)

    monkeypatch.setattr(j.fcntl, "flock", flock)
    journal.record_change("test.append", {"n": 1}, "change 1", module="unit")
    assert removed and [r["undo"]["n"] for r in journal.pending()] == [1]


def test_a_journal_with_pending_changes_is_never_removed(journal):
    journal.record_change("test.append", {"n": 0}, "change 0", module="unit")
    assert journal._remove() is False and journal.exists()  # pylint: disable=protected-access


def test_the_journals_parents_it_makes_can_be_passed_through_and_the_journal_cannot(tmp_path):
    """/var/lib/dfir-vmcollect is shared with the evidence and the volume's mountpoint, where QEMU (another user) must
    reach the RAM image it writes itself: the parents the journal makes are 0711, the journal's own folders 0700."""
    journal = j.Journal("case-42", str(tmp_path / "var" / "lib" / "vmc" / "journal"), hostname="hostA")
    journal.record_change("file.created", {"path": "/nonexistent"}, "w")

    def mode(path):
        return os.stat(str(path)).st_mode & 0o777

    assert mode(tmp_path / "var") == 0o711 and mode(tmp_path / "var" / "lib" / "vmc") == 0o711
    assert mode(tmp_path / "var" / "lib" / "vmc" / "journal") == 0o700
    assert mode(tmp_path / "var" / "lib" / "vmc" / "journal" / "case-42") == 0o700
