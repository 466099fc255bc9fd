#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: evidence_set_aside
short_description: Set aside the files of an incomplete acquisition run, kept and recorded, never changed
version_added: 0.3.0
description:
  - A killed acquisition run leaves files in the VM's evidence folder C(<case_dir>/<folder>) that no manifest records
    (a RAM image, C(.partial) copies and their C(.partial.json) sidecars, finished disk copies). They belong to a
    moment the teardown has ended, so a rerun of the case neither adopts nor deletes them; this module sets them
    aside before the VM is acquired again.
  - Every regular file under the folder is hashed with O(algorithms) (sha256 always; holes of sparse files are hashed
    as zeros without being read). Then a new folder C(<case_dir>/set-aside/<UTC stamp>/) is made (C(%Y%m%dT%H%M%SZ),
    with C(-2), C(-3)... when that name is taken) and receives, first, a C(SHA256SUMS) in GNU format (names relative
    to that folder, so C(cd <stamp> && sha256sum -c SHA256SUMS) checks it) and a record C(set-aside.json) (mode
    0640); only then the whole evidence folder is moved to C(<stamp>/<folder>) with one C(rename). The folders
    touched are fsynced.
  - Symbolic links, FIFOs, sockets and devices in the folder are never followed nor opened; they are recorded with
    their C(kind) (a link with its C(target)), without digests, and move with the folder.
  - The files are never opened for writing, modified or deleted; the only files written are the two new ones.
  - When the folder does not exist or holds no file (empty folders count as nothing), nothing is done and
    the module reports C(changed=false).
  - A folder on another filesystem than C(<case_dir>/set-aside) (a mount point), or files that change while they
    are hashed, are refused before anything is written.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  case_dir:
    description: Absolute path of the case folder on this host.
    type: path
    required: true
  folder:
    description:
      - The evidence folder to set aside, relative to O(case_dir) (for example V(lab-guest-1234abcd)); it may be
        nested (V(host1/vm1)).
      - Not absolute, no V(..), and not the C(set-aside) folder itself.
    type: str
    required: true
  reason:
    description: One sentence why the files are set aside; it is recorded and ends RV(msg).
    type: str
    required: true
  algorithms:
    description:
      - Hash algorithms to record for every regular file, among V(md5), V(sha1), V(sha256) and V(sha512).
      - V(sha256) is always computed (C(SHA256SUMS) needs it), also when it is not listed.
    type: list
    elements: str
    default: [sha256]
  run_id:
    description: Identifier of the run that sets the files aside; recorded as it is (V(null) without it).
    type: str
extends_documentation_fragment:
  - dfir.vmcollect.attributes
attributes:
  check_mode:
    support: full
    details: Lists the files that would be set aside (RV(set_aside) without digests) and RV(to); hashes, makes and
      moves nothing.
  diff_mode:
    support: none
notes:
  - Run it under the case lock (M(dfir.vmcollect.case_lock)) and after the teardown of the killed run, so that
    nothing writes to the folder while it is set aside.
  - The record C(set-aside.json) holds C(set_aside_at), C(reason), C(run_id), C(host), C(from), C(to) and
    C(files) (as RV(set_aside)); its paths are relative to O(case_dir).
  - When the rename fails after the record was written, the error says so and names the record; the evidence
    folder is then where it was.
seealso:
  - module: dfir.vmcollect.evidence_manifest
  - module: dfir.vmcollect.case_lock
"""

EXAMPLES = r"""
- name: Keep what a killed run left for this VM before acquiring it again
  dfir.vmcollect.evidence_set_aside:
    case_dir: /srv/evidence/case-42
    folder: lab-guest-1234abcd
    reason: The acquisition run of 2026-11-21 was killed before its manifest was written.
    algorithms: [sha256, md5]
    run_id: "{{ run_id }}"
  register: aside

- name: Say where the files went
  ansible.builtin.debug:
    msg: "{{ aside.msg }} (record: {{ aside.record }})"
  when: aside is changed
"""

RETURN = r"""
set_aside:
  description:
    - One entry per file set aside (or that would be in check mode), sorted by path; empty when nothing is set
      aside. Folders are not listed; they move with the evidence folder.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Where the file is now (would be in check mode), relative to O(case_dir).
      type: str
      sample: set-aside/20261121T233913Z/lab-guest-1234abcd/disks/vda.qcow2.partial
    was:
      description: Where the file was, relative to O(case_dir).
      type: str
      sample: lab-guest-1234abcd/disks/vda.qcow2.partial
    size:
      description: Its size in bytes (apparent size; of a link, the length of its target).
      type: int
    mtime:
      description: Its modification time, UTC ISO 8601 with nanoseconds and a C(Z).
      type: str
      sample: "2026-11-21T23:31:02.123456789Z"
    kind:
      description: V(file), V(symlink), V(fifo), V(socket), V(char_device), V(block_device) or V(other).
      type: str
    target:
      description: The target of a symbolic link (only for RV(set_aside[].kind=symlink)).
      type: str
    digests:
      description: "C({algorithm: hex digest}) of a regular file, sha256 always included; not in check mode and not
        for other kinds."
      type: dict
      sample: {"sha256": "5f1c8c2b3e6e3b1e9c0f2d1b9a8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c"}
to:
  description: Where the evidence folder went (would go in check mode), relative to O(case_dir); V(null) when nothing
    is set aside.
  returned: always
  type: str
  sample: set-aside/20261121T233913Z/lab-guest-1234abcd
record:
  description: Absolute path of the record C(set-aside.json) (that would be written in check mode); V(null) when
    nothing is set aside. C(SHA256SUMS) lies beside it.
  returned: always
  type: str
  sample: /srv/evidence/case-42/set-aside/20261121T233913Z/set-aside.json
bytes:
  description: Total size of the regular files set aside.
  returned: always
  type: int
  sample: 2147483648
msg:
  description:
    - "One sentence: C(set aside N file(s) (X bytes) of an incomplete run from <folder> to <to>: <reason>) (C(would
      set aside) in check mode), or why there was nothing to set aside."
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.aside import set_aside


def main():
    module = AnsibleModule(
        argument_spec=dict(
            case_dir=dict(type="path", required=True),
            folder=dict(type="str", required=True),
            reason=dict(type="str", required=True),
            algorithms=dict(type="list", elements="str", default=["sha256"]),
            run_id=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = set_aside(p["case_dir"], p["folder"], p["reason"], algorithms=p["algorithms"], run_id=p["run_id"],
                           check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
