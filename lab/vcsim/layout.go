package main

// The files of a lab VM as ESXi keeps them: the .vmx (updated when a disk switches to a
// delta), the .vmsd snapshot list, the .vmsn snapshot state and the VM's layout, layoutEx
// and storage properties computed from what is really in the VM's folder.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func (w *labVM) refreshLayout() {
	w.st.mu.Lock()
	defer w.st.mu.Unlock()
	w.refreshLayoutLocked()
}

type layoutFile struct {
	ds, local, typ string
}

// refreshLayoutLocked sets layout, layoutEx (files, disk chains base first, snapshots),
// storage and summary.storage from the files that exist now.
func (w *labVM) refreshLayoutLocked() {
	st := w.st
	if st.fileKeys == nil {
		st.fileKeys = map[string]int32{}
	}
	var files []types.VirtualMachineFileLayoutExFileInfo
	seen := map[string]bool{}
	var committed, unshared int64
	add := func(ds, typ string) int32 {
		key, ok := st.fileKeys[ds]
		if !ok {
			key = st.nextKey
			st.nextKey++
			st.fileKeys[ds] = key
		}
		if seen[ds] {
			return key
		}
		local := st.local(ds)
		fi, err := os.Stat(local)
		if err != nil {
			return -1
		}
		seen[ds] = true
		unique := fi.Size()
		if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
			unique = sys.Blocks * 512
		}
		committed += unique
		if strings.HasSuffix(ds, ".vmdk") {
			unshared += unique
		}
		files = append(files, types.VirtualMachineFileLayoutExFileInfo{
			Key: key, Name: ds, Type: typ, Size: fi.Size(), UniqueSize: unique, Accessible: types.NewBool(true),
		})
		return key
	}
	vmx := w.Config.Files.VmPathName
	add(vmx, string(types.VirtualMachineFileLayoutExFileTypeConfig))
	nvram, _ := st.file(st.Name + ".nvram")
	add(nvram, string(types.VirtualMachineFileLayoutExFileTypeNvram))
	vmsd, _ := st.file(st.Name + ".vmsd")
	add(vmsd, string(types.VirtualMachineFileLayoutExFileTypeSnapshotList))
	logf, _ := st.file("vmware.log")
	add(logf, string(types.VirtualMachineFileLayoutExFileTypeLog))

	unitKeys := func(u *diskUnit) []int32 {
		var keys []int32
		if k := add(u.DescDS, string(types.VirtualMachineFileLayoutExFileTypeDiskDescriptor)); k >= 0 {
			keys = append(keys, k)
		}
		if k := add(u.ExtentDS, string(types.VirtualMachineFileLayoutExFileTypeDiskExtent)); k >= 0 {
			keys = append(keys, k)
		}
		return keys
	}
	var exDisks []types.VirtualMachineFileLayoutExDiskLayout
	var disks []types.VirtualMachineFileLayoutDiskLayout
	var uncommitted int64
	for _, d := range st.Disks {
		ex := types.VirtualMachineFileLayoutExDiskLayout{Key: d.Key}
		dl := types.VirtualMachineFileLayoutDiskLayout{Key: d.Key}
		for _, u := range d.Chain {
			ex.Chain = append(ex.Chain, types.VirtualMachineFileLayoutExDiskUnit{FileKey: unitKeys(u)})
			dl.DiskFile = append(dl.DiskFile, u.DescDS)
		}
		exDisks = append(exDisks, ex)
		disks = append(disks, dl)
		if exts, err := allocatedAreas(d.Chain, len(d.Chain)-1, d.Capacity); err == nil {
			used := int64(0)
			for _, e := range exts {
				used += e[1] - e[0]
			}
			uncommitted += d.Capacity - used
		}
	}
	var exSnaps []types.VirtualMachineFileLayoutExSnapshotLayout
	var snaps []types.VirtualMachineFileLayoutSnapshotLayout
	for _, s := range st.Snaps {
		sl := types.VirtualMachineFileLayoutExSnapshotLayout{Key: s.Ref, MemoryKey: -1}
		old := types.VirtualMachineFileLayoutSnapshotLayout{Key: s.Ref}
		sl.DataKey = add(s.VmsnDS, string(types.VirtualMachineFileLayoutExFileTypeSnapshotData))
		old.SnapshotFile = append(old.SnapshotFile, s.VmsnDS)
		if s.VmemDS != "" {
			sl.MemoryKey = add(s.VmemDS, string(types.VirtualMachineFileLayoutExFileTypeSnapshotMemory))
			old.SnapshotFile = append(old.SnapshotFile, s.VmemDS)
		}
		for _, d := range st.Disks {
			idx, ok := s.Frozen[d.Key]
			if !ok {
				continue
			}
			dl := types.VirtualMachineFileLayoutExDiskLayout{Key: d.Key}
			for i := 0; i <= idx && i < len(d.Chain); i++ {
				dl.Chain = append(dl.Chain, types.VirtualMachineFileLayoutExDiskUnit{FileKey: unitKeys(d.Chain[i])})
				old.SnapshotFile = append(old.SnapshotFile, d.Chain[i].DescDS)
			}
			sl.Disk = append(sl.Disk, dl)
		}
		exSnaps = append(exSnaps, sl)
		snaps = append(snaps, old)
	}
	now := time.Now()
	layoutEx := &types.VirtualMachineFileLayoutEx{File: files, Disk: exDisks, Snapshot: exSnaps, Timestamp: now}
	layout := &types.VirtualMachineFileLayout{
		ConfigFile: []string{st.Name + ".nvram", st.Name + ".vmsd"},
		LogFile:    []string{"vmware.log"},
		Disk:       disks,
		Snapshot:   snaps,
	}
	var usage []types.VirtualMachineUsageOnDatastore
	if ds := w.datastoreRef(); ds != nil {
		usage = append(usage, types.VirtualMachineUsageOnDatastore{
			Datastore: *ds, Committed: committed, Uncommitted: uncommitted, Unshared: unshared,
		})
	}
	simulator.Map.Update(w, []types.PropertyChange{
		{Name: "layout", Val: layout},
		{Name: "layoutEx", Val: layoutEx},
		{Name: "storage", Val: &types.VirtualMachineStorageInfo{PerDatastoreUsage: usage, Timestamp: now}},
		{Name: "summary.storage", Val: &types.VirtualMachineStorageSummary{
			Committed: committed, Uncommitted: uncommitted, Unshared: unshared, Timestamp: now}},
	})
}

