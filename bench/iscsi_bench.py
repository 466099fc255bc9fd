# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark: evidence onto the collector's iSCSI LUN against the same work done locally, in one run.

    .venv/bin/python bench/iscsi_bench.py [--part copy|e2e|both] [--size-mib 512] [--rounds 3]
                                          [--e2e-rounds 3] [--work /var/tmp/vmcollect-lab/work/bench-iscsi]

Needs the lab (``bash lab/up.sh``) and root. Two parts:

copy (the throughput of the transport): a target on collector1 (``setup_iscsi_target``, portal
10.213.1.1:3291, tgtd control port 91, case ``bench-cp``) and the LUN attached and
mounted on kvm1 (``iscsi_attach``, userspace initiator: qemu-storage-daemon + libiscsi, FUSE
export, loop device, ext4), both made with the modules through a small playbook. One image,
``--size-mib`` of random data in a raw file (dense: no holes, incompressible), is then copied on
kvm1 (a script run over SSH in kvm1's namespaces, where the mount is; no Ansible in the timings)
to a local folder and to the mounted LUN by each contender, ``--rounds`` times interleaved:

* ``cp --sparse=always`` + ``sync`` of the copy (fsync: the baseline, the same durability)
* evidence_copy's core (``copy_evidence``): copy + sha256 in one read, fsync, no read-back
* evidence_copy's core as the module runs it: the same + the read-back of the copy

Before every run the copy is deleted, ``sync`` runs and the runner sleeps ``--settle`` seconds (2),
untimed. (The same local ``cp`` + ``sync`` of 512 MiB took 0.5 s in some rounds and 1.3-2.1 s in
others, mostly right after an iSCSI run; the pause makes that rarer, not gone: the local numbers are
the noisy ones.) The source is read once before
(page cache warm), so the comparison is of the destinations. Every copy's sha256 is checked
against the source's (untimed for ``cp``). The bytes kvm1 sent and received on its storage link
during each run are counted (``/proc/net/dev``). At the end both hosts are torn down with
``dfir.vmcollect.teardown`` (also after a failure) and the work folder is removed.

e2e (the time an examiner waits): ``playbooks/acquire_kvm.yml`` for the lab guest (memory method
background_snapshot), ``vmcollect_transport=iscsi`` (start to exit = evidence verified on the
collector; portal port 3290, control port 90) against ``vmcollect_transport=local`` (start to exit
= evidence written and verified on kvm1), ``--e2e-rounds`` each, alternating which goes first, a
fresh case id (``bench-<l|i><n>-<stamp>``) and work folder per run, removed afterwards (a
failed run is torn down with playbooks/teardown.yml first). Per-task times come from Ansible's
log file (``ANSIBLE_LOG_PATH``: every line is time-stamped; a task lasts until the next header).
Before each part and each playbook run it waits while integration tests or another acquisition or
teardown playbook run, the guest has a snapshot overlay or kvm1's storage link is down (the lab is
shared; a run that fails anyway is torn down, reported and left out of the medians).

It prints medians and ratios; it asserts nothing.
"""

from __future__ import print_function

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEARDOWN = os.path.join(ROOT, "playbooks", "teardown.yml")
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
MIB = 1024 * 1024

# Case ids of at most 14 characters: iscsi_attach names QEMU's block node "vmc-<case id>-<8 hex>-lun", and
# QEMU refuses node names of more than 31 characters ("Node name too long").
COPY_CASE = "bench-cp"
COPY_PORTAL_PORT = 3291
COPY_CONTROL_PORT = 91
E2E_PORTAL_PORT = 3290
E2E_CONTROL_PORT = 90

# The copy part's target and attachment, made with the modules. Nothing secret is passed in: the CHAP
# secret is drawn inside Ansible and never logged.
SETUP_PLAYBOOK = """---
- name: Bench - export a thin LUN from the collector
  hosts: "{{ bench_collector }}"
  gather_facts: false
  tasks:
    - name: A CHAP secret for this run (never logged)
      ansible.builtin.set_fact:
        bench_secret: "{{ lookup('ansible.builtin.password', '/dev/null', length=32, chars=['ascii_letters', 'digits']) }}"
      no_log: true
    - name: Export the LUN
      dfir.vmcollect.setup_iscsi_target:
        case_id: "{{ bench_case }}"
        journal_dir: "{{ bench_work }}/journal"
        target_name: "{{ bench_kvm }}"
        backing_file: "{{ bench_work }}/collector/lun.img"
        size: "{{ bench_lun_bytes }}"
        initiator_iqn: "{{ bench_iqn }}"
        initiator_addresses: ["{{ hostvars[bench_kvm].vmcollect_storage_address }}"]
        portal_address: "{{ vmcollect_storage_address }}"
        portal_port: "{{ bench_portal_port }}"
        control_port: "{{ bench_control_port }}"
        chap_user: vmcbench
        chap_password: "{{ bench_secret }}"
      register: bench_target

