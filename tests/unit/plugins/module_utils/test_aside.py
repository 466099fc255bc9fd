# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""evidence_set_aside's logic (_evidence/aside.py) on real files: kept, hashed, recorded, moved once."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import hashlib
import json
import os
import re
import socket
import stat
import subprocess

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import aside as a
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import DestinationError, InvalidInputError

VM = "lab-guest-1234abcd"
REASON = "The run of this case was killed before its manifest was written."
STAMP = re.compile(r"^set-aside/\d{8}T\d{6}Z(-\d+)?$")
MIB = 1024 * 1024


def listing(root):
    """Every entry under ``root`` (folders too): relative path -> (kind, size, mtime_ns), links not followed."""
    out = {}
    for top, dirs, files in os.walk(str(root)):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            out[os.path.relpath(path, str(root))] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def contents(root):
    """relative path -> sha256 of every regular file under ``root``."""
    out = {}
    for top, dirs, files in os.walk(str(root)):
        for name in files:
            path = os.path.join(top, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as f:
                    out[os.path.relpath(path, str(root))] = hashlib.sha256(f.read()).hexdigest()
    return out


def digest(path, alg):
    h = hashlib.new(alg)
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


@pytest.fixture
def case(tmp_path):
    """A case whose VM folder holds what a killed run leaves: RAM, a sparse .partial with its sidecar, a finished disk."""
    case_dir = tmp_path / "case-42"
    vm = case_dir / VM
    (vm / "disks").mkdir(parents=True)
    (vm / "memory.raw").write_bytes(os.urandom(300000))
    with open(str(vm / "disks" / "vda.qcow2.partial"), "wb") as f:  # sparse: data, a 6 MiB hole, data
        f.write(b"QFI\xfb" + os.urandom(4096))
        f.seek(6 * MIB)
        f.write(b"tail" * 1000)
        f.truncate(8 * MIB)
    (vm / "disks" / "vda.qcow2.partial.json").write_text('{"copied_upto": 4100}\n')
    (vm / "disks" / "vdb.qcow2").write_bytes(b"finished copy\n" * 100)
    (vm / "empty").mkdir()
    os.utime(str(vm / "memory.raw"), ns=(1700000000123456789, 1700000000123456789))
    (case_dir / "manifest.json").write_text("{}\n")
    return case_dir


def test_nothing_when_the_folder_is_missing(tmp_path):
    res = a.set_aside(str(tmp_path), VM, REASON)
    assert res["changed"] is False and res["set_aside"] == [] and res["to"] is None and res["bytes"] == 0
    assert os.listdir(str(tmp_path)) == []


def test_nothing_when_the_folder_holds_only_empty_folders(tmp_path):
    (tmp_path / VM / "disks" / "deeper").mkdir(parents=True)
    before = listing(tmp_path)
    for check_mode in (True, False):
        res = a.set_aside(str(tmp_path), VM, REASON, check_mode=check_mode)
        assert res["changed"] is False and res["set_aside"] == [] and res["record"] is None
        assert "holds no file" in res["msg"]
    assert listing(tmp_path) == before, "an empty folder was touched"


def test_sets_aside_hashed_recorded_and_moved_once(case):
    before = listing(case / VM)
    sums = contents(case / VM)
    res = a.set_aside(str(case), VM, REASON, algorithms=["SHA-256", "md5"], run_id="run-7")
    assert res["changed"] is True
    assert STAMP.match(os.path.dirname(res["to"])) and os.path.basename(res["to"]) == VM
    stamp_dir = case / os.path.dirname(res["to"])
    moved = case / res["to"]
    assert res["record"] == str(stamp_dir / "set-aside.json")
    assert not os.path.lexists(str(case / VM)), "the folder is still where it was"
    assert (case / "manifest.json").read_text() == "{}\n", "something beside the folder was touched"
    # contents, sizes and mtimes are those of before; the empty folder moved too
    assert listing(moved) == before
    assert contents(moved) == sums
    assert os.lstat(str(moved / "memory.raw")).st_mtime_ns == 1700000000123456789
    assert sorted(os.listdir(str(stamp_dir))) == ["SHA256SUMS", VM, "set-aside.json"]

    files = {e["was"]: e for e in res["set_aside"]}
    assert sorted(files) == [VM + "/disks/vda.qcow2.partial", VM + "/disks/vda.qcow2.partial.json",
                             VM + "/disks/vdb.qcow2", VM + "/memory.raw"]
    for was, entry in files.items():
        assert entry["path"] == os.path.join(res["to"], os.path.relpath(was, VM))
        new = str(case / entry["path"])
        assert entry["kind"] == "file" and entry["size"] == os.path.getsize(new)
        assert sorted(entry["digests"]) == ["md5", "sha256"]
        assert entry["digests"]["sha256"] == digest(new, "sha256")
        assert entry["digests"]["md5"] == digest(new, "md5")
    assert files[VM + "/memory.raw"]["mtime"] == "2023-11-14T22:13:20.123456789Z"
    assert files[VM + "/disks/vda.qcow2.partial"]["size"] == 8 * MIB
    assert res["bytes"] == sum(e["size"] for e in files.values())
    assert res["msg"] == "set aside 4 file(s) (%d bytes) of an incomplete run from %s to %s: %s" % (
        res["bytes"], VM, res["to"], REASON)

    with open(res["record"]) as f:
        record = json.load(f)
    assert record["reason"] == REASON and record["run_id"] == "run-7" and record["host"] == socket.gethostname()
    assert record["from"] == VM and record["to"] == res["to"]
    assert record["files"] == res["set_aside"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", record["set_aside_at"])
    assert os.path.basename(os.path.dirname(res["to"])).startswith(
        record["set_aside_at"][:19].replace("-", "").replace(":", ""))
    assert stat.S_IMODE(os.stat(res["record"]).st_mode) == 0o640
    assert not [n for n in os.listdir(str(stamp_dir)) if n.endswith(".tmp")]

    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=str(stamp_dir), check=False,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert check.returncode == 0, check.stdout
    assert check.stdout.count(": OK") == 4


def test_sha256_is_always_computed(case):
    res = a.set_aside(str(case), VM, REASON, algorithms=["sha1"])
    for entry in res["set_aside"]:
        assert sorted(entry["digests"]) == ["sha1", "sha256"]
    sums = (case / os.path.dirname(res["to"]) / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 4 and all(re.match(r"^[0-9a-f]{64}  %s/" % VM, line) for line in sums)


def test_links_and_fifos_are_recorded_not_followed(case):
    vm = case / VM
    outside = case.parent / "outside.txt"
    outside.write_text("not evidence\n")
    os.symlink(str(outside), str(vm / "link"))
    os.symlink("disks", str(vm / "dirlink"))
    os.mkfifo(str(vm / "fifo"))
    res = a.set_aside(str(case), VM, REASON)
    files = {os.path.relpath(e["was"], VM): e for e in res["set_aside"]}
    assert files["link"]["kind"] == "symlink" and files["link"]["target"] == str(outside)
    assert files["dirlink"]["kind"] == "symlink" and files["dirlink"]["target"] == "disks"
    assert files["fifo"]["kind"] == "fifo"
    for name in ("link", "dirlink", "fifo"):
        assert "digests" not in files[name]
    assert not any(e["was"].startswith(VM + "/dirlink/") for e in res["set_aside"]), "a link to a folder was followed"
    moved = case / res["to"]
    assert os.readlink(str(moved / "link")) == str(outside) and stat.S_ISFIFO(os.lstat(str(moved / "fifo")).st_mode)
    assert outside.read_text() == "not evidence\n"
    assert res["bytes"] == sum(e["size"] for e in res["set_aside"] if e["kind"] == "file")
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=str(case / os.path.dirname(res["to"])),
                           check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert check.returncode == 0, check.stdout


def test_check_mode_changes_nothing(case):
    before = listing(case)
    res = a.set_aside(str(case), VM, REASON, algorithms=["sha512"], check_mode=True)
    assert listing(case) == before, "check mode changed the case"
    assert res["changed"] is True and STAMP.match(os.path.dirname(res["to"]))
    assert res["record"] == str(case / os.path.dirname(res["to"]) / "set-aside.json")
    assert len(res["set_aside"]) == 4 and not any("digests" in e for e in res["set_aside"])
    for entry in res["set_aside"]:
        assert entry["size"] == os.path.getsize(str(case / entry["was"]))
        assert entry["path"] == os.path.join(res["to"], os.path.relpath(entry["was"], VM))
    assert res["msg"].startswith("would set aside 4 file(s)")


def test_a_taken_stamp_gets_a_suffix_and_a_second_run_finds_nothing(case, monkeypatch):
    first = a.set_aside(str(case), VM, REASON)
    (case / VM).mkdir()
    (case / VM / "memory.raw").write_bytes(b"second killed run\n")
    stamp = os.path.basename(os.path.dirname(first["to"]))
    real = a.datetime.datetime

    class Frozen(real):
        @classmethod
        def now(cls, tz=None):
            return real.strptime(stamp[:16], a.STAMP_FORMAT).replace(tzinfo=a.datetime.timezone.utc)

    monkeypatch.setattr(a.datetime, "datetime", Frozen)
    second = a.set_aside(str(case), VM, REASON)
    assert os.path.basename(os.path.dirname(second["to"])) == stamp + "-2"
    assert (case / first["to"] / "memory.raw").exists(), "the first set-aside was touched"
    assert (case / second["to"] / "memory.raw").read_bytes() == b"second killed run\n"
    assert a.set_aside(str(case), VM, REASON)["changed"] is False


def test_nested_folder(tmp_path):
    (tmp_path / "host1" / "vm1").mkdir(parents=True)
    (tmp_path / "host1" / "vm1" / "memory.raw").write_bytes(b"ram")
    (tmp_path / "host1" / "other").mkdir()
    res = a.set_aside(str(tmp_path), "host1/vm1/", REASON)
    assert res["to"].endswith("/host1/vm1")
    assert (tmp_path / res["to"] / "memory.raw").read_bytes() == b"ram"
    assert (tmp_path / "host1" / "other").is_dir() and not (tmp_path / "host1" / "vm1").exists()
    assert res["set_aside"][0]["was"] == "host1/vm1/memory.raw"
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=str(tmp_path / os.path.dirname(
        os.path.dirname(res["to"]))), check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert check.returncode == 0, check.stdout


@pytest.mark.parametrize("folder", ["../elsewhere", "a/../../b", "..", "/srv/evidence/vm", "", ".", "set-aside",
                                    "set-aside/20260101T000000Z"])
def test_folders_outside_the_case_are_refused(case, folder):
    before = listing(case.parent)
    with pytest.raises(InvalidInputError):
        a.set_aside(str(case), folder, REASON)
    assert listing(case.parent) == before


def test_bad_options_are_refused(case):
    before = listing(case)
    with pytest.raises(InvalidInputError):
        a.set_aside("relative/case", VM, REASON)
    with pytest.raises(InvalidInputError):
        a.set_aside(str(case), VM, " ")
    with pytest.raises(InvalidInputError):
        a.set_aside(str(case), VM, REASON, algorithms=["crc32"])
    assert listing(case) == before


def test_a_link_instead_of_the_folder_is_refused(case, tmp_path):
    os.rename(str(case / VM), str(tmp_path / "real"))
    os.symlink(str(tmp_path / "real"), str(case / VM))
    before = listing(tmp_path)
    with pytest.raises(DestinationError, match="symbolic link"):
        a.set_aside(str(case), VM, REASON)
    assert listing(tmp_path) == before


def test_a_failed_rename_moves_nothing_and_names_the_record(case, monkeypatch):
    before = listing(case / VM)
    real = os.rename
    src = str(case / VM)

    def rename(old, new):
        if old == src:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), old)
        return real(old, new)

    monkeypatch.setattr(a.os, "rename", rename)
    with pytest.raises(DestinationError) as err:
        a.set_aside(str(case), VM, REASON)
    stamps = os.listdir(str(case / "set-aside"))
    record = str(case / "set-aside" / stamps[0] / "set-aside.json")
    assert record in err.value.message and "nothing was moved" in err.value.message
    assert "read-only" in err.value.message and err.value.details["record"] == record
    assert listing(case / VM) == before


def test_a_read_only_case_writes_and_moves_nothing(case, monkeypatch):
    before = listing(case)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), args[0])

    monkeypatch.setattr(a.os, "mkdir", read_only)
    monkeypatch.setattr(a.os, "rename", read_only)
    with pytest.raises(DestinationError) as err:
        a.set_aside(str(case), VM, REASON)
    assert "Nothing was set aside or moved" in err.value.message and "read-only" in err.value.message
    monkeypatch.undo()
    assert listing(case) == before


def test_files_that_change_while_hashed_are_refused(case, monkeypatch):
    real = a.hash_path

    def hash_and_grow(path, algorithms):
        result = real(path, algorithms)
        if path.endswith("vdb.qcow2"):
            with open(str(case / VM / "late.raw"), "wb") as f:
                f.write(b"written meanwhile")
        return result

    monkeypatch.setattr(a, "hash_path", hash_and_grow)
    with pytest.raises(DestinationError, match="changed while they were hashed"):
        a.set_aside(str(case), VM, REASON)
    assert not (case / "set-aside").exists() and (case / VM / "late.raw").exists()


def test_sums_line_escapes_like_coreutils():
    assert a.sums_line("ab", "vm/x") == "ab  vm/x\n"
    assert a.sums_line("ab", "vm/a\\b\nc") == "\\ab  vm/a\\\\b\\nc\n"
