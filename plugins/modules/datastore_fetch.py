#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: datastore_fetch
short_description: Fetch a file of an ESXi datastore over HTTPS, sparse, hashed in the same read and verified
version_added: 0.2.0
description:
  - Copies one file of an ESXi (or vCenter) datastore, such as a frozen C(-flat.vmdk) or a memory snapshot's
    C(.vmem), to a local file, through the host's own file service
    (C(GET https://<host>/folder/<path>?dcPath=<datacenter>&dsName=<datastore>)) with the API session's cookie.
  - Changes nothing on the host. Only C(GET) and C(HEAD) requests are sent (and, when the host's C(HEAD) gives no
    modification time, one datastore browser search, which only lists a folder).
  - The same engine as M(dfir.vmcollect.evidence_copy) and its result. One read feeds one hashing thread per
    algorithm and the writer. The copy goes to C(<dest>.partial), is synced, read back from storage (its cached
    pages dropped first) and compared with the digests of the read, and only then gets the name O(dest). A copy
    that does not match is deleted.
  - Sparse output. Pieces of the fetched data (64 KiB, aligned) that are all zeros are not written; they stay holes
    of O(dest).
    With O(areas) or O(changed_areas), only those byte ranges are fetched at all; the rest is known to be
    unallocated and is hashed as zeros. The digests always cover the whole logical file.
  - Resumable. A dropped connection is resumed within the run with a C(Range) from the last byte received. A
    rerun after an interruption (even C(kill -9)) hashes the part already on local storage, checks it against the
    digests recorded when it was fetched, and fetches only the rest. The source is identified by its size, its
    modification time and the areas; if any of them changed, the copy starts over.
  - Idempotent. If O(dest) exists, the source is fetched and hashed (nothing is written) and compared with it;
    equal digests report C(changed=false). A different O(dest) is never replaced unless O(force=true).
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  src:
    description:
      - The datastore path of the file, V([datastore name] folder/file name.vmdk), as the vSphere API writes it.
        Spaces and brackets in the names are fine.
    type: str
    required: true
  datacenter:
    description:
      - The datacenter of the datastore (the C(dcPath) of the request), and the datacenter in which
        O(changed_areas.vm) is looked up.
      - Without it, the host's only datacenter is used (V(ha-datacenter) on a standalone ESXi host); a vCenter with
        several datacenters needs it.
    type: str
  dest:
    description:
      - Absolute path of the local copy to create. Its folder must exist.
      - C(<dest>.partial) and C(<dest>.partial.json) are used while the copy is written.
    type: path
    required: true
  algorithms:
    description:
      - Hash algorithms computed from the same read. Algorithms named by O(expected) are computed too.
    type: list
    elements: str
    choices: [md5, sha1, sha256, sha512]
    default: [sha256]
  expected:
    description:
      - Digests of the source taken earlier, as a dictionary of algorithm to hex digest.
      - If the source does not match, the task fails and no copy is left at the destination.
    type: dict
  force:
    description:
      - Replace an existing O(dest) whose content differs from the source.
    type: bool
    default: false
  areas:
    description:
      - The byte ranges of the file that hold data; only these are fetched. Everything else is taken as
        unallocated - it becomes holes of O(dest) and is hashed as zeros.
      - Usually the answer of C(QueryChangedDiskAreas) with change id V(*) for the disk (its offsets are the
        virtual disk's, which are the file's own only for a flat extent, C(-flat.vmdk)). Ranges past the end of the
        file are refused.
      - Mutually exclusive with O(changed_areas).
    type: list
    elements: dict
    suboptions:
      start:
        description: Offset of the range in bytes.
        type: int
        required: true
      length:
        description: Length of the range in bytes.
        type: int
        required: true
  changed_areas:
    description:
      - Ask the host for the areas itself. C(QueryChangedDiskAreas(snapshot, disk_key, offset, '*')) is called page
        by page when the VM has changed block tracking. Without it, or when the disk's size is not the file's, or
        when the host cannot answer, the whole file is fetched; RV(areas_used) says which and why.
      - Mutually exclusive with O(areas).
    type: dict
    suboptions:
      vm:
        description: The VM whose disk the file is, by moref (V(vm-42)) or by name.
        type: str
        required: true
      snapshot:
        description: Moref of the snapshot (V(snapshot-7)) whose disk state the file holds, normally the one that froze it.
        type: str
      disk_key:
        description: Device key of the virtual disk (V(2000) for the first disk).
        type: int
        required: true
  block_size:
    description:
      - Bytes read, hashed and written at a time. Values below 65536 are raised to 65536.
    type: int
    default: 1048576
  retries:
    description:
      - How many times in a row a failed request (a dropped connection, a timeout, an HTTP 5xx answer) is tried
        again without a byte received in between, with a backoff of 1, 2, 4... seconds (at most 15). A transfer
        goes on from the last byte received.
      - An HTTP 401 (the session expired) logs in again once and repeats the request; it does not count here.
    type: int
    default: 5
  request_timeout:
    description:
      - Seconds the host may stay silent on one request (connecting, or between two reads of an answer) before
        the attempt counts as failed.
    type: int
    default: 120
  mode:
    description:
      - Permissions of the copy, as an octal string such as V('0640').
    type: raw
    default: '0640'
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.vsphere
  - dfir.vmcollect.journal.at_work
  - dfir.vmcollect.progress
attributes:
  check_mode:
    support: full
    details:
      - Writes nothing and fetches nothing - it logs in, reads the inventory (datacenter and datastore names, with
        O(changed_areas) the disk's areas) and sends one C(HEAD) for the file. Reports the size, the areas, the free
        space and the offset a resume would start at. As the file is not fetched, an existing O(dest) is not
        compared and O(expected) is not checked.
  diff_mode:
    support: none
seealso:
  - module: dfir.vmcollect.evidence_copy
  - module: dfir.vmcollect.hash_verify
notes:
  - The phases of O(progress_file) are those of M(dfir.vmcollect.evidence_copy) - V(copy) (fetch and write),
    V(verify) (read the copy back), V(hash) (read an existing O(dest)'s source) and V(done).
  - Fetch frozen files only (a base disk under a snapshot, a snapshot's memory file). A file whose size or
    modification time changes while it is fetched is an error.
  - The free space needed is the size of the data areas (the whole file without areas) plus a margin, because
    the all-zero blocks of the data are only known once fetched.
  - The session cookie and the password are never written to a result or a message; RV(src_url) carries no
    credentials.
"""

EXAMPLES = r"""
- name: Fetch a frozen base disk from the ESXi host, sha256 and md5 in the same read
  dfir.vmcollect.datastore_fetch:
    hostname: esxi1.example.org
    username: root
    password: "{{ esxi_password }}"
    thumbprint: "AA:BB:..."
    src: "[datastore1] Windows XP/Windows XP-flat.vmdk"
    dest: /evidence/case-42/Windows XP-flat.vmdk
    algorithms: [sha256, md5]
    case_id: case-42
  delegate_to: localhost
  register: disk_fetch

- name: Fetch only the allocated areas, asking the host (changed block tracking)
  dfir.vmcollect.datastore_fetch:
    hostname: esxi1.example.org
    username: root
    password: "{{ esxi_password }}"
    thumbprint: "AA:BB:..."
    src: "[datastore1] Windows XP/Windows XP-flat.vmdk"
    dest: /evidence/case-42/Windows XP-flat.vmdk
    changed_areas:
      vm: vm-42
      snapshot: snapshot-7
      disk_key: 2000
  delegate_to: localhost

- name: What a fetch would do (HEAD only)
  dfir.vmcollect.datastore_fetch:
    hostname: esxi1.example.org
    username: root
    password: "{{ esxi_password }}"
    src: "[datastore1] Windows XP/Windows XP.vmsn"
    dest: /evidence/case-42/Windows XP.vmsn
  check_mode: true
  delegate_to: localhost
"""

RETURN = r"""
src:
  description: The datastore path of the source, as given.
  returned: success
  type: str
  sample: "[datastore1] Windows XP/Windows XP-flat.vmdk"
src_url:
  description: The URL the file was fetched from (no credentials in it; the session cookie went in a header).
  returned: success
  type: str
  sample: https://esxi1.example.org/folder/Windows%20XP/Windows%20XP-flat.vmdk?dcPath=ha-datacenter&dsName=datastore1
transport:
  description: How the file was copied, V(https).
  returned: success
  type: str
  sample: https
copied_by:
  description: The module that made the copy, for the case manifest, V(datastore_fetch).
  returned: success
  type: str
  sample: datastore_fetch
datastore:
  description: The datastore's name, from O(src).
  returned: success
  type: str
  sample: datastore1
datacenter:
  description: The datacenter sent as C(dcPath).
  returned: success
  type: str
  sample: ha-datacenter
dest:
  description: Absolute path of the copy.
  returned: success
  type: str
  sample: /evidence/case-42/Windows XP-flat.vmdk
size:
  description: Size of the source in bytes.
  returned: success
  type: int
  sample: 8589934592
data_bytes:
  description: Bytes of the source in data areas (the whole size without areas).
  returned: success
  type: int
  sample: 858993459
hole_bytes:
  description: Bytes outside the data areas, neither fetched nor written, hashed as zeros.
  returned: success
  type: int
  sample: 7730941133
fetched_bytes:
  description: Bytes received over HTTPS in this run (more than the data when a dropped connection was resumed
    mid-block, less after a resume from a verified prefix).
  returned: success
  type: int
  sample: 858993459
written_bytes:
  description: Bytes written to the copy (the 64 KiB pieces that are not all zeros; less after a resume).
  returned: when a copy was written
  type: int
  sample: 805306368
zero_bytes:
  description: Bytes of fetched 64 KiB pieces that were all zeros and were left as holes instead of being written.
  returned: success
  type: int
  sample: 53687091
free_bytes:
  description: Free bytes in the folder of O(dest) before the copy.
  returned: success
  type: int
  sample: 107374182400
digests:
  description:
    - Hex digests of the source by algorithm, from the read that fed the copy. They cover the whole logical file.
    - Empty in check mode.
  returned: always
  type: dict
  sample: {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
dest_digests:
  description: Hex digests of the copy read back from storage (or of the existing O(dest)).
  returned: always
  type: dict
  sample: {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
verified:
  description: V(true) if the copy was read back and its digests equal the source's.
  returned: success
  type: bool
  sample: true
resumed_from:
  description:
    - Offset from which an interrupted copy was resumed - bytes below it were hashed from the local partial copy,
      checked against the digests recorded when they were fetched, and neither fetched nor written again. V(0) for
      a copy from scratch.
    - In check mode, where a resume would start.
  returned: success
  type: int
  sample: 268435456
areas_used:
  description: Which bytes were fetched and why.
  returned: success
  type: dict
  contains:
    source:
      description: V(whole file), V(given areas) (O(areas)) or V(changed block tracking) (O(changed_areas)).
      type: str
    reason:
      description: Why the whole file was fetched although O(changed_areas) was given.
      type: str
      returned: when O(changed_areas) fell back to the whole file
    areas:
      description: Number of data areas.
      type: int
    area_bytes:
      description: Bytes in the data areas (fetched), against RV(areas_used.size).
      type: int
    size:
      description: Size of the file.
      type: int
    fraction:
      description: RV(areas_used.area_bytes) over RV(areas_used.size).
      type: float
  sample: {source: changed block tracking, areas: 412, area_bytes: 858993459, size: 8589934592, fraction: 0.1,
           vm: vm-42, disk_key: 2000, snapshot: snapshot-7, pages: 1}
source_identity:
  description: What identifies the source between runs, besides the areas - its size and modification time and
    where the time came from (V(HEAD) or V(datastore browser)).
  returned: success
  type: dict
  sample: {size: 8589934592, modified: "2026-12-06T06:30:22Z", from: HEAD}
tls:
  description: How the host's TLS certificate was checked (verified, how, thumbprint_sha256 of the certificate seen).
  returned: success
  type: dict
  sample: {verified: true, how: thumbprint, thumbprint_sha256: "C0:99:44:..."}
requests:
  description: HTTP requests sent (HEAD and GET).
  returned: success
  type: int
  sample: 3
reconnects:
  description: Failed attempts that were tried again on a new connection.
  returned: success
  type: int
  sample: 0
relogins:
  description: Logins made again after the host answered HTTP 401.
  returned: success
  type: int
  sample: 0
seconds:
  description: Wall time of the fetch (or of fetching and hashing the source when O(dest) already held it), fsync
    included.
  returned: success
  type: float
  sample: 6.52
mib_per_s:
  description: Logical size over RV(seconds), in MiB per second.
  returned: success
  type: float
  sample: 1256.3
rate_mib_s:
  description: RV(fetched_bytes) over RV(seconds), in MiB per second - the transfer rate from the host.
  returned: success
  type: float
  sample: 120.4
verify_seconds:
  description: Wall time of reading the copy (or the existing O(dest)) back.
  returned: success
  type: float
  sample: 6.81
verify_carried_bytes:
  description:
    - Bytes of holes the read-back did not hash again, as in M(dfir.vmcollect.evidence_copy). They are
      holes in the local copy and, on the host, parts of the file outside the areas fetched.
  returned: success
  type: int
  sample: 9663676416
msg:
  description: What was done, or in check mode what would be done.
  returned: success
  type: str
  sample: "Fetched [datastore1] vm/vm-flat.vmdk (https://...) to /evidence/vm-flat.vmdk: ... verified by reading it back."
mismatches:
  description: One sentence per digest that differs, with both digests.
  returned: failed on a mismatch
  type: list
  elements: str
  sample: ["/evidence/case-42/vm-flat.vmdk: sha256 expected 9f86..., got e3b0..."]
owner:
  description: Owner of O(dest) when it exists (added by Ansible for results with a O(dest)).
  returned: success, when dest exists
  type: str
  sample: root
group:
  description: Group of O(dest) when it exists.
  returned: success, when dest exists
  type: str
  sample: root
uid:
  description: Owner id of O(dest) when it exists.
  returned: success, when dest exists
  type: int
  sample: 0
gid:
  description: Group id of O(dest) when it exists.
  returned: success, when dest exists
  type: int
  sample: 0
mode:
  description: Permissions of O(dest) when it exists.
  returned: success, when dest exists
  type: str
  sample: "0640"
state:
  description: Type of O(dest) when it exists.
  returned: success, when dest exists
  type: str
  sample: file
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.copy import DEFAULT_MODE
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import DEFAULT_BLOCK_SIZE, SUPPORTED_ALGORITHMS
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.running import at_work
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import (
    HAS_PYVMOMI,
    PYVMOMI_IMPORT_ERROR,
    VSPHERE_EXCLUSIVE,
    vsphere_argument_spec,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.fetch import (
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RETRIES,
    run,
)


def argument_spec():
    spec = vsphere_argument_spec()
    spec.update(
        src=dict(type="str", required=True),
        dest=dict(type="path", required=True),
        algorithms=dict(type="list", elements="str", choices=list(SUPPORTED_ALGORITHMS), default=["sha256"]),
        expected=dict(type="dict"),
        force=dict(type="bool", default=False),
        areas=dict(type="list", elements="dict", options=dict(
            start=dict(type="int", required=True),
            length=dict(type="int", required=True),
        )),
        changed_areas=dict(type="dict", options=dict(
            vm=dict(type="str", required=True),
            snapshot=dict(type="str"),
            disk_key=dict(type="int", required=True, no_log=False),  # a device key, not a secret
        )),
        block_size=dict(type="int", default=DEFAULT_BLOCK_SIZE),
        retries=dict(type="int", default=DEFAULT_RETRIES),
        request_timeout=dict(type="int", default=DEFAULT_REQUEST_TIMEOUT),
        mode=dict(type="raw", default="%04o" % DEFAULT_MODE),
        progress_file=dict(type="path"),
        **journal_spec(required=False)
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True,
                           mutually_exclusive=VSPHERE_EXCLUSIVE + [("areas", "changed_areas")])
    if not HAS_PYVMOMI:
        module.fail_json(msg=missing_required_lib("pyvmomi"), exception=PYVMOMI_IMPORT_ERROR)
    p = module.params
    try:
        journal = Journal(p["case_id"], p["journal_dir"]) if p["case_id"] and not module.check_mode else None
        with at_work(journal, "datastore_fetch", "fetch %s to %s" % (p["src"], p["dest"])):
            result = run(p, check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
