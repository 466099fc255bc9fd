#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: esxi_vm_info
short_description: Describe a VM on an ESXi host or vCenter before acquisition (state, disks, chains, snapshots)
version_added: 0.2.0
description:
  - Asks the vSphere API (ESXi host or vCenter), through the PropertyCollector, everything an acquisition needs to
    know about one VM, found by exact name or UUID, and returns it in the shape the acquisition pipeline reads from
    every provider (the same keys as M(dfir.vmcollect.vm_info) for KVM) plus vSphere's details.
  - Each disk's RV(vm.disks[].path) is the descriptor the VM writes to now (its current leaf);
    RV(vm.disks[].backing_chain) lists the levels below it, nearest first, base disk last, each with its descriptor
    and extent files and their sizes from the VM's file layout (C(layoutEx)).
  - Independent disks, raw device mappings, multi-writer disks and disks not backed by VMDK files are listed in
    RV(vm.skipped_disks) with the reason; never silently dropped.
  - Also returns the snapshot tree (flattened), the current snapshot, the snapshot capabilities, VMware Tools'
    state, Changed Block Tracking per disk, and who answered (host, product, build, API).
  - Only reads, so the module always reports C(changed=false) and runs in full in check mode.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.vsphere
  - dfir.vmcollect.vsphere.vm
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
seealso:
  - module: dfir.vmcollect.esxi_snapshot
  - module: dfir.vmcollect.vm_info
"""

EXAMPLES = r"""
- name: Describe the suspect VM on its ESXi host, its certificate pinned
  dfir.vmcollect.esxi_vm_info:
    hostname: esxi1.example.org
    username: dfir
    password: "{{ vault_esxi_password }}"
    thumbprint: "BE:70:B6:1F:AF:AB:36:D8:7B:F8:A4:6C:AB:C0:2F:77:DB:4B:9E:3F:46:97:AD:98:40:96:34:FF:63:96:F4:20"
    name: "Windows XP"
  delegate_to: localhost
  register: suspect

- name: Stop if a disk cannot be frozen by a snapshot
  ansible.builtin.assert:
    that: suspect.vm.skipped_disks | length == 0
    fail_msg: "{{ suspect.vm.skipped_disks | map(attribute='reason') | list }}"
