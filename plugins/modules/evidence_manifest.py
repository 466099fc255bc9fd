#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: evidence_manifest
short_description: Record acquired evidence in the case manifest and its SHA256SUMS
version_added: 0.1.0
description:
  - Writes C(manifest.json) and C(SHA256SUMS) in the case folder on the host that holds the
    evidence. The manifest records the case and examiner, and per artifact its path (relative to
    the case folder), size, digests at the source and at the destination, acquisition method,
    guest pause, source identity and UTC times, plus the tools and versions used and events such
    as the undo journal's records.
  - C(SHA256SUMS) is accepted by C(sha256sum -c) run inside the case folder, and by
    M(dfir.vmcollect.hash_verify) as O(dfir.vmcollect.hash_verify#module:checksum_file).
  - Merges with an existing manifest of the same case (an artifact with the same path replaces
    the old entry); refuses a case folder that holds another case. Both files are written
    atomically with fsync. Nothing is written when nothing would change.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  case_dir:
    description: Absolute path of the case folder (must exist); artifacts must lie inside it.
    type: path
    required: true
  case_id:
    description: Case identifier (letters, digits, V(.), V(_), V(-)).
    type: str
    required: true
  examiner:
    description: Who acquired the evidence.
    type: str
  description:
    description: Free text about the case.
    type: str
  artifacts:
    description:
      - Artifacts to record. Each needs C(path) (absolute, inside O(case_dir)); other keys are kept
        as given (for example C(kind), C(size), C(digests), C(dest_digests), C(method), C(pause_ms),
        C(source), C(acquired_at)).
      - C(SHA256SUMS) lists the sha256 of C(dest_digests), or of C(digests) if there is none.
    type: list
    elements: dict
    default: []
  tools:
    description: Tool names and versions used (the collection's own version is always added).
    type: dict
    default: {}
  events:
    description: Events to append (journal records, notes); duplicates are not added twice.
    type: list
    elements: dict
    default: []
  custody:
    description:
      - Records to append to the case's custody log (C(custody.jsonl) in O(case_dir)) once the manifest is written,
        in the same task, as M(dfir.vmcollect.evidence_custody) appends them (each chained to the last by SHA-256).
      - Nothing is appended when the manifest cannot be written.
    type: dict
    suboptions:
      events:
        description: The events, each with C(event) (one lower-case word), C(module), C(summary) and C(details).
        type: list
        elements: dict
        required: true
      controller:
        description: Who ran the job from where (lookup C(dfir.vmcollect.controller)), in every record.
        type: dict
        default: {}
extends_documentation_fragment:
  - dfir.vmcollect.attributes
attributes:
  check_mode:
    support: full
    details: Returns the manifest as it would be and writes nothing.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Record a copied disk image
  dfir.vmcollect.evidence_manifest:
    case_dir: /evidence/case-42
    case_id: case-42
    examiner: J. Doe
    artifacts:
      - path: /evidence/case-42/vm1/vda.qcow2
        kind: disk
        size: "{{ copied.size }}"
        digests: "{{ copied.digests }}"
        dest_digests: "{{ copied.dest_digests }}"
        method: external disk-only snapshot + evidence_copy
"""

RETURN = r"""
manifest:
  description: The manifest as written (or as it would be, in check mode).
  returned: always
  type: dict
paths:
  description: Paths of C(manifest.json) and C(SHA256SUMS).
  returned: always
  type: dict
  contains:
    manifest:
      description: The manifest file.
      type: str
    sha256sums:
      description: The checksum file.
      type: str
custody:
  description: What was appended to the custody log (as M(dfir.vmcollect.evidence_custody) returns it).
  returned: when O(custody) has events
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import custody
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.manifest import update


def main():
    module = AnsibleModule(
        argument_spec=dict(
            case_dir=dict(type="path", required=True),
            case_id=dict(type="str", required=True),
            examiner=dict(type="str"),
            description=dict(type="str"),
            artifacts=dict(type="list", elements="dict", default=[]),
            tools=dict(type="dict", default={}),
            events=dict(type="list", elements="dict", default=[]),
            custody=dict(type="dict", options=dict(
                events=dict(type="list", elements="dict", required=True),
                controller=dict(type="dict", default={}),
            )),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = update(p["case_dir"], p["case_id"], examiner=p["examiner"], description=p["description"],
                        artifacts=p["artifacts"], tools=p["tools"], events=p["events"], check_mode=module.check_mode)
        if p["custody"] and p["custody"]["events"]:
            result["custody"] = custody.append(os.path.join(os.path.dirname(result["paths"]["manifest"]), custody.NAME),
                                               p["case_id"], p["custody"]["events"],
                                               controller=p["custody"]["controller"], check_mode=module.check_mode)
            result["changed"] = result["changed"] or result["custody"]["changed"]
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
