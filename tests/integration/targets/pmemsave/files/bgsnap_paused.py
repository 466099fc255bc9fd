# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Background snapshot of a PAUSED guest into a raw image, with the collection's own code.

The pmemsave module refuses this (QEMU 7.2 resumes a paused guest at the end of a background
snapshot), but it is the way to prove the stream extractor: a paused guest does not change, so
the raw image must equal a pmemsave of the same paused guest byte for byte. Usage:
  PYTHONPATH=<collections> python3 bgsnap_paused.py VM CASE_ID JOURNAL_DIR DEST
Prints the extractor's statistics as JSON. The case's journal records every host change.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import sys

from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import memory as _kvm_memory
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm.libvirt import connect, find_domain


def main(name, case_id, journal_dir, dest):
    journal = Journal(case_id, journal_dir)
    uri = "qemu:///system"
    with connect(uri) as conn:
        dom = find_domain(conn, name=name)
        vm = _kvm_memory.vm_facts(dom)
        if vm["running"]:
            raise SystemExit("the VM must be paused for this check")
        p = {"uri": uri, "partial": dest + _kvm_memory.PARTIAL_SUFFIX, "stream": dest + _kvm_memory.STREAM_SUFFIX}
        out = _kvm_memory.take_background_snapshot(journal, dom, vm, p)
    _kvm_memory.seal(p["partial"])
    _kvm_memory.publish(p["partial"], dest)
    print(json.dumps(out["stream"]))


if __name__ == "__main__":
    main(*sys.argv[1:5])
    sys.exit(0 if os.path.exists(sys.argv[4]) else 1)
