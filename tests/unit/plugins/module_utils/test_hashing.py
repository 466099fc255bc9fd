# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the hashing core, on real files, sparse files and loop devices."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import shutil
import subprocess

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import hashing as h
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    ChecksumFileError,
    EvidenceSourceError,
    HashMismatchError,
    InvalidInputError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.sparse import iter_extents

MIB = 1024 * 1024


def reference(path, algorithm):
    with open(path, "rb") as f:
        return hashlib.new(algorithm, f.read()).hexdigest()


@pytest.fixture
def random_file(tmp_path):
    p = tmp_path / "random.bin"
    p.write_bytes(os.urandom(3 * MIB + 12345))  # not a multiple of any block size
    return str(p)


@pytest.fixture
def sparse_file(tmp_path):
    """16 MiB logical, two data islands, holes elsewhere."""
    p = str(tmp_path / "sparse.img")
    with open(p, "wb") as f:
        f.truncate(16 * MIB)
        f.seek(1 * MIB)
        f.write(os.urandom(MIB))
        f.seek(10 * MIB + 7)
        f.write(b"island" * 1000)
    return p


@pytest.mark.parametrize("algorithms", [["sha256"], ["md5"], ["sha1"], ["sha512"],
                                        ["sha256", "md5"], ["md5", "sha1", "sha256", "sha512"]])
@pytest.mark.parametrize("block_size", [h.MIN_BLOCK_SIZE, h.DEFAULT_BLOCK_SIZE, 4 * MIB])
def test_digests_equal_hashlib(random_file, algorithms, block_size):
    result = h.hash_path(random_file, algorithms, block_size=block_size)
    assert result["size"] == os.path.getsize(random_file)
    assert list(result["digests"]) == algorithms
    for alg in algorithms:
        assert result["digests"][alg] == reference(random_file, alg)
    assert result["data_bytes"] + result["hole_bytes"] == result["size"]


def test_sparse_file_holes_are_not_read_but_hashed_as_zeros(sparse_file):
    result = h.hash_path(sparse_file, ["sha256", "md5"])
    assert result["digests"]["sha256"] == reference(sparse_file, "sha256")
    assert result["digests"]["md5"] == reference(sparse_file, "md5")
    assert result["size"] == 16 * MIB
    assert result["hole_bytes"] >= 12 * MIB, "the holes were read, not skipped"
    assert result["data_bytes"] + result["hole_bytes"] == 16 * MIB
    dense = h.hash_path(sparse_file, ["sha256"], sparse=False)
    assert dense["digests"]["sha256"] == result["digests"]["sha256"]
    assert dense["hole_bytes"] == 0


def test_fully_sparse_and_empty_files(tmp_path):
    hole = str(tmp_path / "hole")
    with open(hole, "wb") as f:
        f.truncate(5 * MIB + 3)
    empty = str(tmp_path / "empty")
    open(empty, "wb").close()
    for path in (hole, empty):
        result = h.hash_path(path, ["sha256", "sha1"])
        assert result["digests"]["sha256"] == reference(path, "sha256")
        assert result["digests"]["sha1"] == reference(path, "sha1")
        assert result["data_bytes"] == 0


def test_extents_cover_the_file_in_order(sparse_file):
    fd = os.open(sparse_file, os.O_RDONLY)
    try:
        extents = list(iter_extents(fd, 16 * MIB))
    finally:
        os.close(fd)
    pos = 0
    for offset, length, dummy in extents:
        assert offset == pos and length > 0
        pos += length
    assert pos == 16 * MIB
    assert any(not is_data for dummy, dummy2, is_data in extents)


def test_file_changing_while_hashed_is_an_error(tmp_path):
    p = str(tmp_path / "growing.bin")
    with open(p, "wb") as f:
        f.write(os.urandom(4 * MIB))

    def grow(done, total):
        if done == h.MIN_BLOCK_SIZE:
            with open(p, "ab") as f:
                f.write(b"appended while hashing")

    with pytest.raises(EvidenceSourceError, match="changed while it was being hashed"):
        h.hash_path(p, ["sha256", "md5"], block_size=h.MIN_BLOCK_SIZE, progress=grow)


