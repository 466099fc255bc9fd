#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: evidence_plan
short_description: Measure what an acquisition needs at its destination, before anything changes
version_added: 0.2.0
description:
  - Measures the disk images given (allocated bytes, following links, each real file counted once), adds
    the RAM by the method that will take it, and compares the total with the free space of the destination
    and/or the LUN that will carry it. It refuses a plan that does not fit, before any VM is frozen or any
    host is changed.
  - "It applies the same rule as the modules that write: an image needs its allocated bytes plus a margin of
    64 MiB or 1% of them, whichever is larger (what M(dfir.vmcollect.evidence_copy) checks before a copy);
    RAM needs its size once plus the same margin (twice with V(background_snapshot), whose migration
    stream and image lie side by side at its peak; what M(dfir.vmcollect.pmemsave) checks). A plan that
    fits is therefore never refused later by one of its steps."
  - The free space of a destination that does not exist yet is that of its nearest existing folder.
  - Only reads. The module always reports C(changed=false) and runs in full in check mode.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  images:
    description:
      - Absolute paths of the disk images to measure, as this host sees them (regular files or block devices).
        Give whole backing chains; a file listed twice (a backing file shared by two disks, or a link to a file
        listed already) is counted once.
    type: list
    elements: path
    default: []
  remote_images:
    description:
      - Disk images that lie on another system (an ESXi datastore), measured there by the provider that describes
        the VM. Each is counted like an image of O(images) with its C(allocated_bytes); a path listed twice once.
    type: list
    elements: dict
    default: []
    version_added: 0.3.0
    suboptions:
      path:
        description: Where the image lies, in that system's words (for example C([datastore1] vm/vm-flat.vmdk)).
        type: str
        required: true
      size_bytes:
        description: Its size.
        type: int
        required: true
      allocated_bytes:
        description: Bytes of it that hold data (a thin disk's allocated size); its size when not given.
        type: int
  memory_bytes:
    description: RAM of the VM(s) whose memory is taken, in bytes. Ignored with O(memory_method=none).
    type: int
    default: 0
  memory_method:
    description:
      - How the RAM will be taken (see M(dfir.vmcollect.pmemsave)); decides how many RAM-sized files lie on the
        destination at the peak (two for V(background_snapshot), none for V(none)).
      - V(snapshot) is an ESXi memory snapshot, whose C(.vmem) is copied once.
    type: str
    choices: [none, pmemsave, pmemsave_paused, core_dump, background_snapshot, snapshot]
    default: none
  dest:
    description:
      - Absolute path of the folder that will receive the evidence. It may not exist yet; then the free space of
        its nearest existing folder is measured.
      - Without it, no free space is checked.
    type: path
  lun:
    description:
      - Also size the iSCSI LUN that will carry the evidence (ext4 made by M(dfir.vmcollect.iscsi_attach)).
      - V(true) sizes it from the plan (10% more plus 128 MiB, rounded down to MiB, at least 256 MiB), as
        RV(lun_bytes).
      - A dictionary with C(size_bytes) takes a LUN of that size instead, and the plan must fit into what it
        offers once it carries ext4 (RV(lun_usable_bytes)).
    type: raw
  reserve_bytes:
    description:
      - Bytes required free beyond the plan (the case manifest, rounding; the KVM role's C(kvm_acquire_space_margin)).
    type: int
    default: 0
  e01:
    description:
      - The disks are also written as E01 images at the destination (M(dfir.vmcollect.evidence_image) with
        C(e01=true)). Their allocated data is counted once more, with its margin - an E01 stores each chunk of the
        guest's bytes at most as it is and compresses the zeros.
    type: bool
    default: false
    version_added: 0.3.0
  fail_when_short:
    description:
      - Fail when the plan does not fit the destination or the LUN. With V(false), report RV(fits=false) and
        RV(msg) instead.
    type: bool
    default: true
extends_documentation_fragment:
  - dfir.vmcollect.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - "A LUN of C(n) bytes is counted as offering C(n - n/32 - 128 MiB) once it carries ext4 (inode tables, journal
    and the kernel's reserve; measured with e2fsprogs 1.47 from 256 MiB to 8 TiB)."
  - The plan does not hold the space. Another writer on the same filesystem may still take it before the
    acquisition does; each step checks again before it writes.
seealso:
  - module: dfir.vmcollect.evidence_copy
  - module: dfir.vmcollect.pmemsave
  - module: dfir.vmcollect.vm_info
"""

EXAMPLES = r"""
- name: Refuse before any change when the case folder cannot hold the VM
  dfir.vmcollect.evidence_plan:
    images: "{{ info.vm.disks | map(attribute='path') | list
                + (info.vm.disks | map(attribute='backing_chain') | flatten | map(attribute='path') | list) }}"
    memory_bytes: "{{ info.vm.memory_bytes }}"
    memory_method: background_snapshot
    dest: /srv/evidence/case-42/vm1

