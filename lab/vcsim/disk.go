package main

// Virtual disk files of the lab's VMs: ESXi descriptors, thin flat extents and SEsparse
// delta extents, read and written as a chain (see BEHAVIOUR-vms.md).
//
// Base disk: "<name>.vmdk" (createType="vmfs") + "<name>-flat.vmdk", a sparse raw file of
// the virtual size (holes = never written, as a thin VMFS file).
// Delta: "<name>-00000N.vmdk" (createType="seSparse", parentFileNameHint, parentCID) +
// "<name>-00000N-sesparse.vmdk", a VMware SEsparse extent (sesparse.go: const and volatile
// headers, grain directory, grain tables, 4 KiB grains) as ESXi writes it on VMFS6; QEMU's
// vmdk driver and dissect.hypervisor read the chain. A grain the delta holds overrides the
// parent's; writes into a delta leaf are copy-on-write by 4 KiB grain.

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// cbtBlockSize is the unit in which the lab's CBT (QueryChangedDiskAreas with a change id)
// records the guest's writes; delta extents allocate in SEsparse grains (seGrainBytes).
const cbtBlockSize = 64 * 1024

const (
	seekData = 3 // SEEK_DATA (Linux)
	seekHole = 4 // SEEK_HOLE (Linux)
)

// descriptor is a parsed VMware disk descriptor.
type descriptor struct {
	CID          string
	ParentCID    string
	CreateType   string
	ParentHint   string
	Sectors      int64
	ExtentType   string // VMFS, SESPARSE, ...
	ExtentFile   string // relative to the descriptor's folder
	DDB          map[string]string
	ddbKeysOrder []string
}

var extentRE = regexp.MustCompile(`^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\S+)\s+"(.*)"`)

func parseDescriptor(data []byte) (*descriptor, error) {
	d := &descriptor{DDB: map[string]string{}}
	for _, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if m := extentRE.FindStringSubmatch(line); m != nil {
			if d.ExtentFile != "" {
				return nil, errors.New("more than one extent: not a lab disk")
			}
			d.Sectors, _ = strconv.ParseInt(m[2], 10, 64)
			d.ExtentType = m[3]
			d.ExtentFile = m[4]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		v = strings.Trim(strings.TrimSpace(v), `"`)
		switch k {
		case "CID":
			d.CID = v
		case "parentCID":
			d.ParentCID = v
		case "createType":
			d.CreateType = v
		case "parentFileNameHint":
			d.ParentHint = v
		default:
			if strings.HasPrefix(k, "ddb.") {
				d.DDB[k] = v
				d.ddbKeysOrder = append(d.ddbKeysOrder, k)
			}
		}
	}
	if d.ExtentFile == "" || d.Sectors <= 0 || d.CreateType == "" {
		return nil, errors.New("no extent line or createType: not a disk descriptor")
	}
	return d, nil
}

func readDescriptor(local string) (*descriptor, error) {
	data, err := os.ReadFile(local)
	if err != nil {
		return nil, err
	}
	d, err := parseDescriptor(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", local, err)
	}
	return d, nil
}

// render writes the descriptor in ESXi's layout (DDB keys sorted as ESXi writes them).
func (d *descriptor) render() []byte {
	var b strings.Builder
	b.WriteString("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\n")
	fmt.Fprintf(&b, "CID=%s\nparentCID=%s\n", d.CID, d.ParentCID)
	fmt.Fprintf(&b, "createType=\"%s\"\n", d.CreateType)
	if d.ParentHint != "" {
		fmt.Fprintf(&b, "parentFileNameHint=\"%s\"\n", d.ParentHint)
	}
	fmt.Fprintf(&b, "\n# Extent description\nRW %d %s \"%s\"\n", d.Sectors, d.ExtentType, d.ExtentFile)
	b.WriteString("\n# The Disk Data Base\n#DDB\n\n")
	keys := make([]string, 0, len(d.DDB))
	for k := range d.DDB {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = \"%s\"\n", k, d.DDB[k])
	}
	return []byte(b.String())
}

