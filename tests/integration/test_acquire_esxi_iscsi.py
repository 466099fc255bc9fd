# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/acquire_esxi.yml -e vmcollect_transport=iscsi end to end against the lab: esx1 (the simulator, whose
software iSCSI really logs in to the collector's tgt from 10.213.1.6) and collector1.

Per ESXi host: plan, software iSCSI's IQN, a thin LUN on the collector for that IQN and address, the LUN as a new
datastore (CHAP), the VM frozen with its memory, its disk cloned and its .vmem/.vmsn copied onto the datastore by the
host, the datastore released; then the collector re-hashes the evidence from the read-only backing file. The lab's
"VMFS" datastore is a VMFS-typed GPT partition formatted ext4 (nothing on Linux makes VMFS), which the collector reads
at its partition offset; a real VMFS volume is refused there (tests/unit/.../test_loop_mount_gpt.py).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import re
import subprocess

import pytest

from test_acquire_esxi import PLAYBOOK, VM, esx, host_state  # noqa: F401 pylint: disable=unused-import

CASE = "case-esxi-iscsi"


def _as_found(after, before):
    """after == before, but for the software iSCSI adapter this case made: software iSCSI is off again, and the adapter
    stays (ESXi removes it only at the next reboot, which the undo says), without a send target or static target."""
    after = dict(after)
    for key, host in before.items():
        if key.startswith("host ") and not host["hbas"] and after.get(key, {}).get("hbas"):
            (hba,) = after[key]["hbas"]
            assert hba["isSoftwareBased"] and not hba.get("configuredSendTarget") and not hba.get("configuredStaticTarget")
            after[key] = dict(after[key], hbas=[])
    return after == before


def _args(work, case=CASE):
    return ["-e", "vmcollect_transport=iscsi", "-e", "esxi_acquire_case_id=" + case,
            "-e", json.dumps({"esxi_acquire_examiner": "CI examiner"}), "-e", json.dumps({"esxi_acquire_vms": [VM]}),
            "-e", json.dumps({"esxi_acquire_algorithms": ["sha256", "md5"]}),
            "-e", "esxi_acquire_evidence_dir=%s/evidence" % work, "-e", "esxi_acquire_journal_dir=%s/journal" % work,
            "-e", "collector_journal_dir=%s/cjournal" % work, "-e", "collector_dir=%s/collector" % work,
            "-e", "collector_verify_dir=%s/verify" % work]


@pytest.fixture(scope="module")
def acquisition(lab, esx, ansible_playbook):
    work = os.path.join(lab["work_dir"], "esxi-iscsi-e2e")
    subprocess.run(["rm", "-rf", work], check=True)
    before = host_state(esx)
    check = ansible_playbook(PLAYBOOK, "--check", *_args(work))
    after_check = {"state": host_state(esx), "collector": os.path.exists(os.path.join(work, "collector", CASE))}
    first = ansible_playbook(PLAYBOOK, *_args(work))
    after = host_state(esx)
    again = ansible_playbook(PLAYBOOK, *_args(work))
    after_again = host_state(esx)
    return {"work": work, "before": before, "check": check, "after_check": after_check, "first": first,
            "after": after, "again": again, "after_again": after_again,
            "case_dir": os.path.join(work, "evidence", CASE),
            "backing": os.path.join(work, "collector", CASE, "esx1.img")}


def test_check_mode_changes_nothing(acquisition):
    assert acquisition["check"].returncode == 0, acquisition["check"].stdout[-5000:]
    assert acquisition["after_check"] == {"state": acquisition["before"], "collector": False}


def test_acquisition_restores_the_host_and_verifies_on_the_collector(acquisition):
    out = acquisition["first"].stdout
    assert acquisition["first"].returncode == 0, out[-8000:]
    assert _as_found(acquisition["after"], acquisition["before"])
    assert "only at the host's next reboot" in out
    assert re.search(r"Verified again on collector1 from the read-only backing file .*esx1\.img: 3 artifact\(s\) of the "
                     r"case match the source digests", out), out[-4000:]
    assert "the copies were not read back here" in out
    assert not os.path.exists(os.path.join(acquisition["work"], "journal", "esxi", "esx1", CASE))


def test_the_collector_record_holds_the_digests_taken_at_the_source(acquisition):
    manifest = json.load(open(os.path.join(acquisition["case_dir"], "manifest.json")))
    arts = manifest["artifacts"]
    assert sorted(a["kind"] for a in arts.values()) == ["disk", "memory", "memory_state"]
    assert all("vmkfstools_clone" in a["method"] for a in arts.values())
    records = [json.loads(line) for line in open(acquisition["backing"] + ".verified.jsonl")]
    assert records[-1]["result"] == "verified"
    verified = dict(zip(records[-1]["files"], records[-1]["digests"]))
    assert sorted(verified) == sorted(arts)
    for path, art in arts.items():
        assert verified[path]["sha256"] == art["digests"]["sha256"] and verified[path]["md5"] == art["digests"]["md5"]
    sums = dict(reversed(line.split("  ", 1)) for line in open(os.path.join(acquisition["case_dir"], "SHA256SUMS")).read().splitlines())
    assert dict((p, d["sha256"]) for p, d in verified.items()) == sums


def test_the_volume_is_a_gpt_partition_read_at_its_offset(acquisition):
    part = subprocess.run(["sfdisk", "--json", acquisition["backing"]], check=True, stdout=subprocess.PIPE,
                          universal_newlines=True).stdout
    table = json.loads(part)["partitiontable"]
    assert table["label"] == "gpt" and len(table["partitions"]) == 1
    assert table["partitions"][0]["type"].upper() == "AA31E02A-400F-11DB-9590-000C2911D1B8"


def test_a_sealed_volume_is_not_acquired_into_again(acquisition):
    out = acquisition["again"].stdout
    assert acquisition["again"].returncode != 0
    assert "an ESXi host cannot mount a read-only LUN as a datastore" in out, out[-5000:]
    assert _as_found(acquisition["after_again"], acquisition["before"])
