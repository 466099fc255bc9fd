#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: evidence_image
short_description: Images any examiner can open - the guest's view of a disk's chain, an E01, a flat raw image
version_added: 0.3.0
description:
  - For each disk whose frozen chain (qcow2 and raw layers, or an ESXi disk's levels - flat extents and SEsparse or
    vmfsSparse deltas) was copied into the case folder, computes the digests of the bytes the guest saw (the
    C(logical) record of the case manifest) and tells how to open the chain with C(qemu-img) from the case folder,
    without the original host's paths.
  - The chain is given explicitly, top first. The backing file named in a qcow2 header (the original host's path)
    is never followed; it is only checked against the chain given. Unallocated clusters read through to the next
    layer; below the last layer, zeros.
  - With O(e01=true), writes an EnCase 6 E01 image of the same bytes with C(ewfacquirestream) (Debian package
    C(ewf-tools)), hashing them in the same pass. ewf's stored MD5 must equal the stream's.
  - With O(flatten=true), writes a sparse raw image C(<vm folder>/disks/<target>.flat.raw).
  - Evidence once written is never overwritten - an E01 or raw image that exists already is accepted (unchanged)
    when it holds the disk's bytes (the E01's stored MD5, the raw image's digests), else refused.
  - The qcow2 reader is the collection's own (standard library only) - versions 2 and 3, clusters of 512 bytes to
    2 MiB, zero clusters, deflate-compressed clusters, extended L2 entries. Encrypted images, external data files
    and zstd compression are refused with a sentence saying so.
  - The VMDK delta readers are the collection's own too, reading as QEMU's vmdk driver reads - SEsparse (4 KiB
    grains; unmapped and zeroed grains read as zeros; a journal left to replay is refused) and vmfsSparse (COWD).
    Each level's descriptor is given with its extent; a delta's parentCID must be the CID of the level given below
    it. The command that opens such a chain links each level's copies under the host's names in a temporary folder
    (a descriptor names its extent) and runs C(qemu-img) there.
author:
  - dfir.vmcollect maintainers (@dfir-vmcollect)
options:
  case_dir:
    description: Absolute path of the case folder (must exist). Layers, E01s and raw images all lie inside it.
    type: path
    required: true
  disks:
    description: The disks to image.
    type: list
    elements: dict
    required: true
    suboptions:
      target:
        description: The disk's target name (V(vda), V(sdb)...); names the E01 and the raw image.
        type: str
        required: true
      vm:
        description: The VM's folder in the case folder (V(vmc-victim-6c616276)).
        type: str
        required: true
      layers:
        description: The disk's chain, top first.
        type: list
        elements: dict
        required: true
        suboptions:
          path:
            description: Path of the layer's copy, relative to O(case_dir) or absolute inside it.
            type: str
            required: true
          format:
            description:
              - The layer's format. A raw layer (a flat extent) can only be the last one.
              - V(vmdk-sparse) is an ESXi snapshot's delta extent (SEsparse or vmfsSparse, told by its header); it
                needs O(disks[].layers[].descriptor) and a level below it.
            type: str
            required: true
            choices: [qcow2, raw, vmdk-sparse]
          descriptor:
            description:
              - Path of the level's VMDK descriptor copy (relative to O(case_dir) or absolute inside it).
              - Checked against the extent (type, size); a flat extent's guest-visible size is the descriptor's.
            type: str
  algorithms:
    description: Digests of the guest's bytes to compute (C(md5), C(sha1), C(sha256), C(sha512)).
    type: list
    elements: str
    default: [sha256]
  e01:
    description: Write an E01 image of each disk at C(<e01_dir>/<target>.E01) (more segments C(.E02)...).
    type: bool
    default: false
  e01_dir:
    description:
      - Folder of the E01 images, relative to O(case_dir) (inside it), or absolute (anywhere - for example beside a
        case folder mounted read-only); created when missing (mode 0750). The E01s' paths in the result are relative
        to O(case_dir) when inside it, else absolute.
      - By default each disk's C(<vm folder>/e01) in O(case_dir).
    type: path
  e01_fields:
    description: The case fields stored in each E01 (one line each; tabs and line breaks are refused).
    type: dict
    default: {}
    suboptions:
      case_number:
        description: The case number.
        type: str
      evidence_number:
        description: The evidence number; by default the disk's O(disks[].target).
        type: str
      examiner:
        description: The examiner's name.
        type: str
      description:
        description: What the image is.
        type: str
      notes:
        description: Notes.
        type: str
  e01_compression:
    description: The E01's compression level (deflate). V(empty-block) compresses only blocks of one repeated byte.
    type: str
    choices: [none, empty-block, fast, best]
    default: fast
  flatten:
    description: Also write each disk as a sparse raw image C(<vm folder>/disks/<target>.flat.raw).
    type: bool
    default: false
extends_documentation_fragment:
  - dfir.vmcollect.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads the layers' headers (a wrong chain fails in check mode too) and reports each disk's C(logical) record
        without digests, and which files it would write; it hashes nothing and writes nothing.
  diff_mode:
    support: none
notes:
  - C(changed) is true only when a file (an E01's segments, a raw image) was written.
  - The E01 is written under a temporary name beside its target and takes its final names only once ewf's stored
    MD5 and media size match the stream; a disk whose size is not a whole number of 512-byte sectors is refused
    for E01 (EWF stores whole sectors).
  - Needs C(ewfacquirestream) and C(ewfinfo) (package C(ewf-tools)) for O(e01) only.
seealso:
  - module: dfir.vmcollect.evidence_manifest
  - module: dfir.vmcollect.evidence_copy
"""

EXAMPLES = r"""
- name: Record the guest's view of the disk, write an E01 and a flat raw image
  dfir.vmcollect.evidence_image:
    case_dir: /srv/evidence/case-42
    disks:
      - target: vda
        vm: vmc-victim-6c616276
        layers:
          - path: vmc-victim-6c616276/disks/vda-01-overlay.qcow2
            format: qcow2
          - path: vmc-victim-6c616276/disks/vda-00-vda.qcow2
            format: qcow2
    algorithms: [sha256, md5]
    e01: true
    e01_fields:
      case_number: case-42
      examiner: J. Doe
      description: vda of vmc-victim, frozen 2026-12-06
    flatten: true
  register: imaged

- name: Hand the E01s to the manifest
  dfir.vmcollect.evidence_manifest:
    case_dir: /srv/evidence/case-42
    case_id: case-42
    artifacts: "{{ imaged.disks | map(attribute='e01') | select | list }}"
"""

RETURN = r"""
disks:
  description: One entry per disk, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    target:
      description: The disk's target.
      type: str
    vm:
      description: The VM folder.
      type: str
    disk_path:
      description: Absolute path of the top layer (the disk artifact of the manifest).
      type: str
    logical:
      description:
        - The manifest's C(logical) record - C(size) (the virtual size), C(digests) (not in check mode), C(chain)
          (layer paths relative to the case folder, top first), C(formats), C(open) (C(qemu_json), a qemu
          C(json:) descriptor with each layer's backing given explicitly, and C(command), the shell command that
          writes the disk as a raw image when run in the case folder).
      type: dict
      sample:
        size: 10737418240
        digests:
          sha256: 2a5d218d2c7a34000fd2a95fbdd2604cd5c4ac1427be46630e261aeb18b32d61
        chain: [vm1/disks/vda-01-overlay.qcow2, vm1/disks/vda-00-vda.qcow2]
        formats: [qcow2, qcow2]
        open:
          qemu_json: 'json:{"driver":"qcow2","file":{"driver":"file","filename":"vm1/disks/vda-01-overlay.qcow2"},...}'
          command: "qemu-img convert -O raw 'json:{...}' vm1-vda.raw"
    layers:
      description: Each layer's facts as read from its header (format, virtual size, version, cluster size, the
        backing file its header names, compression type...).
      type: list
      elements: dict
    data_bytes:
      description: Bytes read from the layers (the rest of the disk was zeros, hashed without a read).
      type: int
      returned: when the digests were computed
    e01:
      description:
        - The E01 artifact for M(dfir.vmcollect.evidence_manifest) - C(kind) (V(e01)), C(path) (absolute, of the
          C(.E01)), C(segments) (relative to the case folder), C(of) (the top layer, relative), C(media_size),
          C(media_digests) (C(md5) and C(sha1) as ewf stored them, C(sha256) computed while streaming),
          C(case_fields), C(tool), C(format), C(compression), C(written) (false when the E01 was there already),
          C(size), C(digests) and C(dest_digests) of the C(.E01) file, and C(files) (each segment file's C(path)
          relative to the case folder, C(size) and C(digests)).
        - In check mode only C(path), C(exists) and C(case_fields). Null without O(e01).
      type: dict
    flat:
      description: The raw image - C(path), C(size), C(digests), C(written); in check mode C(path) and C(exists).
        Null without O(flatten).
      type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError, fail_module
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.imaging import image_disks


def argument_spec():
    return dict(
        case_dir=dict(type="path", required=True),
        disks=dict(type="list", elements="dict", required=True, options=dict(
            target=dict(type="str", required=True),
            vm=dict(type="str", required=True),
            layers=dict(type="list", elements="dict", required=True, options=dict(
                path=dict(type="str", required=True),
                format=dict(type="str", required=True, choices=["qcow2", "raw", "vmdk-sparse"]),
                descriptor=dict(type="str"),
            )),
        )),
        algorithms=dict(type="list", elements="str", default=["sha256"]),
        e01=dict(type="bool", default=False),
        e01_dir=dict(type="path"),
        e01_fields=dict(type="dict", default={}, options=dict(
            case_number=dict(type="str"),
            evidence_number=dict(type="str"),
            examiner=dict(type="str"),
            description=dict(type="str"),
            notes=dict(type="str"),
        )),
        e01_compression=dict(type="str", default="fast", choices=["none", "empty-block", "fast", "best"]),
        flatten=dict(type="bool", default=False),
    )


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    p = module.params
    try:
        result = image_disks(p["case_dir"], p["disks"], algorithms=p["algorithms"], e01=p["e01"],
                             e01_dir=p["e01_dir"], e01_fields=p["e01_fields"], e01_compression=p["e01_compression"],
                             flatten=p["flatten"], check_mode=module.check_mode)
    except VmcollectError as exc:
        fail_module(module, exc, changed=False)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
