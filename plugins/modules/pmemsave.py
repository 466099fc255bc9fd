#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: pmemsave
short_description: Acquire the RAM of a running KVM virtual machine into an image file
version_added: 0.1.0
description:
  - Writes the guest RAM of a running libvirt/QEMU domain into O(dest) by the O(method) asked
    for, hashes the image in one read and returns its digests, the time the guest was paused and
    every change made to the host.
  - A method that cannot be used is an error; the module never falls back to another method.
  - The image is written to C(<dest>.partial), fsynced, made the module user's with mode 0640,
    hashed, and only then renamed to O(dest).
  - The free space of the destination folder is checked first (the RAM size plus a margin), and
    every change to the host is written to the case's undo journal before it is made.
    M(dfir.vmcollect.teardown) undoes what a crash or a killed playbook left (a paused guest,
    the userfaultfd sysctl, the migration capability, a partial image).
  - The guest pause is measured from libvirt lifecycle events (SUSPENDED to RESUMED), received
    by an event loop registered before the acquisition starts.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
requirements:
  - libvirt-python (python3-libvirt on Debian and Ubuntu) on the KVM host, with libvirt_qemu
  - libvirt 8.2 or later for O(method=background_snapshot) (a file descriptor passed to QEMU's monitor)
  - QEMU 6.0 or later for O(method=background_snapshot); the raw image is extracted from a QEMU 7.2 migration stream
options:
  dest:
    description:
      - Absolute path of the memory image to write on the KVM host. Its folder must exist.
      - An existing file there is refused unless O(force=true).
      - For O(method=pmemsave) and O(method=pmemsave_paused) QEMU writes the file itself, as the user
        libvirt runs it as. The module creates C(<dest>.partial) empty, owned by that user with mode
        0600, so QEMU needs no write access to the folder, only to enter the folders above it; then
        the module takes the file back (owner root, mode 0640).
    type: path
    required: true
  method:
    description:
      - V(pmemsave) copies guest-physical memory with QMP C(pmemsave) while the guest runs; the image
        is smeared over the copy's duration (pages are from different instants).
      - V(pmemsave_paused) pauses the guest, copies with C(pmemsave) and resumes it, also when the copy
        fails; a guest that was already paused is left paused.
      - V(core_dump) asks libvirt for a memory-only core dump, an ELF core file with the guest's
        physical memory map. libvirt and QEMU pause the guest for the whole dump.
      - V(background_snapshot) uses QEMU's background-snapshot migration capability
        (userfaultfd write protection) into a file (C(<dest>.stream.partial)) and extracts every
        guest RAM block from the stream into a sparse raw image, each at its guest-physical
        ranges, zero pages as holes; the stream file is then removed. The image is of one
        instant; the guest pauses for milliseconds (see the notes). Refused for a paused guest
        (QEMU 7.2 would resume it).
      - V(pmemsave) and V(pmemsave_paused) read QEMU's memory map first (as the background snapshot does) and copy
        the low RAM from 0 in one C(pmemsave), then each range above the PCI hole in one C(pmemsave) of its own into
        C(<dest>.range-<address>.partial), which the module copies to its guest-physical address in the image (its
        all-zero pieces left as holes) and removes. That file needs room next to the image; it is checked before any
        change.
    type: str
    required: true
    choices: [pmemsave, pmemsave_paused, core_dump, background_snapshot]
  algorithms:
    description: Hash algorithms computed in one read of the image.
    type: list
    elements: str
    choices: [md5, sha1, sha256, sha512]
    default: [sha256]
  format:
    description:
      - Format of the image for O(method=background_snapshot), O(method=pmemsave) and O(method=pmemsave_paused). Both
        are placed by QEMU's own memory map (C(info mtree -f) and C(info ramblock), read through the monitor before the
        copy), so every offset is a guest-physical address, whatever the machine type, the RAM size or the number of
        RAM blocks (NUMA nodes, memory backends).
      - V(raw) - a sparse image whose offset N is guest-physical address N; between the RAM ranges (the PCI hole below
        4 GiB, the legacy VGA/ROM window) a hole of zeros that costs nothing.
      - V(elf) - an ELF core with one C(PT_LOAD) per guest-physical range (C(p_paddr)), what Volatility, crash and gdb
        read without guessing; written from the raw image extent by extent.
      - O(method=core_dump) always writes libvirt's ELF core, whatever this option says.
    type: str
    choices: [raw, elf]
    default: raw
  force:
    description: Replace an existing file at O(dest) (atomically, once the new image is complete).
    type: bool
    default: false
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.kvm_vm
  - dfir.vmcollect.journal
