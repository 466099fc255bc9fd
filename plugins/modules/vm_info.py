#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vm_info
short_description: Describe a KVM/libvirt VM before acquisition (state, disks, backing chains, memory, snapshots)
version_added: 0.1.0
description:
  - Runs on the KVM host and asks libvirt, over a read-only connection, everything an
    acquisition needs to know about one VM, found by name or UUID.
  - Returns the power state with libvirt's reason, whether the VM is persistent, autostarts
    or has a managed-save image (RAM saved to disk), its memory in bytes, vCPUs, OS,
    whether the C(vmcoreinfo) feature is on, the libvirt snapshots and checkpoints, and
    every disk with its target, bus, type, source, format, flags, sizes and backing chain.
  - CD-ROMs are listed apart in RV(vm.skipped_disks) with C(skipped=true) and C(reason=cdrom);
    RV(vm.disks) holds the disks to acquire.
  - Disk sizes of a running VM come from libvirt (C(virDomainGetBlockInfo), answered by QEMU)
    and the backing chain from the live domain XML. For a VM that is not running they come
    from C(qemu-img info -U --backing-chain), always with C(-U) (QEMU's image locks are neither
    taken nor waited for) and with the format libvirt declares (a raw disk's content, which the
    guest wrote, is never probed for a format).
  - A disk that cannot be measured does not fail the task; its C(sizes_error) says why and the
    task warns.
  - Only reads, so the module always reports C(changed=false) and runs in full in check mode.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
requirements:
  - libvirt-python (python3-libvirt on Debian/Ubuntu)
  - qemu-img (qemu-utils on Debian/Ubuntu), for the disks of a VM that is not running
options:
  include_xml:
    description:
      - Also return the live and the inactive domain XML as text in RV(vm.xml).
    type: bool
    default: false
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.kvm_vm
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
notes:
  - libvirt has no per-call timeout. Everything but the disk sizes of a running VM is answered
    by libvirtd from its own state in about a millisecond; the sizes ask QEMU and wait for the
    VM's job lock, which libvirt gives up on after about 30 s if another job (a memory dump, a
    migration) holds it. A hung libvirtd hangs the task; bound it with the C(timeout) task keyword.
  - Each C(qemu-img info) call is given 60 seconds; a disk on storage that hangs gets a
    C(sizes_error) instead.
  - Reading the headers of a qcow2 image with C(qemu-img) can move its access time (under the
    C(relatime) rule, when the access time is older than the modification time or than a day).
    A running VM's images are not read by this module at all.
  - Compare sizes only when they have the same RV(vm.disks[].sizes_from). For a VM that is not
    running, C(allocation) is the bytes allocated on the host and C(physical) the container's
    length. For a running VM they are libvirt's (libvirt 9.0) - once the guest has written to
    an image, C(allocation) is the highest offset QEMU wrote and C(physical) the bytes QEMU says
    are allocated; before that, libvirt reads the file as above.
seealso:
  - name: virDomainGetBlockInfo
    description: What libvirt's capacity, allocation and physical sizes mean.
    link: https://libvirt.org/html/libvirt-libvirt-domain.html#virDomainGetBlockInfo
"""

EXAMPLES = r"""
- name: Describe the suspect VM
  dfir.vmcollect.vm_info:
    name: web-frontend-01
  register: suspect

- name: Stop if the VM has a disk on network storage
  ansible.builtin.assert:
    that: suspect.vm.disks | selectattr('type', 'equalto', 'network') | list | length == 0
    fail_msg: "{{ suspect.vm.name }} has a network disk; acquire it at the storage side"

- name: Describe a VM by UUID on another libvirt, with its XML for the case file
  dfir.vmcollect.vm_info:
    uuid: 6c616276-6d63-4000-8000-76696374696d
    uri: qemu+ssh://root@kvm2.example.org/system
    include_xml: true
  register: suspect_by_uuid
