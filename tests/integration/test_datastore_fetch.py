# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""datastore_fetch through Ansible against the lab's vSphere simulator (lab/vcsim).

A real file with data, allocated zeros and holes is written into the simulator's datastore folder (vcsim serves
a datastore from a local folder), then fetched with ansible-playbook over HTTPS with the session cookie: check
mode, a fetch with the certificate pinned, a rerun, a fetch by areas, changed_areas on a VM without changed block
tracking, a fetch journaled for a case, and refusals (a wrong thumbprint, a missing file). The digests must equal
sha256sum/md5sum of the file, the copies must be sparse, and the datastore folder must be as it was: the same
names, sizes and modification times (only GET and HEAD reached the host).

The simulator: ``VMCOLLECT_VCSIM_ENV`` names the env file of one already running (``lab/vcsim/vcsim.sh start
ENVFILE``); without it the test starts one of its own with lab/vcsim/vcsim.sh (``VMCOLLECT_VCSIM_DIR`` may name
another copy of that folder) under ``LAB_DIR``, and stops it again.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from conftest import COLLECTIONS, VENV_BIN
from vcsim_helpers import LAB_DIR, ON_LINUX, can_build, private_simulator

MIB = 1024 * 1024

pytestmark = ON_LINUX


def _run(cmd, env=None, timeout=300):
    return subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False,
                          universal_newlines=True, timeout=timeout)


@pytest.fixture(scope="module")
def vcsim(tmp_path_factory):
    """The simulator's env (url, port, credentials, cert_file, thumbprint_sha256, datastores with local_path)."""
    pytest.importorskip("pyVmomi")
    given = os.environ.get("VMCOLLECT_VCSIM_ENV")
    if given:
        if not os.path.exists(given):
            pytest.fail("VMCOLLECT_VCSIM_ENV=%s does not exist: start the simulator first" % given)
        with open(given) as fh:
            yield json.load(fh)
        return
    if not can_build():
        pytest.skip("needs golang-go + golang-github-vmware-govmomi-dev (or a built vcsim in %s/bin)" % LAB_DIR)
    with private_simulator(tmp_path_factory.mktemp("vcsim"), "fetch") as env:
        yield env


