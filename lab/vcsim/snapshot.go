package main

// Snapshots of the lab VMs as ESXi takes them: a delta per non-independent disk (the
// running VM switches to it, its Parent backing is the frozen disk), <vm>-Snapshot<N>.vmsn
// and, for a memory snapshot of a powered-on VM, <vm>-Snapshot<N>.vmem (the guest's RAM);
// removal consolidates the delta into its parent; QueryChangedDiskAreas for CBT.

import (
	"fmt"
	"log"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// labVM wraps a simulator VM (by value: the simulator's property collector digs out the
// embedded mo type through the first field) and is registered under the VM's reference.
type labVM struct {
	simulator.VirtualMachine
	st *vmState
}

// labSnap is the lab's record of one snapshot (linear tree, oldest first in vmState.Snaps).
type labSnap struct {
	Ref         types.ManagedObjectReference
	Name        string
	Description string
	UID         int
	Created     time.Time
	Quiesced    bool
	State       types.VirtualMachinePowerState
	Frozen      map[int32]int    // disk key -> chain index frozen by this snapshot
	ChangeIDs   map[int32]string // disk key -> CBT change id of the frozen state
	VmsnDS      string
	VmsnLocal   string
	VmemDS      string // "" without memory
	VmemLocal   string
	obj         *labSnapshot
}

// labSnapshot is the VirtualMachineSnapshot managed object of a lab VM's snapshot.
type labSnapshot struct {
	mo.VirtualMachineSnapshot
}

// lab fault messages, as ESXi words them (task.info.error.localizedMessage)
const (
	msgQuiesceNoTools = "Cannot quiesce this virtual machine because VMware Tools is not currently available."
	msgRevert         = "The lab simulator does not revert snapshots of lab VMs."
	msgNoCBT          = "Changed block tracking is not enabled for this virtual machine; QueryChangedDiskAreas needs it."
)

// runTask runs fn as a task of obj; a fault's localizedMessage is msg (when set) instead
// of the simulator's Go type name.
func runTask(obj mo.Reference, name string, fn func() (types.AnyType, types.BaseMethodFault, string)) types.ManagedObjectReference {
	var msg string
	task := simulator.CreateTask(obj, name, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		res, fault, m := fn()
		msg = m
		return res, fault
	})
	ref := task.Run()
	if task.Info.Error != nil && msg != "" {
		e := *task.Info.Error
		e.LocalizedMessage = msg
		simulator.Map.Update(task, []types.PropertyChange{{Name: "info.error", Val: e}})
	}
	return ref
}

func (w *labVM) poweredOn() bool {
	return w.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
}

func (w *labVM) toolsRunning() bool {
	return w.Guest != nil && w.Guest.ToolsRunningStatus == string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
}

// ---- SOAP methods of the wrapped VM -----------------------------------------------------

func (w *labVM) CreateSnapshotTask(ctx *simulator.Context, req *types.CreateSnapshot_Task) soap.HasFault {
	ref := runTask(w, "createSnapshot", func() (types.AnyType, types.BaseMethodFault, string) {
		return w.createSnapshot(req.Name, req.Description, req.Memory, req.Quiesce)
	})
	return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{Returnval: ref}}
}

func (w *labVM) RemoveAllSnapshotsTask(ctx *simulator.Context, req *types.RemoveAllSnapshots_Task) soap.HasFault {
	ref := runTask(w, "removeAllSnapshots", func() (types.AnyType, types.BaseMethodFault, string) {
		consolidate := req.Consolidate == nil || *req.Consolidate
		st := w.st
		st.mu.Lock()
		defer st.mu.Unlock()
		if len(st.Snaps) == 0 {
			return nil, nil, ""
		}
		fault := w.removeSnapsLocked(append([]*labSnap(nil), st.Snaps...), consolidate)
		return nil, fault, ""
	})
	return &methods.RemoveAllSnapshots_TaskBody{Res: &types.RemoveAllSnapshots_TaskResponse{Returnval: ref}}
}

