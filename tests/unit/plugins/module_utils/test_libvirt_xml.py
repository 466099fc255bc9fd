# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the libvirt client's pure parts: domain, snapshot and checkpoint XML, states,
units, and qemu-img on real images. No libvirt needed."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import shutil
import stat
import subprocess
import sys

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import libvirt as lv
from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import EvidenceSourceError, InvalidInputError

MIB = 1024 * 1024

# The live XML of a running VM (libvirt 9.0 style): a qcow2 disk over a 2-level chain, a raw
# disk, a block device, a cdrom with media and one without, an rbd, nbd and iSCSI disk, a
# read-only + shareable disk, a transient disk, serials and boot orders; name with spaces and quotes.
LIVE_XML = """
<domain type='kvm' id='7'>
  <name>web 01 it&apos;s &quot;prod&quot;</name>
  <uuid>6c616276-6d63-4000-8000-76696374696d</uuid>
  <title>Front end</title>
  <description>suspect &lt;1&gt;</description>
  <maxMemory slots='16' unit='KiB'>8388608</maxMemory>
  <memory unit='KiB'>2097152</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/web01_VARS.fd</nvram>
    <boot dev='hd'/>
  </os>
  <features><acpi/><vmcoreinfo state='on'/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/web 01 top.qcow2' index='3'/>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/web01-mid.qcow2'/>
        <backingStore type='block' index='1'>
          <format type='raw'/>
          <source dev='/dev/vg0/base'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <serial>SER-vda</serial>
      <boot order='1'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/data.raw' index='4'/>
      <backingStore/>
      <target dev='vdb' bus='virtio'/>
      <alias name='virtio-disk1'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/mapper/vg0-web01' index='5'/>
      <backingStore/>
      <target dev='sda' bus='scsi'/>
      <boot order='2'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/isos/debian 12.iso' index='6'/>
      <backingStore/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sdc' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/web01-data' index='7'>
        <host name='mon1.example.org' port='6789'/>
        <host name='mon2.example.org' port='6789'/>
      </source>
      <auth username='libvirt'><secret type='ceph' usage='client.libvirt'/></auth>
      <target dev='vdc' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source protocol='nbd' name='export1' index='8'>
        <host transport='unix' socket='/run/nbd/web01.sock'/>
      </source>
      <backingStore type='network' index='9'>
        <format type='raw'/>
        <source protocol='nbd' name='base'><host name='nbd.example.org' port='10809'/></source>
        <backingStore/>
      </backingStore>
      <target dev='vdd' bus='virtio'/>
    </disk>
    <disk type='network' device='lun'>
      <driver name='qemu' type='raw'/>
      <source protocol='iscsi' name='iqn.2013-07.com.example:storage/1'>
        <host name='10.0.0.5' port='3260'/>
      </source>
      <target dev='sdd' bus='scsi'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/shared/cluster.img'/>
      <target dev='vde' bus='virtio'/>
      <readonly/>
      <shareable/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/scratch.qcow2'/>
      <target dev='vdf' bus='virtio'/>
      <transient shareBacking='yes'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='default' volume='web01-logs.qcow2'/>
      <target dev='vdg' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
"""

# The inactive XML of a VM that is not running: no ids, no backingStore at all.
INACTIVE_XML = """<domain type='qemu'>
  <name>vmc-test-vminfo it&apos;s &quot;x&quot;</name>
  <uuid>e92f7e90-598c-4850-b239-acc5f6e3cf20</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type><kernel>/boot/vmlinuz</kernel></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/images/top.qcow2'/>
      <driver name='qemu' type='qcow2'/>
      <target dev='vda' bus='virtio'/>
      <transient/>
    </disk>
  </devices>
</domain>"""


@pytest.fixture(scope="module")
def live():
    return lv.parse_domain_xml(LIVE_XML)


def disk(info, target):
    found = [d for d in info["disks"] + info["skipped_disks"] if d["target"] == target]
    assert len(found) == 1, target
    return found[0]


def test_domain_level_facts(live):
    assert live["name"] == "web 01 it's \"prod\""
    assert live["uuid"] == "6c616276-6d63-4000-8000-76696374696d"
    assert live["id"] == 7
    assert live["virt_type"] == "kvm"
    assert live["title"] == "Front end"
    assert live["description"] == "suspect <1>"
    assert live["memory_bytes"] == 2 * 1024 * MIB
    assert live["current_memory_bytes"] == 1024 * MIB
    assert live["max_memory_bytes"] == 8 * 1024 * MIB
    assert (live["vcpus"], live["vcpus_current"]) == (4, 2)
    assert live["os"] == {"type": "hvm", "arch": "x86_64", "machine": "pc-q35-7.2", "firmware": "efi",
                          "loader": "/usr/share/OVMF/OVMF_CODE_4M.fd",
                          "nvram": "/var/lib/libvirt/qemu/nvram/web01_VARS.fd",
                          "kernel": None, "initrd": None, "cmdline": None}
    assert live["vmcoreinfo"] is True


