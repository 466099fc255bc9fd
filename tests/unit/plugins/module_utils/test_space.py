# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one space rule (_evidence/space.py), on real sparse files, and against the checks of the steps that write.

The property tests drive evidence_copy's and pmemsave's own refusal code (their free-space probe and, for
sizes no test machine can hold, the allocation they read, replaced) with what the plan promised: a plan
that fits must never be refused by one of its steps, for any size.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import random
import shutil
import subprocess

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import copy as c
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import space
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError,
    EvidenceSourceError,
    InvalidInputError,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import memory as km

MIB = space.MIB
GIB = space.GIB
TIB = 1024 * GIB


def sparse(path, size, data=()):
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in data:
            f.seek(offset)
            f.write(os.urandom(length))
    return str(path)


# -- the rule for one write ------------------------------------------------------------------------------

def test_margin_is_64_mib_or_one_percent():
    assert space.margin(0) == 64 * MIB
    assert space.margin(6400 * MIB) == 64 * MIB
    assert space.margin(6400 * MIB + 100) == 64 * MIB + 1
    assert space.margin(10 * GIB) == 10 * GIB // 100
    assert space.image_need(10 * GIB) == 10 * GIB + 10 * GIB // 100


@pytest.mark.parametrize("method,copies", [("none", 0), ("pmemsave", 1), ("pmemsave_paused", 1), ("core_dump", 1),
                                           ("background_snapshot", 2)])
def test_memory_need_per_method(method, copies):
    assert space.memory_copies(method) == copies
    ram = 8 * GIB
    assert space.memory_need(ram, method) == (copies * ram + ram // 100 if copies else 0)
    assert space.memory_need(0, method) == 0


def test_memory_method_and_size_are_checked():
    with pytest.raises(InvalidInputError, match="not one of none, pmemsave"):
        space.memory_need(MIB, "hibernate")
    with pytest.raises(InvalidInputError, match="negative"):
        space.memory_need(-1, "core_dump")


# -- measuring real files ----------------------------------------------------------------------------------

def test_large_apparent_size_few_allocated_blocks(tmp_path):
    """A 100 GiB sparse image with 1 MiB of data needs its 1 MiB plus the margin, not 100 GiB."""
    img = sparse(tmp_path / "thin.raw", 100 * GIB, [(50 * GIB, MIB)])
    (entry,) = space.measure_images([img])
    st = os.stat(img)
    assert entry["size_bytes"] == 100 * GIB
    assert entry["allocated_bytes"] == st.st_blocks * 512
    assert MIB <= entry["allocated_bytes"] <= 2 * MIB
    assert entry["margin_bytes"] == 64 * MIB
    assert entry["bytes_needed"] == entry["allocated_bytes"] + 64 * MIB
    assert entry["same_as"] is None


def test_each_real_file_counted_once(tmp_path):
    """A backing file shared by two disks, named once directly and once through a link: counted once."""
    base = sparse(tmp_path / "base.qcow2", 8 * MIB, [(0, 4 * MIB)])
    top1 = sparse(tmp_path / "vda.qcow2", 4 * MIB, [(0, MIB)])
    top2 = sparse(tmp_path / "vdb.qcow2", 4 * MIB, [(0, 2 * MIB)])
    link = str(tmp_path / "base-link.qcow2")
    os.symlink(base, link)
    hard = str(tmp_path / "base-hard.qcow2")
    os.link(base, hard)
    images = space.measure_images([top1, base, top2, link, hard, top1])
    assert [i["same_as"] for i in images] == [None, None, None, base, base, top1]
    assert [i["bytes_needed"] == 0 for i in images] == [False, False, False, True, True, True]
    assert images[3]["real_path"] == base and images[3]["allocated_bytes"] == images[1]["allocated_bytes"]
    plan = space.evaluate([top1, base, top2, link, hard, top1])
    allocated = [os.stat(p).st_blocks * 512 for p in (top1, base, top2)]
    assert plan["bytes_needed"] == space.plan_bytes(allocated) == sum(a + 64 * MIB for a in allocated)


def test_e01s_count_the_allocated_data_once_more(tmp_path):
    """With e01, the plan counts the images' allocated data once more (each real file once), with its margin, and says
    so when it does not fit."""
    base = sparse(tmp_path / "base.qcow2", 8 * MIB, [(0, 4 * MIB)])
    top = sparse(tmp_path / "vda.qcow2", 4 * MIB, [(0, MIB)])
    link = str(tmp_path / "link.qcow2")
    os.symlink(base, link)
    plain = space.evaluate([top, base, link])
    with_e01 = space.evaluate([top, base, link], e01=True)
    allocated = sum(os.stat(p).st_blocks * 512 for p in (top, base))
    assert plain["e01_bytes"] == 0
    assert with_e01["e01_bytes"] == allocated + 64 * MIB
    assert with_e01["bytes_needed"] == plain["bytes_needed"] + with_e01["e01_bytes"]
    short = space.evaluate([top, base], e01=True, lun={"size_bytes": 256 * MIB}, fail_when_short=False)
    assert short["fits"] is False and "for the E01s of the disks" in short["msg"], short["msg"]
    assert space.evaluate([], e01=True)["e01_bytes"] == 0


def test_missing_relative_and_odd_images_are_sentences(tmp_path):
    with pytest.raises(EvidenceSourceError, match=r"The image /nonexistent/vda.qcow2 does not exist on this host.*"
                                                  r"Nothing was changed\."):
        space.measure_images(["/nonexistent/vda.qcow2"])
    dangling = str(tmp_path / "dangling")
    os.symlink(str(tmp_path / "gone"), dangling)
    with pytest.raises(EvidenceSourceError, match="is a link to nothing"):
        space.measure_images([dangling])
    with pytest.raises(InvalidInputError, match="'vda.qcow2' is not an absolute path"):
        space.measure_images(["vda.qcow2"])
    with pytest.raises(EvidenceSourceError, match="neither a regular file nor a block device"):
        space.measure_images([str(tmp_path)])


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"), reason="needs root and losetup")
def test_block_device_counts_whole(tmp_path):
    backing = sparse(tmp_path / "backing.raw", 32 * MIB, [(0, MIB)])
    try:
        dev = subprocess.run(["losetup", "--find", "--show", "--read-only", backing], check=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE).stdout.decode().strip()
    except subprocess.CalledProcessError as exc:
        pytest.skip("losetup cannot attach a loop device here: %s" % exc.stderr.decode().strip())
    try:
        (entry,) = space.measure_images([dev])
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)
    assert entry["size_bytes"] == entry["allocated_bytes"] == 32 * MIB


