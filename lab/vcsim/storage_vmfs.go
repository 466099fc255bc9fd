// HostDatastoreSystem of the lab's hosts: VMFS datastores on iSCSI LUNs (see storage.go).
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
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// The VMFS partition type (GPT partition type GUID AA31E02A-400F-11DB-9590-000C2911D1B8), as ESXi
// writes and reports it.
const vmfsGUID = "AA31E02A400F11DB9590000C2911D1B8"

// labDatastoreSystem is a host's HostDatastoreSystem with VMFS datastore creation and removal.
type labDatastoreSystem struct {
	simulator.HostDatastoreSystem // first field, by value (see wrapHost)

	hs *hostStorage
}

// Lock and Unlock make the storage and the datastore system of a host share one lock (see hostStorage).
func (s *labStorageSystem) Lock()   { s.hs.objMu.Lock() }
func (s *labStorageSystem) Unlock() { s.hs.objMu.Unlock() }

func (d *labDatastoreSystem) Lock()   { d.hs.objMu.Lock() }
func (d *labDatastoreSystem) Unlock() { d.hs.objMu.Unlock() }

// vmfsDatastore is a datastore the lab made on an iSCSI LUN.
type vmfsDatastore struct {
	id         string // labstore.py's id: vmfs-<uuid>
	uuid       string
	name       string
	disk       string // canonical name of the LUN
	partition  int32
	mountpoint string
	ds         *simulator.Datastore
	volume     *types.HostVmfsVolume
}

func (d *vmfsDatastore) mountInfo() types.HostFileSystemMountInfo {
	return types.HostFileSystemMountInfo{
		MountInfo: types.HostMountInfo{
			Path:       "/vmfs/volumes/" + d.uuid,
			AccessMode: string(types.HostMountModeReadWrite),
			Mounted:    types.NewBool(true),
			Accessible: types.NewBool(true),
		},
		Volume:          d.volume,
		VStorageSupport: "vStorageUnsupported",
	}
}

// newVmfsUUID makes a VMFS-style volume UUID: 8 hex of the creation time, then random (on ESXi the
// last 12 digits are the MAC address of the host's first uplink).
func newVmfsUUID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return fmt.Sprintf("%08x-%s-%s-%s", time.Now().Unix(), h[0:8], h[8:12], h[12:24])
}

// vmfsLayout is where ESXi puts its one VMFS partition: from 1 MiB to the last usable sector of a GPT.
func (l *iscsiLun) vmfsLayout() (start, end int64) {
	bs := int64(l.BlockSize)
	if bs <= 0 {
		bs = 512
	}
	start = 1048576 / bs
	end = l.Blocks - 2 - 16384/bs // backup GPT header + 128 entries of 128 bytes
	return start, end
}

func (hs *hostStorage) lunByDevicePath(p string) *iscsiLun {
	for _, l := range hs.luns {
		if l.devicePath() == p || l.canonical == p {
			return l
		}
	}
	return nil
}

func storageLBA(bs int32, n int64) types.HostDiskDimensionsLba {
	return types.HostDiskDimensionsLba{BlockSize: bs, Block: n}
}

func (d *labDatastoreSystem) QueryAvailableDisksForVmfs(ctx *simulator.Context, req *types.QueryAvailableDisksForVmfs) soap.HasFault {
	body := &methods.QueryAvailableDisksForVmfsBody{Res: &types.QueryAvailableDisksForVmfsResponse{}}
	hs := d.hs
	hs.do(ctx, func() {
		if req.Datastore != nil {
			return // extending a datastore: the lab has no second LUN for a VMFS extent
		}
		for _, name := range hs.sortedLunNames() {
			l := hs.luns[name]
			if hs.datastoreUsing(name) == nil && len(l.paths) > 0 && l.paths[0].working {
				body.Res.Returnval = append(body.Res.Returnval, *l.scsiDisk())
			}
		}
	})
	return body
}