- name: Bench - attach and mount the LUN on the KVM host
  hosts: "{{ bench_kvm }}"
  gather_facts: false
  tasks:
    - name: Attach it (userspace initiator)
      dfir.vmcollect.iscsi_attach:
        case_id: "{{ bench_case }}"
        journal_dir: "{{ bench_work }}/journal"
        portal_address: "{{ hostvars[bench_collector].vmcollect_storage_address }}"
        portal_port: "{{ bench_portal_port }}"
        target_iqn: "{{ hostvars[bench_collector].bench_target.target_iqn }}"
        initiator_iqn: "{{ bench_iqn }}"
        chap_user: vmcbench
        chap_password: "{{ hostvars[bench_collector].bench_secret }}"
        mountpoint: "{{ bench_work }}/volume"
        state: present
"""

# Runs on kvm1 (/usr/bin/python3, over SSH, so in kvm1's network and mount namespaces): one JSON line per run.
RUNNER = r'''
import json, os, subprocess, sys, time
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["collections"])
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.copy import copy_evidence
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import hash_path

def link_bytes():
    with open("/proc/net/dev") as f:
        for line in f:
            name, sep, rest = line.partition(":")
            if sep and name.strip() == cfg["link"]:
                v = rest.split()
                return int(v[0]), int(v[8])
    return 0, 0

def unlink(dest):
    for p in (dest, dest + ".partial", dest + ".partial.json"):
        if os.path.lexists(p):
            os.unlink(p)

src = cfg["src"]
want = hash_path(src, ["sha256"])["digests"]["sha256"]  # also warms the page cache with the source

def cp_sync(dest):
    subprocess.run(["cp", "--sparse=always", src, dest], check=True)
    subprocess.run(["sync", dest], check=True)  # coreutils sync FILE: fsync of the copy
    return None

def ec(verify):
    def run(dest):
        return copy_evidence(src, dest, ["sha256"], verify=verify)["digests"]["sha256"]
    return run

contenders = [("cp+sync", cp_sync), ("ec", ec(False)), ("ec+verify", ec(True))]
dests = [("local", cfg["local_dir"]), ("iscsi", cfg["iscsi_dir"])]
mounts = open("/proc/self/mountinfo").read()
if (" %s " % cfg["iscsi_dir"]) not in mounts:
    raise SystemExit("%s is not a mountpoint in this mount namespace" % cfg["iscsi_dir"])
for r in range(cfg["rounds"]):
    for name, fn in contenders:
        for where, folder in (dests if r % 2 == 0 else dests[::-1]):
            dest = os.path.join(folder, "copy.raw")
            unlink(dest)
            t_sync = time.perf_counter()
            os.sync()  # untimed: nobody pays for the writeback of the run before
            t_sync = time.perf_counter() - t_sync
            time.sleep(cfg["settle"])
            rx0, tx0 = link_bytes()
            t0 = time.perf_counter()
            digest = fn(dest)
            seconds = time.perf_counter() - t0
            rx1, tx1 = link_bytes()
            if digest is None:  # cp: checked untimed
                digest = hash_path(dest, ["sha256"])["digests"]["sha256"]
            if digest != want:
                raise SystemExit("%s to %s: sha256 %s != source %s" % (name, where, digest, want))
            print(json.dumps({"round": r, "contender": name, "dest": where, "seconds": seconds, "sync": t_sync,
                              "tx": tx1 - tx0, "rx": rx1 - rx0}), flush=True)
for where, folder in dests:
    unlink(os.path.join(folder, "copy.raw"))
print(json.dumps({"done": True, "sha256": want}), flush=True)
'''

CONTENDERS = [
    ("cp+sync", "cp --sparse=always + sync"),
    ("ec", "evidence_copy copy+sha256, no read-back"),
    ("ec+verify", "evidence_copy + read-back (the module)"),
]


def out(cmd):
    return subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True).stdout.strip()


def loadavg():
    return "%.2f %.2f %.2f" % os.getloadavg()


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    qsd = out(["qemu-storage-daemon", "--version"]).splitlines()
    return "%d CPUs (%s), kernel %s, Python %s, ansible-core %s, qemu-storage-daemon %s, tgt %s, %s" % (
        os.cpu_count(), model, os.uname().release, sys.version.split()[0],
        # the line "ansible [core X.Y.Z]" (a library's deprecation warning may come first: stderr is merged)
        ([v.split()[-1].rstrip("]") for v in out([os.path.join(VENV_BIN, "ansible"), "--version"]).splitlines()
          if v.startswith("ansible [core")] or ["?"])[0],
        qsd[0].split("version", 1)[-1].split()[0] if qsd else "?", out(["dpkg-query", "-W", "-f", "${Version}", "tgt"]),
        out(["cp", "--version"]).splitlines()[0])


class Lab(object):
    def __init__(self, lab_dir):
        with open(os.path.join(lab_dir, "lab.json")) as f:
            self.facts = json.load(f)
        self.kvm = self.facts["hosts"][0]
        self.collector = self.facts["hosts"][1]
        self.guest = self.facts["guest"]
        self.env = dict(os.environ)
        self.env.update(ANSIBLE_CONFIG=self.facts["ansible_cfg"], ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
                        ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
                        PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))

    def ssh(self, host):
        return ["ssh", "-F", self.facts["ssh"]["config"], "root@" + host["mgmt_address"]]

    def playbook(self, path, args, log=None, timeout=1800):
        env = dict(self.env)
        if log:
            env["ANSIBLE_LOG_PATH"] = log
        t0 = time.monotonic()
        p = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), path] + list(args), env=env, cwd=ROOT,
                           check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                           timeout=timeout)
        return p, time.monotonic() - t0


def write_file(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def make_source(path, size):
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    with open(path + ".tmp", "wb") as f:
        for dummy in range(size // MIB):
            f.write(os.urandom(MIB))
    os.rename(path + ".tmp", path)


# -- part 1: copy throughput ---------------------------------------------------------------------------

def copy_part(lab, args):
    work = os.path.join(args.work, "copy")
    os.makedirs(work, exist_ok=True)
    setup = os.path.join(work, "setup.yml")
    write_file(setup, SETUP_PLAYBOOK)
    size = args.size_mib * MIB
    variables = {"bench_case": COPY_CASE, "bench_work": work, "bench_kvm": lab.kvm["name"],
                 "bench_collector": lab.collector["name"], "bench_lun_bytes": 2 * size + 256 * MIB,
                 "bench_iqn": "iqn.2026-11.io.dfir.vmcollect:bench-" + lab.kvm["name"],
                 "bench_portal_port": COPY_PORTAL_PORT, "bench_control_port": COPY_CONTROL_PORT}
    pb_args = ["-e", json.dumps(variables)]

    def tear_down():  # the project's recovery playbook: the KVM host first, then the collector
        p, dummy = lab.playbook(TEARDOWN, ["-e", "vmcollect_case_id=" + COPY_CASE,
                                           "-e", "vmcollect_journal_dir=" + os.path.join(work, "journal")])
        if p.returncode != 0:
            print("TEARDOWN FAILED (exit %d), run it again: %s\n%s" % (p.returncode, TEARDOWN, p.stdout[-4000:]))
            return False
        return True

    if os.path.isdir(os.path.join(work, "journal", COPY_CASE)):  # an interrupted run of this bench
        print("undoing what an interrupted run left (case %s)" % COPY_CASE)
        if not tear_down():
            raise SystemExit(1)
    src = os.path.join(work, "source.raw")
    make_source(src, size)
    local_dir = os.path.join(work, "local")
    for folder in (local_dir, os.path.join(work, "collector")):
        os.makedirs(folder, exist_ok=True)
    results = []
    wait_quiet(lab, args)
    load = [loadavg()]
    ok = False
    try:
        p, attach_s = lab.playbook(setup, pb_args)
        if p.returncode != 0:
            print("setting up the target and attachment failed (exit %d):\n%s" % (p.returncode, p.stdout[-6000:]))
            raise SystemExit(1)
        print("target exported on %s:%d and the LUN attached and mounted on %s: %.1f s (ansible-playbook, 2 modules)" % (
            lab.collector["storage_address"], COPY_PORTAL_PORT, lab.kvm["name"], attach_s))
        cfg = {"collections": COLLECTIONS, "src": src, "local_dir": local_dir, "iscsi_dir": os.path.join(work, "volume"),
               "rounds": args.rounds, "link": args.link, "settle": args.settle}
        cmd = lab.ssh(lab.kvm) + ["/usr/bin/python3 - %s" % shlex.quote(json.dumps(cfg))]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
        proc.stdin.write(RUNNER)
        proc.stdin.close()
        for line in proc.stdout:
            rec = json.loads(line)
            if rec.get("done"):
                ok = True
                continue
            results.append(rec)
            print("  round %d %-10s -> %-5s %7.3f s  link tx %5d MiB rx %4d MiB  (sync before: %.2f s, load %s)" % (
                rec["round"] + 1, rec["contender"], rec["dest"], rec["seconds"], rec["tx"] // MIB, rec["rx"] // MIB,
                rec["sync"], loadavg()))
        proc.wait()
        load.append(loadavg())
        if proc.returncode != 0 or not ok:
            print("the copy runner on %s failed (exit %d)" % (lab.kvm["name"], proc.returncode))
    finally:
        torn = tear_down()
        if torn and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not ok:
        raise SystemExit(1)

    print()
    print("copy part: %d MiB of random data (raw, dense), %d rounds interleaved; load average at start %s, at end %s" % (
        args.size_mib, args.rounds, load[0], load[-1]))
    print("source page cache warm; every copy's sha256 equal to the source's; sync before every run (untimed)")
    header = ("contender", "local s", "MiB/s", "iSCSI s", "MiB/s", "iSCSI/local", "link MiB tx/rx")
    print("%-42s %9s %9s %9s %9s %11s %12s" % header)
    for key, label in CONTENDERS:
        med = {}
        link = (0, 0)
        for where in ("local", "iscsi"):
            runs = [r for r in results if r["contender"] == key and r["dest"] == where]
            med[where] = statistics.median(r["seconds"] for r in runs)
            if where == "iscsi":
                link = (statistics.median(r["tx"] for r in runs) / MIB, statistics.median(r["rx"] for r in runs) / MIB)
        print("%-42s %9.3f %9.0f %9.3f %9.0f %10.2fx %7.0f/%-4.0f" % (
            label, med["local"], args.size_mib / med["local"], med["iscsi"], args.size_mib / med["iscsi"],
            med["local"] / med["iscsi"], link[0], link[1]))
    print("iSCSI/local = throughput over the LUN / throughput to the local folder (1.00x = no cost)")


# -- part 2: end to end ---------------------------------------------------------------------------------

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) p=\d+ u=\S+ n=\S+ \w+\| (PLAY RECAP|PLAY \[.*\]|TASK \[(.*)\])")


def task_times(log):
    """From an Ansible log file: {task name: seconds}, {play name: seconds}, time of the first and last line.

    A task lasts until the next PLAY/TASK/RECAP line; a task name's loops, includes and hosts are summed."""
    tasks = {}
    plays = {}
    first = last = None
    task = play = None
    with open(log) as f:
        for line in f:
            m = LOG_LINE.match(line)
            if not m:
                continue
            stamp = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + int(m.group(1)[20:]) / 1000.0
            first = stamp if first is None else first
            last = stamp
            if task is not None:
                tasks[task[0]] = tasks.get(task[0], 0.0) + stamp - task[1]
                plays[play] = plays.get(play, 0.0) + stamp - task[1]
            task = None
            if m.group(3) is not None:
                task = (m.group(3), stamp)
            elif m.group(2).startswith("PLAY ["):
                play = m.group(2)[6:-1]
    return tasks, plays, first, last


