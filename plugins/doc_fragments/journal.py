# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """The case and undo journal options of every module that changes a host (module_utils._argspec.journal_spec)."""

    DOCUMENTATION = r"""
options:
  case_id:
    description:
      - Case identifier; names the undo journal on the host (and files the module creates).
      - Letters, digits, V(.), V(_) and V(-), at most 128, starting with a letter or digit.
    type: str
    required: true
  journal_dir:
    description:
      - Folder of the undo journals on the host. Created if missing; M(dfir.vmcollect.teardown) removes
        what it created once every change is undone.
    type: path
    default: /var/lib/dfir-vmcollect/journal
"""

    # a module that changes no host but works for a case: journaled while at work, so the case's teardown can stop it
    AT_WORK = r"""
options:
  case_id:
    description:
      - The case this module works for. While it works, it is written in the case's undo journal on the host
        (its pid and what it does), and M(dfir.vmcollect.teardown) of the case stops it (SIGTERM, then SIGKILL)
        before it undoes anything else, for example after the playbook was killed.
      - Without it, nothing is journaled.
      - Letters, digits, V(.), V(_) and V(-), at most 128, starting with a letter or digit.
    type: str
  journal_dir:
    description: Folder of the undo journals on the host (used with O(case_id)).
    type: path
    default: /var/lib/dfir-vmcollect/journal
"""
