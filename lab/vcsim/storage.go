// Lab extension "storage": software iSCSI and VMFS datastores on every simulated host.
//
// govmomi 0.24.2's simulator has no software-iSCSI calls, no RescanHba, no VMFS datastore
// creation and no RemoveDatastore/UnmountVmfsVolume (../shared/LAB.md). This extension wraps each
// host's HostStorageSystem and HostDatastoreSystem (the simulator's own extension pattern: wrap
// the object, register it under the same reference with simulator.Map.Put) and does the real
// work through labstore.py: SendTargets discovery and logins with libiscsi, as the adapter's IQN
// and with its CHAP secret, against a real iSCSI target (the lab collector's tgt), and for a
// datastore qemu-storage-daemon + losetup + a GPT with a VMFS-type partition holding ext4 (the
// stand-in for VMFS: nothing on Linux creates VMFS). What it does and where it differs from ESXi:
// BEHAVIOUR-storage.md.
//
// Files: storage.go (set-up, per-host state, labstore runner), storage_iscsi.go
// (HostStorageSystem), storage_vmfs.go (HostDatastoreSystem, datastores), storage_partinfo.go
// (RetrieveDiskPartitionInfo: a LUN's partition table read through a read-only export),
// storage_partwrite.go (UpdateDiskPartitions: a new GPT written on a LUN).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

var (
	storageLabstore = flag.String("labstore", "",
		"lab/vcsim/labstore.py, the program that does the storage extension's iSCSI and datastore work "+
			"(default: labstore.py beside this executable)")
	storagePython = flag.String("labstore-python", "/usr/bin/python3", "the Python that runs -labstore")
)

// The software iSCSI adapter's device name, as on ESXi 6.5 and later.
const swIscsiDevice = "vmhba64"

// Programs the storage extension needs (the set-up reports the missing ones; calls that need them fail then).
var storageTools = []string{"iscsi-ls", "iscsi-inq", "iscsi-readcapacity16", "qemu-storage-daemon", "losetup",
	"sfdisk", "mkfs.ext4", "mount", "umount", "blkid"}

// labStorage is the extension's state, shared by every host.
type labStorage struct {
	mode     string
	python   string
	labstore string // "" when not found
	stateDir string // qemu-storage-daemon pid files, FUSE export files, records (0700)
	vmfsRoot string // <DsRoot>/vmfs/volumes: one folder per datastore, its mount point
	missing  []string

	mu    sync.Mutex
	hosts []*hostStorage
}

func init() {
	registerExtension("storage", setupStorage)
}