def lab_busy(lab, link):
    """Why the shared lab is busy now (integration tests, another acquisition or teardown playbook, a snapshot
    overlay on the guest, kvm1's storage link down), or None."""
    mine = str(os.getpid())
    for line in out(["ps", "-eo", "pid,ppid,args"]).splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3 or mine in parts[:2]:
            continue
        if "ansible-playbook" in parts[2] and re.search(r"acquire_kvm|teardown\.yml", parts[2]):
            return "another playbook runs: " + parts[2][:120]
        if re.search(r"pytest .*tests/integration|ansible-test integration", parts[2]):
            return "integration tests run: " + parts[2][:120]
    disks = out(["virsh", "-c", lab.facts["libvirt_uri"], "domblklist", lab.guest["name"]])
    want = [d["path"] for d in lab.guest["disks"]]
    for line in disks.splitlines()[2:]:
        fields = line.split(None, 1)
        if len(fields) == 2 and fields[1] not in want and fields[1] != "-":
            return "the guest's disk %s is %s (a snapshot in progress)" % (fields[0], fields[1])
    state = out(["ip", "netns", "exec", lab.kvm["netns"], "cat", "/sys/class/net/%s/operstate" % link])
    if state != "up":
        return "%s's storage link %s is %s" % (lab.kvm["name"], link, state)
    return None