func (w *labVM) ConsolidateVMDisksTask(ctx *simulator.Context, req *types.ConsolidateVMDisks_Task) soap.HasFault {
	ref := runTask(w, "consolidateDisks", func() (types.AnyType, types.BaseMethodFault, string) {
		st := w.st
		st.mu.Lock()
		defer st.mu.Unlock()
		if err := w.consolidateLocked(); err != nil {
			return nil, &types.FileFault{File: st.DirDS}, err.Error()
		}
		w.publishLocked()
		return nil, nil, ""
	})
	return &methods.ConsolidateVMDisks_TaskBody{Res: &types.ConsolidateVMDisks_TaskResponse{Returnval: ref}}
}

func (w *labVM) RevertToCurrentSnapshotTask(ctx *simulator.Context, req *types.RevertToCurrentSnapshot_Task) soap.HasFault {
	ref := runTask(w, "revertToCurrentSnapshot", func() (types.AnyType, types.BaseMethodFault, string) {
		return nil, &types.NotSupported{}, msgRevert
	})
	return &methods.RevertToCurrentSnapshot_TaskBody{Res: &types.RevertToCurrentSnapshot_TaskResponse{Returnval: ref}}
}

// RefreshStorageInfo recomputes the lab layout (the simulator's own would mistype the files).
func (w *labVM) RefreshStorageInfo(ctx *simulator.Context, req *types.RefreshStorageInfo) soap.HasFault {
	w.refreshLayout()
	return &methods.RefreshStorageInfoBody{Res: new(types.RefreshStorageInfoResponse)}
}

// ReconfigVMTask is the simulator's, then the lab's view is restored: CBT switched on gets
// change ids, the backings are the chains' and the layout is recomputed from the files.
func (w *labVM) ReconfigVMTask(ctx *simulator.Context, req *types.ReconfigVM_Task) soap.HasFault {
	res := w.VirtualMachine.ReconfigVMTask(ctx, req)
	st := w.st
	st.mu.Lock()
	defer st.mu.Unlock()
	cbt := w.Config.ChangeTrackingEnabled != nil && *w.Config.ChangeTrackingEnabled
	for _, d := range st.Disks {
		if cbt && d.ChangeUUID == "" {
			d.ChangeUUID = cbtUUID()
		}
	}
	w.applyBackings()
	_ = w.writeVMX()
	w.refreshLayoutLocked()
	return res
}

func (w *labVM) PowerOnVMTask(ctx *simulator.Context, req *types.PowerOnVM_Task) soap.HasFault {
	res := w.VirtualMachine.PowerOnVMTask(ctx, req)
	if w.poweredOn() {
		startGuest(w)
	}
	return res
}

func (w *labVM) PowerOffVMTask(ctx *simulator.Context, req *types.PowerOffVM_Task) soap.HasFault {
	stopGuest(w)
	return w.VirtualMachine.PowerOffVMTask(ctx, req)
}

func (w *labVM) SuspendVMTask(ctx *simulator.Context, req *types.SuspendVM_Task) soap.HasFault {
	stopGuest(w)
	return w.VirtualMachine.SuspendVMTask(ctx, req)
}

func (w *labVM) DestroyTask(ctx *simulator.Context, req *types.Destroy_Task) soap.HasFault {
	stopGuest(w)
	res := w.VirtualMachine.DestroyTask(ctx, req)
	if simulator.Map.Get(w.Self) == nil {
		labVMs.Delete(w.Self)
	}
	return res
}

// QueryChangedDiskAreas answers for CBT as ESXi does; changeId "*" lists the areas of the
// disk (as frozen by the snapshot) that are allocated, i.e. hold data.
func (w *labVM) QueryChangedDiskAreas(ctx *simulator.Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	body := &methods.QueryChangedDiskAreasBody{}
	info, fault, msg := w.changedAreas(req)
	if fault != nil {
		body.Fault_ = simulator.Fault(msg, fault)
		return body
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: *info}
	return body
}

