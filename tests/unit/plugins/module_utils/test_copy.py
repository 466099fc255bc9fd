# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the forensic copy, on real files, sparse files, tmpfs and loop devices."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import copy as c
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import space
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    HashMismatchError,
    InvalidInputError,
)

MIB = 1024 * 1024
KIB = 1024
IS_ROOT = os.geteuid() == 0


def reference(path, algorithm="sha256"):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MIB), fb.read(MIB)
            if x != y:
                return False
            if not x:
                return True


def make_sparse(path, size, islands):
    """A sparse file of ``size`` bytes with random data at ``[(offset, length)]``."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in islands:
            f.seek(offset)
            f.write(os.urandom(length))
    return path


@pytest.fixture
def sparse_src(tmp_path):
    """64 MiB logical, two small data islands (one not block-aligned), holes elsewhere."""
    return make_sparse(str(tmp_path / "disk.raw"), 64 * MIB, [(3 * MIB, 512 * KIB), (40 * MIB + 12345, 100000)])


@pytest.fixture
def big_src(tmp_path):
    """24 MiB logical, 12 MiB of data in three islands (enough blocks to interrupt a copy midway)."""
    return make_sparse(str(tmp_path / "big.raw"), 24 * MIB, [(0, 4 * MIB), (8 * MIB, 4 * MIB), (16 * MIB, 4 * MIB)])


@pytest.fixture
def dest_dir(tmp_path):
    d = tmp_path / "evidence store"
    d.mkdir()
    return str(d)


def leftovers(dest):
    return [p for p in (dest, dest + ".partial", dest + ".partial.json") if os.path.lexists(p)]


class Interrupt(Exception):
    pass


def interrupt_after(nbytes, phase="copy"):
    def progress(name, done, total):
        if name == phase and done >= nbytes:
            raise Interrupt("interrupted at %d" % done)
    return progress


@pytest.mark.parametrize("algorithms", [["sha256"], ["md5"], ["sha256", "md5", "sha1", "sha512"]])
def test_copy_equals_source_and_digests_equal_hashlib(tmp_path, dest_dir, algorithms):
    src = str(tmp_path / "mem.raw")
    with open(src, "wb") as f:
        f.write(os.urandom(3 * MIB + 12345))
    dest = os.path.join(dest_dir, "mem.raw")
    r = c.copy_evidence(src, dest, algorithms)
    assert r["changed"] and r["verified"]
    assert list(r["digests"]) == algorithms
    for alg in algorithms:
        assert r["digests"][alg] == reference(src, alg) == r["dest_digests"][alg]
    assert same_bytes(src, dest)
    assert r["size"] == os.path.getsize(dest) == 3 * MIB + 12345
    assert r["data_bytes"] == r["written_bytes"] == r["size"] and r["hole_bytes"] == 0
    assert r["resumed_from"] == 0 and r["seconds"] > 0 and r["verify_seconds"] > 0 and r["mib_per_s"] > 0
    assert leftovers(dest) == [dest]
    assert oct(os.stat(dest).st_mode & 0o7777) == oct(0o640)


def test_holes_stay_holes(sparse_src, dest_dir):
    dest = os.path.join(dest_dir, "disk.raw")
    r = c.copy_evidence(sparse_src, dest, ["sha256", "md5"])
    assert r["digests"]["sha256"] == reference(sparse_src) == r["dest_digests"]["sha256"]
    assert r["digests"]["md5"] == reference(sparse_src, "md5")
    assert same_bytes(sparse_src, dest)
    assert os.path.getsize(dest) == 64 * MIB
    src_alloc = os.stat(sparse_src).st_blocks * 512
    dest_alloc = os.stat(dest).st_blocks * 512
    assert dest_alloc < 2 * MIB, "holes were written as zeros"
    assert abs(dest_alloc - src_alloc) <= 128 * KIB
    assert r["data_bytes"] < 2 * MIB and r["data_bytes"] + r["hole_bytes"] == 64 * MIB
    assert r["written_bytes"] == r["data_bytes"]


def test_fully_sparse_and_empty_sources(tmp_path, dest_dir):
    hole = make_sparse(str(tmp_path / "hole.raw"), 5 * MIB + 3, [])
    empty = make_sparse(str(tmp_path / "empty.raw"), 0, [])
    for src in (hole, empty):
        dest = os.path.join(dest_dir, os.path.basename(src))
        r = c.copy_evidence(src, dest)
        assert r["verified"] and r["written_bytes"] == 0
        assert r["digests"]["sha256"] == reference(src) == reference(dest)
        assert os.path.getsize(dest) == os.path.getsize(src) and os.stat(dest).st_blocks == 0


def test_source_untouched_and_never_opened_for_writing(sparse_src, dest_dir):
    os.utime(sparse_src, (1000000000, 1000000000))  # atime far in the past: relatime would move it
    immutable = False
    if IS_ROOT and shutil.which("chattr"):
        # an immutable file cannot be opened for writing, not even by root: any write open fails
        immutable = subprocess.run(["chattr", "+i", sparse_src], stderr=subprocess.DEVNULL, check=False).returncode == 0
    try:
        before = os.stat(sparse_src)
        r = c.copy_evidence(sparse_src, os.path.join(dest_dir, "disk.raw"), ["sha256", "md5"])
        after = os.stat(sparse_src)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", sparse_src], check=True)
    assert r["verified"]
    assert after.st_atime_ns == before.st_atime_ns == 1000000000 * 10 ** 9
    assert (after.st_mtime_ns, after.st_ctime_ns, after.st_ino, after.st_size, after.st_mode) == \
        (before.st_mtime_ns, before.st_ctime_ns, before.st_ino, before.st_size, before.st_mode)


def test_rerun_is_idempotent_and_reads_instead_of_writing(sparse_src, dest_dir):
    dest = os.path.join(dest_dir, "disk.raw")
    first = c.copy_evidence(sparse_src, dest)
    st = os.stat(dest)
    again = c.copy_evidence(sparse_src, dest)
    assert first["changed"] is True and again["changed"] is False
    assert again["verified"] is True and again["digests"] == first["digests"] == again["dest_digests"]
    assert "already holds a verified copy" in again["msg"]
    after = os.stat(dest)
    assert (after.st_ino, after.st_mtime_ns, after.st_ctime_ns) == (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def test_existing_different_destination_is_refused_unless_forced(sparse_src, dest_dir, tmp_path):
    dest = os.path.join(dest_dir, "disk.raw")
    same_size = make_sparse(dest, 64 * MIB, [(0, 4096)])
    original = reference(same_size)
    with pytest.raises(DestinationError, match="already exists and differs from the source") as info:
        c.copy_evidence(sparse_src, dest)
    assert "left untouched" in info.value.message and "force" in info.value.message
    assert reference(dest) == original and leftovers(dest) == [dest]
    with open(dest, "wb") as f:
        f.write(b"short")
    with pytest.raises(DestinationError, match="it has 5 bytes, the source has 67108864"):
        c.copy_evidence(sparse_src, dest)
    r = c.copy_evidence(sparse_src, dest, force=True)
    assert r["changed"] and r["verified"] and same_bytes(sparse_src, dest)
    assert leftovers(dest) == [dest]


def test_interrupted_copy_resumes_without_rewriting_the_prefix(big_src, dest_dir):
    dest = os.path.join(dest_dir, "big.raw")
    with pytest.raises(Interrupt):
        c.copy_evidence(big_src, dest, block_size=c.MIB, checkpoint_bytes=MIB, progress=interrupt_after(10 * MIB))
    assert leftovers(dest) == [dest + ".partial", dest + ".partial.json"]
    state = json.load(open(dest + ".partial.json"))
    st = os.stat(big_src)
    assert state["source_identity"] == [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
    assert state["algorithms"] == ["sha256"] and state["block_size"] == MIB
    # checkpoints every MiB (one at a time, not waited for) below what the writer reached
    assert MIB <= state["copied_upto"] <= 10 * MIB
    r = c.copy_evidence(big_src, dest, block_size=MIB, checkpoint_bytes=MIB)
    assert r["resumed_from"] == state["copied_upto"]
    assert r["written_bytes"] < r["data_bytes"] == 12 * MIB  # the prefix was read and hashed, not written
    assert r["digests"]["sha256"] == reference(big_src) == r["dest_digests"]["sha256"] and r["verified"]
    assert same_bytes(big_src, dest) and leftovers(dest) == [dest]


def test_kill_9_mid_copy_then_resume(big_src, dest_dir):
    """A real interruption: the copying process is killed with SIGKILL after a checkpoint."""
    dest = os.path.join(dest_dir, "big.raw")
    script = textwrap.dedent("""
        import sys, time
        from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.copy import copy_evidence
        copy_evidence(sys.argv[1], sys.argv[2], checkpoint_bytes=256 * 1024, block_size=65536,
                      progress=lambda phase, done, total: time.sleep(0.01))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-c", script, big_src, dest], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = c.read_sidecar(dest + ".partial.json")
            if state and state["copied_upto"] >= 2 * MIB:
                break
            assert proc.poll() is None, "the copy ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint within 60 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not os.path.exists(dest) and os.path.exists(dest + ".partial")
    copied = c.read_sidecar(dest + ".partial.json")["copied_upto"]
    r = c.copy_evidence(big_src, dest)
    assert r["resumed_from"] == copied >= 2 * MIB
    assert r["verified"] and r["digests"]["sha256"] == reference(big_src)
    assert same_bytes(big_src, dest) and leftovers(dest) == [dest]


