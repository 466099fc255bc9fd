# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""vmkfstools_clone's SSH engine: the commands it runs, what it refuses before a login, how it compares the host's
digests, how it finds a vmkfstools still cloning in ``ps``, and the undo's decisions against a fake ESXi shell (a
completed copy is kept, what an unfinished one left is removed once nothing writes it any more, nothing on another
host or on a source datastore, folders only when empty); the API engine's handler hands it the records of engine
ssh."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import DestinationError, HashMismatchError, InvalidInputError
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import clone as ec
from ansible_collections.dfir.vmcollect.plugins.module_utils._evidence.copy import ProgressFile
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import UNDO_HANDLERS, Journal, UndoContext
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import clone as vc

FP = "SHA256:" + "A" * 43
DEST = "[evidence] case-42/Win Srv [prod] 01/Win Srv [prod] 01.vmdk"
VM_DEST = "/vmfs/volumes/evidence/case-42/Win Srv [prod] 01/Win Srv [prod] 01.vmdk"


def test_the_field_methods_command_and_a_cp_that_never_writes_over_a_file():
    argv = ec.vmkfstools_argv("[LocalDS_0] Win Srv [prod] 01/Win Srv [prod] 01.vmdk", DEST)
    assert argv == ["vmkfstools", "-i", "/vmfs/volumes/LocalDS_0/Win Srv [prod] 01/Win Srv [prod] 01.vmdk", "-d",
                    "thin", VM_DEST]
    line = ec.cp_line("[LocalDS_0] vm/vm-Snapshot1.vmem", "[evidence] case 42/vm-Snapshot1.vmem")
    assert line == ("if test -e '/vmfs/volumes/evidence/case 42/vm-Snapshot1.vmem'; then echo 'exists' >&2; exit 17; "
                    "fi; cp /vmfs/volumes/LocalDS_0/vm/vm-Snapshot1.vmem '/vmfs/volumes/evidence/case 42/vm-Snapshot1.vmem'")


def _params(**kw):
    p = {"engine": "ssh", "src": "[LocalDS_0] vm/vm.vmdk", "dest": "[evidence] c/vm.vmdk", "files": [],
         "algorithms": ["sha256", "md5"], "changed_areas": None, "block_size": None, "request_timeout": None,
         "retries": None}
    p.update(kw)
    return p


def test_the_api_engines_refusals_hold_and_changed_areas_is_refused_before_a_login():
    assert ec.check_inputs(_params())[3] == ["sha256", "md5"]
    with pytest.raises(InvalidInputError, match="changed_areas cannot be used with the SSH engine"):
        ec.check_inputs(_params(changed_areas={"vm": "vm-1", "disk_key": 2000}))
    with pytest.raises(InvalidInputError, match="is a .vmdk"):
        ec.check_inputs(_params(files=[{"src": "[LocalDS_0] vm/other.vmdk"}]))
    with pytest.raises(InvalidInputError, match="engine 'nfs' is not available"):
        ec.check_inputs(_params(engine="nfs"))
    # the API engine alone still refuses the others: its clone() is never handed an ssh run
    with pytest.raises(InvalidInputError, match="engine 'ssh' is not available"):
        vc.check_inputs(_params())


def test_digests_are_verified_only_when_every_common_algorithm_agrees():
    assert ec.compare({"sha256": "a", "md5": "b"}, {"sha256": "a", "md5": "b"}) == (True, ["md5", "sha256"])
    assert ec.compare({"sha256": "a", "md5": "b"}, {"sha256": "a", "md5": "c"}) == (False, ["md5", "sha256"])
    assert ec.compare(None, {"sha256": "a"}) == (None, [])
    disk = {"kind": "disk", "src": "[s] v.vmdk", "equal_to": "[s] v-flat.vmdk", "dest_extent": "[e] v-flat.vmdk",
            "dest": "[e] v.vmdk"}
    hashed = [{"src": "[s] v.vmdk"}, {"src": "[s] v-flat.vmdk"}]
    assert ec.equal_source(disk, hashed) is hashed[1] and ec.read_back_target(disk) == "[e] v-flat.vmdk"
    assert ec.equal_source(dict(disk, equal_to=None), hashed) is None  # a consolidated delta
    f = {"kind": "file", "src": "[s] v.vmem", "dest": "[e] v.vmem"}
    assert ec.equal_source(f, [{"src": "[s] v.vmem"}])["src"] == "[s] v.vmem" and ec.read_back_target(f) == "[e] v.vmem"


