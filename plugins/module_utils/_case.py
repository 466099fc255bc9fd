# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one rule for a case id: it names journals, folders, files, targets and QEMU ids on every host.

1 to 128 characters: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or a digit (so it
is never ``.``, ``..`` or an option). Roles check it with the test plugin ``dfir.vmcollect.case_id``,
modules with ``check_case_id``.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError

CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_case_id(value):
    """Whether ``value`` is a usable case id (text only; the whole value, a trailing newline included)."""
    return isinstance(value, str) and CASE_ID.fullmatch(value) is not None


def check_case_id(case_id):
    """``case_id`` unchanged when it is usable, else InvalidInputError with a sentence."""
    if not is_case_id(case_id):
        raise InvalidInputError(
            "The case id %r is not usable in file names; use letters, digits, '.', '_' and '-' "
            "(at most 128, starting with a letter or digit)." % (case_id,))
    return case_id