func (w *labVM) changedAreas(req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, types.BaseMethodFault, string) {
	st := w.st
	st.mu.Lock()
	defer st.mu.Unlock()
	var disk *labDisk
	for _, d := range st.Disks {
		if d.Key == req.DeviceKey {
			disk = d
		}
	}
	if w.Config.ChangeTrackingEnabled == nil || !*w.Config.ChangeTrackingEnabled {
		name := st.DirDS
		if disk != nil {
			name = disk.Chain[0].DescDS
		}
		return nil, &types.FileFault{File: name}, msgNoCBT
	}
	if disk == nil {
		return nil, &types.NotFound{}, fmt.Sprintf("The object or item referred to could not be found: device %d", req.DeviceKey)
	}
	top := len(disk.Chain) - 1
	var snap *labSnap
	if req.Snapshot != nil {
		for _, s := range st.Snaps {
			if s.Ref == *req.Snapshot {
				snap = s
			}
		}
		if snap == nil {
			return nil, &types.NotFound{}, "The object or item referred to could not be found: " + req.Snapshot.Value
		}
		if idx, ok := snap.Frozen[disk.Key]; ok {
			top = idx
		}
	} else if w.poweredOn() {
		return nil, &types.FileFault{File: disk.leaf().DescDS},
			"QueryChangedDiskAreas without a snapshot works only for a powered-off virtual machine"
	}
	if req.StartOffset < 0 || req.StartOffset >= disk.Capacity {
		return nil, &types.InvalidArgument{InvalidProperty: "startOffset"}, "A specified parameter was not correct: startOffset"
	}
	var areas [][2]int64
	if req.ChangeId == "*" { // the areas in use: data extents of the units up to the frozen one
		var err error
		areas, err = allocatedAreas(disk.Chain, top, disk.Capacity)
		if err != nil {
			return nil, &types.FileFault{File: disk.Chain[0].DescDS}, err.Error()
		}
	} else { // the CBT blocks (cbtBlockSize) the guest wrote after changeId's point and up to the snapshot's
		bad := "A specified parameter was not correct: changeId"
		id, seqText, ok := strings.Cut(req.ChangeId, "/")
		since, err := strconv.Atoi(seqText)
		if !ok || err != nil || id != disk.ChangeUUID {
			return nil, &types.InvalidArgument{InvalidProperty: "changeId"}, bad
		}
		upto := disk.ChangeSeq
		if snap != nil {
			_, t, _ := strings.Cut(snap.ChangeIDs[disk.Key], "/")
			upto, _ = strconv.Atoi(t)
		}
		if since > disk.ChangeSeq {
			return nil, &types.InvalidArgument{InvalidProperty: "changeId"}, bad
		}
		var grains []int64
		for g, seqs := range disk.writes {
			for _, q := range seqs {
				if q > since && q <= upto {
					grains = append(grains, g)
					break
				}
			}
		}
		sort.Slice(grains, func(i, j int) bool { return grains[i] < grains[j] })
		for _, g := range grains {
			end := g + cbtBlockSize
			if end > disk.Capacity {
				end = disk.Capacity
			}
			if n := len(areas); n > 0 && areas[n-1][1] == g {
				areas[n-1][1] = end
				continue
			}
			areas = append(areas, [2]int64{g, end})
		}
	}
	info := &types.DiskChangeInfo{StartOffset: req.StartOffset, Length: disk.Capacity - req.StartOffset}
	for _, a := range areas {
		if a[1] <= req.StartOffset {
			continue
		}
		s := a[0]
		if s < req.StartOffset {
			s = req.StartOffset
		}
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: s, Length: a[1] - s})
	}
	return info, nil, ""
}

// ---- SOAP methods of the snapshot object --------------------------------------------------

func (s *labSnapshot) RemoveSnapshotTask(ctx *simulator.Context, req *types.RemoveSnapshot_Task) soap.HasFault {
	ref := runTask(s, "removeSnapshot", func() (types.AnyType, types.BaseMethodFault, string) {
		w := labVMOf(s.Vm)
		if w == nil {
			return nil, &types.ManagedObjectNotFound{Obj: s.Vm}, ""
		}
		var fault types.BaseMethodFault
		ctx.WithLock(w, func() {
			st := w.st
			st.mu.Lock()
			defer st.mu.Unlock()
			idx := -1
			for i, x := range st.Snaps {
				if x.Ref == s.Self {
					idx = i
				}
			}
			if idx < 0 {
				fault = &types.ManagedObjectNotFound{Obj: s.Self}
				return
			}
			targets := []*labSnap{st.Snaps[idx]}
			if req.RemoveChildren {
				targets = append([]*labSnap(nil), st.Snaps[idx:]...)
			}
			consolidate := req.Consolidate == nil || *req.Consolidate
			fault = w.removeSnapsLocked(targets, consolidate)
		})
		return nil, fault, ""
	})
	return &methods.RemoveSnapshot_TaskBody{Res: &types.RemoveSnapshot_TaskResponse{Returnval: ref}}
}

