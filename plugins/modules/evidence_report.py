#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: evidence_report
short_description: Write the case report a person reads (report.html and its plain-text twin report.txt)
version_added: 0.2.0
description:
  - Reads the case folder's C(manifest.json) and C(custody.jsonl) (and the collector's verification records named
    in O(verification_files)) and writes two reports of the same facts beside them.
  - C(report.html) is one self-contained file (its style inline, no script, nothing loaded from elsewhere) that
    prints on A4; C(report.txt) is plain text of at most 100 columns.
  - "Both say: the case fields; who ran the collection, when and from where (the custody records' controller:
    user, host, ansible-core and collection versions, run id, AWX job, extra vars) and the hosts involved; each VM's
    artifacts with their sizes, formats and digests at the source, on arrival and on the collector (or that they
    were not verified on a collector), the logical digest of each disk and how to open it, E01 images, the RAM's
    method and guest pause; every host change and its undo; the tool versions; the signature; the custody log
    with the state of its hash chain; and an integrity summary at the top."
  - The custody log's hash chain is checked on its raw lines; a broken link is shown in red on the record where it
    breaks.
  - Every value from the records is shown as text (HTML-escaped; control and bidirectional-text characters as
    escapes), so a record cannot add markup or lines to the report.
  - The reports are made from the records only, so the same records give the same bytes; the time they show is
    the last custody record's. Each file is written atomically, and only when its content changes.
  - The records are only read. The reports never replace a record of the case (C(manifest.json), C(custody.jsonl),
    C(SHA256SUMS)).
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  case_dir:
    description: Absolute path of the case folder (it holds C(manifest.json) and, once written, C(custody.jsonl)).
    type: path
    required: true
  verification_files:
    description:
      - The collector's verification records (JSON lines, one record per verification, as the collector role
        writes them beside each backing file as C(<backing file>.verified.jsonl)).
      - Without them the report says that the artifacts were not verified on a collector.
    type: list
    elements: path
    default: []
  signing:
    description:
      - What the signing step signed. Without it the report says in a banner that the case is unsigned.
      - "Keys read: C(principal), C(fingerprint) (of the signing key), C(namespace), C(files) (names of the signed
        files) and C(verify_command) (the one-line command that checks the signatures in the case folder); other
        keys are shown as they are."
      - The report shows what the signing step says; it does not check the signatures itself.
    type: dict
  out_dir:
    description: Folder to write the reports in (it must exist). Defaults to O(case_dir).
    type: path
  names:
    description: File names of the two reports in O(out_dir).
    type: dict
    default: {}
    suboptions:
      html:
        description: Name of the HTML report.
        type: str
        default: report.html
      txt:
        description: Name of the plain-text report.
        type: str
        default: report.txt
  custody:
    description:
      - Records to append to the case's custody log (C(custody.jsonl) in O(case_dir)) before the reports are written,
        in the same task, as M(dfir.vmcollect.evidence_custody) appends them (each chained to the last by SHA-256), so
        that the reports show them. Nothing is written when they cannot be appended.
    type: dict
    suboptions:
      case_id:
        description: The case the log belongs to; a log of another case is refused.
        type: str
        required: true
      events:
        description: The events, each with C(event) (one lower-case word), C(module), C(summary) and C(details).
        type: list
        elements: dict
        required: true
      controller:
        description: Who ran the job from where (lookup C(dfir.vmcollect.controller)), in every record.
        type: dict
        default: {}
      continue_from:
        description: A custody log this one continues (see M(dfir.vmcollect.evidence_custody)'s O(ignore:continue_from)).
        type: path
      keep_copies:
        description: Files copied byte for byte into O(case_dir) under their own names once the records are appended
          (see M(dfir.vmcollect.evidence_custody)'s O(ignore:keep_copies)).
        type: list
        elements: path
        default: []
extends_documentation_fragment:
  - dfir.vmcollect.attributes
attributes:
  check_mode:
    support: full
    details: Renders both reports and returns their paths and digests, and whether each would change; writes nothing.
  diff_mode:
    support: none
notes:
  - A report that is signed and then written again (the records grew) must be signed again.
seealso:
  - module: dfir.vmcollect.evidence_manifest
  - module: dfir.vmcollect.evidence_record
"""

EXAMPLES = r"""
- name: Write the case report beside the records
  dfir.vmcollect.evidence_report:
    case_dir: /srv/evidence/case-42
    verification_files:
      - /srv/collector/case-42/kvm1.img.verified.jsonl
    signing:
      principal: examiner@example.org
      fingerprint: "SHA256:9Zx0mJk1Qe4l0cI0m7Rr2a7nQ0bq3b8K3wWw3f7cX1c"
      namespace: dfir.vmcollect
      files: [manifest.json, SHA256SUMS, custody.jsonl]
      verify_command: >-
        for f in manifest.json SHA256SUMS custody.jsonl; do ssh-keygen -Y verify -f allowed_signers
        -I examiner@example.org -n dfir.vmcollect -s $f.sig < $f || exit 1; done
  register: case_report

- name: Stop when the custody chain is broken
  ansible.builtin.assert:
    that: case_report.integrity.chain_intact
    fail_msg: "The custody log of case-42 is broken: see {{ case_report.html.path }}."
"""

RETURN = r"""
html:
  description: The HTML report.
  returned: always
  type: dict
  contains:
    path:
      description: Its absolute path.
      type: str
      sample: /srv/evidence/case-42/report.html
    sha256:
      description: sha256 of its content (as written, or as it would be in check mode).
      type: str
    bytes:
      description: Its size in bytes.
      type: int
    changed:
      description: Whether its content changed (or would in check mode).
      type: bool
txt:
  description: The plain-text report, with the same keys as RV(html).
  returned: always
  type: dict
integrity:
  description: The integrity summary at the top of the reports, as booleans.
  returned: always
  type: dict
  contains:
    artifacts:
      description: Number of artifacts in the manifest.
      type: int
    source:
      description: Every artifact has digests taken at the source.
      type: bool
    arrival:
      description: Every artifact's digests on arrival match those at the source.
      type: bool
    collector:
      description: Every artifact was verified on a collector with the same digests.
      type: bool
    e01:
      description: Every E01 image's media digest matches its disk's logical digest (only when there is one).
      type: bool
      returned: when the case holds E01 images
    host_restored:
      description: Every recorded host change was undone.
      type: bool
    chain_intact:
      description: The custody log's hash chain is intact (false with no custody log).
      type: bool
    signed:
      description: Whether O(signing) was given.
      type: bool
custody:
  description: What was appended to the custody log and copied beside it (as M(dfir.vmcollect.evidence_custody)
    returns it).
  returned: when O(custody) is given
  type: dict
as_of:
  description: The time the reports show (the last custody record's, or the manifest's last update).
  returned: always
  type: str
  sample: "2026-12-06T18:37:15.983029Z (the last custody record)"
msg:
  description: What was written, or would be in check mode.
  returned: always
  type: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import custody
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.report import write_reports


def main():
    module = AnsibleModule(
        argument_spec=dict(
            case_dir=dict(type="path", required=True),
            verification_files=dict(type="list", elements="path", default=[]),
            signing=dict(type="dict"),
            out_dir=dict(type="path"),
            names=dict(type="dict", default={}, options=dict(
                html=dict(type="str", default="report.html"),
                txt=dict(type="str", default="report.txt"),
            )),
            custody=dict(type="dict", options=dict(
                case_id=dict(type="str", required=True),
                events=dict(type="list", elements="dict", required=True),
                controller=dict(type="dict", default={}),
                continue_from=dict(type="path"),
                keep_copies=dict(type="list", elements="path", default=[]),
            )),
        ),
        supports_check_mode=True,
    )
    p = module.params
    appended = None
    try:
        c = p["custody"]
        if c:
            appended = custody.append_keeping(os.path.join(p["case_dir"], custody.NAME), c["case_id"], c["events"],
                                              controller=c["controller"], continue_from=c["continue_from"],
                                              keep=c["keep_copies"], check_mode=module.check_mode)
        result = write_reports(p["case_dir"], verification_files=p["verification_files"], signing=p["signing"],
                               out_dir=p["out_dir"], names=p["names"], check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=bool(appended and appended["changed"]))
    if appended is not None:
        result["custody"] = appended
        result["changed"] = result["changed"] or appended["changed"]
    files = [result[k]["path"] for k in ("html", "txt") if result[k]["changed"]]
    if not files:
        result["msg"] = "%s and %s are up to date." % (result["html"]["path"], result["txt"]["path"])
    elif module.check_mode:
        result["msg"] = "Check mode: would write %s; nothing was written." % " and ".join(files)
    else:
        result["msg"] = "Wrote %s." % " and ".join(files)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