def wait_quiet(lab, args):
    """Wait (at most --wait seconds) until the lab is not busy; say so."""
    t0 = time.monotonic()
    reason = lab_busy(lab, args.link)
    first = reason
    while reason and time.monotonic() - t0 < args.wait:
        time.sleep(5)
        reason = lab_busy(lab, args.link)
    if reason:
        print("  still busy after %d s (%s): running anyway" % (args.wait, reason))
    elif first:
        print("  waited %.0f s for the lab (%s)" % (time.monotonic() - t0, first))


def e2e_args(lab, mode, case, run_dir):
    args = ["-e", "vmcollect_transport=" + mode, "-e", "kvm_acquire_case_id=" + case,
            "-e", json.dumps({"kvm_acquire_examiner": "bench"}), "-e", json.dumps({"kvm_acquire_vms": [lab.guest["name"]]}),
            "-e", "kvm_acquire_memory_method=background_snapshot",
            "-e", "kvm_acquire_journal_dir=%s/journal" % run_dir]
    if mode == "local":
        return args + ["-e", "kvm_acquire_evidence_dir=%s/evidence" % run_dir]
    return args + ["-e", "collector_journal_dir=%s/journal" % run_dir, "-e", "collector_dir=%s/collector" % run_dir,
                   "-e", "collector_verify_dir=%s/verify" % run_dir, "-e", "vmcollect_mount_dir=%s/volume" % run_dir,
                   "-e", "collector_portal_port=%d" % E2E_PORTAL_PORT, "-e", "collector_control_port=%d" % E2E_CONTROL_PORT]


