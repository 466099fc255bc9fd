package main

// Extension "compat": pyvmomi >= 8 against govmomi 0.24.2's simulator.
//
//  1. pyvmomi 8 reads a property with the internal "Fetch" method. 0.24.2's Fetch indexes
//     MissingSet[0] when the property is unset (vm.snapshot of a VM without snapshots):
//     the handler panics and the connection drops (RemoteDisconnected). ESXi answers an
//     unset property with an empty FetchResponse (pyvmomi returns None). The wrapped
//     PropertyCollector does that.
//  2. 0.24.2 sets task.info.entity to the object the method ran on, also when that is not
//     a ManagedEntity (FileManager, VirtualDiskManager, a VirtualMachineSnapshot, ...), and
//     entityName to its moref. pyvmomi 8 type-checks info.entity (vim.ManagedEntity) and
//     fails on task.info. ESXi/vCenter leave entity unset for the managers and report the
//     VM for a snapshot's task, with the entity's name. A registry handler fixes each new
//     Task as it is registered.

import (
	"reflect"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func init() {
	registerExtension("compat", setupCompat)
}

func setupCompat(ctx *labContext) error {
	pcRef := ctx.Model.ServiceContent.PropertyCollector
	pc := &labPropertyCollector{}
	pc.Self = pcRef
	simulator.Map.Put(pc)
	simulator.Map.AddHandler(&taskFixer{Self: types.ManagedObjectReference{Type: "LabTaskFixer", Value: "lab-task-fixer"}})
	// ESXi reports a VM's snapshot capabilities as true where 0.24.2 leaves them false (the lab VMs of content.go
	// set theirs when they are made)
	for _, e := range simulator.Map.All("VirtualMachine") {
		if vm, ok := e.(*simulator.VirtualMachine); ok {
			vm.Capability.SnapshotOperationsSupported = true
			vm.Capability.MemorySnapshotsSupported = true
			vm.Capability.QuiescedSnapshotsSupported = true
			vm.Capability.SnapshotConfigSupported = true
		}
	}
	ctx.Env["snapshot_capabilities"] = "true, as ESXi reports them"
	ctx.Env["fetch_unset_property"] = "empty FetchResponse (pyvmomi: None)"
	ctx.Env["task_entity"] = "ManagedEntity or unset; a snapshot's task reports its VM"
	return nil
}

// labPropertyCollector embeds the simulator's by value: the session registry makes one
// per session with reflect.New of the registered type.
type labPropertyCollector struct {
	simulator.PropertyCollector
}

// FetchResponse is encoded as the response element of the internal Fetch method.
type FetchResponse struct {
	Returnval types.AnyType `xml:"returnval,omitempty,typeattr"`
}

type fetchBody struct {
	Res    *FetchResponse `xml:"FetchResponse,omitempty"`
	Fault_ *soap.Fault    `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault,omitempty"`
}

func (b *fetchBody) Fault() *soap.Fault { return b.Fault_ }

// Fetch takes the simulator's internal request type (package internal: reached by reflection).
func (pc *labPropertyCollector) Fetch(ctx *simulator.Context, req interface{}) soap.HasFault {
	rv := reflect.ValueOf(req).Elem()
	this, _ := rv.FieldByName("This").Interface().(types.ManagedObjectReference)
	prop, _ := rv.FieldByName("Prop").Interface().(string)
	if this == vim25.ServiceInstance || ctx.Map.Get(this) == nil {
		// ServiceContent and super-type lookups: the simulator's own code
		out := reflect.ValueOf(&pc.PropertyCollector).MethodByName("Fetch").Call(
			[]reflect.Value{reflect.ValueOf(ctx), reflect.ValueOf(req)})
		return out[0].Interface().(soap.HasFault)
	}
	res := pc.RetrievePropertiesEx(ctx, &types.RetrievePropertiesEx{
		SpecSet: []types.PropertyFilterSpec{{
			PropSet:   []types.PropertySpec{{Type: this.Type, PathSet: []string{prop}}},
			ObjectSet: []types.ObjectSpec{{Obj: this}},
		}}})
	if f := res.Fault(); f != nil {
		return &fetchBody{Fault_: f}
	}
	body := &fetchBody{Res: &FetchResponse{}}
	rr := res.(*methods.RetrievePropertiesExBody).Res.Returnval
	if rr == nil || len(rr.Objects) == 0 {
		return &fetchBody{Fault_: simulator.Fault("The object has already been deleted or has not been completely created",
			&types.ManagedObjectNotFound{Obj: this})}
	}
	obj := rr.Objects[0]
	if len(obj.PropSet) > 0 {
		body.Res.Returnval = obj.PropSet[0].Val
		return body
	}
	if len(obj.MissingSet) > 0 {
		f := obj.MissingSet[0].Fault
		return &fetchBody{Fault_: simulator.Fault(f.LocalizedMessage, f.Fault)}
	}
	return body // unset property: empty response, as ESXi
}

// taskFixer is a registry handler that corrects info.entity / info.entityName of new tasks.
type taskFixer struct {
	Self types.ManagedObjectReference
}

func (f *taskFixer) Reference() types.ManagedObjectReference { return f.Self }

func (f *taskFixer) PutObject(obj mo.Reference) {
	t, ok := obj.(*simulator.Task)
	if !ok || t.Info.Entity == nil {
		return
	}
	ref := *t.Info.Entity
	target := simulator.Map.Get(ref)
	if snap := snapshotOf(target); snap != nil {
		ref = snap.Vm
		target = simulator.Map.Get(ref)
	}
	if e, ok := target.(mo.Entity); ok {
		t.Info.Entity = &ref
		t.Info.EntityName = e.Entity().Name
		return
	}
	t.Info.Entity = nil
	t.Info.EntityName = ""
}

func (f *taskFixer) UpdateObject(mo.Reference, []types.PropertyChange) {}

func (f *taskFixer) RemoveObject(types.ManagedObjectReference) {}

func snapshotOf(obj mo.Reference) *mo.VirtualMachineSnapshot {
	switch s := obj.(type) {
	case *labSnapshot:
		return &s.VirtualMachineSnapshot
	case *simulator.VirtualMachineSnapshot:
		return &s.VirtualMachineSnapshot
	}
	return nil
}
