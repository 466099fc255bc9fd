# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""loop_mount on an ESXi datastore's LUN: the one GPT partition is read, and a VMFS volume is recognised by its headers.

The ext4-in-GPT path runs for real in the ESXi iSCSI acquisition against the lab (the lab's datastore is a
VMFS-typed GPT partition formatted ext4), and the VMFS path on ESXi-made VMFS 5 and 6 volumes in
tests/integration/test_vmfs_reader.py; here the GPT reading, the VMFS detection (the LVM header's magic and version at
1 MiB, the filesystem descriptor 2 MiB into the volume), the choice of reader and the refusals, on files made by hand.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct
import uuid

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import loop_mount as lm
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import IscsiAttachError
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal

LINUX = "0fc63daf-8483-4772-8e79-3d69d8477de4"


def _image(path, parts, sectors=4096):
    """A GPT image (primary header and entries only, which is all gpt_partition reads)."""
    data = bytearray(sectors * 512)
    header = bytearray(92)
    header[:8] = b"EFI PART"
    struct.pack_into("<QII", header, 72, 2, 128, 128)
    data[512:512 + 92] = header
    for i, (guid, first, last) in enumerate(parts):
        entry = bytearray(128)
        entry[:16] = uuid.UUID(guid).bytes_le
        entry[16:32] = uuid.uuid4().bytes_le
        struct.pack_into("<QQ", entry, 32, first, last)
        data[1024 + i * 128:1024 + (i + 1) * 128] = entry
    path.write_bytes(bytes(data))
    return str(path)


def test_the_one_partition_is_read_at_its_offset(tmp_path):
    img = _image(tmp_path / "esx1.img", [(lm.GPT_VMFS, 2048, 4095)])
    assert lm.gpt_partition(img) == {"index": 1, "offset": 2048 * 512, "size": 2048 * 512, "type_guid": lm.GPT_VMFS}


def test_an_image_without_gpt_is_read_whole(tmp_path):
    img = tmp_path / "kvm1.img"
    img.write_bytes(b"\0" * 8192)
    assert lm.gpt_partition(str(img)) is None


def test_several_partitions_are_refused(tmp_path):
    img = _image(tmp_path / "two.img", [(LINUX, 34, 1000), (LINUX, 1001, 2000)])
    with pytest.raises(IscsiAttachError, match="2 partitions"):
        lm.gpt_partition(img)


MIB = 1 << 20
VMFS_PART = {"index": 1, "offset": 2048 * 512, "size": 64 * MIB, "type_guid": lm.GPT_VMFS}
# what ESXi writes (the test volumes of dissect.vmfs): LVM major version, descriptor major and minor version
VMFS5 = (5, 14, 81)
VMFS6 = (6, 24, 82)


def _vmfs(path, versions, offset=0, data_offset=0x1100000, fs_magic=lm.FS_MAGIC, label=b"evidence", descriptor=True):
    """A sparse file holding, at ``offset``, a VMFS LVM device header and (``descriptor``) its filesystem descriptor."""
    lvm, major, minor = versions
    with open(str(path), "wb") as f:
        f.truncate(offset + data_offset + 4 * MIB)
        f.seek(offset + lm.LVM_HEADER_OFFSET)
        f.write(struct.pack("<III", lm.LVM_MAGIC, lvm, 0))
        f.seek(offset + lm.LVM_HEADER_OFFSET + lm.LVM_DATA_OFFSET_AT)
        f.write(struct.pack("<Q", data_offset))
        if descriptor:
            f.seek(offset + data_offset + lm.FS_DESCRIPTOR_OFFSET)
            f.write(struct.pack("<IIB", fs_magic, major, minor) + b"\0" * 20 + label)
    return str(path)


def test_vmfs5_and_vmfs6_are_told_apart_by_their_headers(tmp_path):
    assert lm.vmfs_volume(_vmfs(tmp_path / "v5", VMFS5)) == {
        "version": 5, "fs_major": 14, "fs_minor": 81, "label": "evidence", "local": False, "descriptor": True}
    v6 = lm.vmfs_volume(_vmfs(tmp_path / "v6", VMFS6, label=b"dfir-case-42"))
    assert (v6["version"], v6["fs_major"], v6["fs_minor"], v6["label"]) == (6, 24, 82, "dfir-case-42")


