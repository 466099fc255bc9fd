# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""VMware text descriptors (``<disk>.vmdk``): what the copies on ESXi (vmkfstools_clone) and the readers of a copied
disk's levels (diskimage) both need to know of one - createType, CID, parentCID, parentFileNameHint, the extents."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import EvidenceSourceError

_EXTENT = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z0-9_]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?\s*$')
_KEY_VALUE = re.compile(r'^([A-Za-z0-9_.]+)\s*=\s*"?(.*?)"?\s*$')


def parse_descriptor(data, name):
    """A text VMDK descriptor (bytes) as dict(create_type, cid, parent_cid, parent_hint, extents [{access, sectors,
    type, file}], ddb {key: value}, virtual_bytes). Anything else is refused with a sentence naming ``name``."""
    if data[:4] in (b"KDMV", b"COWD"):
        raise EvidenceSourceError("%s is a binary sparse disk (a hosted VMware format), not a VMFS descriptor; clone "
                                  "its descriptor on a VMFS or NFS datastore." % name, failed_path=name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EvidenceSourceError("%s is not a text VMDK descriptor (not UTF-8); give the descriptor (<disk>.vmdk), "
                                  "not a data file." % name, failed_path=name)
    values, ddb, extents = {}, {}, []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = _EXTENT.match(s)
        if m:
            extents.append({"access": m.group(1), "sectors": int(m.group(2)), "type": m.group(3).upper(),
                            "file": m.group(4), "offset": int(m.group(5)) if m.group(5) else None})
            continue
        m = _KEY_VALUE.match(s)
        if m:
            (ddb if m.group(1).startswith("ddb.") else values)[m.group(1)] = m.group(2)
    if "createType" not in values or not extents:
        raise EvidenceSourceError("%s is not a VMDK descriptor (no createType or no extent line); give the disk's "
                                  "descriptor (<disk>.vmdk), not a data file (<disk>-flat.vmdk)." % name,
                                  failed_path=name)
    return {"create_type": values["createType"], "cid": values.get("CID"), "parent_cid": values.get("parentCID"),
            "parent_hint": values.get("parentFileNameHint"), "extents": extents, "ddb": ddb,
            "virtual_bytes": sum(e["sectors"] for e in extents) * 512}
