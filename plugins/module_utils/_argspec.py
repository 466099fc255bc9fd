# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument specs shared by modules (documented by the doc fragments of the same names)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import DEFAULT_JOURNAL_DIR

# libvirt's URI of the local QEMU/KVM host. It lives here, not in _kvm.libvirt (which uses it), so that a module
# that only takes a journal does not import libvirt's bindings to build its argument spec: ~55 ms of every module run.
DEFAULT_URI = "qemu:///system"

# The SSH engine's defaults (_ssh.client uses them). They live here, not in _ssh.client, so that a module whose
# argument spec has the ``ssh`` option (teardown) does not import the SSH client and paramiko to build it.
SSH_DEFAULT_PORT = 22
SSH_DEFAULT_TIMEOUT = 30  # seconds: the TCP connection, the SSH banner, the key exchange, the login, opening a channel
SSH_DEFAULT_COMMAND_TIMEOUT = 3600  # seconds: one command (a thin clone of a large disk takes long; give more per call)

# AnsibleModule keyword arguments that go with kvm_vm_spec()
KVM_VM_RULES = {"required_one_of": [("name", "uuid")], "mutually_exclusive": [("name", "uuid")]}


def kvm_vm_spec():
    """name / uuid / uri: one libvirt domain on the KVM host (doc fragment dfir.vmcollect.kvm_vm)."""
    return dict(
        name=dict(type="str"),
        uuid=dict(type="str"),
        uri=dict(type="str", default=DEFAULT_URI),
    )


def journal_spec(required=True):
    """case_id / journal_dir: the case's undo journal on the host (doc fragment dfir.vmcollect.journal, or
    dfir.vmcollect.journal.at_work when ``required`` is false: a module that changes nothing but is journaled while
    at work, so that the case's teardown can stop it)."""
    return dict(
        case_id=dict(type="str", required=required),
        journal_dir=dict(type="path", default=DEFAULT_JOURNAL_DIR),
    )


def ssh_option_spec():
    """The ``ssh`` option of the modules with an ``engine``, and of teardown (doc fragment dfir.vmcollect.esxi_ssh)."""
    return dict(type="dict", options=dict(
        port=dict(type="int", default=SSH_DEFAULT_PORT),
        username=dict(type="str"),
        password=dict(type="str", no_log=True),
        private_key_file=dict(type="path", no_log=False),
        private_key_passphrase=dict(type="str", no_log=True),
        known_hosts=dict(type="path"),
        host_key_fingerprint=dict(type="str", no_log=False),
        timeout=dict(type="int", default=SSH_DEFAULT_TIMEOUT),
        command_timeout=dict(type="int", default=SSH_DEFAULT_COMMAND_TIMEOUT),
    ))