def test_the_volume_is_read_at_the_partition_offset(tmp_path):
    img = _vmfs(tmp_path / "lun.img", VMFS6, offset=VMFS_PART["offset"])
    assert lm.vmfs_volume(img, VMFS_PART["offset"])["version"] == 6
    assert lm.vmfs_volume(img) is None  # the magic is at 1 MiB of the partition, not of the disk


def test_not_vmfs(tmp_path):
    zeros = tmp_path / "zeros.img"
    zeros.write_bytes(b"\0" * (3 * MIB))
    assert lm.vmfs_volume(str(zeros)) is None
    short = tmp_path / "short.img"
    short.write_bytes(b"\0" * 4096)
    assert lm.vmfs_volume(str(short)) is None
    wrong = tmp_path / "wrong.img"  # the magic one byte off
    wrong.write_bytes(b"\0" * (lm.LVM_HEADER_OFFSET + 1) + struct.pack("<I", lm.LVM_MAGIC) + b"\0" * 200)
    assert lm.vmfs_volume(str(wrong)) is None


def test_an_lvm_header_without_its_descriptor_and_vmfs_l(tmp_path):
    bare = lm.vmfs_volume(_vmfs(tmp_path / "ext", VMFS6, descriptor=False))
    assert bare["version"] == 6 and not bare["descriptor"] and bare["label"] is None
    assert lm.vmfs_volume(_vmfs(tmp_path / "l", VMFS6, fs_magic=lm.FS_MAGIC_LOCAL))["local"]


@pytest.fixture
def readers(monkeypatch):
    """vmfs6-fuse and vmfs-fuse "installed" under /usr/sbin."""
    installed = {"vmfs6-fuse": "/usr/sbin/vmfs6-fuse", "vmfs-fuse": "/usr/sbin/vmfs-fuse"}
    monkeypatch.setattr(lm, "find_bin", installed.get)
    return installed


@pytest.mark.parametrize("versions, program, package", [(VMFS6, "vmfs6-fuse", "vmfs6-tools"),
                                                        (VMFS5, "vmfs-fuse", "vmfs-tools")])
def test_each_version_gets_its_reader(tmp_path, readers, versions, program, package):
    reader = lm.vmfs_reader(lm.vmfs_volume(_vmfs(tmp_path / "v", versions)), "/c/esx1.img")
    assert (reader["program"], reader["path"], reader["package"]) == (program, readers[program], package)


def test_a_missing_reader_is_named_with_its_package(tmp_path, readers):
    del readers["vmfs6-fuse"]
    with pytest.raises(IscsiAttachError) as exc:
        lm.vmfs_reader(lm.vmfs_volume(_vmfs(tmp_path / "v", VMFS6)), "the partition 1 of /c/esx1.img")
    assert "needs vmfs6-fuse (Debian/Ubuntu package vmfs6-tools)" in str(exc.value)
    assert "NOT verified" in str(exc.value) and exc.value.details["package"] == "vmfs6-tools"


@pytest.mark.parametrize("kw, says", [
    (dict(versions=(4, 14, 81)), "LVM version 4"),
    (dict(versions=(3, 3, 31)), "LVM version 3; this collection reads VMFS 5 \\(vmfs-fuse\\) and VMFS 6"),
    (dict(versions=VMFS6, descriptor=False), "no VMFS filesystem descriptor"),
    (dict(versions=VMFS6, fs_magic=lm.FS_MAGIC_LOCAL), "VMFS-L"),
    (dict(versions=(6, 14, 81)), "do not belong together"),
    (dict(versions=(5, 24, 82)), "do not belong together"),
])
def test_volumes_no_reader_reads_are_refused(tmp_path, readers, kw, says):
    volume = lm.vmfs_volume(_vmfs(tmp_path / "v", **kw))
    with pytest.raises(IscsiAttachError, match=says) as exc:
        lm.vmfs_reader(volume, "/c/esx1.img")
    assert "NOT verified" in str(exc.value)


