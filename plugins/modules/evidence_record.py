#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: evidence_record
short_description: Append one record to a JSON-lines file, never replacing what it holds
version_added: 0.2.0
description:
  - Appends O(record) as one line of JSON (keys sorted, ASCII) to the file O(path). What the file holds already is
    never rewritten, truncated or moved; a second record (a second verification of the same evidence) is a line
    beside the first.
  - The line is written with C(O_APPEND) under an exclusive lock (C(flock)) and the file is fsynced before the
    module returns; when it creates the file or folders, their folders are fsynced too.
  - Adds C(recorded_at), the UTC time in ISO 8601 with a C(Z), unless the record has one.
  - A file whose last line is not complete (no newline at its end) is refused and left as it is.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  path:
    description: Absolute path of the JSON-lines file.
    type: path
    required: true
  record:
    description: The record, one JSON object.
    type: dict
    required: true
  create:
    description:
      - Create the file (mode 0640) and its missing folders (mode 0750) when they do not exist.
      - With V(false), a missing file is an error.
    type: bool
    default: false
extends_documentation_fragment:
  - dfir.vmcollect.attributes
attributes:
  check_mode:
    support: full
    details: Reports the line it would append (RV(line), RV(sha256), RV(record)) and writes nothing.
  diff_mode:
    support: none
notes:
  - Every run appends a line, so the module always reports C(changed=true).
  - "RV(sha256) is the digest of the line with its newline: C(sed -n '<line>p' <path> | sha256sum) prints it."
seealso:
  - module: dfir.vmcollect.evidence_manifest
"""

EXAMPLES = r"""
- name: Keep the verification beside the LUN's backing file (a second verification adds a line)
  dfir.vmcollect.evidence_record:
    path: /srv/collector/case-42/kvm1.img.verified.json
    create: true
    record:
      case_id: case-42
      backing_file: /srv/collector/case-42/kvm1.img
      sha256: "{{ volume_hash.files[0].digests.sha256 }}"
      artifacts_verified: "{{ verified | length }}"
  register: recorded
"""

RETURN = r"""
line:
  description: Number (from 1) of the line appended, or that would be appended in check mode.
  returned: always
  type: int
  sample: 2
sha256:
  description: sha256 of the line appended, newline included.
  returned: always
  type: str
  sample: 5f1c8c2b3e6e3b1e9c0f2d1b9a8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c
record:
  description: The record as written, with RV(record.recorded_at).
  returned: always
  type: dict
  contains:
    recorded_at:
      description: UTC time of the record, unless the record had one.
      type: str
      sample: "2026-11-21T23:39:13.123456Z"
bytes:
  description: Length of the line in bytes, newline included.
  returned: always
  type: int
created:
  description: Whether the file was (or in check mode would be) created.
  returned: always
  type: bool
created_folders:
  description: Folders that were (or would be) created, outermost first.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.record import append_record


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            record=dict(type="dict", required=True),
            create=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = append_record(p["path"], p["record"], create=p["create"], check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