func (d *labDatastoreSystem) QueryVmfsDatastoreCreateOptions(ctx *simulator.Context, req *types.QueryVmfsDatastoreCreateOptions) soap.HasFault {
	body := &methods.QueryVmfsDatastoreCreateOptionsBody{}
	hs := d.hs
	hs.do(ctx, func() {
		l := hs.lunByDevicePath(req.DevicePath)
		if l == nil {
			body.Fault_ = simulator.Fault(fmt.Sprintf("no disk %q on this host (rescan the adapter first)", req.DevicePath),
				&types.NotFound{})
			return
		}
		if ds := hs.datastoreUsing(l.canonical); ds != nil {
			body.Fault_ = simulator.Fault(fmt.Sprintf("%s holds datastore %s", l.canonical, ds.name),
				&types.ResourceInUse{Type: "Datastore", Name: ds.name})
			return
		}
		major := req.VmfsMajorVersion
		if major == 0 {
			major = 6
		}
		if major != 5 && major != 6 {
			body.Fault_ = storageInvalid("vmfsMajorVersion", fmt.Sprintf("VMFS %d does not exist (5 or 6)", major))
			return
		}
		start, end := l.vmfsLayout()
		if end <= start {
			body.Fault_ = simulator.Fault(fmt.Sprintf("%s is too small for a VMFS partition", l.canonical), &types.HostConfigFault{})
			return
		}
		extent := types.HostDiskPartitionBlockRange{
			Partition: 1, Type: "vmfs", Start: storageLBA(l.BlockSize, start), End: storageLBA(l.BlockSize, end),
		}
		info := &types.VmfsDatastoreAllExtentOption{VmfsDatastoreSingleExtentOption: types.VmfsDatastoreSingleExtentOption{
			VmfsDatastoreBaseOption: types.VmfsDatastoreBaseOption{
				Layout: types.HostDiskPartitionLayout{
					Total:     &types.HostDiskDimensionsLba{BlockSize: l.BlockSize, Block: l.Blocks},
					Partition: []types.HostDiskPartitionBlockRange{extent},
				},
				PartitionFormatChange: types.NewBool(false),
			},
			VmfsExtent: extent,
		}}
		spec := &types.VmfsDatastoreCreateSpec{
			VmfsDatastoreSpec: types.VmfsDatastoreSpec{DiskUuid: l.uuid},
			Partition: types.HostDiskPartitionSpec{
				PartitionFormat: "gpt",
				Chs:             &types.HostDiskDimensionsChs{Cylinder: l.Blocks / (255 * 63), Head: 255, Sector: 63},
				TotalSectors:    l.Blocks,
				Partition: []types.HostDiskPartitionAttributes{{
					Partition: 1, StartSector: start, EndSector: end, Type: "vmfs", Guid: vmfsGUID,
					PartitionAlignment: 1048576,
				}},
			},
			Vmfs: types.HostVmfsSpec{
				Extent:           types.HostScsiDiskPartition{DiskName: l.canonical, Partition: 1},
				MajorVersion:     major,
				BlockSizeMb:      1,
				BlockSize:        1024,
				UnmapGranularity: 1024,
				UnmapPriority:    "low",
			},
		}
		body.Res = &types.QueryVmfsDatastoreCreateOptionsResponse{
			Returnval: []types.VmfsDatastoreOption{{Info: info, Spec: spec}},
		}
	})
	return body
}