def test_what_mounts_what(tmp_path, readers):
    volume = lm.vmfs_volume(_vmfs(tmp_path / "v", VMFS6))
    assert lm.check_readable("/c/esx1.img", VMFS_PART, "VMFS_volume_member", volume) == "vmfs"
    assert lm.check_readable("/c/esx1.img", None, "VMFS_volume_member", volume) == "vmfs"  # a bare VMFS device
    # the lab's datastore: ext4 in a VMFS-typed partition is mounted by the kernel
    assert lm.check_readable("/c/esx1.img", VMFS_PART, "ext4", None) == "kernel"
    assert lm.check_readable("/c/kvm1.img", None, "xfs", None) == "kernel"


@pytest.mark.parametrize("part, fs", [(VMFS_PART, "VMFS_volume_member"), (VMFS_PART, None), (None, "VMFS")])
def test_vmfs_marks_without_a_volume_are_refused(part, fs):
    with pytest.raises(IscsiAttachError) as exc:
        lm.check_readable("/c/esx1.img", part, fs, None)
    assert "holds no VMFS volume header" in str(exc.value) and "NOT verified" in str(exc.value)


def test_other_filesystems_are_refused():
    with pytest.raises(IscsiAttachError, match="no ext3, ext4, xfs or VMFS"):
        lm.check_readable("/c/esx1.img", {"index": 1, "offset": 0, "size": 1, "type_guid": LINUX}, "ntfs")


def _esx_lun(tmp_path, versions=VMFS6):
    img = tmp_path / "esx1.img"
    _vmfs(img, versions, offset=VMFS_PART["offset"])
    with open(str(img), "r+b") as f:  # the GPT of _image, over the VMFS partition
        _image(tmp_path / "gpt", [(lm.GPT_VMFS, 2048, 2048 + VMFS_PART["size"] // 512 - 1)], sectors=34)
        f.write((tmp_path / "gpt").read_bytes())
    return str(img)


def test_check_mode_names_the_reader(tmp_path, readers):
    journal = Journal("case-42", str(tmp_path / "journal"))
    res = lm.mount_readonly(journal, "case-42", _esx_lun(tmp_path), str(tmp_path / "mnt"), check_mode=True)
    assert res["changed"] and res["partition"]["offset"] == VMFS_PART["offset"]
    assert res["plan"][1] == ("mount its VMFS 6 volume 'evidence' read-only with vmfs6-fuse (a FUSE daemon on the "
                              "read-only loop device) on %s" % (tmp_path / "mnt"))
    assert not journal.exists() and not (tmp_path / "mnt").exists()


def test_a_missing_reader_refuses_before_any_change(tmp_path, readers):
    del readers["vmfs-fuse"]
    journal = Journal("case-42", str(tmp_path / "journal"))
    with pytest.raises(IscsiAttachError, match="vmfs-tools"):
        lm.mount_readonly(journal, "case-42", _esx_lun(tmp_path, VMFS5), str(tmp_path / "mnt"))
    assert not journal.exists() and not (tmp_path / "mnt").exists()


class _Journal(object):
    """Hands out records and notes the order replay gets them in."""

    def __init__(self, records):
        self.records, self.replayed = records, []

    def pending(self):
        return list(self.records)

    def replay(self, records, ctx):
        self.replayed.append([r["action"] for r in records])
        return []


def test_unmount_undoes_the_mount_before_the_fuse_daemon(tmp_path):
    """umount first (never lazy: a mount in use is reported), then the daemon - which ended with its mount."""
    att = lm.attachment_id("case-42", "/v/mnt")
    records = [{"seq": n, "action": a, "undo": dict(u, attachment=att)} for n, a, u in [
        (4, lm.RUNNING, {"pid": 2 ** 22 + 1, "start_ticks": 1, "module": "vmfs6-fuse"}),  # no such process
        (3, lm.ACTION_MOUNT, {"mountpoint": "/v/mnt"}), (2, lm.ACTION_LOOP, {}), (1, "iscsi.dir_created", {})]]
    journal = _Journal(records + [{"seq": 9, "action": lm.ACTION_LOOP, "undo": {"attachment": "another"}}])
    lm.unmount(journal, "case-42", "/c/esx1.img", "/v/mnt")
    assert journal.replayed == [[lm.ACTION_MOUNT], [lm.RUNNING, lm.ACTION_LOOP, "iscsi.dir_created"]]
