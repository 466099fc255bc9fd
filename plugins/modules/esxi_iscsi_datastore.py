#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: esxi_iscsi_datastore
short_description: Attach the collector's iSCSI LUN to an ESXi host as a new VMFS datastore, and release it exactly
version_added: 0.2.0
description:
  - Through the vSphere API of the host (a standalone ESXi host, or a vCenter with O(esxi_hostname)), with
    O(state=present) - turns software iSCSI on if it is off, adds the collector's portal as a send target with the
    CHAP name and secret set on that target (the adapter's own CHAP stays as it is), rescans the adapter, finds the
    one disk reached through that portal whose size is O(size_bytes) exactly (and, when given, whose serial number
    and canonical name match), and makes a VMFS datastore named O(datastore_name) on the whole LUN.
  - Never another disk - none or several matching disks fail the task with a sentence listing what the host sees;
    a LUN that holds a datastore or partitions already is never formatted; a datastore named O(datastore_name) that
    is not on such a LUN is refused before any change. A datastore of that name on that LUN, mounted, is reported
    with C(changed=false).
  - Only a host that refuses CHAP on a send target gets it on the adapter itself, and only when the adapter's own
    CHAP is off and no other target inherits it (ESXi never returns a CHAP secret, so a secret that was set could
    not be put back, and the other targets would be cut off).
  - O(state=adapter) only turns software iSCSI on (if it is off) and returns the adapter and its iSCSI name (IQN),
    which the collector needs for its ACL before the LUN can be reached.
  - Every change is written to the case's undo journal before it is made. M(dfir.vmcollect.teardown), given the
    endpoint's connection, undoes them newest first, also after a crash or a killed playbook - the datastore
    unmounted (UnmountVmfsVolume, never RemoveDatastore, which destroys a VMFS volume and so the evidence on it) and
    its LUN detached where the host can, CHAP put back as recorded, the send target removed and the adapter
    rescanned so the LUN disappears, and software iSCSI turned off again if this case turned it on. ESXi removes the
    software adapter only at its next reboot - the result (RV(adapter_enabled_by_us)) and the undo say so.
  - O(state=absent) does that undo now for this module's changes of the case on the host, and marks them undone in
    the journal.
  - With O(engine=ssh) (or V(auto) on a host with the free licence) the same steps, records and rules, but the changes
    are made by the host's own shell over SSH (O(ssh)), for a free ESXi host whose vSphere API only reads (it refuses
    changes with C(RestrictedVersion)) - C(esxcli iscsi software set), C(esxcli iscsi adapter discovery sendtarget
    add), CHAP with C(esxcli iscsi adapter discovery sendtarget auth chap set), C(esxcli storage core adapter rescan),
    the blank check with C(partedUtil getptbl), the datastore with C(partedUtil setptbl) and C(vmkfstools -C), and in
    the undo C(esxcli storage filesystem unmount) (never a removal of the volume). Reads still go through the vSphere
    API. Each journal record names the engine that made it (C(engine=ssh) in its undo data), and its undo
    (M(dfir.vmcollect.teardown) with C(connection.ssh), or O(state=absent) with O(ssh)) uses the shell too.
  - With the SSH engine the CHAP secret is on the host's process list for the instant of the one C(esxcli ... chap set)
    command that sets it - esxcli takes it only as an argument. It is sent on that command's stdin, not in the command
    line, and the host's shell execs esxcli with it, so only esxcli's own argv holds it (no shell's argv or command
    log). Never in a result, the journal, a log or an error message (masked). A host whose
    esxcli has no CHAP per send target gets it on the adapter, under the same rules as the API engine's fallback.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  engine:
    description:
      - What changes the host - V(api) its vSphere API, V(ssh) its own shell over SSH (O(ssh); for a free ESXi host,
        whose API is read-only), V(auto) the SSH engine when the host's licence is the free one, else the API. The
        engine used and why are returned (RV(engine), RV(engine_choice)).
      - The SSH engine changes a standalone ESXi host reached at O(hostname); a vCenter is refused with it.
      - With O(state=absent) each journaled change is undone by the engine that made it.
    type: str
    choices: [api, ssh, auto]
    default: api
  state:
    description:
      - V(present) attaches the LUN as a datastore, V(adapter) only ensures software iSCSI and returns the IQN,
        V(absent) undoes this module's changes of the case on the host.
    type: str
    choices: [present, adapter, absent]
    default: present
  esxi_hostname:
    description:
      - The ESXi host to attach the LUN to, by its name in the inventory. Required with a vCenter; with a standalone
        ESXi host it may be left out (it has one host), and when given it must be that host's name.
    type: str
  target_address:
    description: Address of the collector's iSCSI portal (the send target). Required with O(state=present).
    type: str
  target_port:
    description: TCP port of the collector's iSCSI portal.
    type: int
    default: 3260
  chap_name:
    description: The collector's CHAP user for this LUN. Required with O(state=present).
    type: str
  chap_secret:
    description:
      - The CHAP secret. Sent to the host only; never written to the journal, a result or a log. Required with
        O(state=present).
      - With the SSH engine it is an argument of the one C(esxcli) command that sets it, so it is on the host's
        process list while that command runs (see the description).
      - Since ESXi never returns a CHAP secret, a rerun with another secret sets it again while the datastore is not
        made yet.
    type: str
  chap_required:
    description: V(true) sets CHAP to C(chapRequired) on the send target, V(false) to C(chapPreferred).
    type: bool
    default: true
  size_bytes:
    description:
      - The LUN's size in bytes, exactly (what the collector exported). Only a disk of this capacity is used.
        Required with O(state=present).
    type: int
  serial:
    description: The LUN's serial number (SCSI VPD page 0x80; tgt's C(scsi_sn)), to tell LUNs of one size apart.
    type: str
  canonical_name:
    description: The LUN's device name on the host (V(naa.6...)), if known.
    type: str
  datastore_name:
    description:
      - Name of the VMFS datastore to make on the LUN (for example V(dfir-case-42)); at most 42 characters, without
        slashes, backslashes, square brackets or control characters. Required with O(state=present).
    type: str
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.vsphere
  - dfir.vmcollect.esxi_ssh
  - dfir.vmcollect.journal