func (s *labSnapshot) RevertToSnapshotTask(ctx *simulator.Context, req *types.RevertToSnapshot_Task) soap.HasFault {
	ref := runTask(s, "revertToSnapshot", func() (types.AnyType, types.BaseMethodFault, string) {
		return nil, &types.NotSupported{}, msgRevert
	})
	return &methods.RevertToSnapshot_TaskBody{Res: &types.RevertToSnapshot_TaskResponse{Returnval: ref}}
}

func (s *labSnapshot) RenameSnapshot(ctx *simulator.Context, req *types.RenameSnapshot) soap.HasFault {
	if w := labVMOf(s.Vm); w != nil {
		ctx.WithLock(w, func() {
			w.st.mu.Lock()
			defer w.st.mu.Unlock()
			for _, x := range w.st.Snaps {
				if x.Ref == s.Self {
					if req.Name != "" {
						x.Name = req.Name
					}
					if req.Description != "" {
						x.Description = req.Description
					}
				}
			}
			w.publishLocked()
			_ = w.writeVMSD()
		})
	}
	return &methods.RenameSnapshotBody{Res: new(types.RenameSnapshotResponse)}
}

// ---- the work -----------------------------------------------------------------------------

// createSnapshot takes a snapshot (the caller holds the VM's registry lock).
func (w *labVM) createSnapshot(name, desc string, memory, quiesce bool) (types.AnyType, types.BaseMethodFault, string) {
	st := w.st
	st.mu.Lock() // stuns the guest: no heartbeat while the snapshot is taken
	defer st.mu.Unlock()
	stunned := time.Now()

	on := w.poweredOn()
	if quiesce && on && !w.toolsRunning() {
		return nil, &types.ToolsUnavailable{}, msgQuiesceNoTools
	}
	memory = memory && on // ESXi ignores memory for a powered-off VM

	uid := st.LastUID + 1
	snap := &labSnap{
		Name: name, Description: desc, UID: uid, Created: time.Now().UTC(), Quiesced: quiesce && on,
		State: w.Runtime.PowerState, Frozen: map[int32]int{}, ChangeIDs: map[int32]string{},
	}
	snap.VmsnDS, snap.VmsnLocal = st.file(fmt.Sprintf("%s-Snapshot%d.vmsn", st.Name, uid))
	if memory {
		snap.VmemDS, snap.VmemLocal = st.file(fmt.Sprintf("%s-Snapshot%d.vmem", st.Name, uid))
	}
	var created []string
	undo := func() {
		for _, p := range created {
			_ = os.Remove(p)
		}
	}

	// the snapshot's config is the VM's, with the disks as they are frozen now
	cfg := *w.Config
	cfg.Hardware.Device = append([]types.BaseVirtualDevice(nil), w.Config.Hardware.Device...)

	// 1. a delta on top of each non-independent disk
	var newUnits []*diskUnit
	for _, d := range st.Disks {
		if d.independent() {
			continue
		}
		u, err := newDelta(st, d)
		if err != nil {
			undo()
			return nil, &types.FileFault{File: d.leaf().DescDS}, err.Error()
		}
		created = append(created, u.DescLocal, u.ExtentLocal)
		newUnits = append(newUnits, u)
	}
	// 2. the memory state: .vmem (the guest's RAM) and the .vmsn that maps it
	if memory {
		if err := copySparseFile(labRAM.Path, snap.VmemLocal); err != nil {
			undo()
			_ = os.Remove(snap.VmemLocal)
			return nil, &types.FileFault{File: snap.VmemDS}, err.Error()
		}
		created = append(created, snap.VmemLocal)
	}
	vmx, _ := os.ReadFile(st.local(w.Config.Files.VmPathName))
	if err := writeVMSN(snap.VmsnLocal, vmx, memory, labRAM.Size); err != nil {
		undo()
		return nil, &types.FileFault{File: snap.VmsnDS}, err.Error()
	}

	// 3. switch: the frozen index per disk, the running VM on the deltas
	i := 0
	for _, d := range st.Disks {
		if d.independent() {
			continue
		}
		snap.Frozen[d.Key] = len(d.Chain) - 1
		snap.ChangeIDs[d.Key] = d.changeID()
		d.Chain = append(d.Chain, newUnits[i])
		i++
		if d.ChangeUUID != "" {
			d.ChangeSeq++
		}
	}
	st.LastUID = uid

	obj := &labSnapshot{}
	obj.Self = types.ManagedObjectReference{Type: "VirtualMachineSnapshot"}
	obj.Vm = w.Self
	obj.Config = cfg
	simulator.Map.Put(obj)
	snap.Ref = obj.Self
	snap.obj = obj
	if n := len(st.Snaps); n > 0 {
		parent := st.Snaps[n-1].obj
		parent.ChildSnapshot = append(parent.ChildSnapshot, obj.Self)
	}
	st.Snaps = append(st.Snaps, snap)

	w.applyBackings()
	_ = w.writeVMX()
	_ = w.writeVMSD()
	w.publishLocked()
	if on {
		logUnstun(st, time.Since(stunned))
	}
	return obj.Self, nil, ""
}