def test_disks_in_xml_order_cdroms_apart(live):
    assert [d["target"] for d in live["disks"]] == ["vda", "vdb", "sda", "vdc", "vdd", "sdd", "vde", "vdf", "vdg"]
    assert [d["target"] for d in live["skipped_disks"]] == ["sdb", "sdc"]
    assert all(d["skipped"] is False and d["reason"] is None for d in live["disks"])
    assert all(d["skipped"] is True and d["reason"] == "cdrom" for d in live["skipped_disks"])


def test_qcow2_disk_with_two_level_chain(live):
    vda = disk(live, "vda")
    assert (vda["type"], vda["device"], vda["bus"], vda["format"]) == ("file", "disk", "virtio", "qcow2")
    assert vda["path"] == "/var/lib/libvirt/images/web 01 top.qcow2"
    assert (vda["driver_name"], vda["cache"]) == ("qemu", "none")
    assert (vda["serial"], vda["boot_order"], vda["alias"]) == ("SER-vda", 1, "virtio-disk0")
    assert vda["backing_chain_from"] == "libvirt"
    assert vda["backing_chain"] == [
        lv.chain_entry("file", "/var/lib/libvirt/images/web01-mid.qcow2", "qcow2"),
        lv.chain_entry("block", "/dev/vg0/base", "raw"),
    ]
    assert (vda["readonly"], vda["shareable"], vda["transient"]) == (False, False, False)
    # sizes are domain_info's job
    assert (vda["capacity"], vda["allocation"], vda["physical"], vda["sizes_from"]) == (None, None, None, None)


def test_raw_disk_known_to_have_no_chain(live):
    vdb = disk(live, "vdb")
    assert (vdb["type"], vdb["format"], vdb["path"]) == ("file", "raw", "/var/lib/libvirt/images/data.raw")
    assert vdb["backing_chain"] == [] and vdb["backing_chain_from"] == "libvirt"
    assert vdb["serial"] is None and vdb["boot_order"] is None


def test_block_device_disk(live):
    sda = disk(live, "sda")
    assert (sda["type"], sda["path"], sda["bus"], sda["format"], sda["boot_order"]) == \
        ("block", "/dev/mapper/vg0-web01", "scsi", "raw", 2)


def test_network_disks(live):
    rbd = disk(live, "vdc")
    assert (rbd["type"], rbd["path"], rbd["source_protocol"], rbd["source_name"]) == \
        ("network", None, "rbd", "pool/web01-data")
    assert rbd["source_hosts"] == [
        {"name": "mon1.example.org", "port": 6789, "transport": None, "socket": None},
        {"name": "mon2.example.org", "port": 6789, "transport": None, "socket": None},
    ]
    assert rbd["backing_chain_from"] is None  # no <backingStore> in the XML: unknown, not empty
    nbd = disk(live, "vdd")
    assert (nbd["source_protocol"], nbd["source_name"], nbd["format"]) == ("nbd", "export1", "qcow2")
    assert nbd["source_hosts"] == [{"name": None, "port": None, "transport": "unix", "socket": "/run/nbd/web01.sock"}]
    assert nbd["backing_chain"] == [lv.chain_entry("network", None, "raw", "nbd", "base")]
    iscsi = disk(live, "sdd")
    assert (iscsi["device"], iscsi["source_protocol"], iscsi["source_name"]) == \
        ("lun", "iscsi", "iqn.2013-07.com.example:storage/1")
    assert iscsi["source_hosts"][0]["name"] == "10.0.0.5" and iscsi["source_hosts"][0]["port"] == 3260


def test_cdrom_with_and_without_media(live):
    with_media, empty = disk(live, "sdb"), disk(live, "sdc")
    assert (with_media["device"], with_media["path"], with_media["readonly"]) == ("cdrom", "/isos/debian 12.iso", True)
    assert (empty["device"], empty["type"], empty["path"]) == ("cdrom", "file", None)
    assert empty["skipped"] and empty["reason"] == "cdrom"


def test_readonly_shareable_and_transient_disks(live):
    vde = disk(live, "vde")
    assert (vde["readonly"], vde["shareable"], vde["transient"]) == (True, True, False)
    vdf = disk(live, "vdf")
    assert (vdf["readonly"], vdf["shareable"], vdf["transient"], vdf["transient_share_backing"]) == \
        (False, False, True, True)


def test_volume_disk(live):
    vdg = disk(live, "vdg")
    assert (vdg["type"], vdg["path"], vdg["source_pool"], vdg["source_volume"]) == \
        ("volume", None, "default", "web01-logs.qcow2")


