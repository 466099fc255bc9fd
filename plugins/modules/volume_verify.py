#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: volume_verify
short_description: Verify the evidence on a collector's volume from its read-only backing file, and record it
version_added: 0.3.0
description:
  - What the collector does with each evidence volume once no initiator can write to it, in one module run - each step
    was a task of its own before, and each module run costs its start-up.
  - Mounts the volume's backing file read-only, as M(dfir.vmcollect.loop_mount) does (a read-only loop device; a VMFS
    volume through its FUSE reader), journaled, so O(ignore:loop_mount) with O(ignore:state=absent) or
    M(dfir.vmcollect.teardown) unmounts it.
  - Looks for the case manifest (C(manifest.json)) and the host's custody log (C(custody.jsonl)) in the case folder
    on the volume. Each must be a regular file if it is there; a link or anything else is refused.
  - Refuses a volume with neither a manifest nor the digests its host reported at the source (O(source_artifacts)), and
    a manifest whose artifacts or digests differ from those.
  - Hashes the whole backing file (the volume image as delivered, over its logical size) and then every artifact of the
    case against its digests at the source, in one run of the hashing engine of M(dfir.vmcollect.hash_verify). A
    mismatch fails, naming each file and both digests.
  - Only then appends a verification record to O(record) (one JSON line, as M(dfir.vmcollect.evidence_record) writes
    it; earlier records are kept).
  - A failure leaves the volume mounted read-only as journaled, for examination; nothing is written to O(record).
  - A killed playbook does not stop it, as it stops no module run. While it hashes it is journaled as at work, so the
    case's teardown stops it then, and nothing is recorded. Once the hashing has ended it records what it found, and
    ends - a teardown that comes later finds a record that is true, of a verification no custody log of that run names
    (the next run's custody log names its own record).
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
requirements:
  - vmfs6-tools (VMFS 6) or vmfs-tools (VMFS 5) on the host, for a VMFS volume only
options:
  image:
    description: Absolute path of the volume's backing file (see M(dfir.vmcollect.loop_mount) for what it may hold).
    type: path
    required: true
  mountpoint:
    description: Absolute path of an empty or new folder to mount it on.
    type: path
    required: true
  case_subdir:
    description: The case folder on the volume, relative to its root (an ESXi host's C(<case id>) folder on its
      datastore); empty for the root.
    type: str
    default: ''
  source_artifacts:
    description:
      - The artifacts and their digests as the host reported them when it took them (the C(artifacts) object of the
        manifest it wrote at the source - name to C(path), relative to the case folder, and C(digests)). These are what
        every file is checked against; the manifest on the volume must list the same.
      - Omitted, the manifest on the volume is what the files are checked against (a volume verified again later).
    type: dict
  algorithms:
    description: Algorithms to hash with, besides those the digests name.
    type: list
    elements: str
    choices: [md5, sha1, sha256, sha512]
    default: [sha256]
  record:
    description: Absolute path of the verification record file (JSON lines), created with its folder if missing.
    type: path
    required: true
  volume:
    description: Whose volume it is (the host that wrote it), for the messages.
    type: str
    required: true
  verified_on:
    description: The name of the host verifying, as the record gives it.
    type: str
    required: true
  progress_file:
    description:
      - Absolute path of a JSON file the module rewrites (atomically, at most once a second) while it hashes - the
        phase (V(hash 1/3) is the backing file, then each artifact), bytes done and to do, rate and ETA.
      - The module's action plugin gives one of its own and prints a line from it every C(vmcollect_progress_interval)
        seconds (default 15, V(0) turns it off) while the run lasts, so an idle timeout (AWX) sees the run at work.
    type: path
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.journal
attributes:
  check_mode:
    support: full
    details: Reports what would be mounted, hashed and recorded, and changes nothing.
  diff_mode:
    support: none
seealso:
  - module: dfir.vmcollect.loop_mount
  - module: dfir.vmcollect.hash_verify
  - module: dfir.vmcollect.evidence_record
"""

EXAMPLES = r"""
- name: Verify the volume kvm1 wrote, against the digests kvm1 reported at the source
  dfir.vmcollect.volume_verify:
    case_id: case-42
    image: /var/lib/dfir-vmcollect/collector/case-42/kvm1.img
    mountpoint: /var/lib/dfir-vmcollect/verify/case-42/kvm1
    source_artifacts: "{{ hostvars['kvm1'].collector_artifacts_at_source }}"
    record: /var/lib/dfir-vmcollect/collector/case-42/kvm1.img.verified.jsonl
    volume: kvm1
    verified_on: "{{ inventory_hostname }}"
  register: verified
"""

RETURN = r"""
case_dir:
  description: Where the case folder lies on the mounted volume.
  returned: always
  type: str
mount:
  description: What mounting returned (see M(dfir.vmcollect.loop_mount)'s return values).
  returned: always
  type: dict
plan:
  description: What the run does (or would do, in check mode).
  returned: always
  type: list
  elements: str
manifest:
  description: The case manifest on the volume, as read, or V(null) where there is none.
  returned: success, not in check mode
  type: dict
manifest_found:
  description: Whether the case folder holds C(manifest.json).
  returned: success, not in check mode
  type: bool
custody_found:
  description: Whether the case folder holds the host's custody log, C(custody.jsonl).
  returned: success, not in check mode
  type: bool
volume_hash:
  description: The backing file's hash result (C(path), C(size), C(digests) and the hashing engine's counters).
  returned: success, not in check mode
  type: dict
files:
  description: Each artifact's hash result, verified against its digests at the source (C(verified) is V(true)).
  returned: success, not in check mode
  type: list
  elements: dict
record:
  description: What appending the verification record returned - C(line) (its 1-based number), C(sha256) (of that
    line with its newline), C(record) (as written, with C(recorded_at)), C(created).
  returned: success, not in check mode
  type: dict
mismatches:
  description: One sentence per digest that differs, with both digests.
  returned: failed on a mismatch
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.copy import progress_file_for
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import SUPPORTED_ALGORITHMS
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi.verify import verify_volume


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path", required=True),
            mountpoint=dict(type="path", required=True),
            case_subdir=dict(type="str", default=""),
            source_artifacts=dict(type="dict"),
            algorithms=dict(type="list", elements="str", choices=list(SUPPORTED_ALGORITHMS), default=["sha256"]),
            record=dict(type="path", required=True),
            volume=dict(type="str", required=True),
            verified_on=dict(type="str", required=True),
            progress_file=dict(type="path"),
            **journal_spec()
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        journal = Journal(p["case_id"], p["journal_dir"])
        report = progress_file_for(p["progress_file"], p["image"], None, module.check_mode)
        result = verify_volume(journal, p["image"], p["mountpoint"], p["record"], p["volume"], p["verified_on"],
                               subdir=p["case_subdir"], source_artifacts=p["source_artifacts"],
                               algorithms=p["algorithms"], check_mode=module.check_mode,
                               progress=report.report if report is not None else None)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