# -- free space at a destination that may not exist yet ------------------------------------------------------

def test_free_at_the_nearest_existing_folder(tmp_path):
    dest = str(tmp_path / "case" / "vm1" / "disks")
    folder, free = space.free_at(dest)
    assert folder == str(tmp_path) and not os.path.exists(str(tmp_path / "case"))
    vfs = os.statvfs(str(tmp_path))
    assert abs(free - vfs.f_bavail * vfs.f_frsize) < 64 * MIB  # other writers on the machine
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationError, match="is not a folder"):
        space.free_at(str(tmp_path / "file" / "below"))
    with pytest.raises(InvalidInputError, match="not an absolute path"):
        space.free_at("case/vm1")


# -- the plan against the checks of the steps that write (property tests) ------------------------------------

def _sizes(rng, count):
    """Allocated sizes from 0 to 4 TiB, log-uniform, plus the edges of the margin rule (6.4 GiB)."""
    edges = [0, 1, 512, MIB, 64 * MIB, 6400 * MIB - 1, 6400 * MIB, 6400 * MIB + 1, 6400 * MIB + 100,
             6554 * MIB, 7 * GIB, 100 * GIB, 4 * TIB]
    return edges + [int(2 ** rng.uniform(9, 42)) // 512 * 512 for dummy in range(count)]


@pytest.fixture
def tiny(tmp_path):
    """A small real source and a destination folder for evidence_copy's check (check mode writes nothing)."""
    src = sparse(tmp_path / "src.raw", MIB, [(0, 4096)])
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    return src, str(dest_dir / "copy.raw")


def _copy_refuses(monkeypatch, src, dest, allocated, free):
    """Run evidence_copy's own space check for an image of ``allocated`` bytes with ``free`` bytes free."""
    monkeypatch.setattr(c, "allocated_bytes", lambda st, size=None: allocated)
    monkeypatch.setattr(c, "free_bytes", lambda folder: free)
    try:
        c.copy_evidence(src, dest, check_mode=True)
    except DestinationError as exc:
        assert "Not enough free space" in exc.message
        return True
    return False


def test_plan_covers_evidence_copy_for_any_size(monkeypatch, tiny):
    """The plan of one image is exactly what evidence_copy checks: a byte less is refused, the plan is not.

    Before, the role planned du + 64 MiB per VM: an image over 6.4 GiB passed the plan, its VM was frozen
    and its RAM taken, and only then the copy was refused.
    """
    src, dest = tiny
    for allocated in _sizes(random.Random(7), 300):
        need = space.plan_bytes([allocated])
        assert not _copy_refuses(monkeypatch, src, dest, allocated, need), allocated
        assert _copy_refuses(monkeypatch, src, dest, allocated, need - 1), allocated
        old_role_plan = allocated + 64 * MIB
        assert _copy_refuses(monkeypatch, src, dest, allocated, old_role_plan) == (allocated // 100 > 64 * MIB)
    assert os.listdir(os.path.dirname(dest)) == []


def _pmemsave_refuses(monkeypatch, tmp_path, ram, method, free):
    monkeypatch.setattr(km, "free_bytes", lambda folder: free)
    vm = {"name": "vm1", "uuid": "u-1", "state": "running", "active": True, "running": True, "ram": ram,
          "machine": "pc-q35-7.2", "qemu_uid": 0, "qemu_gid": 0}
    journal = Journal("space-unit", str(tmp_path / "journal"), hostname="unit")
    try:
        km.plan(vm, str(tmp_path / "mem.raw"), method, journal)
    except DestinationError as exc:
        assert "free" in exc.message
        return True
    return False


def test_whole_acquisition_is_never_refused_by_a_step(monkeypatch, tmp_path, tiny):
    """Random plans (images + RAM): free = the plan; RAM taken first, then each copy in turn, each step's own
    check passes, and the space each leaves written is subtracted before the next."""
    src, dest = tiny
    rng = random.Random(11)
    methods = ["none", "pmemsave", "pmemsave_paused", "core_dump", "background_snapshot"]
    for dummy in range(150):
        allocations = [rng.choice(_sizes(rng, 5)) for dummy in range(rng.randint(1, 6))]
        method = rng.choice(methods)
        ram = int(2 ** rng.uniform(20, 40)) // MIB * MIB
        free = space.plan_bytes(allocations, ram, method)
        if method != "none":
            assert not _pmemsave_refuses(monkeypatch, tmp_path, ram, method, free), (ram, method, free)
            free -= ram  # the image stays, the stream of a background snapshot is gone
        for allocated in allocations:
            assert not _copy_refuses(monkeypatch, src, dest, allocated, free), (allocations, allocated, free)
            free -= allocated
        assert free >= 0


def test_pmemsave_checks_the_same_rule(monkeypatch, tmp_path):
    for ram in (256 * MIB, 8 * GIB, 100 * GIB):
        for method in ("core_dump", "background_snapshot"):
            need = space.memory_need(ram, method)
            assert not _pmemsave_refuses(monkeypatch, tmp_path, ram, method, need)
            assert _pmemsave_refuses(monkeypatch, tmp_path, ram, method, need - 1)


# -- the LUN ------------------------------------------------------------------------------------------------

def test_lun_bytes_from_a_plan():
    assert space.lun_bytes(0) == 256 * MIB
    assert space.lun_bytes(10 * GIB) == (11 * GIB + 128 * MIB)
    assert space.lun_bytes(10 * GIB + 1) % MIB == 0


def test_a_lun_sized_from_a_plan_holds_it():
    rng = random.Random(5)
    for need in [0, 1, 115 * MIB, 117 * MIB, 120 * MIB, 200 * MIB] + [int(2 ** rng.uniform(0, 45)) for dummy in range(5000)]:
        assert space.lun_usable_bytes(space.lun_bytes(need)) >= need, need


def test_lun_usable_is_below_what_ext4_offers_where_the_old_rule_was_not():
    # measured with e2fsprogs 1.47 (mkfs.ext4 -m 0 on a sparse file, f_bavail of the mounted filesystem)
    measured = {256 * MIB: 236872704, 2 * GIB: 2023571456, 16 * GIB: 16713093120, 128 * GIB: 134128574464,
                256 * GIB: 269410672640}
    for size, offered in measured.items():
        assert space.lun_usable_bytes(size) <= offered
    old = 128 * GIB - 128 * GIB // 50 - 64 * MIB
    assert old > measured[128 * GIB]  # the rule used before promised 490 MB that ext4 does not offer


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("losetup"),
                    reason="needs root, mkfs.ext4 and losetup")
@pytest.mark.parametrize("size", [256 * MIB, 600 * MIB, 2 * GIB, 20 * GIB, 130 * GIB])
def test_lun_usable_against_a_real_ext4(tmp_path, size):
    """mkfs.ext4 as iscsi_attach runs it, on a sparse file of the LUN's size, mounted read-only: f_bavail."""
    img = sparse(tmp_path / "lun.img", size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-L", "vmcollect", img], check=True)
    try:
        dev = subprocess.run(["losetup", "--find", "--show", "--read-only", img], check=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE).stdout.decode().strip()
    except subprocess.CalledProcessError as exc:
        pytest.skip("losetup cannot attach a loop device here: %s" % exc.stderr.decode().strip())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-o", "ro,noload", dev, str(mnt)], stderr=subprocess.PIPE, check=False)
        if done.returncode:
            pytest.skip("cannot mount here: %s" % done.stderr.decode().strip())
        try:
            assert space.lun_usable_bytes(size) <= space.free_bytes(str(mnt))
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


# -- evaluate: what evidence_plan returns ------------------------------------------------------------------

def test_plan_fits(tmp_path):
    img = sparse(tmp_path / "vda.raw", 64 * MIB, [(0, MIB)])
    res = space.evaluate([img], 256 * MIB, "background_snapshot", dest=str(tmp_path / "case" / "vm1"), lun=True)
    assert res["fits"] and not res["changed"]
    assert res["measured_at"] == str(tmp_path) and res["dest"] == str(tmp_path / "case" / "vm1")
    assert res["memory"] == {"bytes": 256 * MIB, "method": "background_snapshot", "copies": 2,
                             "margin_bytes": 64 * MIB, "bytes_needed": 576 * MIB}
    assert res["bytes_needed"] == res["images"][0]["bytes_needed"] + 576 * MIB
    assert res["lun_bytes"] == space.lun_bytes(res["bytes_needed"])
    assert res["lun_usable_bytes"] >= res["bytes_needed"]
    assert not os.path.exists(str(tmp_path / "case"))


def test_plan_short_is_refused_with_a_sentence(tmp_path, monkeypatch):
    small = sparse(tmp_path / "vdb.raw", 64 * MIB, [(0, MIB)])
    big = sparse(tmp_path / "vda.raw", 64 * MIB, [(0, 3 * MIB)])
    monkeypatch.setattr(space, "free_bytes", lambda folder: 100 * MIB)
    dest = str(tmp_path / "case")
    with pytest.raises(DestinationError) as info:
        space.evaluate([small, big], 512 * MIB, "core_dump", dest=dest)
    msg = info.value.message
    assert msg.startswith("The destination %s has %d bytes (100.0 MiB) free" % (dest, 100 * MIB))
    assert "needs %d bytes" % info.value.details["bytes_needed"] in msg
    assert "2 images, the biggest %s" % big in msg and "512.0 MiB of RAM by core_dump (once)" in msg
    assert msg.endswith("Nothing was changed.")
    assert info.value.details["fits"] is False and info.value.details["bytes_free"] == 100 * MIB
    res = space.evaluate([small, big], 512 * MIB, "core_dump", dest=dest, fail_when_short=False)
    assert not res["fits"] and res["msg"] == msg


def test_lun_of_a_given_size(tmp_path):
    img = sparse(tmp_path / "vda.raw", 64 * MIB, [(0, MIB)])
    res = space.evaluate([img], lun={"size_bytes": str(GIB)})
    assert res["lun_bytes"] == GIB and res["lun_usable_bytes"] == space.lun_usable_bytes(GIB) and res["fits"]
    with pytest.raises(DestinationError, match=r"A LUN of 67108864 bytes \(64.0 MiB\) offers about 0 bytes"):
        space.evaluate([img], lun={"size_bytes": 64 * MIB})
    assert "lun_bytes" not in space.evaluate([img], lun="false")
    assert space.evaluate([img], lun="yes")["lun_bytes"] == 256 * MIB
    for bad, message in (({"size": 1}, "knows only size_bytes"), ({"size_bytes": "20G"}, "not a number"),
                         ({"size_bytes": 0}, "not a positive"), ([1], "true, false or a dictionary")):
        with pytest.raises(InvalidInputError, match=message):
            space.evaluate([img], lun=bad)


def test_no_dest_no_lun_always_fits(tmp_path):
    res = space.evaluate([], 4 * GIB, "pmemsave")
    assert res["fits"] and res["bytes_needed"] == 4 * GIB + 64 * MIB and res["images"] == []
    assert "bytes_free" not in res and "lun_bytes" not in res
