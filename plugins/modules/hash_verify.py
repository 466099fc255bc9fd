#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hash_verify
short_description: Hash evidence files or block devices in one read and verify the digests
version_added: 0.1.0
description:
  - Reads each file or block device once and computes several digests in parallel
    (one thread per algorithm, fed from the same read).
  - Sparse files are read sparse-aware; holes are hashed as zeros without being read.
  - Compares the digests with expected values given inline or in a C(sha256sum)-style file,
    and fails naming every file whose digest differs, with both digests.
  - Only reads. Sources are opened read-only, with C(O_NOATIME) where the kernel allows it, so
    not even the access time of the evidence changes. A regular file that changes while it is
    hashed is an error.
  - Nothing is written anywhere, so the module always reports C(changed=false) and runs in full
    in check mode.
  - At least one of O(path), O(expected) and O(checksum_file) is required.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  path:
    description:
      - Absolute paths of files or block devices to hash.
      - May be empty when O(checksum_file) or O(expected) names the files.
    type: list
    elements: path
    aliases: [paths]
  algorithms:
    description:
      - Hash algorithms to compute, all from the same read.
      - Algorithms named by O(expected) or O(checksum_file) are computed too.
    type: list
    elements: str
    choices: [md5, sha1, sha256, sha512]
    default: [sha256]
  expected:
    description:
      - Expected digests by absolute path.
      - A value is either a hex digest (the algorithm is told by its length) or a dictionary
        of algorithm to hex digest.
      - Paths listed here but not in O(path) are hashed too.
    type: dict
  checksum_file:
    description:
      - A checksum file in the format of C(sha256sum), C(md5sum), C(sha1sum) or C(sha512sum)
        (text or binary mode, escaped names included) or BSD tag lines (C(SHA256 (name) = digest)).
      - Relative names in it are resolved against the folder of the checksum file, so a
        C(SHA256SUMS) that C(sha256sum -c) accepts inside the evidence folder works as is.
      - Without O(path), every file it lists is verified. With O(path), each path must be
        listed in it.
      - An absolute path.
    type: path
  block_size:
    description:
      - Bytes read at a time. Values below 65536 are raised to 65536.
    type: int
    default: 1048576
extends_documentation_fragment:
  - dfir.vmcollect.attributes
  - dfir.vmcollect.journal.at_work
  - dfir.vmcollect.progress
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
seealso:
  - name: sha256sum
    description: The GNU coreutils tool whose checksum file format this module reads.
    link: https://www.gnu.org/software/coreutils/manual/html_node/sha2-utilities.html
notes:
  - The phase of O(progress_file) is V(hash 1/3), V(hash 2/3) and so on, one per file.
  - Holes in sparse files still cost hashing time (the digest covers the logical content),
    but no disk reads.
  - Hashing a block device reads it from start to end; a device that is written to while it is
    hashed yields a digest of no single point in time. Hash frozen or read-only sources.
"""

EXAMPLES = r"""
- name: Hash a memory image with sha256 and md5 in one read
  dfir.vmcollect.hash_verify:
    path: /evidence/case-42/vm1.mem.raw
    algorithms: [sha256, md5]
  register: mem_hash

- name: Verify a copy against the digest taken at the source
  dfir.vmcollect.hash_verify:
    path: /mnt/collector/case-42/vm1-vda.qcow2
    expected:
      /mnt/collector/case-42/vm1-vda.qcow2: "{{ source_hash.files[0].digests.sha256 }}"

- name: Verify every file listed in the case's SHA256SUMS (like sha256sum -c)
  dfir.vmcollect.hash_verify:
    checksum_file: /evidence/case-42/SHA256SUMS

- name: Verify a block device against sha256 and sha512 digests
  dfir.vmcollect.hash_verify:
    path: /dev/loop7
    expected:
      /dev/loop7:
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        sha512: "{{ expected_sha512 }}"
"""

RETURN = r"""
files:
  description:
    - One entry per file or device, in the order given.
    - Also returned when the task fails on a mismatch, so every digest is on record.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Absolute path that was hashed.
      type: str
      sample: /evidence/case-42/vm1.mem.raw
    size:
      description: Size in bytes (for a block device, its size).
      type: int
      sample: 268435456
    digests:
      description: Hex digest by algorithm.
      type: dict
      sample: {sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
    seconds:
      description: Wall time of the read and hash.
      type: float
      sample: 0.412
    mib_per_s:
      description: Throughput in MiB per second (logical size over wall time).
      type: float
      sample: 620.5
    data_bytes:
      description: Bytes read from the source.
      type: int
      sample: 8388608
    hole_bytes:
      description: Bytes of holes hashed as zeros without a read.
      type: int
      sample: 260046848
    checked:
      description: Algorithms compared with an expected digest.
      type: list
      elements: str
      sample: [sha256]
    verified:
      description: V(true) if every expected digest matched, V(false) on a mismatch, V(null) if none was expected.
      type: bool
      sample: true
mismatches:
  description: One sentence per digest that differs, with both digests.
  returned: failed on a mismatch
  type: list
  elements: str
  sample: ["/evidence/a.raw: sha256 expected 9f86..., got e3b0..."]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._argspec import journal_spec
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import Journal
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.running import at_work
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.copy import progress_file_for
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.hashing import (
    DEFAULT_BLOCK_SIZE,
    SUPPORTED_ALGORITHMS,
    collect_expected,
    hash_and_verify,
)


def argument_spec():
    return dict(
        path=dict(type="list", elements="path", aliases=["paths"]),
        algorithms=dict(type="list", elements="str", choices=list(SUPPORTED_ALGORITHMS), default=["sha256"]),
        expected=dict(type="dict"),
        checksum_file=dict(type="path"),
        block_size=dict(type="int", default=DEFAULT_BLOCK_SIZE),
        progress_file=dict(type="path"),
        **journal_spec(required=False)
    )


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_one_of=[("path", "expected", "checksum_file")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        expected = collect_expected(p["expected"], p["checksum_file"], p["path"])
        journal = Journal(p["case_id"], p["journal_dir"]) if p["case_id"] and not module.check_mode else None
        with at_work(journal, "hash_verify", "hash %d file(s)" % len(set(list(expected or {}) + list(p["path"] or [])))):
            report = progress_file_for(p["progress_file"], None, None, module.check_mode)
            files = hash_and_verify(p["path"], p["algorithms"], expected, p["block_size"],
                                    report.report if report is not None else None)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(changed=False, files=files)


if __name__ == "__main__":
    main()
