#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: loop_mount
short_description: Mount a disk image read-only (a read-only loop device) to verify the evidence on it
version_added: 0.2.0
description:
  - Attaches a disk image, such as the LUN backing file on the collector, to a loop device with
    C(losetup --read-only) and mounts its filesystem read-only without journal recovery (C(noload) for
    ext3/ext4, C(norecovery) for xfs). The kernel refuses every write to a read-only loop device, so not
    a byte of the image can change.
  - A VMFS volume (an ESXi host's datastore) is recognised by its own headers - the LVM device header at 1 MiB of the
    partition (magic C(0xC001D00D), whose major version is the VMFS version) and the filesystem descriptor 2 MiB into
    the volume (magic C(0x2FABF15E)) - and mounted read-only through FUSE on the read-only loop device, with
    C(vmfs6-fuse) (package vmfs6-tools) for VMFS 6 or C(vmfs-fuse) (package vmfs-tools) for VMFS 5, given
    C(-o ro,blkdev), which makes it a C(fuseblk) mount of the loop device. Both readers refuse to open VMFS 5 and 6
    read-write.
  - Every step is journaled, the FUSE daemon of a VMFS volume as a process at work; O(state=absent) or
    M(dfir.vmcollect.teardown) unmounts (teardown stops the FUSE daemon first, which unmounts as it ends), detaches
    the loop device and removes the folders it created.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
requirements:
  - vmfs6-tools (VMFS 6) or vmfs-tools (VMFS 5) on the host, for a VMFS volume only
  - the kernel's FUSE (C(/dev/fuse)), for a VMFS volume only
options:
  image:
    description:
      - Absolute path of the disk image - a regular file holding a filesystem, or a GPT with one partition that holds it
        (an ESXi host's datastore LUN); then the loop device covers that partition only.
      - A VMFS 6 volume needs C(vmfs6-fuse) on the host, a VMFS 5 volume C(vmfs-fuse); a missing reader is refused
        before anything changes, naming its package. Any other volume (VMFS-L, VMFS 3 or another version, a VMFS header
        without its filesystem descriptor, as on a further extent of a datastore spanning several LUNs) is refused and
        never mounted as something else.
      - The readers are not ESXi. Checked on ESXi-made volumes, vmfs6-fuse 0.2.1 read a block of a thin disk with
        pointer blocks (69 GiB, at 42 GiB) as zeros, and vmfs-fuse 0.2.5 a block of a 42 TiB disk at 117 GiB; a file
        read wrong does not match the digests taken at the source, so it is reported as a mismatch, never as verified.
    type: path
    required: true
  mountpoint:
    description: Absolute path of an empty or new folder to mount it on.
    type: path
    required: true
  state:
    description: C(mounted) mounts the image read-only; C(absent) unmounts it and detaches the loop device.
    type: str
    choices: [mounted, absent]
    default: mounted
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.journal
attributes:
  check_mode:
    support: full
    details: Reports what would be attached and mounted, or unmounted, and changes nothing.
  diff_mode:
    support: none
seealso:
  - module: dfir.vmcollect.setup_iscsi_target
  - module: dfir.vmcollect.hash_verify
"""

EXAMPLES = r"""
- name: Mount the LUN backing file read-only
  dfir.vmcollect.loop_mount:
    case_id: case-42
    image: /var/lib/dfir-vmcollect/collector/case-42/kvm1.img
    mountpoint: /var/lib/dfir-vmcollect/verify/case-42/kvm1

- name: Mount the datastore an ESXi host made on its LUN (one GPT partition, VMFS 6 - needs vmfs6-tools)
  dfir.vmcollect.loop_mount:
    case_id: case-43
    image: /var/lib/dfir-vmcollect/collector/case-43/esx1.img
    mountpoint: /var/lib/dfir-vmcollect/verify/case-43/esx1

- name: Unmount it
  dfir.vmcollect.loop_mount:
    case_id: case-42
    image: /var/lib/dfir-vmcollect/collector/case-42/kvm1.img
    mountpoint: /var/lib/dfir-vmcollect/verify/case-42/kvm1
    state: absent
"""

RETURN = r"""
image:
  description: The image.
  returned: always
  type: str
mountpoint:
  description: Where it is (or was) mounted.
  returned: always
  type: str
device:
  description: The read-only loop device.
  returned: state=mounted and not in check mode
  type: str
partition:
  description: The GPT partition read (C(index), C(offset), C(size) in bytes, C(type_guid)), or V(null) for an image without a GPT.
  returned: state=mounted
  type: dict
filesystem:
  description: The filesystem found on the image (C(ext4), C(xfs)..., or C(vmfs6), C(vmfs5) for a VMFS volume).
  returned: when it was mounted by this run
  type: str
vmfs:
  description:
    - The VMFS volume mounted - C(version) (the LVM header's major version, 5 or 6), C(fs_major) and C(fs_minor)
      (the filesystem descriptor's, 14.81 on VMFS 5, 24.82 on VMFS 6), C(label), C(reader) (the program),
      C(package), C(reader_pid) (its FUSE daemon), C(fstype) (as mounted, C(fuseblk.vmfs6) or C(fuseblk.vmfs)),
      C(messages) (what the reader printed, such as its warning that a loop device has no SCSI LUN id).
  returned: when a VMFS volume was mounted by this run
  type: dict
plan:
  description: What O(state=mounted) does (or would do, in check mode).
  returned: state=mounted
  type: list
  elements: str
undone:
  description: What O(state=absent) undid (or would undo, in check mode), newest first.
  returned: state=absent
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import loop_mount as _loop_mount


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path", required=True),
            mountpoint=dict(type="path", required=True),
            state=dict(type="str", choices=["mounted", "absent"], default="mounted"),
            **journal_spec()
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        journal = Journal(p["case_id"], p["journal_dir"])
        action = _loop_mount.mount_readonly if p["state"] == "mounted" else _loop_mount.unmount
        result = action(journal, journal.case_id, p["image"], p["mountpoint"], check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