func setupStorage(c *labContext) error {
	ls := &labStorage{
		mode:     c.Mode,
		python:   *storagePython,
		stateDir: filepath.Join(c.DsRoot, ".labstore"),
		vmfsRoot: filepath.Join(c.DsRoot, "vmfs", "volumes"),
	}
	ls.labstore = *storageLabstore
	if ls.labstore == "" {
		if exe, err := os.Executable(); err == nil {
			ls.labstore = filepath.Join(filepath.Dir(exe), "labstore.py")
		}
	}
	if abs, err := filepath.Abs(ls.labstore); err == nil {
		ls.labstore = abs
	}
	if _, err := os.Stat(ls.labstore); err != nil {
		ls.missing = append(ls.missing, "labstore.py ("+ls.labstore+")")
		ls.labstore = ""
	}
	if _, err := exec.LookPath(ls.python); err != nil {
		ls.missing = append(ls.missing, ls.python)
	}
	for _, t := range storageTools {
		if _, err := exec.LookPath(t); err != nil {
			ls.missing = append(ls.missing, t)
		}
	}
	if len(ls.missing) > 0 {
		log.Printf("storage: missing %s: rescans find no LUN and datastores cannot be created",
			strings.Join(ls.missing, ", "))
	}
	if err := os.MkdirAll(ls.stateDir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(ls.stateDir, 0o700); err != nil {
		return err
	}
	// A simulator killed before (kill -9) with the same -datastore-dir left its datastores attached.
	if ls.ready() {
		if _, err := ls.run(context.Background(), []string{"sweep", "--state-dir", ls.stateDir}, "", time.Minute); err != nil {
			log.Printf("storage: sweeping what an earlier run left in %s: %v", ls.stateDir, err)
		}
	}

	// The ESX model's datacenter lists a datastore of its template that does not exist
	// (57089c25-...): a client reading datacenter.datastore gets ManagedObjectNotFound. Drop it.
	for _, e := range simulator.Map.All("Datacenter") {
		if dc, ok := e.(*simulator.Datacenter); ok {
			var keep []types.ManagedObjectReference
			for _, ref := range dc.Datastore {
				if simulator.Map.Get(ref) != nil {
					keep = append(keep, ref)
				}
			}
			dc.Datastore = keep
		}
	}
	for _, e := range simulator.Map.All("HostSystem") {
		if h, ok := e.(*simulator.HostSystem); ok {
			ls.wrapHost(h)
		}
	}
	// hosts added later (AddStandaloneHost_Task, AddHost_Task in vpx mode) get the same behaviour
	simulator.Map.AddHandler(&storageRegistryHandler{ls: ls})
	c.AddCleanup(ls.shutdown)

	ls.mu.Lock()
	hosts := make([]map[string]interface{}, 0, len(ls.hosts))
	for _, hs := range ls.hosts {
		hosts = append(hosts, map[string]interface{}{
			"name":             hs.host.Name,
			"moref":            hs.host.Self.Value,
			"storage_system":   hs.ss.Self.Value,
			"datastore_system": hs.dss.Self.Value,
			"iscsi_name":       hs.iscsiName,
		})
	}
	ls.mu.Unlock()
	sort.Slice(hosts, func(i, j int) bool { return hosts[i]["name"].(string) < hosts[j]["name"].(string) })
	c.Env["hosts"] = hosts
	c.Env["software_iscsi_adapter"] = swIscsiDevice
	c.Env["labstore"] = ls.labstore
	c.Env["state_dir"] = ls.stateDir
	c.Env["vmfs_root"] = ls.vmfsRoot
	c.Env["ready"] = ls.ready()
	c.Env["missing"] = append([]string{}, ls.missing...)
	return nil
}

func (ls *labStorage) ready() bool { return len(ls.missing) == 0 }

// wrapHost puts the lab's HostStorageSystem and HostDatastoreSystem in place of the simulator's.
// The wrappers embed the simulator's structs BY VALUE: the PropertyCollector finds a wrapper's
// managed object by walking first fields down to package mo, and cannot walk through a pointer.
func (ls *labStorage) wrapHost(h *simulator.HostSystem) {
	if h.ConfigManager.StorageSystem == nil || h.ConfigManager.DatastoreSystem == nil {
		return
	}
	ss, ok1 := simulator.Map.Get(*h.ConfigManager.StorageSystem).(*simulator.HostStorageSystem)
	dss, ok2 := simulator.Map.Get(*h.ConfigManager.DatastoreSystem).(*simulator.HostDatastoreSystem)
	if !ok1 || !ok2 {
		return // already ours, or not the simulator's
	}
	hs := &hostStorage{
		lab:        ls,
		host:       &h.HostSystem,
		iscsiName:  defaultIscsiName(h.Name),
		targetNum:  map[string]int32{},
		luns:       map[string]*iscsiLun{},
		datastores: map[string]*vmfsDatastore{},
	}
	hs.ss = &labStorageSystem{HostStorageSystem: *ss, hs: hs}
	hs.dss = &labDatastoreSystem{HostDatastoreSystem: *dss, hs: hs}
	hs.initDeviceInfo()
	simulator.Map.Put(hs.ss)
	simulator.Map.Put(hs.dss)
	hs.objMu.Lock()
	hs.publish(nil)
	hs.objMu.Unlock()
	ls.mu.Lock()
	ls.hosts = append(ls.hosts, hs)
	ls.mu.Unlock()
}

// storageRegistryHandler wraps the storage of hosts created after the set-up.
type storageRegistryHandler struct{ ls *labStorage }

func (r *storageRegistryHandler) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "LabStorageHandler", Value: "lab-storage"}
}