// checkCreateSpec returns the LUN and the VMFS partition the spec asks for.
func (hs *hostStorage) checkCreateSpec(spec *types.VmfsDatastoreCreateSpec) (*iscsiLun, types.HostDiskPartitionAttributes, *soap.Fault) {
	var part types.HostDiskPartitionAttributes
	l := hs.lunByDevicePath(spec.Vmfs.Extent.DiskName)
	if l == nil {
		l = hs.lunByDevicePath("/vmfs/devices/disks/" + spec.Vmfs.Extent.DiskName)
	}
	if l == nil {
		return nil, part, simulator.Fault(fmt.Sprintf("no disk %q on this host", spec.Vmfs.Extent.DiskName), &types.NotFound{})
	}
	if ds := hs.datastoreUsing(l.canonical); ds != nil {
		return nil, part, simulator.Fault(fmt.Sprintf("%s holds datastore %s", l.canonical, ds.name),
			&types.ResourceInUse{Type: "Datastore", Name: ds.name})
	}
	if len(l.paths) == 0 || !l.paths[0].working {
		return nil, part, simulator.Fault(fmt.Sprintf("%s has no working path", l.canonical), &types.HostConfigFault{})
	}
	name := spec.Vmfs.VolumeName
	if strings.TrimSpace(name) == "" || len(name) > 42 || strings.ContainsAny(name, "/\\[]\x00") {
		return nil, part, storageInvalid("spec.vmfs.volumeName", fmt.Sprintf("%q is not a datastore name", name))
	}
	if e := simulator.Map.FindByName(name, hs.dss.Datastore); e != nil {
		return nil, part, simulator.Fault(fmt.Sprintf("a datastore named %s exists", name),
			&types.DuplicateName{Name: name, Object: e.Reference()})
	}
	if spec.Vmfs.MajorVersion != 0 && spec.Vmfs.MajorVersion != 5 && spec.Vmfs.MajorVersion != 6 {
		return nil, part, storageInvalid("spec.vmfs.majorVersion", fmt.Sprintf("VMFS %d does not exist (5 or 6)", spec.Vmfs.MajorVersion))
	}
	if spec.Partition.PartitionFormat != "gpt" {
		return nil, part, storageInvalid("spec.partition.partitionFormat", "the lab writes GPT partition tables only (as ESXi 5+)")
	}
	found := 0
	for _, p := range spec.Partition.Partition {
		isVmfs := p.Type == "vmfs" || strings.EqualFold(strings.ReplaceAll(p.Guid, "-", ""), vmfsGUID)
		if isVmfs && p.Partition == spec.Vmfs.Extent.Partition {
			part = p
			found++
		}
	}
	if found != 1 || len(spec.Partition.Partition) != 1 {
		return nil, part, storageInvalid("spec.partition", "the lab makes exactly one VMFS partition, the extent's "+
			"(use the spec QueryVmfsDatastoreCreateOptions returns)")
	}
	_, end := l.vmfsLayout()
	if part.StartSector < 34 || part.EndSector > end || part.EndSector <= part.StartSector {
		return nil, part, storageInvalid("spec.partition", fmt.Sprintf("partition sectors %d-%d do not fit %s (usable %d-%d)",
			part.StartSector, part.EndSector, l.canonical, 34, end))
	}
	return l, part, nil
}

func (d *labDatastoreSystem) CreateVmfsDatastore(ctx *simulator.Context, req *types.CreateVmfsDatastore) soap.HasFault {
	body := &methods.CreateVmfsDatastoreBody{}
	hs := d.hs
	hs.do(ctx, func() {
		l, part, fault := hs.checkCreateSpec(&req.Spec)
		if fault != nil {
			body.Fault_ = fault
			return
		}
		ref, err := hs.createVmfs(ctx, l, part, &req.Spec)
		if err != nil {
			log.Printf("storage: %s: CreateVmfsDatastore %s on %s failed: %v", hs.host.Name, req.Spec.Vmfs.VolumeName, l.canonical, err)
			body.Fault_ = simulator.Fault(err.Error(), &types.HostConfigFault{})
			return
		}
		hs.publish(ctx)
		body.Res = &types.CreateVmfsDatastoreResponse{Returnval: ref}
	})
	return body
}

