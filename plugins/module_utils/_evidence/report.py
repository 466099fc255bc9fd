# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The case report a person reads: report.html (self-contained, prints on A4) and its plain-text twin report.txt.

Both are rendered from the case's records only (manifest.json, custody.jsonl, the collector's verification
records and what the signing step says), so the same records always give the same bytes: the report's time is
the last custody record's (or the manifest's ``updated``), never the time it was rendered.

Every value from the records is shown as text: HTML-escaped in the HTML, and in both outputs control characters
and bidirectional-text controls are written as escapes (``\\n``, ``\\u202e``), so a value cannot forge a line,
a table row or the reading order of the report.

The custody log's hash chain is checked here, on the raw lines: each record's ``prev`` must be the sha256 of
the line before it (newline included; 64 zeros for the first) and its ``seq`` its line number. A broken link
is shown in red on the record where it breaks, never left out.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import textwrap

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError, EvidenceSourceError, InvalidInputError, ManifestError)
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.manifest import load as load_manifest
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.record import record_line
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import write_atomic

CUSTODY_FORMAT = "dfir.vmcollect/custody/1"
ZERO = "0" * 64
WIDTH = 100
OK, BAD, WARN, INFO = "ok", "bad", "warn", "info"
_BIDI = set(u"\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")
_MARK = {OK: "[ OK ]", BAD: "[FAIL]", WARN: "[WARN]", INFO: "[INFO]"}


# -- values -----------------------------------------------------------------------------------------------------
def clean(value):
    """``value`` as one line of text: control and bidirectional-text characters written as escapes."""
    if value is None:
        return ""
    if not isinstance(value, str):
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True, ensure_ascii=False)
        elif isinstance(value, bytes):
            value = value.decode("utf-8", "backslashreplace")
        else:
            value = str(value)
    out = []
    for ch in value:
        code = ord(ch)
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or 0x7f <= code < 0xa0 or ch in _BIDI or 0xd800 <= code < 0xe000:
            out.append("\\x%02x" % code if code < 0x100 else "\\u%04x" % code)
        else:
            out.append(ch)
    return "".join(out)


def human(size):
    """``size`` bytes in binary units (``1.8 MiB``); '' for what is not a number."""
    if isinstance(size, bool) or not isinstance(size, int):
        return ""
    if size < 1024:
        return "%d B" % size
    value = float(size)
    unit = ""
    for unit in _UNITS:
        value /= 1024.0
        if value < 1024:
            break
    text = "%.1f" % value
    return "%s %s" % (text[:-2] if text.endswith(".0") else text, unit)


def size_text(size):
    if isinstance(size, bool) or not isinstance(size, int):
        return clean(size) if size is not None else "not recorded"
    return "{:,} bytes ({})".format(size, human(size))


def _digests(value):
    """A digests dict of lower-case hex strings (anything else is dropped)."""
    if not isinstance(value, dict):
        return {}
    return dict((str(k).lower(), str(v).lower()) for k, v in value.items() if isinstance(v, str))


def compare(expected, found):
    """OK when every algorithm both have agrees (and there is one), BAD when one differs, WARN when none is shared."""
    common = sorted(set(expected) & set(found))
    if not common:
        return WARN
    return OK if all(expected[a] == found[a] for a in common) else BAD


