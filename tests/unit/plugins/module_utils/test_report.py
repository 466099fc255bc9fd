# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The case report (_evidence/report.py, module evidence_report): the facts in both outputs, escaping, the unsigned
banner, a broken custody chain shown, determinism, and report.html as headless Chromium draws it."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html import unescape

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence import report as rp
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.record import record_line
from ansible_collections.dfir.vmcollect.plugins.modules import evidence_report

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "report")
CASE = "look1"
CONTROLLER = {"user": "examiner1", "host": "ctl.lab", "ansible_core": "2.19.14", "collection_version": "0.2.0",
              "run_id": "ogb0tx4nurwwj8do3tem", "awx_job_id": 4711, "awx_user_name": "jdoe",
              "awx_job_template_name": "Acquire KVM VM", "extra_vars": {"case_id": CASE, "vmcollect_vms": ["vmc-victim"]}}
SIGNING = {"principal": "examiner@lab", "fingerprint": "SHA256:9Zx0mJk1Qe4l0cI0m7Rr2a7nQ0bq3b8K3wWw3f7cX1c",
           "namespace": "dfir.vmcollect", "files": ["manifest.json", "SHA256SUMS", "custody.jsonl"],
           "verify_command": "for f in manifest.json SHA256SUMS custody.jsonl; do ssh-keygen -Y verify -f "
                             "allowed_signers -I examiner@lab -n dfir.vmcollect -s $f.sig < $f || exit 1; done"}


def manifest():
    with open(os.path.join(FIXTURES, "manifest.json")) as f:
        return json.load(f)