// createVmfs attaches the LUN for this host, partitions and formats it, mounts it and registers the datastore.
func (hs *hostStorage) createVmfs(ctx *simulator.Context, l *iscsiLun, part types.HostDiskPartitionAttributes,
	spec *types.VmfsDatastoreCreateSpec) (types.ManagedObjectReference, error) {
	ls := hs.lab
	var none types.ManagedObjectReference
	if !ls.ready() {
		return none, fmt.Errorf("lab: the storage extension cannot create datastores here (missing: %s)", strings.Join(ls.missing, ", "))
	}
	path := l.paths[0]
	uuid := newVmfsUUID()
	d := &vmfsDatastore{
		id: "vmfs-" + uuid, uuid: uuid, name: spec.Vmfs.VolumeName, disk: l.canonical, partition: part.Partition,
		mountpoint: filepath.Join(ls.vmfsRoot, uuid),
	}
	args := []string{"create", "--state-dir", ls.stateDir, "--id", d.id,
		"--portal", storagePortal(path.address, path.port), "--target", path.target, "--lun", strconv.Itoa(int(path.lun)),
		"--initiator", hs.iscsiName,
		"--start-sector", strconv.FormatInt(part.StartSector, 10), "--end-sector", strconv.FormatInt(part.EndSector, 10),
		"--sector-size", strconv.Itoa(int(l.BlockSize)), "--label", d.name, "--mountpoint", d.mountpoint}
	if auth := hs.pathAuth(path); auth != nil {
		// qemu-storage-daemon reads the secret from a 0600 file in the 0700 state folder, removed right after
		secretFile := filepath.Join(ls.stateDir, d.id+".secret")
		if err := writeSecretFile(secretFile, auth.secret); err != nil {
			return none, err
		}
		defer os.Remove(secretFile)
		args = append(args, "--user", auth.name, "--secret-file", secretFile)
	}
	t0 := time.Now()
	if _, err := ls.run(context.Background(), args, "", 10*time.Minute); err != nil {
		return none, err
	}
	ref, err := hs.register(ctx, d, l, spec)
	if err != nil {
		if derr := ls.destroy(d.id, true, false); derr != nil {
			log.Printf("storage: %s: undoing %s: %v", hs.host.Name, d.id, derr)
		}
		return none, err
	}
	hs.datastores[uuid] = d
	log.Printf("storage: %s: datastore %s (%s) created on %s:%d in %.1f s: VMFS stand-in = ext4, mounted on %s",
		hs.host.Name, d.name, ref.Value, l.canonical, part.Partition, time.Since(t0).Seconds(), d.mountpoint)
	return ref, nil
}

func storagePortal(addr string, port int32) string {
	if strings.Contains(addr, ":") {
		return fmt.Sprintf("[%s]:%d", addr, port)
	}
	return fmt.Sprintf("%s:%d", addr, port)
}

// hostDatacenter walks up from the host to its Datacenter.
func storageDatacenter(h *mo.HostSystem) *simulator.Datacenter {
	ref := h.Parent
	for i := 0; ref != nil && i < 32; i++ {
		obj := simulator.Map.Get(*ref)
		if dc, ok := obj.(*simulator.Datacenter); ok {
			return dc
		}
		e, ok := obj.(mo.Entity)
		if !ok {
			return nil
		}
		ref = e.Entity().Parent
	}
	return nil
}

// computeResourceDatastores is the host's (cluster) compute resource and its datastore list.
func computeResourceDatastores(h *mo.HostSystem) (mo.Reference, *[]types.ManagedObjectReference) {
	if h.Parent == nil {
		return nil, nil
	}
	switch c := simulator.Map.Get(*h.Parent).(type) {
	case *mo.ComputeResource:
		return c, &c.Datastore
	case *simulator.ClusterComputeResource:
		return c, &c.Datastore
	}
	return nil, nil
}

func storageWithoutRef(list []types.ManagedObjectReference, ref types.ManagedObjectReference) []types.ManagedObjectReference {
	out := make([]types.ManagedObjectReference, 0, len(list))
	for _, r := range list {
		if r != ref {
			out = append(out, r)
		}
	}
	return out
}