func (r *storageRegistryHandler) PutObject(o mo.Reference) {
	if h, ok := o.(*simulator.HostSystem); ok {
		r.ls.wrapHost(h)
	}
}

func (r *storageRegistryHandler) UpdateObject(mo.Reference, []types.PropertyChange) {}
func (r *storageRegistryHandler) RemoveObject(types.ManagedObjectReference)         {}

// shutdown detaches every datastore the lab attached (vcsim is stopping).
func (ls *labStorage) shutdown() {
	ls.mu.Lock()
	hosts := append([]*hostStorage{}, ls.hosts...)
	ls.mu.Unlock()
	for _, hs := range hosts {
		hs.objMu.Lock()
		hs.mu.Lock()
		for _, ds := range hs.sortedDatastores() {
			log.Printf("storage: stopping: detaching datastore %s (%s on %s)", ds.name, ds.uuid, ds.disk)
			if err := ls.destroy(ds.id, true, false); err != nil {
				log.Printf("storage: stopping: datastore %s (%s): %v", ds.name, ds.uuid, err)
			}
			delete(hs.datastores, ds.uuid)
		}
		hs.mu.Unlock()
		hs.objMu.Unlock()
	}
	if ls.ready() {
		if _, err := ls.run(context.Background(), []string{"sweep", "--state-dir", ls.stateDir}, "", time.Minute); err != nil {
			log.Printf("storage: stopping: sweep of %s: %v", ls.stateDir, err)
		}
	}
	_ = os.Remove(ls.stateDir)
	_ = os.Remove(ls.vmfsRoot)
	_ = os.Remove(filepath.Dir(ls.vmfsRoot))
}

// run runs labstore.py with args; secret (if any) goes to the child as LIBISCSI_CHAP_PASSWORD, never
// into argv. Its stderr lines go to the simulator's log. Returns its stdout.
func (ls *labStorage) run(ctx context.Context, args []string, secret string, timeout time.Duration) ([]byte, error) {
	if ls.labstore == "" {
		return nil, fmt.Errorf("labstore.py is not available (missing: %s)", strings.Join(ls.missing, ", "))
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ls.python, append([]string{ls.labstore}, args...)...)
	env := make([]string, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LIBISCSI_CHAP_PASSWORD=") {
			env = append(env, kv)
		}
	}
	if secret != "" {
		env = append(env, "LIBISCSI_CHAP_PASSWORD="+secret)
	}
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	last := ""
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			log.Printf("storage: %s", strings.TrimPrefix(line, "labstore: "))
			last = strings.TrimPrefix(line, "labstore: ")
		}
	}
	if ctx.Err() == context.DeadlineExceeded {
		return nil, fmt.Errorf("labstore.py %s did not finish within %s", args[0], timeout)
	}
	if err != nil {
		if last == "" {
			last = err.Error()
		}
		return nil, fmt.Errorf("%s", last)
	}
	return stdout.Bytes(), nil
}

// destroy unmounts and detaches a datastore; deletePartition also deletes its VMFS partition from
// the LUN's GPT (RemoveDatastore).
func (ls *labStorage) destroy(id string, force, deletePartition bool) error {
	args := []string{"destroy", "--state-dir", ls.stateDir, "--id", id}
	if force {
		args = append(args, "--force")
	}
	if deletePartition {
		args = append(args, "--delete-partition")
	}
	_, err := ls.run(context.Background(), args, "", 3*time.Minute)
	return err
}

// -- per host -----------------------------------------------------------------------------------

