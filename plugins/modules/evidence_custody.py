#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: evidence_custody
short_description: Append events to a case's hash-chained custody log, or verify its chain
version_added: 0.3.0
description:
  - A case's custody log (C(custody.jsonl)) holds one JSON line per event, from the plan to the last re-verification.
    Each record carries the SHA-256 of the line before it (C(prev)), its number (C(seq)), the UTC time, the host that
    wrote it, the module, a sentence, details, and who ran the job from where (O(controller)).
  - With O(state=appended), appends each of O(events) as one record chained to the last; lines are appended under
    an exclusive lock and fsynced, and nothing the file holds is ever rewritten.
  - A log whose chain is broken (a line changed, removed, inserted or reordered), or whose last line is incomplete,
    is refused with the number of the first bad line, and nothing is appended.
  - With O(state=verified), checks the chain and changes nothing.
  - Values of keys that name a secret (C(password), C(secret), C(token), C(chap)...) in O(controller) and in each
    event's details are written as C(<redacted>).
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  path:
    description: Absolute path of the custody log (C(<case folder>/custody.jsonl)).
    type: path
    required: true
  case_id:
    description: The case the log belongs to; a log of another case is refused.
    type: str
    required: true
  state:
    description: V(appended) appends O(events); V(verified) only checks the chain.
    type: str
    choices: [appended, verified]
    default: appended
  events:
    description: The events to append, in order.
    type: list
    elements: dict
    default: []
    suboptions:
      event:
        description: One lower-case word (C(plan), C(freeze), C(memory), C(copy), C(manifest), C(teardown), C(verify)...).
        type: str
        required: true
      module:
        description: The module or step that did what the event records.
        type: str
      summary:
        description: One sentence a person reads.
        type: str
      details:
        description: The facts, free form.
        type: dict
  controller:
    description:
      - Who ran the job and from where (user, host, ansible-core, run id, the command's extra vars, AWX job id, user
        and template); written into every record, with the collection's version added.
    type: dict
    default: {}
  create:
    description:
      - Create the log (and its missing folders) when it does not exist. With V(false), a missing log is left so and
        nothing is written (RV(missing)); a record of a run that never started the case makes no case folder.
    type: bool
    default: true
  continue_from:
    description:
      - A custody log this one continues. When O(path) does not exist yet, that log's chain is verified and its bytes
        are copied first, then O(events) follow; when it exists, it must begin with that log's bytes.
    type: path
  keep_copies:
    description:
      - Files copied byte for byte into the log's folder under their own names, after the records are appended (for
        example the volume's C(manifest.json) and C(SHA256SUMS), which the report and the signatures cover beside
        the log).
      - A copy that already holds the same bytes is left as it is; one that differs is replaced whole (written, then
        renamed, fsynced). Only with O(state=appended), and not when O(create=false) left a missing log so.
    type: list
    elements: path
    default: []
extends_documentation_fragment:
  - dfir.vmcollect.attributes
attributes:
  check_mode:
    support: full
    details: Checks the chain and reports the records it would append; writes nothing.
  diff_mode:
    support: none
notes:
  - "Check a log by hand: each line's C(prev) is C(sed -n '<seq-1>p' custody.jsonl | sha256sum) of the line before."
seealso:
  - module: dfir.vmcollect.evidence_manifest
  - module: dfir.vmcollect.evidence_record
"""

EXAMPLES = r"""
- name: Record the freeze in the case's custody log
  dfir.vmcollect.evidence_custody:
    path: /evidence/case-42/custody.jsonl
    case_id: case-42
    controller: "{{ acquire_controller }}"
    events:
      - event: freeze
        module: take_snapshot
        summary: The disks of vm1 were frozen by an atomic external snapshot.
        details:
          frozen_at: "2026-12-06T18:37:04Z"

- name: Check the chain of a case's custody log
  dfir.vmcollect.evidence_custody:
    path: /evidence/case-42/custody.jsonl
    case_id: case-42
    state: verified
"""

RETURN = r"""
path:
  description: The custody log.
  returned: always
  type: str
records:
  description: Number of records in the log after the call (or that it would hold, in check mode).
  returned: always
  type: int
first_seq:
  description: The C(seq) of the first record appended.
  returned: when O(state=appended)
  type: int
appended:
  description: Number of records appended.
  returned: when O(state=appended)
  type: int
copied:
  description: The copies of O(keep_copies) written (or that would be, in check mode); those already equal are left out.
  returned: when O(state=appended)
  type: list
  elements: str
imported:
  description: Whether the log of O(continue_from) was copied in first.
  returned: when O(state=appended)
  type: bool
last_sha256:
  description: SHA-256 of the last line (the C(prev) of the next record).
  returned: success
  type: str
intact:
  description: The chain holds (always true on success; a broken chain fails with RV(broken_at)).
  returned: when O(state=verified)
  type: bool
missing:
  description: The log did not exist and O(create=false) left it so; nothing was written.
  returned: when O(create=false) and the log does not exist
  type: bool
broken_at:
  description: The number of the first line that breaks the chain.
  returned: failure
  type: int
"""


from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import custody


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            case_id=dict(type="str", required=True),
            state=dict(type="str", choices=["appended", "verified"], default="appended"),
            events=dict(type="list", elements="dict", default=[], options=dict(
                event=dict(type="str", required=True),
                module=dict(type="str"),
                summary=dict(type="str"),
                details=dict(type="dict"),
            )),
            controller=dict(type="dict", default={}),
            continue_from=dict(type="path"),
            create=dict(type="bool", default=True),
            keep_copies=dict(type="list", elements="path", default=[]),
        ),
        supports_check_mode=True,
    )
    p = module.params
    result = {"changed": False}
    try:
        if p["state"] == "verified":
            result = custody.verify(p["path"])
            result["changed"] = False
        else:
            result = custody.append_keeping(p["path"], p["case_id"], p["events"], controller=p["controller"],
                                            continue_from=p["continue_from"], keep=p["keep_copies"],
                                            check_mode=module.check_mode, create=p["create"])
    except VmcollectError as exc:
        fail_module(module, exc, changed=result["changed"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
