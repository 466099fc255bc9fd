#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: setup_iscsi_target
short_description: Offer a thin, CHAP-protected iSCSI LUN on the collector for one initiator
version_added: 0.2.0
description:
  - Sets up, on the collector, an iSCSI target with one thin LUN (LUN 1) backed by a new sparse file,
    into which a KVM host writes the evidence it acquires.
  - Runs a private C(tgtd) of its own on O(control_port), with its portal bound to O(portal_address)
    only. The distribution's tgt service is never started, stopped or reconfigured; a portal or control
    port it holds is an error.
  - Access needs all three of CHAP (incoming; mutual CHAP optional), the initiator's IQN (tgt ACL) and
    one of O(initiator_addresses). tgt ORs its own address and IQN rules, so only the IQN is bound in
    tgt and the addresses are enforced by an nftables table of the target's own (C(inet vmcollect_<hash>))
    that rejects TCP to the portal from any other source.
  - CHAP secrets are handed to tgtd through its root-only control socket, never through the argument
    list of any process (tgtadm would put them there), and never written to the journal or returned.
  - Before the initiator is allowed in, the target offers larger iSCSI data segments and bursts than
    tgt's defaults, and no initial ready-to-transfer (C(MaxRecvDataSegmentLength) and
    C(MaxXmitDataSegmentLength) 262144, C(FirstBurstLength) 262144, C(MaxBurstLength) 1048576,
    C(InitialR2T=No)). With tgt's defaults, writes travel in 8 KiB pieces and each waits for the target's
    go-ahead. Every initiator negotiates down to what it supports. The values go with the target.
  - O(state=readonly) switches the LUN read-only after the acquisition; tgtd then refuses every write
    (SCSI DATA PROTECT), also in sessions already logged in. O(state=absent) removes the target, its
    accounts and firewall table, and the case's tgtd when it serves nothing else; the backing file (the
    evidence) is kept unless O(remove_backing_file=true).
  - Every change is written to the case's undo journal on the collector before it is made.
    M(dfir.vmcollect.teardown) removes targets, accounts, firewall tables, stops the tgtd this case
    started (only that instance) and removes a tgt package this module installed; it keeps backing files.
  - Idempotent. A target that exists with another backing file, size, initiator, CHAP user or address
    list is an error; an evidence store is never resized or re-shaped silently.
  - The LUN gets a SCSI identity of its own, its serial number RV(scsi_sn) and NAA name RV(naa), derived from
    O(target_iqn), which holds the case and the host. tgt's default identity is the same for LUN 1 of target 1
    on every tgtd, and ESXi takes two devices with one identifier for two paths to one device. The same IQN
    gives the same identity on every export of the case's volume; a LUN that lacks it gets it, except while
    initiators are logged in (an error, since a device's identity is not changed under its initiators).
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
requirements:
  - tgt (C(tgtd); Debian and Ubuntu package tgt, tested with 1.0.85) on the collector, or O(install=true)
  - nftables (C(nft)) on the collector
options:
  state:
    description:
      - V(present) sets the target up; V(readonly) makes its LUN read-only (after the acquisition);
        V(absent) removes it.
    type: str
    choices: [present, readonly, absent]
    default: present
  target_iqn:
    description:
      - iSCSI name of the target.
      - Default C(iqn.2026-11.io.dfir.vmcollect:<case id>[:<target_name>]), lowercased, with characters an
        IQN cannot hold replaced by V(-).
    type: str
  target_name:
    description:
      - Suffix of the derived O(target_iqn), so a case can have one target per KVM host.
    type: str
  backing_file:
    description:
      - Absolute path of the sparse file that backs the LUN. Created by the module; an existing file is
        never reused (it may be evidence).
      - Required with O(state=present).
    type: path
  size:
    description:
      - Size of the LUN, in bytes or with a unit (V(20G), V(512M), V(1T); powers of 1024). A multiple of 512.
      - Required with O(state=present).
    type: str
  initiator_iqn:
    description:
      - IQN of the only initiator allowed to log in. Required with O(state=present).
    type: str
  initiator_addresses:
    description:
      - Addresses (or networks) the initiator connects from; TCP to the portal from anywhere else is
        rejected. Required with O(state=present).
    type: list
    elements: str
  portal_address:
    description:
      - The collector's address the portal listens on (one address, never every address). Required with
        O(state=present).
    type: str
  portal_port:
    description: TCP port of the portal.
    type: int
    default: 3260
  control_port:
    description:
      - Number of the private tgtd's control socket (C(/var/run/tgtd/socket.<control_port>)). One tgtd serves
        one portal; use another control port for another portal. The distribution's service uses V(0).
    type: int
    default: 60
  chap_user:
    description:
      - CHAP user the initiator logs in with (incoming CHAP). Required with O(state=present).
    type: str
  chap_password:
    description:
      - CHAP secret of O(chap_user), 12 to 255 characters. Required with O(state=present).
      - tgtd cannot tell its secrets, so a different secret for an existing account is not detected; remove
        the target (O(state=absent)) to change it.
    type: str
  mutual_chap_user:
    description: User name the target answers with (mutual CHAP). Optional.
    type: str
  mutual_chap_password:
    description: Secret of O(mutual_chap_user); must differ from O(chap_password).
    type: str
  install:
    description:
      - Install the package tgt with apt when C(tgtd) is missing, without starting its service (a
        C(policy-rc.d) guard for the time of the install). Teardown purges the packages installed.
    type: bool
    default: false
  reuse_backing_file:
    description:
      - With O(state=present), export an existing backing file of exactly O(size) bytes again instead of
        refusing it. This is how a rerun of the same case finds its evidence volume after the target was
        released. The file is never resized or overwritten here, and no teardown ever removes it (this run
        did not create it).
      - Without it, an existing backing file that this case's journal did not create is refused (it may be
        evidence of something else).
    type: bool
    default: false
  grow:
    description:
      - With O(reuse_backing_file=true), a backing file that is not exported makes room for O(size) more bytes beside
        the data it holds already (its allocated blocks, what an earlier run of the case that was killed left). When it
        is smaller than that, it is extended (sparse, a hole; its data is not touched) before it is exported. It is
        never shrunk.
      - Journaled; its undo leaves the file at its new size, since it holds evidence beyond its old size by then.
      - The initiator grows the filesystem on it when it mounts it (M(dfir.vmcollect.iscsi_attach)).
      - Never used for a volume that holds verified evidence (the collector role seals those read-only).
    type: bool
    default: false
  remove_backing_file:
    description:
      - With O(state=absent), also remove the backing file this case created for the target. By default it
        is kept, because it holds the evidence.
    type: bool
    default: false
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.journal
attributes:
  check_mode:
    support: full
    details: Reports the plan (what would be created, switched or removed, in order) and changes nothing.
  diff_mode:
    support: full
    details: Before and after of the target's configuration (never a secret).