PS = """  PID COMMAND
    1 /sbin/init
  812 sshd: root@notty
  813 /bin/sh -c echo vmcollect-pid-1a2b:$$ >&2
vmkfstools -i '/vmfs/volumes/LocalDS_0/vm/vm.vmdk' -d thin '%(d)s'
  820 /usr/bin/python3 /state/bin/vmkfstools -i /vmfs/volumes/LocalDS_0/vm/vm.vmdk -d thin %(d)s
  821 /usr/bin/python3 /state/bin/vmkfstools -i /vmfs/volumes/LocalDS_0/o/o.vmdk -d thin /vmfs/volumes/evidence/o.vmdk
  900 ps -eo pid,args
""" % {"d": VM_DEST}
ESXI_PS = """WID      CID      World Name                                Command
2098817  2098817  vmkfstools                                vmkfstools -i /vmfs/volumes/ds/vm/vm.vmdk -d thin %s
""" % VM_DEST


def test_a_vmkfstools_still_cloning_to_the_destination_is_found_in_ps():
    assert ec.copier_pids(PS, [VM_DEST, VM_DEST[:-5] + "-flat.vmdk"]) == [820]
    assert ec.copier_pids(ESXI_PS, [VM_DEST]) == [2098817]
    assert ec.copier_pids(PS, ["/vmfs/volumes/evidence/nothing.vmdk"]) == []


class FakeShell(object):
    """The ESXi shell of the undo: files (path -> bytes), vmkfstools processes (pid -> (dest, ignores SIGTERM)),
    files a copier still grows (``growing``: looks before it stops), every command recorded."""

    where = "esxi1:22"

    def __init__(self, files=(), copiers=None, key=FP, growing=0):
        self.files = dict(files)
        self.folders = set()
        self.copiers = dict(copiers or {})
        self.growing = growing
        self.commands = []
        self.key = key
        self.ssh = self

    def host_key_record(self):
        return {"verified": True, "how": "fingerprint", "fingerprint_sha256": self.key}

    def run(self, argv, timeout=None, ok=(0,)):
        self.commands.append(argv)
        if argv == ec.PS_LINES:
            return "  PID COMMAND\n" + "".join("%d vmkfstools -i src -d thin %s\n" % (pid, dest)
                                               for pid, (dest, dummy) in self.copiers.items())
        if isinstance(argv, str) and argv.startswith("stat -c"):
            if self.growing:
                self.growing -= 1
                for p in self.files:
                    self.files[p] += b"x"
            return "".join("%s|%d\n" % (p, len(d)) for p, d in sorted(self.files.items()) if p in argv)
        if argv[0] == "kill":
            for pid in [int(a) for a in argv[2:]]:
                if pid in self.copiers and (argv[1] == "-9" or not self.copiers[pid][1]):
                    del self.copiers[pid]
            return ""
        if argv[0] == "rm":
            for p in argv[3:]:
                self.files.pop(p, None)
            return ""
        if argv[0] == "ls":
            prefix = argv[2].rstrip("/") + "/"
            return "".join(p[len(prefix):].split("/")[0] + "\n" for p in list(self.files) + list(self.folders)
                           if p.startswith(prefix))
        if argv[0] == "rmdir":
            self.folders.discard(argv[1])
            return ""
        raise AssertionError("unexpected command %r" % (argv,))

    def rc(self, argv, timeout=None):
        self.commands.append(argv)
        assert argv[:2] == ["test", "-d"]
        return 0 if argv[2] in self.folders else 1

    def exists(self, path):
        return path in self.files or path in self.folders

    def read(self, path, limit=None):
        return self.files[path]


