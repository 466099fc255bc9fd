#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vmkfstools_clone
short_description: Have the ESXi host clone a frozen disk thin onto the evidence datastore, hashing the source
version_added: 0.2.0
description:
  - The field method's C(vmkfstools -i <frozen>.vmdk -d thin /vmfs/volumes/evidence/<vm>/<vm>.vmdk), done by the
    ESXi host itself. The copy never crosses the network; it goes from the VM's datastore onto the evidence datastore,
    a VMFS datastore made on the collector's iSCSI LUN.
  - With O(engine=api), the disk is copied through the vSphere API with C(VirtualDiskManager.CopyVirtualDisk_Task) -
    thin (C(diskType=thin), the adapter type of the source descriptor), never replacing anything. O(src) may be a
    base disk frozen under a snapshot (the copy is that base as frozen) or a delta (the copy is the disk
    consolidated at that delta), as C(vmkfstools -i) does.
  - With O(engine=ssh) (a free ESXi host, whose API refuses every change with C(vim.fault.RestrictedVersion)), the
    host's own shell makes the copy over SSH, as the field method did - C(vmkfstools -i <src> -d thin <dest>) for
    the disk (its adapter type stays the source's), C(cp) for O(files) (never over an existing file), C(mkdir -p)
    for the folder. Reads (the descriptors, the sources' sizes and times, the destination folders, the markers) stay
    on the vSphere API, which a free host answers. O(engine=auto) takes the SSH engine where the host's licence is
    the free one.
  - O(files) are copied as they are (API - C(FileManager.CopyDatastoreFile_Task); SSH - C(cp)), for example a memory
    snapshot's C(.vmem) and C(.vmsn).
  - The destination folder is created when it is missing, with its parents (API - C(FileManager.MakeDirectory)).
  - Writes only onto the destination datastore, which must not hold any source. Nothing is written where the
    evidence lies.
  - API engine - the sources are hashed where they lie, over HTTPS, in the same run and before the copy - one read
    per file, every algorithm of O(algorithms) at once; a disk's base data file by its allocated areas when
    O(changed_areas) gets them from changed block tracking. The destinations are not read back. They lie on the
    collector's LUN, and the collector re-hashes them from there against these source digests - RV(verified) is
    V(false) and RV(dest_digests) V(null), saying so.
  - SSH engine - the sources are hashed on the host with C(openssl dgst) (one process per algorithm, the same read)
    before the copy, and the copy's data file (the clone's C(-flat.vmdk), a copied file) after it, on the host too.
    RV(dest_digests) are the copy's; RV(verified) is V(true) only when they equal the source's. A copy that differs
    is an error, and it gets no marker. A clone of a delta consolidates several levels and equals no single source
    file - RV(digests) is V(null) and RV(verified) V(false), RV(dest_digests) still the clone's.
  - Either engine checks the sources' sizes and modification times again after the copy.
  - Beside every destination, a marker C(<dest>.dfir-vmcollect.json) records the copy - source files with sizes,
    modification times and digests, each source descriptor's text, the case, the times. It is written last, once the
    destination was checked (its sizes, the clone's descriptor).
  - Every change is written to the case's undo journal first. M(dfir.vmcollect.teardown), given the endpoint's
    connection, removes what a failed or interrupted copy left (API - after waiting for a copy task still at work on
    the host; SSH - after stopping a C(vmkfstools) still cloning to that destination, found with C(ps), and waiting
    until its files stop changing) and a folder made for it if that is empty; a completed copy is evidence and is
    never removed. For a copy made over SSH, give teardown's C(connection) the O(ssh) options too.
  - Idempotent. A destination that is a complete copy of the same source (its marker and sizes agree, and the source
    still has the digests the marker recorded) is reported with C(changed=false). Anything else at a destination is
    refused and never replaced.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  engine:
    description:
      - How the copy is made. V(api) is the vSphere API's C(CopyVirtualDisk_Task) and C(CopyDatastoreFile_Task),
        through the connection options below.
      - V(ssh) is the host's shell over SSH (see O(ssh)) - C(vmkfstools -i -d thin), C(cp), C(mkdir -p) - with the
        hashing on the host (C(openssl dgst)). For a free ESXi host, whose API is read-only.
      - V(auto) - the API where the host's licence lets it write, SSH where the licence is the free one (edition
        C(esxBasic)); RV(engine_choice) says which and why.
    type: str
    choices: [api, ssh, auto]
    default: api
  src:
    description:
      - Datastore path of the frozen disk's descriptor, V([datastore1] Windows XP/Windows XP.vmdk) - the C(path) of
        a disk that M(dfir.vmcollect.esxi_snapshot) froze.
      - Needs O(dest). Either O(src) or O(files) (or both) is required.
    type: str
  dest:
    description:
      - Datastore path of the copy's descriptor on the evidence datastore,
        V([evidence] case-42/Windows XP/Windows XP.vmdk). Its data file is C(<dest without .vmdk>-flat.vmdk).
      - Must end in C(.vmdk) and must be on a datastore that holds no source.
    type: str
  files:
    description:
      - Other files to copy as they are, each with C(CopyDatastoreFile_Task) (SSH engine - C(cp)), for example the
        memory snapshot's C(.vmem) and C(.vmsn).
      - A C(.vmdk) is refused here. To vSphere that is a virtual disk, whose data files a file copy takes along. Clone
        disks with O(src) and O(dest). The text of every source descriptor is kept in the marker.
    type: list
    elements: dict
    default: []
    suboptions:
      src:
        description: Datastore path of the file to copy.
        type: str
        required: true
      dest:
        description: Datastore path of the copy. Default - beside O(dest), with the source's file name.
        type: str
  changed_areas:
    description:
      - API engine only (the SSH engine's C(openssl dgst) reads every byte; it refuses this option).
      - Hash the disk's base data file by its allocated areas only. The areas come from
        C(QueryChangedDiskAreas(snapshot, disk_key, offset, '*')), called page by page when the VM has changed block
        tracking; the rest of the file is hashed as zeros without being read. The digests still cover the whole file.
      - Without changed block tracking, or when the disk's size is not its data file's, the whole file is read;
        RV(disk.areas_used) says which and why.
    type: dict
    suboptions:
      vm:
        description: The VM whose disk O(src) is, by moref (V(vm-42)) or by name.
        type: str
        required: true
      snapshot:
        description: Moref of the snapshot that froze the disk (V(snapshot-7)).
        type: str
      disk_key:
        description: Device key of the virtual disk (V(2000) for the first disk).
        type: int
        required: true
  algorithms:
    description: Hash algorithms computed from the same read of each source file.
    type: list
    elements: str
    choices: [md5, sha1, sha256, sha512]
    default: [sha256]
  block_size:
    description: Bytes read and hashed at a time (API engine). Values below 65536 are raised to 65536.
    type: int
    default: 1048576
  retries:
    description:
      - How many times in a row a failed read of a source (a dropped connection, a timeout, an HTTP 5xx answer) is
        tried again without a byte received in between, with a backoff of 1, 2, 4... seconds (at most 15).
    type: int
    default: 5
  request_timeout:
    description: Seconds the host may stay silent on one HTTP request (a read of a source, a descriptor, a marker).
    type: int
    default: 120
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.vsphere
  - dfir.vmcollect.esxi_ssh
  - dfir.vmcollect.journal
  - dfir.vmcollect.progress
attributes:
  check_mode:
    support: full
    details:
      - Reads only. It logs in (with the SSH engine over SSH too, the host key checked), reads the source descriptors
        and their chain, sends C(HEAD) for every source file, lists the destination folders and reads the markers of
        destinations that exist, so every refusal is the same as in a real run; it reports what would be copied and
        which folders made. Nothing is hashed, created or journaled, and no command runs on the host.
  diff_mode:
    support: none
seealso:
  - module: dfir.vmcollect.esxi_snapshot
  - module: dfir.vmcollect.datastore_fetch
  - module: dfir.vmcollect.teardown
notes:
  - >-
    The phases of O(progress_file) are V(hash source) (the API engine reads each source file over HTTPS) and
    V(clone) or V(copy), in the percent the host reports (the copy task's C(info.progress), or the
    C(Clone: N% done.) lines of C(vmkfstools)). A host that reports no percent shows the elapsed time only; the
    SSH engine's C(openssl dgst) reports none either.
  - O(timeout) bounds each vSphere task - the copy, the creation of a folder, a datastore browser search.
  - With the SSH engine, O(ssh.command_timeout) bounds the C(vmkfstools) clone and each C(cp); past it the command is
    stopped on the host and the run fails (teardown removes what it left). Hashing on the host is bounded by 24
    hours per file.
  - The SSH engine runs C(vmkfstools), C(cp), C(mkdir), C(openssl), C(stat), C(test) and C(cat) on the host (and
    teardown C(ps), C(kill), C(rm), C(rmdir), C(ls)). SSH must be enabled on the host; this module does not enable it.
  - A vCenter does not implement C(CopyVirtualDisk_Task)'s thin destination format. Connect to the ESXi host that
    holds both datastores; the copy is never downgraded to a thick one. A host that makes a thick copy anyway is
    reported in RV(disk.disk_type) and RV(verify_note).
  - A thin copy stays small only on a datastore that supports thin files (VMFS, as in the field method).
"""

EXAMPLES = r"""
- name: Clone the frozen disk thin onto the evidence datastore, and copy the memory snapshot beside it
  dfir.vmcollect.vmkfstools_clone:
    hostname: esxi1.example.org
    username: dfir
    password: "{{ vault_esxi_password }}"
    thumbprint: "BE:70:B6:1F:AF:AB:36:D8:7B:F8:A4:6C:AB:C0:2F:77:DB:4B:9E:3F:46:97:AD:98:40:96:34:FF:63:96:F4:20"
    src: "{{ frozen.frozen[0].path }}"
    dest: "[evidence] case-42/Windows XP/Windows XP.vmdk"
    files:
      - src: "{{ frozen.memory.vmem.path }}"
      - src: "{{ frozen.memory.vmsn.path }}"
    changed_areas:
      vm: "{{ frozen.vm.moref }}"
      snapshot: "{{ frozen.snapshot.moref }}"
      disk_key: "{{ frozen.frozen[0].key }}"
    algorithms: [sha256, md5]
    case_id: case-42
  delegate_to: localhost
  register: clone

- name: The field method on a free ESXi host - vmkfstools over SSH, hashed on the host with sha256 and md5
  dfir.vmcollect.vmkfstools_clone:
    hostname: esxi-free.example.org
    username: root
    password: "{{ vault_esxi_root_password }}"
    thumbprint: "{{ esxi_free_thumbprint }}"
    engine: ssh
    ssh:
      known_hosts: /case/known_hosts
      command_timeout: 14400
    src: "{{ frozen.frozen[0].path }}"
    dest: "[evidence] case-42/Windows XP/Windows XP.vmdk"
    files:
      - src: "{{ frozen.memory.vmem.path }}"
      - src: "{{ frozen.memory.vmsn.path }}"
    algorithms: [sha256, md5]
    case_id: case-42
  delegate_to: localhost
  register: clone

- name: What the clone would do (reads only)
  dfir.vmcollect.vmkfstools_clone:
    hostname: esxi1.example.org
    username: dfir
    password: "{{ vault_esxi_password }}"
    src: "[datastore1] Windows XP/Windows XP.vmdk"
    dest: "[evidence] case-42/Windows XP/Windows XP.vmdk"
    case_id: case-42
  check_mode: true
  delegate_to: localhost
"""

RETURN = r"""
src:
  description: The disk's O(src) (without O(src), the first file's).
  returned: success
  type: str
  sample: "[datastore1] Windows XP/Windows XP.vmdk"
dest:
  description: The clone's descriptor on the evidence datastore (without O(src), the first file's copy).
  returned: success
  type: str
  sample: "[evidence] case-42/Windows XP/Windows XP.vmdk"
