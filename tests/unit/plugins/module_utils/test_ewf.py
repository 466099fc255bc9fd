# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""E01 of a disk's chain with ewf-tools' ewfacquirestream, checked with ewfverify, ewfinfo and pyewf."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import shutil
import subprocess

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import diskimage, ewf
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import DestinationError, InvalidInputError

MIB = 1024 * 1024
TOOLS = ("qemu-img", "qemu-io", "ewfacquirestream", "ewfinfo", "ewfverify")
MISSING = [t for t in TOOLS if not shutil.which(t)]
pytestmark = pytest.mark.skipif(bool(MISSING), reason="%s not installed (Debian packages qemu-utils, ewf-tools)"
                                % ", ".join(MISSING))

FIELDS = {"case_number": "C-42; $(id) `x`", "examiner": "Jane O'Doe", "description": "vda of vmc-victim",
          "notes": "frozen at 18:37 \u00fc"}


def run(*argv, **kw):
    return subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.PIPE, **kw).stdout.decode()


def make_chain(folder, size, seed=b""):
    """qcow2 over raw (its header path then removed): random data (incompressible) in two places, zeros elsewhere."""
    base = os.path.join(folder, "base.raw")
    with open(base, "wb") as f:
        f.truncate(size)
        f.seek(MIB // 2)
        f.write(os.urandom(MIB) + seed)
    top = os.path.join(folder, "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top, size)
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x4c 2m 1m", "-c", "write -z 0 64k", top)
    data = os.path.join(folder, "rand")
    with open(data, "wb") as f:
        f.write(os.urandom(MIB))
    run("qemu-io", "-f", "qcow2", "-c", "write -s %s 2560k 1m" % data, top)  # random bytes from a file
    os.unlink(data)
    moved = os.path.join(folder, "copy-base.raw")
    os.rename(base, moved)  # the header's backing path now names nothing
    return [{"path": top, "format": "qcow2"}, {"path": moved, "format": "raw"}]


@pytest.fixture
def chain(tmp_path):
    return make_chain(str(tmp_path), 6 * MIB)


def test_e01_of_a_chain_is_verified_by_ewf_and_pyewf(chain, tmp_path):
    want = diskimage.logical_digests(chain, ["sha256", "md5", "sha1"])
    stem = str(tmp_path / "case" / "vm" / "e01" / "vda")
    fields = dict(FIELDS, evidence_number="vda")
    result = ewf.acquire_e01(chain, stem, fields, ["sha256"], segment_size=MIB)
    assert result["changed"] and result["path"] == stem + ".E01"
    assert len(result["segments"]) > 1 and result["segments"][0] == stem + ".E01"
    assert result["segments"][1] == stem + ".E02" and all(os.path.exists(s) for s in result["segments"])
    assert result["media_size"] == 6 * MIB
    assert result["media_digests"] == {"md5": want["digests"]["md5"], "sha1": want["digests"]["sha1"],
                                       "sha256": want["digests"]["sha256"]}
    assert result["stream_digests"]["sha256"] == want["digests"]["sha256"]
    assert result["tool"].startswith("ewfacquirestream ") and result["case_fields"] == fields
    assert not [n for n in os.listdir(os.path.dirname(stem)) if n.startswith(".")]  # no temporary segment left
    verify = subprocess.run(["ewfverify", "-q", stem + ".E01"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            check=False)
    assert verify.returncode == 0 and b"SUCCESS" in verify.stdout
    info = run("ewfinfo", stem + ".E01")
    for label, key in (("Case number", "case_number"), ("Evidence number", "evidence_number"),
                       ("Examiner name", "examiner"), ("Description", "description"), ("Notes", "notes")):
        assert "\t%s:\t" % label in info and info.split("\t%s:" % label)[1].split("\n")[0].strip() == fields[key]
    pyewf = pytest.importorskip("pyewf", reason="pyewf (pip libewf-python) is not installed in this Python")
    handle = pyewf.handle()
    handle.open(pyewf.glob(stem + ".E01"))
    try:
        assert handle.get_media_size() == 6 * MIB
        h = hashlib.sha256()
        left = handle.get_media_size()
        while left:
            block = handle.read(min(MIB, left))
            assert block
            h.update(block)
            left -= len(block)
        assert h.hexdigest() == want["digests"]["sha256"]
        assert handle.get_header_value("case_number") == fields["case_number"]
    finally:
        handle.close()


def test_an_existing_e01_is_never_overwritten(chain, tmp_path):
    stem = str(tmp_path / "e01" / "vda")
    first = ewf.acquire_e01(chain, stem, {"case_number": "1"}, segment_size=MIB)
    before = [(s, os.stat(s).st_mtime_ns) for s in first["segments"]]
    again = ewf.acquire_e01(chain, stem, {"case_number": "1"}, segment_size=MIB)
    assert not again["changed"] and again["segments"] == first["segments"]
    assert again["media_digests"] == first["media_digests"]
    assert [(s, os.stat(s).st_mtime_ns) for s in first["segments"]] == before
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(DestinationError, match="holds another image"):
        ewf.acquire_e01(make_chain(str(other), 6 * MIB, b"x"), stem, {})
    os.unlink(first["segments"][-1])  # a segment lost: not complete
    with pytest.raises(DestinationError, match="not a complete image"):
        ewf.acquire_e01(chain, stem, {})
    assert [os.path.exists(s) for s in first["segments"]] == [True] * (len(first["segments"]) - 1) + [False]


@pytest.mark.parametrize("size", [4 * MIB + 3 * 512, 4 * MIB - 32768 + 512])
def test_sizes_not_a_whole_number_of_chunks(tmp_path, size):
    """ewfacquirestream 20140813 drops the last partial chunk when -B is the exact size: -B is not given then."""
    layers = make_chain(str(tmp_path), size)
    result = ewf.acquire_e01(layers, str(tmp_path / "d"), {})
    assert result["media_size"] == size
    assert result["media_digests"]["md5"] == diskimage.logical_digests(layers, ["md5"])["digests"]["md5"]


def test_refusals_before_anything_is_written(chain, tmp_path):
    stem = str(tmp_path / "e" / "vda")
    with pytest.raises(InvalidInputError, match="tab, a line break"):
        ewf.acquire_e01(chain, stem, {"notes": "a\tb"})
    with pytest.raises(InvalidInputError, match="unknown"):
        ewf.acquire_e01(chain, stem, {"case": "1"})
    with pytest.raises(InvalidInputError, match="without its extension"):
        ewf.acquire_e01(chain, stem + ".E01", {})
    odd = tmp_path / "odd.raw"
    with open(str(odd), "wb") as f:
        f.write(b"\1" * 1000)
    with pytest.raises(InvalidInputError, match="512-byte sectors"):
        ewf.acquire_e01([{"path": str(odd), "format": "raw"}], stem, {})
    assert not os.path.exists(str(tmp_path / "e"))


def test_segment_order():
    names = ["/x/d.EAB", "/x/d.E10", "/x/d.E99", "/x/d.E01", "/x/d.EAA", "/x/d.FAA", "/x/d.EZZ"]
    assert sorted(names, key=ewf._segment_key) == ["/x/d.E01", "/x/d.E10", "/x/d.E99", "/x/d.EAA", "/x/d.EAB",
                                                   "/x/d.EZZ", "/x/d.FAA"]


def test_a_writer_that_dies_leaves_nothing(chain, tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    script = fake / "ewfacquirestream"
    script.write_text(u"#!/bin/sh\n[ \"$1\" = -V ] && { echo 'ewfacquirestream 20140813'; exit 0; }\n"
                      u"head -c 100000 >/dev/null; echo 'disk full' >&2; exit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (fake, os.environ["PATH"]))
    folder = tmp_path / "e01"
    with pytest.raises(DestinationError, match="ewfacquirestream (stopped reading|failed).*disk full"):
        ewf.acquire_e01(chain, str(folder / "vda"), {})
    assert os.listdir(str(folder)) == []


def test_segments_a_killed_run_left_are_removed_by_the_next(chain, tmp_path):
    """A run killed while ewfacquirestream wrote leaves .<target>.partial-<pid>.E01 behind (never published): the next
    run removes those of writers that are gone, and keeps those of a live process."""
    folder = tmp_path / "e01"
    folder.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [folder / (".vda.partial-%d.E01" % dead.pid), folder / (".vda.partial-%d.E02" % dead.pid)]
    live = folder / (".vda.partial-%d.E01" % os.getppid())
    other = folder / (".vdb.partial-%d.E01" % dead.pid)
    for path in stale + [live, other]:
        path.write_bytes(b"torn")
    result = ewf.acquire_e01(chain, str(folder / "vda"), {})
    assert sorted(result["removed_partials"]) == sorted(str(p) for p in stale)
    assert sorted(os.listdir(str(folder))) == sorted([live.name, other.name, "vda.E01"])


def test_short_reads_from_the_pipe_never_corrupt_the_image(tmp_path):
    """A disk of 4 KiB clusters streams in many small pieces, so ewfacquirestream's reads come back short; given
    ``-B <size>`` it then wrote an image ewfinfo called corrupted, without digests (seen on a 200 MiB chain). The
    writer gives no -B: every run here is complete and its MD5 is the stream's."""
    folder = str(tmp_path)
    base = os.path.join(folder, "base.raw")
    with open(base, "wb") as f:
        f.truncate(32 * MIB)
    top = os.path.join(folder, "top.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", base, "-F", "raw", top, 32 * MIB)
    writes = []
    for i in range(600):  # a 4 KiB cluster of data every 12 KiB
        writes += ["-c", "write -P 0x%02x %dk 4k" % (i % 251 + 1, i * 12)]
    run("qemu-io", "-f", "qcow2", *(writes + [top]))
    layers = [{"path": top, "format": "qcow2"}, {"path": base, "format": "raw"}]
    want = diskimage.logical_digests(layers, ["md5"])["digests"]["md5"]
    for n in range(3):
        out = ewf.acquire_e01(layers, os.path.join(folder, "e%d" % n, "vda"), {"case_number": "C-1"}, ["sha256"])
        assert out["ewf_digests"]["md5"] == want