def _undo(**kw):
    dest_files = [DEST, vc.extent_path(DEST), vc.marker_path(DEST)]
    undo = {"engine": "ssh", "kind": "disk", "dest": DEST, "src": "[LocalDS_0] vm/vm.vmdk", "datastore": "evidence",
            "source_datastores": ["LocalDS_0"], "dest_files": dest_files,
            "shell_dest_files": [ec.vmfs_path(p) for p in dest_files], "marker": vc.marker_path(DEST),
            "copy_id": "c0ffee", "ssh_host_key": FP, "ssh_endpoint": "esxi1:22"}
    undo.update(kw)
    return undo


def test_an_unfinished_clone_is_removed_after_its_vmkfstools_is_stopped_and_its_files_settle(monkeypatch):
    monkeypatch.setattr(ec, "SETTLE_POLL", 0.01)
    monkeypatch.setattr(ec, "STOP_GRACE", 0.05)
    flat = ec.vmfs_path(vc.extent_path(DEST))
    shell = FakeShell({flat: b"partial", "/vmfs/volumes/evidence/other-flat.vmdk": b"not ours"},
                      copiers={820: (VM_DEST, True), 821: ("/vmfs/volumes/evidence/other.vmdk", False)}, growing=2)
    said = ec.remove_partial(shell, _undo())
    assert said.startswith("removed what the unfinished copy left: %s after stopping the vmkfstools command(s) 820"
                           % vc.extent_path(DEST)), said
    # SIGTERM first, then SIGKILL for the one that ignored it; the other clone runs on, its file stays
    assert ["kill", "-15", "820"] in shell.commands and ["kill", "-9", "820"] in shell.commands
    assert list(shell.copiers) == [821] and list(shell.files) == ["/vmfs/volumes/evidence/other-flat.vmdk"]
    # removed only once two looks at the files agreed
    looks = [c for c in shell.commands if isinstance(c, str) and c.startswith("stat")]
    rm_at = shell.commands.index(["rm", "-f", "--", flat])
    assert len(looks) >= 3 and shell.commands.index(looks[-1]) < rm_at


def test_check_mode_of_the_undo_stops_and_removes_nothing():
    flat = ec.vmfs_path(vc.extent_path(DEST))
    shell = FakeShell({flat: b"partial"}, copiers={820: (VM_DEST, False)})
    said = ec.remove_partial(shell, _undo(), check_mode=True)
    assert said == ("would remove what the unfinished copy left: %s; it would first stop the vmkfstools command(s) "
                    "820 still cloning there" % vc.extent_path(DEST))
    assert shell.copiers and shell.files and not [c for c in shell.commands if c[0] in ("kill", "rm")]


def test_a_copy_whose_marker_names_it_is_evidence_and_kept():
    paths = [ec.vmfs_path(p) for p in (DEST, vc.extent_path(DEST))]
    marker = ec.vmfs_path(vc.marker_path(DEST))
    shell = FakeShell(dict([(p, b"data") for p in paths] + [(marker, json.dumps({"copy_id": "c0ffee"}).encode())]))
    assert ec.remove_partial(shell, _undo()).startswith("kept: evidence: %s is a completed copy" % DEST)
    assert len(shell.files) == 3 and not [c for c in shell.commands if c[0] == "rm"]


def test_nothing_is_removed_on_another_host_or_on_a_source_datastore():
    flat = ec.vmfs_path(vc.extent_path(DEST))
    shell = FakeShell({flat: b"partial"}, key="SHA256:" + "B" * 43)
    with pytest.raises(DestinationError, match="nothing is removed on another host"):
        ec.remove_partial(shell, _undo())
    with pytest.raises(DestinationError, match="a datastore that holds a source"):
        ec.remove_partial(FakeShell({flat: b"partial"}), _undo(source_datastores=["evidence"]))
    assert shell.files == {flat: b"partial"} and not [c for c in shell.commands if c[0] == "rm"]


def test_folders_are_removed_deepest_first_and_only_when_empty():
    folders = ["[evidence] case-42", "[evidence] case-42/vm"]
    undo = _undo(kind="folders", dest=folders[1], folders=folders, shell_folders=[ec.vmfs_path(f) for f in folders])
    shell = FakeShell()
    shell.folders.update(undo["shell_folders"])
    assert ec.remove_partial(shell, undo) == ("removed the empty folder [evidence] case-42/vm; removed the empty "
                                              "folder [evidence] case-42")
    assert not shell.folders
    shell = FakeShell({"/vmfs/volumes/evidence/case-42/manifest.json": b"{}"})
    shell.folders.update(undo["shell_folders"])
    said = ec.remove_partial(shell, undo)
    assert said == ("removed the empty folder [evidence] case-42/vm; kept the folder [evidence] case-42: it holds "
                    "manifest.json (evidence, or not ours)")


