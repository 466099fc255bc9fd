#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: teardown
short_description: Undo every change this collection made to a host for a case
version_added: 0.1.0
description:
  - First stops the collection's modules still at work for the case on the host (the RAM capture, disk copy or
    verification of a killed playbook runs on) with SIGTERM, so that each cleans up, then SIGKILL after 60 s, and
    waits until they are gone.
  - Then replays the case's undo journal on the host, newest change first, and undoes each change
    that is not undone yet (frozen disks merged back and their overlays removed, host settings
    put back, temporary files removed).
  - Works after a crash or a killed playbook; a change that was written down but never made is
    recognised and skipped. Idempotent; a second run changes nothing.
  - Stops at the first change it cannot undo and says which; the changes before it stay in the
    journal, and a later run continues there.
  - When everything is undone, the journal's records are returned (keep them with the case's
    custody log) and the journal file, with the folders it had to create, is removed from the
    host, unless O(keep_journal=true).
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
requirements:
  - libvirt-python (python3-libvirt on Debian and Ubuntu) when the journal holds KVM changes
options:
  keep_journal:
    description: Keep the journal file on the host after everything is undone.
    type: bool
    default: false
  keep_modules:
    description:
      - Leave the changes made by these modules in place (and in the journal), and undo the rest.
      - The KVM acquisition role tears down each VM with O(keep_modules=[iscsi_attach]), so the
        evidence volume stays attached for the next VM; the volume is detached at the end, and a
        plain teardown (the recovery playbook) undoes everything.
      - The acquisition role always adds V(case_lock) - the case stays locked for the run until its end, while each
        VM's lock (recorded as made by C(vm_lock)) is released with the VM.
      - The journal is removed only when nothing is left in it to undo.
    type: list
    elements: str
    default: []
  connection:
    description:
      - How the undo handlers reach a system the case changed that is not this host, for providers
        whose changes live elsewhere (the planned ESXi side, on a vCenter or ESXi host).
      - Handed to the undo handlers only. Never written to the journal, never returned; the
        password is masked in every result and error message.
      - The KVM and iSCSI changes of this version need none of it; leave it out for them.
    type: dict
    suboptions:
      hostname:
        description: Host name or address of the system to connect to (a vCenter or ESXi host).
        type: str
      port:
        description: Its port, if not the default of the provider.
        type: int
      username:
        description: User to log in as.
        type: str
      password:
        description: That user's password.
        type: str
      validate_certs:
        description: Whether the system's TLS certificate must be valid.
        type: bool
        default: true
      ca_file:
        description: PEM file of the certificate authorities that may sign the system's certificate (vSphere).
        type: path
      thumbprint:
        description:
          - SHA-256 fingerprint the system's certificate must have (vSphere; V(AA:BB:...) or hex). Checked before
            anything is sent; mutually exclusive with O(connection.ca_file).
        type: str
      datacenter:
        description: The vSphere datacenter to look for the journaled VMs in.
        type: str
      timeout:
        description: Seconds each vSphere task of an undo (a snapshot's removal, a consolidation) may take.
        type: int
      ssh:
        description:
          - How to log in over SSH to an ESXi host whose changes the SSH engine made (the C(ssh) option of
            M(dfir.vmcollect.esxi_snapshot) and the other ESXi modules with an engine,
            the same suboptions; user and password default to O(connection.username) and O(connection.password)
            unless a private key is given). The host key is checked as there.
          - Unused for changes made through the vSphere API.
        type: dict
        suboptions:
          port:
            description: TCP port of the host's SSH server.
            type: int
            default: 22
          username:
            description: User to log in as (default O(connection.username)).
            type: str
          password:
            description: That user's password (default O(connection.password) without a private key).
            type: str
          private_key_file:
            description: Private key to log in with.
            type: path
          private_key_passphrase:
            description: The passphrase of an encrypted private key.
            type: str
          known_hosts:
            description: OpenSSH known_hosts file holding the host's key (default C(~/.ssh/known_hosts)).
            type: path
          host_key_fingerprint:
            description: Pin the host key by its SHA256 fingerprint instead.
            type: str
          timeout:
            description: Seconds for the connection and the login.
            type: int
            default: 30
          command_timeout:
            description: Seconds one command of an undo may run.
            type: int
            default: 3600
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.journal
attributes:
  check_mode:
    support: full
    details: Lists what would be undone and changes nothing.
  diff_mode:
    support: none
seealso:
  - module: dfir.vmcollect.take_snapshot
"""

EXAMPLES = r"""
- name: Put the KVM host back as it was found
  dfir.vmcollect.teardown:
    case_id: case-42
  register: restored

- name: Keep the journal with the case record
  ansible.builtin.copy:
    content: "{{ restored.records | to_nice_json }}"
    dest: "/evidence/case-42/journal-{{ inventory_hostname }}.json"
    mode: "0640"
  delegate_to: localhost
"""

RETURN = r"""
undone:
  description: The changes undone by this run (or that would be, in check mode), newest first.
  returned: always
  type: list
  elements: dict
  contains:
    description:
      description: What the change was.
      type: str
    action:
      description: Kind of change.
      type: str
    result:
      description: What undoing it did.
      type: str
records:
  description: Every journal record (changes, when they were applied and undone), UTC times.
  returned: always
  type: list
  elements: dict
kept:
  description: The changes left in place because their module is in O(keep_modules), newest first.
  returned: always
  type: list
  elements: str
removed:
  description: Whether the journal file was removed from the host.
  returned: always
  type: bool
journal:
  description: Path of the journal file on the host.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec, ssh_option_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal

# Each undo handler is imported when the journal holds a change of its kind (most journals hold a few kinds).
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import handlers as _handlers  # noqa: F401 pylint: disable=unused-import


def argument_spec():
    return dict(
        keep_journal=dict(type="bool", default=False),
        keep_modules=dict(type="list", elements="str", default=[]),
        connection=dict(type="dict", options=dict(
            hostname=dict(type="str"),
            port=dict(type="int"),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
            validate_certs=dict(type="bool", default=True),
            ca_file=dict(type="path"),
            thumbprint=dict(type="str"),
            datacenter=dict(type="str"),
            timeout=dict(type="int"),
            ssh=ssh_option_spec(),
        )),
        **journal_spec()
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    p = module.params
    # connection options go to the undo handlers only (UndoContext.options), with every no_log value masked
    options = dict((k, v) for k, v in (p["connection"] or {}).items() if v is not None)
    try:
        journal = Journal(p["case_id"], p["journal_dir"])
        result = journal.teardown(check_mode=module.check_mode, remove_when_done=not p["keep_journal"],
                                  keep_modules=tuple(p["keep_modules"]), options=options,
                                  secrets=tuple(module.no_log_values))
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(changed=bool(result["undone"]) or result["removed"], undone=result["undone"],
                     kept=result["kept"], records=result["records"], removed=result["removed"], journal=journal.path)


if __name__ == "__main__":
    main()
