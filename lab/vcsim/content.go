package main

// Extension "content": the lab's VMs, with real disk content, created at start-up when
// vcsim runs with -lab-vms (see BEHAVIOUR-vms.md). Each VM is created through the
// simulator's own API (CreateVM_Task, in process), then its files are given real content
// and the VM object is wrapped (labVM, registered under the same reference) so that
// snapshots, consolidation, CBT and the layout behave as on ESXi.

import (
	"context"
	"crypto/sha256"
	_ "embed" // make_disk.sh is embedded
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

//go:embed make_disk.sh
var makeDiskScript string

const (
	labMemoryMB   = 256
	heartbeatSize = 512
)

// knownFile is a file put into a lab disk's ext4 file system.
type knownFile struct {
	Path   string `json:"path"`
	Size   int    `json:"size"`
	SHA256 string `json:"sha256"`
}

// labDisk is one virtual disk of a lab VM and its chain (base first, leaf last).
type labDisk struct {
	Key         int32
	Label       string
	Mode        string // persistent or independent_persistent
	Capacity    int64
	BaseName    string // descriptor name without .vmdk, e.g. "Win Srv [prod] 01_1"
	Adapter     string
	UUID        string // ddb.uuid
	Chain       []*diskUnit
	PartOffset  int64
	PartBytes   int64
	HBOffset    int64
	MarkOffset  int64
	Files       []knownFile
	ChangeUUID  string // CBT change id prefix "52 ..."
	ChangeSeq   int
	writes      map[int64][]int // CBT: block offset (cbtBlockSize) -> change sequences the guest wrote it in
	ControllerK int32
	Unit        int32
}

func (d *labDisk) independent() bool { return strings.HasPrefix(d.Mode, "independent") }

func (d *labDisk) leaf() *diskUnit { return d.Chain[len(d.Chain)-1] }

func (d *labDisk) changeID() string {
	if d.ChangeUUID == "" {
		return ""
	}
	return fmt.Sprintf("%s/%d", d.ChangeUUID, d.ChangeSeq)
}

// vmState is the lab side of one lab VM; mu guards the disk chains and snapshot list
// (the guest's heartbeat writes take it too, so a snapshot "stuns" the guest).
type vmState struct {
	mu         sync.Mutex
	Name       string
	Role       string
	DSName     string
	DSRoot     string // local folder of the datastore
	DirDS      string // "[LocalDS_0] name"
	DirLocal   string
	Disks      []*labDisk
	Snaps      []*labSnap
	LastUID    int
	DiskMarker string
	fileKeys   map[string]int32
	nextKey    int32
	guest      *guestRunner
	heartbeats uint64
}

func (st *vmState) local(dsPath string) string {
	var p object.DatastorePath
	if !p.FromString(dsPath) {
		return ""
	}
	return filepath.Join(st.DSRoot, filepath.FromSlash(p.Path))
}

func (st *vmState) file(name string) (ds, local string) {
	ds = dsJoin(st.DirDS, name)
	return ds, st.local(ds)
}

// ramImage is the cached guest RAM (ram_image.sh) and what its JSON says.
type ramImage struct {
	Path   string
	Size   int64
	Marker string
	Banner string
}

var labRAM *ramImage

// the lab VMs: (a) CBT, name with spaces and brackets; (b) off; (c) independent 2nd disk;
// (d) a snapshot (no memory) taken at start-up.
type labVMSpec struct {
	Name      string
	Role      string
	PowerOn   bool
	CBT       bool
	DiskModes []string
	Snapshot  bool
}

var labVMSpecs = []labVMSpec{
	{Name: "Win Srv [prod] 01", Role: "cbt", PowerOn: true, CBT: true, DiskModes: []string{"persistent"}},
	{Name: "lab-off-02", Role: "powered-off", PowerOn: false, DiskModes: []string{"persistent"}},
	{Name: "lab indep 03", Role: "independent-disk", PowerOn: true,
		DiskModes: []string{"persistent", "independent_persistent"}},
	{Name: "lab-snap-04", Role: "with-snapshot", PowerOn: true, DiskModes: []string{"persistent"}, Snapshot: true},
}

func init() {
	registerExtension("content", setupContent)
}

func loadRAMImage(p string) (*ramImage, error) {
	if p == "" {
		return nil, fmt.Errorf("-lab-vms needs -ram-image PATH (the guest RAM served as .vmem): " +
			"build it once with LAB_DIR=... lab/vcsim/ram_image.sh, which prints the path")
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("-ram-image %s is missing (%v): build it with lab/vcsim/ram_image.sh", p, err)
	}
	if st.Size() != labMemoryMB<<20 {
		return nil, fmt.Errorf("-ram-image %s holds %d bytes, the lab VMs have %d MiB of RAM", p, st.Size(), labMemoryMB)
	}
	img := &ramImage{Path: p, Size: st.Size()}
	meta := strings.TrimSuffix(p, filepath.Ext(p)) + ".json"
	if data, err := os.ReadFile(meta); err == nil {
		var m struct {
			Marker string `json:"marker"`
			Banner string `json:"banner"`
		}
		if json.Unmarshal(data, &m) == nil {
			img.Marker, img.Banner = m.Marker, m.Banner
		}
	}
	if img.Marker == "" {
		return nil, fmt.Errorf("-ram-image %s: no RAM marker in %s (written by ram_image.sh)", p, meta)
	}
	return img, nil
}

func setupContent(ctx *labContext) error {
	if !labOpts.LabVMs {
		ctx.Env["enabled"] = false
		return nil
	}
	if labOpts.DiskMiB < 16 || labOpts.DiskMiB > 64*1024 {
		return fmt.Errorf("-disk-mib %d: want 16..65536", labOpts.DiskMiB)
	}
	img, err := loadRAMImage(labOpts.RAMImage)
	if err != nil {
		return err
	}
	labRAM = img

	bg := context.Background()
	c, err := vim25.NewClient(bg, ctx.Model.Service)
	if err != nil {
		return err
	}
	place, err := findPlacement()
	if err != nil {
		return err
	}
	ctx.AddCleanup(stopAllGuests)
	var envVMs []interface{}
	for _, spec := range labVMSpecs {
		w, err := createLabVM(bg, c, place, spec)
		if err != nil {
			return fmt.Errorf("VM %q: %v", spec.Name, err)
		}
		if spec.PowerOn {
			if err := runVMTask(w.Self, "power on", func() (types.ManagedObjectReference, error) {
				res, err := methods.PowerOnVM_Task(bg, c, &types.PowerOnVM_Task{This: w.Self})
				if err != nil {
					return types.ManagedObjectReference{}, err
				}
				return res.Returnval, nil
			}); err != nil {
				return err
			}
		}
		if spec.Snapshot {
			if err := runVMTask(w.Self, "snapshot", func() (types.ManagedObjectReference, error) {
				res, err := methods.CreateSnapshot_Task(bg, c, &types.CreateSnapshot_Task{This: w.Self,
					Name: "lab-base", Description: "taken by vcsim at start-up (no memory)"})
				if err != nil {
					return types.ManagedObjectReference{}, err
				}
				return res.Returnval, nil
			}); err != nil {
				return err
			}
		}
		envVMs = append(envVMs, w.envInfo())
	}

	ctx.Env["enabled"] = true
	ctx.Env["ram_image"] = img.Path
	ctx.Env["ram_marker"] = img.Marker
	ctx.Env["ram_banner"] = img.Banner
	ctx.Env["memory_mb"] = labMemoryMB
	ctx.Env["disk_mib"] = labOpts.DiskMiB
	ctx.Env["heartbeat_interval_ms"] = heartbeatInterval.Milliseconds()
	ctx.Env["heartbeat_bytes"] = heartbeatSize
	ctx.Env["delta_grain_bytes"] = seGrainBytes
	ctx.Env["vms"] = envVMs
	return nil
}

// runVMTask runs a task in process and turns a task error into a Go error.
func runVMTask(vm types.ManagedObjectReference, what string, start func() (types.ManagedObjectReference, error)) error {
	ref, err := start()
	if err != nil {
		return fmt.Errorf("%s of %s: %v", what, vm.Value, err)
	}
	t, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return fmt.Errorf("%s of %s: task %s not found", what, vm.Value, ref.Value)
	}
	if t.Info.Error != nil {
		return fmt.Errorf("%s of %s: %s", what, vm.Value, t.Info.Error.LocalizedMessage)
	}
	return nil
}