// logUnstun appends to the VM's vmware.log the line ESXi writes when a checkpoint (a snapshot) ends the guest's
// stun: "<time>| vcpu-0| I005: Checkpoint_Unstun: vm stopped for <N> us"; here N is how long the guest goroutine
// was held off (the VM's lock).
func logUnstun(st *vmState, d time.Duration) {
	f, err := os.OpenFile(filepath.Join(st.DirLocal, "vmware.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		log.Printf("vmware.log of %s: %v", st.Name, err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s| vcpu-0| I005: Checkpoint_Unstun: vm stopped for %d us\n",
		time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), d.Microseconds())
}

// newDelta creates "<base>-00000N.vmdk" + "<base>-00000N-sesparse.vmdk" over d's leaf.
func newDelta(st *vmState, d *labDisk) (*diskUnit, error) {
	parent := d.leaf()
	for n := 1; n < 1000; n++ {
		descName := fmt.Sprintf("%s-%06d.vmdk", d.BaseName, n)
		extName := fmt.Sprintf("%s-%06d-sesparse.vmdk", d.BaseName, n)
		descDS, descLocal := st.file(descName)
		extDS, extLocal := st.file(extName)
		if _, err := os.Stat(descLocal); err == nil {
			continue
		}
		if _, err := os.Stat(extLocal); err == nil {
			continue
		}
		u, err := createDelta(parent, baseName(parent.DescDS), descLocal, extLocal, d.Capacity)
		if err != nil {
			return nil, err
		}
		u.DescDS, u.ExtentDS = descDS, extDS
		return u, nil
	}
	return nil, fmt.Errorf("no free delta name for %s", d.BaseName)
}

// createDelta writes a delta over parent: the descriptor at descLocal (ESXi's seSparse one,
// parentFileNameHint = hint) and an empty SEsparse extent at extLocal, in the same folder.
func createDelta(parent *diskUnit, hint, descLocal, extLocal string, capacity int64) (*diskUnit, error) {
	desc := &descriptor{
		CID: randomCID(), ParentCID: parent.Desc.CID, CreateType: "seSparse",
		ParentHint: hint, Sectors: capacity / 512,
		ExtentType: "SESPARSE", ExtentFile: filepath.Base(extLocal),
		DDB: map[string]string{
			"ddb.grain":         fmt.Sprint(seGrainSectors),
			"ddb.longContentID": randomHex(16),
			"ddb.deletable":     "true",
		},
	}
	if err := createSESparse(extLocal, capacity); err != nil {
		return nil, err
	}
	if err := writeFileAtomic(descLocal, desc.render()); err != nil {
		_ = os.Remove(extLocal)
		return nil, err
	}
	return &diskUnit{DescLocal: descLocal, ExtentLocal: extLocal, Delta: true, Desc: desc}, nil
}

// baseName is the file name of a datastore path ("[ds] dir [x]/f.vmdk" -> "f.vmdk").
func baseName(dsPath string) string {
	var p object.DatastorePath
	if p.FromString(dsPath) {
		return path.Base(p.Path)
	}
	return path.Base(dsPath)
}

