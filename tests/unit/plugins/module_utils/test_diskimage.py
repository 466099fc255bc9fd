# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qcow2/raw chain reader against QEMU itself: images made by qemu-img and qemu-io, digests compared with
``qemu-img convert -O raw`` of the same chain, with the header's backing paths gone."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import diskimage as d
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    InvalidInputError,
)

KIB = 1024
MIB = 1024 * KIB

pytestmark = pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("qemu-io")),
                                reason="qemu-img and qemu-io are not installed (Debian package qemu-utils)")


def qemu_img(*args):
    subprocess.run(["qemu-img"] + [str(a) for a in args], check=True, stdout=subprocess.DEVNULL)


def qemu_io(path, fmt, *commands):
    argv = ["qemu-io", "-f", fmt]
    for c in commands:
        argv += ["-c", c]
    subprocess.run(argv + [str(path)], check=True, stdout=subprocess.DEVNULL)


def sha256_file(path):
    h = hashlib.sha256()
    with open(str(path), "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def reference(tmp_path, source, name="ref.raw"):
    """sha256 of qemu-img convert -O raw of ``source`` (a file QEMU opens by its header, or a json: descriptor)."""
    out = tmp_path / name
    qemu_img("convert", "-O", "raw", source, out)
    digest = sha256_file(out)
    out.unlink()
    return digest


def qcow2(tmp_path, name, size, *options, **kw):
    path = tmp_path / name
    argv = ["create", "-q", "-f", "qcow2"]
    if options:
        argv += ["-o", ",".join(options)]
    if kw.get("backing"):
        argv += ["-b", str(kw["backing"]), "-F", kw.get("backing_format", "qcow2")]
    qemu_img(*(argv + [path, size]))
    return path


def one(path, fmt="qcow2"):
    return [{"path": str(path), "format": fmt}]


# writes with distinct patterns, partial clusters, a zero write, across L2 table boundaries of small clusters
PATTERN = ("write -P 0x5a 0 3k", "write -P 0xa5 130k 70k", "write -P 0x11 1m 300k", "write -z 1100k 40k",
           "write -P 0x22 3m 1m", "write -P 0x33 4095k 1k")


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("cluster", [512, 4096, 65536, 2 * MIB])
def test_single_qcow2_matches_qemu(tmp_path, compat, cluster):
    img = qcow2(tmp_path, "d.qcow2", "4M", "compat=%s" % compat, "cluster_size=%d" % cluster)
    qemu_io(img, "qcow2", *PATTERN)
    info = d.describe(one(img))
    assert info["size"] == 4 * MIB
    assert info["layers"][0]["version"] == (2 if compat == "0.10" else 3)
    assert info["layers"][0]["cluster_size"] == cluster
    got = d.logical_digests(one(img), ["sha256", "md5"])
    assert got["size"] == 4 * MIB and got["digests"]["sha256"] == reference(tmp_path, img)
    assert 0 < got["data_bytes"] <= 4 * MIB


@pytest.mark.parametrize("prealloc", ["metadata", "falloc"])
def test_preallocated_qcow2(tmp_path, prealloc):
    img = qcow2(tmp_path, "p.qcow2", "4M", "preallocation=%s" % prealloc, "cluster_size=65536")
    qemu_io(img, "qcow2", *PATTERN)
    assert d.logical_digests(one(img))["digests"]["sha256"] == reference(tmp_path, img)


def test_a_smaller_middle_layer_hides_the_base_past_its_end(tmp_path):
    """QEMU reads zeros past a backing file's end, even where the layer below it is bigger."""
    base = qcow2(tmp_path, "base.qcow2", "4M")
    qemu_io(base, "qcow2", "write -P 0x0b 0 4M")
    mid = qcow2(tmp_path, "mid.qcow2", "2M", backing=base)
    top = qcow2(tmp_path, "top.qcow2", "4M", backing=mid)
    qemu_io(top, "qcow2", "write -P 0x0c 3m 4k")
    layers = [{"path": str(p), "format": "qcow2"} for p in (top, mid, base)]
    sink = io.BytesIO()
    got = d.logical_digests(layers, sink=sink)
    data = sink.getvalue()
    assert data[:2 * MIB] == b"\x0b" * (2 * MIB) and data[2 * MIB:3 * MIB] == bytes(MIB)
    assert got["digests"]["sha256"] == reference(tmp_path, top)


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
@pytest.mark.parametrize("cluster", [4096, 65536, 2 * MIB])
def test_compressed_clusters(tmp_path, compat, cluster):
    raw = tmp_path / "src.raw"
    with open(str(raw), "wb") as f:
        f.truncate(5 * MIB + 512)  # not a whole number of clusters: the last one is partial
        f.seek(12345)
        f.write(b"compressible text " * 20000)
        f.seek(2 * MIB + 100)
        f.write(os.urandom(300 * KIB))  # does not compress: stored as a normal cluster
        f.seek(5 * MIB)
        f.write(b"\x7f" * 512)
    img = tmp_path / "c.qcow2"
    qemu_img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", "compat=%s,cluster_size=%d" % (compat, cluster),
             raw, img)
    with d.Chain(one(img)) as chain:
        kinds = set(run[2] for run in chain.runs())
    assert d.COMPRESSED in kinds
    got = d.logical_digests(one(img), ["sha256"], chunk=64 * KIB)  # 2 MiB clusters are read in pieces
    assert got["digests"]["sha256"] == sha256_file(raw) == reference(tmp_path, img)