notes:
  - The portal address must be an address of the collector. C(tgtd) 1.0.85 silently falls back to
    C(0.0.0.0:3260) when it cannot bind its portal; the module checks where the new tgtd listens and
    stops it again if it is not exactly the portal asked for.
  - The firewall table rejects (TCP reset) rather than drops, so a wrong source fails at once.
seealso:
  - module: dfir.vmcollect.teardown
  - module: dfir.vmcollect.iscsi_attach
"""

EXAMPLES = r"""
- name: Offer a 200 GiB evidence LUN to the KVM host
  dfir.vmcollect.setup_iscsi_target:
    case_id: case-42
    target_name: kvm1
    backing_file: /evidence/case-42/kvm1.lun
    size: 200G
    portal_address: 10.0.5.1
    initiator_iqn: iqn.2026-11.io.dfir.vmcollect:initiator:kvm1
    initiator_addresses: [10.0.5.2]
    chap_user: case42kvm1
    chap_password: "{{ vault_chap_secret }}"
  register: lun

- name: After the acquisition, no more writes
  dfir.vmcollect.setup_iscsi_target:
    case_id: case-42
    target_name: kvm1
    state: readonly

- name: Remove the target (the backing file stays)
  dfir.vmcollect.setup_iscsi_target:
    case_id: case-42
    target_name: kvm1
    state: absent
"""

RETURN = r"""
target_iqn:
  description: iSCSI name of the target.
  returned: always
  type: str
tid:
  description: tgtd's target id (V(null) after O(state=absent)).
  returned: always
  type: int
