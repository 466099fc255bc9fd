# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lab itself is what the other integration tests stand on: prove it is what it claims."""

import os
import subprocess

from conftest import ansible_env, VENV_BIN

VIRSH = ["virsh", "-c", "qemu:///system"]


def _out(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, universal_newlines=True, **kw).stdout


def test_hosts_answer_over_ssh_with_host_key_checking(lab):
    for host in lab["hosts"]:
        cmd = ["ssh", "-F", lab["ssh"]["config"], "root@" + host["mgmt_address"], "hostname"]
        assert _out(cmd).strip() == host["hostname"]
    # the same with a known_hosts that does not know the host: refused
    host = lab["hosts"][0]
    refused = subprocess.run(["ssh", "-F", lab["ssh"]["config"], "-o", "UserKnownHostsFile=/dev/null",
                              "root@" + host["mgmt_address"], "true"], check=False,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert refused.returncode != 0 and "Host key verification failed" in refused.stdout


def test_ansible_reaches_every_host(lab):
    out = _out([os.path.join(VENV_BIN, "ansible"), "all", "-m", "ansible.builtin.ping", "-o"], env=ansible_env(lab))
    for host in lab["hosts"]:
        assert "%s | SUCCESS" % host["name"] in out


def test_hosts_are_separate_network_namespaces(lab):
    for host in lab["hosts"]:
        addrs = _out(["ip", "-n", host["netns"], "-o", "-4", "addr"])
        assert host["mgmt_address"] in addrs and host["storage_address"] in addrs
    # the storage link joins the two hosts directly: a TCP connect from kvm1 to the collector's
    # storage address gets an answer (nothing listens there yet, so a reset: "refused")
    kvm, coll = lab["hosts"]
    probe = subprocess.run(["ssh", "-F", lab["ssh"]["config"], "root@" + kvm["mgmt_address"],
                            "timeout 3 bash -c 'exec 3<>/dev/tcp/%s/3260'" % coll["storage_address"]],
                           check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert probe.returncode == 0 or "Connection refused" in probe.stdout, probe.stdout


def test_guest_runs_under_the_kvm_hosts_libvirtd_with_two_disks(lab):
    guest = lab["guest"]
    assert _out(VIRSH + ["domstate", guest["name"]]).strip() == "running"
    blk = _out(VIRSH + ["domblklist", guest["name"], "--details"])
    for disk in guest["disks"]:
        assert disk["target"] in blk and disk["path"] in blk
    info = _out(["qemu-img", "info", "-U", "--output=json", guest["disks"][0]["path"]])
    assert '"format": "qcow2"' in info
    # thin: far less allocated than the virtual size
    assert os.stat(guest["disks"][0]["path"]).st_blocks * 512 < guest["disks"][0]["virtual_size"] // 4


def test_guest_disk_has_a_partition_table_filesystem_known_files_and_markers(lab, tmp_path):
    guest = lab["guest"]
    raw = str(tmp_path / "vda.raw")
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", guest["disks"][0]["path"], raw], check=True)
    part = guest["disks"][0]["partitions"][0]
    assert "Linux" in _out(["sfdisk", "-l", raw])
    fs = str(tmp_path / "part1.img")
    with open(raw, "rb") as src, open(fs, "wb") as dst:
        src.seek(part["start"])
        dst.write(src.read(part["size"]))
        src.seek(guest["disks"][0]["marker_offset"])
        assert src.read(len(guest["disks"][0]["marker_text"])).decode() == guest["disks"][0]["marker_text"]
    listing = _out(["debugfs", "-R", "ls -p /", fs], stderr=subprocess.DEVNULL)
    with open(guest["known_files_sha256"]) as f:
        known = [line.split(None, 1)[1].strip() for line in f if line.strip()]
    for name in known:
        assert name.split("/")[0] in listing
    with open(guest["disks"][1]["path"], "rb") as f:
        f.seek(guest["disks"][1]["marker_offset"])
        assert f.read(len(guest["disks"][1]["marker_text"])).decode() == guest["disks"][1]["marker_text"]


def test_guest_ram_holds_the_marker_and_the_guest_is_alive(lab, tmp_path):
    guest = lab["guest"]
    with open(guest["console_log"], "rb") as f:
        console = f.read()
    assert b"LAB-INIT-DONE" in console and b"LAB-HEARTBEAT" in console
    dump = os.path.join(lab["work_dir"], "test_lab-ram.elf")
    try:
        subprocess.run(VIRSH + ["dump", guest["name"], dump, "--memory-only", "--format", "elf"], check=True,
                       stdout=subprocess.DEVNULL)
        with open(dump, "rb") as f:
            assert guest["marker"].encode() in f.read()
    finally:
        if os.path.exists(dump):
            os.unlink(dump)
