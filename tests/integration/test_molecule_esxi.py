# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The molecule scenario of the ESXi role (extensions/molecule/esxi_https: the acquire and esxi_acquire roles against
the lab's esx1 through its vSphere API; converge, idempotence, verify), run as a developer runs it, on the lab (up
already)."""

from conftest import assert_molecule_passes


def test_esxi_https_converges_is_idempotent_and_verifies(lab):
    assert_molecule_passes("esxi_https", ("create", "converge", "idempotence", "verify", "destroy"))