"""

RETURN = r"""
vm:
  description: What libvirt (and qemu-img, for a VM that is not running) says about the VM.
  returned: success
  type: dict
  contains:
    name:
      description: Name of the VM.
      type: str
      sample: vmc-victim
    uuid:
      description: UUID of the VM.
      type: str
      sample: 6c616276-6d63-4000-8000-76696374696d
    id:
      description: libvirt's id of the running VM, V(null) when it is not running.
      type: int
      sample: 1
    virt_type:
      description: The domain type, V(kvm) or V(qemu) (TCG).
      type: str
      sample: kvm
    title:
      description: The domain's title, if any.
      type: str
      sample: null
    description:
      description: The domain's description, if any.
      type: str
      sample: null
    state:
      description: Power state in virsh's words.
      type: str
      choices: [no state, running, idle, paused, in shutdown, shut off, crashed, pmsuspended]
      sample: running
    state_reason:
      description: libvirt's reason for the state, in virsh's words (C(virsh domstate --reason)).
      type: str
      sample: booted
    active:
      description: Whether the VM has a QEMU process (running, paused, suspended...).
      type: bool
      sample: true
    persistent:
      description: Whether the VM is defined (V(false) for a transient VM that vanishes when it stops).
      type: bool
      sample: true
    autostart:
      description: Whether libvirt starts the VM with the host; V(null) if libvirt cannot tell.
      type: bool
      sample: false
    managed_save:
      description: Whether a managed-save image (the VM's RAM saved by C(virsh managedsave)) exists; V(null) if libvirt cannot tell.
      type: bool
      sample: false
    memory_bytes:
      description: Maximum memory of the VM (C(<memory>)) in bytes.
      type: int
      sample: 268435456
    current_memory_bytes:
      description: Current memory (C(<currentMemory>)) in bytes.
      type: int
      sample: 268435456
    max_memory_bytes:
      description: Memory hotplug limit (C(<maxMemory>)) in bytes, V(null) if none.
      type: int
      sample: null
    vcpus:
      description: Maximum number of vCPUs.
      type: int
      sample: 1
    vcpus_current:
      description: vCPUs currently enabled.
      type: int
      sample: 1
    vmcoreinfo:
      description: Whether the C(vmcoreinfo) feature is on (memory dumps then carry the guest kernel's layout).
      type: bool
      sample: true
    os:
      description: The C(<os>) element.
      type: dict
      contains:
        type:
          description: OS type.
          type: str
          sample: hvm
        arch:
          description: Architecture.
          type: str
          sample: x86_64
        machine:
          description: Machine type.
          type: str
          sample: pc-i440fx-7.2
        firmware:
          description: Firmware auto-selection (V(efi), V(bios)), if set.
          type: str
          sample: null
        loader:
          description: Firmware loader path, if any.
          type: str
          sample: null
        nvram:
          description: Path of the VM's UEFI variable store, if any (evidence too).
          type: str
          sample: null
        kernel:
          description: Kernel of a direct kernel boot, if any.
          type: str
          sample: /var/lib/libvirt/boot/vmlinuz
        initrd:
          description: Initrd of a direct kernel boot, if any.
          type: str
          sample: null
        cmdline:
          description: Kernel command line of a direct kernel boot, if any.
          type: str
          sample: console=ttyS0
    disks:
      description: The disks to acquire (every C(<disk>) but CD-ROMs), in the order of the domain XML.
      type: list
      elements: dict
      contains:
        target:
          description: Target device name in the guest's bus (C(vda), C(sdb)...), the name libvirt calls take.
          type: str
          sample: vda
        bus:
          description: Bus (V(virtio), V(scsi), V(sata), V(ide), V(usb)...).
          type: str
          sample: virtio
        device:
          description: Device kind (V(disk), V(lun), V(floppy); V(cdrom) only in RV(vm.skipped_disks)).
          type: str
          sample: disk
        type:
          description: Source kind (V(file), V(block), V(network), V(volume), V(dir)...).
          type: str
          sample: file
        path:
          description: File, block device or folder the disk reads from; V(null) for network and pool-volume disks and empty drives.
          type: str
          sample: /var/lib/libvirt/images/web01.qcow2
        source_protocol:
          description: Protocol of a network disk (V(rbd), V(nbd), V(iscsi), V(gluster), V(http)...).
          type: str
          sample: null
        source_name:
          description: Image, export or target name of a network disk (for iSCSI C(<iqn>/<lun>)).
          type: str
          sample: null
        source_hosts:
          description: Servers of a network disk.
          type: list
          elements: dict
          sample: [{name: mon1.example.org, port: 6789, transport: null, socket: null}]
        source_pool:
          description: Storage pool of a volume disk.
          type: str
          sample: null
        source_volume:
          description: Volume name of a volume disk.
          type: str
          sample: null
        format:
          description: Image format the driver uses (V(qcow2), V(raw)...); V(null) means libvirt's default, raw.
          type: str
          sample: qcow2
        driver_name:
          description: Driver name (V(qemu)).
          type: str
          sample: qemu
        cache:
          description: Cache mode, if set.
          type: str
          sample: null
        readonly:
          description: Whether the guest sees the disk read-only.
          type: bool
          sample: false
        shareable:
          description: Whether the disk may be shared with other VMs (writes may come from elsewhere).
          type: bool
          sample: false
        transient:
          description: Whether the disk is transient (the guest's writes go to a temporary overlay that is discarded when the VM stops).
          type: bool
          sample: false
        transient_share_backing:
          description: Whether a transient disk's backing image is shared with other VMs (C(shareBacking=yes)).
          type: bool
          sample: false
        serial:
          description: Serial number shown to the guest, if set.
          type: str
          sample: null
        boot_order:
          description: Boot order of the disk, if set.
          type: int
          sample: 1
        alias:
          description: libvirt's device alias (running VM only).
          type: str
          sample: virtio-disk0
        capacity:
          description: Size the guest sees, in bytes; V(null) if unknown.
          type: int
          sample: 67108864
        allocation:
          description: Bytes of host storage the image uses (see the notes for libvirt's meaning on a running VM); V(null) if unknown.
          type: int
          sample: 1331200
        physical:
          description: Bytes of the image's container (file length, block device size); V(null) if unknown.
          type: int
          sample: 1900544
        sizes_from:
          description: Where the sizes come from, V(libvirt) (running VM), V(qemu-img) (VM not running) or V(null) (not measured).
          type: str
          sample: libvirt
        sizes_error:
          description: Why the sizes are unknown, as a sentence; V(null) when they are known.
          type: str
          sample: null
        backing_chain:
          description:
            - The images below the top image, nearest first (the top image's backing file, then its own...).
            - Empty for an image without backing file.
          type: list
          elements: dict
          contains:
            type:
              description: V(file), V(block) or V(network).
              type: str
              sample: file
            path:
              description: Path of the backing image (V(null) for a network image).
              type: str
              sample: /var/lib/libvirt/images/base.qcow2
            format:
              description: Format of the backing image.
              type: str
              sample: qcow2
            source_protocol:
              description: Protocol of a network backing image.
              type: str
              sample: null
            source_name:
              description: Name of a network backing image.
              type: str
              sample: null
            capacity:
              description: Virtual size in bytes (from qemu-img only, else V(null)).
              type: int
              sample: 67108864
            allocation:
              description: Bytes allocated on the host (from qemu-img only, else V(null)).
              type: int
              sample: 200704
        backing_chain_from:
          description: Where the chain comes from, V(libvirt) (the live XML of a running VM), V(qemu-img) (VM not running) or V(null) (unknown).
          type: str
          sample: libvirt
        skipped:
          description: Always V(false) here.
          type: bool
          sample: false
        reason:
          description: Always V(null) here.
          type: str
          sample: null
    skipped_disks:
      description:
        - CD-ROM drives, with or without media, not to be acquired. Same keys as RV(vm.disks)
          (C(path) is the medium, V(null) when the drive is empty; sizes are not measured).
      type: list
      elements: dict
      sample: [{target: hdc, device: cdrom, type: file, path: null, skipped: true, reason: cdrom}]
    snapshots:
      description: libvirt snapshots of the VM, oldest first.
      type: list
      elements: dict
      contains:
        name:
          description: Snapshot name.
          type: str
          sample: before-patch
        description:
          description: Snapshot description, if any.
          type: str
          sample: null
        created:
          description: Creation time, seconds since the epoch.
          type: int
          sample: 1795292353
        created_utc:
          description: Creation time in UTC, ISO 8601.
          type: str
          sample: "2026-11-21T20:19:13Z"
        state:
          description: State of the VM when the snapshot was taken (V(running), V(shutoff), V(disk-snapshot)...).
          type: str
          sample: disk-snapshot
        parent:
          description: Name of the parent snapshot, if any.
          type: str
          sample: null
        current:
          description: Whether it is the current snapshot.
          type: bool
          sample: true
        memory:
          description: Where the RAM was saved, V(no), V(internal) or V(external).
          type: str
          sample: "no"
        memory_file:
          description: File of an external memory snapshot, if any.
          type: str
          sample: null
        disk_only:
          description: Whether the snapshot holds no RAM (disk-only or taken while the VM was off).
          type: bool
          sample: true
        disks:
          description: Per disk, how it was snapshotted (C(snapshot) V(internal), V(external), V(no)...) and the overlay path of an external one.
          type: list
          elements: dict
          sample: [{target: vda, snapshot: external, path: /var/lib/libvirt/images/web01.s1}]
    checkpoints:
      description: libvirt checkpoints (dirty-block bitmaps for incremental backup), oldest first; V(null) if this libvirt has no checkpoint API.
      type: list
      elements: dict
      contains:
        name:
          description: Checkpoint name.
          type: str
          sample: c1
        description:
          description: Checkpoint description, if any.
          type: str
          sample: null
        created:
          description: Creation time, seconds since the epoch.
          type: int
          sample: 1795292353
        created_utc:
          description: Creation time in UTC, ISO 8601.
          type: str
          sample: "2026-11-21T20:19:13Z"
        parent:
          description: Name of the parent checkpoint, if any.
          type: str
          sample: null
        disks:
          description: Per disk, the checkpoint kind (V(bitmap), V(no)) and bitmap name.
          type: list
          elements: dict
          sample: [{target: vda, checkpoint: bitmap, bitmap: c1}]
    host:
      description: Who answered, for the custody record.
      type: dict
      contains:
        uri:
          description: libvirt URI of the connection.
          type: str
          sample: qemu:///system
        hostname:
          description: Host name of the KVM host, as libvirt sees it.
          type: str
          sample: kvm1
        libvirt_version:
          description: Version of libvirtd.
          type: str
          sample: 9.0.0
        hypervisor:
          description: Hypervisor driver.
          type: str
          sample: QEMU
        hypervisor_version:
          description: Version of the hypervisor (QEMU).
          type: str
          sample: 7.2.22
        tools:
          description: The tools that acquire the VM and their versions, as the case manifest records them.
          type: dict
          sample: {libvirt: 9.0.0, qemu: 7.2.22}
    xml:
      description: The domain XML, without secrets.
      returned: when O(include_xml=true)
      type: dict
      contains:
        live:
          description: The XML of the VM as it is (for a running VM, with backing chains and aliases).
          type: str
          sample: "<domain type='kvm' id='1'>...</domain>"
        inactive:
          description: The XML the VM boots from next time; V(null) for a transient VM.
          type: str
          sample: "<domain type='kvm'>...</domain>"
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import KVM_VM_RULES, kvm_vm_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm.libvirt import HAS_LIBVIRT, LIBVIRT_IMPORT_ERROR, vm_info


def argument_spec():
    return dict(
        include_xml=dict(type="bool", default=False),
        **kvm_vm_spec()
    )


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        **KVM_VM_RULES
    )
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    p = module.params
    qemu_img = module.get_bin_path("qemu-img")
    try:
        vm = vm_info(p["uri"], name=p["name"], uuid=p["uuid"], include_xml=p["include_xml"], qemu_img=qemu_img)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    for disk in vm["disks"]:
        if disk["sizes_error"]:
            module.warn(disk["sizes_error"])
    module.exit_json(changed=False, vm=vm)


if __name__ == "__main__":
    main()
