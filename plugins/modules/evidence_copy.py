#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: evidence_copy
short_description: Copy a disk or memory image forensically, sparse, hashed in the same read and verified
version_added: 0.1.0
description:
  - Copies one file or block device (a frozen disk image, a memory image) to a destination file
    on the same host.
  - Sparse-aware. Only the data extents of the source (C(SEEK_DATA)/C(SEEK_HOLE)) are read and
    written; holes stay holes in the destination. The cost follows the allocated data, not the
    virtual size.
  - Copies and hashes in one read. The same buffers feed the destination writer and one hashing
    thread per algorithm. Holes are hashed as zeros, so the digests are those of the logical
    content, equal to C(sha256sum) of the source.
  - The source is opened read-only, with C(O_NOATIME) where the kernel allows it. A regular file
    that changes while it is copied (device, inode, size or modification time) is an error.
  - The copy is written to C(<dest>.partial), synced to storage, then read back from storage and
    its digests compared with the source's. Only a copy that matches gets the name O(dest). A copy
    that does not match is deleted.
  - The read-back hashes the copy's data. It does not hash again the zeros of a long hole that the copy
    and the source both have. It takes over the source's hash state there, and only after the state
    reached so far was found equal to the source's. See RV(verify_carried_bytes).
  - Resumable. A sidecar C(<dest>.partial.json) records the source's identity and how far the
    partial copy is complete. After an interruption (even C(kill -9)), a rerun with the same
    source does not write the complete part again. The source is still read and hashed whole,
    because a digest cannot be saved half-way. If the source changed, the copy starts again.
  - Idempotent. If O(dest) exists and its digests equal the source's, nothing is written and the
    task reports C(changed=false). A different existing O(dest) is never replaced unless
    O(force=true).
  - Refuses to start when the destination filesystem has less free space than the source's
    allocated bytes plus a margin (64 MiB, or 1% for large sources).
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  src:
    description:
      - Absolute path of the file or block device to copy.
    type: path
    required: true
  dest:
    description:
      - Absolute path of the copy to create. Its folder must exist.
      - C(<dest>.partial) and C(<dest>.partial.json) are used while the copy is written.
    type: path
    required: true
  algorithms:
    description:
      - Hash algorithms computed from the same read.
      - Algorithms named by O(expected) are computed too.
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
      - Without it such a destination is left untouched and the task fails.
    type: bool
    default: false
  block_size:
    description:
      - Bytes read at a time. Values below 65536 are raised to 65536.
    type: int
    default: 1048576
  mode:
    description:
      - Permissions of the copy, as an octal string such as V('0640').
    type: raw
    default: '0640'
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.journal.at_work
  - dfir.vmcollect.progress
attributes:
  check_mode:
    support: full
    details:
      - Writes nothing. Reports the plan (size, data bytes to write, free space, the offset a resume
        would start at). Reads O(dest) and the source when O(dest) exists, to tell a verified copy
        from a different file. Reads the source when O(expected) is given.
  diff_mode:
    support: none
seealso:
  - module: dfir.vmcollect.hash_verify
notes:
  - Holes cost hashing time (the digest covers the logical content) but no reads or writes.
  - The read-back drops the copy's pages from the page cache first, so it reads what the
    storage holds.
  - Copying a block device reads it from start to end. Copy frozen or read-only sources.
  - A copy that fails verification is deleted with its sidecar. The failed task still
    returns both sets of digests.
  - The phases of O(progress_file) are V(copy) (read the source, write the copy), V(verify) (read the copy
    back or read an existing O(dest)), V(hash) (read the source without writing, when O(dest) exists) and
    finally V(done).
"""

EXAMPLES = r"""
- name: Copy a frozen disk image to the evidence store, hashed and verified
  dfir.vmcollect.evidence_copy:
    src: /var/lib/libvirt/images/vm1-vda.qcow2
    dest: /evidence/case-42/vm1-vda.qcow2
    algorithms: [sha256, md5]
  register: vda_copy

- name: Copy a memory image, checking it against the digest taken when it was dumped
  dfir.vmcollect.evidence_copy:
    src: /var/tmp/vm1.mem.raw
    dest: /evidence/case-42/vm1.mem.raw
    expected:
      sha256: "{{ mem_dump.files[0].digests.sha256 }}"

- name: Copy a large disk, with a progress line every minute in the play's output (AWX job events)
  dfir.vmcollect.evidence_copy:
    src: /dev/vg0/vm1-snap
    dest: /evidence/case-42/vm1-disk.raw
  vars:
    vmcollect_progress_interval: 60