type placement struct {
	dc     *simulator.Datacenter
	ds     *simulator.Datastore
	host   types.ManagedObjectReference
	pool   types.ManagedObjectReference
	folder types.ManagedObjectReference
}

// findPlacement picks LocalDS_0, the first host (by name) that mounts it, that host's
// resource pool and its datacenter's VM folder (ESX: the only host; VPX: DC0's first host).
func findPlacement() (*placement, error) {
	var hosts []*mo.HostSystem
	for _, e := range simulator.Map.All("HostSystem") {
		if h := digMO[mo.HostSystem](e); h != nil {
			hosts = append(hosts, h)
		}
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
	for _, h := range hosts {
		for _, ref := range h.Datastore {
			ds, ok := simulator.Map.Get(ref).(*simulator.Datastore)
			if !ok || ds.Name != "LocalDS_0" {
				continue
			}
			var pool *types.ManagedObjectReference
			switch cr := simulator.Map.Get(*h.Parent).(type) {
			case *simulator.ClusterComputeResource:
				pool = cr.ResourcePool
			case *mo.ComputeResource:
				pool = cr.ResourcePool
			}
			dc := datacenterEntity(h)
			if pool == nil || dc == nil {
				continue
			}
			return &placement{dc: dc, ds: ds, host: h.Self, pool: *pool, folder: dc.VmFolder}, nil
		}
	}
	return nil, fmt.Errorf("no host mounts LocalDS_0")
}

func datacenterEntity(h *mo.HostSystem) *simulator.Datacenter {
	var e interface{} = h
	for i := 0; i < 32 && e != nil; i++ {
		if dc, ok := e.(*simulator.Datacenter); ok {
			return dc
		}
		ent, ok := e.(mo.Entity)
		if !ok || ent.Entity().Parent == nil {
			return nil
		}
		e = simulator.Map.Get(*ent.Entity().Parent)
	}
	return nil
}

// createLabVM creates one VM through CreateVM_Task, writes its disks and files, and wraps it.
func createLabVM(ctx context.Context, c *vim25.Client, pl *placement, spec labVMSpec) (*labVM, error) {
	dsRoot := pl.ds.Info.GetDatastoreInfo().Url
	dirDS := fmt.Sprintf("[%s] %s", pl.ds.Name, spec.Name)
	capacity := int64(labOpts.DiskMiB) << 20

	devices := object.VirtualDeviceList{}
	scsi, err := devices.CreateSCSIController("lsilogic")
	if err != nil {
		return nil, err
	}
	scsiCtl := scsi.(types.BaseVirtualController).GetVirtualController()
	scsiCtl.Key = 1000
	scsiCtl.BusNumber = 0
	devices = append(devices, scsi)
	var disks []*labDisk
	for i, mode := range spec.DiskModes {
		base := spec.Name
		if i > 0 {
			base = fmt.Sprintf("%s_%d", spec.Name, i)
		}
		unit := int32(i)
		d := &labDisk{
			Key: int32(2000 + i), Label: fmt.Sprintf("Hard disk %d", i+1), Mode: mode, Capacity: capacity,
			BaseName: base, Adapter: "lsilogic", UUID: ddbUUID(), ControllerK: 1000, Unit: unit,
			PartOffset: 1 << 20, PartBytes: capacity - 3<<20,
			MarkOffset: capacity - 2<<20, HBOffset: capacity - 1<<20,
		}
		if spec.CBT {
			d.ChangeUUID = cbtUUID()
		}
		disk := &types.VirtualDisk{
			VirtualDevice: types.VirtualDevice{
				Key:           d.Key,
				ControllerKey: 1000,
				UnitNumber:    &unit,
				Backing: &types.VirtualDiskFlatVer2BackingInfo{
					VirtualDeviceFileBackingInfo: types.VirtualDeviceFileBackingInfo{
						FileName: dsJoin(dirDS, base+".vmdk"),
					},
					DiskMode:        mode,
					ThinProvisioned: types.NewBool(true),
					Uuid:            backingUUID(d.UUID),
				},
			},
			CapacityInKB:    capacity >> 10,
			CapacityInBytes: capacity,
		}
		devices = append(devices, disk)
		disks = append(disks, d)
	}
	changes, err := devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return nil, err
	}
	for _, ch := range changes {
		s := ch.GetVirtualDeviceConfigSpec()
		if _, ok := s.Device.(*types.VirtualDisk); ok {
			s.FileOperation = types.VirtualDeviceConfigSpecFileOperationCreate
		}
	}
	cfg := types.VirtualMachineConfigSpec{
		Name:                  spec.Name,
		GuestId:               "other4xLinux64Guest",
		MemoryMB:              labMemoryMB,
		NumCPUs:               1,
		Files:                 &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s]", pl.ds.Name)},
		ChangeTrackingEnabled: types.NewBool(spec.CBT),
		DeviceChange:          changes,
		Annotation:            "dfir.vmcollect lab VM (" + spec.Role + ")",
	}
	res, err := methods.CreateVM_Task(ctx, c, &types.CreateVM_Task{
		This: pl.folder, Config: cfg, Pool: pl.pool, Host: &pl.host,
	})
	if err != nil {
		return nil, err
	}
	task := simulator.Map.Get(res.Returnval).(*simulator.Task)
	if task.Info.Error != nil {
		return nil, fmt.Errorf("CreateVM_Task: %s (%T)", task.Info.Error.LocalizedMessage, task.Info.Error.Fault)
	}
	ref := task.Info.Result.(types.ManagedObjectReference)
	vm := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	if want := dsJoin(dirDS, spec.Name+".vmx"); vm.Config.Files.VmPathName != want {
		return nil, fmt.Errorf("the VM's vmx is %q, want %q", vm.Config.Files.VmPathName, want)
	}

	st := &vmState{
		Name: spec.Name, Role: spec.Role, DSName: pl.ds.Name, DSRoot: dsRoot, DirDS: dirDS,
		DiskMarker: "FORENSIC-DISK-" + randomHex(16), fileKeys: map[string]int32{},
	}
	st.DirLocal = st.local(dirDS)
	st.Disks = disks
	for _, d := range disks {
		if err := makeLabDisk(st, d); err != nil {
			return nil, err
		}
	}

	w := &labVM{VirtualMachine: *vm, st: st}
	// ESXi reports these true for a VM that can take snapshots (0.24.2 leaves them false)
	w.Capability.SnapshotOperationsSupported = true
	w.Capability.MemorySnapshotsSupported = true
	w.Capability.QuiescedSnapshotsSupported = true
	w.Capability.SnapshotConfigSupported = true
	w.Capability.DiskOnlySnapshotOnSuspendedVMSupported = types.NewBool(true)
	simulator.Map.Put(w)
	labVMs.Store(ref, w)

	if err := writeNVRAM(st); err != nil {
		return nil, err
	}
	w.applyBackings()
	if err := w.writeVMX(); err != nil {
		return nil, err
	}
	if err := w.writeVMSD(); err != nil {
		return nil, err
	}
	w.setConsolidationNeeded(false)
	w.refreshLayout()
	return w, nil
}