attributes:
  check_mode:
    support: full
    details: Checks the VM, the destination and its free space, and reports the plan (method, RAM size, host changes) without changing anything.
  diff_mode:
    support: none
notes:
  - O(method=pmemsave), O(method=pmemsave_paused) and O(method=background_snapshot) use libvirt's
    QEMU monitor passthrough, which marks the domain as tainted in libvirt's log; the result says so.
  - O(method=background_snapshot) needs C(vm.unprivileged_userfaultfd=1) when QEMU does not run as root
    (QEMU 7.2 does not use /dev/userfaultfd). The module sets it for the snapshot and puts it back
    right after; the change is journaled before it is made.
  - O(method=background_snapshot) places every RAM block at its guest-physical ranges (QEMU's memory map, read
    through the monitor before the snapshot; RV(layout)).
  - The background snapshot's pause is mostly the kernel write-protecting guest RAM while QEMU has the guest
    stopped, and it follows how the kernel maps that RAM - on the project's lab, 1 to 5 ms for 8 GiB on a first
    snapshot (untouched RAM mapped by 2 MiB entries), 40 to 72 ms on a later one (RAM mapped 4 KiB page by page,
    which the first snapshot leaves behind).
  - Guest RAM on hugepages or shared memory (memory-backend-file, -memfd) is write-protected only by a kernel whose
    userfaultfd offers C(UFFD_FEATURE_WP_HUGETLBFS_SHMEM) (Linux 5.19 and later). The module asks the kernel and
    refuses O(method=background_snapshot) before any change where it does not, naming O(method=core_dump) and
    O(method=pmemsave_paused). Where it does, QEMU decides; a refusal of QEMU's is reported with the same advice.
seealso:
  - module: dfir.vmcollect.take_snapshot
  - module: dfir.vmcollect.teardown
  - module: dfir.vmcollect.hash_verify
"""

EXAMPLES = r"""
- name: Take the RAM of the suspect VM with a pause of a few milliseconds
  dfir.vmcollect.pmemsave:
    name: web01
    case_id: case-42
    dest: /evidence/case-42/web01.mem.raw
    method: background_snapshot
    algorithms: [sha256, md5]
  register: ram

- name: Take it as an ELF core file through libvirt (the guest is paused while it is written)
  dfir.vmcollect.pmemsave:
    uuid: 6c616276-6d63-4000-8000-76696374696d
    case_id: case-42
    dest: /evidence/case-42/web01.mem.elf
    method: core_dump

- name: Put the host back as it was
  dfir.vmcollect.teardown:
    case_id: case-42
"""

RETURN = r"""
vm:
  description: The domain, with its state before the acquisition and its RAM size.
  returned: always
  type: dict
method:
  description: The method used.
  returned: always
  type: str
  sample: background_snapshot
dest:
  description: Path of the memory image.
  returned: always
  type: str
  sample: /evidence/case-42/web01.mem.raw
size:
  description: Size of the image in bytes (in check mode, the RAM size).
  returned: always
  type: int
  sample: 268435456
format:
  description: Format of the image, V(raw) or V(elf).
  returned: success and not check mode
  type: str
