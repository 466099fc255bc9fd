# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The connection options of every module that works over SSH (module_utils._ssh.client.ssh_argument_spec), for
    ESXi hosts without the vSphere API (free ESXi) and any host with a POSIX shell."""

    DOCUMENTATION = r"""
options:
  hostname:
    description:
      - Name or address of the host to connect to over SSH (an ESXi host).
    type: str
    required: true
  port:
    description:
      - TCP port of the host's SSH server.
    type: int
    default: 22
  username:
    description:
      - User to log in as.
    type: str
    default: root
  password:
    description:
      - That user's password, for password login (also given to a keyboard-interactive prompt, which is how ESXi
        asks for it). Sent only after the host key passed the check below.
      - Never written to a result, a log, an error message or the undo journal.
      - ESXi locks an account after a few failed logins in a row (C(Security.AccountLockFailures)).
    type: str
  private_key_file:
    description:
      - Private key (OpenSSH or PEM format; ed25519, ecdsa or rsa) to log in with, on the machine that runs the
        module. On ESXi, root's authorized keys are in C(/etc/ssh/keys-root/authorized_keys).
      - O(password) and O(private_key_file) may both be given; the key is tried first.
    type: path
  private_key_passphrase:
    description:
      - The passphrase of an encrypted O(private_key_file). Never written anywhere.
    type: str
  known_hosts:
    description:
      - OpenSSH known_hosts file that holds the host's key, under the name C(host) on port 22 and C([host]:port) on
        any other (plain or hashed names, wildcards and C(@revoked) lines as OpenSSH reads them; C(@cert-authority)
        lines are not used).
      - The host key is checked before any credential is sent. A host whose key is not in the file, or whose key
        differs from the one the file holds for it, is refused with a message that names the host, the key type and
        its SHA256 fingerprint, and says how to check it out of band and add it (C(ssh-keyscan)). Nothing is ever
        added to the file.
      - If neither O(known_hosts) nor O(host_key_fingerprint) is given, C(~/.ssh/known_hosts) of the user that runs
        the module is used.
      - Mutually exclusive with O(host_key_fingerprint).
    type: path
  host_key_fingerprint:
    description:
      - Pin the host key - its SHA256 fingerprint as OpenSSH prints it (V(SHA256:...), from
        C(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) on the host's console); a whole line of
        C(ssh-keygen -lf) output is accepted too. Any of the host's key types may be pinned.
      - A host none of whose keys has this fingerprint is refused, naming the fingerprints it presented, before any
        credential is sent. MD5 fingerprints are refused (MD5 is too weak to pin a key).
      - Mutually exclusive with O(known_hosts).
    type: str
  allow_agent:
    description:
      - Also try the keys of an SSH agent (C(SSH_AUTH_SOCK)) to log in.
    type: bool
    default: false
  look_for_keys:
    description:
      - Also try the default private keys of C(~/.ssh) (C(id_ed25519), C(id_ecdsa), C(id_rsa)) to log in.
    type: bool
    default: false
  timeout:
    description:
      - Seconds that connecting may take at each step (TCP connection, SSH banner, key exchange, login) and that
        opening a channel for a command may take.
    type: int
    default: 30
  command_timeout:
    description:
      - Seconds a command on the host may take unless the module says otherwise for a step. A command past its
        timeout is stopped on the host (SIGTERM to its process group, SIGKILL 2 seconds later) and the module fails,
        naming it.
    type: int
    default: 3600
requirements:
  - paramiko 3.4 or later, for the Python that runs the module
notes:
  - Commands are given to the host's shell (busybox ash on ESXi) with every argument quoted, so names with spaces,
    brackets and quotes arrive as they are.
  - Secrets reach commands on their standard input, never on their command line, which anyone on the host can read
    in its process list. The one exception is C(esxcli iscsi adapter auth chap set --secret), which has no other way
    to take the CHAP secret - it is in the host's process list for the moment that command runs, and is masked in
    every message of the module.
"""