// removeSnapsLocked deletes the given snapshots (newest first) and, with consolidate,
// merges every delta that no snapshot needs any more into its parent.
func (w *labVM) removeSnapsLocked(targets []*labSnap, consolidate bool) types.BaseMethodFault {
	st := w.st
	for i := len(targets) - 1; i >= 0; i-- {
		t := targets[i]
		_ = os.Remove(t.VmsnLocal)
		if t.VmemLocal != "" {
			_ = os.Remove(t.VmemLocal)
		}
		for j, x := range st.Snaps {
			if x == t {
				st.Snaps = append(st.Snaps[:j], st.Snaps[j+1:]...)
				break
			}
		}
		for _, x := range st.Snaps {
			x.obj.ChildSnapshot = removeRef(x.obj.ChildSnapshot, t.Ref)
		}
		// the removed snapshot's children hang on its parent now (linear tree)
		simulator.Map.Remove(t.Ref)
	}
	for j := 1; j < len(st.Snaps); j++ {
		st.Snaps[j-1].obj.ChildSnapshot = []types.ManagedObjectReference{st.Snaps[j].Ref}
	}
	if n := len(st.Snaps); n > 0 {
		st.Snaps[n-1].obj.ChildSnapshot = nil
	}
	if consolidate {
		if err := w.consolidateLocked(); err != nil {
			w.publishLocked()
			return &types.FileFault{File: st.DirDS}
		}
	}
	_ = w.writeVMSD()
	w.publishLocked()
	return nil
}

func removeRef(refs []types.ManagedObjectReference, r types.ManagedObjectReference) []types.ManagedObjectReference {
	out := refs[:0]
	for _, x := range refs {
		if x != r {
			out = append(out, x)
		}
	}
	return out
}

// setConsolidationNeeded sets runtime.consolidationNeeded (Map.Update cannot assign a
// *bool leaf, so the whole runtime is published).
func (w *labVM) setConsolidationNeeded(v bool) {
	rt := w.Runtime
	rt.ConsolidationNeeded = types.NewBool(v)
	simulator.Map.Update(w, []types.PropertyChange{{Name: "runtime", Val: rt}})
}

// needsConsolidation: a delta whose parent is frozen by no snapshot is redundant.
func (w *labVM) needsConsolidation() bool {
	for _, d := range w.st.Disks {
		kept := w.keptBoundaries(d)
		for j := 1; j < len(d.Chain); j++ {
			if !kept[j-1] {
				return true
			}
		}
	}
	return false
}

func (w *labVM) keptBoundaries(d *labDisk) map[int]bool {
	kept := map[int]bool{}
	for _, s := range w.st.Snaps {
		if idx, ok := s.Frozen[d.Key]; ok {
			kept[idx] = true
		}
	}
	return kept
}

// consolidateLocked merges each redundant delta into its parent, top down, then deletes it.
func (w *labVM) consolidateLocked() error {
	st := w.st
	for _, d := range st.Disks {
		kept := w.keptBoundaries(d)
		for j := len(d.Chain) - 1; j >= 1; j-- {
			if kept[j-1] {
				continue
			}
			upper, lower := d.Chain[j], d.Chain[j-1]
			if err := mergeInto(upper, lower, d.Capacity); err != nil {
				return fmt.Errorf("consolidating %s into %s: %v", upper.DescDS, lower.DescDS, err)
			}
			if err := os.Remove(upper.ExtentLocal); err != nil {
				return err
			}
			if err := os.Remove(upper.DescLocal); err != nil {
				return err
			}
			d.Chain = append(d.Chain[:j], d.Chain[j+1:]...)
			if j < len(d.Chain) { // the unit above now hangs on lower
				child := d.Chain[j]
				child.Desc.ParentCID = lower.Desc.CID
				child.Desc.ParentHint = baseName(lower.DescDS)
				if err := writeFileAtomic(child.DescLocal, child.Desc.render()); err != nil {
					return err
				}
			}
			for _, s := range st.Snaps {
				if idx, ok := s.Frozen[d.Key]; ok && idx >= j {
					s.Frozen[d.Key] = idx - 1
				}
			}
			kept = w.keptBoundaries(d)
		}
	}
	w.applyBackings()
	return w.writeVMX()
}

