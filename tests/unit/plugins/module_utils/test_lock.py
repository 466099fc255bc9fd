# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Case and VM locks on real files: take, again, refused with the holder named, wait, release, teardown."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import threading

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError, LockHeldError
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import lock as L
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal

UUID = "5B3C1F0E-2F4E-4B8E-9D1A-0C6F3E2A7B11"
HOLDER_A = {"user": "alice", "controller": "ctl1", "pid": "4242", "started": "2026-12-06T01:00:00Z", "step": "acquire"}
HOLDER_B = {"user": "bob", "controller": "ctl2", "pid": "77", "started": "2026-12-06T01:05:00Z", "step": "acquire"}


def journal(tmp_path, case="case-1"):
    return Journal(case, str(tmp_path / "journal"), hostname="kvm1")


def files_under(root):
    out = []
    for folder, _dirs, names in os.walk(str(root)):
        out.extend(os.path.join(folder, n) for n in names)
    return sorted(out)


def test_take_writes_a_complete_lock_after_its_journal_record(tmp_path):
    j = journal(tmp_path)
    result = L.take(j, "runa", HOLDER_A, hostname="kvm1")
    assert result["changed"] is True
    path = str(tmp_path / "journal" / "case-1" / "kvm1.lock.json")
    assert result["path"] == path
    lock = json.load(open(path))
    assert lock["run_id"] == "runa" and lock["holder"] == HOLDER_A and lock["host"] == "kvm1"
    assert lock["kind"] == "case" and lock["case_id"] == "case-1" and lock["locked_at"].endswith("Z")
    (change,) = j.pending()
    assert change["action"] == "lock.held" and change["module"] == "case_lock" and change["applied"]
    assert files_under(tmp_path / "journal") == sorted([path, j.path])  # no temporary file left


def test_the_same_run_again_is_no_change_and_updates_the_step(tmp_path):
    j = journal(tmp_path)
    L.take(j, "runa", HOLDER_A)
    records = len(j.records())
    result = L.take(j, "runa", dict(HOLDER_A, step="provision"))
    assert result["changed"] is False
    assert json.load(open(result["path"]))["holder"]["step"] == "provision"
    assert len(j.records()) == records


def test_another_run_is_refused_naming_the_holder_and_changes_nothing(tmp_path):
    j = journal(tmp_path)
    L.take(j, "runa", HOLDER_A, hostname="kvm1")
    before = {p: open(p, "rb").read() for p in files_under(tmp_path)}
    with pytest.raises(LockHeldError) as err:
        L.take(journal(tmp_path), "runb", HOLDER_B)
    msg = err.value.message
    for part in ("The case case-1 is locked on kvm1 (run runa", "alice@ctl1", "pid 4242", "2026-12-06T01:00:00Z",
                 "step 'acquire'", "Wait for that run to end", "playbooks/teardown.yml for case case-1",
                 "Nothing was changed."):
        assert part in msg, (part, msg)
    assert err.value.details["holder"]["run_id"] == "runa"
    assert {p: open(p, "rb").read() for p in files_under(tmp_path)} == before


def test_a_waiting_run_takes_the_lock_when_the_other_releases(tmp_path):
    j = journal(tmp_path)
    L.take(j, "runa", HOLDER_A)
    timer = threading.Timer(0.3, lambda: L.release(journal(tmp_path), "runa"))
    timer.start()
    try:
        result = L.take(journal(tmp_path), "runb", HOLDER_B, wait=10, poll=0.05)
    finally:
        timer.join()
    assert result["changed"] is True
    assert json.load(open(result["path"]))["run_id"] == "runb"


def test_waiting_is_bounded(tmp_path):
    L.take(journal(tmp_path), "runa", HOLDER_A)
    now = [0.0]

    def sleep(s):
        now[0] += s

    with pytest.raises(LockHeldError) as err:
        L.take(journal(tmp_path), "runb", HOLDER_B, wait=3, poll=1, clock=lambda: now[0], sleep=sleep)
    assert now[0] == 3 and "waited 3 s" in err.value.message


def test_release_goes_through_the_journal_and_removes_it(tmp_path):
    j = journal(tmp_path)
    L.take(j, "runa", HOLDER_A)
    result = L.release(j, "runa")
    assert result["changed"] is True and result["journal_removed"] is True
    assert result["undone"][0]["action"] == "lock.held"
    assert files_under(tmp_path / "journal") == []
    assert not os.path.exists(str(tmp_path / "journal"))  # the folders the journal made are gone too
    assert L.release(j, "runa")["changed"] is False


def test_release_by_another_run_leaves_the_lock(tmp_path):
    L.take(journal(tmp_path), "runa", HOLDER_A)
    result = L.release(journal(tmp_path), "runb")
    assert result["changed"] is False and "held on" in result["msg"]
    assert json.load(open(result["path"]))["run_id"] == "runa"


