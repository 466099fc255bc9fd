# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's snapshot deltas are real VMware SEsparse files (lab/vcsim/sesparse.go, lab/vcsim/BEHAVIOUR-vms.md).

1. lab/vcsim/sesparse_test.go (``go test``, built as lab/vcsim/build.sh builds the simulator: GOPATH mode against
   Debian's govmomi): random writes (unaligned, across grains and 16 MiB grain-table boundaries, at the end of the
   disk) into a chain flat base + delta + delta; the lab's own chain read, ``qemu-img convert -O raw`` of each
   descriptor and dissect.hypervisor's VMDK of it must be byte-equal; then both consolidations. Needs golang-go +
   golang-github-vmware-govmomi-dev, qemu-img (qemu-utils) and dissect.hypervisor (pip) in this Python; skipped,
   saying which, without them.
2. On the running lab (skipped without it, failed with VMCOLLECT_REQUIRE_LAB=1): lab-snap-04's delta, which the
   simulator made at start-up and its guest keeps writing to, is a vmdk of create type seSparse for ``qemu-img
   info``, and ``qemu-img convert`` of its chain equals the base flat file wherever the delta holds no grain.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import subprocess
import sys

import pytest

from sesparse_read import GRAIN, grains, read_extent
from vcsim_helpers import GOVMOMI, LAB_DIR, ON_LINUX, VCSIM

pytestmark = [ON_LINUX]

QEMU_IMG = shutil.which("qemu-img")
NEEDS_QEMU_IMG = pytest.mark.skipif(not QEMU_IMG, reason="needs qemu-img (apt-get install qemu-utils)")


def _has_dissect():
    try:
        import dissect.hypervisor.disk.vmdk  # noqa: F401 pylint: disable=unused-import
    except ImportError:
        return False
    return True


@NEEDS_QEMU_IMG
@pytest.mark.skipif(not (shutil.which("go") and os.path.isdir(GOVMOMI)),
                    reason="needs golang-go + golang-github-vmware-govmomi-dev to run lab/vcsim's go test")
@pytest.mark.skipif(not _has_dissect(), reason="needs dissect.hypervisor in this Python (pip install dissect.hypervisor)")
def test_go_sesparse_chain_against_qemu_and_dissect():
    go = os.path.join(LAB_DIR, "go")
    for sub in ("path", "cache", "tmp"):
        os.makedirs(os.path.join(go, sub), exist_ok=True)
    env = dict(os.environ, GO111MODULE="off", GOPROXY="off", GOFLAGS="", GOSUMDB="off", GONOSUMDB="",
               GOTOOLCHAIN="local", GOPATH=os.path.join(go, "path") + ":/usr/share/gocode",
               GOCACHE=os.path.join(go, "cache"), GOTMPDIR=os.path.join(go, "tmp"), HOME=go,
               SESPARSE_PYTHON=sys.executable, SESPARSE_REQUIRE_TOOLS="1")
    files = sorted(f for f in os.listdir(VCSIM) if f.endswith(".go"))
    done = subprocess.run(["go", "test", "-count=1", "-v", "-run", "SESparse"] + files, cwd=VCSIM, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout[-5000:]
    for name in ("TestSESparseChainQemuDissect", "TestSESparseChainQemuDissect/qemu-img",
                 "TestSESparseChainQemuDissect/dissect", "TestSESparseGrainEncoding"):
        assert "--- PASS: %s " % name in done.stdout, done.stdout[-5000:]
    assert "--- SKIP" not in done.stdout, done.stdout[-5000:]


@pytest.fixture()
def snap_vm(lab):
    if not lab.get("esxi_hosts"):
        pytest.fail("the lab has no ESXi host (lab/up.sh starts esx1)", pytrace=False)
    with open(lab["esxi_hosts"][0]["vcsim_env"]) as f:
        env = json.load(f)
    content = env["lab"]["content"]
    assert content.get("enabled"), "esx1 runs without its lab VMs (-lab-vms)"
    vm = next(v for v in content["vms"] if v["role"] == "with-snapshot")
    roots = dict((d["name"], d["local_path"]) for d in env["datastores"])

    def local(dspath):
        ds, rel = dspath[1:].split("] ", 1)
        return os.path.join(roots[ds], *rel.split("/"))

    return vm, local


@NEEDS_QEMU_IMG
def test_running_lab_snapshot_delta_is_sesparse(snap_vm, tmp_path):
    vm, local = snap_vm
    disk = vm["disks"][0]
    leaf = local(disk["leaf"])
    assert leaf != disk["descriptor_local"] and os.path.exists(leaf), "%s has no delta: %s" % (vm["name"], leaf)
    extent = disk["leaf_extent_local"]
    # -U: share the files with the simulator, which keeps writing the delta (the guest's heartbeat)
    info = json.loads(subprocess.run([QEMU_IMG, "info", "-U", "--output=json", leaf], stdout=subprocess.PIPE,
                                     universal_newlines=True, check=True).stdout)
    assert info["format"] == "vmdk" and info["format-specific"]["data"]["create-type"] == "seSparse", info
    assert info["virtual-size"] == disk["virtual_bytes"]
    assert os.path.basename(info["backing-filename"]) == os.path.basename(disk["descriptor_local"]), info
    raw = str(tmp_path / "chain.raw")
    subprocess.run([QEMU_IMG, "convert", "-U", "-f", "vmdk", "-O", "raw", leaf, raw], check=True)
    held = grains(extent)
    hb = disk["heartbeat_offset"]
    assert hb // GRAIN in held, "the guest's heartbeat is not in the delta"
    with open(raw, "rb") as got, open(disk["flat_local"], "rb") as flat:
        for vg in range(disk["virtual_bytes"] // GRAIN):
            a, b = got.read(GRAIN), flat.read(GRAIN)
            if vg not in held:
                assert a == b, "grain %d (byte %d): qemu-img's chain differs from the base flat" % (vg, vg * GRAIN)
                continue
            want = read_extent(extent, vg * GRAIN, GRAIN)
            if vg == hb // GRAIN:  # the heartbeat block changes every 300 ms: the rest of the grain is stable
                at = hb % GRAIN
                assert a[at:at + 512].startswith(('LAB-HEARTBEAT v1 vm="%s"' % vm["name"]).encode())
                a, want = a[:at] + a[at + 512:], want[:at] + want[at + 512:]
            assert a == want, "grain %d: qemu-img differs from the delta's own grain" % vg