def verifications():
    with open(os.path.join(FIXTURES, "kvm1.img.verified.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def full_manifest():
    """The example manifest plus what issue 13 adds: the logical digest of vda and an E01 image of it."""
    m = manifest()
    vda = "vmc-victim-6c616276/disks/vda-00-vda.qcow2"
    logical = "5" * 64
    m["artifacts"][vda]["logical"] = {
        "size": 10485760, "digests": {"sha256": logical}, "chain": [vda], "formats": ["qcow2"],
        "open": {"qemu_json": 'json:{"driver":"qcow2","file":{"driver":"file","filename":"%s"}}' % vda,
                 "command": "qemu-nbd --read-only --connect=/dev/nbd0 --format=qcow2 %s" % vda}}
    e01 = "vmc-victim-6c616276/e01/vda.E01"
    m["artifacts"][e01] = {
        "kind": "e01", "path": e01, "of": vda, "media_size": 10485760, "segments": [],
        "media_digests": {"md5": "c" * 32, "sha256": logical},
        "case_fields": {"case_number": "2026-042", "evidence_number": "EV-7", "examiner": "demo examiner",
                        "description": "vda of vmc-victim", "notes": "acquired live"},
        "tool": "ewfacquirestream 20140816"}
    m["case"]["description"] = "Live acquisition of vmc-victim"
    return m


def pending_changes(m):
    undone = set(r["ref"] for r in m["events"] if r.get("kind") == "undone")
    return [r for r in m["events"] if r.get("kind") == "change" and r["id"] not in undone]


def custody_log(m, broken_at=None):
    """A custody.jsonl (bytes) of the contract's form for the manifest ``m``; ``broken_at`` alters that record."""
    teardown = {"undone": [{"action": c["action"], "description": c["description"], "result": "undone"}
                           for c in reversed(pending_changes(m))], "kept": []}
    steps = [("plan", "evidence_plan", "Planned the acquisition of 1 VM onto a 64 MiB LUN.", {}),
             ("lock", "case_lock", "Locked case look1 on vmc-kvm for run ogb0tx4nurwwj8do3tem.", {}),
             ("freeze", "take_snapshot", "Froze the disks vda and vdb of vmc-victim.", {}),
             ("memory", "pmemsave", "Captured the RAM of vmc-victim (256 MiB, guest paused 3 ms).", {}),
             ("copy", "evidence_copy", "Copied vda and vdb onto the evidence volume.", {}),
             ("manifest", "evidence_manifest", "Wrote manifest.json and SHA256SUMS (3 artifacts).", {}),
             ("teardown", "teardown", "Undid every change on vmc-kvm.", teardown),
             ("verify", "evidence_record", "collector1 re-hashed the 3 artifacts: all match.", {}),
             ("report", "evidence_report", "Wrote report.html and report.txt.", {})]
    lines = []
    prev = "0" * 64
    for seq, (event, module, summary, details) in enumerate(steps, 1):
        rec = {"format": "dfir.vmcollect/custody/1", "seq": seq, "prev": prev, "case_id": CASE,
               "recorded_at": "2026-12-06T18:%02d:%02d.000000Z" % (36 + (50 + 4 * seq) // 60, (50 + 4 * seq) % 60),
               "host": "collector1" if event == "verify" else "vmc-kvm", "event": event, "module": module,
               "summary": summary, "details": details, "controller": CONTROLLER}
        line = record_line(rec)
        prev = hashlib.sha256(line).hexdigest()
        if seq == broken_at:
            rec["summary"] = "Edited afterwards."
            line = record_line(rec)
        lines.append(line)
    return b"".join(lines)


def render(m=None, custody=None, verified=None, signing=None, **kw):
    m = full_manifest() if m is None else m
    return rp.render(m, custody_log(m) if custody is None else custody,
                     verifications() if verified is None else verified, signing, **kw)


def test_every_artifact_and_fact_is_in_both_outputs():
    m = full_manifest()
    html, text = render(m, signing=SIGNING)
    for out in (html, text):
        for path in m["artifacts"]:
            assert path in out
        for art in m["artifacts"].values():
            for digest in list((art.get("digests") or {}).values()) + list((art.get("media_digests") or {}).values()):
                assert digest in out
        for fact in ("look1", "demo examiner", "Live acquisition of vmc-victim", "2026-12-06T18:37:08.702889Z",
                     "examiner1", "ctl.lab", "2.19.14", "ogb0tx4nurwwj8do3tem", "4711", "jdoe", "Acquire KVM VM",
                     "vmcollect_vms", "kvm1", "vmc-kvm", "collector1", "2026-12-06T18:37:15.983029Z",
                     "1ea08e0dacd7f4066857a2f55dfa02ab14c8ae0eb9e9de5bcef09eecd678ae2b",
                     "background_snapshot", "3 ms", "5 range(s)", "268,435,456 bytes (256 MiB)",
                     "1,900,544 bytes (1.8 MiB)", "qemu-nbd --read-only --connect=/dev/nbd0", "2026-042", "EV-7",
                     "ewfacquirestream 20140816", "matches the logical digest of", "7.2.22", "9.0.0",
                     "lock.held", "set vm.unprivileged_userfaultfd back from 1 to 0", "examiner@lab",
                     "SHA256:9Zx0mJk1Qe4l0cI0m7Rr2a7nQ0bq3b8K3wWw3f7cX1c", "custody.jsonl",
                     "Captured the RAM of vmc-victim", "Froze the disks vda and vdb"):
            assert fact in out, fact
        assert "UNSIGNED" not in out and "BROKEN" not in out and "STILL IN PLACE" not in out
    assert SIGNING["verify_command"] in unescape(html)
    assert SIGNING["verify_command"] in re.sub(r"\\\n *", "", text)  # lines ending in \ continue
    assert all(len(line) <= rp.WIDTH for line in text.splitlines())
    assert "\r" not in text and text.endswith("\n")


def test_an_e01_the_collector_wrote_is_listed_from_its_custody_record():
    """A collector writes an E01 of a disk on a read-only volume after the manifest was sealed: its custody record is
    the E01's only description, and the report lists it under its VM, compared with the disk's logical digest."""
    m = full_manifest()
    vda = "vmc-victim-6c616276/disks/vda-00-vda.qcow2"
    e01 = m["artifacts"].pop("vmc-victim-6c616276/e01/vda.E01")
    e01.update(path="/srv/collector/look1/records-kvm1/vmc-victim-6c616276/e01/vda.E01", made_on="collector1",
               vm="vmc-victim", vm_uuid=m["artifacts"][vda]["vm_uuid"])
    log = custody_log(m)
    last = json.loads(log.splitlines()[-1])
    rec = {"format": "dfir.vmcollect/custody/1", "seq": last["seq"] + 1,
           "prev": hashlib.sha256(log.splitlines(True)[-1]).hexdigest(), "case_id": CASE,
           "recorded_at": "2026-12-06T18:40:00.000000Z", "host": "collector1", "event": "e01",
           "module": "evidence_image", "summary": "An E01 was written on collector1.", "details": e01,
           "controller": CONTROLLER}
    html, text = render(m, custody=log + record_line(rec), signing=SIGNING)
    for out in (html, text):
        assert e01["path"] in out and "collector1" in out
        assert "matches the logical digest of" in out and "custody record %d" % rec["seq"] in out
    facts = rp.collect(m, log + record_line(rec), verifications(), SIGNING)
    assert any(a["path"] == e01["path"] for vm in facts["vms"] for a in vm["artifacts"] if "path" in a) or \
        e01["path"] in json.dumps(facts)


def test_glance_says_yes_when_everything_holds():
    facts = rp.collect(full_manifest(), custody_log(full_manifest()), verifications(), SIGNING)
    glance = dict((label, (state, text)) for state, label, text in facts["glance"])
    assert glance["Artifacts"][1] == "4 (2 disk, 1 e01, 1 memory)"
    for label in ("Digests taken at the source", "Same digests on arrival", "Same digests on a collector",
                  "Host restored", "Custody chain intact", "Signed", "E01 media digests match the disks"):
        assert glance[label][0] == rp.OK, (label, glance[label])
    assert glance["Same digests on a collector"][1] == "yes (3 of 3)"
    assert glance["Host restored"][1].startswith("yes (") and glance["Custody chain intact"][1] == "yes (9 records)"
    assert facts["as_of"] == "2026-12-06T18:37:26.000000Z (the last custody record)"


def test_without_a_collector_record_it_says_so():
    html, text = render(verified=[])
    for out in (html, text):
        assert out.count("not verified on a collector") >= 3
    assert "Same digests on a collector: no: 3 of 3 not verified on a collector" in text


def test_a_collector_digest_that_differs_is_shown():
    rec = verifications()
    rec[0]["digests"][1] = {"sha256": "f" * 64}
    html, text = render(verified=rec)
    assert "DIFFERS from the source" in html and "DIFFERS from the source" in text
    assert "Same digests on a collector: NO: 1 of 3 differ" in text


def test_changes_left_in_place_are_named():
    m = full_manifest()
    log = custody_log(m)
    facts_m = manifest()  # the same records, but no teardown custody record undoes the pending changes
    lines = [json.loads(line) for line in log.splitlines()]
    for rec in lines:
        rec["details"] = {}
    html, text = rp.render(facts_m, [record_line(r) for r in lines], [], None)
    assert "STILL IN PLACE" in text and "Host restored: NO: %d of " % len(pending_changes(facts_m)) in text
    assert "STILL IN PLACE" in html


def test_unsigned_banner():
    html, text = render(signing=None)
    assert "UNSIGNED: this case&#x27;s records carry no signature" in html
    assert "UNSIGNED: this case's records carry no signature" in text
    assert text.splitlines()[3].startswith("*** UNSIGNED")


def test_broken_chain_is_flagged_in_red():
    m = full_manifest()
    html, text = render(m, custody=custody_log(m, broken_at=4))
    assert "CUSTODY CHAIN BROKEN" in html and "CUSTODY CHAIN BROKEN" in text
    assert "Edited afterwards." in html and "Edited afterwards." in text  # shown, not hidden
    row = re.search(r'<tr class="bad"><td class="num">5</td>.*?</tr>', html).group(0)
    assert "prev is not the sha256 of line 4" in row and "BROKEN" in row
    assert "Custody chain intact: NO: broken at record(s) 5" in text
    assert '<tr class="bad"><td class="num">4</td>' not in html  # the altered record itself links to its predecessor


def test_chain_checks_seq_first_prev_torn_line_and_other_case():
    log = custody_log(full_manifest())
    lines = log.splitlines(True)
    entries = rp.check_chain(b"".join(lines[:2] + lines[3:]), CASE)  # record 3 removed
    assert [e["problems"] != [] for e in entries][:3] == [False, False, True]
    assert "seq is 4 on line 3" in entries[2]["problems"][0]
    entries = rp.check_chain(log[:-1], "other")
    assert "incomplete" in entries[-1]["problems"][-1] and "of case look1, not other" in entries[0]["problems"][0]
    entries = rp.check_chain([line.rstrip(b"\n").decode() for line in lines], CASE)  # lines without newlines
    assert not any(e["problems"] for e in entries)
    entries = rp.check_chain(b"not json\n" + log, CASE)
    assert entries[0]["record"] is None and entries[1]["problems"]


def test_record_dicts_with_or_without_the_callers_flag():
    m = full_manifest()
    records = [json.loads(line) for line in custody_log(m).splitlines()]
    html, text = render(m, custody=records)
    assert "written again in the custody line form: INTACT" in text
    records[2]["summary"] = "changed"
    assert "BROKEN" in render(m, custody=records)[1]
    html, text = render(m, custody=records, chain_intact=True)
    assert "checked by the caller: intact: INTACT" in text
    html, text = render(m, custody=records, chain_intact=False)
    assert "CUSTODY CHAIN BROKEN" in html


def test_values_are_escaped():
    m = full_manifest()
    evil = "<script>alert(1)</script>"
    for art in m["artifacts"].values():
        if art.get("vm"):
            art["vm"] = evil
    m["case"]["examiner"] = 'x" onload="alert(2)'
    m["case"]["description"] = "line1\nFAKE LINE\u202egnp.exe"
    html, text = render(m, signing=dict(SIGNING, principal="<b>me</b>"))
    assert "<script" not in html.lower() and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'onload="' not in html and "&lt;b&gt;me&lt;/b&gt;" in html
    assert "\u202e" not in html and "\u202e" not in text and "\\u202e" in html and "\\u202e" in text
    assert "line1\\nFAKE LINE" in text and "\nFAKE LINE" not in text
    assert "VM <script>alert(1)</script>" in text  # plain text shows it as it is
    for tag in re.findall(r"<\s*([a-zA-Z]+)", html):
        assert tag.lower() not in ("script", "link", "img", "iframe", "object", "embed")
    assert "url(" not in html and "http" not in html.replace("http-equiv", "")


def test_deterministic():
    m = full_manifest()
    first = render(m, signing=SIGNING)
    again = render(json.loads(json.dumps(m, sort_keys=True)), signing=dict(reversed(list(SIGNING.items()))))
    assert first == again


def test_human_sizes():
    assert [rp.human(n) for n in (0, 1023, 1024, 1900544, 268435456, 5 << 40)] == [
        "0 B", "1023 B", "1 KiB", "1.8 MiB", "256 MiB", "5 TiB"]


# -- the module ----------------------------------------------------------------------------------------------------
testing = pytest.importorskip("ansible.module_utils.testing")  # ansible-core 2.19+


def _run(args, capsys):
    with testing.patch_module_args(args):
        with pytest.raises(SystemExit):
            evidence_report.main()
    return json.loads(capsys.readouterr().out)


def _case(tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    m = full_manifest()
    (case / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    (case / "custody.jsonl").write_bytes(custody_log(m))
    ver = tmp_path / "kvm1.img.verified.jsonl"
    shutil.copy(os.path.join(FIXTURES, "kvm1.img.verified.jsonl"), str(ver))
    return case, str(ver)


def test_module_check_mode_then_write_then_unchanged(tmp_path, capsys):
    case, ver = _case(tmp_path)
    args = {"case_dir": str(case), "verification_files": [ver], "signing": SIGNING}
    out = _run(dict(args, _ansible_check_mode=True), capsys)
    assert out["changed"] and "would write" in out["msg"] and sorted(os.listdir(str(case))) == [
        "custody.jsonl", "manifest.json"]
    out = _run(args, capsys)
    assert out["changed"] and not out.get("failed")
    for key, name in (("html", "report.html"), ("txt", "report.txt")):
        with open(str(case / name), "rb") as f:
            data = f.read()
        assert out[key]["path"] == str(case / name) and out[key]["sha256"] == hashlib.sha256(data).hexdigest()
    assert out["integrity"]["chain_intact"] and out["integrity"]["signed"]
    mtime = os.stat(str(case / "report.html")).st_mtime_ns
    out = _run(args, capsys)
    assert not out["changed"] and os.stat(str(case / "report.html")).st_mtime_ns == mtime
    out = _run(dict(args, signing=None, _ansible_check_mode=True), capsys)
    assert out["changed"] and out["html"]["changed"]


def test_module_fails_with_a_sentence(tmp_path, capsys):
    case, ver = _case(tmp_path)
    out = _run({"case_dir": str(tmp_path / "nowhere")}, capsys)
    assert out["failed"] and "manifest" in out["msg"]
    out = _run({"case_dir": str(case), "names": {"html": "../x.html"}}, capsys)
    assert out["failed"] and "file name" in out["msg"]
    with open(ver, "a") as f:
        f.write("{torn")
    out = _run({"case_dir": str(case), "verification_files": [ver]}, capsys)
    assert out["failed"] and out["msg"].startswith("Line 2 of the verification record file") and not os.path.exists(str(case / "report.html"))


# -- as a browser draws it -------------------------------------------------------------------------------------------
def _png_pixels(path):
    """(width, height, a few distinct pixel rows' colours) of an 8-bit RGB/RGBA PNG, read with zlib and struct."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, ctype, depth = 8, b"", 0, 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and ctype in (2, 6), (depth, ctype)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    prev = bytearray(stride)
    colours = set()
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xff
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xff
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xff
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else (b if pb <= pc else c))) & 0xff
        if y % 40 == 0:
            for x in range(0, width, 7):
                colours.add(bytes(line[x * bpp:x * bpp + 3]))
        prev = line
    return width, height, colours


def test_html_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("chromium is not installed (Debian package chromium): report.html is not drawn")
    html = render(signing=None)[0]
    page = tmp_path / "report.html"
    page.write_text(html)
    png = str(tmp_path / "report.png")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--screenshot=%s" % png,
           "--window-size=1280,2400", "file://%s" % page]
    try:
        subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=90, check=False,
                       env=dict(os.environ, HOME=str(tmp_path)))
    except subprocess.TimeoutExpired:
        pytest.fail("chromium did not draw the report within 90 s")
    print("screenshot of report.html: %s" % png)
    assert os.path.exists(png), "chromium wrote no screenshot"
    width, height, colours = _png_pixels(png)
    assert (width, height) == (1280, 2400)
    assert len(colours) > 8, "the screenshot is (nearly) one flat colour: %d colours" % len(colours)
    keep = os.environ.get("VMCOLLECT_REPORT_PNG")
    if keep:
        shutil.copy(png, keep)