layout:
  description:
    - With O(method=background_snapshot), O(method=pmemsave) and O(method=pmemsave_paused), where the guest's RAM
      lies, from QEMU's memory map - C(ranges) (each C(gpa_start), C(gpa_end), C(size), C(block), C(block_offset)),
      C(blocks) (each RAM block's length),
      C(unplaced_bytes) (bytes of a block no guest-physical range shows, e.g. under the VGA window) and C(image_size).
  returned: success with a method other than core_dump
  type: dict
digests:
  description: Hex digest of the image by algorithm.
  returned: success and not check mode
  type: dict
  sample: {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
pause_ms:
  description:
    - Total time the guest was paused, from libvirt's SUSPENDED and RESUMED events (0 if none came).
    - For O(method=background_snapshot), QEMU's own measure of the pause (C(qemu_downtime_ms) in RV(stream)) when that is
      longer, since events delivered together measure next to nothing.
  returned: success and not check mode
  type: float
  sample: 4.1
pauses_ms:
  description: Each pause in milliseconds.
  returned: success and not check mode
  type: list
  elements: float
acquire_seconds:
  description: Seconds from the start of the acquisition until the image was written.
  returned: success and not check mode
  type: float
wall_seconds:
  description: Seconds from the start of the acquisition until the image was hashed and in place.
  returned: success and not check mode
  type: float
hash_seconds:
  description: Seconds spent hashing the image.
  returned: success and not check mode
  type: float
smeared:
  description: Whether the image mixes instants (true for a live pmemsave).
  returned: always
  type: bool
notes:
  description: What to know about the image and the host (consistency, the tainted domain).
  returned: success and not check mode
  type: list
  elements: str
host_changes:
  description: Changes made to the host (in check mode, those that would be made), each undone unless said otherwise.
  returned: always
  type: list
  elements: str
free_bytes:
  description: Free bytes in the destination folder before the acquisition.
  returned: always
  type: int
needed_bytes:
  description: Free bytes required (the RAM size plus a margin).
  returned: always
  type: int
stream:
  description:
    - For O(method=background_snapshot), what the migration stream held.
    - Includes pages per RAM block, data and zero pages, duplicates, out-of-order pages, stream bytes, and
      the pause QEMU measured itself (qemu_downtime_ms).
  returned: when method is background_snapshot and not check mode
  type: dict
started_at:
  description: UTC time the acquisition started (not C(started), which C(async) rewrites).
  returned: success and not check mode
  type: str
finished_at:
  description: UTC time the image was in place.
  returned: success and not check mode
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import KVM_VM_RULES, journal_spec, kvm_vm_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import SUPPORTED_ALGORITHMS
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.running import at_work

from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import memory as _kvm_memory
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm.libvirt import HAS_LIBVIRT, LIBVIRT_IMPORT_ERROR


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            method=dict(type="str", required=True, choices=["pmemsave", "pmemsave_paused", "core_dump",
                                                            "background_snapshot"]),
            algorithms=dict(type="list", elements="str", default=["sha256"], choices=list(SUPPORTED_ALGORITHMS)),
            format=dict(type="str", default="raw", choices=["raw", "elf"]),
            force=dict(type="bool", default=False),
            **dict(kvm_vm_spec(), **journal_spec())
        ),
        supports_check_mode=True,
        **KVM_VM_RULES
    )
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python (python3-libvirt)"), exception=LIBVIRT_IMPORT_ERROR)
    p = module.params
    try:
        journal = Journal(p["case_id"], p["journal_dir"])
        with at_work(None if module.check_mode else journal, "pmemsave",
                     "capture the RAM of VM %s into %s" % (p["name"] or p["uuid"], p["dest"])):
            result = _kvm_memory.acquire(journal, p["uri"], p["dest"], p["method"], name=p["name"], uuid=p["uuid"],
                                         algorithms=p["algorithms"], fmt=p["format"], force=p["force"],
                                         check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
