# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The molecule scenarios of the KVM roles (extensions/molecule/kvm_*), run as a developer runs them:
``molecule test -s <scenario>`` from the repository's root, on the lab (up already: create leaves it, destroy does not
bring down a lab it did not bring up).

Both run with the slow tests (``make test-slow``) and ``make molecule``, outside CI's budget: kvm_local (the acquire and
kvm_acquire roles: converge, idempotence, verify; about 70 s) repeats the acquisition test_acquire_kvm.py makes in CI,
and kvm_iscsi (the collector role too: converge, the rerun as its side effect, verify) takes about 2.5 minutes. CI runs
the ESXi scenario (test_molecule_esxi.py).
"""

import pytest

from conftest import assert_molecule_passes


@pytest.mark.slow
def test_kvm_local_converges_is_idempotent_and_verifies(lab):
    assert_molecule_passes("kvm_local", ("create", "converge", "idempotence", "verify", "destroy"))


@pytest.mark.slow
def test_kvm_iscsi_converges_reruns_without_writing_the_sealed_volume_and_verifies(lab):
    assert_molecule_passes("kvm_iscsi", ("create", "converge", "side_effect", "verify", "destroy"))
