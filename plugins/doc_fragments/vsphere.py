# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The connection options of every vSphere module (module_utils._vsphere.client.vsphere_argument_spec), named
    as community.vmware and vmware.vmware name them, so their inventories and module_defaults work as they are."""

    DOCUMENTATION = r"""
options:
  hostname:
    description:
      - Name or address of the ESXi host or vCenter Server whose vSphere API to use.
      - If not given, the environment variable E(VMWARE_HOST) is used.
    type: str
    required: true
  username:
    description:
      - User to log in as. Its password is sent only after the server's TLS certificate passed the checks below.
      - If not given, the environment variable E(VMWARE_USER) is used.
    type: str
    required: true
    aliases: [user, admin]
  password:
    description:
      - That user's password. Never written to a result, a log, an error message or the undo journal.
      - If not given, the environment variable E(VMWARE_PASSWORD) is used.
    type: str
    required: true
    aliases: [pass, pwd]
  port:
    description:
      - TCP port of the vSphere API.
      - If not given, the environment variable E(VMWARE_PORT) is used, else 443.
    type: int
    default: 443
  validate_certs:
    description:
      - Check the server's TLS certificate chain (against O(ca_file), or the system's trust store) and its name.
      - V(false) turns every check off. That is never silent - the result's C(tls) record says C(verified=false),
        with the SHA-256 thumbprint of the certificate that was seen, for the case record.
      - Ignored when O(thumbprint) is given, which is the stricter check.
      - If not given, the environment variable E(VMWARE_VALIDATE_CERTS) is used, else V(true).
    type: bool
    default: true
  ca_file:
    description:
      - PEM file of the certificate authorities that may sign the server's certificate; only these are trusted
        (not the system's). Used with O(validate_certs=true).
      - Mutually exclusive with O(thumbprint).
    type: path
  thumbprint:
    description:
      - Pin the server's certificate - the SHA-256 fingerprint it must have, as vSphere shows it (V(AA:BB:...)) or as
        64 hex digits. ESXi hosts usually have self-signed certificates, and a pin is the strong way to trust one.
      - Checked on every connection right after the TLS handshake, before anything is sent; a different certificate
        is refused with both thumbprints named, and no credential is sent. The certificate's chain and name are not
        checked then.
      - SHA-1 fingerprints are refused (SHA-1 is too weak to pin a certificate).
    type: str
  datacenter:
    description:
      - Look for the VM in this datacenter only (its name as vCenter shows it). Without it the whole inventory is
        searched, and a name that several VMs share is refused, naming them.
      - A standalone ESXi host has one datacenter, V(ha-datacenter).
    type: str
  timeout:
    description:
      - Seconds each vSphere task (a snapshot, its removal, a consolidation) may take before the module gives up
        waiting, says so and names the task. Each HTTP request has its own bound of 120 seconds.
    type: int
    default: 3600
requirements:
  - pyvmomi 8.0.1 or later, for the Python that runs the module (on the controller, or the host it is delegated to)
notes:
  - The module talks to the vSphere API from where it runs (usually the controller, with C(delegate_to=localhost));
    nothing is installed on, or copied to, the ESXi host.
"""

    # the VM selector of the vSphere modules (module_utils._vsphere.client.VSPHERE_VM_RULES)
    VM = r"""
options:
  name:
    description:
      - Name of the VM, exactly as the inventory shows it. Spaces, brackets, quotes and slashes are fine.
      - Exactly one of O(name) and O(uuid) is required.
    type: str
  uuid:
    description:
      - The VM's BIOS UUID (C(config.uuid)) or its instance UUID (C(config.instanceUuid)).
      - Exactly one of O(name) and O(uuid) is required.
    type: str
"""
