// HostStorageSystem.RetrieveDiskPartitionInfo of the lab's hosts: the real partition table of an
// iSCSI LUN, read without writing to it (see storage.go, BEHAVIOUR-storage.md).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Names ESXi gives partition types (HostDiskPartitionInfoType: none, vmfs, linuxNative, linuxSwap,
// extended, ntfs, vmkDiagnostic, vffs), by GPT type GUID (partedUtil's form: no dashes, upper case)
// and by MBR type byte (sfdisk's hex, no leading zeros). Any other type is "none".
var gptTypeNames = map[string]string{
	vmfsGUID:                           "vmfs",
	"9D27538040AD11DBBF97000C2911D1B8": "vmkDiagnostic",
	"0FC63DAF848347728E793D69D8477DE4": "linuxNative", // Linux filesystem data
	"EBD0A0A2B9E5443387C068B6B72699C7": "linuxNative", // basic data: partedUtil getptbl names it linuxNative
	"0657FD6DA4AB43C484E50933C84B4F4F": "linuxSwap",
}

var mbrTypeNames = map[string]string{
	"fb": "vmfs", "fc": "vmkDiagnostic", "83": "linuxNative", "82": "linuxSwap", "7": "ntfs",
	"5": "extended", "f": "extended", "85": "extended",
}

