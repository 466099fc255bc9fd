# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The execution environment, built and used as AWX uses it: an acquisition of the lab guest by ansible-runner with
process isolation, inside the image scripts/ee.sh builds with podman (extensions/ee/execution-environment.yml).

- The image is built from scratch when missing: a Debian base made with debootstrap, then ``podman build`` (about
  2 min 15 s here); that is why the test is slow (``make test-slow``), outside CI's budget. CI runs
  ``ansible-builder introspect`` and ``create`` (test_execution_environment.py).
- The private data dir is laid out as AWX lays it out (test_awx_runner.py), but the project is an AWX project's
  wrapper playbook, and the collection is the image's own: ``ANSIBLE_COLLECTIONS_PATH`` is not set.
- ansible-runner starts the container (podman, the host's network) with the private data dir mounted at /runner, the
  machine credential loaded into an ssh-agent inside it, and the lab's known hosts mounted read-only.
"""

import json
import os
import subprocess

import pytest

from conftest import ROOT, VENV_BIN
from test_awx_runner import _inventory_script, job_events, teardown

pytestmark = pytest.mark.slow  # outside the CI budget (make test-slow); in CI: test_awx_runner.py, test_execution_environment.py

CASE = "case-awx-ee-1"
JOB_ID = 4712
EE_WORK = os.environ.get("EE_WORK", "/var/tmp/vmcollect-ee")
EE_IMAGE = "localhost/dfir-vmcollect-ee:latest"


def _podman_env():
    env = dict(os.environ, CONTAINERS_CONF=os.path.join(EE_WORK, "conf", "containers.conf"),
               CONTAINERS_STORAGE_CONF=os.path.join(EE_WORK, "conf", "storage.conf"), TMPDIR=os.path.join(EE_WORK, "tmp"))
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    return env


@pytest.fixture(scope="module")
def image():
    """The image, built (or brought up to date from podman's cache) by scripts/ee.sh, and its ansible-core."""
    built = subprocess.run(["bash", os.path.join(ROOT, "scripts", "ee.sh")], cwd=ROOT, check=False,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=1800)
    assert built.returncode == 0, built.stdout[-4000:]
    version = subprocess.run(["podman", "run", "--rm", EE_IMAGE, "python3", "-c",
                              "import ansible.release; print(ansible.release.__version__)"],
                             env=_podman_env(), check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    return {"log": built.stdout, "ansible_core": version}


@pytest.fixture(scope="module")
def job(lab, image, tmp_path_factory):
    work = os.path.join(lab["work_dir"], "awx-ee")
    subprocess.run(["rm", "-rf", work], check=True)
    pdd = str(tmp_path_factory.mktemp("awx-ee-job"))
    for folder in ("env", "inventory", "artifacts", "project"):
        os.makedirs(os.path.join(pdd, folder))
    # an AWX project: a wrapper playbook of the collection in the image
    with open(os.path.join(pdd, "project", "acquire_kvm.yml"), "w") as f:
        f.write("---\n- name: Acquire KVM virtual machines\n  ansible.builtin.import_playbook: dfir.vmcollect.acquire_kvm\n")
    with open(os.path.join(pdd, "inventory", "hosts"), "w") as f:
        f.write(_inventory_script(lab))
    os.chmod(os.path.join(pdd, "inventory", "hosts"), 0o700)
    with open(lab["ssh"]["identity"]) as f:
        key = f.read()
    with open(os.path.join(pdd, "env", "ssh_key"), "w") as f:
        f.write(key)
    with open(os.path.join(pdd, "env", "extravars"), "w") as f:
        json.dump({"kvm_acquire_case_id": CASE, "kvm_acquire_examiner": "J. Doe (AWX, EE)",
                   "kvm_acquire_vms": "\n%s\n" % lab["guest"]["name"], "vmcollect_transport": "local",
                   "kvm_acquire_evidence_dir": os.path.join(work, "evidence"),
                   "kvm_acquire_journal_dir": os.path.join(work, "journal"),
                   "awx_job_id": JOB_ID, "awx_user_name": "jdoe", "awx_job_template_name": "Acquire KVM VMs (EE)"}, f)
    with open(os.path.join(pdd, "env", "envvars"), "w") as f:
        json.dump({"ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_RETRY_FILES_ENABLED": "False",
                   "ANSIBLE_FORCE_COLOR": "False", "JOB_ID": str(JOB_ID), "ANSIBLE_SHOW_CUSTOM_STATS": "True",
                   "ANSIBLE_SSH_CONTROL_PATH_DIR": "/tmp/cp"}, f)
    with open(os.path.join(pdd, "env", "settings"), "w") as f:
        json.dump({"job_timeout": 900, "idle_timeout": 600, "suppress_ansible_output": True}, f)
    known = os.path.dirname(lab["ssh"]["known_hosts"])
    env = dict((k, v) for k, v in _podman_env().items() if not k.startswith("ANSIBLE_"))
    # --user=0: ansible-runner (root here) makes the job's artifacts folder 0700, which the image's user 1000 could
    # not write to
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-runner"), "run", pdd, "-p", "acquire_kvm.yml",
                           "--ident", str(JOB_ID), "--process-isolation", "--process-isolation-executable", "podman",
                           "--container-image", EE_IMAGE, "--container-option=--user=0",
                           "--container-volume-mount", "%s:%s:ro" % (known, known)],
                          env=env, cwd=pdd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=900, check=False)
    artifacts = os.path.join(pdd, "artifacts", str(JOB_ID))
    yield {"proc": proc, "artifacts": artifacts, "events": job_events(artifacts),
           "case_dir": os.path.join(work, "evidence", CASE)}
    teardown(lab, CASE, work)


def _stdout(job):
    return "".join(e.get("stdout", "") + "\n" for e in job["events"])


def test_the_image_has_the_collection_and_the_tools(image):
    assert "dfir.vmcollect" in image["log"] and "/usr/bin/ewfacquirestream" in image["log"], image["log"][-2000:]


def test_the_job_runs_in_the_image_and_is_successful(job, image):
    with open(os.path.join(job["artifacts"], "status")) as f:
        status = f.read().strip()
    assert status == "successful" and job["proc"].returncode == 0, job["proc"].stdout[-3000:] + _stdout(job)[-5000:]
    # the record says which Ansible acquired: the image's, not the machine's
    with open(os.path.join(job["case_dir"], "custody.jsonl")) as f:
        controllers = [json.loads(line).get("controller") for line in f]
    controllers = [c for c in controllers if c]
    assert controllers and all(c["ansible_core"] == image["ansible_core"] and c.get("awx_job_id") == str(JOB_ID)
                               for c in controllers), controllers[:1]


def test_the_evidence_is_verified_where_it_lies(job):
    with open(os.path.join(job["case_dir"], "SHA256SUMS")) as f:
        listed = [line.split(None, 1)[1].strip() for line in f if line.strip()]
    assert listed
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=job["case_dir"], check=False,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert check.returncode == 0, check.stdout
    stats = [e for e in job["events"] if e.get("event") == "playbook_on_stats"]
    assert len(stats) == 1 and stats[0]["event_data"]["artifact_data"]["vmcollect_case_id"] == CASE
