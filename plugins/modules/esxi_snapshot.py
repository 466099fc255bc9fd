#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: esxi_snapshot
short_description: Freeze a VM on an ESXi host or vCenter with a vSphere snapshot (disks and memory)
version_added: 0.2.0
description:
  - Makes one vSphere snapshot of the VM, named for the case (C(dfir-vmcollect <case_id> <8 random hex digits>)),
    with a description saying what it is for and who made it. vSphere makes every disk write to a new delta, so the
    files the VM wrote to before (each disk's whole chain) stop changing while they are copied.
  - A running VM is frozen with its memory (RAM and device state in the snapshot's C(.vmsn)/C(.vmem)). Freezing a
    running VM without it needs O(memory=false) and O(allow_disk_only=true) together. A VM whose capabilities say
    memory (or quiesced) snapshots are unsupported is refused, never downgraded. A VM that is shut off or suspended
    gets a snapshot too, which keeps its disks frozen should it be started during the acquisition.
  - Disks a snapshot cannot freeze - independent disks, raw device mappings, multi-writer disks - are refused before
    any change, listed, unless each is named in O(accept_not_frozen); they are then returned in RV(skipped_disks)
    as not frozen.
  - Returns, per disk, the frozen chain - the descriptor the VM wrote to before the snapshot first, then its parents,
    each with its data file (extent) and sizes - and the snapshot's memory files.
  - Every change is written to the case's undo journal before it is made. The journal lives where the module runs
    (the controller; the ESXi role gives each vSphere endpoint a journal folder of its own, so several run side by
    side). M(dfir.vmcollect.teardown), given the endpoint's
    connection, removes exactly this snapshot (never another), consolidates the disks if vSphere asks for it, and
    checks each disk writes to its file of before again - also after a crash or a killed playbook.
  - Idempotent per case. A VM already frozen for the case is reported with C(changed=false).
  - With O(engine=ssh) (or O(engine=auto) on a host with the free licence, whose API is read-only) the snapshot is
    made and removed by the host's own C(vim-cmd vmsvc/snapshot.create) and C(vmsvc/snapshot.remove) over SSH, as
    the field method does on a free ESXi host. Everything else - the plan and its refusals, the journal, the frozen
    chains, the pause from C(vmware.log) - reads the vSphere API, which a free host answers.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  memory:
    description:
      - Include the VM's memory in the snapshot (only a running VM has any).
      - V(false) for a running VM is refused unless O(allow_disk_only=true).
    type: bool
    default: true
  allow_disk_only:
    description:
      - Accept freezing a running VM's disks without its memory (O(memory=false)) - a crash-consistent freeze, as
        the result's RV(method) and RV(note) record.
    type: bool
    default: false
  quiesce:
    description:
      - Ask VMware Tools to quiesce the guest's filesystems for the snapshot, within O(quiesce_timeout).
      - Refused before any change if the VM is not running, VMware Tools do not run, or vSphere says the VM does not
        support quiesced snapshots. A snapshot vSphere made without quiescing fails the task (teardown removes it).
    type: bool
    default: false
  quiesce_timeout:
    description:
      - Minutes vSphere may spend quiescing the guest (vSphere's bounds - 5 to 240). Used with O(quiesce=true) only.
    type: int
    default: 15
  accept_not_frozen:
    description:
      - Disks a snapshot cannot freeze (independent, RDM, multi-writer) that may stay unfrozen, by target
        (V(scsi0:1)) or label (V(Hard disk 2)). Every such disk not named here refuses the freeze.
      - vSphere takes no memory snapshot of a VM with independent disks; such a VM needs O(memory=false) and
        O(allow_disk_only=true) as well.
    type: list
    elements: str
    default: []
  engine:
    description:
      - What changes the host. V(api) - the vSphere API (C(CreateSnapshot_Task), C(RemoveSnapshot_Task)). V(ssh) - the
        host's shell over SSH (C(vim-cmd)), see O(ssh). V(auto) - the API where the host's licence lets it write, SSH
        where the licence is the free one (edition C(esxBasic)); RV(engine_choice) says which and why.
      - The snapshot's undo (teardown) uses the engine that made it; with V(ssh), give teardown O(ssh) in its
        C(connection).
      - With V(ssh) a quiesce gets the host's own timeout; O(quiesce_timeout) is not used.
    type: str
    choices: [api, ssh, auto]
    default: api
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.vsphere
  - dfir.vmcollect.vsphere.vm
  - dfir.vmcollect.esxi_ssh
  - dfir.vmcollect.journal
attributes:
  check_mode:
    support: full
    details: Reads the VM, checks everything the freeze would check, and returns the plan; creates nothing, journals nothing.
  diff_mode:
    support: none
seealso:
  - module: dfir.vmcollect.esxi_vm_info
  - module: dfir.vmcollect.teardown
"""

EXAMPLES = r"""
- name: Freeze the suspect VM's disks and memory
  dfir.vmcollect.esxi_snapshot:
    hostname: esxi1.example.org
    username: dfir
    password: "{{ vault_esxi_password }}"
    thumbprint: "BE:70:B6:1F:AF:AB:36:D8:7B:F8:A4:6C:AB:C0:2F:77:DB:4B:9E:3F:46:97:AD:98:40:96:34:FF:63:96:F4:20"
    name: "Windows XP"
    case_id: case-42
  delegate_to: localhost
  register: frozen

- name: Remove the snapshot again (teardown on the controller, with the endpoint's connection)
  dfir.vmcollect.teardown:
    case_id: case-42
    connection:
      hostname: esxi1.example.org
      username: dfir
      password: "{{ vault_esxi_password }}"
      thumbprint: "BE:70:B6:1F:AF:AB:36:D8:7B:F8:A4:6C:AB:C0:2F:77:DB:4B:9E:3F:46:97:AD:98:40:96:34:FF:63:96:F4:20"
  delegate_to: localhost
"""

RETURN = r"""
vm:
  description: The VM.
  returned: success
  type: dict
  contains:
    name:
      description: Its name.
      type: str
    uuid:
      description: Its BIOS UUID.
      type: str
    moref:
      description: Its managed object reference.
      type: str
    running:
      description: Whether it was powered on.
      type: bool
    state:
      description: Its state in the KVM provider's words (V(running), V(shut off), V(paused)).
      type: str
frozen:
  description: One entry per disk frozen.
  returned: success
  type: list
  elements: dict
  contains:
    target:
      description: vSphere's device node (V(scsi0:0)).
      type: str
    key:
      description: Device key of the disk.
      type: int
    label:
      description: Device label.
      type: str
    path:
      description: Datastore path of the frozen descriptor (the one the VM wrote to before the snapshot).
      type: str
    format:
      description: Always V(vmdk).
      type: str
    chain:
      description:
        - What the snapshot froze - the frozen descriptor first, then its parents, the base disk last. Each has
          C(path) (datastore path of the descriptor), C(extent) (datastore path of its main data file), C(extents)
          (every data file with C(path) and C(size)), C(format) (V(vmdk)), C(datastore), C(size) (bytes of
          descriptor and extents; V(null) if unknown) and C(descriptor_size).
      type: list
      elements: dict
    files:
      description:
        - Every file of RV(frozen[].chain) as it is copied, one by one - each level's descriptor, then its data files.
          Each has C(path) (datastore path), C(role) (V(descriptor) or V(extent)), C(depth) (0 for the frozen
          descriptor's level, then down to the base), C(format) (V(vmdk descriptor) or V(vmdk extent)) and C(size)
          (bytes, V(null) if unknown).
      type: list
      elements: dict
    chain_from:
      description: Where the chain comes from (V(snapshot layout), or the disk layout before the freeze).
      type: str
    overlay:
      description: Datastore path of the delta the VM writes to now, or V(null) (check mode, or none seen).
      type: str
skipped_disks:
  description:
    - Disks not frozen because O(accept_not_frozen) accepted them, with the keys M(dfir.vmcollect.esxi_vm_info)
      gives its skipped disks (C(target), C(label), C(path), C(kind), C(disk_mode), C(reason)...).
    - Named so because Ansible reads a true C(skipped) in a task result as "the task was skipped".
  returned: success
  type: list
  elements: dict
memory:
  description:
    - The snapshot's memory files, C(vmsn) and C(vmem), each with C(path) (datastore path) and C(size), or V(null);
      V(null) as a whole when the snapshot holds no memory (or in check mode).
  returned: success
  type: dict
snapshot:
  description: The snapshot - C(moref), C(name), C(id), C(created) (UTC), C(description). In check mode only the name it would have.
  returned: success
  type: dict
snapshot_time:
  description: UTC time vSphere gives the snapshot (V(null) in check mode) - the point in time the frozen disks show.
  returned: success
  type: str
pause_ms:
  description:
    - How long ESXi stunned the guest to save its memory, in milliseconds, from the C(Checkpoint_Unstun) line of the
      VM's C(vmware.log) (read with a ranged GET, never written). V(null) where the log does not say it (see
      RV(pause_note)), for a disk-only snapshot, in check mode and when the freeze was already made by an earlier run.
  returned: success
  type: float
pause_note:
  description: Where RV(pause_ms) comes from, or why it is not known.
  returned: success
  type: str
quiesced:
  description: Whether the guest's filesystems were quiesced (vSphere's word for the snapshot).
  returned: success
  type: bool
method:
  description: V(vSphere memory snapshot) or V(vSphere snapshot) (disks only), with V( (vim-cmd over SSH)) after it
    when the SSH engine made it.
  returned: success
  type: str
engine:
  description: The engine that made (or would make) the snapshot, V(api) or V(ssh).
  returned: success
  type: str
engine_choice:
  description: C(engine), C(requested), C(why) (for V(auto) from the host's licences, which C(licences) lists).
  returned: success
  type: dict
ssh_host_key:
  description: With the SSH engine, how the host's SSH key was checked - C(verified), C(how), C(key_type),
    C(fingerprint_sha256), C(known_hosts).
  returned: when the SSH engine was used
  type: dict
tls:
  description: How the endpoint's identity was checked - C(verified), C(how), C(thumbprint_sha256) of the certificate seen.
  returned: success
  type: dict
journal:
  description: Path of the case's journal of this endpoint on the controller.
  returned: success
  type: str
note:
  description: What the freeze means for the evidence, and what was not frozen.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import ssh_option_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell.host import ENGINES, choose_engine, ssh_client
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell.snapshot import ShellSnapshots
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.running import at_work
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import (
    HAS_PYVMOMI,
    PYVMOMI_IMPORT_ERROR,
    VSPHERE_EXCLUSIVE,
    VSPHERE_VM_RULES,
    client_from_params,
    vsphere_argument_spec,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import snapshot as _vsphere_snapshot


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            uuid=dict(type="str"),
            memory=dict(type="bool", default=True),
            allow_disk_only=dict(type="bool", default=False),
            quiesce=dict(type="bool", default=False),
            quiesce_timeout=dict(type="int", default=_vsphere_snapshot.DEFAULT_QUIESCE_TIMEOUT),
            accept_not_frozen=dict(type="list", elements="str", default=[]),
            engine=dict(type="str", choices=list(ENGINES), default="api"),
            ssh=ssh_option_spec(),
            **dict(vsphere_argument_spec(), **journal_spec())
        ),
        supports_check_mode=True,
        mutually_exclusive=VSPHERE_EXCLUSIVE + VSPHERE_VM_RULES["mutually_exclusive"],
        required_one_of=VSPHERE_VM_RULES["required_one_of"],
    )
    if not HAS_PYVMOMI:
        module.fail_json(msg=missing_required_lib("pyvmomi"), exception=PYVMOMI_IMPORT_ERROR)
    p = module.params
    try:
        journal = Journal(p["case_id"], p["journal_dir"])
        with at_work(None if module.check_mode else journal, "esxi_snapshot",
                     "freeze VM %s on %s" % (p["name"] or p["uuid"], p["hostname"])):
            with client_from_params(p) as client:
                choice = choose_engine(p["engine"], client)
                kwargs = dict(name=p["name"], uuid=p["uuid"], memory=p["memory"], allow_disk_only=p["allow_disk_only"],
                              quiesce=p["quiesce"], quiesce_timeout=p["quiesce_timeout"],
                              accept_not_frozen=p["accept_not_frozen"], check_mode=module.check_mode)
                if choice["engine"] == "ssh":
                    with ssh_client(p) as ssh:
                        result = _vsphere_snapshot.freeze(journal, client, shell=ShellSnapshots(ssh), **kwargs)
                        result["ssh_host_key"] = ssh.host_key_record()
                else:
                    result = _vsphere_snapshot.freeze(journal, client, **kwargs)
                result["engine_choice"] = choice
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(journal=journal.path, **result)


if __name__ == "__main__":
    main()
