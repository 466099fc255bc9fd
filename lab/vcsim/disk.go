package main

// Virtual disk files of the lab's VMs: ESXi descriptors, thin flat extents and the lab's
// delta ("seSparse") format, read and written as a chain (see BEHAVIOUR-vms.md).
//
// Base disk: "<name>.vmdk" (createType="vmfs") + "<name>-flat.vmdk", a sparse raw file of
// the virtual size (holes = never written, as a thin VMFS file).
// Delta: "<name>-00000N.vmdk" (createType="seSparse", parentFileNameHint, parentCID) +
// "<name>-00000N-sesparse.vmdk". The extent is NOT VMware's SE Sparse on-disk format (no
// header, no grain tables): it is a sparse raw overlay of the virtual size, allocated in
// whole grains of grainSize bytes; a grain that holds data overrides the parent's.

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

// grainSize is the allocation unit of the lab's delta extents (a multiple of any file
// system block size, so SEEK_DATA/SEEK_HOLE see whole grains).
const grainSize = 64 * 1024

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

// grainAllocated tells whether the grain holding off has data in the delta extent f.
func grainAllocated(f *os.File, off int64) (bool, error) {
	g := off - off%grainSize
	start, err := syscall.Seek(int(f.Fd()), g, seekData)
	if err != nil {
		if errors.Is(err, syscall.ENXIO) {
			return false, nil
		}
		return false, err
	}
	return start < g+grainSize, nil
}

// chainReadAt reads len(buf) bytes at off from the disk state seen at unit top of chain.
func chainReadAt(chain []*diskUnit, top int, buf []byte, off int64) error {
	for len(buf) > 0 {
		n := int64(len(buf))
		if rem := grainSize - off%grainSize; n > rem {
			n = rem
		}
		if err := readGrainPart(chain, top, buf[:n], off); err != nil {
			return err
		}
		buf = buf[n:]
		off += n
	}
	return nil
}

// readGrainPart reads a piece that lies inside one grain.
func readGrainPart(chain []*diskUnit, top int, buf []byte, off int64) error {
	for i := top; i >= 0; i-- {
		u := chain[i]
		f, err := os.Open(u.ExtentLocal)
		if err != nil {
			return err
		}
		use := !u.Delta
		if u.Delta {
			use, err = grainAllocated(f, off)
			if err != nil {
				f.Close()
				return err
			}
		}
		if use {
			_, err = f.ReadAt(buf, off)
			f.Close()
			if err == io.EOF {
				err = nil
			}
			return err
		}
		f.Close()
	}
	for i := range buf {
		buf[i] = 0
	}
	return nil
}

// chainWriteAt writes data at off into the leaf (last unit) of chain. A delta leaf is
// copy-on-write by grain: a grain it does not hold yet is first filled from below.
func chainWriteAt(chain []*diskUnit, data []byte, off int64) error {
	top := len(chain) - 1
	leaf := chain[top]
	f, err := os.OpenFile(leaf.ExtentLocal, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if leaf.Delta {
		first := off - off%grainSize
		for g := first; g < off+int64(len(data)); g += grainSize {
			ok, err := grainAllocated(f, g)
			if err != nil {
				return err
			}
			if ok {
				continue
			}
			grain := make([]byte, grainSize)
			if top > 0 {
				if err := chainReadAt(chain, top-1, grain, g); err != nil {
					return err
				}
			}
			if _, err := f.WriteAt(grain, g); err != nil {
				return err
			}
		}
	}
	_, err = f.WriteAt(data, off)
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

// mergeInto writes the data grains of unit upper into unit lower (consolidation).
func mergeInto(upper, lower *diskUnit, size int64) error {
	src, err := os.Open(upper.ExtentLocal)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(lower.ExtentLocal, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if _, err = copyExtents(src, dst, size); err != nil {
		dst.Close()
		return err
	}
	if err = dst.Sync(); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
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

// materialize writes the disk state of chain[0..top] into a new flat file dst (sparse:
// only data extents of the units are written), then optionally allocates it whole.
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
		in, err := os.Open(chain[i].ExtentLocal)
		if err != nil {
			return fail(err)
		}
		_, err = copyExtents(in, out, size)
		in.Close()
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

// allocatedAreas is the union of the data extents of chain[0..top], merged and sorted.
func allocatedAreas(chain []*diskUnit, top int, size int64) ([][2]int64, error) {
	var all [][2]int64
	for i := 0; i <= top; i++ {
		ex, err := fileExtents(chain[i].ExtentLocal, size)
		if err != nil {
			return nil, err
		}
		all = append(all, ex...)
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
