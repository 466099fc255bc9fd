# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Readers of what an ESXi host's shell prints (the SSH engine of the ESXi provider, issue 11).

Each function takes the text a command printed and returns plain data, or raises ``EsxiOutputError`` with a sentence
that names the command and quotes the line it could not read. The formats follow real captures (collected in the
project's shared notes on the ESXi shell): ``vim-cmd vmsvc/getallvms`` (columns not of fixed width; names and
datastores with spaces and brackets), ``vim-cmd vmsvc/snapshot.get`` (a tree drawn with ``--`` per level; VMware's
own spelling "Desciption"; dates ``M/D/YYYY H:M:S`` without zero padding), the fault block ``vim-cmd`` prints on a
failure, ``vmkfstools -i`` and ``vmkfstools -C``, ``partedUtil getptbl``, and esxcli's ``--formatter=csv``. Where a
detail was never confirmed by a capture, the reader accepts both forms (said at each).

Nothing here runs a command: the SSH client does that (``_ssh``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import csv
import datetime
import io
import re

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError

VMFS_GUID = "AA31E02A400F11DB9590000C2911D1B8"


class EsxiOutputError(VmcollectError):
    """A command's output is not in the form this version reads."""


def _refuse(command, line, why):
    raise EsxiOutputError("The output of `%s` could not be read: %s (line %r). Nothing was changed on the strength of "
                          "it." % (command, why, line[:200]), command=command, line=line[:200])


# -- vim-cmd vmsvc/getallvms ----------------------------------------------------------------------------------------

_GETALLVMS_TAIL = re.compile(r"^(?P<vmid>\d+)\s+(?P<middle>.*\.vmx)\s+(?P<guest>\S+)\s+(?P<version>vmx-\d+)(?:\s+(?P<annotation>.*))?$")
_GETALLVMS_HEAD = re.compile(r"^Vmid\s+Name\s+File\s+Guest OS\s+Version(\s+Annotation)?\s*$")


def _split_name_and_vmx(middle, datastores):
    """(name, '[datastore] path.vmx') of 'name   [datastore] path.vmx'. With the host's datastore names, the
    rightmost ' [<a known datastore>] ' starts the file; without them, the first run of two or more spaces before a
    '[' (the column gap; a single space is part of a name)."""
    best = None
    for ds in datastores or ():
        token = " [%s] " % ds
        at = middle.rfind(token)
        if at > 0 and (best is None or at > best):
            best = at
    if best is not None:
        return middle[:best].rstrip(), middle[best + 1:]
    m = re.search(r"^(?P<name>.*?\S)\s{2,}(?P<vmx>\[.*)$", middle)
    if m:
        return m.group("name"), m.group("vmx")
    m = re.search(r"^(?P<name>.*?\S)\s(?P<vmx>\[[^\]]*\] .*)$", middle)
    if m:
        return m.group("name"), m.group("vmx")
    return None


def getallvms(text, datastores=()):
    """[{vmid, name, vmx, datastore, path, guest_os, version, annotation}] of `vim-cmd vmsvc/getallvms`.

    ``datastores``: the host's datastore names, when known, to split a name from its file exactly (a VM name may hold
    brackets and spaces). A line after a VM that does not start with a number continues its annotation (multi-line
    annotations: unconfirmed; they are appended).
    """
    vms = []
    lines = [line.rstrip("\r") for line in text.splitlines()]
    for line in lines:
        if not line.strip() or _GETALLVMS_HEAD.match(line):
            continue
        m = _GETALLVMS_TAIL.match(line.strip())
        if not m:
            if vms and not re.match(r"^\d+\s", line.strip()):
                vms[-1]["annotation"] = (vms[-1]["annotation"] + "\n" + line.strip()).strip()
                continue
            _refuse("vim-cmd vmsvc/getallvms", line, "no '<vmid> <name> [datastore] <path>.vmx <guest> vmx-NN' in it")
        split = _split_name_and_vmx(m.group("middle"), datastores)
        if split is None:
            _refuse("vim-cmd vmsvc/getallvms", line, "its name and '[datastore] path.vmx' file cannot be told apart")
        name, vmx = split
        ds, path = _datastore_path(vmx, datastores)
        vms.append({"vmid": int(m.group("vmid")), "name": name, "vmx": vmx, "datastore": ds, "path": path,
                    "guest_os": m.group("guest"), "version": m.group("version"),
                    "annotation": (m.group("annotation") or "").strip()})
    return vms


def _datastore_path(value, datastores=()):
    for ds in sorted(datastores or (), key=len, reverse=True):
        if value.startswith("[%s] " % ds):
            return ds, value[len(ds) + 3:]
    m = re.match(r"^\[(?P<ds>[^\]]*)\] (?P<path>.*)$", value)
    return (m.group("ds"), m.group("path")) if m else (None, value)


# -- vim-cmd faults -------------------------------------------------------------------------------------------------

_FAULT = re.compile(r"\((?P<type>vim\.fault\.\w+|vmodl\.fault\.\w+|vim\.\w+(?:\.\w+)*)\)\s*\{(?P<body>.*?)\}", re.S)


def vim_fault(text):
    """(fault type, message) of the fault block vim-cmd prints on a failure, or None when there is none."""
    m = _FAULT.search(text or "")
    if not m:
        return None
    msg = re.search(r'msg\s*=\s*"(?P<msg>(?:[^"\\]|\\.)*)"', m.group("body"))
    return m.group("type"), (msg.group("msg").replace('\\"', '"') if msg else "")


# -- vim-cmd vmsvc/snapshot.get -------------------------------------------------------------------------------------

_SNAP_FIELD = re.compile(r"^(?P<dashes>-*)Snapshot (?P<key>Name|Id|Desc(?:i|ri)ption|Created On|State)\s*:\s?(?P<value>.*)$")
_SNAP_NODE = re.compile(r"^(?P<dashes>-*)\|-(?P<label>ROOT|CHILD)\s*$")
_SNAP_KEYS = {"Name": "name", "Id": "id", "Desciption": "description", "Description": "description",
              "Created On": "created", "State": "state"}


def snapshot_created(value):
    """'12/1/2014 14:39:4' (M/D/YYYY H:M:S, the host's clock; ESXi keeps UTC) -> '2014-12-01T14:39:04Z', or None."""
    m = re.match(r"^\s*(\d{1,2})/(\d{1,2})/(\d{4})\s+(\d{1,2}):(\d{1,2}):(\d{1,2})\s*$", value or "")
    if not m:
        return None
    mo, d, y, h, mi, s = (int(x) for x in m.groups())
    return datetime.datetime(y, mo, d, h, mi, s).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot_get(text):
    """[{name, id, description, created, created_text, state, depth, parent_id}] of `vim-cmd vmsvc/snapshot.get`, in
    the order printed (a parent before its children). No snapshot: [] (the first line only)."""
    snaps, parents = [], {}
    lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Get Snapshot"):
        _refuse("vim-cmd vmsvc/snapshot.get", lines[0] if lines else "", "it does not start with 'Get Snapshot:'")
    current = None
    for line in lines[1:]:
        node = _SNAP_NODE.match(line)
        if node:
            depth = len(node.group("dashes")) // 2
            current = {"name": None, "id": None, "description": "", "created": None, "created_text": None,
                       "state": None, "depth": depth, "parent_id": parents.get(depth - 1)}
            snaps.append(current)
            continue
        field = _SNAP_FIELD.match(line)
        if not field or current is None:
            _refuse("vim-cmd vmsvc/snapshot.get", line, "not a '|-ROOT', '|-CHILD' or 'Snapshot <field> : value' line")
        key = _SNAP_KEYS[field.group("key")]
        value = field.group("value").strip()
        if key == "id":
            current["id"] = int(value) if value.isdigit() else value
            parents[current["depth"]] = current["id"]
        elif key == "created":
            current["created_text"] = value
            current["created"] = snapshot_created(value)
        else:
            current[key] = value
    return snaps


# -- vmkfstools -----------------------------------------------------------------------------------------------------

_CLONE_ERRORS = ("Failed to clone disk", "The file already exists", "Failed to lock the file")


def vmkfstools_clone(text, rc=0):
    """{format, source, percent, done, error} of `vmkfstools -i <src> -d thin <dst>` (progress lines redrawn with a
    carriage return, unconfirmed: both accepted)."""
    out = {"format": None, "source": None, "percent": None, "done": False, "error": None}
    for line in re.split(r"[\r\n]+", text or ""):
        line = line.strip()
        m = re.match(r"^Destination disk format: (.*)$", line)
        if m:
            out["format"] = m.group(1).strip()
        m = re.match(r"^Cloning disk '(.*)'\.\.\.$", line)
        if m:
            out["source"] = m.group(1)
        for pct in re.findall(r"Clone: (\d{1,3})% done\.", line):
            out["percent"] = int(pct)
        if any(e in line for e in _CLONE_ERRORS) and out["error"] is None:
            out["error"] = line
    out["done"] = rc == 0 and out["percent"] == 100 and out["error"] is None
    return out


def vmkfstools_create(text):
    """The new volume's VMFS UUID from `vmkfstools -C vmfs6 -S LABEL <dev>:1`, or None."""
    m = re.search(r"Successfully created new volume:\s*([0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{12})", text or "")
    return m.group(1) if m else None


# -- partedUtil -----------------------------------------------------------------------------------------------------

def partedutil_getptbl(text):
    """{label, cylinders, heads, sectors_per_track, total_sectors, partitions: [{number, start, end, guid, type,
    attribute}]} of `partedUtil getptbl <device>` (a GPT lists a type GUID and name; an MBR a type number)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) < 2 or lines[0] not in ("gpt", "msdos", "unknown"):
        _refuse("partedUtil getptbl", lines[0] if lines else "", "no partition table kind (gpt, msdos, unknown) first")
    geo = lines[1].split()
    if len(geo) != 4 or not all(g.isdigit() for g in geo):
        _refuse("partedUtil getptbl", lines[1], "no geometry 'cylinders heads sectors total'")
    parts = []
    for line in lines[2:]:
        f = line.split()
        if lines[0] == "gpt" and len(f) == 6 and f[0].isdigit():
            parts.append({"number": int(f[0]), "start": int(f[1]), "end": int(f[2]), "guid": f[3].upper(),
                          "type": f[4], "attribute": int(f[5])})
        elif lines[0] == "msdos" and len(f) == 5 and f[0].isdigit():
            parts.append({"number": int(f[0]), "start": int(f[1]), "end": int(f[2]), "guid": None, "type": f[3],
                          "attribute": int(f[4])})
        else:
            _refuse("partedUtil getptbl", line, "not a partition line of a %s table" % lines[0])
    c, h, s, total = (int(g) for g in geo)
    return {"label": lines[0], "cylinders": c, "heads": h, "sectors_per_track": s, "total_sectors": total,
            "partitions": parts}


def vmfs_partition_spec(end_sector, start_sector=2048):
    """The argument of `partedUtil setptbl <dev> gpt "<it>"`: one VMFS partition from start_sector to end_sector."""
    return "1 %d %d %s 0" % (start_sector, end_sector, VMFS_GUID)


# -- esxcli --formatter=csv -----------------------------------------------------------------------------------------

def esxcli_csv(text, command="esxcli"):
    """[{column: value}] of an esxcli command run with --formatter=csv (a header row of property names; a trailing
    empty column, which the host adds, is dropped). Empty output: []."""
    rows = list(csv.reader(io.StringIO(text or "")))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return []
    header = rows[0]
    while header and not header[-1].strip():
        header = header[:-1]
    out = []
    for row in rows[1:]:
        if len(row) < len(header) or any(c.strip() for c in row[len(header):]):
            _refuse(command, ",".join(row), "it has %d fields, the header %d" % (len(row), len(header)))
        out.append(dict(zip(header, row[:len(header)])))
    return out


def esxcli_bool(value):
    """esxcli's true/false (any case) -> bool; anything else is refused."""
    v = str(value).strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise EsxiOutputError("%r is not a boolean esxcli prints (true or false)." % (value,))