// makeLabDisk writes the known files, runs make_disk.sh and puts the raw disk marker.
func makeLabDisk(st *vmState, d *labDisk) error {
	src, err := os.MkdirTemp("", "vcsim-disk-src-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(src)
	files := []struct {
		path string
		data []byte
	}{
		{"README.txt", []byte(fmt.Sprintf("dfir.vmcollect lab vcsim disk %q (%s, key %d) of VM %q.\n"+
			"The sha256 of every file here is in the simulator's env file (lab.content).\n", d.BaseName, d.Label, d.Key, st.Name))},
		{"evidence/notes.txt", []byte("case: LAB-VCSIM-0001\nexaminer: lab\nnote: known content for acquisition tests; do not edit.\n")},
		{"evidence/blob.bin", blob(256<<10, "dfir.vmcollect-vcsim-blob-v1 "+st.Name+" "+d.BaseName)},
		{"evidence/marker.txt", []byte("DISKMARK:" + st.DiskMarker + "\n")},
	}
	d.Files = nil
	for _, f := range files {
		p := filepath.Join(src, filepath.FromSlash(f.path))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, f.data, 0o644); err != nil {
			return err
		}
		sum := sha256.Sum256(f.data)
		d.Files = append(d.Files, knownFile{Path: f.path, Size: len(f.data), SHA256: fmt.Sprintf("%x", sum)})
	}
	cid := randomCID()
	cmd := exec.Command("bash", "-c", makeDiskScript, "make_disk.sh",
		"-o", st.DirLocal, "-n", d.BaseName, "-s", fmt.Sprint(d.Capacity),
		"-p", fmt.Sprint(d.PartOffset), "-l", fmt.Sprint(d.PartBytes), "-d", src,
		"-L", "LABDISK", "-a", d.Adapter, "-u", d.UUID, "-c", cid)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("make_disk.sh %s: %v: %s", d.BaseName, err, strings.TrimSpace(string(out)))
	}
	descDS, descLocal := st.file(d.BaseName + ".vmdk")
	desc, err := readDescriptor(descLocal)
	if err != nil {
		return err
	}
	extDS, extLocal := st.file(desc.ExtentFile)
	d.Chain = []*diskUnit{{DescDS: descDS, DescLocal: descLocal, ExtentDS: extDS, ExtentLocal: extLocal, Desc: desc}}
	mark := make([]byte, 512)
	copy(mark, "DISKMARK:"+st.DiskMarker+"\n")
	return chainWriteAt(d.Chain, mark, d.MarkOffset)
}

