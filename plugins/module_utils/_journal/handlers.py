# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where each undo handler lives, loaded when a journal needs it (the ``teardown`` module's handlers).

A module that changes a host imports its own handlers with its code. ``teardown`` may meet any change of the
collection, but one journal holds a few kinds: importing every handler module (libvirt's bindings, pyVmomi's clients,
the SSH engine) cost it about 0.4 s of each run, three times per iSCSI acquisition. ``Journal.replay`` asks the
loaders in ``UNDO_LOADERS`` for an action it has no handler for; ``load`` imports the handler module(s) named for that
action's prefix below. An action no prefix names makes it import them all, so a change of a kind it does not know is
still reported as one this version cannot undo. The imports are written out, one function each, so that Ansible's
module packer sees them and ships the files with the module.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import UNDO_HANDLERS, UNDO_LOADERS

# pylint: disable=import-outside-toplevel,unused-import


def _case_lock():
    from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import lock  # noqa: F401


def _running():
    from ansible_collections.dfir.vmcollect.plugins.module_utils._journal import running  # noqa: F401


def _kvm_snapshot():
    from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import snapshot  # noqa: F401


def _kvm_memory():
    from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import memory  # noqa: F401


def _iscsi_target():
    from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import target  # noqa: F401


def _iscsi_initiator():
    from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import initiator  # noqa: F401


def _vsphere_snapshot():
    from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import snapshot  # noqa: F401


def _evidence_file():
    # the API's handler, and the SSH engine's undo of the copies it made under the same action
    from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import clone  # noqa: F401
    from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import clone as shell_clone  # noqa: F401


def _vsphere_storage():
    from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import storage  # noqa: F401
    from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import storage as shell_storage  # noqa: F401


# action prefix -> the function that imports its handlers; the first prefix that matches wins
LOADERS = (
    ("lock.", _case_lock),
    ("module.running", _running),
    ("kvm.external_snapshot", _kvm_snapshot),
    ("kvm.", _kvm_memory),
    ("tgt.", _iscsi_target),
    ("nft.", _iscsi_target),
    ("iscsi.", _iscsi_initiator),
    ("vsphere.snapshot", _vsphere_snapshot),
    ("vsphere.evidence_file", _evidence_file),
    ("vsphere.", _vsphere_storage),
)


def load(action):
    """Import the handler module(s) of ``action``; all of them when no prefix names it."""
    if action in UNDO_HANDLERS:  # the journal's own (file.created, sysctl), or loaded before
        return
    for prefix, loader in LOADERS:
        if action.startswith(prefix):
            loader()
            if action in UNDO_HANDLERS:
                return
            break
    for dummy, loader in LOADERS:
        loader()


if load not in UNDO_LOADERS:
    UNDO_LOADERS.append(load)
