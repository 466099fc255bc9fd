package main

// Extension "copy": VirtualDiskManager.CopyVirtualDisk_Task as ESXi and vCenter do it, in
// both modes (0.24.2 refuses any destSpec in vpx mode with NotImplemented and ignores it in
// esx mode). The source descriptor is followed down its chain (parentFileNameHint): the
// copy of a base descriptor is the base disk as it is (frozen under a snapshot); the copy
// of a delta is the consolidated disk at that delta. The destination is a standalone
// "vmfs" disk: descriptor + "<dest>-flat.vmdk", thin (sparse: only data extents are
// written) for destSpec diskType "thin", else allocated whole (preallocated, the
// documented default without destSpec). An existing destination is a FileAlreadyExists
// fault unless force. Files that are not lab disk descriptors (the model's empty .vmdk)
// are copied byte for byte as 0.24.2 did. QueryVirtualDiskUuid answers the descriptor's
// ddb.uuid.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	registerExtension("copy", setupCopy)
}

func setupCopy(ctx *labContext) error {
	ref := ctx.Model.ServiceContent.VirtualDiskManager
	if ref == nil {
		return fmt.Errorf("the model has no VirtualDiskManager")
	}
	old, ok := simulator.Map.Get(*ref).(*simulator.VirtualDiskManager)
	if !ok {
		return fmt.Errorf("VirtualDiskManager %s is not the simulator's", ref.Value)
	}
	simulator.Map.Put(&labDiskManager{VirtualDiskManager: *old})
	ctx.Env["copy_virtual_disk"] = "thin destSpec honoured in esx and vpx modes; chain consolidated"
	return nil
}

type labDiskManager struct {
	simulator.VirtualDiskManager
}

// resolveDS maps "[ds] path" to the local file, looking the datastore up by name (in dc
// when given).
func resolveDS(dc *types.ManagedObjectReference, name string) (string, types.BaseMethodFault) {
	var p object.DatastorePath
	if !p.FromString(name) {
		return "", &types.InvalidDatastorePath{DatastorePath: name}
	}
	var refs []types.ManagedObjectReference
	if dc != nil {
		if d, ok := simulator.Map.Get(*dc).(*simulator.Datacenter); ok {
			refs = d.Datastore
		}
	}
	if refs == nil {
		for _, e := range simulator.Map.All("Datastore") {
			refs = append(refs, e.Reference())
		}
	}
	for _, r := range refs {
		if ds, ok := simulator.Map.Get(r).(*simulator.Datastore); ok && ds.Name == p.Datastore {
			return filepath.Join(ds.Info.GetDatastoreInfo().Url, filepath.FromSlash(p.Path)), nil
		}
	}
	return "", &types.InvalidDatastore{Name: p.Datastore}
}

// chainFor reads the descriptor at local and its parents (base first).
func chainFor(local string) ([]*diskUnit, error) {
	var chain []*diskUnit
	for i := 0; i < 64; i++ {
		d, err := readDescriptor(local)
		if err != nil {
			return nil, err
		}
		u := &diskUnit{DescLocal: local, Desc: d, ExtentLocal: filepath.Join(filepath.Dir(local), d.ExtentFile),
			Delta: d.CreateType == "seSparse" || d.CreateType == "vmfsSparse"}
		chain = append([]*diskUnit{u}, chain...)
		if !u.Delta {
			if d.CreateType != "vmfs" || d.ExtentType != "VMFS" {
				return nil, fmt.Errorf("%s: createType %q is not a lab disk", local, d.CreateType)
			}
			return chain, nil
		}
		if d.ParentHint == "" {
			return nil, fmt.Errorf("%s: delta without parentFileNameHint", local)
		}
		hint := d.ParentHint
		if !filepath.IsAbs(hint) {
			hint = filepath.Join(filepath.Dir(local), hint)
		}
		local = hint
	}
	return nil, fmt.Errorf("disk chain too deep")
}

// lockOwner returns the lab VM whose disks include local (to copy a consistent leaf).
func lockOwner(local string) *vmState {
	var owner *vmState
	labVMs.Range(func(_, v interface{}) bool {
		st := v.(*labVM).st
		for _, d := range st.Disks {
			for _, u := range d.Chain {
				if u.DescLocal == local {
					owner = st
					return false
				}
			}
		}
		return true
	})
	return owner
}

func (m *labDiskManager) CopyVirtualDiskTask(ctx *simulator.Context, req *types.CopyVirtualDisk_Task) soap.HasFault {
	ref := runTask(m, "copyVirtualDisk", func() (types.AnyType, types.BaseMethodFault, string) {
		return m.copyDisk(req)
	})
	return &methods.CopyVirtualDisk_TaskBody{Res: &types.CopyVirtualDisk_TaskResponse{Returnval: ref}}
}

