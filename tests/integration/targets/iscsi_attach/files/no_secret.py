# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fail if the secret read on stdin is in any process's argv or environment, or in the files given.

The secret comes on stdin so that this check's own argv does not hold it.
Prints what was checked; exit 1 and the places it was found otherwise.
"""
import os
import sys

secret = sys.stdin.read().strip().encode()
if len(secret) < 8:
    sys.exit("the secret to look for is too short")
found, procs = [], 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    for what in ("cmdline", "environ"):
        try:
            with open("/proc/%s/%s" % (pid, what), "rb") as f:
                data = f.read()
        except OSError:
            continue
        procs += what == "cmdline"
        if secret in data:
            found.append("/proc/%s/%s" % (pid, what))
files = 0
for top in sys.argv[1:]:
    for root, _dirs, names in os.walk(top):
        for name in names:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    files += 1
                    if secret in f.read():
                        found.append(path)
            except OSError:
                continue
if found:
    print("secret found in: %s" % ", ".join(found))
    sys.exit(1)
print("secret absent from %d processes and %d files" % (procs, files))