def test_extended_l2_subclusters_over_a_backing_file(tmp_path):
    base = qcow2(tmp_path, "base.qcow2", "2M", "cluster_size=65536")
    qemu_io(base, "qcow2", "write -P 0x01 0 2M")
    top = qcow2(tmp_path, "top.qcow2", "3M", "extended_l2=on", "cluster_size=65536", backing=base)
    # subclusters are 2 KiB: allocated, zero and unallocated ones within one cluster
    qemu_io(top, "qcow2", "write -P 0x02 2k 2k", "write -z 8k 4k", "write -P 0x03 62k 6k", "write -z 1m 64k",
            "write -P 0x04 2560k 3k")
    info = d.describe([{"path": str(top), "format": "qcow2"}, {"path": str(base), "format": "qcow2"}])
    assert info["layers"][0]["extended_l2"] is True
    got = d.logical_digests([{"path": str(top), "format": "qcow2"}, {"path": str(base), "format": "qcow2"}])
    assert got["digests"]["sha256"] == reference(tmp_path, top)


@pytest.fixture
def chain3(tmp_path):
    """qcow2 (v3, 64k) -> qcow2 (v2, 4k, smaller) -> raw (shorter still), made in ``orig/`` with absolute backing
    paths; copied into ``case/vm/disks`` and ``orig/`` removed. Returns (case dir, layers, reference sha256, ...)."""
    orig = tmp_path / "orig"
    orig.mkdir()
    base = orig / "base.raw"
    qemu_img("create", "-q", "-f", "raw", base, "3M")
    qemu_io(base, "raw", "write -P 0x11 0 1m", "write -P 0x12 2m 512k")
    mid = qcow2(orig, "mid.qcow2", "6M", "compat=0.10", "cluster_size=4096", backing=base, backing_format="raw")
    qemu_io(mid, "qcow2", "write -P 0x21 512k 1m", "write -P 0x22 4m 64k", "write -P 0x23 2900k 300k")
    top = qcow2(orig, "top.qcow2", "8M", "compat=1.1", "cluster_size=65536", backing=mid)
    qemu_io(top, "qcow2", "write -P 0x31 100k 10k", "write -z 0 64k", "write -z 2m 1m", "write -P 0x33 7m 512k")
    ref = reference(tmp_path, top)
    json_ref = reference(tmp_path, d.qemu_json([(str(top), "qcow2"), (str(mid), "qcow2"), (str(base), "raw")]),
                         "json.raw")
    case = tmp_path / "case"
    disks = case / "vm" / "disks"
    disks.mkdir(parents=True)
    names = ["vda-02-top.qcow2", "vda-01-mid.qcow2", "vda-00-base.raw"]
    for src, name in zip((top, mid, base), names):
        subprocess.run(["cp", "--sparse=always", str(src), str(disks / name)], check=True)
    shutil.rmtree(str(orig))
    rel = [{"path": "vm/disks/" + n, "format": f} for n, f in zip(names, ("qcow2", "qcow2", "raw"))]
    layers = [{"path": str(case / r["path"]), "format": r["format"]} for r in rel]
    return {"case": case, "layers": layers, "rel": rel, "ref": ref, "json_ref": json_ref, "orig": orig}


def test_chain_with_the_header_paths_gone(chain3):
    c = chain3
    assert c["json_ref"] == c["ref"]
    info = d.describe(c["layers"])
    assert info["size"] == 8 * MIB
    assert info["layers"][0]["backing_file"] == str(c["orig"] / "mid.qcow2")  # reported, never followed
    assert info["layers"][1]["backing_format"] == "raw" and info["layers"][2]["virtual_size"] == 3 * MIB
    got = d.logical_digests(c["layers"], ["sha256", "md5"])
    assert got["digests"]["sha256"] == c["ref"]
    assert got["data_bytes"] < got["size"]  # zeros were not read
    # qemu-img opens the copies with the json descriptor, in the case folder, the originals gone
    command = d.open_command(c["rel"], "vm-vda.raw")
    subprocess.run(["bash", "-c", command], cwd=str(c["case"]), check=True)
    assert sha256_file(c["case"] / "vm-vda.raw") == c["ref"]