def _tree(folder):
    """Every name below ``folder`` with its type, size and modification time (ns)."""
    state = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            state[os.path.relpath(path, folder)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    st = os.lstat(folder)
    state["."] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


def _disk_key(vcsim):
    """The device key of the first VM's first disk, read through the collection's own client."""
    sys.path.insert(0, COLLECTIONS)
    try:
        from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import client as vc
    finally:
        sys.path.remove(COLLECTIONS)
    with vc.VsphereClient(vcsim["host"], vcsim["username"], vcsim["password"], port=vcsim["port"],
                          thumbprint=vcsim["thumbprint_sha256"]) as client:
        vm = client.find_vm(name=vcsim["vms"][0]["name"])
        devices = client.properties(vm, ["config.hardware.device"])["config.hardware.device"]
        return [d.key for d in devices if isinstance(d, vc.vim.vm.device.VirtualDisk)][0]


def _sum(tool, path):
    return subprocess.run([tool, path], check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout.split()[0]


PLAYBOOK = r"""
- name: datastore_fetch against the simulator
  hosts: localhost
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  module_defaults:
    dfir.vmcollect.datastore_fetch:
      hostname: "{{ vc.host }}"
      port: "{{ vc.port }}"
      username: "{{ vc.username }}"
      password: "{{ vc.password }}"
      thumbprint: "{{ vc.thumbprint_sha256 }}"
  tasks:
    - name: Check mode (HEAD only)
      dfir.vmcollect.datastore_fetch:
        src: "{{ src }}"
        dest: "{{ out }}/whole.vmdk"
        algorithms: [sha256, md5]
      check_mode: true
      register: check

    - name: Fetch the whole file, certificate pinned
      dfir.vmcollect.datastore_fetch:
        src: "{{ src }}"
        dest: "{{ out }}/whole.vmdk"
        algorithms: [sha256, md5]
      register: whole

    - name: Again (the copy is there)
      dfir.vmcollect.datastore_fetch:
        src: "{{ src }}"
        dest: "{{ out }}/whole.vmdk"
        algorithms: [sha256, md5]
      register: again

    - name: Only the data areas, CA file instead of the pin
      dfir.vmcollect.datastore_fetch:
        src: "{{ src }}"
        dest: "{{ out }}/areas.vmdk"
        thumbprint: "{{ omit }}"
        ca_file: "{{ vc.cert_file }}"
        areas: "{{ areas }}"
        expected:
          sha256: "{{ whole.digests.sha256 }}"
      register: by_areas

    - name: Areas asked of the host for a VM without changed block tracking (falls back to the whole file)
      dfir.vmcollect.datastore_fetch:
        src: "{{ src }}"
        dest: "{{ out }}/cbt.vmdk"
        changed_areas:
          vm: "{{ vc.vms[0].moref }}"
          disk_key: "{{ disk_key }}"
      register: cbt

    - name: Journaled for a case while at work
      dfir.vmcollect.datastore_fetch:
        src: "{{ src }}"
        dest: "{{ out }}/journaled.vmdk"
        case_id: fetch-case
        journal_dir: "{{ journal }}"
      register: journaled

    - name: A wrong thumbprint is refused before anything is sent
      dfir.vmcollect.datastore_fetch:
        src: "{{ src }}"
        dest: "{{ out }}/wrong-pin.vmdk"
        thumbprint: "{{ '00' * 32 }}"
      register: wrong_pin
      ignore_errors: true

    - name: A file that is not there
      dfir.vmcollect.datastore_fetch:
        src: "{{ missing }}"
        dest: "{{ out }}/missing.vmdk"
      register: missing_file
      ignore_errors: true

    - name: Keep the results for the test
      ansible.builtin.copy:
        content: "{{ {'check': check, 'whole': whole, 'again': again, 'by_areas': by_areas, 'cbt': cbt,
                      'journaled': journaled, 'wrong_pin': wrong_pin, 'missing_file': missing_file} | to_json }}"
        dest: "{{ results }}"
        mode: "0600"
"""


@pytest.fixture(scope="module")
def fetched(vcsim, tmp_path_factory):
    ds = vcsim["datastores"][0]
    folder_name = "dfir fetch [%s]" % uuid.uuid4().hex[:8]
    folder = os.path.join(ds["local_path"], folder_name)
    os.mkdir(folder)
    local = os.path.join(folder, "disk [1]-flat.vmdk")
    islands = [(0, 2 * MIB), (9 * MIB + 4321, 3 * MIB), (30 * MIB, MIB)]
    with open(local, "wb") as fh:
        fh.truncate(40 * MIB)
        fh.seek(16 * MIB)
        fh.write(bytes(4 * MIB))  # allocated zeros
        for offset, length in islands:
            fh.seek(offset)
            fh.write(os.urandom(length))
    # the simulator's clock for Last-Modified is the file's mtime, at second resolution: step it clear of "now"
    os.utime(local, (1700000000, 1700000000))
    work = tmp_path_factory.mktemp("fetch")
    out = work / "evidence store"
    out.mkdir()
    journal = work / "journal"
    results = work / "results.json"
    before = _tree(ds["local_path"])
    extra = {
        "vc": vcsim, "out": str(out), "journal": str(journal), "results": str(results),
        "src": "[%s] %s/disk [1]-flat.vmdk" % (ds["name"], folder_name),
        "missing": "[%s] %s/no such file.vmdk" % (ds["name"], folder_name),
        "areas": [{"start": o, "length": n} for o, n in islands],
        "disk_key": _disk_key(vcsim),
    }
    (work / "vars.json").write_text(json.dumps(extra))
    (work / "play.yml").write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_LOCALHOST_WARNING="False",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="False", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("ANSIBLE_CONFIG", None)
    play = _run([os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
                 str(work / "play.yml"), "-e", "@%s" % (work / "vars.json")], env=env, timeout=600)
    after = _tree(ds["local_path"])
    try:
        yield {"play": play, "results": json.loads(results.read_text()) if results.exists() else None,
               "local": local, "out": str(out), "journal": str(journal), "before": before, "after": after,
               "islands": islands, "vcsim": vcsim}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_play_ran(fetched):
    assert fetched["play"].returncode == 0, fetched["play"].stdout[-6000:]
    assert fetched["results"] is not None


def test_nothing_changed_on_the_host(fetched):
    assert fetched["after"] == fetched["before"]


def test_check_mode_writes_nothing(fetched):
    r = fetched["results"]["check"]
    assert r["changed"] and r["size"] == 40 * MIB and r["digests"] == {} and "HEAD only" in r["msg"]
    assert r["requests"] == 1  # one HEAD


def test_whole_fetch_equals_sha256sum_and_md5sum_and_is_sparse(fetched):
    r = fetched["results"]["whole"]
    local = fetched["local"]
    dest = os.path.join(fetched["out"], "whole.vmdk")
    assert r["changed"] and r["verified"] and r["dest"] == dest
    assert r["digests"]["sha256"] == r["dest_digests"]["sha256"] == _sum("sha256sum", local) == _sum("sha256sum", dest)
    assert r["digests"]["md5"] == r["dest_digests"]["md5"] == _sum("md5sum", local)
    assert r["transport"] == "https" and r["copied_by"] == "datastore_fetch"
    vcsim = fetched["vcsim"]
    assert r["src_url"].startswith("https://%s:%d/folder/dfir%%20fetch%%20%%5B" % (vcsim["host"], vcsim["port"]))
    assert "dcPath=ha-datacenter&dsName=LocalDS_0" in r["src_url"]
    assert fetched["vcsim"]["password"] not in json.dumps(r["src_url"])
    assert r["tls"]["verified"] and r["tls"]["how"] == "thumbprint"
    assert r["tls"]["thumbprint_sha256"] == fetched["vcsim"]["thumbprint_sha256"]
    assert r["fetched_bytes"] == 40 * MIB and r["areas_used"]["source"] == "whole file"
    # the 64 KiB pieces with data (6 MiB, one piece more for the unaligned island) were written; the holes and the
    # 4 MiB of allocated zeros were not
    assert r["written_bytes"] == 6 * MIB + 64 * 1024 and r["zero_bytes"] == 34 * MIB - 64 * 1024
    assert os.stat(dest).st_blocks * 512 <= 6 * MIB + 128 * 1024 < os.stat(local).st_blocks * 512
    assert r["source_identity"] == {"size": 40 * MIB, "modified": "2023-11-14T22:13:20Z", "from": "HEAD"}
    assert r["seconds"] > 0 and r["rate_mib_s"] > 0
    for key in ("src", "dest", "size", "data_bytes", "hole_bytes", "digests", "dest_digests", "verified",
                "resumed_from", "written_bytes", "free_bytes", "mib_per_s", "verify_seconds", "msg"):
        assert key in r, key  # evidence_copy's shape


def test_rerun_changes_nothing(fetched):
    r = fetched["results"]["again"]
    assert not r["changed"] and r["verified"] and r["digests"] == fetched["results"]["whole"]["digests"]


def test_areas_fetch_only_the_data(fetched):
    r = fetched["results"]["by_areas"]
    assert r["verified"] and r["tls"]["how"] == "ca_file"
    assert r["digests"]["sha256"] == _sum("sha256sum", fetched["local"])
    area_bytes = sum(n for o, n in fetched["islands"])
    assert r["fetched_bytes"] == area_bytes == r["data_bytes"] and r["hole_bytes"] == 40 * MIB - area_bytes
    assert r["areas_used"]["source"] == "given areas" and r["areas_used"]["area_bytes"] == area_bytes
    assert r["requests"] == 1 + 3 + 1  # HEAD, one GET per area, HEAD


def test_changed_areas_without_cbt_fetch_the_whole_file_and_say_so(fetched):
    r = fetched["results"]["cbt"]
    assert r["verified"] and r["digests"]["sha256"] == _sum("sha256sum", fetched["local"])
    used = r["areas_used"]
    assert used["source"] == "whole file" and "changed block tracking is off" in used["reason"]
    assert used["vm"] == fetched["vcsim"]["vms"][0]["moref"] and r["fetched_bytes"] == 40 * MIB


def test_a_case_journal_leaves_no_trace(fetched):
    assert fetched["results"]["journaled"]["verified"]
    assert not os.path.exists(os.path.join(fetched["journal"], "fetch-case.jsonl"))


def test_refusals_are_sentences_and_leave_nothing(fetched):
    pin = fetched["results"]["wrong_pin"]
    assert pin["failed"] and "not the pinned" in pin["msg"] and "no credential was sent" in pin["msg"]
    missing = fetched["results"]["missing_file"]
    assert missing["failed"] and "HTTP 404" in missing["msg"]
    names = sorted(os.listdir(fetched["out"]))
    assert names == ["areas.vmdk", "cbt.vmdk", "journaled.vmdk", "whole.vmdk"]


def test_the_datastore_browser_gives_the_modification_time(vcsim):
    """For a host whose HEAD has no Last-Modified: the file's time from SearchDatastore_Task (it lists a folder)."""
    sys.path.insert(0, COLLECTIONS)
    try:
        from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import client as vc
        from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import fetch as f
    finally:
        sys.path.remove(COLLECTIONS)
    ds = vcsim["datastores"][0]
    folder = os.path.join(ds["local_path"], "dfir browse [%s]" % uuid.uuid4().hex[:8])
    os.mkdir(folder)
    try:
        path = os.path.join(folder, "a [1]-flat.vmdk")
        with open(path, "wb") as fh:
            fh.write(b"x" * 10)
        os.utime(path, (1700000000, 1700000000))
        relative = os.path.basename(folder) + "/a [1]-flat.vmdk"
        with vc.VsphereClient(vcsim["host"], vcsim["username"], vcsim["password"], port=vcsim["port"],
                              thumbprint=vcsim["thumbprint_sha256"]) as client:
            assert f.host_names(client) == ("ha-datacenter", [d["name"] for d in vcsim["datastores"]])
            assert f.browser_modified(client, ds["name"], relative) == "2023-11-14T22:13:20.000000Z"
            assert f.browser_modified(client, ds["name"], os.path.basename(folder) + "/none.vmdk") is None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
