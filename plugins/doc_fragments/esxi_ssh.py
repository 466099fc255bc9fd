# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The ``ssh`` option of the ESXi modules with an ``engine`` (module_utils._argspec.ssh_option_spec): how
    the SSH engine logs in to the ESXi host named by ``hostname``."""

    DOCUMENTATION = r"""
options:
  ssh:
    description:
      - How the SSH engine logs in to the ESXi host O(hostname), the host whose shell (C(vim-cmd), C(vmkfstools),
        C(esxcli), C(partedUtil)) makes the changes when the engine is V(ssh) (or V(auto) chose it). Reads still go
        through the vSphere API, which a free ESXi host answers.
      - SSH must be enabled on the host (the C(TSM-SSH) service). Enabling it is a change to the host that this
        version leaves to the responder (DCUI or the host client), to be turned off again afterwards.
      - With the V(api) engine it is used only where a change an earlier run made over SSH is undone (for example
        M(dfir.vmcollect.esxi_iscsi_datastore) with C(state=absent)).
    type: dict
    suboptions:
      port:
        description: TCP port of the host's SSH server.
        type: int
        default: 22
      username:
        description: User to log in as. Default - O(username) (ESXi's root logs in to the API and over SSH alike).
        type: str
      password:
        description:
          - That user's password. Default - O(password), unless O(ssh.private_key_file) is given. Never written to a
            result, a log, an error message or the journal; sent only after the host key passed the check.
        type: str
      private_key_file:
        description: Private key to log in with (on ESXi, root's authorized keys are C(/etc/ssh/keys-root/authorized_keys)).
        type: path
      private_key_passphrase:
        description: The passphrase of an encrypted O(ssh.private_key_file).
        type: str
      known_hosts:
        description:
          - OpenSSH known_hosts file holding the host's key. A host whose key is not in it, or differs, is refused
            before any credential is sent, with the fingerprint it presented. Default C(~/.ssh/known_hosts).
          - Mutually exclusive with O(ssh.host_key_fingerprint).
        type: path
      host_key_fingerprint:
        description: Pin the host key by its SHA256 fingerprint (V(SHA256:...), from C(ssh-keygen -lf) on the host's console).
        type: str
      timeout:
        description: Seconds for the connection, the key exchange and the login.
        type: int
        default: 30
      command_timeout:
        description: Seconds a command may run before it is stopped on the host (a clone of a large disk takes long).
        type: int
        default: 3600
"""
