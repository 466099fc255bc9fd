#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: esxi_memory
short_description: Copy the RAM of an ESXi memory snapshot (its .vmem and .vmsn), hashed in the same read
version_added: 0.3.0
description:
  - An ESXi snapshot taken with memory (M(dfir.vmcollect.esxi_snapshot)) holds the guest's RAM in
    C(<vm>-Snapshot<N>.vmem) and the VM's device state in the C(.vmsn) beside it, whose C(memory) group maps
    guest-physical pages onto the C(.vmem). This module copies both over HTTPS with the engine of
    M(dfir.vmcollect.datastore_fetch) (hashed in the same read, sparse, read back before it counts) to O(dest)
    and to the C(.vmsn) of the same base name, where Volatility 3 looks for it.
  - Reads the host only (C(GET) and C(HEAD)); changes nothing there.
  - "Reports how long ESXi stunned the guest for the snapshot, from the VM's C(vmware.log)
    (C(Checkpoint_Unstun: vm stopped for <N> us), read from the end of the log); V(null) with RV(pause_note) where
    the log has no such line. Nothing is estimated."
  - Returns the shape of the pipeline's memory step (see the provider contract in the collection's
    C(docs/architecture.md)), with the C(.vmsn) copy as a companion artifact.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  vmem:
    description: Datastore path of the snapshot's C(.vmem) (C(vmem.path) of RV(dfir.vmcollect.esxi_snapshot#module:memory)).
    type: str
    required: true
  vmsn:
    description: Datastore path of its C(.vmsn).
    type: str
    required: true
  snapshot:
    description:
      - The snapshot as M(dfir.vmcollect.esxi_snapshot) returned it (C(moref), C(name), C(created)); C(created)
        bounds the search for the guest's pause and is the point in time the RAM shows.
      - Its C(method), when given, is the freeze's (M(dfir.vmcollect.esxi_snapshot)'s RV(dfir.vmcollect.esxi_snapshot#module:method),
        which names the engine that made the snapshot) and becomes the copies' RV(method).
    type: dict
    default: {}
  dest:
    description: Absolute path of the local copy of the C(.vmem); it must end in C(.vmem). Its folder must exist.
    type: path
    required: true
  algorithms:
    description: Hash algorithms computed from the same read.
    type: list
    elements: str
    choices: [md5, sha1, sha256, sha512]
    default: [sha256]
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.vsphere
  - dfir.vmcollect.journal.at_work
attributes:
  check_mode:
    support: full
    details: Sends C(HEAD) requests only and reports what would be copied.
  diff_mode:
    support: none
seealso:
  - module: dfir.vmcollect.esxi_snapshot
  - module: dfir.vmcollect.datastore_fetch
"""

EXAMPLES = r"""
- name: Copy the RAM of the snapshot esxi_snapshot took
  dfir.vmcollect.esxi_memory:
    hostname: esxi1.example.org
    username: "{{ vault_esxi_user }}"
    password: "{{ vault_esxi_password }}"
    thumbprint: "{{ esxi1_sha256_thumbprint }}"
    vmem: "{{ frozen.memory.vmem.path }}"
    vmsn: "{{ frozen.memory.vmsn.path }}"
    snapshot: "{{ frozen.snapshot }}"
    dest: /srv/evidence/case-42/web01/memory-snapshot.vmem
    algorithms: [sha256, md5]
"""

RETURN = r"""
dest:
  description: The local copy of the C(.vmem).
  returned: always
  type: str
src:
  description: The C(.vmem)'s datastore path.
  returned: always
  type: str
format:
  description: V(vmem) (raw guest RAM, mapped by the C(.vmsn)).
  returned: always
  type: str
size:
  description: Bytes of the C(.vmem).
  returned: always
  type: int
digests:
  description: Digests of the C(.vmem) as read from the datastore.
  returned: always
  type: dict
dest_digests:
  description: Digests of the copy, read back from storage.
  returned: always
  type: dict
verified:
  description: Whether the copy was read back and matched.
  returned: always
  type: bool
method:
  description: V(vSphere memory snapshot).
  returned: always
  type: str
pause_ms:
  description: How long ESXi stunned the guest for the snapshot, from its C(vmware.log); V(null) when not logged.
  returned: always
  type: float
pause_note:
  description: Where RV(pause_ms) comes from, or why it is not known.
  returned: always
  type: str
smeared:
  description: V(false) - the RAM is the snapshot's point in time.
  returned: always
  type: bool
started_at:
  description: UTC time of the snapshot (the point in time the RAM shows).
  returned: always
  type: str
finished_at:
  description: The same (the RAM was taken at one point in time).
  returned: always
  type: str
copied_at:
  description: UTC time the copy began.
  returned: always
  type: str
companions:
  description:
    - The C(.vmsn) copy in M(dfir.vmcollect.datastore_fetch)'s result shape, plus C(companion_of) (RV(dest)),
      C(kind) (V(memory_state)), C(format) (V(vmsn)) and C(method).
  returned: always
  type: list
  elements: dict
tls:
  description: How the host's certificate was checked.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import SUPPORTED_ALGORITHMS
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.running import at_work
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import (
    HAS_PYVMOMI,
    PYVMOMI_IMPORT_ERROR,
    VSPHERE_EXCLUSIVE,
    vsphere_argument_spec,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.memory import copy_memory


def main():
    spec = vsphere_argument_spec()
    spec.update(
        vmem=dict(type="str", required=True),
        vmsn=dict(type="str", required=True),
        snapshot=dict(type="dict", default={}),
        dest=dict(type="path", required=True),
        algorithms=dict(type="list", elements="str", choices=list(SUPPORTED_ALGORITHMS), default=["sha256"]),
        **journal_spec(required=False)
    )
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True, mutually_exclusive=VSPHERE_EXCLUSIVE)
    if not HAS_PYVMOMI:
        module.fail_json(msg=missing_required_lib("pyvmomi"), exception=PYVMOMI_IMPORT_ERROR)
    p = module.params
    try:
        journal = Journal(p["case_id"], p["journal_dir"]) if p["case_id"] and not module.check_mode else None
        with at_work(journal, "esxi_memory", "copy the memory snapshot %s to %s" % (p["vmem"], p["dest"])):
            result = copy_memory(p, check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
