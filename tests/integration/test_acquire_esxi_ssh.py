# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/acquire_esxi.yml -e vmcollect_transport=iscsi -e esxi_acquire_engine=ssh end to end against the lab:
the field method over SSH. esx1's shell (lab/esxi-shell, a LAB EMULATOR started by lab/up.sh in vmc-esx) makes every
change - software iSCSI, the send target with CHAP, the rescan, partedUtil and vmkfstools -C on the collector's LUN,
vim-cmd's memory snapshot, vmkfstools -i -d thin of the frozen disk, the memory files copied, both hashed with
openssl dgst on the host, the datastore unmounted, vim-cmd's snapshot removal - while every read stays on the API.
Then the collector re-hashes the evidence from the read-only LUN: the digests taken on the host before the clone, of
the clone on the host and on the collector are compared. The lab simulator is not in free mode here (the tests of
each module prove the free host's refusal and ``auto``); ``ssh`` is asked for.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import subprocess

import pytest

from test_acquire_esxi import PLAYBOOK, VM, esx, host_state  # noqa: F401 pylint: disable=unused-import
from test_acquire_esxi_iscsi import _args, _as_found, _collector_traces, examine_volume

CASE = "case-esxi-ssh"


@pytest.fixture(scope="module")
def acquisition(lab, esx, ansible_playbook):
    work = os.path.join(lab["work_dir"], "esxi-ssh-e2e")
    subprocess.run(["rm", "-rf", work], check=True)
    before = host_state(esx)
    run = ansible_playbook(PLAYBOOK, *(_args(work, CASE) + ["-e", "esxi_acquire_engine=ssh"]))
    return {"work": work, "before": before, "run": run, "after": host_state(esx),
            "case_dir": os.path.join(work, "evidence", CASE),
            "backing": os.path.join(work, "collector", CASE, "esx1.img")}


def test_the_ssh_engine_acquires_and_restores_the_host(acquisition, lab):
    out = acquisition["run"].stdout
    assert acquisition["run"].returncode == 0, out[-8000:]
    assert _as_found(acquisition["after"], acquisition["before"])
    assert re.search(r"Verified again on collector1 from the read-only backing file .*esx1\.img: 3 artifact\(s\) of the "
                     r"case match the source digests", out), out[-4000:]
    assert _collector_traces(lab, acquisition["work"], CASE) == []


def test_the_manifest_records_the_engine_and_the_hashes_on_the_host(acquisition):
    manifest = json.load(open(os.path.join(acquisition["case_dir"], "manifest.json")))
    arts = manifest["artifacts"]
    assert sorted(a["kind"] for a in arts.values()) == ["disk", "memory", "memory_state"]
    for art in arts.values():
        assert "over SSH" in art["method"], art["method"]
        if art["kind"] != "memory_state":  # the .vmsn's method is its copy's; the freeze is the .vmem's
            assert "(vim-cmd over SSH)" in art["method"] and "vmkfstools" in art["method"], art["method"]
        assert art["source"]["engine"] == "ssh", art["source"]
        assert art["source"]["ssh_host_key"]["verified"], art["source"]
        # taken on the host before the copy, and of the copy on the host after it: equal
        assert art["dest_digests"] == art["digests"] and set(art["digests"]) == {"sha256", "md5"}, art
    records = [json.loads(line) for line in open(acquisition["backing"] + ".verified.jsonl")]
    verified = dict(zip(records[-1]["files"], records[-1]["digests"]))
    for path, art in arts.items():  # and on the collector, from the read-only LUN
        assert verified[path] == art["digests"], (path, verified[path], art["digests"])


def test_the_volume_opens_as_an_examiner_opens_it(acquisition, esx):
    result, known = examine_volume(acquisition["backing"], acquisition["case_dir"], CASE, esx)
    assert result.returncode == 0 and "RECORDS-EQUAL" in result.stdout, result.stdout
    assert dict(line.split()[1:] for line in result.stdout.splitlines() if line.startswith("FILE ")) == known
    assert esx["content"]["ram_banner"][:40] in result.stdout, result.stdout[-2000:]


@pytest.mark.slow  # outside the CI budget: make test-slow
def test_the_https_transport_freezes_with_vim_cmd_too(lab, esx, ansible_playbook):
    """The https transport on a free host: the SSH engine's vim-cmd makes and removes the snapshot, the disks and the
    memory files are pulled over HTTPS (reads, which a free host allows)."""
    from test_acquire_esxi import _args as https_args
    work = os.path.join(lab["work_dir"], "esxi-ssh-https")
    subprocess.run(["rm", "-rf", work], check=True)
    case = "case-esxi-ssh-https"
    before = host_state(esx)
    run = ansible_playbook(PLAYBOOK, *https_args(case, os.path.join(work, "evidence"), os.path.join(work, "journal"),
                                                 "-e", "esxi_acquire_engine=ssh"))
    assert run.returncode == 0, run.stdout[-6000:]
    assert host_state(esx) == before
    case_dir = os.path.join(work, "evidence", case)
    subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=case_dir, check=True, stdout=subprocess.DEVNULL)
    arts = json.load(open(os.path.join(case_dir, "manifest.json")))["artifacts"]
    assert arts and all("(vim-cmd over SSH)" in a["method"] for a in arts.values() if a["kind"] != "memory_state"), \
        [a["method"] for a in arts.values()]
