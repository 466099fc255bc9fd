#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: iscsi_attach
short_description: Attach an iSCSI LUN on a KVM host as a mounted filesystem for the evidence
version_added: 0.2.0
description:
  - Logs in to an iSCSI target (usually the collector's, made by M(dfir.vmcollect.setup_iscsi_target)),
    puts a filesystem on the LUN if it is blank, and mounts it where the acquisition writes. With
    O(state=absent) it flushes, unmounts and detaches everything it attached.
  - O(initiator=userspace) needs no kernel iSCSI support and leaves no iscsid state. C(qemu-storage-daemon)
    logs in with libiscsi and exports the LUN as a FUSE file, a loop device makes it a block device. The
    daemon runs detached, so later tasks (other SSH sessions) see the mount.
  - O(initiator=open-iscsi) uses the kernel's initiator through C(iscsiadm). It creates its own iface record
    (named after the case and mountpoint) with the initiator name, discovers without storing anything,
    creates one node record, logs in and mounts the LUN's disk. On detach it logs out and deletes that
    node record and iface, and nothing else.
  - "Formatting: a filesystem is made only on a blank LUN (no signature found by C(blkid -p) and C(wipefs -n)).
    A LUN that already carries a O(filesystem) labelled O(filesystem_label) is mounted as it is, so a rerun
    finds what the acquisition already wrote. Anything else is refused and never formatted (it may be evidence),
    unless O(format=force)."
  - CHAP secrets never appear in any process's argv, in a file that outlives the start, or in the result.
    C(qemu-storage-daemon) reads the secret from an inherited pipe. For open-iscsi the secret is written
    into the node record file (mode 0600) instead of through C(iscsiadm -o update -v), which would put it
    in argv.
  - Every step is written to the case's undo journal before it is made. M(dfir.vmcollect.teardown) detaches
    everything, also after a crash or a killed playbook. O(state=absent) undoes this attachment's journal
    records and marks them undone, so a later teardown has nothing left to do.
  - A failed attach (a wrong CHAP secret, a refused LUN) takes back what it made before it fails.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
requirements:
  - "userspace: qemu-storage-daemon with the iSCSI block driver (Debian and Ubuntu: qemu-system-common
    or qemu-storage-daemon, and qemu-block-extra), FUSE (/dev/fuse), losetup, blkid, wipefs, mkfs for
    O(filesystem)"
  - "open-iscsi: iscsiadm with iscsid running and the iscsi_tcp kernel module, blkid, wipefs, mkfs"
