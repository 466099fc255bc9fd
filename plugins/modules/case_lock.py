#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: case_lock
short_description: Lock a case (or a VM) on a host for one playbook run, naming who holds it
version_added: 0.2.0
description:
  - Takes or releases the lock of a case on the host (C(<journal_dir>/<case_id>/<host>.lock.json), beside the host's journal), or with O(vm_uuid) the lock
    of a VM on the host, whatever the case (C(<journal_dir>/vm-locks/<uuid>.json)).
  - Two runs of one case share the case's undo journal, so one run's teardown would undo the other's changes; two
    cases on one VM would stack their changes on it. The lock is the first change a run makes on a host, before any
    teardown could run.
  - The lock file names its holder (O(holder) as given, plus the host name and the time) and is taken atomically
    (written complete, fsync'ed, then linked into place).
  - The same O(run_id) taking it again is not a change (the holder's step is updated). Another holder is waited for
    up to O(wait) seconds, then refused with a sentence naming it (host, run, who, started, step; the case of a VM
    lock) and what to do. A refused run writes nothing, not even a journal record.
  - Taking a lock is a journaled change, so M(dfir.vmcollect.teardown) (after a killed run) releases it; the undo
    removes the file only while it still names the run that took it. The journal records a case lock as made by
    C(case_lock) and a VM lock as made by C(vm_lock), so a teardown with O(dfir.vmcollect.teardown#module:keep_modules=[case_lock])
    keeps the case's lock and releases the VM's.
  - O(state=absent) releases the lock this run holds through the journal's replay of its record (the journal shows it
    undone); a journal left with nothing to undo is then removed, as teardown would.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  state:
    description: Take (V(present)) or release (V(absent)) the lock.
    type: str
    choices: [present, absent]
    default: present
  run_id:
    description:
      - A token naming one playbook run (letters, digits, V(.), V(_), V(-)); made once on the controller per run.
    type: str
    required: true
  holder:
    description:
      - Who holds the lock, recorded as given, for example C(user), C(controller), C(pid) (of ansible-playbook),
        C(started) (UTC), C(step), C(awx_job_id), C(awx_user_name). Named in the refusal of another run.
    type: dict
    default: {}
  vm_uuid:
    description: Lock this VM on the host (for any case) instead of the case.
    type: str
  vm_name:
    description: The VM's name, recorded in the lock for the messages.
    type: str
  wait:
    description: Seconds to wait for another holder to release the lock before refusing; polled every second.
    type: int
    default: 0
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.journal
attributes:
  check_mode:
    support: full
    details: Says whether the lock would be taken or refused (another run holding it is refused as in a real run);
      creates no file and writes no journal record.
  diff_mode:
    support: none
seealso:
  - module: dfir.vmcollect.teardown
"""

EXAMPLES = r"""
- name: Lock the case on this host for this run
  dfir.vmcollect.case_lock:
    case_id: case-42
    run_id: "{{ my_run_id }}"
    holder:
      user: "{{ lookup('ansible.builtin.env', 'USER') }}"
      controller: "{{ lookup('ansible.builtin.pipe', 'hostname') }}"
      started: "{{ now(utc=true, fmt='%Y-%m-%dT%H:%M:%SZ') }}"
      step: acquire

- name: Lock a VM for the case, waiting up to a minute for another case to finish with it
  dfir.vmcollect.case_lock:
    case_id: case-42
    run_id: "{{ my_run_id }}"
    vm_uuid: 5b3c1f0e-2f4e-4b8e-9d1a-0c6f3e2a7b11
    vm_name: web01
    wait: 60

- name: Release the case's lock at the end of the run
  dfir.vmcollect.case_lock:
    case_id: case-42
    run_id: "{{ my_run_id }}"
    state: absent
"""

RETURN = r"""
lock_file:
  description: The lock file on the host.
  returned: always
  type: str
lock:
  description: The lock as held (or as it would be taken in check mode) - kind, case_id, run_id, holder, host, locked_at.
  returned: when O(state=present)
  type: dict
taken:
  description:
    - Whether this call took the lock (or would, in check mode); false when the run held it already. A role that
      releases only what it took tests this.
  returned: when O(state=present)
  type: bool
undone:
  description: The journal's undo of the lock (O(state=absent)).
  returned: when O(state=absent)
  type: list
  elements: dict
journal_removed:
  description: Whether the journal was removed because nothing was left in it to undo (O(state=absent)).
  returned: when O(state=absent)
  type: bool
msg:
  description: What was done.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import lock as _lock


def argument_spec():
    return dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        run_id=dict(type="str", required=True),
        holder=dict(type="dict", default={}),
        vm_uuid=dict(type="str"),
        vm_name=dict(type="str"),
        wait=dict(type="int", default=0),
        **journal_spec()
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    p = module.params
    try:
        journal = Journal(p["case_id"], p["journal_dir"])
        if p["state"] == "present":
            result = _lock.take(journal, p["run_id"], p["holder"], vm_uuid=p["vm_uuid"], vm_name=p["vm_name"],
                                wait=p["wait"], check_mode=module.check_mode)
        else:
            result = _lock.release(journal, p["run_id"], vm_uuid=p["vm_uuid"], check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    result["lock_file"] = result.pop("path")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