def test_changed_source_between_attempts_restarts_from_scratch(big_src, dest_dir):
    dest = os.path.join(dest_dir, "big.raw")
    with pytest.raises(Interrupt):
        c.copy_evidence(big_src, dest, checkpoint_bytes=MIB, progress=interrupt_after(10 * MIB))
    assert c.read_sidecar(dest + ".partial.json")["copied_upto"] > 0
    with open(big_src, "r+b") as f:  # the source moved on: new content at the start, new mtime
        f.write(os.urandom(MIB))
    r = c.copy_evidence(big_src, dest, checkpoint_bytes=MIB)
    assert r["resumed_from"] == 0 and r["written_bytes"] == r["data_bytes"]
    assert r["verified"] and r["digests"]["sha256"] == reference(big_src) and same_bytes(big_src, dest)


def test_sidecar_without_partial_or_garbage_restarts(big_src, dest_dir):
    dest = os.path.join(dest_dir, "big.raw")
    with open(dest + ".partial.json", "w") as f:
        f.write("{not json")
    with open(dest + ".partial", "wb") as f:
        f.write(b"junk")
    r = c.copy_evidence(big_src, dest)
    assert r["resumed_from"] == 0 and same_bytes(big_src, dest) and leftovers(dest) == [dest]


def test_source_changing_during_the_copy_is_an_error(big_src, dest_dir):
    dest = os.path.join(dest_dir, "big.raw")

    def grow(phase, done, total):
        if phase == "copy" and done == 2 * MIB:
            with open(big_src, "ab") as f:
                f.write(b"appended while copying")

    with pytest.raises(EvidenceSourceError, match="changed while it was being copied"):
        c.copy_evidence(big_src, dest, progress=grow)
    assert not os.path.exists(dest)


