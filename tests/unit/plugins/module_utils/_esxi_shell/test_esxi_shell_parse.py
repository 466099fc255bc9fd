# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The readers of ESXi shell output, on the real captures of the project's shared notes (and the forms they leave
unconfirmed)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._esxi_shell import parse

GETALLVMS = """Vmid      Name                        File                           Guest OS        Version   Annotation
1424   sap-router   [datastore1 (4)] sap-router/win2k8x64.vmx   winLonghorn64Guest   vmx-07
7      Win Srv [prod] 01   [LocalDS_0] Win Srv [prod] 01/Win Srv [prod] 01.vmx   windows9Server64Guest   vmx-14   front desk
"""


def test_getallvms_splits_names_with_spaces_and_brackets_from_their_file():
    vms = parse.getallvms(GETALLVMS)
    assert [v["vmid"] for v in vms] == [1424, 7]
    assert vms[0] == {"vmid": 1424, "name": "sap-router", "vmx": "[datastore1 (4)] sap-router/win2k8x64.vmx",
                      "datastore": "datastore1 (4)", "path": "sap-router/win2k8x64.vmx",
                      "guest_os": "winLonghorn64Guest", "version": "vmx-07", "annotation": ""}
    assert vms[1]["name"] == "Win Srv [prod] 01" and vms[1]["path"] == "Win Srv [prod] 01/Win Srv [prod] 01.vmx"
    assert vms[1]["annotation"] == "front desk"


def test_getallvms_with_the_hosts_datastores_needs_no_column_gap():
    line = "3 web [a] b [LocalDS_0] web/web.vmx otherGuest vmx-13"
    (vm,) = parse.getallvms(line, datastores=["LocalDS_0", "datastore1"])
    assert vm["name"] == "web [a] b" and vm["datastore"] == "LocalDS_0" and vm["path"] == "web/web.vmx"


def test_getallvms_refuses_what_it_cannot_read():
    with pytest.raises(parse.EsxiOutputError) as err:
        parse.getallvms("Vmid Name File Guest OS Version Annotation\nno vm here\n")
    assert "vim-cmd vmsvc/getallvms" in err.value.message and "no vm here" in err.value.message


SNAPSHOTS = """Get Snapshot:
|-ROOT
--Snapshot Name        : snap01
--Snapshot Id        : 1
--Snapshot Desciption  : snap01 description
--Snapshot Created On  : 2/23/2015 18:12:50
--Snapshot State       : powered on
--|-CHILD
----Snapshot Name        : snap02
----Snapshot Id        : 2
----Snapshot Desciption  :
----Snapshot Created On  : 12/1/2014 14:39:4
----Snapshot State       : powered off
"""


def test_snapshot_get_reads_the_tree_vmwares_spelling_and_unpadded_dates():
    snaps = parse.snapshot_get(SNAPSHOTS)
    assert [(s["name"], s["id"], s["depth"], s["parent_id"]) for s in snaps] == [("snap01", 1, 0, None),
                                                                                 ("snap02", 2, 1, 1)]
    assert snaps[0]["description"] == "snap01 description" and snaps[0]["state"] == "powered on"
    assert snaps[0]["created"] == "2015-02-23T18:12:50Z"
    assert snaps[1]["created"] == "2014-12-01T14:39:04Z" and snaps[1]["created_text"] == "12/1/2014 14:39:4"
    assert snaps[1]["description"] == ""


def test_snapshot_get_with_no_snapshot_is_empty_and_other_text_refused():
    assert parse.snapshot_get("Get Snapshot:\n") == []
    with pytest.raises(parse.EsxiOutputError):
        parse.snapshot_get("Get Snapshot:\n|-ROOT\nsomething else\n")
    with pytest.raises(parse.EsxiOutputError):
        parse.snapshot_get("")


def test_vim_fault_block():
    text = '(vim.fault.NotFound) {\n   faultCause = (vmodl.MethodFault) null,\n   msg = "Unable to find a VM \\"x\\"",\n}\n'
    assert parse.vim_fault(text) == ("vim.fault.NotFound", 'Unable to find a VM "x"')
    assert parse.vim_fault("Create Snapshot:\n") is None


def test_vmkfstools_clone_progress_and_errors():
    ok = ("Destination disk format: VMFS thin-provisioned\nCloning disk '/vmfs/volumes/Virtual Machines/M.vmdk'...\r"
          "Clone: 12% done.\rClone: 100% done.\n")
    r = parse.vmkfstools_clone(ok)
    assert r == {"format": "VMFS thin-provisioned", "source": "/vmfs/volumes/Virtual Machines/M.vmdk", "percent": 100,
                 "done": True, "error": None}
    bad = parse.vmkfstools_clone("Destination disk format: VMFS thin-provisioned\nFailed to clone disk: The file "
                                 "already exists (39).\n", rc=1)
    assert not bad["done"] and bad["error"].startswith("Failed to clone disk")
    assert not parse.vmkfstools_clone("Clone: 100% done.\n", rc=1)["done"]


def test_vmkfstools_create_gives_the_volume_uuid():
    text = ('Creating vmfs6 file system on "mpx.vmhba32:C0:T0:L0:8" with blockSize 1048576, unmapGranularity 1048576, '
            'unmapPriority default and volume label "UsbDatastore".\n'
            "Successfully created new volume: 60f44778-7a632b60-7e71-ac1f6be5200c\n")
    assert parse.vmkfstools_create(text) == "60f44778-7a632b60-7e71-ac1f6be5200c"
    assert parse.vmkfstools_create("Error: Read-only file system") is None


def test_partedutil_getptbl_gpt_and_the_vmfs_spec():
    t = parse.partedutil_getptbl("gpt\n16970 255 63 272629760\n1 2048 272629726 AA31E02A400F11DB9590000C2911D1B8 vmfs 0\n")
    assert t["label"] == "gpt" and t["total_sectors"] == 272629760
    assert t["partitions"] == [{"number": 1, "start": 2048, "end": 272629726, "guid": parse.VMFS_GUID, "type": "vmfs",
                                "attribute": 0}]
    assert parse.vmfs_partition_spec(272629726) == "1 2048 272629726 AA31E02A400F11DB9590000C2911D1B8 0"
    assert parse.partedutil_getptbl("unknown\n1024 255 63 16777216\n")["partitions"] == []
    with pytest.raises(parse.EsxiOutputError):
        parse.partedutil_getptbl("Error: Could not stat device\n")


def test_esxcli_csv_drops_the_trailing_empty_column():
    text = "Adapter,Driver,State,UID,Description,\nvmhba64,iscsi_vmk,online,iqn.1998-01.com.vmware:h-1,iSCSI Software Adapter,\n"
    assert parse.esxcli_csv(text) == [{"Adapter": "vmhba64", "Driver": "iscsi_vmk", "State": "online",
                                       "UID": "iqn.1998-01.com.vmware:h-1", "Description": "iSCSI Software Adapter"}]
    assert parse.esxcli_csv("") == []
    with pytest.raises(parse.EsxiOutputError):
        parse.esxcli_csv("A,B\n1,2,3\n")
    assert parse.esxcli_bool("True") is True and parse.esxcli_bool("false") is False
    with pytest.raises(parse.EsxiOutputError):
        parse.esxcli_bool("maybe")
