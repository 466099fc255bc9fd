# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's own promises: up and down are idempotent, down leaves nothing behind, also after a
half-failed up. Runs before the other integration tests (pytest collects this folder first) and
leaves the lab up and healthy for them.
"""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LAB = os.path.join(ROOT, "lab")
LAB_DIR = os.environ.get("LAB_DIR", "/var/tmp/vmcollect-lab")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces, libvirtd)")


def _run(script, **env):
    return subprocess.run(["bash", os.path.join(LAB, script)], env=dict(os.environ, LAB_DIR=LAB_DIR, **env),
                          check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=600)


def _traces():
    """Everything of the lab's that could outlive it, seen from outside the lab's own scripts."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    found += ["netns " + line.split()[0] for line in netns.splitlines() if line.startswith("vmc-")]
    links = subprocess.run(["ip", "-o", "link"], check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    found += ["link " + line.split(":")[1].strip() for line in links.splitlines() if ": vmc-" in line]
    loops = subprocess.run(["losetup", "-a"], check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    found += ["loop " + line for line in loops.splitlines() if LAB_DIR in line]
    with open("/proc/self/mountinfo") as f:
        found += ["mount " + line.split()[4] for line in f if LAB_DIR in line]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open("/proc/%s/stat" % pid) as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            continue
        if not zombie and (LAB_DIR in cmd) and "pytest" not in cmd:
            found.append("process %s %s" % (pid, cmd[:120]))
    for path in ("/run/libvirt/libvirt-sock", "/run/libvirt/virtlogd-sock"):
        if os.path.exists(path):
            found.append("socket " + path)
    return found


def test_down_up_idempotent_and_half_failed_up_cleaned():
    down = _run("down.sh")
    assert down.returncode == 0, down.stdout
    assert _traces() == []
    again = _run("down.sh")
    assert again.returncode == 0, again.stdout
    assert _traces() == []

    # a half-failed up (hosts and libvirtd started, no guest yet): down still removes everything
    half = _run("up.sh", LAB_FAIL_AFTER="start_hosts")
    assert half.returncode != 0 and "failing on purpose" in half.stdout, half.stdout
    assert _traces(), "the half-failed up should have left something for down.sh to clean"
    down = _run("down.sh")
    assert down.returncode == 0, down.stdout
    assert _traces() == []

    up = _run("up.sh")
    assert up.returncode == 0, up.stdout
    noop = _run("up.sh")
    assert noop.returncode == 0 and "nothing to do" in noop.stdout, noop.stdout
    assert _run("status.sh").returncode == 0
