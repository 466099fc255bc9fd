# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run every integration target (tests/integration/targets/<name>) on the lab hosts over SSH.

A target is a role in the ansible-test layout; its ``aliases`` file names the inventory group it runs on
(``hosts/<group>``, default ``all``), and ``slow`` keeps it out of CI's run (``make test-slow``). The play must succeed
on every host, and a target that is played twice must change nothing the second time.
"""

import os
import re
import warnings

import pytest

from conftest import ROOT

TARGETS_DIR = os.path.join(ROOT, "tests", "integration", "targets")


class TargetPartSkipped(UserWarning):
    """A part of an integration target that could not run on this machine, and why."""


def _targets():
    for name in sorted(os.listdir(TARGETS_DIR)):
        aliases = os.path.join(TARGETS_DIR, name, "aliases")
        if os.path.isfile(aliases):
            with open(aliases) as f:
                words = f.read().split()
            hosts = [w.split("/", 1)[1] for w in words if w.startswith("hosts/")] or ["all"]
            # "slow": outside the CI budget (make test-slow), for a target whose module the acquisitions run in CI too
            marks = [pytest.mark.slow] if "slow" in words else []
            yield pytest.param(name, ":".join(hosts), id=name, marks=marks)


@pytest.mark.parametrize("target,hosts", list(_targets()))
def test_target(ansible_playbook, target, hosts):
    result = ansible_playbook(os.path.join(ROOT, "tests", "integration", "targets.yml"),
                              "-e", "vmcollect_target=%s" % target, "-e", "vmcollect_target_hosts=%s" % hosts)
    print(result.stdout)
    assert result.returncode == 0, "target %s failed:\n%s" % (target, result.stdout[-6000:])
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)", result.stdout, re.M)
    assert recap, "no play recap in the output"
    for host, unreachable, failed in recap:
        assert unreachable == "0" and failed == "0", "%s: unreachable=%s failed=%s" % (host, unreachable, failed)
    # a part of a target that cannot run on these machines says "SKIPPED <part>: <reason>" (for example
    # open-iscsi, which needs a kernel module the lab cannot load): shown in pytest's summary, not hidden
    for part in sorted(set(re.findall(r'"msg": "SKIPPED ([^"]+)"', result.stdout))):
        warnings.warn(TargetPartSkipped("%s: %s" % (target, part)))
