#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: datastore_upload
short_description: Write the case's records (manifest, SHA256SUMS) onto the evidence datastore, and read them back
version_added: 0.2.0
description:
  - Writes small local files (the case's C(manifest.json) and C(SHA256SUMS)) beside the copies that
    M(dfir.vmcollect.vmkfstools_clone) made on the evidence datastore, so the collector's LUN holds the whole case
    folder - the evidence and the record of it.
  - Each file is sent with C(PUT /folder/<path>?dcPath=&dsName=) and the session cookie, then read back with a C(GET);
    its SHA-256 must equal the local file's.
  - Writes only onto a datastore that holds no virtual machine (an evidence datastore), and only into a folder that
    exists there; nothing is written anywhere else.
  - Idempotent - a destination that already holds the same bytes is left as it is (C(changed=false)). A different file
    there is refused unless O(replace=true).
  - Not journaled - what it writes is a record of the case on the case's own volume, kept as evidence; there is
    nothing on the host to restore.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  files:
    description: The files to write.
    type: list
    elements: dict
    required: true
    suboptions:
      src:
        description: Absolute path of the local file (on the host that runs the module), at most 64 MiB.
        type: path
        required: true
      dest:
        description: Datastore path of the file to write, V([dfir-case-42] case-42/manifest.json).
        type: str
        required: true
  replace:
    description:
      - Replace a different file at a destination (the case's records, rewritten as the case grows). Without it such
        a destination is refused.
    type: bool
    default: false
  request_timeout:
    description: Seconds an HTTP request may wait for the host.
    type: int
    default: 120
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.vsphere
attributes:
  check_mode:
    support: full
    details:
      - Reads only. It checks the datastore, the folder and what each destination holds, and reports what it would
        write.
  diff_mode:
    support: none
seealso:
  - module: dfir.vmcollect.vmkfstools_clone
  - module: dfir.vmcollect.evidence_manifest
"""

EXAMPLES = r"""
- name: Put the case's records beside the evidence on the evidence datastore
  dfir.vmcollect.datastore_upload:
    hostname: esxi01.example.org
    username: "{{ vault_esxi_user }}"
    password: "{{ vault_esxi_password }}"
    thumbprint: "AB:CD:..."
    files:
      - src: /var/lib/dfir-vmcollect/evidence/case-42/manifest.json
        dest: "[dfir-case-42] case-42/manifest.json"
      - src: /var/lib/dfir-vmcollect/evidence/case-42/SHA256SUMS
        dest: "[dfir-case-42] case-42/SHA256SUMS"
    replace: true
"""

RETURN = r"""
files:
  description: One entry per file - C(src), C(dest), C(size), C(sha256) (of the local file, which the written file
    equals when read back), C(changed), C(state) (V(written), V(replaced), V(unchanged), V(would write) or
    V(would replace)).
  returned: success
  type: list
  elements: dict
tls:
  description: How the endpoint's identity was checked - C(verified), C(how), C(thumbprint_sha256) of the certificate seen.
  returned: success
  type: dict
msg:
  description: What was written.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import (
    HAS_PYVMOMI,
    PYVMOMI_IMPORT_ERROR,
    VSPHERE_EXCLUSIVE,
    client_from_params,
    vsphere_argument_spec,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import upload as _vsphere_upload


def argument_spec():
    spec = vsphere_argument_spec()
    spec.update(
        files=dict(type="list", elements="dict", required=True, options=dict(
            src=dict(type="path", required=True),
            dest=dict(type="str", required=True),
        )),
        replace=dict(type="bool", default=False),
        request_timeout=dict(type="int", default=120),
    )
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True, mutually_exclusive=VSPHERE_EXCLUSIVE)
    if not HAS_PYVMOMI:
        module.fail_json(msg=missing_required_lib("pyvmomi"), exception=PYVMOMI_IMPORT_ERROR)
    p = module.params
    try:
        _vsphere_upload.check_inputs(p["files"])  # refused before the host is asked anything
        with client_from_params(p) as client:
            result = _vsphere_upload.upload(client, p, check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