def test_the_api_engines_handler_keeps_a_completed_ssh_copy_and_hands_the_rest_to_this_engine(tmp_path, monkeypatch):
    journal = Journal("case-42", str(tmp_path))
    undo = dict(_undo(), case_id="case-42", journal_dir=str(tmp_path), journal_host=journal.hostname)
    change = journal.record_change(vc.ACTION, undo, "thin clone")
    handler = UNDO_HANDLERS[vc.ACTION]
    seen = []
    monkeypatch.setitem(vc.ENGINE_UNDO, "ssh", lambda u, ctx: seen.append(u) or "handed over")
    assert handler(undo, UndoContext(options={})) == "handed over" and seen == [undo]
    journal.mark_applied(change, copy_id="c0ffee")
    assert handler(undo, UndoContext(options={})).startswith("kept: evidence: ")
    with pytest.raises(DestinationError, match="made by the nfs engine"):
        handler(dict(undo, engine="nfs", copy_id="other"), UndoContext(options={}))


def test_the_undo_without_a_connection_says_what_to_give():
    with pytest.raises(DestinationError, match=re.escape("give teardown its connection (hostname, and ssh")):
        ec.undo_copy(_undo(), UndoContext(options={}))


def test_the_result_carries_the_hosts_read_back():
    item = {"kind": "file", "src": "[s] v.vmem", "dest": "[e] v.vmem", "marker": "[e] v.vmem.dfir-vmcollect.json",
            "state": "absent"}
    hashed = {"[e] v.vmem": [{"src": "[s] v.vmem", "size": 3, "data_bytes": 3, "hole_bytes": 0,
                              "digests": {"sha256": "ab"}, "role": "file", "depth": 0}]}
    fact = {"created": True, "created_folders": [], "copy_id": "c0ffee", "copied_at": "t0", "finished_at": "t1",
            "copy_seconds": 0.1, "dest_size": 3, "dest_size_from": "datastore browser", "thin": None,
            "dest_digests": {"sha256": "ab"}, "verified": True}

    class Host(object):
        datacenter = "ha-datacenter"

        class client(object):  # pylint: disable=invalid-name
            @staticmethod
            def tls_record():
                return {"verified": True}

    r = vc._result(Host(), [item], hashed, {"[e] v.vmem": fact}, 0.0, style=ec.STYLE)
    assert r["engine"] == "ssh" and r["verified"] is True and r["dest_digests"] == {"sha256": "ab"}
    assert r["copied_by"] == "vmkfstools_clone (cp over SSH)" and "openssl dgst" in r["msg"]
    api = vc._result(Host(), [item], hashed, {"[e] v.vmem": dict(fact, dest_digests=None, verified=False)}, 0.0)
    assert api["engine"] == "api" and api["verified"] is False and api["dest_digests"] is None
    assert api["copied_by"] == vc.COPIED_BY_FILE and "over HTTPS" in api["msg"]


class HashingShell(object):
    """A shell whose ``openssl dgst`` answers ``digests`` (path -> {algorithm: hex})."""

    where = "esxi1:22"

    def __init__(self, digests):
        self.digests = digests
        self.asked = []

    def hash_files(self, paths, algorithms):
        self.asked.append((list(paths), list(algorithms)))
        return dict((p, dict((a, self.digests[p][a]) for a in algorithms)) for p in paths)