// applyBackings rebuilds the VM's VirtualDisk devices from the chains: the backing is the
// leaf, its Parent the unit below, down to the base (new objects: a snapshot's config keeps
// the old ones). Must be called with st.mu held (or before the VM is served).
func (w *labVM) applyBackings() {
	st := w.st
	byKey := map[int32]*labDisk{}
	for _, d := range st.Disks {
		byKey[d.Key] = d
	}
	devices := make([]types.BaseVirtualDevice, 0, len(w.Config.Hardware.Device))
	for _, dev := range w.Config.Hardware.Device {
		disk, ok := dev.(*types.VirtualDisk)
		if !ok || byKey[disk.Key] == nil {
			devices = append(devices, dev)
			continue
		}
		d := byKey[disk.Key]
		nd := *disk
		nd.Backing = w.backing(d, len(d.Chain)-1)
		nd.CapacityInBytes = d.Capacity
		nd.CapacityInKB = d.Capacity >> 10
		devices = append(devices, &nd)
	}
	simulator.Map.Update(w, []types.PropertyChange{{Name: "config.hardware.device", Val: devices}})
}

func (w *labVM) backing(d *labDisk, top int) *types.VirtualDiskFlatVer2BackingInfo {
	ds := w.datastoreRef()
	var parent *types.VirtualDiskFlatVer2BackingInfo
	for i := 0; i <= top; i++ {
		u := d.Chain[i]
		b := &types.VirtualDiskFlatVer2BackingInfo{
			VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{FileName: u.DescDS, Datastore: ds},
			DiskMode:                     d.Mode,
			ThinProvisioned:              types.NewBool(true),
			EagerlyScrub:                 types.NewBool(false),
			Split:                        types.NewBool(false),
			WriteThrough:                 types.NewBool(false),
			DigestEnabled:                types.NewBool(false),
			Uuid:                         backingUUID(d.UUID),
			ContentId:                    u.Desc.DDB["ddb.longContentID"],
			DeltaDiskFormat:              "",
			Parent:                       parent,
		}
		if u.Delta {
			b.DeltaDiskFormat = string(types.VirtualDiskDeltaDiskFormatSeSparseFormat)
			b.DeltaGrainSize = int32(seGrainBytes / 1024)
		}
		if i == top && d.ChangeUUID != "" {
			b.ChangeId = d.changeID()
		}
		parent = b
	}
	return parent
}

func (w *labVM) datastoreRef() *types.ManagedObjectReference {
	for _, ref := range w.Datastore {
		if ds, ok := simulator.Map.Get(ref).(*simulator.Datastore); ok && ds.Name == w.st.DSName {
			r := ds.Self
			return &r
		}
	}
	return nil
}

// publishLocked updates the snapshot tree, consolidationNeeded and the layout.
func (w *labVM) publishLocked() {
	st := w.st
	var changes []types.PropertyChange
	if len(st.Snaps) == 0 {
		changes = append(changes,
			types.PropertyChange{Name: "snapshot", Val: nil},
			types.PropertyChange{Name: "rootSnapshot", Val: []types.ManagedObjectReference(nil)})
	} else {
		var tree []types.VirtualMachineSnapshotTree
		for i := len(st.Snaps) - 1; i >= 0; i-- {
			s := st.Snaps[i]
			node := types.VirtualMachineSnapshotTree{
				Snapshot: s.Ref, Vm: w.Self, Name: s.Name, Description: s.Description,
				Id: int32(s.UID), CreateTime: s.Created, State: s.State, Quiesced: s.Quiesced,
				ReplaySupported: types.NewBool(false), ChildSnapshotList: tree,
			}
			tree = []types.VirtualMachineSnapshotTree{node}
		}
		cur := st.Snaps[len(st.Snaps)-1].Ref
		changes = append(changes,
			types.PropertyChange{Name: "snapshot", Val: &types.VirtualMachineSnapshotInfo{
				CurrentSnapshot: &cur, RootSnapshotList: tree}},
			types.PropertyChange{Name: "rootSnapshot", Val: []types.ManagedObjectReference{st.Snaps[0].Ref}})
	}
	simulator.Map.Update(w, changes)
	w.setConsolidationNeeded(w.needsConsolidation())
	w.refreshLayoutLocked()
}