attributes:
  check_mode:
    support: full
    details:
      - Reads the host and returns the plan - which steps would be made; changes nothing, journals nothing.
      - With the SSH engine it logs in over SSH (the host key is checked) but runs no command there.
  diff_mode:
    support: none
notes:
  - O(datacenter) narrows the search for the host to that datacenter.
  - The steps, their journal records, the undo order and its limits are in the module_utils docstrings
    (C(plugins/module_utils/_vsphere/storage.py); the SSH engine's commands in
    C(plugins/module_utils/_esxi_shell/storage.py)).
seealso:
  - module: dfir.vmcollect.setup_iscsi_target
  - module: dfir.vmcollect.teardown
"""

EXAMPLES = r"""
- name: Software iSCSI on the ESXi host; its IQN goes into the collector's ACL
  dfir.vmcollect.esxi_iscsi_datastore:
    hostname: esxi1.example.org
    username: dfir
    password: "{{ vault_esxi_password }}"
    thumbprint: "BE:70:B6:1F:AF:AB:36:D8:7B:F8:A4:6C:AB:C0:2F:77:DB:4B:9E:3F:46:97:AD:98:40:96:34:FF:63:96:F4:20"
    state: adapter
    case_id: case-42
  delegate_to: localhost
  register: esxi_iscsi

- name: Attach the collector's LUN as the datastore dfir-case-42
  dfir.vmcollect.esxi_iscsi_datastore:
    hostname: esxi1.example.org
    username: dfir
    password: "{{ vault_esxi_password }}"
    thumbprint: "BE:70:B6:1F:AF:AB:36:D8:7B:F8:A4:6C:AB:C0:2F:77:DB:4B:9E:3F:46:97:AD:98:40:96:34:FF:63:96:F4:20"
    target_address: 10.0.5.20
    chap_name: "{{ lun.chap_user }}"
    chap_secret: "{{ lun.chap_secret }}"
    size_bytes: "{{ lun.size_bytes }}"
    serial: "{{ lun.serial }}"
    datastore_name: dfir-case-42
    case_id: case-42
  delegate_to: localhost
  register: evidence_datastore