- name: Size the collector's LUN from the plan (no folder to check on this host)
  dfir.vmcollect.evidence_plan:
    images: "{{ all_images }}"
    memory_bytes: "{{ total_ram }}"
    memory_method: core_dump
    lun: true
  register: sized

- name: Check a LUN of a given size without failing
  dfir.vmcollect.evidence_plan:
    images: "{{ all_images }}"
    lun:
      size_bytes: "{{ '20G' | human_to_bytes }}"
    fail_when_short: false
  register: fixed
"""

RETURN = r"""
bytes_needed:
  description: Free bytes the plan needs (every image's need plus the RAM's).
  returned: always
  type: int
  sample: 2285895680
bytes_free:
  description: Bytes free at O(dest) (C(f_bavail * f_frsize) of RV(measured_at)).
  returned: when O(dest) is given
  type: int
  sample: 84729028608
dest:
  description: The destination, normalised.
  returned: when O(dest) is given
  type: str
measured_at:
  description: The folder whose filesystem was measured (O(dest), or its nearest existing parent).
  returned: when O(dest) is given
  type: str
fits:
  description:
    - Whether the plan fits O(dest) and the LUN. V(true) when neither is given.
  returned: always
  type: bool
images:
  description: One entry per image, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The image's path, normalised.
      type: str
    real_path:
      description: The file it names, links followed.
      type: str
    size_bytes:
      description: Its size (apparent size of a file, size of a block device).
      type: int
    allocated_bytes:
      description: Bytes it occupies (C(st_blocks * 512)); a block device's size.
      type: int
    margin_bytes:
      description: The margin kept beyond it (0 when RV(images[].same_as) is set).
      type: int
    bytes_needed:
      description: Allocated bytes plus margin (0 when RV(images[].same_as) is set).
      type: int
    same_as:
      description: The path listed earlier that is the same file (it is counted there), or V(null).
      type: str
memory:
  description: The RAM's share of the plan.
  returned: always
  type: dict
  contains:
    bytes:
      description: O(memory_bytes).
      type: int
    method:
      description: O(memory_method).
      type: str
    copies:
      description: RAM-sized files on the destination at the method's peak.
      type: int
    margin_bytes:
      description: The margin kept beyond them.
      type: int
    bytes_needed:
      description: C(copies * bytes + margin_bytes), 0 without memory.
      type: int
reserve_bytes:
  description: O(reserve_bytes), included in RV(bytes_needed).
  returned: always
  type: int
e01_bytes:
  description: Bytes counted for the E01s with O(e01=true) (0 without), included in RV(bytes_needed).
  returned: always
  type: int
  version_added: 0.3.0
lun_bytes:
  description: Size of the LUN, from the plan or the C(size_bytes) given in O(lun).
  returned: when O(lun) is set
  type: int
lun_usable_bytes:
  description: Bytes the plan may count on in that LUN once it carries ext4.
  returned: when O(lun) is set
  type: int
msg:
  description: The plan in one sentence, or why it does not fit (ending with "Nothing was changed.").
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.space import MEMORY_METHODS, evaluate


def main():
    module = AnsibleModule(
        argument_spec=dict(
            images=dict(type="list", elements="path", default=[]),
            remote_images=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="str", required=True),
                size_bytes=dict(type="int", required=True),
                allocated_bytes=dict(type="int"),
            )),
            memory_bytes=dict(type="int", default=0),
            memory_method=dict(type="str", choices=list(MEMORY_METHODS), default="none"),
            dest=dict(type="path"),
            lun=dict(type="raw"),
            fail_when_short=dict(type="bool", default=True),
            reserve_bytes=dict(type="int", default=0),
            e01=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = evaluate(p["images"], p["memory_bytes"], p["memory_method"], dest=p["dest"], lun=p["lun"],
                          fail_when_short=p["fail_when_short"], reserve_bytes=p["reserve_bytes"],
                          remote_images=p["remote_images"], e01=p["e01"])
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