func writeFileAtomic(p string, data []byte) error {
	tmp := p + ".lab-tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

func randomCID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	v := binary.BigEndian.Uint32(b[:])
	if v == 0xffffffff || v == 0xfffffffe {
		v = 0x1234abcd
	}
	return fmt.Sprintf("%08x", v)
}

// ddbUUID is a VMFS-style disk uuid: "60 00 C2 9x xx xx xx xx-xx xx xx xx xx xx xx xx".
func ddbUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[0], b[1], b[2] = 0x60, 0x00, 0xC2
	b[3] = 0x90 | (b[3] & 0x0f)
	parts := make([]string, 16)
	for i, c := range b {
		parts[i] = fmt.Sprintf("%02x", c)
	}
	parts[0], parts[1], parts[2] = "60", "00", "C2"
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ")
}

// diskUnit is one link of a disk chain: a descriptor and its single extent.
type diskUnit struct {
	DescDS      string // "[LocalDS_0] dir/name.vmdk"
	DescLocal   string
	ExtentDS    string
	ExtentLocal string
	Delta       bool
	Desc        *descriptor
}

// extentsOf lists the data extents [start, end) of a sparse file (SEEK_DATA/SEEK_HOLE).
func extentsOf(f *os.File, size int64) ([][2]int64, error) {
	var out [][2]int64
	fd := int(f.Fd())
	off := int64(0)
	for off < size {
		start, err := syscall.Seek(fd, off, seekData)
		if err != nil {
			if errors.Is(err, syscall.ENXIO) {
				break
			}
			return nil, err
		}
		if start >= size {
			break
		}
		end, err := syscall.Seek(fd, start, seekHole)
		if err != nil {
			return nil, err
		}
		if end > size {
			end = size
		}
		out = append(out, [2]int64{start, end})
		off = end
	}
	return out, nil
}

// fileExtents opens a file and lists its data extents up to size.
func fileExtents(p string, size int64) ([][2]int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return extentsOf(f, size)
}

// openUnit is one link of a chain opened for I/O: a flat extent or a delta's SEsparse extent.
type openUnit struct {
	flat *os.File
	se   *seSparse
}

// openUnits opens chain[0..top] for reading, the leaf chain[top] also for writing when
// writeLeaf is set.
func openUnits(chain []*diskUnit, top int, writeLeaf bool) ([]openUnit, error) {
	us := make([]openUnit, top+1)
	for i := 0; i <= top; i++ {
		u := chain[i]
		w := writeLeaf && i == top
		var err error
		if u.Delta {
			us[i].se, err = openSESparse(u.ExtentLocal, w)
		} else if w {
			us[i].flat, err = os.OpenFile(u.ExtentLocal, os.O_RDWR, 0)
		} else {
			us[i].flat, err = os.Open(u.ExtentLocal)
		}
		if err != nil {
			closeUnits(us)
			return nil, err
		}
	}
	return us, nil
}

func closeUnits(us []openUnit) {
	for _, u := range us {
		if u.flat != nil {
			u.flat.Close()
		}
		if u.se != nil {
			u.se.Close()
		}
	}
}