def test_file_shrinking_while_hashed_is_an_error(tmp_path):
    p = str(tmp_path / "shrinking.bin")
    with open(p, "wb") as f:
        f.write(os.urandom(4 * MIB))

    def shrink(done, total):
        if done == h.MIN_BLOCK_SIZE:
            os.truncate(p, 2 * h.MIN_BLOCK_SIZE + 5)

    with pytest.raises(EvidenceSourceError, match="ended at byte|changed while"):
        h.hash_path(p, ["sha256"], block_size=h.MIN_BLOCK_SIZE, progress=shrink)


def test_hashing_does_not_touch_atime(random_file):
    os.utime(random_file, (1000000000, 1000000000))  # atime far in the past: relatime would update it
    h.hash_path(random_file, ["sha256", "md5"])
    assert os.stat(random_file).st_atime == 1000000000


def test_missing_directory_and_fifo_are_refused_before_reading(tmp_path, random_file):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    cases = [(str(tmp_path / "nope"), "does not exist"), (str(tmp_path), "neither a regular file"),
             (fifo, "neither a regular file")]
    for path, message in cases:
        with pytest.raises(EvidenceSourceError, match=message):
            h.hash_and_verify([random_file, path])


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"), reason="needs root and losetup for a loop device")
def test_block_device(tmp_path, random_file):
    try:
        dev = subprocess.run(["losetup", "--find", "--show", "--read-only", random_file], check=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE).stdout.decode().strip()
    except subprocess.CalledProcessError as exc:
        pytest.skip("losetup cannot attach a loop device here: %s" % exc.stderr.decode().strip())
    try:
        result = h.hash_path(dev, ["sha256", "md5"])
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
    # a loop device rounds its size down to 512-byte sectors
    size = os.path.getsize(random_file) // 512 * 512
    with open(random_file, "rb") as f:
        data = f.read(size)
    assert result["size"] == size
    assert result["digests"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["digests"]["md5"] == hashlib.md5(data).hexdigest()


def test_verify_success_and_algorithm_added_by_expectation(random_file):
    expected = h.normalize_expected({random_file: {"sha512": reference(random_file, "sha512")}})
    [result] = h.hash_and_verify([random_file], ["sha256"], expected)
    assert set(result["digests"]) == {"sha256", "sha512"}
    assert result["checked"] == ["sha512"] and result["verified"] is True


def test_mismatch_names_file_and_both_digests(random_file, tmp_path):
    other = str(tmp_path / "ok.bin")
    with open(other, "wb") as f:
        f.write(b"fine")
    wrong = "0" * 64
    good = reference(random_file, "sha256")
    expected = h.normalize_expected({random_file: wrong, other: reference(other, "sha256")})
    with pytest.raises(HashMismatchError) as info:
        h.hash_and_verify([], ["sha256"], expected)
    err = info.value
    assert "1 of 2 file(s)" in err.message
    assert random_file in err.message and wrong in err.message and good in err.message
    assert [f["verified"] for f in err.details["files"]] == [False, True]


def test_bad_algorithm_and_digest_inputs():
    with pytest.raises(InvalidInputError, match="not supported"):
        h.normalize_algorithms(["crc32"])
    with pytest.raises(InvalidInputError, match="not a hexadecimal digest"):
        h.normalize_digest("xyz")
    with pytest.raises(InvalidInputError, match="matches none"):
        h.normalize_digest("abc")
    with pytest.raises(InvalidInputError, match="not a sha256 digest"):
        h.normalize_digest("a" * 32, "sha256")
    assert h.normalize_algorithms(["SHA-256", "md5", "sha256"]) == ["sha256", "md5"]
    assert h.normalize_digest("A" * 40) == ("sha1", "a" * 40)


def test_parse_gnu_bsd_escaped_and_spaces():
    d64, d32 = "ab" * 32, "cd" * 16
    text = "\n".join([
        "# comment",
        "",
        "%s  Windows XP/disk 1.vmdk" % d64,
        "%s *binary mode.raw" % d64,
        "\\%s  new\\nline\\\\name" % d64,
        "SHA256 (bsd style.img) = %s" % d64,
        "MD5 (m d5) = %s" % d32,
        "%s  md5 entry" % d32,
    ])
    entries = h.parse_checksum_text(text)
    assert entries == [
        ("Windows XP/disk 1.vmdk", "sha256", d64),
        ("binary mode.raw", "sha256", d64),
        ("new\nline\\name", "sha256", d64),
        ("bsd style.img", "sha256", d64),
        ("m d5", "md5", d32),
        ("md5 entry", "md5", d32),
    ]


@pytest.mark.parametrize("line", ["not a checksum line", "%s" % ("ab" * 32), "%s name" % ("ab" * 32),
                                  "zz  file", "SHA256 (x) = 1234"])
def test_parse_rejects_malformed_lines(line):
    with pytest.raises(ChecksumFileError, match="Line 1 of"):
        h.parse_checksum_text(line)


def test_checksum_file_resolves_names_against_its_folder(tmp_path, random_file):
    case = tmp_path / "case 7"
    case.mkdir()
    art = case / "vm one.raw"
    shutil.copy(random_file, str(art))
    sums = case / "SHA256SUMS"
    sums.write_text("%s  vm one.raw\n" % reference(str(art), "sha256"))
    # sha256sum -c accepts the same file from inside the folder
    subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=str(case), check=True)
    expected = h.collect_expected(checksum_file=str(sums))
    assert expected == {str(art): {"sha256": reference(str(art), "sha256")}}
    [result] = h.hash_and_verify([], ["md5"], expected)
    assert result["verified"] is True and result["checked"] == ["sha256"]