def test_a_killed_runs_lock_is_released_by_teardown(tmp_path):
    j = journal(tmp_path)
    L.take(j, "runa", HOLDER_A)
    # kill -9: nothing released; teardown replays the journal
    out = journal(tmp_path).teardown()
    assert [u["action"] for u in out["undone"]] == ["lock.held"] and out["removed"]
    assert not os.path.exists(str(tmp_path / "journal"))
    L.take(journal(tmp_path), "runb", HOLDER_B)


def test_kill_between_the_record_and_the_link_is_recovered(tmp_path):
    j = journal(tmp_path)
    path = L.lock_path(j.journal_dir, j.case_id, hostname=j.hostname)
    j.record_change(L.ACTION, {"path": path, "run_id": "runa", "tmp": path + ".runa.tmp", "kind": "case",
                               "case_id": "case-1"}, "lock the case", module="case_lock")
    open(path + ".runa.tmp", "w").write("{")  # torn temporary file
    out = j.teardown()
    assert "already released" in out["undone"][0]["result"]
    assert not os.path.exists(path + ".runa.tmp")


def test_teardown_never_removes_another_runs_lock(tmp_path):
    j = journal(tmp_path)
    path = L.lock_path(j.journal_dir, j.case_id, hostname=j.hostname)
    # run a journaled its lock, was killed before the link; run b holds the lock now
    j.record_change(L.ACTION, {"path": path, "run_id": "runa", "tmp": path + ".runa.tmp", "kind": "case",
                               "case_id": "case-1"}, "lock the case", module="case_lock")
    L.take(journal(tmp_path), "runb", HOLDER_B)
    undone = j.replay([r for r in j.pending() if r["undo"]["run_id"] == "runa"])
    assert "left the lock" in undone[0]["result"] and "run runb" in undone[0]["result"]
    assert json.load(open(path))["run_id"] == "runb"


def test_keep_case_lock_keeps_the_case_lock_and_releases_the_vm_lock(tmp_path):
    j = journal(tmp_path)
    L.take(j, "runa", HOLDER_A)
    vm = L.take(j, "runa", HOLDER_A, vm_uuid=UUID, vm_name="web01")
    assert vm["path"] == str(tmp_path / "journal" / "vm-locks" / (UUID.lower() + ".json"))
    out = j.teardown(keep_modules=("case_lock",))
    assert [u["action"] for u in out["undone"]] == ["lock.held"] and len(out["kept"]) == 1
    assert not os.path.exists(str(tmp_path / "journal" / "vm-locks"))  # its empty folder too
    assert os.path.exists(L.lock_path(j.journal_dir, "case-1", hostname=j.hostname))


def test_a_vm_lock_refuses_another_case_naming_it(tmp_path):
    L.take(journal(tmp_path, "case-1"), "runa", HOLDER_A, vm_uuid=UUID, vm_name="web01", hostname="kvm1")
    other = journal(tmp_path, "case-2")
    with pytest.raises(LockHeldError) as err:
        L.take(other, "runb", HOLDER_B, vm_uuid=UUID.lower(), vm_name="web01")
    msg = err.value.message
    assert "The VM web01 (%s) is locked on kvm1 by case case-1 (run runa, by alice@ctl1" % UUID.lower() in msg
    assert "teardown.yml for case case-1" in msg and msg.endswith("Nothing was changed.")
    assert not other.exists()
    # the other case's lock of a different VM lives beside it
    L.take(other, "runb", HOLDER_B, vm_uuid="00000000-0000-0000-0000-000000000001")


def test_check_mode_changes_nothing(tmp_path):
    j = journal(tmp_path)
    result = L.take(j, "runa", HOLDER_A, check_mode=True)
    assert result["changed"] is True and result["msg"].startswith("would take")
    assert not os.path.exists(str(tmp_path / "journal"))
    L.take(j, "runa", HOLDER_A)
    with pytest.raises(LockHeldError):
        L.take(journal(tmp_path), "runb", HOLDER_B, check_mode=True)
    out = L.release(j, "runa", check_mode=True)
    assert out["changed"] is True and out["undone"][0]["result"].startswith("would release")
    assert os.path.exists(out["path"]) and j.pending()


def test_a_lost_race_is_journaled_as_not_taken_and_refused(tmp_path, monkeypatch):
    j = journal(tmp_path)
    real_read = L.read_lock
    calls = []

    def read_then_race(path):
        if not calls:
            calls.append(1)
            L.take(journal(tmp_path), "runa", HOLDER_A)  # run a links its lock between our look and our link
            return None
        return real_read(path)

    monkeypatch.setattr(L, "read_lock", read_then_race)
    with pytest.raises(LockHeldError):
        L.take(j, "runb", HOLDER_B)
    mine = [r for r in j.records() if r.get("kind") == "change" and r["undo"]["run_id"] == "runb"]
    assert len(mine) == 1 and mine[0]["id"] not in [r["id"] for r in j.pending()]
    assert json.load(open(L.lock_path(j.journal_dir, "case-1", hostname=j.hostname)))["run_id"] == "runa"


@pytest.mark.parametrize("run_id", ["", "../x", "a b", "-a"])
def test_a_bad_run_id_is_refused(tmp_path, run_id):
    with pytest.raises(InvalidInputError):
        L.take(journal(tmp_path), run_id, {})