def e2e_part(lab, args):
    playbook = os.path.join(ROOT, "playbooks", "acquire_kvm.yml")
    teardown = TEARDOWN
    base = os.path.join(args.work, "e2e")
    os.makedirs(base, exist_ok=True)
    stamp = "%04x" % (int(time.time()) % 0x10000)
    walls = {"local": [], "iscsi": []}
    tasks = {"local": [], "iscsi": []}
    plays = {"local": [], "iscsi": []}
    overhead = {"local": [], "iscsi": []}
    loads = []
    failures = 0
    for r in range(args.e2e_rounds):
        for mode in (("local", "iscsi") if r % 2 == 0 else ("iscsi", "local")):
            wait_quiet(lab, args)
            case = "bench-%s%d-%s" % (mode[0], r + 1, stamp)  # at most 14 characters, see COPY_CASE
            run_dir = os.path.join(base, case)
            os.makedirs(run_dir)
            log = os.path.join(base, case + ".log")
            load = loadavg()
            p, seconds = lab.playbook(playbook, e2e_args(lab, mode, case, run_dir), log=log)
            loads.append(load)
            if p.returncode != 0:
                failures += 1
                print("  %s round %d FAILED (exit %d) after %.1f s:\n%s" % (
                    mode, r + 1, p.returncode, seconds, p.stdout[-5000:]))
                t, dummy = lab.playbook(teardown, ["-e", "vmcollect_case_id=" + case,
                                                   "-e", "vmcollect_journal_dir=%s/journal" % run_dir])
                if t.returncode != 0:
                    print("  TEARDOWN of %s FAILED, its folder %s is kept:\n%s" % (case, run_dir, t.stdout[-3000:]))
                    continue
            else:
                walls[mode].append(seconds)
                per_task, per_play, first, last = task_times(log)
                tasks[mode].append(per_task)
                plays[mode].append(per_play)
                # before the first play (interpreter, inventory, playbook parsing) + after the recap
                overhead[mode].append(seconds - (last - first))
                print("  round %d %-5s %6.1f s  (load at start %s)" % (r + 1, mode, seconds, load))
            shutil.rmtree(run_dir, ignore_errors=True)
            os.unlink(log)
    if os.path.isdir(base) and not os.listdir(base):
        os.rmdir(base)
    if not walls["local"] or not walls["iscsi"]:
        print("not enough successful runs to compare (%d failed)" % failures)
        raise SystemExit(1)

    print()
    print("e2e part: playbooks/acquire_kvm.yml, guest %s (%d MiB RAM, background_snapshot; disks %s), "
          "%d rounds, %d failed; load average at the runs' starts: %s" % (
              lab.guest["name"], lab.guest["memory_mib"],
              " + ".join("%s %s %d MiB" % (d["target"], d["format"], d["virtual_size"] // MIB) for d in lab.guest["disks"]),
              args.e2e_rounds, failures, ", ".join(loads)))
    med = dict((m, statistics.median(w)) for m, w in walls.items())
    print("%-60s %9s %s" % ("mode", "median s", "runs"))
    print("%-60s %9.1f %s" % ("local (evidence written + verified on kvm1)", med["local"],
                              " ".join("%.1f" % w for w in walls["local"])))
    print("%-60s %9.1f %s" % ("iscsi (start to evidence verified on the collector)", med["iscsi"],
                              " ".join("%.1f" % w for w in walls["iscsi"])))
    print("ratio iscsi / local: %.2fx" % (med["iscsi"] / med["local"]))
    for mode in ("local", "iscsi"):
        print()
        print("%s: median seconds per play (tasks only), and ansible-playbook outside any play (start-up, exit)" % mode)
        for name in plays[mode][0]:
            print("  %6.2f  %s" % (statistics.median(run.get(name, 0.0) for run in plays[mode]), name))
        print("  %6.2f  (outside any play)" % statistics.median(overhead[mode]))
    for mode in ("local", "iscsi"):
        names = {}
        for run in tasks[mode]:
            for name in run:
                names[name] = True
        rows = []
        for name in names:
            rows.append((statistics.median(run.get(name, 0.0) for run in tasks[mode]), name))
        rows.sort(reverse=True)
        total = sum(s for s, dummy in rows)
        print()
        print("%s: median per-task seconds (summed over loops and hosts of a task name), %d tasks, %.1f s in tasks" % (
            mode, len(rows), total))
        for s, name in rows[:args.top]:
            print("  %6.2f  %s" % (s, name))
        print("  %6.2f  (the other %d tasks)" % (sum(s for s, dummy in rows[args.top:]), max(0, len(rows) - args.top)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["copy", "e2e", "both"], default="both")
    ap.add_argument("--size-mib", type=int, default=512, help="size of the copied image (random data)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the copy part")
    ap.add_argument("--e2e-rounds", type=int, default=3, help="playbook runs per mode")
    ap.add_argument("--work", default="/var/tmp/vmcollect-lab/work/bench-iscsi")
    ap.add_argument("--lab-dir", default=os.environ.get("LAB_DIR", "/var/tmp/vmcollect-lab"))
    ap.add_argument("--link", default="stor0", help="kvm1's storage network interface (bytes counted)")
    ap.add_argument("--wait", type=int, default=900, help="seconds to wait for a busy lab before each part / run")
    ap.add_argument("--top", type=int, default=12, help="slowest tasks shown per mode")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds to sleep (untimed) after the sync before each copy run")
    ap.add_argument("--keep", action="store_true", help="keep the copy part's work folder (the source image)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the lab's SSH keys, virsh)")
    lab = Lab(args.lab_dir)
    print("command: %s" % " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv))
    print("machine: %s" % machine())
    print("load average at start: %s" % loadavg())
    if args.part in ("copy", "both"):
        copy_part(lab, args)
    if args.part in ("e2e", "both"):
        print()
        e2e_part(lab, args)
    if os.path.isdir(args.work) and not os.listdir(args.work):
        os.rmdir(args.work)


if __name__ == "__main__":
    main()