def test_expected_digest_mismatch_fails_and_leaves_nothing(sparse_src, dest_dir):
    dest = os.path.join(dest_dir, "disk.raw")
    wrong = "0" * 64
    with pytest.raises(HashMismatchError, match="does not match the expected digest") as info:
        c.copy_evidence(sparse_src, dest, expected={"sha256": wrong})
    assert wrong in info.value.message and reference(sparse_src) in info.value.message
    assert info.value.details["digests"]["sha256"] == reference(sparse_src)
    assert leftovers(dest) == []
    good = c.copy_evidence(sparse_src, dest, ["md5"], expected={"SHA256": reference(sparse_src).upper()})
    assert good["verified"] and set(good["digests"]) == {"md5", "sha256"}
    with pytest.raises(InvalidInputError, match="not a sha1 digest"):
        c.copy_evidence(sparse_src, dest, expected={"sha1": wrong})


@pytest.mark.parametrize("keep_mtime", [True, False])
def test_copy_that_reads_back_different_is_deleted(sparse_src, dest_dir, keep_mtime):
    """Corrupt the written copy before its read-back reaches the corrupted block."""
    dest = os.path.join(dest_dir, "disk.raw")
    partial = dest + ".partial"

    tampered = []

    def corrupt(phase, done, total):
        if phase == "verify" and not tampered and done < 40 * MIB:  # before the read-back reaches it
            tampered.append(done)
            st = os.stat(partial)
            with open(partial, "r+b") as f:
                f.seek(40 * MIB + 20000)
                f.write(b"tampered")
            if keep_mtime:  # a silent corruption: only the digests can tell
                os.utime(partial, ns=(st.st_atime_ns, st.st_mtime_ns))

    if keep_mtime:
        with pytest.raises(HashMismatchError, match="read back differs from the source") as info:
            c.copy_evidence(sparse_src, dest, progress=corrupt)
        assert info.value.details["digests"] != info.value.details["dest_digests"]
        assert info.value.details["mismatches"]
    else:
        with pytest.raises(DestinationError, match="could not be read back and verified .*changed while"):
            c.copy_evidence(sparse_src, dest, progress=corrupt)
    assert leftovers(dest) == [], "a copy that failed verification must not be left behind"
    r = c.copy_evidence(sparse_src, dest)
    assert r["resumed_from"] == 0 and r["verified"] and same_bytes(sparse_src, dest)