// hostStorage is one host's storage: its software iSCSI adapter, the LUNs it found, its datastores.
//
// Locking: the simulator holds an object's lock during a SOAP call on it, and the PropertyCollector
// while it reads it. The storage and the datastore system of a host share ONE lock, objMu (both
// wrappers are sync.Lockers, which the simulator's registry uses as their lock), because a call on
// either changes both. Order: objMu, then mu, then the locks of other objects (host, folders,
// datacenter, ...) one at a time.
type hostStorage struct {
	lab  *labStorage
	host *mo.HostSystem
	ss   *labStorageSystem
	dss  *labDatastoreSystem

	objMu      sync.Mutex
	mu         sync.Mutex
	base       types.HostStorageDeviceInfo // this host's copy of the simulator's template, minus its empty IDE vmhba64
	baseFS     types.HostFileSystemVolumeInfo
	iscsiName  string
	swEnabled  bool // storageDeviceInfo.softwareInternetScsiEnabled
	hba        bool // the software adapter exists (enabled once; disabling only takes effect after a reboot)
	auth       chapConfig
	sendTgts   []*sendTarget
	statics    []types.HostInternetScsiHbaStaticTarget // targets found by the last rescan
	targetNum  map[string]int32
	luns       map[string]*iscsiLun // by canonical name
	datastores map[string]*vmfsDatastore
}

// do runs f holding mu. The caller is a SOAP method of the storage or datastore system, so it holds
// objMu already (see Lock below).
func (hs *hostStorage) do(ctx *simulator.Context, f func()) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	f()
}

func storageLock(ctx *simulator.Context, obj mo.Reference, f func()) {
	if ctx != nil {
		ctx.WithLock(obj, f)
	} else {
		simulator.Map.WithLock(obj, f)
	}
}

var iqnLabel = regexp.MustCompile(`[^a-z0-9-]+`)