// writeVMX writes the VM's .vmx as ESXi keeps it (disk fileName = current leaf, relative).
func (w *labVM) writeVMX() error {
	st := w.st
	var b strings.Builder
	kv := func(k, v string) { fmt.Fprintf(&b, "%s = \"%s\"\n", k, v) }
	kv(".encoding", "UTF-8")
	kv("config.version", "8")
	kv("virtualHW.version", strings.TrimPrefix(w.Config.Version, "vmx-"))
	kv("displayName", st.Name)
	kv("guestOS", "other4xlinux-64")
	kv("memSize", fmt.Sprint(w.Config.Hardware.MemoryMB))
	kv("numvcpus", fmt.Sprint(w.Config.Hardware.NumCPU))
	kv("nvram", st.Name+".nvram")
	kv("uuid.bios", vmxUUID(w.Config.Uuid))
	kv("vc.uuid", vmxUUID(w.Config.InstanceUuid))
	cbt := w.Config.ChangeTrackingEnabled != nil && *w.Config.ChangeTrackingEnabled
	if cbt {
		kv("ctkEnabled", "TRUE")
	}
	kv("scsi0.present", "TRUE")
	kv("scsi0.virtualDev", "lsilogic")
	for _, d := range st.Disks {
		node := fmt.Sprintf("scsi0:%d", d.Unit)
		kv(node+".present", "TRUE")
		kv(node+".deviceType", "scsi-hardDisk")
		kv(node+".fileName", baseName(d.leaf().DescDS))
		if d.independent() {
			kv(node+".mode", "independent-persistent")
		}
		if cbt {
			kv(node+".ctkEnabled", "TRUE")
		}
	}
	return writeFileAtomic(st.local(w.Config.Files.VmPathName), []byte(b.String()))
}

// vmxUUID renders a uuid as the .vmx does: "56 4d 12 ... 34-56 78 ...".
func vmxUUID(u string) string {
	h := strings.ReplaceAll(u, "-", "")
	if len(h) != 32 {
		return u
	}
	var parts []string
	for i := 0; i < 32; i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}

