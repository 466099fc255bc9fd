// HostStorageSystem.UpdateDiskPartitions of the lab's hosts: write a new GPT on an iSCSI LUN (what
// `partedUtil setptbl` does on ESXi; the lab's ESXi shell's partedUtil calls it). See storage.go,
// BEHAVIOUR-storage.md.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// gptGUIDs: the type GUID the lab writes for a partition type name given without a GUID.
var gptGUIDs = map[string]string{
	"vmfs":          vmfsGUID,
	"vmkDiagnostic": "9D27538040AD11DBBF97000C2911D1B8",
	"linuxNative":   "0FC63DAF848347728E793D69D8477DE4",
	"linuxSwap":     "0657FD6DA4AB43C484E50933C84B4F4F",
}

// UpdateDiskPartitions [HSS]: the LUN gets a new GPT with exactly the spec's partitions (none: an empty
// GPT). Refused for a disk that holds a datastore (ResourceInUse), an unknown one (NotFound), an MBR
// spec or partitions outside the disk's usable sectors (InvalidArgument); a LUN that cannot be
// written: HostConfigFault. Nothing is formatted.
func (s *labStorageSystem) UpdateDiskPartitions(ctx *simulator.Context, req *types.UpdateDiskPartitions) soap.HasFault {
	body := &methods.UpdateDiskPartitionsBody{}
	hs := s.hs
	hs.do(ctx, func() {
		l := hs.lunByDevicePath(req.DevicePath)
		if l == nil {
			body.Fault_ = simulator.Fault(fmt.Sprintf("no disk %q on this host", req.DevicePath), &types.NotFound{})
			return
		}
		if ds := hs.datastoreUsing(l.canonical); ds != nil {
			body.Fault_ = simulator.Fault(fmt.Sprintf("%s holds datastore %s", l.canonical, ds.name),
				&types.ResourceInUse{Type: "Datastore", Name: ds.name})
			return
		}
		parts, fault := hs.checkPartitionSpec(l, &req.Spec)
		if fault != nil {
			body.Fault_ = fault
			return
		}
		if err := hs.writePartitions(l, parts); err != nil {
			log.Printf("storage: %s: UpdateDiskPartitions %s failed: %v", hs.host.Name, l.canonical, err)
			body.Fault_ = simulator.Fault(fmt.Sprintf("cannot write the partition table of %s: %v", l.canonical, err),
				&types.HostConfigFault{})
			return
		}
		body.Res = &types.UpdateDiskPartitionsResponse{}
	})
	return body
}

// checkPartitionSpec returns labstore's --part values (NUMBER:START:END:GUID) of a GPT spec.
func (hs *hostStorage) checkPartitionSpec(l *iscsiLun, spec *types.HostDiskPartitionSpec) ([]string, *soap.Fault) {
	if spec.PartitionFormat != "gpt" {
		return nil, storageInvalid("spec.partitionFormat", "the lab writes GPT partition tables only (as ESXi 5+)")
	}
	if l.BlockSize != 512 {
		return nil, storageInvalid("devicePath", fmt.Sprintf("%s has %d-byte blocks; the lab partitions 512-byte-block LUNs only",
			l.canonical, l.BlockSize))
	}
	last := l.Blocks - 34
	seen := map[int32]bool{}
	var parts []string
	for _, p := range spec.Partition {
		guid := strings.ToUpper(strings.ReplaceAll(p.Guid, "-", ""))
		if guid == "" {
			guid = gptGUIDs[p.Type]
		}
		if len(guid) != 32 || strings.Trim(guid, "0123456789ABCDEF") != "" {
			return nil, storageInvalid("spec.partition.guid", fmt.Sprintf("partition %d: no GPT type GUID (type %q)", p.Partition, p.Type))
		}
		if p.Partition < 1 || p.Partition > 128 || seen[p.Partition] {
			return nil, storageInvalid("spec.partition.partition", fmt.Sprintf("partition number %d", p.Partition))
		}
		seen[p.Partition] = true
		if p.StartSector < 34 || p.EndSector > last || p.EndSector <= p.StartSector {
			return nil, storageInvalid("spec.partition", fmt.Sprintf("partition %d sectors %d-%d do not fit %s (usable 34-%d)",
				p.Partition, p.StartSector, p.EndSector, l.canonical, last))
		}
		parts = append(parts, fmt.Sprintf("%d:%d:%d:%s", p.Partition, p.StartSector, p.EndSector, guid))
	}
	return parts, nil
}

// writePartitions logs in to the LUN (qemu-storage-daemon, writable, the adapter's IQN and CHAP) and
// writes the GPT through labstore.py partition, which stops the daemon again.
func (hs *hostStorage) writePartitions(l *iscsiLun, parts []string) error {
	ls := hs.lab
	if !ls.ready() {
		return fmt.Errorf("lab: the storage extension cannot write LUNs here (missing: %s)", strings.Join(ls.missing, ", "))
	}
	if len(l.paths) == 0 || !l.paths[0].working {
		return fmt.Errorf("%s has no working path", l.canonical)
	}
	path := l.paths[0]
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	id := "ptbl-" + hex.EncodeToString(b)
	args := []string{"partition", "--state-dir", ls.stateDir, "--id", id,
		"--portal", storagePortal(path.address, path.port), "--target", path.target, "--lun", strconv.Itoa(int(path.lun)),
		"--initiator", hs.iscsiName}
	if auth := hs.pathAuth(path); auth != nil {
		secretFile := filepath.Join(ls.stateDir, id+".secret")
		if err := writeSecretFile(secretFile, auth.secret); err != nil {
			return err
		}
		defer os.Remove(secretFile)
		args = append(args, "--user", auth.name, "--secret-file", secretFile)
	}
	for _, p := range parts {
		args = append(args, "--part", p)
	}
	t0 := time.Now()
	if _, err := ls.run(context.Background(), args, "", 3*time.Minute); err != nil {
		return err
	}
	log.Printf("storage: %s: UpdateDiskPartitions %s: GPT with %d partition(s) written in %.1f s", hs.host.Name,
		l.canonical, len(parts), time.Since(t0).Seconds())
	return nil
}