- name: The same on a free ESXi host, through its shell over SSH (its API only reads)
  dfir.vmcollect.esxi_iscsi_datastore:
    hostname: esxi2.example.org
    username: root
    password: "{{ vault_esxi_password }}"
    thumbprint: "{{ esxi2_thumbprint }}"
    engine: auto
    ssh:
      host_key_fingerprint: "SHA256:{{ esxi2_ssh_fingerprint }}"
    target_address: 10.0.5.20
    chap_name: "{{ lun.chap_user }}"
    chap_secret: "{{ lun.chap_secret }}"
    size_bytes: "{{ lun.size_bytes }}"
    serial: "{{ lun.serial }}"
    datastore_name: dfir-case-42
    case_id: case-42
  delegate_to: localhost
"""

RETURN = r"""
host:
  description: The ESXi host changed - C(name) and C(moref).
  returned: success
  type: dict
adapter:
  description:
    - The software iSCSI adapter - C(device) (V(vmhba64)), C(iqn) (its iSCSI name), C(model), C(enabled_by_us).
      V(null) in check mode when software iSCSI is off and the adapter does not exist yet.
  returned: state is present or adapter
  type: dict
adapter_enabled_by_us:
  description:
    - Whether this case turned software iSCSI on (for the manifest). Its undo turns it off again, but ESXi removes
      the adapter only at the host's next reboot.
  returned: state is present or adapter
  type: bool
send_target:
  description: The collector's portal as a send target - C(address), C(port), C(portal).
  returned: state is present
  type: dict
chap:
  description:
    - Where CHAP is set - C(scope) (V(send_target), or V(adapter) when the host refused it on the target), C(name)
      and C(level). Never the secret.
  returned: state is present
  type: dict
lun:
  description:
    - The LUN used - C(canonical_name), C(size_bytes), C(serial), C(uuid), C(device_path), C(vendor), C(model).
      V(null) in check mode.
  returned: state is present
  type: dict
datastore:
  description:
    - The datastore - C(name), C(moref), C(url), C(capacity), C(free_space) (bytes), C(type) (V(VMFS)),
      C(vmfs_uuid), C(vmfs_version), C(extents) (disk names). V(null) in check mode.
  returned: state is present
  type: dict
changes:
  description: What this run changed on the host, in order, one sentence each (empty when nothing changed).
  returned: state is present or adapter
  type: list
  elements: str
plan:
  description: In check mode, what would be changed, in order.
  returned: state is present or adapter
  type: list
  elements: str
undone:
  description: With O(state=absent) the changes undone (or that would be, in check mode), newest first, each with
    C(id), C(action), C(description) and C(result).
  returned: state is absent
  type: list
  elements: dict
engine:
  description: The engine that changed the host (V(api) or V(ssh)), O(engine=auto) resolved.
  returned: success
  type: str