def test_checksum_file_with_paths_and_conflicts(tmp_path, random_file):
    sums = tmp_path / "SUMS"
    sums.write_text("%s  random.bin\n%s  elsewhere.bin\n" % (reference(random_file, "sha256"), "0" * 64))
    only = h.collect_expected(checksum_file=str(sums), paths=[random_file])
    assert list(only) == [random_file]
    with pytest.raises(ChecksumFileError, match="lists no digest for"):
        h.collect_expected(checksum_file=str(sums), paths=[str(tmp_path / "unlisted.bin")])
    with pytest.raises(InvalidInputError, match="differs between"):
        h.collect_expected({random_file: "1" * 64}, str(sums), [random_file])
    sums.write_text("%s  a\n%s  a\n" % ("0" * 64, "1" * 64))
    with pytest.raises(ChecksumFileError, match="two different sha256"):
        h.collect_expected(checksum_file=str(sums))
    with pytest.raises(ChecksumFileError, match="cannot be read"):
        h.collect_expected(checksum_file=str(tmp_path / "missing"))


def test_relative_paths_are_refused(tmp_path, random_file):
    for call in (lambda: h.hash_and_verify(["relative.bin"]),
                 lambda: h.normalize_expected({"relative.bin": "0" * 64}),
                 lambda: h.collect_expected(checksum_file="SHA256SUMS")):
        with pytest.raises(InvalidInputError, match="is relative"):
            call()


def test_hash_and_verify_reports_each_files_progress(tmp_path):
    paths = []
    for name, size in (("a.raw", 3 << 20), ("b.raw", 1 << 20)):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(os.urandom(size))
        paths.append(path)
    seen = []
    h.hash_and_verify(paths, block_size=1 << 20, progress=lambda *a: seen.append(a))
    assert seen[0][0] == "hash 1/2" and seen[0][3] == paths[0]
    assert ("hash 1/2", 3 << 20, 3 << 20, paths[0]) in seen and seen[-1] == ("hash 2/2", 1 << 20, 1 << 20, paths[1])
