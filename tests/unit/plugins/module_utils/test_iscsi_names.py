# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One rule for iSCSI names (RFC 3720/3721/3980), the same for the target and the initiator."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import initiator as ii
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import names
from ansible_collections.dfir.vmcollect.plugins.module_utils._iscsi import target as t

ACCEPTED = [
    "iqn.2026-11.io.x",
    "iqn.2026-11.io.x:a.b:c-d",
    "iqn.1993-08.org.debian:01:a1b2c3d4e5f6",  # open-iscsi's generated initiator name
    "iqn.1991-05.com.microsoft:host-1.example.org",
    "iqn.2026-01.lab.vmcollect:it-att.lun",
    "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",  # RFC 3720's example
    "iqn.2026-11.io.x:" + "a" * (223 - 17),  # exactly 223 bytes
    "eui.02004567a425678d",
    "eui.02004567A425678D",  # RFC 3720's example
    "naa.52004567ba64678d",
    "naa.52004567BA64678D52004567BA64678D",
]
REFUSED = [
    "",
    "iqn",
    "iqn.26-1.x:y",
    "iqn.2026-13.io.x",  # no month 13
    "iqn.2026-1.io.x",
    "iqn.2026-11.",
    "iqn.2026-11.io.x:",  # a colon with nothing after it
    "iqn.2026-11.-io.x",  # a domain label starts with a letter or digit
    "iqn.2026-11.io..x",
    "iqn.2026-11.io.x:a b",
    "iqn.2026-11.io.x:a,b",
    "iqn.2026-11.io.x:a/b",  # open-iscsi names a folder after the IQN
    "iqn.2026-11.io.x:a_b",
    "iqn.2026-11.io.x:A",  # compared in lowercase (RFC 3722): write it so
    "iqn.2026-11.IO.x",
    "IQN.2026-11.io.x",
    "iqn.2026-11.io.x:" + "a" * (224 - 17),  # 224 bytes
    "iqn.2026-11.io.x:caf\u00e9",
    "iqn.2026-11.io.x:a\n",
    "eui.02004567a425678",
    "eui.02004567a425678dd",
    "eui.02004567a425678g",
    "EUI.02004567a425678d",
    "naa.52004567ba64678d5",  # neither 16 nor 32 digits
    "naa.52004567ba64678d52004567ba64678",
    "iqn.2026-11.io.x:a ",
]


def _target_accepts(name):
    options = dict(backing_file="/evidence/c/kvm1.lun", size="20G", initiator_iqn=name,
                   initiator_addresses=["10.0.0.2"], portal_address="10.0.0.1", chap_user="u1",
                   chap_password="a-long-secret-1")
    try:
        t.build_spec("case-1", "present", **options)
    except InvalidInputError as exc:
        # an empty name is refused as a missing option, before the name rule
        assert "initiator_iqn %r is not an iSCSI name" % name in exc.message or not name
        return False
    return True


def _initiator_accepts(name):
    params = dict(case_id="c-1", initiator="userspace", portal_address="10.0.0.1", target_iqn="iqn.2026-11.io.x:t",
                  initiator_iqn=name, mountpoint="/srv/evidence", run_dir="/run/x")
    try:
        ii.validate(params)
    except InvalidInputError as exc:
        # an empty name is refused as a missing option, before the name rule
        assert "initiator_iqn %r is not an iSCSI name" % name in exc.message or not name
        return False
    return True


@pytest.mark.parametrize("name", ACCEPTED)
def test_accepted_by_both(name):
    assert names.is_iscsi_name(name)
    assert names.check_iqn(name, "target_iqn") == name
    assert _target_accepts(name) and _initiator_accepts(name)


@pytest.mark.parametrize("name", REFUSED)
def test_refused_by_both(name):
    assert not names.is_iscsi_name(name)
    with pytest.raises(InvalidInputError, match="target_iqn .* is not an iSCSI name"):
        names.check_iqn(name, "target_iqn")
    assert not _target_accepts(name) and not _initiator_accepts(name)


def test_refusals_say_why():
    with pytest.raises(InvalidInputError, match=r"\(it is 224 bytes long\)"):
        names.check_iqn("iqn.2026-11.io.x:" + "a" * 207, "initiator_iqn")
    with pytest.raises(InvalidInputError, match="write it in lowercase"):
        names.check_iqn("iqn.2026-11.io.x:Host1", "initiator_iqn")
    with pytest.raises(InvalidInputError, match=r"^target_iqn None is not an iSCSI name; use iqn\.YYYY-MM\."):
        names.check_iqn(None, "target_iqn")


def test_derive_iqn_is_an_iscsi_name():
    assert t.derive_iqn is names.derive_iqn and t.check_iqn is names.check_iqn
    for case, target_name in (("Case_42", None), ("Case_42", "KVM host 1"), ("x" * 128, "y" * 64), ("...", "__")):
        iqn = names.derive_iqn(case, target_name)
        assert names.is_iscsi_name(iqn), iqn