def test_sources_are_hashed_on_the_host_with_the_identity_of_the_plan():
    flat = "[LocalDS_0] vm/vm-flat.vmdk"
    item = {"source_files": [{"path": flat, "role": "extent", "depth": 0, "size": 1048576,
                              "modified": "Sun, 06 Dec 2026 06:30:22 GMT"}]}
    shell = HashingShell({"/vmfs/volumes/LocalDS_0/vm/vm-flat.vmdk": {"sha256": "aa", "md5": "bb"}})
    r = ec.hash_sources(shell, item, ["sha256", "md5"])[0]
    assert shell.asked == [(["/vmfs/volumes/LocalDS_0/vm/vm-flat.vmdk"], ["sha256", "md5"])]
    assert r["digests"] == {"sha256": "aa", "md5": "bb"} and r["data_bytes"] == 1048576 and r["hole_bytes"] == 0
    assert r["source_identity"] == {"size": 1048576, "modified": "2026-12-06T06:30:22Z", "from": "HEAD"}
    assert r["hashed_by"] == "openssl dgst on esxi1:22" and r["areas_used"]["source"] == "whole file"


def test_the_copy_read_back_on_the_host_must_equal_its_source():
    item = {"kind": "disk", "src": "[s] v.vmdk", "dest": "[e] v.vmdk", "dest_extent": "[e] v-flat.vmdk",
            "equal_to": "[s] v-flat.vmdk"}
    hashed = [{"src": "[s] v.vmdk", "digests": {"sha256": "dd"}}, {"src": "[s] v-flat.vmdk", "digests": {"sha256": "aa"}}]
    same = HashingShell({"/vmfs/volumes/e/v-flat.vmdk": {"sha256": "aa"}})
    assert ec.read_back(same, item, hashed, ["sha256"]) == {"dest_digests": {"sha256": "aa"}, "verified": True}
    other = HashingShell({"/vmfs/volumes/e/v-flat.vmdk": {"sha256": "ff"}})
    with pytest.raises(HashMismatchError, match="does not equal its source .* It got no marker"):
        ec.read_back(other, item, hashed, ["sha256"])
    with pytest.raises(HashMismatchError, match="the evidence copy changed"):
        ec.read_back(other, item, hashed, ["sha256"], existing=True)
    # a consolidated delta: nothing to equal, the clone's digests still returned
    assert ec.read_back(other, dict(item, equal_to=None), hashed, ["sha256"]) == {
        "dest_digests": {"sha256": "ff"}, "verified": False}


def test_the_percent_watcher_reports_each_new_percent_also_across_chunks():
    seen = []
    watch = ec.percent_watcher(seen.append)
    for chunk in (b"Destination disk format: VMFS thin-provisioned\nCloning disk 'x'...\n", b"Clone: 5% do",
                  b"ne.\r", b"Clone: 5% done.\rClone: 30% done.\rClone: 37% done.\rClo", b"ne: 100% done.\n"):
        watch(chunk)
    assert seen == [5, 37, 100]  # the newest of a chunk; a percent split over two chunks counts once
    assert ec.percent_watcher(None) is None


def test_clone_progress_turns_the_hosts_percent_into_bytes(tmp_path):
    path = str(tmp_path / "p.json")
    progress = ProgressFile(path, None, None, interval=0.0)
    report = vc.clone_progress(progress, {"kind": "disk", "virtual_bytes": 8 << 30, "src": "[ds] vm/vm.vmdk",
                                          "dest": "[ev] case/vm.vmdk", "source_files": []})
    report(25)
    state = json.load(open(path))
    assert (state["phase"], state["bytes_done"], state["bytes_total"]) == ("clone", 2 << 30, 8 << 30)
    assert state["src"] == "[ds] vm/vm.vmdk" and state["dest"] == "[ev] case/vm.vmdk"
    report(140)  # never more than the whole
    assert json.load(open(path))["bytes_done"] == 8 << 30
    files = {"kind": "file", "src": "[ds] vm/vm.vmsn", "dest": "[ev] case/vm.vmsn", "source_files": [{"size": 300}]}
    vc.clone_progress(progress, files)(50)
    state = json.load(open(path))
    assert (state["phase"], state["bytes_done"], state["bytes_total"]) == ("copy", 150, 300)
    assert vc.clone_progress(None, files) is None
    vc._hash_progress(progress, "[ds] vm/vm.vmem")(10, 100)  # pylint: disable=protected-access
    state = json.load(open(path))  # the file hashed is named, not the last copy's destination
    assert (state["phase"], state["src"], state["dest"], state["bytes_done"]) == ("hash source", "[ds] vm/vm.vmem", None, 10)
