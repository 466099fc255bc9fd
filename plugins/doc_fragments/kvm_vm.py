# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The options that select one libvirt domain on a KVM host (module_utils._argspec.kvm_vm_spec)."""

    DOCUMENTATION = r"""
options:
  name:
    description:
      - Name of the VM (libvirt domain). Spaces and quotes are fine.
      - Exactly one of O(name) and O(uuid) is required.
    type: str
  uuid:
    description:
      - UUID of the VM (libvirt domain).
      - Exactly one of O(name) and O(uuid) is required.
    type: str
  uri:
    description:
      - libvirt connection URI on the KVM host.
    type: str
    default: qemu:///system
"""
