# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: case_id
author: dfir.vmcollect contributors
version_added: 0.2.0
short_description: Whether a value is a usable case id
description:
  - True when the value is a case id every module of this collection accepts, the same rule the modules
    apply (C(case_id) of every module, for example O(dfir.vmcollect.case_lock#module:case_id)).
  - 1 to 128 characters, letters, digits, V(.), V(_) and V(-), starting with a letter or a digit. The case
    id names journals, folders, files, iSCSI targets and QEMU ids on every host, so nothing else is accepted.
  - Only text is a case id; a number (an unquoted V(20261121) in YAML) is not.
options:
  _input:
    description: The value to test.
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Refuse an unusable case id before anything is changed
  ansible.builtin.assert:
    that:
      - my_case_id is dfir.vmcollect.case_id
    fail_msg: "The case id {{ my_case_id }} is not usable: letters, digits, '.', '_' and '-', at most 128."
    quiet: true
"""

RETURN = r"""
_value:
  description: Whether the value is a usable case id.
  type: boolean
"""

from ansible_collections.dfir.vmcollect.plugins.module_utils._case import is_case_id


class TestModule(object):
    """Jinja2 tests of dfir.vmcollect."""

    def tests(self):
        return {"case_id": is_case_id}
