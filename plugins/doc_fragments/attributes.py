# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    """Honest attribute descriptions shared by every module of the collection."""

    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description:
      - Can run in check mode and predict the result without changing anything on any host.
      - Modules that only read run in full in check mode; modules that change a host report
        the plan of what they would change.
  diff_mode:
    description:
      - Returns details of what changed (or would change in check mode) in diff mode.
"""
