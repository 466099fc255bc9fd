#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: take_snapshot
short_description: Freeze every disk of a KVM virtual machine at one point in time
version_added: 0.1.0
description:
  - Freezes all disks of a running libvirt/QEMU domain at once with an atomic, disk-only, external
    snapshot without libvirt metadata. QEMU writes the guest's changes into a new qcow2 overlay per
    disk and reopens the original images read-only, so the originals (with their whole backing
    chain, in their own format) stay unchanged, bit for bit, while they are copied.
  - Returns the frozen images to acquire. CD-ROMs and floppies are skipped and listed; read-only
    disks are taken as they are (QEMU cannot write them).
  - Every change is written to the case's undo journal on the host before it is made.
    M(dfir.vmcollect.teardown) merges the overlays back (C(blockcommit --active) and pivot) and
    removes them, also after a crash or a killed playbook, and also if the VM stopped meanwhile.
  - A shut-off VM is not changed at all; its disk files are returned as they are.
  - Idempotent per case. A VM already frozen for the case is reported with C(changed=false).
  - Never downgrades silently. A shareable, transient or network disk, a failed quiesce, or an
    overlay path that exists already is an error.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
requirements:
  - libvirt-python (python3-libvirt on Debian and Ubuntu) on the KVM host
  - qemu-img on the KVM host (for teardown of a VM that stopped)
options:
  overlay_dir:
    description:
      - Folder for the overlays that take the guest's writes during the acquisition.
      - Default is the folder of each disk image. QEMU must be able to write there.
    type: path
  quiesce:
    description:
      - Ask the guest agent to flush and freeze the guest's filesystems for the snapshot.
      - Fails if the guest agent does not answer; without it the frozen disks are crash-consistent.
    type: bool
    default: false
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.kvm_vm
  - dfir.vmcollect.journal
attributes:
  check_mode:
    support: full
    details: Reports which disks would be frozen, with their overlays, and changes nothing.
  diff_mode:
    support: none
notes:
  - When the overlays are merged back by teardown, the guest's own writes made during the acquisition
    land in the original images, where they would have landed without the acquisition.
seealso:
  - module: dfir.vmcollect.teardown
  - module: dfir.vmcollect.evidence_copy
"""

EXAMPLES = r"""
- name: Freeze the disks of the suspect VM
  dfir.vmcollect.take_snapshot:
    name: "Windows XP"
    case_id: case-42
  register: frozen

- name: Copy each frozen image
  dfir.vmcollect.evidence_copy:
    src: "{{ item.path }}"
    dest: "/evidence/case-42/{{ item.path | basename }}"
  loop: "{{ frozen.frozen | map(attribute='chain') | flatten }}"

- name: Put the VM back as it was
  dfir.vmcollect.teardown:
    case_id: case-42
"""

RETURN = r"""
vm:
  description: The domain.
  returned: always
  type: dict
  contains:
    name:
      description: Domain name.
      type: str
    uuid:
      description: Domain UUID.
      type: str
    running:
      description: Whether the domain was running.
      type: bool
frozen:
  description: One entry per acquired disk.
  returned: always
  type: list
  elements: dict
  contains:
    target:
      description: Guest device name (V(vda)).
      type: str
    path:
      description: The frozen image (the disk's top image before the overlay).
      type: str
    format:
      description: Its format.
      type: str
    chain:
      description: The frozen image and every backing file below it, top first, each with path and format.
      type: list
      elements: dict
    overlay:
      description: The overlay taking the guest's writes, or V(null).
      type: str
skipped_disks:
  description:
    - Disks not acquired (CD-ROMs, floppies), each with target, device, path and reason.
    - Named so because Ansible reads a true C(skipped) in a task result as "the task was skipped".
  returned: always
  type: list
  elements: dict
snapshot_time:
  description: UTC time the disks were frozen (V(null) in check mode).
  returned: always
  type: str
method:
  description: How the disks were frozen.
  returned: always
  type: str
note:
  description: Consistency of the frozen disks, or what to watch.
  returned: when available
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import KVM_VM_RULES, journal_spec, kvm_vm_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.running import at_work

from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import snapshot as _kvm_snapshot
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm.libvirt import HAS_LIBVIRT, LIBVIRT_IMPORT_ERROR


def main():
    module = AnsibleModule(
        argument_spec=dict(
            overlay_dir=dict(type="path"),
            quiesce=dict(type="bool", default=False),
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
        with at_work(None if module.check_mode else journal, "take_snapshot",
                     "freeze the disks of VM %s" % (p["name"] or p["uuid"])):
            result = _kvm_snapshot.freeze(journal, p["uri"], name=p["name"], uuid=p["uuid"],
                                          overlay_dir=p["overlay_dir"], quiesce=p["quiesce"],
                                          check_mode=module.check_mode, qemu_img=module.get_bin_path("qemu-img"))
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
