# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The SSH engine of esxi_iscsi_datastore (plugins/module_utils/_esxi_shell/storage.py) against a fake shell that
records every command: the commands as argv lists (the CHAP secret in the one command that sets it, and masked
there), the readers of partedUtil's answers, the blank check (never formatted without knowing it is blank), the
datastore journaled before the partition table is written, the undo's writer (connected only for a write), and the
engine dispatch of the undo handlers. The whole attach is covered against the lab's shell by
tests/integration/test_esxi_iscsi_datastore_ssh.py."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import VmcollectError
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import parse
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell.host import EsxiShellError
from ansible_collections.dfir.vmcollect.plugins.module_utils._journal.journal import (
    UNDO_HANDLERS,
    Journal,
    JournalError,
    UndoContext,
)

pytest.importorskip("pyVmomi")
from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import storage as ess  # noqa: E402
from ansible_collections.dfir.vmcollect.plugins.module_utils._vsphere import storage as vst  # noqa: E402

SECRET = "s3cr3t 'chap' $ecret"
NAA = "naa.60000000000000000000000000000001"
MIB = 1 << 20
SIZE = 64 * MIB
LAST = SIZE // 512 - 34
UUID = "6a2c1f0e-3b1d6a5c-9f0e-1c2d3e4f5a6b"
CREATED = ("create fs deviceName:'%s:1', fsShortName:'vmfs6', fsName:'dfir-case-1'\n"
           "Successfully created new volume: %s\n" % (NAA, UUID))


class FakeShell(object):
    """Records (argv, secrets) of every command; answers by the argv's first words (a string, or an exception)."""

    where = "esx1:22"

    def __init__(self, answers=None, before=None):
        self.answers = answers or {}
        self.calls = []
        self.before = before  # called with the argv before each command (to look at the journal then)

    def run_secret(self, argv, option, secret, timeout=120):
        """As Shell.run_secret: the secret reaches the program's argv only (recorded so)."""
        return self.run(list(argv) + ["%s=%s" % (option, secret)], timeout=timeout, secrets=(secret,))

    def run(self, argv, timeout=120, stdin=None, secrets=(), ok=(0,)):  # pylint: disable=unused-argument
        self.calls.append((list(argv), tuple(secrets)))
        if self.before:
            self.before(argv)
        for n in range(len(argv), 0, -1):
            answer = self.answers.get(" ".join(argv[:n]))
            if answer is not None:
                if isinstance(answer, Exception):
                    raise answer
                return answer
        return ""

    def argvs(self):
        return [" ".join(a) for a, _s in self.calls]


class Obj(object):
    def __init__(self, moid):
        self._moId = moid  # pylint: disable=invalid-name


class FakeClient(object):
    where = "esx1:443"

    def __init__(self, api_type="HostAgent", version="7.0.3"):
        self._about = {"api_type": api_type, "version": version}

    def about(self):
        return self._about

    @staticmethod
    def secrets():
        return ()


def host():
    return vst.Host(Obj("ha-host"), "esx1.example.org", Obj("storageSystem"), Obj("datastoreSystem"))


def disk(size=SIZE):
    return {"canonical_name": NAA, "size_bytes": size, "block_size": 512, "serial": "SER1", "uuid": "0200-1",
            "device_path": ess.DISKS + NAA, "vendor": "IET", "model": "VIRTUAL-DISK", "operational_state": ["ok"],
            "paths": []}