func zero(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

// readUnits reads len(buf) bytes at off of the disk as us[0..top] show it: per 4 KiB
// grain, the topmost delta that holds the grain, else the flat base.
func readUnits(us []openUnit, top int, buf []byte, off int64) error {
	for len(buf) > 0 {
		n := int64(len(buf))
		if rem := seGrainBytes - off%seGrainBytes; n > rem {
			n = rem
		}
		if err := readGrainPart(us, top, buf[:n], off); err != nil {
			return err
		}
		buf = buf[n:]
		off += n
	}
	return nil
}

// readGrainPart reads a piece that lies inside one grain.
func readGrainPart(us []openUnit, top int, buf []byte, off int64) error {
	for i := top; i >= 0; i-- {
		u := us[i]
		if u.se == nil {
			n, err := u.flat.ReadAt(buf, off)
			if err == io.EOF { // a flat extent shorter than the disk: zeros
				zero(buf[n:])
				err = nil
			}
			return err
		}
		kind, fileOff, err := u.se.lookup(off / seGrainBytes)
		if err != nil {
			return err
		}
		switch kind {
		case seTypeAlloc:
			return u.se.readIn(buf, fileOff+off%seGrainBytes)
		case seTypeZero:
			zero(buf)
			return nil
		}
	}
	zero(buf)
	return nil
}

// chainReadAt reads len(buf) bytes at off from the disk state seen at unit top of chain.
func chainReadAt(chain []*diskUnit, top int, buf []byte, off int64) error {
	us, err := openUnits(chain, top, false)
	if err != nil {
		return err
	}
	defer closeUnits(us)
	return readUnits(us, top, buf, off)
}

// chainWriteAt writes data at off into the leaf (last unit) of chain. A delta leaf is
// copy-on-write by 4 KiB grain: a grain it does not hold yet is first filled from below,
// then stored whole in a new grain of its SEsparse extent.
func chainWriteAt(chain []*diskUnit, data []byte, off int64) error {
	top := len(chain) - 1
	leaf := chain[top]
	if !leaf.Delta {
		f, err := os.OpenFile(leaf.ExtentLocal, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteAt(data, off)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	us, err := openUnits(chain, top, true)
	if err != nil {
		return err
	}
	defer closeUnits(us)
	se := us[top].se
	if off < 0 || off+int64(len(data)) > se.sizeBytes() {
		return fmt.Errorf("%s: write of %d bytes at %d beyond the disk's %d bytes", leaf.ExtentLocal, len(data), off, se.sizeBytes())
	}
	for len(data) > 0 {
		vg, in := off/seGrainBytes, off%seGrainBytes
		n := int64(len(data))
		if rem := seGrainBytes - in; n > rem {
			n = rem
		}
		kind, fileOff, err := se.lookup(vg)
		if err != nil {
			return err
		}
		if kind == seTypeAlloc {
			if _, err := se.f.WriteAt(data[:n], fileOff+in); err != nil {
				return err
			}
		} else {
			grain := make([]byte, seGrainBytes)
			if n < seGrainBytes && kind == seTypeUnused && top > 0 {
				if err := readUnits(us, top-1, grain, vg*seGrainBytes); err != nil {
					return err
				}
			}
			copy(grain[in:], data[:n])
			if err := se.writeGrain(vg, grain); err != nil {
				return err
			}
		}
		data = data[n:]
		off += n
	}
	return nil
}

// deltaGrains calls fn with the data of every grain the delta extent at p holds (allocated:
// its 4 KiB; zero grain: zeros), in disk order.
func deltaGrains(p string, fn func(vg int64, data []byte) error) error {
	se, err := openSESparse(p, false)
	if err != nil {
		return err
	}
	defer se.Close()
	buf := make([]byte, seGrainBytes)
	return se.grains(func(vg int64, kind uint64, fileOff int64) error {
		if kind == seTypeAlloc {
			if err := se.readIn(buf, fileOff); err != nil {
				return err
			}
		} else {
			zero(buf)
		}
		return fn(vg, buf)
	})
}

// writeGrainFlat writes grain vg's data into a flat extent of size bytes (the last grain clipped).
func writeGrainFlat(f *os.File, size, vg int64, data []byte) error {
	start := vg * seGrainBytes
	n := size - start
	if n <= 0 {
		return nil
	}
	if n > int64(len(data)) {
		n = int64(len(data))
	}
	_, err := f.WriteAt(data[:n], start)
	return err
}

// copyExtents copies the data extents of src (holes skipped) into dst at the same offsets.
func copyExtents(src, dst *os.File, size int64) (int64, error) {
	exts, err := extentsOf(src, size)
	if err != nil {
		return 0, err
	}
	var copied int64
	buf := make([]byte, 1<<20)
	for _, e := range exts {
		for off := e[0]; off < e[1]; {
			n := int64(len(buf))
			if e[1]-off < n {
				n = e[1] - off
			}
			if _, err := src.ReadAt(buf[:n], off); err != nil && err != io.EOF {
				return copied, err
			}
			if _, err := dst.WriteAt(buf[:n], off); err != nil {
				return copied, err
			}
			off += n
			copied += n
		}
	}
	return copied, nil
}

// mergeInto writes the grains of delta unit upper into unit lower (consolidation): into a
// flat extent at their offsets, into an SEsparse delta as whole grains.
func mergeInto(upper, lower *diskUnit, size int64) error {
	if !upper.Delta {
		return fmt.Errorf("%s is not a delta", upper.DescLocal)
	}
	if lower.Delta {
		dst, err := openSESparse(lower.ExtentLocal, true)
		if err != nil {
			return err
		}
		err = deltaGrains(upper.ExtentLocal, dst.writeGrain)
		if err == nil {
			err = dst.f.Sync()
		}
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
		return err
	}
	dst, err := os.OpenFile(lower.ExtentLocal, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = deltaGrains(upper.ExtentLocal, func(vg int64, data []byte) error {
		return writeGrainFlat(dst, size, vg, data)
	})
	if err == nil {
		err = dst.Sync()
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

// copySparseFile copies a sparse file keeping its holes (used for .vmem and flat copies).
func copySparseFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err = out.Truncate(st.Size()); err == nil {
		_, err = copyExtents(in, out, st.Size())
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// materialize writes the disk state of chain[0..top] into a new flat file dst (sparse: the
// base's data extents, then each delta's grains over them), then optionally allocates it whole.
func materialize(chain []*diskUnit, top int, size int64, dst string, preallocate bool) error {
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		out.Close()
		_ = os.Remove(dst)
		return err
	}
	if err = out.Truncate(size); err != nil {
		return fail(err)
	}
	for i := 0; i <= top; i++ {
		if chain[i].Delta {
			err = deltaGrains(chain[i].ExtentLocal, func(vg int64, data []byte) error {
				return writeGrainFlat(out, size, vg, data)
			})
		} else {
			var in *os.File
			if in, err = os.Open(chain[i].ExtentLocal); err == nil {
				_, err = copyExtents(in, out, size)
				in.Close()
			}
		}
		if err != nil {
			return fail(err)
		}
	}
	if preallocate {
		if err = syscall.Fallocate(int(out.Fd()), 0, 0, size); err != nil {
			return fail(err)
		}
	}
	if err = out.Sync(); err != nil {
		return fail(err)
	}
	return out.Close()
}

// allocatedAreas is the union of what chain[0..top] holds: the data extents of the flat
// base and the grains of the deltas, merged and sorted.
func allocatedAreas(chain []*diskUnit, top int, size int64) ([][2]int64, error) {
	var all [][2]int64
	for i := 0; i <= top; i++ {
		if !chain[i].Delta {
			ex, err := fileExtents(chain[i].ExtentLocal, size)
			if err != nil {
				return nil, err
			}
			all = append(all, ex...)
			continue
		}
		se, err := openSESparse(chain[i].ExtentLocal, false)
		if err != nil {
			return nil, err
		}
		err = se.grains(func(vg int64, _ uint64, _ int64) error {
			s, e := vg*seGrainBytes, (vg+1)*seGrainBytes
			if e > size {
				e = size
			}
			if n := len(all); n > 0 && all[n-1][1] == s {
				all[n-1][1] = e
			} else if s < e {
				all = append(all, [2]int64{s, e})
			}
			return nil
		})
		se.Close()
		if err != nil {
			return nil, err
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i][0] < all[j][0] })
	var out [][2]int64
	for _, e := range all {
		if n := len(out); n > 0 && e[0] <= out[n-1][1] {
			if e[1] > out[n-1][1] {
				out[n-1][1] = e[1]
			}
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// dsJoin joins a datastore path folder and a file name: "[ds] dir" + "f" -> "[ds] dir/f".
func dsJoin(dir, name string) string {
	if strings.HasSuffix(dir, "]") {
		return dir + " " + name
	}
	return dir + "/" + name
}

// dsDir is the folder part of a datastore path.
func dsDir(p string) string {
	i := strings.LastIndex(p, "/")
	if i < 0 {
		if j := strings.Index(p, "]"); j >= 0 {
			return p[:j+1]
		}
		return p
	}
	return p[:i]
}

func baseNoExt(p string) string {
	b := path.Base(p)
	return strings.TrimSuffix(b, path.Ext(b))
}
