# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's exceptions.

Everything under module_utils raises these (never calls fail_json); only a module's
``main()`` turns them into ``fail_json``. Each message is a whole sentence a responder can
act on at 3 a.m.; ``details`` carries machine-readable facts for the task result.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class VmcollectError(Exception):
    """Base class: a clear message plus structured details for the result."""

    def __init__(self, message, **details):
        super(VmcollectError, self).__init__(message)
        self.message = message
        self.details = details


class InvalidInputError(VmcollectError, ValueError):
    """An option value is malformed (a digest that is not hex, an unknown algorithm...)."""

    def __init__(self, message, **details):
        VmcollectError.__init__(self, message, **details)


class EvidenceSourceError(VmcollectError):
    """A path to read is missing, unreadable, of the wrong type, or changed while read."""


class ChecksumFileError(VmcollectError):
    """A checksum file is missing, unreadable or malformed."""


class HashMismatchError(VmcollectError):
    """At least one digest differs from the expected one."""


class DestinationError(VmcollectError):
    """A destination cannot be written, lacks space, or already holds something else."""


def fail_module(module, error, **result):
    """Turn a VmcollectError into fail_json (for use in a module's main() only)."""
    result.update(error.details)
    module.fail_json(msg=error.message, **result)


class JournalError(VmcollectError):
    """The undo journal cannot be written, read or replayed."""


class LibvirtError(VmcollectError):
    """libvirt cannot be reached, or refused or failed a call about a VM."""


class DomainNotFoundError(LibvirtError):
    """No VM with the given name or UUID is defined on the host."""


class SnapshotError(VmcollectError):
    """A VM's disks cannot be frozen, or the freeze cannot be undone."""


class ManifestError(VmcollectError):
    """The case manifest cannot be read, merged or written."""


class CustodyError(VmcollectError):
    """A custody log is broken, incomplete or not a custody log: nothing is appended to it."""


class SigningError(VmcollectError):
    """A record cannot be signed with the key given (passphrase without an agent, no private key, ssh-keygen failed)."""


class SignatureError(VmcollectError):
    """At least one record's signature is missing or does not verify (the record changed, or another key signed it)."""


class MemoryAcquisitionError(VmcollectError):
    """A VM's memory cannot be acquired by the method asked for (never replaced by another method)."""


class MigrationStreamError(VmcollectError):
    """A QEMU migration stream is truncated, malformed, or holds something this reader cannot decode."""


class IscsiTargetError(VmcollectError):
    """An iSCSI target on the collector cannot be set up, changed or removed as asked."""


class IscsiAttachError(VmcollectError):
    """An iSCSI LUN cannot be attached, formatted, mounted or detached on the host."""


class LockHeldError(VmcollectError):
    """A case or a VM is locked by another run; nothing was changed."""


class StoppedError(VmcollectError):
    """The module was stopped (SIGTERM) while it worked for a case: the case's teardown stops what is still running."""


class VsphereError(VmcollectError):
    """The vSphere API (an ESXi host or a vCenter) refused or failed a call, or a task did not finish in time."""


class VsphereConnectionError(VsphereError):
    """An ESXi host or vCenter cannot be reached, its TLS certificate is not the one trusted, or it refused the login."""


class VmNotFoundError(VsphereError):
    """No VM (or more than one) matches the name or UUID given on the ESXi host or vCenter."""


class SshError(VmcollectError):
    """An SSH server (an ESXi host's) failed a command, or a command wrote more than the client keeps."""


class SshConnectionError(SshError):
    """An SSH server cannot be reached, does not speak SSH, or refused the login."""


class SshHostKeyError(SshConnectionError):
    """An SSH server's host key is unknown, changed, revoked or not the pinned one; no credential was sent."""


class SshTimeout(SshError):
    """A command over SSH did not end within its timeout (it was stopped on the host where possible)."""


class SshCommandError(SshError):
    """A command over SSH ended with a non-zero exit code."""