size:
  description: The disk's size in bytes (its virtual size; the size of its data files), or the first file's.
  returned: success
  type: int
  sample: 8589934592
data_bytes:
  description: Bytes of the source's data files that were read (the allocated areas with O(changed_areas)).
  returned: success
  type: int
  sample: 858993459
hole_bytes:
  description: Bytes of the source's data files outside the areas, hashed as zeros without a read.
  returned: success
  type: int
  sample: 7730941133
digests:
  description:
    - Hex digests by algorithm of the source data file the clone's data file must equal byte for byte (the frozen
      base C(-flat.vmdk) of a disk without older snapshots), taken before the copy - over HTTPS (API engine) or on
      the host with C(openssl dgst) (SSH engine). The collector compares the clone's C(-flat.vmdk) with them.
    - V(null) when the clone consolidates several levels (a delta); each source file's digests are in
      RV(disk.source_files). Empty in check mode.
  returned: success
  type: dict
  sample: {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
dest_size:
  description: Logical size in bytes of the clone's data file (or of the first file's copy), from the datastore browser.
  returned: success
  type: int
  sample: 8589934592
dest_digests:
  description:
    - API engine - always V(null), the destination is not read back here; the collector re-hashes it from the LUN.
    - SSH engine - the digests of the clone's data file (or of the first file's copy), taken on the host after the
      copy (also for a consolidated delta, whose RV(digests) is V(null)).
  returned: success
  type: dict
  sample: {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
verified:
  description:
    - API engine - always V(false), see RV(verify_note).
    - SSH engine - V(true) when RV(dest_digests) equal RV(digests) (every algorithm); V(false) for a consolidated
      delta, which has no single source file to equal. A difference is an error.
  returned: success
  type: bool
  sample: true
verify_note:
  description: Why the destination is not verified here and where it is; what else the reader must know.
  returned: success
  type: str
copied_by:
  description: For the case manifest, V(vmkfstools_clone (CopyVirtualDisk_Task, thin)), or for files
    V(vmkfstools_clone (CopyDatastoreFile_Task)); with the SSH engine V(vmkfstools_clone (vmkfstools -i -d thin over
    SSH)), or for files V(vmkfstools_clone (cp over SSH)).
  returned: success
  type: str
  sample: vmkfstools_clone (CopyVirtualDisk_Task, thin)
transport:
  description: How the evidence reached the collector, V(iscsi-datastore) (a VMFS datastore on its LUN).
  returned: success
  type: str
  sample: iscsi-datastore
engine:
  description: The engine that made (or in check mode would make) the copy, V(api) or V(ssh).
  returned: success
  type: str
  sample: ssh
engine_choice:
  description: C(engine), C(requested), C(why) (for V(auto) from the host's licences, which C(licences) lists).
  returned: success
  type: dict
ssh_host_key:
  description: With the SSH engine, how the host's SSH key was checked - C(verified), C(how), C(key_type),
    C(fingerprint_sha256), C(known_hosts). Also in each marker.
  returned: when the SSH engine was used
  type: dict
disk:
  description:
    - The disk's clone, V(null) without O(src). In check mode its plan - C(state) (V(absent) or V(complete)),
      C(would_copy), C(folders_to_create), C(source_files) with sizes and modification times, C(chain).
  returned: success
  type: dict
  contains:
    src:
      description: The frozen descriptor.
      type: str
    dest:
      description: The clone's descriptor.
      type: str
    dest_extent:
      description: The clone's data file, C(<dest without .vmdk>-flat.vmdk).
      type: str
    size:
      description: The disk's virtual size in bytes.
      type: int
    digests:
      description: As the top-level RV(digests).
      type: dict
    digests_of:
      description: The source file those digests are of, or V(null).
      type: str
    dest_size:
      description: Logical size of the clone's data file.
      type: int
    dest_size_from:
      description: Where RV(disk.dest_size) was read - V(datastore browser), V(datastore browser (the disk's capacity)) or V(HEAD of the data file).
      type: str
    disk_type:
      description: V(thin), or V(thick) when the clone's descriptor does not say thin.
      type: str
    adapter_type:
      description: The adapter type given to the copy (from the source descriptor's C(ddb.adapterType)).
      type: str
    chain:
      description: The source's levels, the frozen descriptor first - C(path), C(create_type), C(delta), C(extents),
        C(virtual_bytes), C(cid), C(ddb_uuid), C(descriptor_sha256).
      type: list
      elements: dict
    source_files:
      description:
        - Every source file hashed, each in M(dfir.vmcollect.datastore_fetch)'s shape - C(src), C(src_url), C(size),
          C(data_bytes), C(hole_bytes), C(digests), C(source_identity), C(areas_used), C(seconds) - plus C(role)
          (V(descriptor), V(extent), V(delta descriptor), V(delta extent)), C(depth), C(dest) (the file of the clone
          it corresponds to, or V(null) for a level consolidated into it), C(dest_equal) (whether that file must equal
          it byte for byte; a clone's descriptor is written new), C(dest_size), C(dest_digests) and C(verified) (the
          SSH engine's read-back for the file that must be equal, else V(null) and V(false)).
        - With the SSH engine C(src_url) is absent; C(src_shell_path) (the C(/vmfs/volumes) path) and C(hashed_by)
          say where it was hashed.
      type: list
      elements: dict
    areas_used:
      description: Which bytes of the base data file were read and why (as M(dfir.vmcollect.datastore_fetch)'s).
      type: dict
    marker:
      description: Datastore path of the marker beside the clone.
      type: str
    copy_id:
      description: The copy's random identifier, in the marker and the journal.
      type: str
    created:
      description: Whether this run made the copy (V(false) - it was there already, complete).
      type: bool
    created_folders:
      description: The folders this run created for it.
      type: list
      elements: str
    copied_at:
      description: UTC time the copy task (or command) was started (by the run that made it).
      type: str
    finished_at:
      description: UTC time the copy was checked.
      type: str
    copy_seconds:
      description: Seconds the copy task (or command) took, V(null) when it was there already.
      type: float
files:
  description:
    - One entry per O(files) item, in M(dfir.vmcollect.datastore_fetch)'s shape (C(src), C(dest), C(size),
      C(data_bytes), C(digests) of the source, C(dest_size) from the datastore browser, C(dest_digests) and
      C(verified) (the SSH engine's read-back; V(null) and V(false) with the API engine), C(copied_by), C(transport)),
      with C(marker), C(copy_id), C(created), C(created_folders),
      C(copied_at), C(finished_at). A file copy equals its source byte for byte (C(dest_equal)).
    - In check mode, the plan of each.
  returned: success
  type: list
  elements: dict
datacenter:
  description: The datacenter of the datastores (C(dcPath) of the HTTPS reads, and of the copies).
  returned: success
  type: str
  sample: ha-datacenter
tls:
  description: How the vSphere endpoint's identity was checked - C(verified), C(how), C(thumbprint_sha256) of the
    certificate seen (the reads go through the API with either engine).
  returned: success
  type: dict
seconds:
  description: Wall time of the hashing and the copies.
  returned: success
  type: float
journal:
  description: Path of the case's journal of this endpoint on the controller.
  returned: success
  type: str
msg:
  description: What was done, or in check mode what would be done.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import clone as _esxi_clone
from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import ssh_option_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell.host import ENGINES, choose_engine
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.copy import progress_file_for
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import DEFAULT_BLOCK_SIZE, SUPPORTED_ALGORITHMS
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.running import at_work
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import (
    HAS_PYVMOMI,
    PYVMOMI_IMPORT_ERROR,
    VSPHERE_EXCLUSIVE,
    client_from_params,
    vsphere_argument_spec,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import clone as _vsphere_clone
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.fetch import DEFAULT_REQUEST_TIMEOUT, DEFAULT_RETRIES


def argument_spec():
    spec = vsphere_argument_spec()
    spec.update(
        engine=dict(type="str", choices=list(ENGINES), default="api"),
        ssh=ssh_option_spec(),
        src=dict(type="str"),
        dest=dict(type="str"),
        files=dict(type="list", elements="dict", default=[], options=dict(
            src=dict(type="str", required=True),
            dest=dict(type="str"),
        )),
        changed_areas=dict(type="dict", options=dict(
            vm=dict(type="str", required=True),
            snapshot=dict(type="str"),
            disk_key=dict(type="int", required=True, no_log=False),  # a device key, not a secret
        )),
        algorithms=dict(type="list", elements="str", choices=list(SUPPORTED_ALGORITHMS), default=["sha256"]),
        block_size=dict(type="int", default=DEFAULT_BLOCK_SIZE),
        retries=dict(type="int", default=DEFAULT_RETRIES),
        request_timeout=dict(type="int", default=DEFAULT_REQUEST_TIMEOUT),
        progress_file=dict(type="path"),
        **journal_spec()
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           mutually_exclusive=VSPHERE_EXCLUSIVE,
                           required_one_of=[("src", "files")], required_together=[("src", "dest")])
    if not HAS_PYVMOMI:
        module.fail_json(msg=missing_required_lib("pyvmomi"), exception=PYVMOMI_IMPORT_ERROR)
    p = module.params
    try:
        _vsphere_clone.check_inputs(p, ENGINES)  # refused before the host is asked anything
        journal = Journal(p["case_id"], p["journal_dir"])
        what = "clone %s to %s" % (p["src"], p["dest"]) if p["src"] else "copy %d file(s)" % len(p["files"])
        progress = progress_file_for(p["progress_file"], p["src"], p["dest"], module.check_mode)
        with at_work(None if module.check_mode else journal, "vmkfstools_clone", "%s on %s" % (what, p["hostname"])):
            with client_from_params(p) as client:
                choice = choose_engine(p["engine"], client)
                params = dict(p, engine=choice["engine"])
                if choice["engine"] == "ssh":
                    result = _esxi_clone.run(journal, client, params, module.check_mode, progress)
                else:
                    result = _vsphere_clone.clone(journal, client, params, module.check_mode, progress)
                result["engine_choice"] = choice
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    if (result.get("disk") or {}).get("disk_type") == "thick":
        module.warn("The host made a thick copy of %s at %s although a thin one was asked for (its descriptor does not "
                    "say thin); the evidence is complete, it takes the disk's whole size." % (p["src"], p["dest"]))
    module.exit_json(journal=journal.path, **result)


if __name__ == "__main__":
    main()
