# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress lines of long module runs, shown over SSH while the module runs on a lab host (kvm1).

The lab guest's images are a few MiB, copied before a progress line can say much; the acquisition tests only see that
lines come. Here evidence_copy and hash_verify work on a 3 GiB sparse image (2 MiB of data every 32 MiB: 192 MiB on
the disk, while hashing its zeros takes seconds, and the data keeps the reader in step with the hashing), read every
0.2 s, with the remote temporary folder of this run alone, so that what the action leaves there can be seen.
"""

import os
import re
import subprocess

import pytest

from conftest import ROOT, VENV_BIN, ansible_env

PLAY = """
- hosts: kvm1
  gather_facts: false
  tasks:
    - name: Copy the image
      dfir.vmcollect.evidence_copy:
        src: {src}
        dest: {dest}
    - name: Hash the image and its copy
      dfir.vmcollect.hash_verify:
        path: [{src}, {dest}]
"""


@pytest.fixture(scope="module")
def run(lab, tmp_path_factory):
    work = os.path.join(lab["work_dir"], "progress")
    subprocess.run(["rm", "-rf", work], check=True)
    os.makedirs(os.path.join(work, "out"))
    os.makedirs(os.path.join(work, "remote-tmp"))
    src, dest = os.path.join(work, "image.raw"), os.path.join(work, "out", "image.raw")
    block = os.urandom(2 << 20)
    with open(src, "wb") as f:
        f.truncate(3 << 30)
        for index, offset in enumerate(range(0, 3 << 30, 32 << 20)):
            f.seek(offset)
            f.write(index.to_bytes(8, "big") + block[8:])
    play = str(tmp_path_factory.mktemp("progress") / "play.yml")
    with open(play, "w") as f:
        f.write(PLAY.format(src=src, dest=dest))
    done = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), play, "-e", "vmcollect_progress_interval=0.2",
                           "-e", "ansible_remote_tmp=" + os.path.join(work, "remote-tmp")],
                          env=ansible_env(lab), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=600, check=False)
    yield {"done": done, "work": work, "out": done.stdout}
    subprocess.run(["rm", "-rf", work], check=False)


def _lines(out, task):
    """The progress lines printed under the task ``task``."""
    section = out.split("TASK [%s]" % task, 1)[1].split("TASK [", 1)[0]
    return re.findall(r"^PROGRESS \[kvm1\] .*$", section, re.M)


def test_the_run_succeeds(run):
    assert run["done"].returncode == 0, run["out"][-4000:]


def test_a_copy_shows_its_phase_bytes_rate_and_eta_while_it_runs(run):
    lines = _lines(run["out"], "Copy the image")
    assert lines, run["out"][-4000:]
    moving = [line for line in lines if re.search(
        r"^PROGRESS \[kvm1\] evidence_copy, \d+s in: copy image\.raw, [\d.]+ [MG]iB of 3\.0 GiB \(\d+%\), \d+ MiB/s, "
        r"ETA \w+$", line)]
    assert moving, lines
    done = [int(m) for m in re.findall(r"of 3\.0 GiB \((\d+)%\)", "\n".join(lines))]
    assert done == sorted(done) or "verify" in "\n".join(lines), lines  # it moves forward within a phase


def test_a_hash_shows_which_file_of_how_many(run):
    lines = _lines(run["out"], "Hash the image and its copy")
    assert any(re.search(r"hash_verify, \d+s in: hash [12]/2 image\.raw, [\d.]+ [MG]iB of 3\.0 GiB", line)
               for line in lines), lines


def test_the_remote_temporary_folders_are_gone(run):
    assert os.listdir(os.path.join(run["work"], "remote-tmp")) == []
