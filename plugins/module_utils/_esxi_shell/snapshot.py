# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SSH engine's snapshot writes: ``vim-cmd vmsvc/snapshot.create`` and ``vmsvc/snapshot.remove``.

Everything else about a freeze - the plan and its refusals, the journal record (``vsphere.snapshot`` with
``engine: ssh`` and the VM's vmid), finding the snapshot in the VM's tree afterwards, the frozen chains, the guest's
pause - is the API engine's (``_vsphere/snapshot.py``) and reads the vSphere API, which a free host answers. Only the
two changes go through the host's shell, where the free licence does not forbid them.

``vim-cmd vmsvc/snapshot.create <vmid> <name> <description> <includeMemory> <quiesced>`` waits for the snapshot
(the host's own task); ``vim-cmd vmsvc/snapshot.remove <vmid> <snapshotId>`` removes exactly that snapshot and
consolidates (ESXi 6.5 and later: the id is the snapshot's, ``vmsvc/snapshot.get`` lists it). A quiesce has no
timeout of ours there (the host's default applies).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell.host import EsxiShellError, Shell
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import parse as _parse

CREATE_TIMEOUT = 3600  # seconds: a memory snapshot of a VM with much RAM takes minutes
REMOVE_TIMEOUT = 3600  # seconds: the removal consolidates the delta into its parent


class ShellSnapshots(object):
    """The two snapshot changes through an ESXi host's shell (an open SshClient)."""

    def __init__(self, ssh):
        self.shell = Shell(ssh)
        self.ssh = ssh

    @property
    def where(self):
        return self.shell.where

    def vmid(self, desc):
        """The vim-cmd vmid of the described VM (found by its configuration file)."""
        return self.shell.vmid(desc["vmx"], desc.get("datastores") or ())

    def create(self, vmid, name, description, memory, quiesce, timeout=CREATE_TIMEOUT):
        self.shell.run(["vim-cmd", "vmsvc/snapshot.create", str(vmid), name, description, "1" if memory else "0",
                        "1" if quiesce else "0"], timeout=timeout)

    def snapshots(self, vmid):
        return _parse.snapshot_get(self.shell.run(["vim-cmd", "vmsvc/snapshot.get", str(vmid)]))

    def remove(self, vmid, snapshot_id, timeout=REMOVE_TIMEOUT):
        self.shell.run(["vim-cmd", "vmsvc/snapshot.remove", str(vmid), str(snapshot_id)], timeout=timeout)

    def host_key(self):
        return self.ssh.host_key_record()


def shell_error_text(exc):
    return exc.message if isinstance(exc, EsxiShellError) else str(exc)
