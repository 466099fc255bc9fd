# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What one run of a module costs before it does anything: this tree against another (an earlier commit's).

Every task of an acquisition runs a module, and most of a short module's run is Python starting and importing what
the module needs: AnsiballZ ships the module and its module_utils in a zip, which Python compiles on each run (no
.pyc is kept). The iSCSI transport runs about 50 modules per acquisition, so a module's start-up is a large part of
its overhead over the local mode (issue 14).

For each module it builds the AnsiballZ file Ansible sends (`ansible localhost -m <module>` with
ANSIBLE_KEEP_REMOTE_FILES, from each tree's collections), then runs each file with no arguments, alternating the two
trees, --rounds times: the module imports everything, then its argument spec refuses the missing options. It prints
the median CPU time (user + system, from the child's rusage: less sensitive to a busy machine than the wall time) and
wall time of each, and the ratio. Nothing is asserted.

    .venv/bin/python bench/module_bench.py --baseline /tmp/old/.build/collections --rounds 15

--baseline is another tree's collections path (a `git worktree` of an earlier commit, with .build/collections/
ansible_collections/dfir/vmcollect linked to it). Without it only this tree is measured.
"""

from __future__ import absolute_import, division, print_function

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV_BIN = os.path.join(os.environ.get("VENV", os.path.join(ROOT, ".venv")), "bin")
# the modules of an iSCSI acquisition of a KVM guest that run most often, and the one that imports the most
DEFAULT_MODULES = ["teardown", "case_lock", "hash_verify", "iscsi_attach", "loop_mount", "setup_iscsi_target",
                   "evidence_custody", "evidence_manifest"]


def build_payloads(collections, modules, work, python):
    """{module: path of its AnsiballZ file} as Ansible builds it from ``collections``."""
    out = {}
    for module in modules:
        tmp = os.path.join(work, module)
        env = dict(os.environ, ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TMP=tmp, ANSIBLE_PIPELINING="0",
                   ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_LOCALHOST_WARNING="0")
        subprocess.run([os.path.join(VENV_BIN, "ansible"), "localhost", "-m", "dfir.vmcollect." + module,
                        "-e", "ansible_python_interpreter=" + python], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = glob.glob(os.path.join(tmp, "*", "AnsiballZ_%s.py" % module))
        if not found:
            raise SystemExit("no AnsiballZ file was kept for %s from %s" % (module, collections))
        out[module] = found[0]
    return out


def run_once(python, path):
    t0 = time.monotonic()
    p = subprocess.Popen([python, path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dummy, dummy_status, usage = os.wait4(p.pid, 0)
    return usage.ru_utime + usage.ru_stime, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--baseline", help="another tree's collections path (the baseline)")
    ap.add_argument("--modules", nargs="+", default=DEFAULT_MODULES)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--python", default="/usr/bin/python3", help="the interpreter the hosts run modules with")
    args = ap.parse_args()
    trees = [("this tree", os.path.join(ROOT, ".build", "collections"))]
    if args.baseline:
        trees.insert(0, ("baseline", args.baseline))
    work = tempfile.mkdtemp(prefix="vmcollect-module-bench.")
    try:
        payloads = dict((name, build_payloads(path, args.modules, os.path.join(work, str(i)), args.python))
                        for i, (name, path) in enumerate(trees))
        version = subprocess.run([args.python, "-V"], check=False, stdout=subprocess.PIPE,
                                 universal_newlines=True).stdout.strip()
        print("module_bench: %s, %d rounds, %s (%s), load average at start %s" % (
            ", ".join("%s %s" % t for t in trees), args.rounds, args.python, version,
            " ".join("%.2f" % v for v in os.getloadavg())))
        times = {}
        for dummy in range(args.rounds):
            for module in args.modules:
                for name, dummy_path in trees:
                    times.setdefault((module, name), []).append(run_once(args.python, payloads[name][module]))
        head = "%-20s" % "module"
        for name, dummy in trees:
            head += " %12s %12s" % (name + " cpu", "wall")
        if args.baseline:
            head += " %9s" % "cpu ratio"
        print(head)
        for module in args.modules:
            line = "%-20s" % module
            cpu = {}
            for name, dummy in trees:
                cpu[name] = statistics.median(c for c, w in times[(module, name)])
                line += " %10.0fms %10.0fms" % (cpu[name] * 1000, statistics.median(w for c, w in times[(module, name)]) * 1000)
            if args.baseline:
                line += " %8.2fx" % (cpu["this tree"] / cpu["baseline"])
            print(line)
        if args.baseline:
            print("cpu ratio: this tree / baseline, medians of %d runs each (below 1: this tree starts faster)" % args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
