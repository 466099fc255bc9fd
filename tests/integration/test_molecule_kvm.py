# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The molecule scenarios of the KVM roles (extensions/molecule/kvm_*), run as a developer runs them:
``molecule test -s <scenario>`` from the repository's root, on the lab (up already: create leaves it, destroy does not
bring down a lab it did not bring up).

kvm_local (the acquire and kvm_acquire roles: converge, idempotence, verify) runs in CI; kvm_iscsi (the collector role
too: converge, the rerun as its side effect, verify) takes about 2.5 minutes and runs with the slow tests
(``make test-slow``) and ``make molecule``.
"""

import re

import pytest

from conftest import molecule_recap, molecule_test


def test_kvm_local_converges_is_idempotent_and_verifies(lab):
    rc, out = molecule_test("kvm_local")
    assert rc == 0, out[-6000:]
    assert molecule_recap(out, "kvm_local") == (5, 5, 0)
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert re.search(r"\[kvm_local > %s\] Executed: Successful" % step, out), step


@pytest.mark.slow
def test_kvm_iscsi_converges_reruns_without_writing_the_sealed_volume_and_verifies(lab):
    rc, out = molecule_test("kvm_iscsi")
    assert rc == 0, out[-6000:]
    assert molecule_recap(out, "kvm_iscsi") == (5, 5, 0)
