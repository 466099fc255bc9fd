# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ESXi delta readers (SEsparse, vmfsSparse) checked against two readers no one here wrote: QEMU's vmdk driver
(qemu-img) and dissect.hypervisor. The extents are written by the small writers below, from the format facts
(header fields, entry encodings); the lab's own SEsparse writer (Go) is checked the same way in the lab's tests."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import os
import random
import shutil
import struct
import subprocess

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import diskimage as d
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import imaging
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import EvidenceSourceError, InvalidInputError

QEMU_IMG = shutil.which("qemu-img")
MIB = 1024 * 1024
GRAIN = 4096


def write_sesparse(path, size, grains, zero_grains=(), unmapped=(), replay=False):
    """An SEsparse extent of ``size`` bytes: ``grains`` {grain number in the disk: 4096 bytes}; zero/unmapped
    grains get type-2/type-1 entries. Tables and grains are laid out in an order unlike the disk's (as a host
    allocates them as the guest writes)."""
    capacity = size // 512
    per_table = 4096
    tables = -(-(size // GRAIN) // per_table)
    gd_sectors = max(1, -(-tables * 8 // 512))
    gd_off, gt_off = 4096, 4096 + gd_sectors
    gt_sectors = tables * 64
    grains_off = gt_off + gt_sectors + 8
    header = struct.pack("<26Q", 0xCAFEBABE, 0x200000001, capacity, 8, 64, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2048, 2048,
                         gd_off, gd_sectors, gt_off, gt_sectors, 0, 0, 0, 0, grains_off, tables * per_table * 8)
    header += bytes(512 - len(header))
    volatile = struct.pack("<4Q", 0xCAFECAFE, 0, 1, 1 if replay else 0) + bytes(480)
    directory = [0] * (gd_sectors * 64)
    table_of = {}
    entries = {}
    order = sorted(set(grains) | set(zero_grains) | set(unmapped), reverse=True)
    for g in order:
        t = g // per_table
        if t not in table_of:
            table_of[t] = len(table_of)
            directory[t] = 0x1000000000000000 | table_of[t]
    with open(path, "wb") as f:
        f.write(header)
        f.write(volatile)
        f.seek(gd_off * 512)
        f.write(struct.pack("<%dQ" % len(directory), *directory))
        number = 0
        for g in order:
            if g in grains:
                f.seek((grains_off + number * 8) * 512)
                f.write(grains[g])
                entries[g] = 0x3000000000000000 | ((number & 0xFFF) << 48) | (number >> 12)
                number += 1
            else:
                entries[g] = 0x2000000000000000 if g in zero_grains else 0x1000000000000000
        for t, n in table_of.items():
            table = [entries.get(t * per_table + i, 0) for i in range(per_table)]
            f.seek((gt_off + n * 64) * 512)
            f.write(struct.pack("<%dQ" % per_table, *table))


def write_cowd(path, size, grains, granularity=8):
    """A vmfsSparse (COWD) extent: ``grains`` {grain number: bytes of granularity sectors}."""
    sectors = size // 512
    grain_bytes = granularity * 512
    tables = -(-(size // grain_bytes) // 4096)
    l1_off = 4
    gt_base = l1_off + max(1, -(-tables * 4 // 512))
    data_off = gt_base + tables * 32
    head = b"COWD" + struct.pack("<10I", 1, 3, sectors, granularity, l1_off, tables, 0, 0, 0, 0)
    l1 = [0] * tables
    gts = {}
    with open(path, "wb") as f:
        f.write(head + bytes(2048 - len(head)))
        sector = data_off
        for g in sorted(grains, reverse=True):
            t = g // 4096
            if t not in gts:
                gts[t] = [0] * 4096
                l1[t] = gt_base + t * 32
            f.seek(sector * 512)
            f.write(grains[g])
            gts[t][g % 4096] = sector
            sector += granularity
        f.seek(l1_off * 512)
        f.write(struct.pack("<%dI" % tables, *l1))
        for t, table in gts.items():
            f.seek(l1[t] * 512)
            f.write(struct.pack("<4096I", *table))


def descriptor(path, extent, sectors, create_type, extent_type, cid, parent_cid="ffffffff", hint=None):
    lines = ["# Disk DescriptorFile", "version=1", "encoding=\"UTF-8\"", "CID=%s" % cid, "parentCID=%s" % parent_cid,
             "createType=\"%s\"" % create_type]
    if hint:
        lines.append("parentFileNameHint=\"%s\"" % hint)
    lines += ["", "# Extent description", "RW %d %s \"%s\"" % (sectors, extent_type, extent), "",
              "# The Disk Data Base", "#DDB", "", "ddb.adapterType = \"lsilogic\"", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def random_grains(rng, size, count, grain=GRAIN):
    picks = rng.sample(range(size // grain), count)
    return dict((g, rng.randbytes(grain) if hasattr(rng, "randbytes") else os.urandom(grain)) for g in picks)


@pytest.fixture
def esxi_chain(tmp_path):
    """base flat (sparse, 40 MiB, data in a few places) <- SEsparse delta <- SEsparse delta, as ESXi names them."""
    rng = random.Random(13)
    size = 40 * MIB
    folder = tmp_path / "ds"
    folder.mkdir()
    flat = folder / "vm-flat.vmdk"
    with open(str(flat), "wb") as f:
        f.truncate(size)
        for off in (0, 5 * MIB + 123, 16 * MIB - 100, 33 * MIB):
            f.seek(off)
            f.write(os.urandom(70000))
    descriptor(str(folder / "vm.vmdk"), "vm-flat.vmdk", size // 512, "vmfs", "VMFS", "1a2b3c4d")
    d1 = random_grains(rng, size, 300)
    write_sesparse(str(folder / "vm-000001-sesparse.vmdk"), size, d1, zero_grains=[4097, 9000] if 4097 not in d1
                   else [9000])
    descriptor(str(folder / "vm-000001.vmdk"), "vm-000001-sesparse.vmdk", size // 512, "seSparse", "SESPARSE",
               "5e6f7081", "1a2b3c4d", "vm.vmdk")
    d2 = random_grains(rng, size, 200)
    write_sesparse(str(folder / "vm-000002-sesparse.vmdk"), size, d2)
    descriptor(str(folder / "vm-000002.vmdk"), "vm-000002-sesparse.vmdk", size // 512, "seSparse", "SESPARSE",
               "99aabbcc", "5e6f7081", "vm-000001.vmdk")
    layers = [
        {"path": str(folder / "vm-000002-sesparse.vmdk"), "format": "vmdk-sparse",
         "descriptor": str(folder / "vm-000002.vmdk")},
        {"path": str(folder / "vm-000001-sesparse.vmdk"), "format": "vmdk-sparse",
         "descriptor": str(folder / "vm-000001.vmdk")},
        {"path": str(flat), "format": "raw", "descriptor": str(folder / "vm.vmdk")},
    ]
    return {"folder": folder, "layers": layers, "size": size, "top": str(folder / "vm-000002.vmdk")}


def qemu_digest(tmp_path, top):
    if not QEMU_IMG:
        pytest.skip("qemu-img is missing (apt-get install qemu-utils)")
    out = str(tmp_path / "qemu.raw")
    subprocess.run([QEMU_IMG, "convert", "-O", "raw", top, out], check=True)
    with open(out, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    os.unlink(out)
    return digest


def dissect_digest(top):
    vmdk = pytest.importorskip("dissect.hypervisor.disk.vmdk")
    with open(top, "rb") as fh:
        disk = vmdk.VMDK(fh)
        h = hashlib.sha256()
        remaining = disk.size
        while remaining:
            block = disk.read(min(MIB, remaining))
            assert block
            h.update(block)
            remaining -= len(block)
    return h.hexdigest()


def test_sesparse_chain_equals_qemu_and_dissect(esxi_chain, tmp_path):
    ours = d.logical_digests(esxi_chain["layers"])
    assert ours["size"] == esxi_chain["size"]
    assert ours["digests"]["sha256"] == qemu_digest(tmp_path, esxi_chain["top"])
    assert ours["digests"]["sha256"] == dissect_digest(esxi_chain["top"])
    info = d.describe(esxi_chain["layers"])
    assert [layer["format"] for layer in info["layers"]] == ["vmdk-sparse", "vmdk-sparse", "raw"]
    assert info["layers"][0]["subformat"] == "seSparse" and info["layers"][0]["grain_size"] == 4096
    assert info["layers"][0]["descriptor"]["parent_cid"] == "5e6f7081"
    assert info["layers"][1]["backing_file"] == "vm.vmdk"
    # the cost follows the data: the deltas' grains and the base's data, never the 40 MiB
    assert ours["data_bytes"] < 4 * MIB


def test_zero_and_unmapped_grains_read_as_zeros_over_data_below(tmp_path):
    size = 16 * MIB
    flat = tmp_path / "b-flat.vmdk"
    flat.write_bytes(b"\xaa" * size)
    descriptor(str(tmp_path / "b.vmdk"), "b-flat.vmdk", size // 512, "vmfs", "VMFS", "00000001")
    write_sesparse(str(tmp_path / "b-000001-sesparse.vmdk"), size, {3: b"\x11" * GRAIN}, zero_grains=[1],
                   unmapped=[2])
    descriptor(str(tmp_path / "b-000001.vmdk"), "b-000001-sesparse.vmdk", size // 512, "seSparse", "SESPARSE",
               "00000002", "00000001", "b.vmdk")
    layers = [{"path": str(tmp_path / "b-000001-sesparse.vmdk"), "format": "vmdk-sparse",
               "descriptor": str(tmp_path / "b-000001.vmdk")},
              {"path": str(flat), "format": "raw", "descriptor": str(tmp_path / "b.vmdk")}]
    data = b"".join(piece if piece is not None else bytes(length)
                    for dummy, length, piece in d.iter_extents(layers))
    assert data[:GRAIN] == b"\xaa" * GRAIN
    assert data[GRAIN:3 * GRAIN] == bytes(2 * GRAIN)
    assert data[3 * GRAIN:4 * GRAIN] == b"\x11" * GRAIN
    assert data[4 * GRAIN:] == b"\xaa" * (size - 4 * GRAIN)
    # QEMU reads both kinds as zeros too (dissect reads an unmapped grain from the parent: the readers differ there)
    assert hashlib.sha256(data).hexdigest() == qemu_digest(tmp_path, str(tmp_path / "b-000001.vmdk"))


def test_vmfssparse_chain_equals_qemu_and_dissect(tmp_path):
    rng = random.Random(5)
    size = 24 * MIB
    flat = tmp_path / "c-flat.vmdk"
    with open(str(flat), "wb") as f:
        f.truncate(size)
        f.seek(MIB)
        f.write(os.urandom(3 * MIB))
    descriptor(str(tmp_path / "c.vmdk"), "c-flat.vmdk", size // 512, "vmfs", "VMFS", "0000abcd")
    write_cowd(str(tmp_path / "c-000001-delta.vmdk"), size, random_grains(rng, size, 150, grain=4096))
    descriptor(str(tmp_path / "c-000001.vmdk"), "c-000001-delta.vmdk", size // 512, "vmfsSparse", "VMFSSPARSE",
               "0000beef", "0000abcd", "c.vmdk")
    layers = [{"path": str(tmp_path / "c-000001-delta.vmdk"), "format": "vmdk-sparse",
               "descriptor": str(tmp_path / "c-000001.vmdk")},
              {"path": str(flat), "format": "raw", "descriptor": str(tmp_path / "c.vmdk")}]
    ours = d.logical_digests(layers)
    assert d.describe(layers)["layers"][0]["subformat"] == "vmfsSparse"
    assert ours["digests"]["sha256"] == qemu_digest(tmp_path, str(tmp_path / "c-000001.vmdk"))
    assert ours["digests"]["sha256"] == dissect_digest(str(tmp_path / "c-000001.vmdk"))


def copy_renamed(layers, case, vm):
    """Copy each level's extent and descriptor into ``<case>/<vm>/disks/`` as the pipeline names copies
    (``scsi0_0-<depth>-<host's name>``); the layers relative to the case folder."""
    (case / vm / "disks").mkdir(parents=True)
    rel = []
    for depth, layer in enumerate(layers):
        item = {"format": layer["format"]}
        for key in ("path", "descriptor"):
            name = "%s/disks/scsi0_0-%02d-%s" % (vm, depth, os.path.basename(layer[key]))
            shutil.copy(layer[key], str(case / name))
            item[key] = name
        rel.append(item)
    return rel


def test_opener_command_opens_renamed_copies_without_the_host_folder(esxi_chain, tmp_path):
    """The copies carry other names in the case folder (and the original folder is gone): the command links them
    under the host's names in a temporary folder and QEMU reads the same bytes."""
    if not QEMU_IMG:
        pytest.skip("qemu-img is missing (apt-get install qemu-utils)")
    case = tmp_path / "case"
    rel = copy_renamed(esxi_chain["layers"], case, "vm")
    want = d.logical_digests(esxi_chain["layers"])["digests"]["sha256"]
    shutil.rmtree(str(esxi_chain["folder"]))
    absolute = [dict(item, path=str(case / item["path"]), descriptor=str(case / item["descriptor"])) for item in rel]
    info = d.describe(absolute)
    for item, facts in zip(rel, info["layers"]):
        item["extent_file"] = facts["descriptor"]["extent_file"]
    assert d.logical_digests(absolute)["digests"]["sha256"] == want
    command = d.open_command(rel, "vm-scsi0_0.raw")
    assert d.qemu_json(rel).startswith('json:{"driver":"vmdk","file":{"driver":"file","filename":"0/')
    before = sorted(os.listdir(str(case / "vm" / "disks")))
    subprocess.run(["sh", "-c", command], cwd=str(case), check=True)
    with open(str(case / "vm-scsi0_0.raw"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == want
    assert sorted(os.listdir(str(case / "vm" / "disks"))) == before
    # a failing step fails the command
    os.unlink(str(case / rel[1]["path"]))
    assert subprocess.run(["sh", "-c", command.replace("vm-scsi0_0.raw", "again.raw")], cwd=str(case),
                          stderr=subprocess.DEVNULL, check=False).returncode != 0


def test_vmdk_chain_mistakes_are_refused(esxi_chain, tmp_path):
    layers = esxi_chain["layers"]
    with pytest.raises(InvalidInputError, match="last layer of the chain"):
        d.describe(layers[:2])
    with pytest.raises(InvalidInputError, match="needs its descriptor"):
        d.describe([dict(layers[0], descriptor=None)] + layers[1:])
    with pytest.raises(InvalidInputError, match="names a parent with CID 5e6f7081"):
        d.describe([layers[0], layers[2]])
    with pytest.raises(InvalidInputError, match="says createType seSparse with a SESPARSE extent, but .* is a"):
        bad = tmp_path / "cowd.vmdk"
        write_cowd(str(bad), esxi_chain["size"], {})
        d.describe([dict(layers[0], path=str(bad))] + layers[1:])
    replay = tmp_path / "replay-sesparse.vmdk"
    write_sesparse(str(replay), esxi_chain["size"], {}, replay=True)
    with pytest.raises(EvidenceSourceError, match="journal that was never replayed"):
        d.describe([dict(layers[0], path=str(replay))] + layers[1:])
    junk = tmp_path / "junk.vmdk"
    junk.write_bytes(b"KDMV" + bytes(1020))
    with pytest.raises(EvidenceSourceError, match="hosted sparse extent"):
        d.describe([dict(layers[0], path=str(junk))] + layers[1:])
    torn = tmp_path / "torn-sesparse.vmdk"
    with open(layers[0]["path"], "rb") as f:
        torn.write_bytes(f.read(4096 * 512 + 10))
    with pytest.raises(EvidenceSourceError, match="truncated"):
        d.describe([dict(layers[0], path=str(torn))] + layers[1:])


def test_image_disks_records_descriptors_and_an_opener_that_runs(esxi_chain, tmp_path):
    """evidence_image's backend on renamed copies in a case folder: the logical record names each level's descriptor,
    and its command (run in the case folder) writes the same bytes."""
    case = tmp_path / "case"
    layers = copy_renamed(esxi_chain["layers"], case, "vm1")
    result = imaging.image_disks(str(case), [{"target": "scsi0_0", "vm": "vm1", "layers": layers}])
    (disk,) = result["disks"]
    logical = disk["logical"]
    assert logical["descriptors"] == [item["descriptor"] for item in layers]
    assert logical["formats"] == ["vmdk-sparse", "vmdk-sparse", "raw"]
    assert logical["digests"]["sha256"] == d.logical_digests(esxi_chain["layers"])["digests"]["sha256"]
    if QEMU_IMG:
        subprocess.run(["sh", "-c", logical["open"]["command"]], cwd=str(case), check=True)
        with open(str(case / "vm1-scsi0_0.raw"), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == logical["digests"]["sha256"]