# -- custody log --------------------------------------------------------------------------------------------------
def _split_lines(data):
    """Raw lines (bytes, each with its newline) and whether the last one lacks its newline."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, bytes):
        parts = data.split(b"\n")
        lines = [p + b"\n" for p in parts[:-1]]
        torn = bool(parts[-1])
        if torn:
            lines.append(parts[-1])
        return lines, torn
    lines = []
    for line in data:
        if isinstance(line, str):
            line = line.encode("utf-8")
        if not isinstance(line, bytes):
            raise InvalidInputError("A custody line must be text or bytes, not %s." % type(line).__name__)
        lines.append(line if line.endswith(b"\n") else line + b"\n")  # a line given without its newline
    return lines, False


def check_chain(data, case_id=None):
    """Check the hash chain of a custody log given as its raw bytes, or as a list of its lines.

    Returns a list with one entry per line: dict(line, record (a dict, or None for a line that is not a JSON
    object), problems (sentences; empty when this line's link is intact)).
    """
    lines, torn = _split_lines(data)
    entries = []
    prev_hash = ZERO
    for number, raw in enumerate(lines, 1):
        problems = []
        record = None
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            problems.append("line %d is not JSON" % number)
        if record is not None and not isinstance(record, dict):
            record = None
            problems.append("line %d is not a JSON object" % number)
        if record is not None:
            problems.extend(_link_problems(record, number, prev_hash, case_id))
        if torn and number == len(lines):
            problems.append("the last line is incomplete (the file does not end with a newline)")
        entries.append({"line": number, "record": record, "problems": problems})
        prev_hash = hashlib.sha256(raw).hexdigest()
    return entries


def _link_problems(record, number, prev_hash, case_id):
    problems = []
    if record.get("format") != CUSTODY_FORMAT:
        problems.append("format is %s, not %s" % (clean(record.get("format")), CUSTODY_FORMAT))
    if record.get("seq") != number:
        problems.append("seq is %s on line %d" % (clean(record.get("seq")), number))
    if record.get("prev") != prev_hash:
        if number == 1:
            problems.append("prev of the first record is not 64 zeros")
        else:
            problems.append("prev is not the sha256 of line %d: a record before it was changed, removed or "
                            "reordered" % (number - 1))
    if case_id is not None and record.get("case_id") != case_id:
        problems.append("the record is of case %s, not %s" % (clean(record.get("case_id")), clean(case_id)))
    return problems


def _custody_entries(custody, case_id, chain_intact):
    """(entries, how the chain was checked) from dicts, raw bytes or raw lines."""
    if custody is None:
        return [], "no custody log"
    if isinstance(custody, (bytes, str)) or (custody and all(isinstance(c, (bytes, str)) for c in custody)):
        return check_chain(custody, case_id), "checked on the raw lines of custody.jsonl"
    records = list(custody)
    for rec in records:
        if not isinstance(rec, dict):
            raise InvalidInputError("Each custody record must be a dictionary (or give the raw lines), not %s."
                                    % type(rec).__name__)
    if chain_intact is not None:
        problems = [] if chain_intact else ["the caller found the hash chain broken"]
        return ([{"line": n, "record": r, "problems": list(problems)} for n, r in enumerate(records, 1)],
                "checked by the caller: %s" % ("intact" if chain_intact else "BROKEN"))
    lines = []
    for rec in records:
        try:
            lines.append(record_line(rec))
        except InvalidInputError:
            lines.append(json.dumps(rec, sort_keys=True, default=str).encode("utf-8") + b"\n")
    return check_chain(lines, case_id), "checked on the records written again in the custody line form"


# -- what the records say ------------------------------------------------------------------------------------------
def _verifications(records):
    """(per-path list of (record, digests)), the records in order, as dicts."""
    by_path = {}
    rows = []
    for rec in records or []:
        if not isinstance(rec, dict):
            raise InvalidInputError("Each verification record must be a dictionary, not %s." % type(rec).__name__)
        files = rec.get("files") or []
        digests = rec.get("digests") or []
        rows.append(rec)
        for i, path in enumerate(files):
            found = _digests(digests[i]) if i < len(digests) else {}
            by_path.setdefault(str(path), []).append((rec, found))
    rows.sort(key=lambda r: (str(r.get("recorded_at") or ""), str(r.get("volume") or "")))
    for found in by_path.values():
        found.sort(key=lambda item: str(item[0].get("recorded_at") or ""))
    return by_path, rows


def _stage(expected, found, missing_text):
    if not found:
        return WARN, missing_text
    state = compare(expected, found)
    if state == OK:
        return OK, "matches the source"
    if state == BAD:
        return BAD, "DIFFERS from the source"
    return WARN, "no algorithm in common with the source"


def _artifact(path, art, verified_by_path, artifacts):
    """The facts of one artifact: fields, digest rows, checks."""
    kind = clean(art.get("kind") or "artifact")
    source = _digests(art.get("digests"))
    dest = _digests(art.get("dest_digests"))
    rows = []
    for algo in sorted(source):
        rows.append(("at the source", algo, source[algo], INFO, "taken while reading the source"))
    checks = {}
    if source or dest or kind != "e01":
        checks["source"] = OK if source else WARN
    if not source and kind != "e01":
        rows.append(("at the source", "", "", WARN, "no digest taken at the source"))
    if source or dest:
        state, note = _stage(source, dest, "not recorded")
        checks["arrival"] = state
        for algo in sorted(dest):
            rows.append(("on arrival", algo, dest[algo], state, note))
        if not dest:
            rows.append(("on arrival", "", "", WARN, "no digest recorded on arrival"))
        found = verified_by_path.get(path) or []
        states = []
        for rec, digests in found:
            state, note = _stage(source or dest, digests, "no digest in the record")
            if str(rec.get("result") or "verified") != "verified" and state == OK:
                state, note = BAD, "the record says %s" % clean(rec.get("result"))
            where = "on collector %s" % clean(rec.get("verified_on") or "?")
            note = "%s (recorded %s)" % (note, clean(rec.get("recorded_at") or "at an unknown time"))
            for algo in sorted(digests) or [""]:
                rows.append((where, algo, digests.get(algo, ""), state, note))
            states.append(state)
        if not found:
            rows.append(("on a collector", "", "", WARN, "not verified on a collector"))
            checks["collector"] = WARN
        else:
            checks["collector"] = BAD if BAD in states else (OK if all(s == OK for s in states) else WARN)
    fields = [("Size", size_text(art.get("size")))]
    if art.get("data_bytes") is not None:
        fields.append(("Data (not holes)", size_text(art.get("data_bytes"))))
    for label, key in (("Format", "format"), ("Method", "method"), ("Disk", "target"), ("Frozen at", "frozen_at"),
                       ("Started", "started"), ("Finished", "finished"), ("Acquired by", "acquired_by")):
        if art.get(key) not in (None, ""):
            fields.append((label, clean(art.get(key))))
    src = art.get("source") if isinstance(art.get("source"), dict) else {}
    if src:
        where = clean(src.get("host") or "?")
        if src.get("path"):
            where += ": " + clean(src.get("path"))
        fields.append(("Source", where))
    if "verified" in art:
        fields.append(("Verified on the host", "yes" if art.get("verified") is True else clean(art.get("verified"))))
    item = {"path": clean(path), "kind": kind, "fields": fields, "digests": rows, "checks": checks,
            "command": None, "extra": [], "extra_title": None, "extra_rows": []}
    if kind == "memory":
        item["extra_title"] = "RAM"
        item["extra"] = _memory(art)
    elif isinstance(art.get("logical"), dict):
        item["extra_title"] = "Logical (guest-visible) disk"
        item["extra"], item["extra_rows"], item["command"] = _logical(art["logical"])
    if kind == "e01":
        item["extra_title"] = "E01 image"
        item["extra"], item["extra_rows"], checks["e01"] = _e01(art, artifacts)
    return item


def _memory(art):
    fields = [("Method", clean(art.get("method") or "not recorded")),
              ("Format", clean(art.get("format") or "not recorded"))]
    pause = art.get("pause_ms")
    if isinstance(pause, (int, float)) and not isinstance(pause, bool):
        fields.append(("Guest pause", "%s ms" % ("%g" % pause)))
    else:
        fields.append(("Guest pause", "not recorded" if pause is None else clean(pause)))
    if art.get("pause_note"):
        fields.append(("Pause note", clean(art.get("pause_note"))))
    smeared = art.get("smeared")
    if smeared is True:
        fields.append(("Smeared", "YES: the guest ran while its RAM was read; pages are from different moments"))
    elif smeared is False:
        fields.append(("Smeared", "no: one consistent moment"))
    else:
        fields.append(("Smeared", "not recorded"))
    layout = art.get("layout") if isinstance(art.get("layout"), dict) else None
    if layout:
        ranges = layout.get("ranges") if isinstance(layout.get("ranges"), list) else []
        tops = []
        for rng in ranges:
            try:
                tops.append(int(str(rng.get("gpa_end")), 0))
            except (AttributeError, TypeError, ValueError):
                continue
        text = "%d range(s) of guest-physical memory" % len(ranges)
        if tops:
            text += ", top address 0x%x" % max(tops)
        fields.append(("Layout", text))
        fields.append(("Image size", size_text(layout.get("image_size"))))
        blocks = layout.get("blocks") if isinstance(layout.get("blocks"), dict) else {}
        if blocks:
            fields.append(("RAM blocks", ", ".join("%s %s" % (clean(k), human(v) or clean(v))
                                                   for k, v in sorted(blocks.items()))))
        unplaced = layout.get("unplaced_bytes") if isinstance(layout.get("unplaced_bytes"), dict) else {}
        if unplaced:
            fields.append(("Not placed", ", ".join("%s %s" % (clean(k), size_text(v))
                                                   for k, v in sorted(unplaced.items()))))
    else:
        fields.append(("Layout", "not recorded"))
    return fields


def _logical(logical):
    fields = [("Virtual size", size_text(logical.get("size")))]
    chain = logical.get("chain") if isinstance(logical.get("chain"), list) else []
    formats = logical.get("formats") if isinstance(logical.get("formats"), list) else []
    if chain:
        fields.append(("Chain (top first)", " <- ".join(clean(c) for c in chain)))
    if formats:
        fields.append(("Formats", ", ".join(clean(f) for f in formats)))
    rows = [("logical", algo, digest, INFO, "of the disk the guest sees")
            for algo, digest in sorted(_digests(logical.get("digests")).items())]
    opened = logical.get("open") if isinstance(logical.get("open"), dict) else {}
    command = clean(opened.get("command")) if opened.get("command") else None
    return fields, rows, command


def _e01(art, artifacts):
    fields = []
    segments = art.get("segments") if isinstance(art.get("segments"), list) else []
    if segments:
        fields.append(("Further segments", ", ".join(clean(s) for s in segments)))
    if art.get("of"):
        fields.append(("Image of", clean(art.get("of"))))
    fields.append(("Media size", size_text(art.get("media_size"))))
    if art.get("tool"):
        fields.append(("Tool", clean(art.get("tool"))))
    if art.get("made_on"):
        fields.append(("Written on", clean(art.get("made_on"))))
    if art.get("recorded_in"):
        fields.append(("Recorded in", clean(art.get("recorded_in"))))
    case_fields = art.get("case_fields") if isinstance(art.get("case_fields"), dict) else {}
    for key in ("case_number", "evidence_number", "examiner", "description", "notes"):
        if case_fields.get(key) not in (None, ""):
            fields.append(("E01 " + key.replace("_", " "), clean(case_fields.get(key))))
    media = _digests(art.get("media_digests"))
    disk = artifacts.get(art.get("of")) if isinstance(art.get("of"), str) else None
    logical = _digests(disk.get("logical", {}).get("digests")) if isinstance(disk, dict) and isinstance(
        disk.get("logical"), dict) else {}
    state = compare(logical, media) if logical and media else WARN
    note = {OK: "matches the logical digest of %s" % clean(art.get("of")),
            BAD: "DIFFERS from the logical digest of %s" % clean(art.get("of")),
            WARN: "no logical digest of the disk to compare with"}[state]
    rows = [("E01 media", algo, digest, state, note) for algo, digest in sorted(media.items())]
    return fields, rows, state


def _journal(manifest, custody):
    """Host changes (journal records of the manifest's events and of teardown custody records) and their undo."""
    records = [r for r in manifest.get("events") or [] if isinstance(r, dict)]
    teardown_undone = []
    kept = []
    for rec in custody:
        if rec.get("event") != "teardown" or not isinstance(rec.get("details"), dict):
            continue
        details = rec["details"]
        records.extend(r for r in details.get("records") or [] if isinstance(r, dict))
        teardown_undone.extend((rec, u) for u in details.get("undone") or [] if isinstance(u, dict))
        kept.extend(str(k) for k in details.get("kept") or [])
    changes = []
    seen = set()
    undone = {}
    applied = set()
    for rec in records:
        kind = rec.get("kind")
        if kind == "change" and rec.get("id") not in seen:
            seen.add(rec.get("id"))
            changes.append(rec)
        elif kind == "undone" and rec.get("ref") not in undone:
            undone[rec.get("ref")] = rec
        elif kind == "applied":
            applied.add(rec.get("ref"))
    changes.sort(key=lambda r: (str(r.get("time") or ""), str(r.get("host") or ""), str(r.get("seq") or "")))
    rows = []
    for change in changes:
        row = {"seq": clean(change.get("seq")), "time": clean(change.get("time")), "host": clean(change.get("host")),
               "module": clean(change.get("module")), "action": clean(change.get("action")),
               "description": clean(change.get("description")),
               "applied": change.get("id") in applied}
        done = undone.get(change.get("id"))
        if done is None:
            for i, (cust, item) in enumerate(teardown_undone):
                if item.get("id") == change.get("id") or (
                        item.get("description") == change.get("description")
                        and item.get("action", change.get("action")) == change.get("action")):
                    done = {"result": item.get("result"), "time": cust.get("recorded_at"),
                            "by": "teardown (custody record %s)" % clean(cust.get("seq"))}
                    del teardown_undone[i]
                    break
        if done is not None:
            row["state"], row["undo"] = OK, clean(done.get("result") or "undone")
            row["undo_time"] = clean(done.get("time"))
            row["undo_by"] = clean(done.get("by") or "")
        elif change.get("description") in kept:
            row["state"], row["undo"], row["undo_time"], row["undo_by"] = WARN, "kept on purpose by teardown", "", ""
        else:
            row["state"], row["undo"], row["undo_time"], row["undo_by"] = BAD, "STILL IN PLACE", "", ""
        rows.append(row)
    return rows


def _controllers(custody):
    runs = []
    index = {}
    for rec in custody:
        ctl = rec.get("controller") if isinstance(rec.get("controller"), dict) else None
        if not ctl:
            continue
        key = json.dumps(ctl, sort_keys=True, default=str)
        if key not in index:
            index[key] = len(runs)
            runs.append({"controller": ctl, "first": rec, "last": rec, "count": 0})
        run = runs[index[key]]
        run["last"] = rec
        run["count"] += 1
    result = []
    for run in runs:
        ctl = run["controller"]
        fields = [("User", clean(ctl.get("user"))), ("Controller host", clean(ctl.get("host"))),
                  ("ansible-core", clean(ctl.get("ansible_core"))),
                  ("Collection version", clean(ctl.get("collection_version"))), ("Run id", clean(ctl.get("run_id")))]
        for label, key in (("AWX job id", "awx_job_id"), ("AWX user", "awx_user_name"),
                           ("AWX job template", "awx_job_template_name")):
            if ctl.get(key) not in (None, ""):
                fields.append((label, clean(ctl.get(key))))
        extra = ctl.get("extra_vars")
        if isinstance(extra, dict) and extra:
            pairs = ["%s=%s" % (clean(k), clean(json.dumps(v, sort_keys=True, default=str)))
                     for k, v in sorted(extra.items())]
            fields.append(("Extra vars", "; ".join(pairs)))
        elif extra not in (None, {}, ""):
            fields.append(("Extra vars", clean(extra)))
        else:
            fields.append(("Extra vars", "none"))
        fields.append(("Records", "%d, %s to %s" % (run["count"], clean(run["first"].get("recorded_at")),
                                                    clean(run["last"].get("recorded_at")))))
        result.append(fields)
    return result


def _hosts(manifest, custody, verifications, changes):
    roles = {}

    def add(host, role):
        host = clean(host)
        if host:
            roles.setdefault(host, [])
            if role not in roles[host]:
                roles[host].append(role)

    for rec in custody:
        ctl = rec.get("controller") if isinstance(rec.get("controller"), dict) else {}
        if ctl.get("host"):
            add(ctl.get("host"), "Ansible controller")
    sources = {}
    for art in (manifest.get("artifacts") or {}).values():
        src = art.get("source") if isinstance(art, dict) and isinstance(art.get("source"), dict) else {}
        if src.get("host"):
            sources[src["host"]] = sources.get(src["host"], 0) + 1
    for host, count in sorted(sources.items()):
        add(host, "source of %d artifact(s)" % count)
    events = {}
    for rec in custody:
        if rec.get("host"):
            events.setdefault(rec["host"], [])
            if rec.get("event") not in events[rec["host"]]:
                events[rec["host"]].append(rec.get("event"))
    for host, names in sorted(events.items()):
        add(host, "custody records: %s" % ", ".join(clean(n) for n in names))
    counts = {}
    for row in changes:
        counts.setdefault(row["host"], [0, 0])
        counts[row["host"]][0] += 1
        counts[row["host"]][1] += 1 if row["state"] == OK else 0
    for host, (total, done) in sorted(counts.items()):
        add(host, "%d host change(s), %d undone" % (total, done))
    for rec in verifications:
        add(rec.get("verified_on"), "collector: verified %s" % clean(rec.get("volume") or "a volume"))
    case = manifest.get("case") or {}
    if case.get("updated_on_host"):
        add(case.get("updated_on_host"), "last wrote the manifest")
    return sorted(roles.items())


def collect(manifest, custody_records, verification_records, signing, chain_intact=None):
    """Everything the report shows, as plain data (both renderers read this)."""
    if not isinstance(manifest, dict):
        raise InvalidInputError("The manifest must be a dictionary (manifest.json), not %s." % type(manifest).__name__)
    case = manifest.get("case") if isinstance(manifest.get("case"), dict) else {}
    case_id = case.get("case_id")
    entries, chain_how = _custody_entries(custody_records, case_id, chain_intact)
    custody = [e["record"] for e in entries if e["record"] is not None]
    verified_by_path, verifications = _verifications(verification_records)
    artifacts = dict(manifest.get("artifacts")) if isinstance(manifest.get("artifacts"), dict) else {}
    # an artifact made after the manifest was sealed (a collector's E01 of a disk on a read-only volume) is described
    # by its custody record only
    for rec in custody:
        details = rec.get("details")
        if (rec.get("event") == "e01" and isinstance(details, dict) and isinstance(details.get("path"), str)
                and details["path"] not in artifacts):
            artifacts[details["path"]] = dict(details, recorded_in="custody record %s" % clean(rec.get("seq")))

    vms = {}
    for path in sorted(artifacts):
        art = artifacts[path] if isinstance(artifacts[path], dict) else {}
        owner = art
        if not art.get("vm") and isinstance(art.get("of"), str) and isinstance(artifacts.get(art["of"]), dict):
            owner = artifacts[art["of"]]
        key = (clean(owner.get("vm")), clean(owner.get("vm_uuid")))
        vms.setdefault(key, []).append(_artifact(path, art, verified_by_path, artifacts))
    vm_list = []
    for (name, uuid), items in sorted(vms.items()):
        title = "VM %s" % name if name else "Artifacts of no VM"
        vm_list.append({"title": title, "uuid": uuid, "artifacts": items})
    unknown = sorted(p for p in verified_by_path if p not in artifacts)

    changes = _journal(manifest, custody)
    runs = _controllers(custody)
    last_time = ""
    for rec in custody:
        if rec.get("recorded_at"):
            last_time = clean(rec.get("recorded_at"))
    as_of = ("%s (the last custody record)" % last_time if last_time else
             "%s (the manifest's last update)" % clean(case.get("updated") or "unknown"))

    glance = _glance(vm_list, changes, entries, signing, manifest)
    case_fields = [("Case id", clean(case_id))]
    for label, key in (("Examiner", "examiner"), ("Description", "description"), ("Case number", "case_number"),
                       ("Evidence number", "evidence_number"), ("Created (UTC)", "created"),
                       ("Updated (UTC)", "updated"), ("Updated on host", "updated_on_host")):
        if case.get(key) not in (None, ""):
            case_fields.append((label, clean(case.get(key))))
    custody_rows = []
    for entry in entries:
        rec = entry["record"] or {}
        custody_rows.append({"seq": clean(rec.get("seq", "line %d" % entry["line"])),
                             "time": clean(rec.get("recorded_at")), "host": clean(rec.get("host")),
                             "event": clean(rec.get("event")), "module": clean(rec.get("module")),
                             "summary": clean(rec.get("summary")) if entry["record"] else "(unreadable line)",
                             "problems": [clean(p) for p in entry["problems"]]})
    tools = sorted((clean(k), clean(v)) for k, v in (manifest.get("tools") or {}).items())
    return {"case_id": clean(case_id), "as_of": as_of, "case": case_fields, "glance": glance, "runs": runs,
            "hosts": _hosts(manifest, custody, verifications, changes), "vms": vm_list,
            "verifications": [_verification_row(r) for r in verifications], "unknown_verified": unknown,
            "changes": changes, "tools": tools, "signing": _signing(signing), "custody": custody_rows,
            "chain_how": chain_how, "chain_ok": all(not e["problems"] for e in entries)}


def _verification_row(rec):
    vol = _digests(rec.get("volume_digests"))
    return [("Recorded at", clean(rec.get("recorded_at"))), ("Verified on", clean(rec.get("verified_on"))),
            ("Result", clean(rec.get("result"))), ("Volume", clean(rec.get("volume"))),
            ("Volume digests", "; ".join("%s %s" % (a, d) for a, d in sorted(vol.items())) or "none"),
            ("Files", "%d" % len(rec.get("files") or []))]


def _signing(signing):
    if signing is None:
        return None
    if not isinstance(signing, dict):
        raise InvalidInputError("signing must be a dictionary (or None for an unsigned case), not %s."
                                % type(signing).__name__)
    files = []
    for item in signing.get("files") or []:
        if isinstance(item, dict):
            name = item.get("file") or item.get("path") or ""
            sig = item.get("signature") or item.get("sig")
            files.append(clean(name) + (" (signature %s)" % clean(sig) if sig else ""))
        else:
            files.append(clean(item))
    fields = [("Signer", clean(signing.get("principal") or signing.get("signer") or "not given")),
              ("Key fingerprint", clean(signing.get("fingerprint") or signing.get("key_fingerprint") or "not given")),
              ("Namespace", clean(signing.get("namespace") or "not given"))]
    known = ("principal", "signer", "fingerprint", "key_fingerprint", "namespace", "files", "verify_command")
    for key in sorted(signing):
        if key not in known and signing[key] not in (None, "", [], {}):
            fields.append((clean(key).replace("_", " ").capitalize(), clean(signing[key])))
    return {"fields": fields, "files": files, "command": clean(signing.get("verify_command") or ""),
            "signer": clean(signing.get("principal") or signing.get("signer") or "")}


def _count(items, key):
    states = [i["checks"].get(key) for i in items if key in i["checks"]]
    return states


def _glance(vm_list, changes, entries, signing, manifest):
    items = [a for vm in vm_list for a in vm["artifacts"]]
    kinds = {}
    for item in items:
        kinds[item["kind"]] = kinds.get(item["kind"], 0) + 1
    rows = [(INFO, "Artifacts", "%d (%s)" % (len(items), ", ".join("%d %s" % (n, k) for k, n in sorted(kinds.items())))
             if items else "none")]
    for key, label, missing in (("source", "Digests taken at the source", "no digest at the source"),
                                ("arrival", "Same digests on arrival", "not recorded on arrival"),
                                ("collector", "Same digests on a collector", "not verified on a collector")):
        states = _count(items, key)
        good = states.count(OK)
        if not states:
            rows.append((WARN, label, "no: nothing to check"))
        elif good == len(states):
            rows.append((OK, label, "yes (%d of %d)" % (good, len(states))))
        elif BAD in states:
            rows.append((BAD, label, "NO: %d of %d differ" % (states.count(BAD), len(states))))
        else:
            rows.append((WARN, label, "no: %d of %d %s" % (len(states) - good, len(states), missing)))
    e01 = _count(items, "e01")
    if e01:
        rows.append((OK if all(s == OK for s in e01) else (BAD if BAD in e01 else WARN),
                     "E01 media digests match the disks",
                     "yes (%d of %d)" % (e01.count(OK), len(e01)) if all(s == OK for s in e01)
                     else "no (%d of %d)" % (e01.count(OK), len(e01))))
    open_changes = [c for c in changes if c["state"] == BAD]
    if not changes:
        has_journal = any(isinstance(e, dict) and e.get("kind") for e in manifest.get("events") or [])
        rows.append((WARN if not has_journal else OK, "Host restored",
                     "unknown: no host change in the records" if not has_journal else "yes (no change was made)"))
    elif open_changes:
        rows.append((BAD, "Host restored", "NO: %d of %d change(s) still in place" % (len(open_changes), len(changes))))
    else:
        rows.append((OK, "Host restored", "yes (%d change(s) undone%s)" % (
            len([c for c in changes if c["state"] == OK]),
            ", some kept on purpose" if any(c["state"] == WARN for c in changes) else "")))
    broken = [e for e in entries if e["problems"]]
    if not entries:
        rows.append((WARN, "Custody chain intact", "no custody records"))
    elif broken:
        rows.append((BAD, "Custody chain intact", "NO: broken at record(s) %s" % ", ".join(
            clean((e["record"] or {}).get("seq", "line %d" % e["line"])) for e in broken)))
    else:
        rows.append((OK, "Custody chain intact", "yes (%d records)" % len(entries)))
    if signing is None:
        rows.append((WARN, "Signed", "NO: unsigned"))
    else:
        who = signing.get("principal") or signing.get("signer") if isinstance(signing, dict) else None
        rows.append((OK, "Signed", "yes%s" % (" by %s" % clean(who) if who else "")))
    return rows


# -- plain text ---------------------------------------------------------------------------------------------------
def _para(text, indent=2, first=None):
    """``text`` wrapped to WIDTH; ``first`` replaces the indent of the first line."""
    first = (" " * indent) if first is None else first
    lines = textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=" " * indent,
                          break_long_words=False, break_on_hyphens=False) or [first.rstrip()]
    out = []
    for line in lines:
        if len(line) <= WIDTH:
            out.append(line)
            continue
        body = line.lstrip(" ")  # a word longer than a line: split, each piece but the last ending in a backslash
        pad = len(line) - len(body)
        out.extend(_token(body, pad, indent))
    return out


def _kv_lines(fields, indent=2, label_width=20):
    lines = []
    for label, value in fields:
        head = " " * indent + ("%-" + str(label_width) + "s ") % label
        lines.extend(_para(value or "-", indent=len(head), first=head))
    return lines


def _token(value, indent, later=None):
    """A path or digest on lines of at most WIDTH (``later``: the indent after the first): split ones end with a
    backslash."""
    later = indent if later is None else later
    if len(value) + indent <= WIDTH:
        return [" " * indent + value]
    out = []
    pad = indent
    while len(value) + pad > WIDTH:
        room = WIDTH - pad - 1
        out.append(" " * pad + value[:room] + "\\")
        value = value[room:]
        pad = later
    return out + [" " * pad + value]


def _command(value, indent):
    """A shell command on lines of at most WIDTH, broken at blanks outside quotes with a shell line continuation
    (a word too long for a line is split like a path)."""
    words = []
    word = ""
    quote = None
    for ch in value:
        if ch == " " and quote is None:
            words.append(word)
            word = ""
            continue
        if quote is None and ch in "'\"":
            quote = ch
        elif ch == quote:
            quote = None
        word += ch
    words.append(word)
    lines = []
    cur = ""
    for word in words:
        candidate = word if not lines and not cur else cur + " " + word
        if cur and len(candidate) + indent + 2 > WIDTH:
            lines.append(cur + " \\")
            cur = word
        else:
            cur = candidate
    lines.append(cur)
    out = []
    for number, line in enumerate(lines):
        pad = indent if number == 0 else indent + 2
        out.extend(_token(line, pad, indent + 2) if len(line) + pad > WIDTH else [" " * pad + line])
    return out


def _heading(title):
    return ["", title.upper(), "-" * min(WIDTH, len(title))]


def render_text(facts):
    out = ["EVIDENCE REPORT - CASE %s" % facts["case_id"]]
    out.extend(_para("As of %s" % facts["as_of"], indent=0))
    out.append("=" * WIDTH)
    if facts["signing"] is None:
        out.append("*** UNSIGNED: this case's records carry no signature ***")
    if not facts["chain_ok"] and facts["custody"]:
        out.append("*** CUSTODY CHAIN BROKEN: see the custody log below ***")
    out.extend(_heading("Integrity at a glance"))
    for state, label, text in facts["glance"]:
        out.extend(_para("%s: %s" % (label, text), indent=9, first="  %s " % _MARK[state]))
    out.extend(_heading("Case"))
    out.extend(_kv_lines(facts["case"]))
    out.extend(_heading("Who ran it, when and from where"))
    if not facts["runs"]:
        out.append("  No custody record names the controller.")
    for number, fields in enumerate(facts["runs"], 1):
        out.append("  Run %d" % number)
        out.extend(_kv_lines(fields, indent=4))
    out.append("  Hosts involved")
    for host, roles in facts["hosts"]:
        out.extend(_para("%s: %s" % (host, "; ".join(roles)), indent=6, first="    "))
    out.extend(_heading("Evidence"))
    for vm in facts["vms"]:
        out.append("")
        out.extend(_para(vm["title"] + (" (%s)" % vm["uuid"] if vm["uuid"] else ""), indent=2, first="  "))
        for art in vm["artifacts"]:
            out.extend(_text_artifact(art))
    if facts["unknown_verified"]:
        out.append("")
        out.append("  Verified on a collector but not in the manifest:")
        for path in facts["unknown_verified"]:
            out.extend(_token(clean(path), 4))
    out.extend(_heading("Collector verifications"))
    if not facts["verifications"]:
        out.append("  None: the artifacts were not verified on a collector.")
    for fields in facts["verifications"]:
        out.extend(_kv_lines(fields))
        out.append("")
    out.extend(_heading("Host changes and their undo"))
    if not facts["changes"]:
        out.append("  No host change is recorded.")
    for row in facts["changes"]:
        out.extend(_para("%s #%s %s on %s (%s), %s" % (_MARK[row["state"]], row["seq"], row["action"], row["host"],
                                                       row["module"], row["time"]), indent=4, first="  "))
        out.extend(_para(row["description"] + ("" if row["applied"] else " (never marked applied)"), indent=6))
        undo = row["undo"] + (" [%s, %s]" % (row["undo_time"], row["undo_by"]) if row["undo_by"]
                              else (" [%s]" % row["undo_time"] if row["undo_time"] else ""))
        out.extend(_para("undo: " + undo, indent=8, first="      "))
    out.extend(_heading("Tools"))
    out.extend(_kv_lines(facts["tools"]) or ["  None recorded."])
    out.extend(_heading("Signature"))
    sig = facts["signing"]
    if sig is None:
        out.append("  UNSIGNED: this case's records carry no signature.")
    else:
        out.extend(_kv_lines(sig["fields"]))
        out.append("  Signed files")
        for name in sig["files"] or ["(none listed)"]:
            out.extend(_para(name, indent=6, first="    "))
        if sig["command"]:
            out.append("  Verify (in the case folder; lines ending in \\ continue on the next one):")
            out.extend(_command(sig["command"], 4))
    out.extend(_heading("Custody log"))
    out.extend(_para("Hash chain %s: %s." % (facts["chain_how"], "INTACT" if facts["chain_ok"] else "BROKEN"),
                     indent=2))
    if not facts["custody"]:
        out.append("  No custody records.")
    for row in facts["custody"]:
        state = BAD if row["problems"] else OK
        head = "%s #%s %s %s %s (%s)" % (_MARK[state], row["seq"], row["time"], row["host"], row["event"], row["module"])
        out.extend(_para(head, indent=9, first="  "))
        out.extend(_para(row["summary"], indent=9))
        for problem in row["problems"]:
            out.extend(_para("CHAIN BROKEN: " + problem, indent=11, first="         "))
    out.append("")
    out.append("End of report for case %s." % facts["case_id"])
    return "\n".join(line.rstrip() for line in out) + "\n"


def _text_artifact(art):
    out = [""]
    out.extend(_para("[%s] %s" % (art["kind"], art["path"]), indent=6, first="    "))
    out.extend(_kv_lines(art["fields"], indent=6, label_width=22))
    if art["extra_title"]:
        out.append("      %s" % art["extra_title"])
        out.extend(_kv_lines(art["extra"], indent=8, label_width=20))
    out.append("      Digests")
    last = None
    for where, algo, digest, state, note in art["digests"] + art["extra_rows"]:
        if (where, state, note) != last:
            out.extend(_para("%s %s: %s" % (_MARK[state] if state != INFO else "      ", where, note), indent=17,
                             first="        "))
            last = (where, state, note)
        if digest:
            out.extend(_token("%-7s %s" % (algo, digest), 17, 25))
    if art["command"]:
        out.append("      Open it (in the case folder; lines ending in \\ continue on the next one):")
        out.extend(_command(art["command"], 8))
    return out


# -- HTML -----------------------------------------------------------------------------------------------------------
_CSS = """
@page { size: A4; margin: 14mm 12mm 16mm 12mm; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, Helvetica, sans-serif; font-size: 10pt;
  color: #1d232b; line-height: 1.38; margin: 0; background: #eef1f4; }
main { max-width: 200mm; margin: 0 auto; padding: 9mm 10mm 12mm; background: #fff; }
h1 { font-size: 18pt; margin: 0 0 1mm; letter-spacing: .2px; }
h2 { font-size: 12.5pt; margin: 7mm 0 2.5mm; padding-bottom: 1mm; border-bottom: 2px solid #30475e; color: #30475e; }
h3 { font-size: 11pt; margin: 5mm 0 2mm; }
h4 { font-size: 10pt; margin: 3mm 0 1mm; color: #30475e; }
.sub { color: #56606b; margin: 0 0 4mm; }
.banner { padding: 2.6mm 4mm; border-radius: 2mm; font-weight: bold; font-size: 11.5pt; margin: 2mm 0; }
.banner.warn { background: #fff3cd; border: 2px solid #b26a00; color: #7a4800; }
.banner.bad { background: #fde8e8; border: 2px solid #c62828; color: #a01818; }
.banner.ok { background: #e6f4ea; border: 2px solid #1a7f37; color: #145c29; }
.glance { display: grid; grid-template-columns: repeat(4, 1fr); gap: 2mm; }
.tile { border: 1px solid #cfd6dd; border-left-width: 5px; border-radius: 1.5mm; padding: 1.8mm 2.4mm;
  break-inside: avoid; }
.tile .l { font-size: 8.5pt; color: #56606b; text-transform: uppercase; letter-spacing: .3px; }
.tile .v { font-weight: bold; font-size: 10.5pt; }
.tile.ok { border-left-color: #1a7f37; } .tile.ok .v { color: #145c29; }
.tile.bad { border-left-color: #c62828; background: #fdf0f0; } .tile.bad .v { color: #a01818; }
.tile.warn { border-left-color: #d08700; background: #fffaf0; } .tile.warn .v { color: #7a4800; }
.tile.info { border-left-color: #30475e; }
table { border-collapse: collapse; width: 100%; margin: 1mm 0 2mm; }
th, td { text-align: left; vertical-align: top; padding: 1mm 1.6mm; border-bottom: 1px solid #e1e6eb; }
thead th { background: #eef2f6; font-size: 8.5pt; text-transform: uppercase; letter-spacing: .3px; color: #3c4650; }
tr { break-inside: avoid; }
table.kv th { width: 33%; font-weight: normal; color: #56606b; }
.mono, code, .digest { font-family: "DejaVu Sans Mono", "Liberation Mono", Consolas, monospace; font-size: 8.6pt; }
.digest, .path, .wrap { overflow-wrap: anywhere; }
.digest, .path { word-break: break-all; }
table.dg { table-layout: fixed; }
table.dg th:first-child { width: 30%; }
table.dg td.digest { font-size: 8pt; }
.algo { color: #56606b; display: inline-block; min-width: 6.5ch; }
.hex { display: inline-block; max-width: 100%; overflow-wrap: anywhere; word-break: break-all; }
.note { font-size: 8.8pt; color: #3c4650; }
.when { white-space: nowrap; font-size: 8.6pt; color: #56606b; }
td.num { width: 4ch; color: #56606b; }
.path { font-family: "DejaVu Sans Mono", "Liberation Mono", Consolas, monospace; font-weight: bold; }
.card { border: 1px solid #cfd6dd; border-radius: 2mm; padding: 2.5mm 3.5mm; margin: 3mm 0; break-inside: avoid; }
.card h3 { margin-top: 0; }
.kind { display: inline-block; font-size: 8pt; font-weight: bold; text-transform: uppercase; color: #fff;
  background: #30475e; border-radius: 1mm; padding: .2mm 1.6mm; margin-right: 2mm; vertical-align: middle; }
.st { font-weight: bold; white-space: nowrap; }
.st.ok { color: #1a7f37; } .st.bad { color: #c62828; } .st.warn { color: #a05f00; } .st.info { color: #56606b; }
tr.bad td { background: #fde8e8; color: #a01818; }
tr.warn td { background: #fffaf0; }
pre.cmd { background: #f3f5f7; border: 1px solid #dde3e9; border-radius: 1mm; padding: 1.6mm 2.4mm; margin: 1mm 0;
  white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-all; font-size: 8.6pt; }
.small { font-size: 8.6pt; color: #56606b; }
ul.hosts { margin: 1mm 0; padding-left: 5mm; }
footer { margin-top: 8mm; font-size: 8.5pt; color: #56606b; border-top: 1px solid #cfd6dd; padding-top: 2mm; }
@media print { body { background: #fff; } main { max-width: none; padding: 0; } h2 { break-after: avoid; }
  .glance { grid-template-columns: repeat(4, 1fr); } }
"""
_STATE_WORD = {OK: "OK", BAD: "FAIL", WARN: "CHECK", INFO: ""}


def _e(value):
    """``value`` as HTML text: cleaned and escaped (quotes too)."""
    text = clean(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace(
        "'", "&#x27;")


def _kv_html(fields, mono=()):
    rows = []
    for label, value in fields:
        cls = ' class="mono wrap"' if label in mono else ' class="wrap"'
        rows.append("<tr><th>%s</th><td%s>%s</td></tr>" % (_e(label), cls, _e(value)))
    return '<table class="kv">%s</table>' % "".join(rows)


def render_html(facts):
    title = "Evidence report: case %s" % facts["case_id"]
    out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>%s</title>" % _e(title), "<style>%s</style>" % _CSS, "</head><body><main>",
           "<h1>%s</h1>" % _e(title), '<p class="sub">As of %s</p>' % _e(facts["as_of"])]
    if facts["signing"] is None:
        out.append('<div class="banner warn">UNSIGNED: this case&#x27;s records carry no signature</div>')
    else:
        out.append('<div class="banner ok">Signed by %s (see Signature for the command that checks it)</div>'
                   % _e(facts["signing"]["signer"] or "an unnamed signer"))
    if not facts["chain_ok"] and facts["custody"]:
        out.append('<div class="banner bad">CUSTODY CHAIN BROKEN: a custody record does not follow the one before '
                   'it; see the custody log</div>')
    out.append("<h2>Integrity at a glance</h2><div class=\"glance\">")
    for state, label, text in facts["glance"]:
        out.append('<div class="tile %s"><div class="l">%s</div><div class="v">%s</div></div>'
                   % (state, _e(label), _e(text)))
    out.append("</div>")
    out.append("<h2>Case</h2>" + _kv_html(facts["case"]))
    out.append("<h2>Who ran it, when and from where</h2>")
    if not facts["runs"]:
        out.append("<p>No custody record names the controller.</p>")
    for number, fields in enumerate(facts["runs"], 1):
        if len(facts["runs"]) > 1:
            out.append("<h4>Run %d</h4>" % number)
        out.append(_kv_html(fields, mono=("Run id", "Extra vars")))
    out.append("<h4>Hosts involved</h4><table><thead><tr><th>Host</th><th>Its part in this case</th></tr></thead><tbody>")
    for host, roles in facts["hosts"]:
        out.append('<tr><td class="mono">%s</td><td>%s</td></tr>' % (_e(host), "<br>".join(_e(r) for r in roles)))
    out.append("</tbody></table>")
    out.append("<h2>Evidence</h2>")
    for vm in facts["vms"]:
        out.append("<h3>%s%s</h3>" % (_e(vm["title"]), ' <span class="small mono">%s</span>' % _e(vm["uuid"])
                                      if vm["uuid"] else ""))
        for art in vm["artifacts"]:
            out.append(_html_artifact(art))
    if facts["unknown_verified"]:
        out.append('<p class="st warn">Verified on a collector but not in the manifest:</p><ul>%s</ul>'
                   % "".join('<li class="path">%s</li>' % _e(p) for p in facts["unknown_verified"]))
    out.append("<h2>Collector verifications</h2>")
    if not facts["verifications"]:
        out.append("<p>None: the artifacts were not verified on a collector.</p>")
    for fields in facts["verifications"]:
        out.append(_kv_html(fields, mono=("Volume", "Volume digests")))
    out.append(_html_changes(facts["changes"]))
    out.append("<h2>Tools</h2>" + (_kv_html(facts["tools"]) if facts["tools"] else "<p>None recorded.</p>"))
    out.append(_html_signing(facts["signing"]))
    out.append(_html_custody(facts))
    out.append("<footer>End of report for case %s. Rendered from manifest.json, custody.jsonl and the collector's "
               "verification records only; SHA256SUMS in the case folder checks the artifacts "
               "(<code>sha256sum -c SHA256SUMS</code>).</footer>" % _e(facts["case_id"]))
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


def _html_artifact(art):
    out = ['<div class="card"><h3><span class="kind">%s</span><span class="path">%s</span></h3>'
           % (_e(art["kind"]), _e(art["path"]))]
    out.append(_kv_html(art["fields"], mono=("Source",)))
    if art["extra_title"]:
        out.append("<h4>%s</h4>" % _e(art["extra_title"]))
        out.append(_kv_html(art["extra"], mono=("Chain (top first)", "Image of")))
    out.append('<h4>Digests</h4><table class="dg"><thead><tr><th>Where and check</th><th>Digest</th>'
               '</tr></thead><tbody>')
    for where, algo, digest, state, note in art["digests"] + art["extra_rows"]:
        value = ('<span class="algo">%s</span> <span class="hex">%s</span>' % (_e(algo), _e(digest))
                 if digest else "&mdash;")
        check = ('<span class="st %s">%s</span> ' % (state, _STATE_WORD[state]) if _STATE_WORD[state] else "")
        out.append('<tr class="%s"><td><b>%s</b><br><span class="note">%s%s</span></td><td class="digest">%s</td>'
                   '</tr>' % (state if state in (BAD, WARN) else "", _e(where), check, _e(note), value))
    out.append("</tbody></table>")
    if art["command"]:
        out.append('<h4>Open it (a shell in the case folder)</h4><pre class="cmd">%s</pre>' % _e(art["command"]))
    out.append("</div>")
    return "\n".join(out)


def _html_changes(changes):
    out = ["<h2>Host changes and their undo</h2>"]
    if not changes:
        out.append("<p>No host change is recorded.</p>")
        return "\n".join(out)
    out.append('<table><thead><tr><th>#</th><th>Change</th><th>Undo</th></tr></thead><tbody>')
    for row in changes:
        undo = '<span class="st %s">%s</span> %s' % (row["state"], _STATE_WORD[row["state"]], _e(row["undo"]))
        if row["undo_time"]:
            undo += '<br><span class="when">%s</span>%s' % (
                _e(row["undo_time"]), ('<br><span class="small">by %s</span>' % _e(row["undo_by"]))
                if row["undo_by"] else "")
        out.append('<tr class="%s"><td class="num">%s</td><td class="wrap" style="width:58%%">'
                   '<span class="mono"><b>%s</b></span> <span class="small">%s on %s</span><br>%s%s<br>'
                   '<span class="when">%s</span></td><td class="wrap">%s</td></tr>'
                   % (row["state"] if row["state"] != OK else "", _e(row["seq"]), _e(row["action"]),
                      _e(row["module"]), _e(row["host"]), _e(row["description"]),
                      "" if row["applied"] else ' <span class="small">(never marked applied)</span>',
                      _e(row["time"]), undo))
    out.append("</tbody></table>")
    return "\n".join(out)


def _html_signing(sig):
    out = ["<h2>Signature</h2>"]
    if sig is None:
        out.append('<div class="banner warn">UNSIGNED: this case&#x27;s records carry no signature</div>')
        return "\n".join(out)
    out.append(_kv_html(sig["fields"], mono=("Key fingerprint",)))
    out.append("<h4>Signed files</h4><ul>%s</ul>" % ("".join('<li class="path">%s</li>' % _e(f) for f in sig["files"])
                                                     or "<li>(none listed)</li>"))
    if sig["command"]:
        out.append('<h4>Verify (a shell in the case folder)</h4><pre class="cmd">%s</pre>' % _e(sig["command"]))
    return "\n".join(out)


def _html_custody(facts):
    out = ["<h2>Custody log</h2>",
           '<p>Hash chain %s: <span class="st %s">%s</span></p>' % (
               _e(facts["chain_how"]), OK if facts["chain_ok"] else BAD, "INTACT" if facts["chain_ok"] else "BROKEN")]
    if not facts["custody"]:
        out.append("<p>No custody records.</p>")
        return "\n".join(out)
    out.append('<table><thead><tr><th>Seq</th><th>Recorded at (UTC), host</th><th>Event</th><th>Summary</th>'
               '<th>Chain</th></tr></thead><tbody>')
    for row in facts["custody"]:
        bad = bool(row["problems"])
        chain = ('<span class="st bad">BROKEN</span><br>%s' % "<br>".join(_e(p) for p in row["problems"]) if bad
                 else '<span class="st ok">intact</span>')
        out.append('<tr class="%s"><td class="num">%s</td><td><span class="when">%s</span><br><span class="mono">%s'
                   '</span></td><td><b>%s</b><br><span class="small">%s</span></td><td class="wrap">%s</td>'
                   '<td>%s</td></tr>'
                   % ("bad" if bad else "", _e(row["seq"]), _e(row["time"]), _e(row["host"]), _e(row["event"]),
                      _e(row["module"]), _e(row["summary"]), chain))
    out.append("</tbody></table>")
    return "\n".join(out)


def render(manifest, custody_records, verification_records, signing, chain_intact=None):
    """(html_text, plain_text) of the case report.

    ``custody_records``: the custody log as its raw bytes, as a list of its raw lines (their hash chain is
    checked here), or as a list of record dicts (then ``chain_intact`` is the caller's verdict on the chain; without
    it the records are written again in the custody line form and that chain is checked). ``verification_records``:
    the collector's verification records (dicts). ``signing``: None for an unsigned case, else a dict (principal,
    fingerprint, namespace, files, verify_command).
    """
    facts = collect(manifest, custody_records, verification_records, signing, chain_intact=chain_intact)
    return render_html(facts), render_text(facts)


# -- the case folder ---------------------------------------------------------------------------------------------
MANIFEST = "manifest.json"
CUSTODY = "custody.jsonl"
PROTECTED = (MANIFEST, CUSTODY, "SHA256SUMS", "examiner.pub", "allowed_signers")
_GLANCE_KEYS = (("Digests taken at the source", "source"), ("Same digests on arrival", "arrival"),
                ("Same digests on a collector", "collector"), ("E01 media digests match the disks", "e01"),
                ("Host restored", "host_restored"), ("Custody chain intact", "chain_intact"), ("Signed", "signed"))


def integrity(facts):
    """The glance as booleans (``e01`` only when the case has E01 images), plus the number of artifacts."""
    result = {"artifacts": sum(len(vm["artifacts"]) for vm in facts["vms"])}
    states = dict((label, state) for state, label, text in facts["glance"])
    for label, key in _GLANCE_KEYS:
        if label in states:
            result[key] = states[label] == OK
    return result


def read_jsonl(path):
    """The JSON objects of a JSON-lines file, one per non-empty line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (IOError, OSError) as exc:
        raise EvidenceSourceError("The verification record file %s cannot be read: %s." % (path, exc.strerror),
                                  failed_path=path)
    records = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            rec = None
        if not isinstance(rec, dict):
            raise EvidenceSourceError("Line %d of the verification record file %s is not one JSON object; the report "
                                      "was not written. Look at the file." % (number, path), failed_path=path)
        records.append(rec)
    return records


def _name(names, key, default):
    name = (names or {}).get(key) or default
    if not isinstance(name, str) or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidInputError("The report name %r is not a plain file name (no folder part); give one like %s."
                                % (name, default))
    if name in PROTECTED:
        raise InvalidInputError("The report name %s is the name of one of the case's records, which a report never "
                                "replaces; choose another." % name)
    return name


def write_reports(case_dir, verification_files=None, signing=None, out_dir=None, names=None, check_mode=False):
    """Render the case folder's report and write report.html and report.txt (atomically, only when they change).

    Returns dict(changed, html, txt (each: path, sha256, bytes, changed), integrity, as_of).
    """
    case_dir = os.path.abspath(case_dir)
    out_dir = os.path.abspath(out_dir or case_dir)
    html_name, txt_name = _name(names, "html", "report.html"), _name(names, "txt", "report.txt")
    if html_name == txt_name:
        raise InvalidInputError("The HTML and the text report cannot both be named %s." % html_name)
    manifest = load_manifest(case_dir)
    if manifest is None:
        raise ManifestError("There is no %s in %s: a report is made from a case folder's manifest. Nothing was written."
                            % (MANIFEST, case_dir), manifest=os.path.join(case_dir, MANIFEST))
    custody_path = os.path.join(case_dir, CUSTODY)
    custody = None
    if os.path.exists(custody_path):
        try:
            with open(custody_path, "rb") as f:
                custody = f.read()
        except (IOError, OSError) as exc:
            raise EvidenceSourceError("The custody log %s cannot be read: %s. Nothing was written."
                                      % (custody_path, exc.strerror), failed_path=custody_path)
    verified = []
    for path in verification_files or []:
        verified.extend(read_jsonl(path))
    facts = collect(manifest, custody, verified, signing)
    texts = {"html": (html_name, render_html(facts)), "txt": (txt_name, render_text(facts))}
    if not os.path.isdir(out_dir):
        raise DestinationError("The folder %s for the report does not exist. Nothing was written." % out_dir,
                               failed_path=out_dir)
    result = {"changed": False, "integrity": integrity(facts), "as_of": facts["as_of"]}
    for key in ("html", "txt"):
        name, text = texts[key]
        path = os.path.join(out_dir, name)
        data = text.encode("utf-8")
        try:
            with open(path, "rb") as f:
                changed = f.read() != data
        except (IOError, OSError):
            changed = True
        result[key] = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                       "changed": changed}
        result["changed"] = result["changed"] or changed
    if not check_mode:
        for key in ("html", "txt"):
            if result[key]["changed"]:
                try:
                    write_atomic(result[key]["path"], texts[key][1])
                except (IOError, OSError) as exc:
                    raise DestinationError("The report %s cannot be written: %s." % (result[key]["path"],
                                                                                     exc.strerror),
                                           failed_path=result[key]["path"])
    return result