def test_inactive_xml_defaults():
    info = lv.parse_domain_xml(INACTIVE_XML)
    assert info["name"] == "vmc-test-vminfo it's \"x\""
    assert info["id"] is None
    assert info["memory_bytes"] == info["current_memory_bytes"] == 64 * MIB
    assert info["max_memory_bytes"] is None
    assert (info["vcpus"], info["vcpus_current"]) == (1, 1)
    assert info["os"]["kernel"] == "/boot/vmlinuz" and info["os"]["arch"] is None
    assert info["vmcoreinfo"] is False
    vda = info["disks"][0]
    assert vda["backing_chain"] == [] and vda["backing_chain_from"] is None
    assert vda["transient"] and not vda["transient_share_backing"]
    assert vda["alias"] is None


def test_vmcoreinfo_off_is_false():
    xml = INACTIVE_XML.replace("<devices>", "<features><vmcoreinfo state='off'/></features><devices>")
    assert lv.parse_domain_xml(xml)["vmcoreinfo"] is False


@pytest.mark.parametrize("value,unit,expected", [
    ("262144", "KiB", 256 * MIB), ("262144", None, 256 * MIB), ("256", "MiB", 256 * MIB), ("256", "M", 256 * MIB),
    ("1", "G", 1024 * MIB), ("1", "GB", 10 ** 9), ("512", "b", 512), ("512", "bytes", 512), ("2", "KB", 2000),
    ("1", "TiB", 1024 ** 4), ("1", "k", 1024),
])
def test_memory_units(value, unit, expected):
    assert lv.to_bytes(value, unit) == expected


def test_unknown_memory_unit_and_bad_xml_are_sentences():
    with pytest.raises(InvalidInputError, match="unit 'parsecs'"):
        lv.to_bytes("1", "parsecs")
    with pytest.raises(InvalidInputError, match="not well-formed"):
        lv.parse_domain_xml("<domain><name>x</domain>")
    with pytest.raises(InvalidInputError, match="not a libvirt <domain>"):
        lv.parse_domain_xml("<network/>")


@pytest.mark.parametrize("state,reason,expected", [
    (1, 1, ("running", "booted")), (3, 1, ("paused", "user")), (3, 5, ("paused", "I/O error")),
    (5, 2, ("shut off", "destroyed")), (5, 0, ("shut off", "unknown")), (6, 1, ("crashed", "panicked")),
    (7, 0, ("pmsuspended", "unknown")), (4, 1, ("in shutdown", "user")), (1, 99, ("running", "reason 99")),
    (42, 0, ("unknown state 42", "reason 0")),
])
def test_power_state_words(state, reason, expected):
    assert lv.power_state(state, reason) == expected


DISK_ONLY_SNAPSHOT = """<domainsnapshot>
  <name>s1 "before"</name>
  <description>taken by vmcollect</description>
  <state>disk-snapshot</state>
  <parent><name>s0</name></parent>
  <creationTime>1795292353</creationTime>
  <memory snapshot='no'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'>
      <driver type='qcow2'/><source file='/images/s1.qcow2'/>
    </disk>
    <disk name='vdb' snapshot='no'/>
  </disks>
  <domain type='qemu'><name>x</name><devices/></domain>
</domainsnapshot>"""

MEMORY_SNAPSHOT = """<domainsnapshot>
  <name>full</name><state>running</state><creationTime>1700000000</creationTime>
  <memory snapshot='external' file='/images/full.mem'/>
  <disks><disk name='vda' snapshot='external'><source file='/images/full.qcow2'/></disk></disks>
</domainsnapshot>"""


def test_disk_only_snapshot():
    snap = lv.parse_snapshot_xml(DISK_ONLY_SNAPSHOT, current=1)
    assert snap == {
        "name": 's1 "before"', "description": "taken by vmcollect", "created": 1795292353,
        "created_utc": "2026-11-21T20:19:13Z", "state": "disk-snapshot", "parent": "s0", "current": True,
        "memory": "no", "memory_file": None, "disk_only": True,
        "disks": [{"target": "vda", "snapshot": "external", "path": "/images/s1.qcow2"},
                  {"target": "vdb", "snapshot": "no", "path": None}],
    }


def test_snapshot_with_memory():
    snap = lv.parse_snapshot_xml(MEMORY_SNAPSHOT)
    assert (snap["memory"], snap["memory_file"], snap["disk_only"], snap["current"], snap["parent"]) == \
        ("external", "/images/full.mem", False, False, None)
    old = lv.parse_snapshot_xml("<domainsnapshot><name>o</name><state>running</state></domainsnapshot>")
    assert (old["memory"], old["disk_only"], old["created"]) == ("internal", False, None)