def ptbl(label="unknown", total=SIZE // 512, parts=()):
    return "%s\n%d 255 63 %d\n%s" % (label, total // (255 * 63), total, "".join(p + "\n" for p in parts))


@pytest.fixture
def journal(tmp_path):
    return Journal("case-1", str(tmp_path / "journal"), hostname="controller")


def shell_run(journal, shell, client=None, check_mode=False):
    return ess.ShellRun(journal, client or FakeClient(), check_mode, (SECRET,), shell=shell)


# -- the commands ------------------------------------------------------------------------------------------------

def test_the_commands_as_argv_and_the_secret_only_where_esxcli_takes_it():
    assert ess.software_iscsi_argv(True) == ["esxcli", "iscsi", "software", "set", "--enabled=true"]
    assert ess.software_iscsi_argv(False)[-1] == "--enabled=false"
    assert ess.send_target_argv("add", "vmhba64", "10.0.0.5", 3260) == [
        "esxcli", "iscsi", "adapter", "discovery", "sendtarget", "add", "-A", "vmhba64", "-a", "10.0.0.5:3260"]
    assert ess.send_target_argv("remove", "vmhba65", "fe80::1", 3261)[-1] == "[fe80::1]:3261"
    assert ess.target_chap_argv("vmhba64", "10.0.0.5", 3260, "dfir", SECRET, "chapRequired") == [
        "esxcli", "iscsi", "adapter", "discovery", "sendtarget", "auth", "chap", "set", "--adapter=vmhba64",
        "--address=10.0.0.5:3260", "--direction=uni", "--authname=dfir", "--secret=" + SECRET, "--level=required"]
    assert ess.target_chap_argv("vmhba64", "10.0.0.5", 3260, inherit=True)[-1] == "--inherit"
    assert ess.target_chap_argv("vmhba64", "10.0.0.5", 3260, level="chapProhibited")[-1] == "--level=prohibited"
    assert ess.adapter_chap_argv("vmhba64", "dfir", SECRET, "chapPreferred") == [
        "esxcli", "iscsi", "adapter", "auth", "chap", "set", "--direction=uni", "--authname=dfir",
        "--secret=" + SECRET, "--level=preferred", "-A", "vmhba64"]
    assert ess.adapter_chap_argv("vmhba64") == ["esxcli", "iscsi", "adapter", "auth", "chap", "set", "--direction=uni",
                                                "--default", "-A", "vmhba64"]
    # written back without a secret (ESXi never returns one)
    assert not [a for a in ess.adapter_chap_argv("vmhba64", "old", level="chapRequired") if "secret" in a]
    assert ess.rescan_argv("vmhba64") == ["esxcli", "storage", "core", "adapter", "rescan", "-A", "vmhba64"]
    assert ess.setptbl_argv(NAA, LAST) == ["partedUtil", "setptbl", "/vmfs/devices/disks/" + NAA, "gpt",
                                           "1 2048 %d %s 0" % (LAST, parse.VMFS_GUID)]
    assert ess.vmkfstools_create_argv("vmfs6", "case 1 [x]", NAA) == [
        "vmkfstools", "-C", "vmfs6", "-S", "case 1 [x]", "/vmfs/devices/disks/%s:1" % NAA]
    with pytest.raises(EsxiShellError, match="not a CHAP level"):
        ess.esxcli_level("chapMaybe")
    with pytest.raises(EsxiShellError, match="not a disk's canonical name"):
        ess.device_path("../sda")


def test_readers_of_the_hosts_answers():
    assert ess.usable_sectors("34 131038\n") == (34, 131038)
    for bad in ("", "34", "34 x", "200 100", "Error: Could not stat device"):
        with pytest.raises(parse.EsxiOutputError, match="getUsableSectors"):
            ess.usable_sectors(bad)
    assert ess.vmfs_type("6.0.0") == "vmfs5" and ess.vmfs_type("5.5") == "vmfs5"
    assert ess.vmfs_type("6.5.0") == ess.vmfs_type("8.0.2") == ess.vmfs_type(None) == "vmfs6"
    assert ess.lacks_command(EsxiShellError("... failed: Error: Unknown command or namespace iscsi adapter x."))
    assert not ess.lacks_command(EsxiShellError("... failed: Error: Invalid value for --level"))
    assert not ess.lacks_command(VmcollectError("Unknown command or namespace"))
    table = parse.partedutil_getptbl(ptbl("gpt", parts=["1 2048 %d %s vmfs 0" % (LAST, parse.VMFS_GUID)]))
    assert ess.partition_texts(table) == ["1 (vmfs, sectors 2048-%d)" % LAST]


# -- the blank check ----------------------------------------------------------------------------------------------

def test_a_blank_lun_passes_the_check(journal):
    shell = FakeShell({"partedUtil getptbl": ptbl()})
    assert shell_run(journal, shell).check_blank(host(), disk())["partitions"] == []
    assert shell.argvs() == ["partedUtil getptbl /vmfs/devices/disks/" + NAA]


@pytest.mark.parametrize("answer, said", [
    (ptbl("gpt", parts=["1 2048 %d %s vmfs 0" % (LAST, parse.VMFS_GUID)]),
     "holds partition 1 (vmfs, sectors 2048-%d) already (a VMFS of an earlier run?); it is never formatted again" % LAST),
    (ptbl("msdos", parts=["1 63 4000 131 0", "2 4001 8000 7 128"]),
     "holds partitions 1 (131, sectors 63-4000), 2 (7, sectors 4001-8000) already"),
    (EsxiShellError("The command `partedUtil getptbl` failed on esx1:22 with exit code 1: Error: Could not stat."),
     "`partedUtil getptbl` on esx1:22 did not list the partitions of the LUN %s (The command" % NAA),
    ("gpt\nrubbish\n", "did not list the partitions of the LUN %s (The output of `partedUtil getptbl` could not be "
                       "read" % NAA),
    (ptbl(total=SIZE // 512 * 2), "gives the device %s 262144 sectors of 512 bytes, 134217728 bytes (128 MiB), "
                                  "while the API gives the LUN 67108864 bytes (64 MiB)" % NAA),
])
def test_a_lun_with_partitions_or_an_unknown_table_is_never_formatted(journal, answer, said):
    shell = FakeShell({"partedUtil getptbl": answer})
    with pytest.raises(EsxiShellError) as err:
        shell_run(journal, shell).check_blank(host(), disk())
    assert said in err.value.message
    assert "nothing was formatted" in err.value.message
    assert shell.argvs() == ["partedUtil getptbl /vmfs/devices/disks/" + NAA]


# -- the datastore -------------------------------------------------------------------------------------------------

def test_the_datastore_is_journaled_before_the_partition_table_is_written(journal, monkeypatch):
    seen = []

    def look(argv):
        if argv[:2] == ["partedUtil", "setptbl"]:
            seen.append([(r["action"], r["undo"]["engine"], r["applied"]) for r in journal.pending()])

    view = {"name": "dfir-case-1", "moref": UUID, "vmfs_uuid": UUID, "vmfs_version": "6.82", "extents": [NAA]}
    monkeypatch.setattr(vst, "datastores_named", lambda client, name: [view] if name == "dfir-case-1" else [])
    shell = FakeShell({"partedUtil getUsableSectors": "34 %d\n" % LAST, "vmkfstools -C": CREATED}, before=look)
    run = shell_run(journal, shell)
    assert run.create_datastore(host(), disk(), "dfir-case-1", "10.0.0.5", 3260) is view
    assert seen == [[("vsphere.vmfs_datastore", "ssh", False)]]
    assert shell.argvs() == [
        "partedUtil getUsableSectors /vmfs/devices/disks/" + NAA,
        "partedUtil setptbl /vmfs/devices/disks/%s gpt 1 2048 %d %s 0" % (NAA, LAST, parse.VMFS_GUID),
        "vmkfstools -C vmfs6 -S dfir-case-1 /vmfs/devices/disks/%s:1" % NAA]
    (rec,) = journal.pending()
    assert rec["applied"] and rec["undo"]["ssh_host"] == "esx1:22" and rec["undo"]["fs_type"] == "vmfs6"
    assert rec["undo"]["lun"]["canonical_name"] == NAA and rec["undo"]["endpoint"] == "esx1:443"
    assert run.changes[-1].startswith("made the VMFS datastore 'dfir-case-1' (%s, VMFS 6.82" % UUID)


def test_a_failed_vmkfstools_says_the_partition_stays_and_a_volume_the_api_never_lists_is_said(journal, monkeypatch):
    monkeypatch.setattr(ess, "DATASTORE_WAIT", 0.0)
    monkeypatch.setattr(vst, "datastores_named", lambda client, name: [])
    shell = FakeShell({"partedUtil getUsableSectors": "34 %d" % LAST,
                       "vmkfstools -C": EsxiShellError("The command `vmkfstools -C` failed: Error: label exists.")})
    with pytest.raises(EsxiShellError) as err:
        shell_run(journal, shell).create_datastore(host(), disk(), "dfir-case-1", "10.0.0.5", 3260)
    assert "keeps the empty VMFS partition written just before" in err.value.message
    assert not journal.pending()[0]["applied"]  # its undo finds no volume and says so
    shell = FakeShell({"partedUtil getUsableSectors": "34 %d" % LAST, "vmkfstools -C": CREATED})
    with pytest.raises(EsxiShellError, match="does not list it as a datastore"):
        shell_run(journal, shell).create_datastore(host(), disk(), "dfir-case-1", "10.0.0.5", 3260)
    assert journal.pending()[0]["applied"]
    shell = FakeShell({"partedUtil getUsableSectors": "34 %d" % LAST, "vmkfstools -C": "Error: something\n"})
    with pytest.raises(EsxiShellError, match="ended without naming the new volume"):
        shell_run(journal, shell).create_datastore(host(), disk(), "dfir-case-1", "10.0.0.5", 3260)
    shell = FakeShell({"partedUtil getUsableSectors": "34 3000"})
    with pytest.raises(EsxiShellError, match="too few usable sectors"):
        shell_run(journal, shell).create_datastore(host(), disk(), "dfir-case-1", "10.0.0.5", 3260)
    assert shell.argvs() == ["partedUtil getUsableSectors /vmfs/devices/disks/" + NAA]


def test_an_esx_5_host_gets_vmfs5(journal, monkeypatch):
    monkeypatch.setattr(vst, "datastores_named", lambda client, name: [
        {"name": name, "moref": "x", "vmfs_uuid": UUID, "vmfs_version": "5.61", "extents": [NAA]}])
    shell = FakeShell({"partedUtil getUsableSectors": "34 %d" % LAST, "vmkfstools -C": CREATED})
    shell_run(journal, shell, FakeClient(version="6.0.0")).create_datastore(host(), disk(), "d", "10.0.0.5", 3260)
    assert shell.argvs()[-1].startswith("vmkfstools -C vmfs5 -S d ")


# -- CHAP ------------------------------------------------------------------------------------------------------

def test_chap_on_the_send_target_with_the_secret_masked_and_a_host_without_the_command(journal):
    shell = FakeShell()
    hba = {"device": "vmhba64"}
    run = shell_run(journal, shell)
    assert run._set_target_chap(host(), hba, "10.0.0.5", 3260, "dfir", SECRET, "chapRequired") is None  # pylint: disable=protected-access
    ((argv, secrets),) = shell.calls
    assert "--secret=" + SECRET in argv and secrets == (SECRET,)
    shell = FakeShell({"esxcli iscsi adapter discovery sendtarget auth": EsxiShellError(
        "The command `esxcli ...` failed on esx1:22 with exit code 1: Error: Unknown command or namespace iscsi "
        "adapter discovery sendtarget auth chap set.")})
    refused = shell_run(journal, shell)._set_target_chap(host(), hba, "10.0.0.5", 3260, "dfir", SECRET,  # pylint: disable=protected-access
                                                         "chapRequired")
    assert refused == "its esxcli has no `iscsi adapter discovery sendtarget auth chap set`"
    shell = FakeShell({"esxcli iscsi adapter discovery sendtarget auth": EsxiShellError("Error: Invalid level")})
    with pytest.raises(EsxiShellError, match="Invalid level"):
        shell_run(journal, shell)._set_target_chap(host(), hba, "10.0.0.5", 3260, "dfir", SECRET,  # pylint: disable=protected-access
                                                   "chapRequired")
    shell = FakeShell()
    shell_run(journal, shell)._set_adapter_chap(host(), hba, "dfir", SECRET, "chapPreferred")  # pylint: disable=protected-access
    assert shell.calls == [(ess.adapter_chap_argv("vmhba64", "dfir", level="chapPreferred") + ["--secret=" + SECRET],
                            (SECRET,))]


def test_the_ssh_engine_changes_a_standalone_host_only(journal):
    shell = FakeShell()
    with pytest.raises(EsxiShellError, match=r"esx1:443 is a vCenter; the SSH engine changes a standalone ESXi host"):
        ess.adapter(journal, FakeClient(api_type="VirtualCenter"), shell, esxi_hostname="esx1")
    assert shell.calls == [] and not journal.exists()


# -- undo ---------------------------------------------------------------------------------------------------------

def test_the_undo_writer_connects_only_to_write_and_puts_chap_back_as_recorded():
    shells = []

    def connect():
        shells.append(FakeShell({"esxcli storage core device": EsxiShellError(
            "failed: Error: Unknown command or namespace storage core device set")}))
        return shells[-1]

    writer = ess.ShellWriter(connect)
    assert shells == []  # a check-mode undo only reads through the API
    writer.put_chap("vmhba64", "send_target", "10.0.0.5", 3260, {"chap_inherited": True})
    writer.put_chap("vmhba64", "send_target", "10.0.0.5", 3260, {"chap_auth_enabled": False})
    writer.put_chap("vmhba64", "send_target", "10.0.0.5", 3260,
                    {"chap_auth_enabled": True, "chap_name": "old", "chap_type": "chapRequired"})
    writer.put_chap("vmhba64", "adapter", None, None, {"chap_auth_enabled": False, "chap_type": "chapProhibited"})
    writer.unmount(UUID, "dfir-case-1")
    assert writer.detach({"canonical_name": NAA}) == "no such command in the host's esxcli"
    writer.remove_send_target("vmhba64", "10.0.0.5", 3260)
    writer.remove_static_targets("vmhba64", [{"address": "10.0.0.5", "port": 3260, "iqn": "iqn.x:t"}])
    writer.set_software_iscsi(False)
    assert len(shells) == 1
    chap = "esxcli iscsi adapter discovery sendtarget auth chap set --adapter=vmhba64 --address=10.0.0.5:3260 " \
           "--direction=uni "
    assert shells[0].argvs() == [
        chap + "--inherit", chap + "--level=prohibited", chap + "--authname=old --level=required",
        "esxcli iscsi adapter auth chap set --direction=uni --default -A vmhba64",
        "esxcli storage filesystem unmount -u " + UUID,
        "esxcli storage core device set --state=off -d " + NAA,
        "esxcli iscsi adapter discovery sendtarget remove -A vmhba64 -a 10.0.0.5:3260",
        "esxcli iscsi adapter discovery statictarget remove -A vmhba64 -a 10.0.0.5:3260 -n iqn.x:t",
        "esxcli iscsi software set --enabled=false"]
    assert not [c for c in shells[0].calls if c[1]]  # no secret in any undo command


def test_undo_records_go_to_the_engine_that_made_them(monkeypatch, tmp_path):
    record = {"endpoint": "esx1:443", "host_moref": "ha-host", "host_name": "esx1", "engine": "ssh",
              "ssh_host": "esx1:22"}
    seen = []
    monkeypatch.setitem(vst.ENGINE_UNDO, "ssh", lambda fn, what, undo, ctx: seen.append((fn.__name__, what(undo)))
                        or "done")
    assert UNDO_HANDLERS["vsphere.iscsi_adapter"](record, UndoContext(options={})) == "done"
    assert seen == [("disable_adapter", "software iSCSI of host esx1")]
    journal = Journal("case-2", str(tmp_path / "j"), hostname="controller")
    journal.record_change("vsphere.iscsi_adapter", dict(record, engine="telnet"), "software iSCSI", module="m")
    with pytest.raises(JournalError, match="changed through the host's telnet engine, whose undo this version does "
                                           "not have loaded; nothing was changed"):
        journal.teardown()


def test_the_ssh_undo_needs_teardowns_connection():
    undo = {"endpoint": "esx1:443", "host_moref": "ha-host", "host_name": "esx1", "engine": "ssh",
            "ssh_host": "esx1:22"}
    with pytest.raises(EsxiShellError, match=r"^Software iSCSI of host esx1 is on esx1:443 and was changed through its "
                                             r"shell over SSH \(esx1:22\): give teardown its connection"):
        UNDO_HANDLERS["vsphere.iscsi_adapter"](undo, UndoContext(options={}))