"""

RETURN = r"""
vm:
  description: What the vSphere API says about the VM.
  returned: success
  type: dict
  contains:
    name:
      description: Name of the VM as the user sees it (vSphere's escapes of V(%), V(/) and V(\\) undone).
      type: str
      sample: Windows XP
    uuid:
      description: BIOS UUID of the VM (C(config.uuid)).
      type: str
      sample: 42131f37-0e7c-4f6a-9d6e-2d0d4d6a1e0b
    instance_uuid:
      description: vCenter's instance UUID of the VM (C(config.instanceUuid)).
      type: str
    moref:
      description: Managed object reference of the VM (V(vm-42)); unique on its ESXi host or vCenter only.
      type: str
      sample: vm-42
    vmx:
      description: Datastore path of the VM's configuration file.
      type: str
      sample: "[datastore1] Windows XP/Windows XP.vmx"
    snapshot_directory:
      description: Datastore path of the folder where snapshot files go.
      type: str
    state:
      description:
        - Power state in the KVM provider's words - V(running) (poweredOn), V(shut off) (poweredOff), V(paused)
          (suspended). V(running) means RAM can be captured.
      type: str
      sample: running
    power_state:
      description: vSphere's power state (V(poweredOn), V(poweredOff), V(suspended)).
      type: str
    connection_state:
      description: vSphere's connection state of the VM (V(connected), V(orphaned), V(inaccessible)...).
      type: str
    template:
      description: Whether the VM is a template.
      type: bool
    guest_id:
      description: Guest OS identifier configured for the VM.
      type: str
    guest_full_name:
      description: Guest OS name configured for the VM.
      type: str
    hardware_version:
      description: Virtual hardware version (V(vmx-19)).
      type: str
    memory_bytes:
      description: Memory of the VM in bytes.
      type: int
      sample: 4294967296
    vcpus:
      description: Number of vCPUs.
      type: int
    disks:
      description: The disks to acquire, in device order.
      type: list
      elements: dict
      contains:
        target:
          description: vSphere's device node, controller type, bus and unit (V(scsi0:0), V(sata0:1), V(nvme0:0), V(ide0:0)).
          type: str
          sample: scsi0:0
        key:
          description: Device key of the disk in the VM's configuration.
          type: int
        label:
          description: Device label (V(Hard disk 1)).
          type: str
        controller:
          description: Label of its controller.
          type: str
        path:
          description: Datastore path of the descriptor the VM writes to now (the current leaf of the chain).
          type: str
          sample: "[datastore1] Windows XP/Windows XP-000001.vmdk"
        format:
          description: Always V(vmdk).
          type: str
        datastore:
          description: Name of the datastore of RV(vm.disks[].path).
          type: str
        capacity_bytes:
          description: Size the guest sees, in bytes.
          type: int
        thin:
          description: Whether the disk is thin-provisioned.
          type: bool
        eager_zeroed:
          description: Whether a thick disk was eagerly zeroed.
          type: bool
        disk_mode:
          description: vSphere's disk mode (V(persistent), V(independent_persistent)...).
          type: str
        kind:
          description: What backs the disk (V(flat), V(sesparse), V(sparse), V(rdm_physical), V(rdm_virtual)...).
          type: str
        sharing:
          description: vSphere's sharing mode (V(sharingNone), V(sharingMultiWriter)), if set.
          type: str
        delta_format:
          description: Format of the leaf when it is a snapshot's delta (V(seSparseFormat), V(redoLogFormat)), else V(null).
          type: str
        disk_uuid:
          description: The virtual disk's UUID, if set.
          type: str
        descriptor_size:
          description: Bytes of the leaf's descriptor file (from C(layoutEx)); V(null) if unknown.
          type: int
        extents:
          description: The leaf's data files (C(-flat.vmdk), C(-delta.vmdk), C(-sesparse.vmdk)), each with path and size.
          type: list
          elements: dict
        size:
          description: Bytes of the leaf (descriptor and extents); V(null) if unknown.
          type: int
        layout_known:
          description: Whether every level's files were found in the VM's file layout.
          type: bool
        backing_chain:
          description:
            - The levels below RV(vm.disks[].path), nearest first, the base disk last (the KVM provider's order).
              Empty for a disk without snapshots.
            - Each level has C(path) (descriptor), C(format) (V(vmdk)), C(datastore), C(descriptor_size),
              C(extents) (each with C(path) and C(size)), C(size) and C(layout_known).
          type: list
          elements: dict
        cbt:
          description: Changed Block Tracking - C(enabled) (the VM's setting) and C(change_id) (the disk's).
          type: dict
    remote_images:
      description:
        - Every file a copy of RV(vm.disks) reads (each level's descriptor and data files), with C(path),
          C(size_bytes) and C(allocated_bytes) (what it occupies on the datastore, from the VM's file layout; a file of
          unknown size counts the disk's capacity). M(dfir.vmcollect.evidence_plan) takes them as O(dfir.vmcollect.evidence_plan#module:remote_images).
      type: list
      elements: dict
    skipped_disks:
      description:
        - Disks that cannot be frozen by a snapshot and acquired from datastore files, with the same keys as
          RV(vm.disks) plus C(skipped=true) and C(reason); RDMs add C(lun).
      type: list
      elements: dict
    snapshots:
      description:
        - The VM's snapshot tree, depth first (parents before children). Each has C(name), C(description), C(id),
          C(moref), C(created) (UTC), C(state) (power state it captured), C(quiesced), C(memory) (it has a memory
          file), C(vmsn) and C(vmem) (C(path) and C(size), or V(null)), C(parent) (moref), C(depth), C(current).
      type: list
      elements: dict
    current_snapshot:
      description: The snapshot the VM runs from (C(moref), C(name), C(id)), or V(null).
      type: dict
    consolidation_needed:
      description: Whether vSphere says the VM's disks need consolidation.
      type: bool
    cbt_enabled:
      description: Whether Changed Block Tracking is on for the VM.
      type: bool
    capabilities:
      description:
        - The snapshot capabilities - C(memory_snapshots_supported), C(quiesced_snapshots_supported),
          C(snapshot_operations_supported), C(disk_only_snapshot_on_suspended_vm_supported).
      type: dict
    guest_tools:
      description: VMware Tools in the guest - C(running_status), C(version_status), C(version).
      type: dict
    datastores:
      description: Names of the datastores that hold the VM's files.
      type: list
      elements: str
    host:
      description: Who answered, for the custody record.
      type: dict
      contains:
        name:
          description: Name of the ESXi host that runs the VM.
          type: str
        moref:
          description: Its managed object reference.
          type: str
        product:
          description: Its product name, version and build.
          type: str
          sample: VMware ESXi 8.0.2 build-22380479
        version:
          description: Its version.
          type: str
        build:
          description: Its build.
          type: str
        endpoint:
          description: The ESXi host or vCenter the module talked to (O(hostname), with the port if not 443).
          type: str
        api_type:
          description: V(HostAgent) (an ESXi host) or V(VirtualCenter) (a vCenter).
          type: str
        api_version:
          description: vSphere API version of the endpoint.
          type: str
        endpoint_product:
          description: Product name, version and build of the endpoint.
          type: str
        endpoint_instance_uuid:
          description: Instance UUID of a vCenter endpoint, V(null) for an ESXi host.
          type: str
        tools:
          description: The tools that acquire the VM and their versions, as the case manifest records them.
          type: dict
          sample: {pyvmomi: 9.1.1.0, vsphere_api: "8.0.2.0", esxi: 8.0.2 build-22380479}
tls:
  description:
    - How the endpoint's identity was checked - C(verified), C(how) (V(thumbprint), V(ca_file), V(system), V(off)),
      C(thumbprint_sha256) of the certificate seen.
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import (
    HAS_PYVMOMI,
    PYVMOMI_IMPORT_ERROR,
    VSPHERE_EXCLUSIVE,
    VSPHERE_VM_RULES,
    client_from_params,
    vsphere_argument_spec,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import vm as _vm


def main():
    module = AnsibleModule(
        argument_spec=dict(name=dict(type="str"), uuid=dict(type="str"), **vsphere_argument_spec()),
        supports_check_mode=True,
        mutually_exclusive=VSPHERE_EXCLUSIVE + VSPHERE_VM_RULES["mutually_exclusive"],
        required_one_of=VSPHERE_VM_RULES["required_one_of"],
    )
    if not HAS_PYVMOMI:
        module.fail_json(msg=missing_required_lib("pyvmomi"), exception=PYVMOMI_IMPORT_ERROR)
    p = module.params
    try:
        with client_from_params(p) as client:
            _vm_object, description = _vm.describe(client, name=p["name"], uuid=p["uuid"])
            tls = client.tls_record()
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(changed=False, vm=description, tls=tls)


if __name__ == "__main__":
    main()
