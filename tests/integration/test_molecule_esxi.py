# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The molecule scenario of the ESXi role (extensions/molecule/esxi_https: the acquire and esxi_acquire roles against
the lab's esx1 through its vSphere API; converge, idempotence, verify), run as a developer runs it, on the lab (up
already)."""

import re

from conftest import molecule_recap, molecule_test


def test_esxi_https_converges_is_idempotent_and_verifies(lab):
    rc, out = molecule_test("esxi_https")
    assert rc == 0, out[-6000:]
    assert molecule_recap(out, "esxi_https") == (5, 5, 0)
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert re.search(r"\[esxi_https > %s\] Executed: Successful" % step, out), step