// blob is a deterministic pseudo-random file body (sha256 counter stream).
func blob(size int, seed string) []byte {
	out := make([]byte, 0, size+32)
	for i := 0; len(out) < size; i++ {
		s := sha256.Sum256([]byte(fmt.Sprintf("%s:%d", seed, i)))
		out = append(out, s[:]...)
	}
	return out[:size]
}

func writeNVRAM(st *vmState) error {
	_, local := st.file(st.Name + ".nvram")
	data := append([]byte("NVRAM\x00\x00\x00"), blob(8676, "nvram "+st.Name)...)
	return os.WriteFile(local, data, 0o600)
}

// cbtUUID is the uuid part of a CBT change id: "52 xx xx xx xx xx xx xx-xx xx xx xx xx xx xx xx".
func cbtUUID() string {
	u := strings.Split(ddbUUID(), " ")
	u[0], u[1], u[2] = "52", strings.ToLower(u[3][:2]), "7b"
	return strings.Join(u, " ")
}

// backingUUID turns ddb.uuid into the API's backing uuid form "6000C29x-xxxx-xxxx-xxxx-xxxxxxxxxxxx".
func backingUUID(ddb string) string {
	h := strings.NewReplacer(" ", "", "-", "").Replace(ddb)
	if len(h) != 32 {
		return ""
	}
	return strings.ToUpper(h[:8]) + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// labVMs maps a VM reference to its *labVM.
var labVMs sync.Map

func labVMOf(ref types.ManagedObjectReference) *labVM {
	if v, ok := labVMs.Load(ref); ok {
		return v.(*labVM)
	}
	return nil
}

// envInfo is what lab.content reports for one VM.
func (w *labVM) envInfo() map[string]interface{} {
	st := w.st
	st.mu.Lock()
	defer st.mu.Unlock()
	var disks []interface{}
	for _, d := range st.Disks {
		base := d.Chain[0]
		disks = append(disks, map[string]interface{}{
			"key":               d.Key,
			"label":             d.Label,
			"mode":              d.Mode,
			"descriptor":        base.DescDS,
			"descriptor_local":  base.DescLocal,
			"flat":              base.ExtentDS,
			"flat_local":        base.ExtentLocal,
			"leaf":              d.leaf().DescDS,
			"leaf_extent_local": d.leaf().ExtentLocal,
			"virtual_bytes":     d.Capacity,
			"partition_offset":  d.PartOffset,
			"partition_bytes":   d.PartBytes,
			"fs_type":           "ext4",
			"fs_label":          "LABDISK",
			"heartbeat_offset":  d.HBOffset,
			"marker_offset":     d.MarkOffset,
			"ddb_uuid":          d.UUID,
			"change_id":         d.changeID(),
			"known_files":       d.Files,
		})
	}
	var snaps []interface{}
	for _, s := range st.Snaps {
		snaps = append(snaps, map[string]interface{}{"name": s.Name, "moref": s.Ref.Value, "vmsn": s.VmsnDS})
	}
	if snaps == nil {
		snaps = []interface{}{}
	}
	return map[string]interface{}{
		"name":            w.Name,
		"role":            st.Role,
		"moref":           w.Self.Value,
		"uuid":            w.Config.Uuid,
		"instance_uuid":   w.Config.InstanceUuid,
		"power_state":     string(w.Runtime.PowerState),
		"vmx_path":        w.Config.Files.VmPathName,
		"dir_local":       st.DirLocal,
		"memory_mb":       w.Config.Hardware.MemoryMB,
		"change_tracking": w.Config.ChangeTrackingEnabled != nil && *w.Config.ChangeTrackingEnabled,
		"tools_running":   false,
		"disk_marker":     st.DiskMarker,
		"ram_marker":      labRAM.Marker,
		"snapshots":       snaps,
		"disks":           disks,
	}
}
