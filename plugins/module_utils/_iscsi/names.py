# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one rule for iSCSI names (RFC 3720 section 3.2.6, RFC 3721, RFC 3980), for the target and the initiator.

Accepted, at most 223 bytes:

* ``iqn.YYYY-MM.<reversed domain>[:<unique name>]``: a month 01-12, domain labels of lowercase
  letters, digits and inner dashes, and a unique part of lowercase letters, digits, ``.``, ``-``
  and ``:``. Names are compared after RFC 3722's stringprep, which lowercases them, so an uppercase
  name would not be the name a target or an initiator compares; it is refused, not changed. The
  Unicode characters RFC 3722 also allows are refused: tgt, QEMU and open-iscsi's record files
  (named after the IQN) are only used with ASCII here.
* ``eui.`` and 16 hexadecimal digits (EUI-64).
* ``naa.`` and 16 or 32 hexadecimal digits (NAA 64- or 128-bit).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError

MAX_BYTES = 223
IQN_PREFIX = "iqn.2026-11.io.dfir.vmcollect"
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
ISCSI_NAME = re.compile(
    r"(?:iqn\.[0-9]{4}-(?:0[1-9]|1[0-2])\.%s(?:\.%s)*(?::[a-z0-9.:-]+)?"
    r"|eui\.[0-9A-Fa-f]{16}"
    r"|naa\.(?:[0-9A-Fa-f]{16}|[0-9A-Fa-f]{32}))" % (_LABEL, _LABEL))
FORMS = ("iqn.YYYY-MM.<reversed domain>[:<unique name>] (lowercase letters, digits, '.', '-' and ':'), "
         "eui.<16 hex digits> or naa.<16 or 32 hex digits>, at most %d bytes" % MAX_BYTES)


def is_iscsi_name(name):
    """Whether ``name`` (text) is an iSCSI name this collection accepts."""
    return (isinstance(name, str) and len(name.encode("utf-8")) <= MAX_BYTES
            and ISCSI_NAME.fullmatch(name) is not None)


def check_iqn(iqn, option):
    """``iqn`` unchanged when it is an iSCSI name; else InvalidInputError naming the user's ``option``."""
    if is_iscsi_name(iqn):
        return iqn
    why = ""
    if isinstance(iqn, str):
        if len(iqn.encode("utf-8")) > MAX_BYTES:
            why = " (it is %d bytes long)" % len(iqn.encode("utf-8"))
        elif iqn != iqn.lower() and iqn.lower().startswith("iqn."):
            why = " (iSCSI names are compared in lowercase, so write it in lowercase)"
    raise InvalidInputError("%s %r is not an iSCSI name%s; use %s." % (option, iqn, why, FORMS))


def derive_iqn(case_id, target_name=None):
    """iqn.2026-11.io.dfir.vmcollect:<case id, lowercased>[:<target name>], other characters made '-'."""
    def clean(text):
        return re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.") or "x"

    iqn = "%s:%s" % (IQN_PREFIX, clean(case_id))
    if target_name:
        iqn += ":" + clean(target_name)
    return check_iqn(iqn, "target_iqn")
