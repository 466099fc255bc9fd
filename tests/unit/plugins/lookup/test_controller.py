# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller lookup (who runs the job, for the custody log), run by a real ansible: secrets never come out."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import subprocess
import sys

import pytest


def _ansible_bin(name):
    found = os.path.join(os.path.dirname(sys.executable), name)
    return found if os.path.exists(found) else shutil.which(name)


@pytest.mark.skipif(not _ansible_bin("ansible"), reason="ansible-core is not installed beside this Python")
def test_extra_vars_are_recorded_without_secrets_and_awx_is_named(tmp_path):
    import ansible_collections
    roots = [os.path.dirname(p) for p in ansible_collections.__path__ if os.path.isdir(os.path.join(p, "dfir", "vmcollect"))]
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=roots[0], ANSIBLE_NOCOLOR="1",
               ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="0",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    extra = {"kvm_acquire_case_id": "case-9", "esxi_acquire_password": "hunter2", "vmcollect_chap_password": "s3",
             "my_token": "t0k", "nested": {"api_key": "k", "ok": [1, 2]}, "awx_job_id": 4711,
             "awx_user_name": "jdoe", "tower_job_template_name": "Acquire KVM", "site_code": "plain"}
    done = subprocess.run([_ansible_bin("ansible"), "localhost", "-c", "local", "-m", "debug",
                           "-a", "msg={{ lookup('dfir.vmcollect.controller', 'site_code') }}", "-e", json.dumps(extra)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout
    for secret in ("hunter2", "s3\"", "t0k", "\"k\""):
        assert secret not in done.stdout
    who = json.loads(done.stdout.split("=>", 1)[1])["msg"]
    assert who["extra_vars"]["kvm_acquire_case_id"] == "case-9"
    assert who["extra_vars"]["esxi_acquire_password"] == "<redacted>"
    assert who["extra_vars"]["nested"] == {"api_key": "<redacted>", "ok": [1, 2]}
    assert who["extra_vars"]["site_code"] == "<redacted>"  # named secret by the caller
    assert who["awx_job_id"] == "4711" and who["awx_user_name"] == "jdoe"
    assert who["awx_job_template_name"] == "Acquire KVM"
    assert who["user"] and who["host"] and who["ansible_core"]
    # ansible's pid: the lookup runs in a worker, a child of the `ansible` process (no `ps` is needed to tell it)
    assert isinstance(who["pid"], int) and who["pid"] > 1 and who["pid"] != os.getpid()
