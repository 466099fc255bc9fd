#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: evidence_sign
short_description: Sign a case's records with the examiner's SSH key, or verify their signatures
version_added: 0.2.0
description:
  - With O(state=signed), signs each file of O(files) (the case's C(manifest.json), C(SHA256SUMS), C(custody.jsonl),
    C(report.html), C(report.txt)) with C(ssh-keygen -Y sign) in the namespace O(namespace), and writes the
    signature beside it as C(<file>.sig). It also writes C(examiner.pub) (the public key) and C(allowed_signers)
    (one line, C(<principal> namespaces="<namespace>" <key type> <key>)) in O(dir), so that C(ssh-keygen -Y verify)
    alone verifies the case (RV(command)).
  - A signature that already verifies for the file's current bytes with this key and principal is left as it is;
    one that does not (the custody log grew since it was signed) is replaced. Each signature is made in a private
    temporary folder, checked against the file, and then put in place atomically.
  - With O(state=signed) and no O(files), nothing is signed; it reads the key (RV(fingerprint), RV(key_type),
    RV(allowed_signers_line), RV(command)) and, unless in check mode, proves that the key signs without a prompt by
    signing a probe in a private temporary folder, checked there and removed (RV(probed)). Nothing is written
    elsewhere. This refuses a key that cannot sign before anything is acquired.
  - With O(state=verified), runs C(ssh-keygen -Y verify) for each file against O(dir)/C(allowed_signers) and fails
    naming every file whose signature is missing or does not verify, with what ssh-keygen said. It only reads.
  - With O(state=placed), puts signatures made elsewhere (O(signatures), what O(state=signed) returned in
    RV(content) on the controller) beside the records O(files) in O(dir), then verifies every record there as
    O(state=verified) does. Each given signature is first checked against the record's bytes where it lies; one that
    does not verify (the record changed since it was read to be signed) fails the task before anything is written.
    A signature already there that verifies with the given C(allowed_signers) is kept. C(examiner.pub) and
    C(allowed_signers) are written when missing; a folder whose own name another signer or key is refused. Files
    are written with mode C(0640), each whole, then renamed.
  - C(ssh-keygen) runs without a terminal, with stdin closed and no askpass program, within O(timeout). A key that
    needs a passphrase is used only through C(ssh-agent) (C(SSH_AUTH_SOCK)); without one, the module fails at once
    and says so, it never waits for a prompt.
  - Meant to run where the key is (the controller, with C(delegate_to=localhost)) on copies of the records for
    O(state=signed), and where the case lies for O(state=verified).
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  state:
    description:
      - V(signed) signs the files (and writes C(examiner.pub) and C(allowed_signers)); V(verified) verifies their
        signatures; V(placed) puts signatures made elsewhere beside them and verifies them.
    type: str
    choices: [signed, verified, placed]
    default: signed
  files:
    description:
      - Absolute paths of the records to sign or verify (not their C(.sig) files).
      - With O(state=signed), an empty list signs nothing and only proves the key signs (see the description).
      - With O(state=placed), records of one folder (the signatures are named by the records' file names).
    type: list
    elements: path
    required: true
  signatures:
    description:
      - With O(state=placed), the files to put in O(dir), name to text, as O(state=signed) returns them in
        RV(content) - C(<record>.sig) for each record of O(files) that has no signature there yet,
        C(examiner.pub) and C(allowed_signers). Signatures are not secret.
      - Any other name is refused.
    type: dict
  dir:
    description:
      - The folder of C(examiner.pub) and C(allowed_signers).
      - Default the folder of the first file of O(files).
    type: path
  key:
    description:
      - Path of the examiner's SSH key, for O(state=signed).
      - A private key without a passphrase, or a public key (C(.pub)) whose private half is in C(ssh-agent).
      - A private key with a passphrase works only when an agent holds it.
      - Only the path is passed to C(ssh-keygen), never the key's material.
    type: path
  principal:
    description:
      - The examiner as named in C(allowed_signers), an e-mail address or a name (with spaces it is quoted there).
      - No line break, double quote, comma, C(*), C(?), or leading C(!) or C(#).
      - Required with O(state=signed). With O(state=verified), default the only principal C(allowed_signers) names;
        with O(state=placed), the one the given C(allowed_signers) names (if given, it must be that one).
    type: str
  namespace:
    description:
      - The signature namespace (C(ssh-keygen -n)); a signature made in another namespace does not verify.
    type: str
    default: dfir.vmcollect@evidence
  timeout:
    description: Seconds each C(ssh-keygen) run may take before it is stopped and the module fails.
    type: float
    default: 60
extends_documentation_fragment:
  - dfir.vmcollect.attributes
attributes:
  check_mode:
    support: full
    details:
      - With O(state=signed), reports which files it would sign or sign again (RV(files)) and which of
        C(examiner.pub) and C(allowed_signers) it would write (RV(written)), and writes nothing.
      - With O(state=verified), it only reads and runs in full.
      - With O(state=placed), it checks each given signature against its record and reports what it would write
        (RV(files), RV(written)), and writes nothing; RV(verified) is then V(null).
  diff_mode:
    support: none
notes:
  - "A case is verified with ssh-keygen alone, in the case folder, with the principal of its C(allowed_signers)
    (RV(command) is this line for the case):
    C(for s in *.sig; do printf '%s: ' \"${s%.sig}\"; ssh-keygen -Y verify -f allowed_signers -I examiner@example.org
    -n dfir.vmcollect@evidence -s \"$s\" < \"${s%.sig}\" 2>&1 || echo \"FAILED: ${s%.sig}\"; done)"
  - C(allowed_signers) and C(examiner.pub) travel with the case, so whoever can rewrite the case can sign it anew
    with a key of their own. Compare RV(fingerprint) with the examiner's key fingerprint kept elsewhere (the
    custody log's C(sign) record, the examiner's own note).
  - A case whose C(allowed_signers) or C(examiner.pub) names another key or principal is not signed again (nothing
    is written); remove them and the C(.sig) files first to sign it anew.
  - Needs C(ssh-keygen) of OpenSSH 8.1 or later where the module runs.
seealso:
  - module: dfir.vmcollect.evidence_manifest
  - module: dfir.vmcollect.hash_verify
  - name: ssh-keygen(1)
    description: The OpenSSH tool that makes and verifies the signatures (C(-Y sign), C(-Y verify)).
    link: https://man.openbsd.org/ssh-keygen.1
"""

EXAMPLES = r"""
- name: Sign the case's records on the controller, with the examiner's key held by ssh-agent
  dfir.vmcollect.evidence_sign:
    files:
      - /srv/cases/case-42/manifest.json
      - /srv/cases/case-42/SHA256SUMS
      - /srv/cases/case-42/custody.jsonl
    key: ~/.ssh/id_ed25519.pub
    principal: jane.doe@example.org
  delegate_to: localhost
  register: signed

- name: Verify them where the case lies
  dfir.vmcollect.evidence_sign:
    state: verified
    files:
      - /evidence/case-42/manifest.json
      - /evidence/case-42/SHA256SUMS
      - /evidence/case-42/custody.jsonl

- name: Before anything is acquired, prove the key signs without a prompt (nothing is written)
  dfir.vmcollect.evidence_sign:
    files: []
    key: ~/.ssh/id_ed25519.pub
    principal: jane.doe@example.org
  delegate_to: localhost

- name: Put the signatures made on the controller (copies of the records fetched there) beside the records
  dfir.vmcollect.evidence_sign:
    state: placed
    files:
      - /evidence/case-42/manifest.json
      - /evidence/case-42/SHA256SUMS
      - /evidence/case-42/custody.jsonl
    signatures: "{{ signed.content }}"
"""

RETURN = r"""
files:
  description:
    - One entry per file, in the order given.
    - Also returned when the task fails because a signature does not verify.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The record.
      type: str
      sample: /srv/cases/case-42/custody.jsonl
    signature:
      description: Its signature file.
      type: str
      sample: /srv/cases/case-42/custody.jsonl.sig
    action:
      description:
        - With O(state=signed) or O(state=placed), V(signed) (it had no signature), V(replaced) (its signature did
          not verify for its current bytes with this key) or V(kept).
      type: str
      returned: when O(state=signed) or O(state=placed)
      sample: replaced
    changed:
      description: With O(state=signed) or O(state=placed), whether its signature was (or in check mode would be)
        written.
      type: bool
      returned: when O(state=signed) or O(state=placed)
    reason:
      description: With O(state=signed), what C(ssh-keygen -Y verify) said of the signature it had, or V(null).
      type: str
      returned: when O(state=signed)
      sample: "Signature verification failed: incorrect signature Could not verify signature."
    verified:
      description: With O(state=verified) or O(state=placed) (not in check mode), whether its signature verified.
      type: bool
      returned: when O(state=verified) or O(state=placed)
    message:
      description: With O(state=verified) or O(state=placed) (not in check mode), what C(ssh-keygen -Y verify) said
        (or that a file is missing).
      type: str
      returned: when O(state=verified) or O(state=placed)
      sample: 'Good "dfir.vmcollect@evidence" signature for jane.doe@example.org with ED25519 key SHA256:V/7PLI...'
principal:
  description: The principal signed or verified for.
  returned: always
  type: str
  sample: jane.doe@example.org
namespace:
  description: The signature namespace.
  returned: always
  type: str
  sample: dfir.vmcollect@evidence
fingerprint:
  description:
    - SHA-256 fingerprint of the examiner's key as C(ssh-keygen -l) prints it; with O(state=verified), of the key
      C(allowed_signers) names for the principal (V(null) if it names none or several).
  returned: always
  type: str
  sample: SHA256:V/7PLIcWPHwSp4oETeRaeyh7zutJ2RlFrSylJ7bby/0
key_type:
  description: The key's type as C(ssh-keygen -l) names it.
  returned: when O(state=signed)
  type: str
  sample: ED25519
allowed_signers:
  description: Path of the C(allowed_signers) file.
  returned: unless O(state=signed) without O(files) (no folder is involved then)
  type: str
  sample: /srv/cases/case-42/allowed_signers
allowed_signers_line:
  description: Its line.
  returned: when O(state=signed)
  type: str
  sample: jane.doe@example.org namespaces="dfir.vmcollect@evidence" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKlJ...
examiner_pub:
  description: Path of the C(examiner.pub) file.
  returned: when O(state=signed) with O(files)
  type: str
  sample: /srv/cases/case-42/examiner.pub
written:
  description: Which of C(allowed_signers) and C(examiner.pub) were (or in check mode would be) written.
  returned: when O(state=signed) or O(state=placed)
  type: list
  elements: str
content:
  description:
    - With O(state=signed) and O(files), not in check mode, the text of each C(<record>.sig), of C(examiner.pub) and
      of C(allowed_signers) now in O(dir), by name, for O(signatures) of O(state=placed) where the records lie.
  returned: when O(state=signed) with O(files), not in check mode
  type: dict
  sample: {"manifest.json.sig": "-----BEGIN SSH SIGNATURE-----\n...", "examiner.pub": "ssh-ed25519 AAAA... jane",
           "allowed_signers": "jane namespaces=\"dfir.vmcollect@evidence\" ssh-ed25519 AAAA...\n"}
probed:
  description: With O(state=signed) and no O(files), whether a probe was signed (V(false) in check mode).
  returned: when O(state=signed) without O(files)
  type: bool
verified:
  description:
    - With O(state=verified) or O(state=placed), whether every signature verified (with O(state=placed) in check
      mode, V(null), as nothing was written to verify).
  returned: when O(state=verified) or O(state=placed)
  type: bool
failures:
  description: One sentence per file whose signature is missing or did not verify.
  returned: failed on a signature that does not verify
  type: list
  elements: str
command:
  description: The shell line that verifies every C(.sig) of the case folder with C(ssh-keygen) alone (run it there).
  returned: always
  type: str
  sample: >-
    for s in *.sig; do printf '%s: ' "${s%.sig}"; ssh-keygen -Y verify -f allowed_signers -I jane.doe@example.org
    -n dfir.vmcollect@evidence -s "$s" < "${s%.sig}" 2>&1 || echo "FAILED: ${s%.sig}"; done
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.signing import (
    ALLOWED_SIGNERS_NAME,
    DEFAULT_TIMEOUT,
    NAMESPACE,
    place,
    probe,
    require_verified,
    sign,
    verify,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["signed", "verified", "placed"], default="signed"),
            files=dict(type="list", elements="path", required=True),
            signatures=dict(type="dict"),
            dir=dict(type="path"),
            key=dict(type="path", no_log=False),
            principal=dict(type="str"),
            namespace=dict(type="str", default=NAMESPACE),
            timeout=dict(type="float", default=DEFAULT_TIMEOUT),
        ),
        required_if=[("state", "signed", ("key", "principal")), ("state", "placed", ("signatures",))],
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["state"] == "signed" and not p["files"]:
            result = probe(p["key"], p["principal"], p["namespace"], check_mode=module.check_mode,
                           timeout=p["timeout"])
        elif p["state"] == "placed":
            result = place(p["files"], p["signatures"], p["principal"], p["namespace"], folder=p["dir"],
                           check_mode=module.check_mode, timeout=p["timeout"])
        elif p["state"] == "signed":
            result = sign(p["files"], p["key"], p["principal"], p["namespace"], folder=p["dir"],
                          check_mode=module.check_mode, timeout=p["timeout"])
        else:
            folder = p["dir"] or (os.path.dirname(p["files"][0]) if p["files"] else "")
            result = require_verified(verify(p["files"], os.path.join(folder, ALLOWED_SIGNERS_NAME), p["principal"],
                                             p["namespace"], timeout=p["timeout"]))
            result["changed"] = False
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