def test_check_mode_changes_nothing_and_reports_the_plan(sparse_src, dest_dir, tmp_path):
    dest = os.path.join(dest_dir, "disk.raw")
    progress = str(tmp_path / "progress.json")
    r = c.copy_evidence(sparse_src, dest, check_mode=True, progress_file=progress)
    assert r["changed"] is True and r["verified"] is False
    assert r["size"] == 64 * MIB and 0 < r["data_bytes"] < 2 * MIB and r["free_bytes"] > 0
    assert "Would copy" in r["msg"] and r["digests"] == {}
    assert leftovers(dest) == [] and not os.path.exists(progress)
    with pytest.raises(HashMismatchError):
        c.copy_evidence(sparse_src, dest, check_mode=True, expected={"sha256": "1" * 64})
    c.copy_evidence(sparse_src, dest)
    r = c.copy_evidence(sparse_src, dest, check_mode=True)
    assert r["changed"] is False and r["verified"] is True and r["digests"] == r["dest_digests"]


def test_check_mode_predicts_the_resume_point(big_src, dest_dir):
    dest = os.path.join(dest_dir, "big.raw")
    with pytest.raises(Interrupt):
        c.copy_evidence(big_src, dest, checkpoint_bytes=MIB, progress=interrupt_after(10 * MIB))
    before = open(dest + ".partial.json").read()
    r = c.copy_evidence(big_src, dest, check_mode=True)
    assert r["resumed_from"] == json.loads(before)["copied_upto"] > 0 and "resuming at byte" in r["msg"]
    assert open(dest + ".partial.json").read() == before


def test_progress_file(big_src, dest_dir, tmp_path, monkeypatch):
    dest = os.path.join(dest_dir, "big.raw")
    progress = str(tmp_path / "progress.json")
    seen = []
    monkeypatch.setattr(c, "PROGRESS_INTERVAL", 0.0)

    def watch(phase, done, total):
        with open(progress) as f:
            seen.append(json.load(f))

    c.copy_evidence(big_src, dest, progress_file=progress, progress=watch)
    phases = [s["phase"] for s in seen]
    assert phases[0] == "copy" and "verify" in phases
    last = json.load(open(progress))
    assert last["phase"] == "done" and last["bytes_done"] == last["bytes_total"] == 24 * MIB
    for key in ("bytes_done", "bytes_total", "data_bytes", "rate_mib_s", "eta_s", "phase", "src", "dest", "updated"):
        assert key in last
    assert seen[-1]["rate_mib_s"] > 0 and seen[-1]["data_bytes"] == 12 * MIB
    assert [p for p in os.listdir(str(tmp_path)) if p.endswith(".tmp")] == []