engine_choice:
  description:
    - How the engine was chosen, for the case manifest - C(engine), C(requested), C(why), C(licences) (with
      O(engine=auto) the host's licences, C(edition_key) and C(name) each; else V(null)).
  returned: success
  type: dict
ssh_host_key:
  description:
    - How the SSH host's identity was checked - C(verified), C(how) (V(known_hosts) or V(fingerprint)),
      C(key_type), C(fingerprint_sha256), C(known_hosts).
  returned: the SSH engine was used with state present or adapter
  type: dict
tls:
  description: How the endpoint's identity was checked - C(verified), C(how), C(thumbprint_sha256) of the certificate seen.
  returned: success
  type: dict
journal:
  description: Path of the case's journal on the controller.
  returned: success
  type: str
note:
  description: What the run means for the host, and what it could not check.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec, ssh_option_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.running import at_work
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere.client import (
    CLIENT_OPTIONS,
    HAS_PYVMOMI,
    PYVMOMI_IMPORT_ERROR,
    VSPHERE_EXCLUSIVE,
    client_from_params,
    vsphere_argument_spec,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import storage as _vsphere_storage
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell.host import (
    ENGINES,
    Shell,
    choose_engine,
    ssh_client,
)
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import storage as _shell_storage


def _restricted_hint(exc, engine):
    """A free host's refusal of the API engine's change, with what to do."""
    if engine == "api" and exc.details.get("fault") == "RestrictedVersion":
        exc.message = ("%s The host's licence lets its vSphere API only read (a free ESXi host): use engine=ssh (or "
                       "auto) to make the change through its shell." % exc.message.rstrip())
    return exc


def main():
    module = AnsibleModule(
        argument_spec=dict(
            engine=dict(type="str", default="api", choices=list(ENGINES)),
            ssh=ssh_option_spec(),
            state=dict(type="str", default="present", choices=["present", "adapter", "absent"]),
            esxi_hostname=dict(type="str"),
            target_address=dict(type="str"),
            target_port=dict(type="int", default=_vsphere_storage.DEFAULT_PORT),
            chap_name=dict(type="str"),
            chap_secret=dict(type="str", no_log=True),
            chap_required=dict(type="bool", default=True),
            size_bytes=dict(type="int"),
            serial=dict(type="str"),
            canonical_name=dict(type="str"),
            datastore_name=dict(type="str"),
            **dict(vsphere_argument_spec(), **journal_spec())
        ),
        supports_check_mode=True,
        mutually_exclusive=VSPHERE_EXCLUSIVE,
        required_if=[("state", "present", ("target_address", "chap_name", "chap_secret", "size_bytes",
                                           "datastore_name"))],
    )
    if not HAS_PYVMOMI:
        module.fail_json(msg=missing_required_lib("pyvmomi"), exception=PYVMOMI_IMPORT_ERROR)
    p = module.params
    state = p["state"]
    choice = None
    try:
        journal = Journal(p["case_id"], p["journal_dir"])
        what = {"present": "attach an iSCSI LUN as datastore %s" % p["datastore_name"],
                "adapter": "enable software iSCSI", "absent": "release the iSCSI datastore"}[state]
        with at_work(None if module.check_mode else journal, "esxi_iscsi_datastore",
                     "%s on %s" % (what, p["esxi_hostname"] or p["hostname"])):
            with client_from_params(p) as client:
                choice = choose_engine(p["engine"], client)
                if state == "absent":
                    # each record is undone by the engine that made it (its "engine"): the SSH one with p["ssh"]
                    options = dict((k, p[k]) for k in CLIENT_OPTIONS if p.get(k) is not None)
                    if p["ssh"]:
                        options["ssh"] = p["ssh"]
                    result = _vsphere_storage.absent(journal, client, options, esxi_hostname=p["esxi_hostname"],
                                                     check_mode=module.check_mode,
                                                     secrets=tuple(module.no_log_values))
                elif choice["engine"] == "ssh":
                    with ssh_client(p) as ssh:
                        result = _ssh_engine(module, journal, client, Shell(ssh))
                        result["ssh_host_key"] = ssh.host_key_record()
                elif state == "adapter":
                    result = _vsphere_storage.adapter(journal, client, esxi_hostname=p["esxi_hostname"],
                                                      check_mode=module.check_mode)
                else:
                    result = _vsphere_storage.present(
                        journal, client, p["target_address"], p["size_bytes"], p["datastore_name"], p["chap_name"],
                        p["chap_secret"], port=p["target_port"], chap_required=p["chap_required"],
                        serial=p["serial"], canonical_name=p["canonical_name"], esxi_hostname=p["esxi_hostname"],
                        check_mode=module.check_mode)
    except VmcollectError as exc:
        if choice is not None:
            exc.details.setdefault("engine", choice["engine"])
            exc.details.setdefault("engine_choice", choice)
        fail_module(module, _restricted_hint(exc, choice["engine"] if choice else p["engine"]), changed=False)
    module.exit_json(journal=journal.path, engine=choice["engine"], engine_choice=choice, **result)


def _ssh_engine(module, journal, client, shell):
    """state adapter or present through the host's shell."""
    p = module.params
    if p["state"] == "adapter":
        return _shell_storage.adapter(journal, client, shell, esxi_hostname=p["esxi_hostname"],
                                      check_mode=module.check_mode)
    return _shell_storage.present(
        journal, client, shell, p["target_address"], p["size_bytes"], p["datastore_name"], p["chap_name"],
        p["chap_secret"], port=p["target_port"], chap_required=p["chap_required"], serial=p["serial"],
        canonical_name=p["canonical_name"], esxi_hostname=p["esxi_hostname"], check_mode=module.check_mode)


if __name__ == "__main__":
    main()