options:
  state:
    description: Whether the LUN is attached and mounted (V(present)) or detached (V(absent)).
    type: str
    choices: [present, absent]
    default: present
  initiator:
    description: Which iSCSI initiator to use.
    type: str
    choices: [userspace, open-iscsi]
    default: userspace
  mountpoint:
    description:
      - Absolute path where the LUN's filesystem is mounted. It must be missing (it is created and removed
        again) or an empty folder. Identifies the attachment within the case, also for O(state=absent).
    type: path
    required: true
  portal_address:
    description: Address or name of the target's portal. Required for O(state=present).
    type: str
  portal_port:
    description: TCP port of the portal.
    type: int
    default: 3260
  target_iqn:
    description: iSCSI name of the target. Required for O(state=present).
    type: str
  lun:
    description: LUN number on the target.
    type: int
    default: 1
  timeout:
    description:
      - Seconds the iSCSI connection may be lost before the attachment is declared dead
        (O(initiator=userspace)). 0 waits forever.
      - QEMU 7.2's iSCSI driver never fails a request once its TCP connection is gone (libiscsi retries the login
        forever, and every write to the LUN hangs in the kernel). So a link watchdog runs beside
        C(qemu-storage-daemon), watching the daemon's own connection to the portal. After O(timeout) seconds
        without it, it stops the daemon. Every pending and later write then fails with an I/O error, so the
        acquisition stops with an error instead of hanging, and O(state=absent) reports why in RV(link_lost).
        A shorter outage is ridden out. The evidence already written stays on the LUN.
      - The same value is QEMU's iSCSI request timeout.
    type: int
    default: 30
  initiator_iqn:
    description: iSCSI name this host logs in with (the target's ACL names it). Required for O(state=present).
    type: str
  chap_user:
    description: CHAP user name. Goes with O(chap_password).
    type: str
  chap_password:
    description: CHAP secret. Never shown, logged or put in argv.
    type: str
  mutual_chap_user:
    description:
      - User name the target answers with, for mutual CHAP (open-iscsi only; QEMU's iSCSI driver cannot check the target).
    type: str
  mutual_chap_password:
    description: The target's CHAP secret for mutual CHAP. Never shown, logged or put in argv.
    type: str
  filesystem:
    description: Filesystem of the LUN.
    type: str
    choices: [ext4, ext3, ext2, xfs]
    default: ext4
  filesystem_label:
    description:
      - Label of the filesystem. A LUN with a O(filesystem) of this label is this collection's and is mounted
        as it is. At most 16 characters (12 for xfs).
    type: str
    default: vmcollect
  format:
    description:
      - V(if_blank) makes a filesystem only on a LUN without any signature and refuses a LUN with anything else
        than O(filesystem) labelled O(filesystem_label).
      - V(never) makes no filesystem; a blank LUN is an error.
      - V(force) also formats a LUN that carries something else (its content is lost). A LUN that already carries
        O(filesystem) labelled O(filesystem_label) is still mounted as it is.
    type: str
    choices: [if_blank, never, force]
    default: if_blank
  teardown:
    description:
      - With O(state=absent), once the LUN is detached, undo every other change the case's journal holds on this host,
        newest first, as M(dfir.vmcollect.teardown) does (the case lock, what is left at work) - one module run for
        both. Nothing more is undone when the detach fails. What it undid is RV(teardown).
    type: bool
    default: false
  read_only:
    description:
      - Attach a LUN that already holds evidence without writing a byte to it. Not even the filesystem's
        superblock changes (a read-write mount writes its mount count and times), so the LUN's backing file
        keeps its digest.
      - O(initiator=userspace) opens the LUN read-only in C(qemu-storage-daemon), exports it not writable,
        attaches a read-only loop device (C(losetup --read-only)) and mounts it C(ro,noload) (no journal
        replay; C(ro,norecovery) for xfs, C(ro) for ext2). O(initiator=open-iscsi) makes the LUN's disk
        read-only (C(blockdev --setro)) before anything reads it, and mounts it the same way.
      - It never formats. Only the O(filesystem) labelled O(filesystem_label) is mounted; a blank LUN or anything
        else is refused. O(format=force) cannot go with it.
      - An attachment made read-write is not turned read-only (or back) in place; detach it first.
    type: bool
    default: false
  run_dir:
    description:
      - Folder for the FUSE export file and the daemon's pid file (O(initiator=userspace)). Created if missing
        and removed on detach when empty.
      - Default C(/run/dfir-vmcollect/<case_id>).
    type: path
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.journal
attributes:
  check_mode:
    support: full
    details: Reports the plan (or what detaching would undo) and changes nothing; RV(formatted) is V(null) (unknown before attaching).
  diff_mode:
    support: none
notes:
  - The mountpoint's root is left owned by root with mode 0755 when the module makes the filesystem; create the
    folders QEMU (user libvirt-qemu) writes into below it.
  - Detaching flushes the filesystem, the loop device and the export to the target before it reports success,
    so the LUN's backing file can be hashed on the collector right after.
  - The loop device does not use direct I/O. On QEMU 7.2's FUSE export, mkfs.ext4 through a direct-I/O loop device
    wrote a filesystem that e2fsck found corrupt; buffered I/O is flushed on detach instead.
seealso:
  - module: dfir.vmcollect.teardown
"""

EXAMPLES = r"""
- name: Attach the collector's LUN where the acquisition writes
  dfir.vmcollect.iscsi_attach:
    case_id: case-42
    portal_address: 10.0.5.1
    target_iqn: iqn.2026-01.org.example:case-42
    initiator_iqn: iqn.2026-01.org.example:kvm1
    chap_user: case42
    chap_password: "{{ vault_chap_secret }}"
    mountpoint: /srv/evidence/case-42
  register: lun

- name: Detach it (flushed, so the collector can hash the LUN right after)
  dfir.vmcollect.iscsi_attach:
    case_id: case-42
    mountpoint: /srv/evidence/case-42
    state: absent

- name: Detach it, then undo whatever else the case left on the host (its case lock), in one module run
  dfir.vmcollect.iscsi_attach:
    case_id: case-42
    mountpoint: /srv/evidence/case-42
    state: absent
    teardown: true

- name: Attach a LUN that holds evidence again, without writing to it (not even its superblock)
  dfir.vmcollect.iscsi_attach:
    case_id: case-42
    portal_address: 10.0.5.1
    target_iqn: iqn.2026-01.org.example:case-42
    initiator_iqn: iqn.2026-01.org.example:kvm1
    chap_user: case42
    chap_password: "{{ vault_chap_secret }}"
    mountpoint: /srv/evidence/case-42-ro
    read_only: true
"""

RETURN = r"""
link_lost:
  description: With O(state=absent), the link watchdog's note when it stopped the daemon because the iSCSI link was lost.
  returned: when the watchdog fired
  type: str
mountpoint:
  description: Where the LUN's filesystem is mounted.
  returned: always
  type: str
device:
  description: The block device mounted (a loop device for userspace, the LUN's disk for open-iscsi).
  returned: state=present
  type: str
filesystem:
  description: Filesystem type.
  returned: state=present
  type: str
formatted:
  description: Whether this run made the filesystem (V(null) in check mode).
  returned: state=present
  type: bool
size_bytes:
  description: Size of the mounted filesystem.
  returned: state=present
  type: int
free_bytes:
  description: Space available on it.
  returned: state=present
  type: int
lun_size_bytes:
  description: Size of the LUN.
  returned: state=present
  type: int
filesystem_grown:
  description:
    - When the LUN is larger than the ext3/ext4 filesystem on it (the collector grew the volume of a case whose earlier
      run was killed, to make room for a rerun beside what that run left), the filesystem was grown to the LUN
      (C(resize2fs), offline before the mount, after a read-only C(e2fsck -f -n) found it clean); its files are
      not touched. V(null) when nothing was grown.
  returned: state=present, not in check mode
  type: dict
  contains:
    from_bytes:
      description: Size of the filesystem before.
      type: int
    to_bytes:
      description: Size of the filesystem after.
      type: int
qsd_pid:
  description: PID of the qemu-storage-daemon serving the LUN (userspace).
  returned: state=present
  type: int
export_file:
  description: The FUSE export file of the LUN (userspace).
  returned: state=present
  type: str
session:
  description: The open-iscsi session (target_iqn, portal, iface, lun, device).
  returned: state=present
  type: dict
read_only:
  description: Whether the LUN is attached and mounted read-only (O(read_only)).
  returned: state=present
  type: bool
attachment:
  description: Name of this attachment (QEMU export id, open-iscsi iface name), unique per case and mountpoint.
  returned: always
  type: str
plan:
  description: What was (or in check mode would be) done, as sentences.
  returned: always
  type: list
  elements: str
undone:
  description: For O(state=absent), the journal records undone (action, description, result).
  returned: state=absent
  type: list
  elements: dict
teardown:
  description: With O(teardown=true), what the teardown of the rest of the journal did, as M(dfir.vmcollect.teardown)
    returns it - C(undone), C(kept), C(records), C(removed), C(journal).
  returned: state=absent and O(teardown=true)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
# teardown=true may meet any change of the case on the host (a per-VM teardown that failed leaves the guest's): the
# undo handlers are loaded as the journal names them, as the teardown module loads them
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import handlers as _handlers  # noqa: F401 pylint: disable=unused-import

from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import initiator as _iscsi_initiator


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["present", "absent"], default="present"),
            initiator=dict(type="str", choices=["userspace", "open-iscsi"], default="userspace"),
            mountpoint=dict(type="path", required=True),
            portal_address=dict(type="str"),
            portal_port=dict(type="int", default=3260),
            target_iqn=dict(type="str"),
            lun=dict(type="int", default=1),
            timeout=dict(type="int", default=30),
            initiator_iqn=dict(type="str"),
            chap_user=dict(type="str"),
            chap_password=dict(type="str", no_log=True),
            mutual_chap_user=dict(type="str"),
            mutual_chap_password=dict(type="str", no_log=True),
            filesystem=dict(type="str", choices=["ext4", "ext3", "ext2", "xfs"], default="ext4"),
            filesystem_label=dict(type="str", default="vmcollect"),
            format=dict(type="str", choices=["if_blank", "never", "force"], default="if_blank"),
            run_dir=dict(type="path"),
            read_only=dict(type="bool", default=False),
            teardown=dict(type="bool", default=False),
            **journal_spec()
        ),
        required_if=[("state", "present", ("portal_address", "target_iqn", "initiator_iqn"))],
        required_together=[("chap_user", "chap_password"), ("mutual_chap_user", "mutual_chap_password")],
        supports_check_mode=True,
    )
    p = dict(module.params)
    try:
        journal = Journal(p.pop("case_id"), p.pop("journal_dir"))
        p["case_id"] = journal.case_id
        teardown = p.pop("teardown")
        if p["state"] == "present":
            result = _iscsi_initiator.attach(journal, p, check_mode=module.check_mode)
        else:
            result = _iscsi_initiator.detach(journal, p, check_mode=module.check_mode)
            if teardown:
                rest = journal.teardown(check_mode=module.check_mode)
                result["teardown"] = dict(((k, rest[k]) for k in ("undone", "kept", "records", "removed")),
                                          journal=journal.path)
                result["changed"] = result["changed"] or bool(rest["undone"]) or rest["removed"]
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