def test_progress_file_is_rewritten_at_most_once_a_second(tmp_path):
    path = str(tmp_path / "p.json")
    p = c.ProgressFile(path, "/a", "/b")
    p.start("copy", 100, 10)
    first = os.stat(path).st_ino
    for done in range(1, 50):
        p.update(done)
    assert os.stat(path).st_ino == first and json.load(open(path))["bytes_done"] == 0
    with pytest.raises(InvalidInputError, match="folder of the progress file"):
        c.ProgressFile(str(tmp_path / "nope" / "p.json"), "/a", "/b")


def test_refusals(sparse_src, dest_dir, tmp_path):
    cases = [
        (dict(src="disk.raw", dest=os.path.join(dest_dir, "x")), InvalidInputError, "is relative"),
        (dict(src=sparse_src, dest="x.raw"), InvalidInputError, "is relative"),
        (dict(src=sparse_src, dest=str(tmp_path / "missing" / "x.raw")), DestinationError, "does not exist"),
        (dict(src=sparse_src, dest=dest_dir), DestinationError, "not a regular file"),
        (dict(src=sparse_src, dest=sparse_src), InvalidInputError, "same path"),
        (dict(src=str(tmp_path / "nope.raw"), dest=os.path.join(dest_dir, "x")), EvidenceSourceError, "does not exist"),
        (dict(src=dest_dir, dest=os.path.join(dest_dir, "x")), EvidenceSourceError, "neither a regular file"),
        (dict(src=sparse_src, dest=os.path.join(dest_dir, "x"), algorithms=["crc32"]), InvalidInputError,
         "not supported"),
        (dict(src=sparse_src, dest=os.path.join(dest_dir, "x"), mode="rw-r--r--"), InvalidInputError, "octal"),
    ]
    link = os.path.join(dest_dir, "link.raw")
    os.link(sparse_src, link)
    cases.append((dict(src=sparse_src, dest=link), InvalidInputError, "is the source"))
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            c.copy_evidence(**kwargs)
    assert sorted(os.listdir(dest_dir)) == ["link.raw"]


@pytest.mark.parametrize("value,expected", [("0640", 0o640), ("600", 0o600), (0o444, 0o444), ("0755", 0o755)])
def test_mode(sparse_src, dest_dir, value, expected):
    assert c.parse_mode(value) == expected
    dest = os.path.join(dest_dir, "disk.raw")
    old = os.umask(0o077)
    try:
        c.copy_evidence(sparse_src, dest, mode=value)
    finally:
        os.umask(old)
    assert os.stat(dest).st_mode & 0o7777 == expected


def test_parse_mode_rejects():
    for value in ("", "0999", "u+rw", True, 0o17777, "-1"):
        with pytest.raises(InvalidInputError):
            c.parse_mode(value)


@pytest.fixture
def tmpfs(tmp_path):
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mnt = str(tmp_path / "small fs")
    os.mkdir(mnt)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt], stderr=subprocess.PIPE, check=False)
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here: %s" % done.stderr.decode().strip())
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)


def test_not_enough_space_is_refused_before_writing(tmpfs, tmp_path):
    src = make_sparse(str(tmp_path / "four.raw"), 64 * MIB, [(MIB, 4 * MIB)])
    dest = os.path.join(tmpfs, "four.raw")
    with pytest.raises(DestinationError, match="Not enough free space") as info:
        c.copy_evidence(src, dest)
    details = info.value.details
    assert details["free_bytes"] <= 8 * MIB and details["needed_bytes"] >= 4 * MIB + space.MARGIN_MIN
    assert str(details["free_bytes"]) in info.value.message and str(details["needed_bytes"]) in info.value.message
    assert os.listdir(tmpfs) == [], "something was written before the refusal"