// register makes the mounted volume a simulator Datastore of the host, its compute resource and its
// datacenter, as the simulator's own CreateLocalDatastore does, so FileManager, VirtualDiskManager,
// the datastore browser and /folder find it by name like LocalDS_0. Its info.url is the local mount
// point (the simulator reads and writes datastore files at info.url).
func (hs *hostStorage) register(ctx *simulator.Context, d *vmfsDatastore, l *iscsiLun, spec *types.VmfsDatastoreCreateSpec) (types.ManagedObjectReference, error) {
	var none types.ManagedObjectReference
	dc := storageDatacenter(hs.host)
	if dc == nil {
		return none, fmt.Errorf("host %s has no datacenter", hs.host.Name)
	}
	folder, ok := simulator.Map.Get(dc.DatastoreFolder).(*simulator.Folder)
	if !ok {
		return none, fmt.Errorf("datacenter %s has no datastore folder", dc.Name)
	}
	major := spec.Vmfs.MajorVersion
	if major == 0 {
		major = 6
	}
	version := "6.82"
	if major == 5 {
		version = "5.81"
	}
	d.volume = &types.HostVmfsVolume{
		HostFileSystemVolume: types.HostFileSystemVolume{Type: "VMFS", Name: d.name},
		BlockSizeMb:          1,
		BlockSize:            1024,
		UnmapGranularity:     1024,
		UnmapPriority:        "low",
		MaxBlocks:            63963136,
		MajorVersion:         major,
		Version:              version,
		Uuid:                 d.uuid,
		Extent:               []types.HostScsiDiskPartition{{DiskName: l.canonical, Partition: d.partition}},
		Ssd:                  types.NewBool(false),
		Local:                types.NewBool(false),
		ScsiDiskType:         l.scsiDiskType(),
	}
	now := time.Now()
	ds := &simulator.Datastore{}
	ds.Name = d.name
	if simulator.Map.IsESX() {
		ds.Self = types.ManagedObjectReference{Type: "Datastore", Value: d.uuid} // ESXi: the VMFS UUID
	} else {
		simulator.Map.NewEntity(ds) // vCenter: datastore-N
	}
	ds.Info = &types.VmfsDatastoreInfo{
		DatastoreInfo: types.DatastoreInfo{
			Name:                   d.name,
			Url:                    d.mountpoint,
			MaxFileSize:            64 << 40,
			MaxVirtualDiskCapacity: 68169720922112,
			MaxMemoryFileSize:      64 << 40,
			Timestamp:              &now,
		},
		MaxPhysicalRDMFileSize: 64 << 40,
		MaxVirtualRDMFileSize:  68169720922112,
		Vmfs:                   d.volume,
	}
	ds.Summary = types.DatastoreSummary{
		Datastore:          &ds.Self,
		Name:               d.name,
		Url:                d.mountpoint,
		Type:               "VMFS",
		Accessible:         true,
		MultipleHostAccess: types.NewBool(false),
		MaintenanceMode:    string(types.DatastoreSummaryMaintenanceModeStateNormal),
	}
	ds.Capability = types.DatastoreCapability{
		DirectoryHierarchySupported:      true,
		RawDiskMappingsSupported:         true,
		PerFileThinProvisioningSupported: true,
		StorageIORMSupported:             types.NewBool(true),
		NativeSnapshotSupported:          types.NewBool(false),
		TopLevelDirectoryCreateSupported: types.NewBool(true),
		SeSparseSupported:                types.NewBool(true),
	}
	ds.Host = []types.DatastoreHostMount{{Key: hs.host.Self, MountInfo: d.mountInfo().MountInfo}}
	if r := ds.RefreshDatastore(&types.RefreshDatastore{This: ds.Self}); r.Fault() != nil {
		return none, fmt.Errorf("statfs %s: %s", d.mountpoint, r.Fault().String)
	}
	d.volume.Capacity = ds.Summary.Capacity

	list := append(append([]types.ManagedObjectReference{}, hs.dss.Datastore...), ds.Self)
	browser := &simulator.HostDatastoreBrowser{}
	browser.Datastore = list
	ds.Browser = simulator.Map.Put(browser).Reference()
	// the folder's children first, then the registry (as the simulator's folderPutChild does)
	storageLock(ctx, folder, func() { folder.ChildEntity = append(folder.ChildEntity, ds.Self) })
	simulator.Map.PutEntity(folder, ds)
	simulator.Map.AddReference(dc, &dc.Datastore, ds.Self)
	if cr, crList := computeResourceDatastores(hs.host); cr != nil {
		simulator.Map.AddReference(cr, crList, ds.Self)
	}
	hs.dss.Datastore = list
	storageLock(ctx, hs.host, func() { hs.host.Datastore = append([]types.ManagedObjectReference{}, list...) })
	d.ds = ds
	return ds.Self, nil
}