lun:
  description: The LUN number of the evidence volume (always 1; LUN 0 is tgt's controller).
  returned: always
  type: int
portal:
  description: C(address:port) of the portal.
  returned: always
  type: str
backing_file:
  description: The file backing the LUN.
  returned: always
  type: str
size:
  description: Size of the LUN in bytes.
  returned: always
  type: int
thin:
  description: Whether thin provisioning is on (tgt punches holes for UNMAP and zeroing writes).
  returned: always
  type: bool
readonly:
  description: Whether the LUN is read-only.
  returned: always
  type: bool
scsi_sn:
  description:
    - Serial number of the LUN (SCSI VPD page 0x80; tgt's C(scsi_sn)), the first 20 hexadecimal digits of the
      SHA-256 of RV(target_iqn), so it is the LUN's own and the same on every export of it.
    - M(dfir.vmcollect.esxi_iscsi_datastore) takes it as O(dfir.vmcollect.esxi_iscsi_datastore#module:serial).
    - What the LUN presents with O(state=readonly); V(null) after O(state=absent).
  returned: always
  type: str
  sample: "0e88d7633e4296ef4994"
scsi_id:
  description:
    - tgt's C(scsi_id) of the LUN (SCSI VPD page 0x83), V(6) and the first 31 hexadecimal digits of the SHA-256
      of RV(target_iqn); tgtd makes it the LUN's NAA designator RV(naa).
    - What the LUN presents with O(state=readonly); V(null) after O(state=absent).
  returned: always
  type: str
  sample: "60e88d7633e4296ef499435fa14e8f3e"
naa:
  description:
    - The LUN's NAA name (type 6, from RV(scsi_id)), the canonical name ESXi gives the device;
      M(dfir.vmcollect.esxi_iscsi_datastore) takes it as O(dfir.vmcollect.esxi_iscsi_datastore#module:canonical_name).
    - V(null) after O(state=absent).
  returned: always
  type: str
  sample: "naa.60e88d7633e4296ef499435fa14e8f3e"
control_port:
  description: Control port of the tgtd serving the target.
  returned: always
  type: int
firewall_table:
  description: Name of the nftables table (family inet) enforcing the initiator addresses.
  returned: always
  type: str
tgtd_pid:
  description: PID of the case's tgtd (V(null) in check mode before it is started).
  returned: always
  type: int
actions:
  description: What was done (or would be, prefixed C(would:)), in order.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal

from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import target as _iscsi_target


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "readonly", "absent"]),
            target_iqn=dict(type="str"),
            target_name=dict(type="str"),
            backing_file=dict(type="path"),
            size=dict(type="str"),
            initiator_iqn=dict(type="str"),
            initiator_addresses=dict(type="list", elements="str"),
            portal_address=dict(type="str"),
            portal_port=dict(type="int", default=3260),
            control_port=dict(type="int", default=60),
            chap_user=dict(type="str"),
            chap_password=dict(type="str", no_log=True),
            mutual_chap_user=dict(type="str"),
            mutual_chap_password=dict(type="str", no_log=True),
            install=dict(type="bool", default=False),
            remove_backing_file=dict(type="bool", default=False),
            reuse_backing_file=dict(type="bool", default=False),
            grow=dict(type="bool", default=False),
            **journal_spec()
        ),
        supports_check_mode=True,
        mutually_exclusive=[("target_iqn", "target_name")],
        required_together=[("mutual_chap_user", "mutual_chap_password")],
    )
    p = module.params
    try:
        journal = Journal(p["case_id"], p["journal_dir"])
        spec = _iscsi_target.build_spec(
            p["case_id"], p["state"], target_iqn=p["target_iqn"], target_name=p["target_name"],
            backing_file=p["backing_file"], size=p["size"], initiator_iqn=p["initiator_iqn"],
            initiator_addresses=p["initiator_addresses"], portal_address=p["portal_address"],
            portal_port=p["portal_port"], chap_user=p["chap_user"], chap_password=p["chap_password"],
            mutual_chap_user=p["mutual_chap_user"], mutual_chap_password=p["mutual_chap_password"],
            control_port=p["control_port"], install=p["install"], remove_backing_file=p["remove_backing_file"],
            reuse_backing_file=p["reuse_backing_file"], grow=p["grow"])
        result = _iscsi_target.setup(journal, spec, check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


if __name__ == "__main__":
    main()