// sfdiskTable is what `sfdisk --json` prints of a disk with a partition table.
type sfdiskTable struct {
	PartitionTable struct {
		Label      string `json:"label"`
		Device     string `json:"device"`
		SectorSize int64  `json:"sectorsize"`
		Partitions []struct {
			Node  string `json:"node"`
			Start int64  `json:"start"`
			Size  int64  `json:"size"`
			Type  string `json:"type"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

const (
	peekStartTimeout = 60 * time.Second // qemu-storage-daemon's login and FUSE export
	sfdiskTimeout    = 60 * time.Second
)

// RetrieveDiskPartitionInfo [HSS]: for each device path, one HostDiskPartitionInfo read from the
// LUN itself. A path that is not one of the iSCSI disks of the last rescan fails the whole call
// with NotFound; a LUN that cannot be read fails it with HostConfigFault (never a guess).
func (s *labStorageSystem) RetrieveDiskPartitionInfo(ctx *simulator.Context, req *types.RetrieveDiskPartitionInfo) soap.HasFault {
	body := &methods.RetrieveDiskPartitionInfoBody{}
	hs := s.hs
	hs.do(ctx, func() {
		luns := make([]*iscsiLun, len(req.DevicePath))
		for i, p := range req.DevicePath {
			if luns[i] = hs.lunByDevicePath(p); luns[i] == nil {
				body.Fault_ = simulator.Fault(fmt.Sprintf("no disk %q on this host (the lab lists the partitions of the "+
					"iSCSI disks its last rescan found)", p), &types.NotFound{})
				return
			}
		}
		res := &types.RetrieveDiskPartitionInfoResponse{}
		for i, p := range req.DevicePath {
			info, err := hs.partitionInfo(luns[i], p)
			if err != nil {
				log.Printf("storage: %s: RetrieveDiskPartitionInfo %s: %v", hs.host.Name, p, err)
				body.Fault_ = simulator.Fault(fmt.Sprintf("cannot read the partition table of %s: %v", luns[i].canonical, err),
					&types.HostConfigFault{})
				return
			}
			res.Returnval = append(res.Returnval, info)
		}
		body.Res = res
	})
	return body
}

// partitionInfo reads the LUN's partition table: from the export of the lab's datastore on it if it
// holds one (mounted), else through a short-lived read-only export. The caller holds objMu and mu.
func (hs *hostStorage) partitionInfo(l *iscsiLun, name string) (types.HostDiskPartitionInfo, error) {
	var none types.HostDiskPartitionInfo
	ls := hs.lab
	if !ls.ready() {
		return none, fmt.Errorf("lab: the storage extension cannot read LUNs here (missing: %s)", strings.Join(ls.missing, ", "))
	}
	if l.BlockSize != 512 {
		// sfdisk reads a file with 512-byte sectors: a table of another sector size would look absent
		return none, fmt.Errorf("lab: %s has %d-byte blocks; the lab reads partition tables of 512-byte-block LUNs only",
			l.canonical, l.BlockSize)
	}
	t0 := time.Now()
	var table *sfdiskTable
	var err error
	how := "through a read-only export"
	if ds := hs.datastoreUsing(l.canonical); ds != nil {
		how = "from the export of its datastore " + ds.name
		table, err = readPartitionTable(filepath.Join(ls.stateDir, ds.id+".export"))
	} else {
		table, err = hs.peekPartitionTable(l)
	}
	if err != nil {
		return none, err
	}
	info := diskPartitionInfo(l, name, table)
	parts := "no partitions"
	for i, p := range info.Spec.Partition {
		if i == 0 {
			parts = "partitions"
		}
		parts += fmt.Sprintf(" [%d %s %d-%d]", p.Partition, p.Type, p.StartSector, p.EndSector)
	}
	log.Printf("storage: %s: RetrieveDiskPartitionInfo %s: %s, %s (read %s, %.1f s)", hs.host.Name, l.canonical,
		info.Spec.PartitionFormat, parts, how, time.Since(t0).Seconds())
	return info, nil
}

// peekPartitionTable logs in to the LUN with qemu-storage-daemon (the adapter's IQN and CHAP, as
// CreateVmfsDatastore does) with the block node AND its FUSE export read-only, runs sfdisk on the
// export, and stops the daemon again (labstore.py destroy: it finds the daemon by its export).
func (hs *hostStorage) peekPartitionTable(l *iscsiLun) (*sfdiskTable, error) {
	ls := hs.lab
	if len(l.paths) == 0 || !l.paths[0].working {
		return nil, fmt.Errorf("%s has no working path", l.canonical)
	}
	path := l.paths[0]
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	id := "peek-" + hex.EncodeToString(b)
	export := filepath.Join(ls.stateDir, id+".export")
	pidfile := filepath.Join(ls.stateDir, id+".qsd.pid")
	f, err := os.OpenFile(export, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600) // FUSE exports need an existing file
	if err != nil {
		return nil, err
	}
	_ = f.Close()
	defer func() {
		if derr := ls.destroy(id, true, false); derr != nil {
			log.Printf("storage: %s: stopping the read-only export %s: %v", hs.host.Name, id, derr)
		}
	}()
	blockdev := []string{"driver=iscsi", "node-name=lun0", "transport=tcp",
		"portal=" + qemuOpt(storagePortal(path.address, path.port)), "target=" + qemuOpt(path.target),
		"lun=" + strconv.Itoa(int(path.lun)), "initiator-name=" + qemuOpt(hs.iscsiName), "timeout=20", "read-only=on"}
	var argv []string
	secretFile := ""
	if auth := hs.pathAuth(path); auth != nil {
		secretFile = filepath.Join(ls.stateDir, id+".secret")
		if err := writeSecretFile(secretFile, auth.secret); err != nil {
			return nil, err
		}
		defer os.Remove(secretFile)
		argv = append(argv, "--object", "secret,id=chap0,file="+qemuOpt(secretFile))
		blockdev = append(blockdev, "user="+qemuOpt(auth.name), "password-secret=chap0")
	}
	argv = append(argv, "--blockdev", strings.Join(blockdev, ","),
		"--export", "type=fuse,id=vcsim-peek,node-name=lun0,mountpoint="+qemuOpt(export)+",writable=off",
		"--pidfile", pidfile, "--daemonize")
	ctx, cancel := context.WithTimeout(context.Background(), peekStartTimeout)
	defer cancel()
	// --daemonize: the parent exits once the child logged in and set up the export (or failed)
	out, err := exec.CommandContext(ctx, "qemu-storage-daemon", argv...).CombinedOutput()
	if secretFile != "" {
		_ = os.Remove(secretFile) // read at the start: not left beside the export while it runs
	}
	if ctx.Err() == context.DeadlineExceeded {
		return nil, fmt.Errorf("qemu-storage-daemon did not log in to LUN %d of %s within %s", path.lun, path.target, peekStartTimeout)
	}
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("qemu-storage-daemon could not attach LUN %d of %s at %s read-only: %s", path.lun, path.target,
			storagePortal(path.address, path.port), msg)
	}
	return readPartitionTable(export)
}

// pathAuth is the CHAP a path's send target logs in with, or nil for none.
func (hs *hostStorage) pathAuth(p lunPath) *chapConfig {
	auth := hs.auth
	for _, s := range hs.sendTgts {
		if s.portal() == p.sendTarget {
			auth = hs.effectiveAuth(s)
		}
	}
	if !auth.enabled || auth.name == "" || auth.level == string(types.HostInternetScsiHbaChapAuthenticationTypeChapProhibited) {
		return nil
	}
	return &auth
}

// writeSecretFile writes a CHAP secret to a new 0600 file (in the 0700 state folder) for QEMU to read.
func writeSecretFile(name, secret string) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(secret)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(name)
	}
	return err
}

// qemuOpt escapes a value for a QEMU key=value,... option (a comma is doubled).
func qemuOpt(v string) string { return strings.ReplaceAll(v, ",", ",,") }

// readPartitionTable runs `sfdisk --json` on a disk image (read only); nil for a disk without a
// partition table sfdisk recognizes.
func readPartitionTable(disk string) (*sfdiskTable, error) {
	ctx, cancel := context.WithTimeout(context.Background(), sfdiskTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sfdisk", "--json", disk)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		return nil, fmt.Errorf("sfdisk --json %s did not finish within %s", disk, sfdiskTimeout)
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "does not contain a recognized partition table") {
			return nil, nil
		}
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("sfdisk --json: %s", msg)
	}
	var t sfdiskTable
	if err := json.Unmarshal(stdout.Bytes(), &t); err != nil || t.PartitionTable.Label == "" {
		return nil, fmt.Errorf("sfdisk --json printed no partition table (%v): %.200s", err, stdout.String())
	}
	return &t, nil
}

var trailingNumber = regexp.MustCompile(`([0-9]+)$`)

// diskPartitionInfo is a LUN's partition table as ESXi returns it: the spec (partitionFormat gpt,
// mbr or unknown, CHS, total sectors, the partitions) and a layout of the partitions' block ranges.
func diskPartitionInfo(l *iscsiLun, name string, t *sfdiskTable) types.HostDiskPartitionInfo {
	spec := types.HostDiskPartitionSpec{
		PartitionFormat: "unknown",
		Chs:             &types.HostDiskDimensionsChs{Cylinder: l.Blocks / (255 * 63), Head: 255, Sector: 63},
		TotalSectors:    l.Blocks,
	}
	layout := types.HostDiskPartitionLayout{Total: &types.HostDiskDimensionsLba{BlockSize: l.BlockSize, Block: l.Blocks}}
	if t != nil {
		pt := t.PartitionTable
		switch pt.Label {
		case "gpt":
			spec.PartitionFormat = "gpt"
		case "dos":
			spec.PartitionFormat = "mbr"
		}
		for _, p := range pt.Partitions {
			num := 0
			if m := trailingNumber.FindString(strings.TrimPrefix(p.Node, pt.Device)); m != "" {
				num, _ = strconv.Atoi(m)
			}
			kind, guid := "none", ""
			if pt.Label == "gpt" {
				guid = strings.ToUpper(strings.ReplaceAll(p.Type, "-", ""))
				if n, ok := gptTypeNames[guid]; ok {
					kind = n
				}
			} else if n, ok := mbrTypeNames[strings.TrimLeft(strings.ToLower(p.Type), "0")]; ok {
				kind = n
			}
			a := types.HostDiskPartitionAttributes{
				Partition: int32(num), StartSector: p.Start, EndSector: p.Start + p.Size - 1, Type: kind, Guid: guid,
				Logical: pt.Label == "dos" && num >= 5,
			}
			spec.Partition = append(spec.Partition, a)
			layout.Partition = append(layout.Partition, types.HostDiskPartitionBlockRange{
				Partition: a.Partition, Type: kind,
				Start: storageLBA(l.BlockSize, a.StartSector), End: storageLBA(l.BlockSize, a.EndSector),
			})
		}
	}
	return types.HostDiskPartitionInfo{DeviceName: name, Spec: spec, Layout: layout}
}