- name: Start a long copy in the background with a progress file (tail -F it on the host)
  dfir.vmcollect.evidence_copy:
    src: /dev/vg0/vm1-snap
    dest: /evidence/case-42/vm1-disk.raw
    progress_file: /var/tmp/case-42-vm1-disk.progress.json
  async: 14400
  poll: 0
  register: disk_copy_job

- name: Wait for the copy
  ansible.builtin.async_status:
    jid: "{{ disk_copy_job.ansible_job_id }}"
  register: disk_copy
  until: disk_copy.finished
  retries: 1440
  delay: 10

- name: What a copy would do, without writing anything
  dfir.vmcollect.evidence_copy:
    src: /var/lib/libvirt/images/vm1-vda.qcow2
    dest: /evidence/case-42/vm1-vda.qcow2
  check_mode: true
"""

RETURN = r"""
src:
  description: Absolute path of the source.
  returned: success
  type: str
  sample: /var/lib/libvirt/images/vm1-vda.qcow2
dest:
  description: Absolute path of the copy.
  returned: success
  type: str
  sample: /evidence/case-42/vm1-vda.qcow2
size:
  description: Size of the source in bytes (for a block device, its size).
  returned: success
  type: int
  sample: 8589934592
data_bytes:
  description: Bytes of data in the source (read from it; in check mode, as SEEK_DATA reports them).
  returned: success
  type: int
  sample: 858993459
hole_bytes:
  description: Bytes of holes in the source, neither read nor written.
  returned: success
  type: int
  sample: 7730941133
written_bytes:
  description: Bytes written to the copy (data only; less than RV(data_bytes) after a resume).
  returned: when a copy was written
  type: int
  sample: 858993459
free_bytes:
  description: Free bytes in the folder of O(dest) before the copy.
  returned: success
  type: int
  sample: 107374182400
digests:
  description:
    - Hex digests of the source by algorithm, from the read that fed the copy.
    - Empty in check mode unless O(dest) exists or O(expected) is given.
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
    - Offset from which an interrupted copy was resumed (bytes below it were not written again),
      V(0) for a copy from scratch.
    - In check mode, where a resume would start.
  returned: success
  type: int
  sample: 268435456
seconds:
  description: Wall time of the copy (or of hashing the source when O(dest) already held it), fsync included.
  returned: success
  type: float
  sample: 6.52
mib_per_s:
  description: Logical size over RV(seconds), in MiB per second.
  returned: success
  type: float
  sample: 1256.3
verify_seconds:
  description: Wall time of reading the copy (or the existing O(dest)) back.
  returned: success
  type: float
  sample: 6.81
verify_carried_bytes:
  description:
    - Bytes of holes the read-back did not hash again. The copy has a hole there, which reads as zeros.
      The source had a hole there too. The hash state reached so far was equal to the source's at the
      hole's start, so the source's state at its end was taken over.
    - RV(dest_digests) still cover the copy's whole logical content.
    - V(null) when nothing was read back.
  returned: success
  type: int
  sample: 9663676416
msg:
  description: What was done, or in check mode what would be done.
  returned: success
  type: str
  sample: Copied /var/tmp/vm1.mem.raw to /evidence/case-42/vm1.mem.raw (268435456 bytes, 268435456 of data written), verified by reading it back.
mismatches:
  description: One sentence per digest that differs, with both digests.
  returned: failed on a mismatch
  type: list
  elements: str
  sample: ["/evidence/case-42/vm1.mem.raw: sha256 expected 9f86..., got e3b0..."]
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

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.running import at_work
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.copy import DEFAULT_MODE, copy_evidence
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import DEFAULT_BLOCK_SIZE, SUPPORTED_ALGORITHMS


def argument_spec():
    return dict(
        src=dict(type="path", required=True),
        dest=dict(type="path", required=True),
        algorithms=dict(type="list", elements="str", choices=list(SUPPORTED_ALGORITHMS), default=["sha256"]),
        expected=dict(type="dict"),
        force=dict(type="bool", default=False),
        progress_file=dict(type="path"),
        block_size=dict(type="int", default=DEFAULT_BLOCK_SIZE),
        mode=dict(type="raw", default="%04o" % DEFAULT_MODE),
        **journal_spec(required=False)
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    p = module.params
    try:
        journal = Journal(p["case_id"], p["journal_dir"]) if p["case_id"] and not module.check_mode else None
        with at_work(journal, "evidence_copy", "copy %s to %s" % (p["src"], p["dest"])):
            result = copy_evidence(p["src"], p["dest"], p["algorithms"], p["expected"], p["force"], p["block_size"],
                                   p["mode"], p["progress_file"], check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