def test_full_destination_fails_clearly_and_can_resume(tmpfs, tmp_path, monkeypatch):
    """If the space check was wrong (a concurrent writer), ENOSPC is a clear, resumable error."""
    src = make_sparse(str(tmp_path / "twelve.raw"), 32 * MIB, [(0, 12 * MIB)])
    dest = os.path.join(tmpfs, "twelve.raw")
    monkeypatch.setattr(c, "free_bytes", lambda folder: 1 << 40)
    with pytest.raises(DestinationError, match="is full at byte"):
        c.copy_evidence(src, dest, checkpoint_bytes=MIB)
    assert sorted(os.listdir(tmpfs)) == ["twelve.raw.partial", "twelve.raw.partial.json"]


@pytest.mark.skipif(not IS_ROOT or not shutil.which("losetup"), reason="needs root and losetup for a loop device")
def test_block_device_source(tmp_path, dest_dir):
    backing = str(tmp_path / "backing.raw")
    with open(backing, "wb") as f:
        f.write(os.urandom(2 * MIB + 1000))
    try:
        dev = subprocess.run(["losetup", "--find", "--show", "--read-only", backing], check=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE).stdout.decode().strip()
    except subprocess.CalledProcessError as exc:
        pytest.skip("losetup cannot attach a loop device here: %s" % exc.stderr.decode().strip())
    try:
        dest = os.path.join(dest_dir, "dev.raw")
        r = c.copy_evidence(dev, dest)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
    with open(backing, "rb") as f:
        data = f.read(2 * MIB + 1000 // 512 * 512)
    assert r["size"] == len(data) and r["verified"]
    assert r["digests"]["sha256"] == hashlib.sha256(data).hexdigest() == reference(dest)


def test_threaded_single_algorithm_read_equals_serial(sparse_src):
    """The read-back hashes one algorithm in a thread of its own (reads overlap hashing): same digest."""
    from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import hash_path
    serial = hash_path(sparse_src, ["sha256"])
    threaded = hash_path(sparse_src, ["sha256"], threaded=True)
    assert threaded["digests"] == serial["digests"] == {"sha256": reference(sparse_src)}
    assert threaded["data_bytes"] == serial["data_bytes"] and threaded["hole_bytes"] == serial["hole_bytes"]


# -- the read-back carries the source's hash state over the holes both files have ------------------------

def source_read(path, algorithms, threaded=True):
    """The source's read as the copy does it: hash consumers that remember the holes' states."""
    from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import hashing
    consumers = [hashing.HashConsumer(hashlib.new(a), remember_holes=True) for a in algorithms]
    fd, st = hashing.open_source(path)
    try:
        hashing.read_extents(hashing.FileSource(fd, st, path), consumers, threaded=threaded)
    finally:
        os.close(fd)
    return consumers


@pytest.mark.parametrize("algorithms", [["sha256"], ["sha256", "md5", "sha1", "sha512"]])
def test_read_back_carries_the_hash_over_the_holes_and_gives_the_full_digest(sparse_src, dest_dir, algorithms):
    dest = os.path.join(dest_dir, "disk.raw")
    r = c.copy_evidence(sparse_src, dest, algorithms)
    assert r["verified"]
    for alg in algorithms:
        assert r["dest_digests"][alg] == reference(dest, alg) == reference(sparse_src, alg)
    # the two long holes (before 3 MiB, and from 3.5 to 40 MiB, from 40.1 MiB to the end) were not hashed again
    assert r["verify_carried_bytes"] > 55 * MIB
    assert r["verify_carried_bytes"] <= r["hole_bytes"]
    rerun = c.copy_evidence(sparse_src, dest, algorithms)  # an existing copy is read back the same way
    assert not rerun["changed"] and rerun["verified"] and rerun["verify_carried_bytes"] == r["verify_carried_bytes"]


def test_read_back_hashes_what_the_copy_holds_where_it_has_no_hole(sparse_src, tmp_path):
    """A copy that stores zeros where the source has a hole, or has a hole where the source stores zeros: the
    digest is still that of its whole content, those ranges are hashed rather than carried."""
    consumers = source_read(sparse_src, ["sha256", "md5"])
    dense = str(tmp_path / "dense.raw")
    with open(sparse_src, "rb") as f, open(dense, "wb") as out:  # every byte written: no hole at all
        shutil.copyfileobj(f, out)
    assert os.stat(dense).st_blocks * 512 >= 64 * MIB
    back = c.read_back(dense, consumers)
    assert back["digests"] == {"sha256": reference(sparse_src), "md5": reference(sparse_src, "md5")}
    assert back["carried_bytes"] == 0
    zeros = str(tmp_path / "zeros.raw")  # all-zero data in the source, a hole in the copy
    with open(zeros, "wb") as f:
        f.write(bytes(8 * MIB))
    hole = str(tmp_path / "hole.raw")
    make_sparse(hole, 8 * MIB, [])
    back = c.read_back(hole, source_read(zeros, ["sha256"]))
    assert back["digests"]["sha256"] == reference(zeros) and back["carried_bytes"] == 0


@pytest.mark.parametrize("where", ["before the hole", "inside the hole", "after the hole"])
def test_read_back_never_carries_over_a_difference(sparse_src, tmp_path, where):
    """The state is carried over a hole only when the copy hashed so far equals the source: a byte changed before
    a hole, or data where the source had a hole, gives the digest of the copy as it is, not the source's."""
    consumers = source_read(sparse_src, ["sha256", "md5"])
    bad = str(tmp_path / "bad.raw")
    subprocess.check_call(["cp", "--sparse=always", sparse_src, bad])
    offset = {"before the hole": 3 * MIB + 100, "inside the hole": 20 * MIB, "after the hole": 40 * MIB + 12346}[where]
    with open(bad, "r+b") as f:
        f.seek(offset)
        f.write(b"\x01")
    back = c.read_back(bad, consumers)
    assert back["digests"] == {"sha256": reference(bad), "md5": reference(bad, "md5")}
    assert back["digests"]["sha256"] != reference(sparse_src)


def test_the_holes_remembered_are_the_longest_and_bounded(tmp_path, monkeypatch, dest_dir):
    """Memory stays bounded: only SKIP_KEPT holes of SKIP_MIN bytes or more are remembered, the longest ones, the
    same for every algorithm; the others are hashed again, and the digest is right either way."""
    from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import hashing
    monkeypatch.setattr(hashing, "SKIP_MIN", 256 * KIB)
    monkeypatch.setattr(hashing, "SKIP_KEPT", 3)
    # holes of 128 KiB (too short), then of 1, 5, 2, 4 and 3 MiB, each after 64 KiB of data
    islands, offset = [], 0
    for hole in (128 * KIB, 1 * MIB, 5 * MIB, 2 * MIB, 4 * MIB, 3 * MIB):
        offset += hole
        islands.append((offset, 64 * KIB))
        offset += 64 * KIB
    src = make_sparse(str(tmp_path / "holes.raw"), offset, islands)
    consumers = source_read(src, ["sha256", "md5"])
    kept = [sorted((start, hole[0] - start) for start, hole in cc.holes().items()) for cc in consumers]
    assert kept[0] == kept[1]
    assert sorted(length for dummy, length in kept[0]) == [3 * MIB, 4 * MIB, 5 * MIB]
    dest = os.path.join(dest_dir, "holes.raw")
    r = c.copy_evidence(src, dest, ["sha256", "md5"])
    assert r["verified"] and r["dest_digests"]["md5"] == reference(src, "md5")
    assert r["verify_carried_bytes"] == 12 * MIB


def test_progress_file_report_starts_a_phase_for_each_phase_or_source(tmp_path):
    path = str(tmp_path / "p.json")
    p = c.ProgressFile(path, None, None, interval=0.0)
    p.report("hash 1/2", 10, 100, src="/a")
    first = json.load(open(path))
    p.report("hash 1/2", 60, 100, src="/a")
    state = json.load(open(path))
    assert (state["phase"], state["src"], state["bytes_done"], state["bytes_total"]) == ("hash 1/2", "/a", 60, 100)
    p.report("hash 2/2", 5, 50, src="/b")
    state = json.load(open(path))
    assert (state["phase"], state["src"], state["bytes_done"], state["bytes_total"]) == ("hash 2/2", "/b", 5, 50)
    assert first["bytes_done"] == 10
    assert c.progress_file_for(None, "/a", "/b") is None and c.progress_file_for(path, "/a", "/b", True) is None