// writeVMSD writes the snapshot list file (<vm>.vmsd) in ESXi's key = "value" form.
func (w *labVM) writeVMSD() error {
	st := w.st
	var b strings.Builder
	kv := func(k, v string) { fmt.Fprintf(&b, "%s = \"%s\"\n", k, v) }
	kv(".encoding", "UTF-8")
	if len(st.Snaps) > 0 {
		kv("snapshot.lastUID", fmt.Sprint(st.LastUID))
		kv("snapshot.current", fmt.Sprint(st.Snaps[len(st.Snaps)-1].UID))
	}
	for i, s := range st.Snaps {
		p := fmt.Sprintf("snapshot%d", i)
		kv(p+".uid", fmt.Sprint(s.UID))
		kv(p+".filename", baseName(s.VmsnDS))
		if i > 0 {
			kv(p+".parent", fmt.Sprint(st.Snaps[i-1].UID))
		}
		kv(p+".displayName", s.Name)
		kv(p+".description", s.Description)
		us := s.Created.UnixMicro()
		kv(p+".createTimeHigh", fmt.Sprint(int32(us>>32)))
		kv(p+".createTimeLow", fmt.Sprint(int32(us&0xffffffff)))
		n := 0
		for _, d := range st.Disks {
			idx, ok := s.Frozen[d.Key]
			if !ok {
				continue
			}
			kv(fmt.Sprintf("%s.disk%d.fileName", p, n), baseName(d.Chain[idx].DescDS))
			kv(fmt.Sprintf("%s.disk%d.node", p, n), fmt.Sprintf("scsi0:%d", d.Unit))
			n++
		}
		kv(p+".numDisks", fmt.Sprint(n))
		if s.VmemDS != "" {
			kv(p+".type", "1")
		}
	}
	kv("snapshot.numSnapshots", fmt.Sprint(len(st.Snaps)))
	_, local := st.file(st.Name + ".vmsd")
	return writeFileAtomic(local, []byte(b.String()))
}

// ---- .vmsn (VMware checkpoint state) --------------------------------------------------------
//
// Layout read by Volatility 3's VMware layer (ESXI-SHELL.md): header "<4sII" (magic
// D2 BE D2 BE, 0, group count), then per group 80 bytes "64sQQ" (name, tag offset, size);
// tags: flags byte (bits 7-6 index count, bits 5-0 value size, 62 = data block), name
// length, name, u32 indices, value; two zero bytes end a group's tags. A data block value
// is u64 size, u64 size, u16 0, then the bytes.

type vmsnGroup struct {
	name string
	tags bytes.Buffer
}

func (g *vmsnGroup) u32(name string, v uint32, idx ...uint32) {
	g.tags.WriteByte(byte(len(idx)<<6) | 4)
	g.tags.WriteByte(byte(len(name)))
	g.tags.WriteString(name)
	for _, i := range idx {
		_ = binary.Write(&g.tags, binary.LittleEndian, i)
	}
	_ = binary.Write(&g.tags, binary.LittleEndian, v)
}

func (g *vmsnGroup) block(name string, data []byte) {
	g.tags.WriteByte(62)
	g.tags.WriteByte(byte(len(name)))
	g.tags.WriteString(name)
	_ = binary.Write(&g.tags, binary.LittleEndian, uint64(len(data)))
	_ = binary.Write(&g.tags, binary.LittleEndian, uint64(len(data)))
	_ = binary.Write(&g.tags, binary.LittleEndian, uint16(0))
	g.tags.Write(data)
}

// writeVMSN writes a .vmsn: the VM's config and, for a memory snapshot, the memory group
// that maps guest-physical RAM onto the .vmem beside it (one region: ppn 0, page 0, all).
func writeVMSN(local string, vmx []byte, memory bool, memBytes int64) error {
	var groups []*vmsnGroup
	cp := &vmsnGroup{name: "Checkpoint"}
	cp.u32("Version", 8)
	groups = append(groups, cp)
	snap := &vmsnGroup{name: "Snapshot"}
	snap.block("cfgFile", vmx)
	groups = append(groups, snap)
	if memory {
		mem := &vmsnGroup{name: "memory"}
		mem.u32("align", 4096)
		mem.u32("regionsCount", 1)
		mem.u32("regionPPN", 0, 0)
		mem.u32("regionPageNum", 0, 0)
		mem.u32("regionSize", uint32(memBytes/4096), 0)
		groups = append(groups, mem)
	}
	var out bytes.Buffer
	out.Write([]byte{0xD2, 0xBE, 0xD2, 0xBE})
	_ = binary.Write(&out, binary.LittleEndian, uint32(0))
	_ = binary.Write(&out, binary.LittleEndian, uint32(len(groups)))
	off := uint64(12 + 80*len(groups))
	for _, g := range groups {
		name := make([]byte, 64)
		copy(name, g.name)
		out.Write(name)
		size := uint64(g.tags.Len() + 2)
		_ = binary.Write(&out, binary.LittleEndian, off)
		_ = binary.Write(&out, binary.LittleEndian, size)
		off += size
	}
	for _, g := range groups {
		out.Write(g.tags.Bytes())
		out.Write([]byte{0, 0})
	}
	return writeFileAtomic(local, out.Bytes())
}