def test_checkpoint():
    cp = lv.parse_checkpoint_xml("""<domaincheckpoint><name>c2</name><parent><name>c1</name></parent>
      <creationTime>1795292363</creationTime>
      <disks><disk name='vda' checkpoint='bitmap' bitmap='c2'/><disk name='vdb' checkpoint='no'/></disks>
      </domaincheckpoint>""")
    assert cp == {"name": "c2", "description": None, "created": 1795292363, "created_utc": "2026-11-21T20:19:23Z",
                  "parent": "c1", "disks": [{"target": "vda", "checkpoint": "bitmap", "bitmap": "c2"},
                                            {"target": "vdb", "checkpoint": "no", "bitmap": None}]}


def test_normalize_uuid():
    assert lv.normalize_uuid("{6C616276-6D63-4000-8000-76696374696D}") == "6c616276-6d63-4000-8000-76696374696d"
    with pytest.raises(InvalidInputError, match="is not a UUID"):
        lv.normalize_uuid("vmc-victim")


def test_imports_without_libvirt():
    """ansible-test's import sanity test loads module_utils without libvirt installed."""
    code = ("import sys; sys.modules['libvirt'] = None\n"
            "from ansible_collections.dfir.vmcollect.plugins.module_utils._kvm import libvirt as lv\n"
            "assert not lv.HAS_LIBVIRT and 'libvirt' in lv.LIBVIRT_IMPORT_ERROR\n"
            "try:\n"
            "    lv.require_libvirt()\n"
            "except lv.LibvirtError as exc:\n"
            "    assert 'python3-libvirt' in exc.message\n"
            "else:\n"
            "    raise AssertionError('no error')\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))


# ---------------------------------------------------------------- qemu-img on real images

QEMU_IMG = shutil.which("qemu-img")
needs_qemu_img = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img is not installed (qemu-utils)")


def qemu_img(*args):
    subprocess.run([QEMU_IMG] + list(args), check=True, stdout=subprocess.DEVNULL)


@needs_qemu_img
def test_qemu_img_chain_of_two_levels(tmp_path):
    base, mid, top = str(tmp_path / "base.raw"), str(tmp_path / "mid.qcow2"), str(tmp_path / "top, disk:1.qcow2")
    qemu_img("create", "-q", "-f", "raw", base, "16M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid)  # relative backing name
    qemu_img("create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top)
    sizes = lv.qemu_img_sizes(QEMU_IMG, top, "qcow2")
    assert sizes["capacity"] == 16 * MIB
    assert sizes["physical"] == os.path.getsize(top)
    assert 0 < sizes["allocation"] < MIB
    chain = [(c["path"], c["format"], c["type"]) for c in sizes["backing_chain"]]
    assert chain == [(mid, "qcow2", "file"), (base, "raw", "file")]
    assert sizes["backing_chain"][1]["capacity"] == 16 * MIB


@needs_qemu_img
def test_qemu_img_never_probes_a_raw_disk(tmp_path):
    """A guest can write a qcow2 header into its raw disk: it must still be read as raw."""
    fake = str(tmp_path / "guest-wrote-qcow2.raw")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", fake, "1M")
    sizes = lv.qemu_img_sizes(QEMU_IMG, fake, "raw")
    assert sizes["backing_chain"] == []
    assert sizes["capacity"] != MIB  # the qcow2 header's virtual size would be 1 MiB
    assert sizes["capacity"] == (os.path.getsize(fake) + 511) // 512 * 512  # QEMU rounds raw up to sectors
    assert lv.qemu_img_sizes(QEMU_IMG, fake, None)["backing_chain"] == []  # no format = libvirt's raw


@needs_qemu_img
def test_qemu_img_errors_are_sentences(tmp_path):
    missing = str(tmp_path / "gone.qcow2")
    with pytest.raises(EvidenceSourceError, match="cannot be read: No such file"):
        lv.qemu_img_sizes(QEMU_IMG, missing, "qcow2")
    raw = tmp_path / "plain.raw"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(EvidenceSourceError) as err:
        lv.qemu_img_sizes(QEMU_IMG, str(raw), "qcow2")
    assert err.value.message == "qemu-img cannot read the qcow2 image %s: Image is not in qcow2 format." % raw
    assert err.value.details == {"failed_path": str(raw)}
    with pytest.raises(EvidenceSourceError, match="qemu-img is not installed"):
        lv.qemu_img_sizes(None, str(raw), "raw")


def test_qemu_img_that_hangs_times_out(tmp_path):
    slow = tmp_path / "qemu-img"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(slow.stat().st_mode | stat.S_IXUSR)
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * 512)
    with pytest.raises(EvidenceSourceError, match="did not answer within 0.5 s"):
        lv.qemu_img_sizes(str(slow), str(image), "raw", timeout=0.5)