func (m *labDiskManager) copyDisk(req *types.CopyVirtualDisk_Task) (types.AnyType, types.BaseMethodFault, string) {
	src, f := resolveDS(req.SourceDatacenter, req.SourceName)
	if f != nil {
		return nil, f, ""
	}
	dstDC := req.DestDatacenter
	if dstDC == nil {
		dstDC = req.SourceDatacenter
	}
	dst, f := resolveDS(dstDC, req.DestName)
	if f != nil {
		return nil, f, ""
	}
	if !strings.HasSuffix(dst, ".vmdk") {
		return nil, &types.InvalidArgument{InvalidProperty: "destName"}, "A specified parameter was not correct: destName"
	}
	dstFlat := strings.TrimSuffix(dst, ".vmdk") + "-flat.vmdk"
	force := req.Force != nil && *req.Force
	for _, p := range []string{dst, dstFlat} {
		if _, err := os.Stat(p); err == nil {
			if !force {
				return nil, &types.FileAlreadyExists{FileFault: types.FileFault{File: req.DestName}},
					fmt.Sprintf("Cannot complete the operation because the file or folder %s already exists", req.DestName)
			}
			_ = os.Remove(p)
		}
	}
	if _, err := os.Stat(src); err != nil {
		return nil, &types.FileNotFound{FileFault: types.FileFault{File: req.SourceName}},
			fmt.Sprintf("File %s was not found", req.SourceName)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return nil, &types.CannotCreateFile{FileFault: types.FileFault{File: req.DestName}}, err.Error()
	}

	diskType, adapter := "preallocated", ""
	if req.DestSpec != nil {
		spec := req.DestSpec.GetVirtualDiskSpec()
		if spec.DiskType != "" {
			diskType = spec.DiskType
		}
		adapter = spec.AdapterType
	}
	thin := false
	switch diskType {
	case string(types.VirtualDiskTypeThin):
		thin = true
	case string(types.VirtualDiskTypePreallocated), string(types.VirtualDiskTypeThick),
		string(types.VirtualDiskTypeEagerZeroedThick):
	default:
		return nil, &types.InvalidArgument{InvalidProperty: "destSpec.diskType"},
			fmt.Sprintf("A specified parameter was not correct: diskType %q (the lab writes VMFS flat disks)", diskType)
	}

	chain, err := chainFor(src)
	if err != nil {
		// not a lab disk (e.g. the model's empty .vmdk files): the 0.24.2 byte copy
		for i, name := range []string{src, strings.TrimSuffix(src, ".vmdk") + "-flat.vmdk"} {
			to := []string{dst, dstFlat}[i]
			if _, serr := os.Stat(name); serr != nil {
				continue
			}
			if cerr := copySparseFile(name, to); cerr != nil {
				return nil, &types.CannotCreateFile{FileFault: types.FileFault{File: req.DestName}}, cerr.Error()
			}
		}
		return nil, nil, ""
	}
	size := chain[0].Desc.Sectors * 512
	if owner := lockOwner(src); owner != nil {
		owner.mu.Lock() // the leaf of a running VM: a consistent point in time
		defer owner.mu.Unlock()
	}
	if err := materialize(chain, len(chain)-1, size, dstFlat, !thin); err != nil {
		return nil, &types.CannotCreateFile{FileFault: types.FileFault{File: req.DestName}}, err.Error()
	}
	base := chain[0].Desc
	if adapter == "" {
		adapter = base.DDB["ddb.adapterType"]
	}
	desc := &descriptor{
		CID: randomCID(), ParentCID: "ffffffff", CreateType: "vmfs", Sectors: chain[0].Desc.Sectors,
		ExtentType: "VMFS", ExtentFile: filepath.Base(dstFlat),
		DDB: map[string]string{
			"ddb.adapterType":      adapter,
			"ddb.deletable":        "true",
			"ddb.longContentID":    randomHex(16),
			"ddb.uuid":             ddbUUID(),
			"ddb.virtualHWVersion": base.DDB["ddb.virtualHWVersion"],
		},
	}
	for _, k := range []string{"ddb.geometry.cylinders", "ddb.geometry.heads", "ddb.geometry.sectors"} {
		if v := base.DDB[k]; v != "" {
			desc.DDB[k] = v
		}
	}
	if thin {
		desc.DDB["ddb.thinProvisioned"] = "1"
	}
	if desc.DDB["ddb.virtualHWVersion"] == "" {
		delete(desc.DDB, "ddb.virtualHWVersion")
	}
	if err := writeFileAtomic(dst, desc.render()); err != nil {
		_ = os.Remove(dstFlat)
		return nil, &types.CannotCreateFile{FileFault: types.FileFault{File: req.DestName}}, err.Error()
	}
	return nil, nil, ""
}

// QueryVirtualDiskUuid answers the descriptor's ddb.uuid (ESXi's form), else the simulator's.
func (m *labDiskManager) QueryVirtualDiskUuid(ctx *simulator.Context, req *types.QueryVirtualDiskUuid) soap.HasFault {
	if local, f := resolveDS(req.Datacenter, req.Name); f == nil {
		if d, err := readDescriptor(local); err == nil && d.DDB["ddb.uuid"] != "" {
			u := strings.NewReplacer(" ", "", "-", "").Replace(d.DDB["ddb.uuid"])
			if len(u) == 32 {
				var parts []string
				for i := 0; i < 32; i += 2 {
					parts = append(parts, u[i:i+2])
				}
				return &methods.QueryVirtualDiskUuidBody{Res: &types.QueryVirtualDiskUuidResponse{
					Returnval: strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")}}
			}
		}
	}
	return m.VirtualDiskManager.QueryVirtualDiskUuid(ctx, req)
}