def test_descriptor_nests_every_backing(chain3):
    text = d.qemu_json(chain3["rel"])
    assert text.startswith("json:")
    node = json.loads(text[5:])
    assert node["file"] == {"driver": "file", "filename": "vm/disks/vda-02-top.qcow2"}
    assert node["backing"]["driver"] == "qcow2" and node["backing"]["backing"]["driver"] == "raw"
    assert node["backing"]["backing"]["backing"] is None
    assert d.open_command([("it's here/a b.qcow2", "qcow2")], "o u t.raw").endswith(" 'o u t.raw'")


def test_extents_sink_and_write_raw(chain3, tmp_path):
    c = chain3
    extents = list(d.iter_extents(c["layers"], chunk=256 * KIB))
    pos = 0
    stream = hashlib.sha256()
    for offset, length, data in extents:
        assert offset == pos
        assert data is None or len(data) == length <= 256 * KIB
        stream.update(data if data is not None else bytes(length))
        pos += length
    assert pos == 8 * MIB and stream.hexdigest() == c["ref"]
    assert any(data is None for dummy, dummy2, data in extents)
    sink = io.BytesIO()
    got = d.logical_digests(c["layers"], ["sha256"], sink=sink)
    assert hashlib.sha256(sink.getvalue()).hexdigest() == got["digests"]["sha256"] == c["ref"]
    dest = tmp_path / "flat.raw"
    written = d.write_raw(c["layers"], str(dest), ["sha256"])
    assert written["digests"]["sha256"] == c["ref"] == sha256_file(dest)
    assert os.stat(str(dest)).st_size == 8 * MIB
    assert os.stat(str(dest)).st_blocks * 512 < 4 * MIB  # zeros stayed holes
    with pytest.raises(DestinationError, match="exists already"):
        d.write_raw(c["layers"], str(dest))
    assert sha256_file(dest) == c["ref"]


def test_chain_mistakes_are_refused(chain3, tmp_path):
    top, mid, base = chain3["layers"]
    with pytest.raises(InvalidInputError, match="incomplete"):
        d.logical_digests([top, mid])  # mid names its backing file: a layer is missing
    with pytest.raises(InvalidInputError, match="not the last"):
        d.describe([base, top])
    with pytest.raises(EvidenceSourceError, match="not a qcow2 image"):
        d.describe([{"path": base["path"], "format": "qcow2"}])
    alone = qcow2(tmp_path, "alone.qcow2", "1M")
    with pytest.raises(InvalidInputError, match="format raw in its header"):
        d.describe([top, mid, {"path": str(alone), "format": "qcow2"}])
    with pytest.raises(InvalidInputError, match="names no backing file"):
        d.describe([{"path": str(alone), "format": "qcow2"}, base])
    with pytest.raises(InvalidInputError, match="format"):
        d.describe([{"path": str(alone), "format": "vmdk"}])


def test_unsupported_images_are_refused_with_a_sentence(tmp_path):
    zstd = qcow2(tmp_path, "z.qcow2", "1M", "compression_type=zstd")
    with pytest.raises(EvidenceSourceError, match="zstd"):
        d.describe(one(zstd))
    data_file = tmp_path / "x.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=%s" % (tmp_path / "x.data"), data_file, "1M")
    with pytest.raises(EvidenceSourceError, match="external data file"):
        d.describe(one(data_file))
    # qemu-img makes a LUKS image only after a PBKDF benchmark of seconds: the header field is what is refused
    for method, name in ((1, "AES"), (2, "LUKS")):
        enc = qcow2(tmp_path, "e%d.qcow2" % method, "1M")
        with open(str(enc), "r+b") as f:
            f.seek(32)
            f.write(struct.pack(">I", method))
        with pytest.raises(EvidenceSourceError, match="is encrypted \\(%s" % name):
            d.describe(one(enc))


def test_a_truncated_image_is_an_error_not_zeros(tmp_path):
    img = qcow2(tmp_path, "t.qcow2", "4M", "cluster_size=65536")
    qemu_io(img, "qcow2", "write -P 0x44 0 1M")
    with d.Chain(one(img)) as chain:
        l2_offset = chain.layers[0].l1[0] & 0x00FFFFFFFFFFFE00
    os.truncate(str(img), l2_offset + 100)  # the L2 table is cut
    with pytest.raises(EvidenceSourceError, match="ends at byte %d, inside its L2 table" % (l2_offset + 100)):
        d.logical_digests(one(img))
