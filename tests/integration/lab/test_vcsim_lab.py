# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab's vSphere simulator (lab/vcsim): build, start, pyvmomi smoke test, stop.

Skipped when the Go toolchain / Debian's govmomi sources are missing (and no
binary is built yet) or pyvmomi is not importable. The binary is cached in
$LAB_DIR/bin (a cold build takes ~25 s, a cached one nothing).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import sys

import pytest

from vcsim_helpers import LAB_DIR, NEEDS_SIMULATOR, ON_LINUX, VCSIM, run as _run

pytestmark = [NEEDS_SIMULATOR, ON_LINUX]


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_vcsim_start_smoke_stop(tmp_path):
    pytest.importorskip("pyVmomi")
    build = _run("bash", os.path.join(VCSIM, "build.sh"))
    assert build.returncode == 0, build.stdout

    envfile = str(tmp_path / ("pytest-%d.json" % os.getpid()))
    ctl = os.path.join(VCSIM, "vcsim.sh")
    start = _run("bash", ctl, "start", envfile, timeout=60)
    try:
        assert start.returncode == 0, start.stdout
        with open(envfile) as fh:
            env = json.load(fh)
        pid = env["pid"]
        assert env["url"] == "https://127.0.0.1:%d/sdk" % env["port"]
        assert env["insecure"] is False and env["thumbprint_sha256"]
        assert [d["name"] for d in env["datastores"]] == ["LocalDS_0"]
        assert os.path.isdir(env["datastores"][0]["local_path"])
        assert len(env["vms"]) == 2
        assert _run("bash", ctl, "status", envfile).returncode == 0

        smoke = _run(sys.executable, os.path.join(VCSIM, "smoke_test.py"), envfile, timeout=120)
        assert smoke.returncode == 0, smoke.stdout
        assert "smoke_test: PASS" in smoke.stdout
    finally:
        stop = _run("bash", ctl, "stop", envfile, timeout=60)
    assert stop.returncode == 0, stop.stdout
    assert not _alive(pid)
    assert not os.path.exists(envfile)
    assert not os.path.exists(env["datastores"][0]["local_path"])
    assert not os.path.exists(os.path.dirname(env["cert_file"]))
    again = _run("bash", ctl, "stop", envfile)
    assert again.returncode == 0 and "not running" in again.stdout
    assert _run("bash", ctl, "status", envfile).returncode == 3
    os.remove(os.path.join(LAB_DIR, "run", "vcsim-pytest-%d.log" % os.getpid()))
