# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""loop_mount on an ESXi datastore's LUN: the one GPT partition is read, and a VMFS volume is refused by name.

The ext4-in-GPT path runs for real in the ESXi iSCSI acquisition against the lab (the lab's datastore is a
VMFS-typed GPT partition formatted ext4); here the GPT reading and the refusal, on files made by hand.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import struct
import uuid

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import loop_mount as lm
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import IscsiAttachError

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


@pytest.mark.parametrize("fs", ["VMFS", "VMFS_volume_member", None])
def test_vmfs_is_refused_naming_the_reader_it_needs(fs):
    part = {"index": 1, "offset": 1048576, "size": 1 << 30, "type_guid": lm.GPT_VMFS}
    with pytest.raises(IscsiAttachError) as exc:
        lm.check_readable("/c/esx1.img", part, fs)
    assert "vmfs6-fuse" in str(exc.value) and "NOT verified" in str(exc.value)


def test_vmfs_signature_is_refused_without_a_partition_table():
    with pytest.raises(IscsiAttachError, match="vmfs6-fuse"):
        lm.check_readable("/c/esx1.img", None, "VMFS")


def test_ext4_in_a_vmfs_typed_partition_is_read():
    part = {"index": 1, "offset": 1048576, "size": 1 << 30, "type_guid": lm.GPT_VMFS}
    lm.check_readable("/c/esx1.img", part, "ext4")
    with pytest.raises(IscsiAttachError, match="no ext3, ext4 or xfs"):
        lm.check_readable("/c/esx1.img", {"index": 1, "offset": 0, "size": 1, "type_guid": LINUX}, "ntfs")