// unregister takes the datastore out of the inventory again.
func (hs *hostStorage) unregister(ctx *simulator.Context, d *vmfsDatastore) {
	ref := d.ds.Self
	// the registry first, then the folder's children (as the simulator's folderRemoveChild does)
	simulator.Map.Remove(ref)
	if dc := storageDatacenter(hs.host); dc != nil {
		simulator.Map.RemoveReference(dc, &dc.Datastore, ref)
		if folder, ok := simulator.Map.Get(dc.DatastoreFolder).(*simulator.Folder); ok {
			storageLock(ctx, folder, func() { folder.ChildEntity = storageWithoutRef(folder.ChildEntity, ref) })
		}
	}
	if cr, crList := computeResourceDatastores(hs.host); cr != nil {
		simulator.Map.RemoveReference(cr, crList, ref)
	}
	list := storageWithoutRef(hs.dss.Datastore, ref)
	hs.dss.Datastore = list
	storageLock(ctx, hs.host, func() { hs.host.Datastore = append([]types.ManagedObjectReference{}, list...) })
	simulator.Map.Remove(d.ds.Browser)
}

// removeVmfs unmounts and detaches a datastore (umount, loop devices, qemu-storage-daemon), then
// unregisters it; its LUN is available again. deletePartition (RemoveDatastore) also deletes the
// VMFS partition from the LUN's GPT, as ESXi removes the partitions of a VMFS datastore it removes.
func (hs *hostStorage) removeVmfs(ctx *simulator.Context, d *vmfsDatastore, why string, deletePartition bool) *soap.Fault {
	if len(d.ds.Vm) > 0 {
		return simulator.Fault(fmt.Sprintf("datastore %s holds %d virtual machine(s)", d.name, len(d.ds.Vm)),
			&types.ResourceInUse{Type: "Datastore", Name: d.name})
	}
	if err := hs.lab.destroy(d.id, false, deletePartition); err != nil {
		log.Printf("storage: %s: %s %s: %v", hs.host.Name, why, d.name, err)
		return simulator.Fault(fmt.Sprintf("cannot unmount %s: %v", d.name, err), &types.ResourceInUse{Type: "Datastore", Name: d.name})
	}
	hs.unregister(ctx, d)
	delete(hs.datastores, d.uuid)
	hs.publish(ctx)
	what := "unmounted and detached (the VMFS stand-in stays on the LUN)"
	if deletePartition {
		what = "unmounted, detached and its VMFS partition deleted from the GPT (data blocks not wiped)"
	}
	log.Printf("storage: %s: %s: datastore %s (%s) %s; %s is available again", hs.host.Name, why,
		d.name, d.uuid, what, d.disk)
	return nil
}

func (d *labDatastoreSystem) RemoveDatastore(ctx *simulator.Context, req *types.RemoveDatastore) soap.HasFault {
	body := &methods.RemoveDatastoreBody{}
	hs := d.hs
	hs.do(ctx, func() {
		for _, v := range hs.datastores {
			if v.ds.Self == req.Datastore {
				if f := hs.removeVmfs(ctx, v, "RemoveDatastore", true); f != nil {
					body.Fault_ = f
					return
				}
				body.Res = &types.RemoveDatastoreResponse{}
				return
			}
		}
		if simulator.FindReference(hs.dss.Datastore, req.Datastore) != nil {
			body.Fault_ = simulator.Fault("lab: RemoveDatastore removes only the VMFS datastores the lab created",
				&types.NotSupported{})
			return
		}
		body.Fault_ = simulator.Fault(fmt.Sprintf("datastore %s is not on this host", req.Datastore.Value), &types.NotFound{})
	})
	return body
}

func (s *labStorageSystem) UnmountVmfsVolume(ctx *simulator.Context, req *types.UnmountVmfsVolume) soap.HasFault {
	body := &methods.UnmountVmfsVolumeBody{}
	hs := s.hs
	hs.do(ctx, func() {
		v := hs.datastores[req.VmfsUuid]
		if v == nil {
			body.Fault_ = simulator.Fault(fmt.Sprintf("no mounted VMFS volume %s on this host", req.VmfsUuid), &types.NotFound{})
			return
		}
		if f := hs.removeVmfs(ctx, v, "UnmountVmfsVolume", false); f != nil {
			body.Fault_ = f
			return
		}
		body.Res = &types.UnmountVmfsVolumeResponse{}
	})
	return body
}