// defaultIscsiName is what ESXi names its software adapter: iqn.1998-01.com.vmware:<short host name>-<8 hex>.
func defaultIscsiName(host string) string {
	name := strings.ToLower(host)
	if i := strings.IndexByte(name, '.'); i > 0 && !regexp.MustCompile(`^[0-9.]+$`).MatchString(name) {
		name = name[:i]
	}
	name = strings.Trim(iqnLabel.ReplaceAllString(name, "-"), "-")
	if name == "" {
		name = "esx"
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return "iqn.1998-01.com.vmware:" + name + "-" + hex.EncodeToString(b)
}

// initDeviceInfo copies the simulator's storage template for this host (the simulator shares ONE
// template between all hosts) without its empty secondary IDE channel vmhba64: on ESXi 6.5+ the
// software iSCSI adapter is vmhba64.
func (hs *hostStorage) initDeviceInfo() {
	src := hs.ss.StorageDeviceInfo
	if src == nil {
		src = &types.HostStorageDeviceInfo{}
	}
	b := *src
	b.HostBusAdapter = nil
	for _, a := range src.HostBusAdapter {
		if a.GetHostHostBusAdapter().Device != swIscsiDevice {
			b.HostBusAdapter = append(b.HostBusAdapter, a)
		}
	}
	b.ScsiLun = append([]types.BaseScsiLun{}, src.ScsiLun...)
	if src.ScsiTopology != nil {
		t := *src.ScsiTopology
		t.Adapter = nil
		for _, a := range src.ScsiTopology.Adapter {
			if !strings.HasSuffix(a.Adapter, "-"+swIscsiDevice) {
				t.Adapter = append(t.Adapter, a)
			}
		}
		b.ScsiTopology = &t
	} else {
		b.ScsiTopology = &types.HostScsiTopology{}
	}
	if src.MultipathInfo != nil {
		m := *src.MultipathInfo
		m.Lun = append([]types.HostMultipathInfoLogicalUnit{}, src.MultipathInfo.Lun...)
		b.MultipathInfo = &m
	} else {
		b.MultipathInfo = &types.HostMultipathInfo{}
	}
	if src.PlugStoreTopology != nil {
		p := *src.PlugStoreTopology
		p.Adapter = nil
		for _, a := range src.PlugStoreTopology.Adapter {
			if !strings.HasSuffix(a.Adapter, "-"+swIscsiDevice) {
				p.Adapter = append(p.Adapter, a)
			}
		}
		b.PlugStoreTopology = &p
	}
	b.SoftwareInternetScsiEnabled = false
	hs.base = b
	if hs.host.Config != nil && hs.host.Config.FileSystemVolume != nil {
		hs.baseFS = *hs.host.Config.FileSystemVolume
	} else {
		hs.baseFS = hs.ss.FileSystemVolumeInfo
	}
	hs.baseFS.MountInfo = append([]types.HostFileSystemMountInfo{}, hs.baseFS.MountInfo...)
}

// publish makes the current state what the API shows: HostStorageSystem.storageDeviceInfo and
// fileSystemVolumeInfo, HostSystem.config.storageDevice and config.fileSystemVolume. Fresh values each
// time: nothing a reader may hold is changed in place. The caller holds objMu.
func (hs *hostStorage) publish(ctx *simulator.Context) {
	info := hs.base
	info.HostBusAdapter = append([]types.BaseHostHostBusAdapter{}, hs.base.HostBusAdapter...)
	info.ScsiLun = append([]types.BaseScsiLun{}, hs.base.ScsiLun...)
	topo := *hs.base.ScsiTopology
	topo.Adapter = append([]types.HostScsiTopologyInterface{}, hs.base.ScsiTopology.Adapter...)
	mp := *hs.base.MultipathInfo
	mp.Lun = append([]types.HostMultipathInfoLogicalUnit{}, hs.base.MultipathInfo.Lun...)
	if hs.hba {
		info.HostBusAdapter = append(info.HostBusAdapter, hs.adapter())
		topo.Adapter = append(topo.Adapter, hs.topologyInterface())
		for _, name := range hs.sortedLunNames() {
			l := hs.luns[name]
			info.ScsiLun = append(info.ScsiLun, l.scsiDisk())
			mp.Lun = append(mp.Lun, l.multipath())
		}
	}
	info.ScsiTopology = &topo
	info.MultipathInfo = &mp
	info.SoftwareInternetScsiEnabled = hs.swEnabled

	fs := hs.baseFS
	fs.MountInfo = append([]types.HostFileSystemMountInfo{}, hs.baseFS.MountInfo...)
	for _, ds := range hs.sortedDatastores() {
		fs.MountInfo = append(fs.MountInfo, ds.mountInfo())
	}
	hs.ss.StorageDeviceInfo = &info
	hs.ss.FileSystemVolumeInfo = fs
	fsCopy := fs
	storageLock(ctx, hs.host, func() {
		if hs.host.Config != nil {
			hs.host.Config.StorageDevice = &info
			hs.host.Config.FileSystemVolume = &fsCopy
		}
	})
}

func (hs *hostStorage) sortedLunNames() []string {
	names := make([]string, 0, len(hs.luns))
	for n := range hs.luns {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (hs *hostStorage) sortedDatastores() []*vmfsDatastore {
	list := make([]*vmfsDatastore, 0, len(hs.datastores))
	for _, ds := range hs.datastores {
		list = append(list, ds)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })
	return list
}

// datastoreUsing is the datastore on the LUN with this canonical name, or nil.
func (hs *hostStorage) datastoreUsing(canonical string) *vmfsDatastore {
	for _, ds := range hs.datastores {
		if ds.disk == canonical {
			return ds
		}
	}
	return nil
}

func storageDecodeJSON(data []byte, v interface{}) error {
	if err := json.Unmarshal(bytes.TrimSpace(data), v); err != nil {
		return fmt.Errorf("labstore.py printed no usable JSON (%v): %.200s", err, data)
	}
	return nil
}
