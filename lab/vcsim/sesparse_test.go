package main

// The lab's SEsparse deltas against two independent readers: a chain flat base + delta +
// delta written by the lab (random data at random offsets: unaligned, spanning grains and
// 16 MiB grain-table boundaries, at the end of the disk) must read byte for byte the same
// through the lab's own chain read, `qemu-img convert -O raw` of the top descriptor (QEMU
// follows parentFileNameHint and checks parentCID) and dissect.hypervisor's VMDK of the top
// descriptor; then both consolidations (delta into delta, delta into flat) keep the content.
//
// Run as lab/vcsim/build.sh builds (GOPATH mode, Debian's govmomi), from lab/vcsim:
//
//	env GO111MODULE=off GOFLAGS= GOPATH=$LAB_DIR/go/path:/usr/share/gocode \
//	    GOCACHE=$LAB_DIR/go/cache go test -run SESparse -v ./*.go
//
// SESPARSE_PYTHON names the Python with dissect.hypervisor (default ../../.venv/bin/python);
// without qemu-img or dissect those comparisons skip, unless SESPARSE_REQUIRE_TOOLS=1
// (tests/integration/lab/test_sesparse.py sets it), which makes them fail instead.
// SESPARSE_SEED repeats a run.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

type seFixture struct {
	t     *testing.T
	dir   string
	size  int64
	rnd   *rand.Rand
	model []byte
	spans [][2]int64 // every range written
}

func (fx *seFixture) need(tool string) bool {
	fx.t.Helper()
	if os.Getenv("SESPARSE_REQUIRE_TOOLS") == "1" {
		fx.t.Fatalf("SESPARSE_REQUIRE_TOOLS=1 but %s is missing", tool)
	}
	fx.t.Skipf("%s is missing: comparison skipped", tool)
	return false
}

// write writes len bytes of random data at off through the chain and into the model.
func (fx *seFixture) write(chain []*diskUnit, off, n int64) {
	fx.t.Helper()
	if off < 0 {
		off = 0
	}
	if off+n > fx.size {
		n = fx.size - off
	}
	if n <= 0 {
		return
	}
	data := make([]byte, n)
	fx.rnd.Read(data)
	if err := chainWriteAt(chain, data, off); err != nil {
		fx.t.Fatalf("chainWriteAt(%d, %d): %v", off, n, err)
	}
	copy(fx.model[off:], data)
	fx.spans = append(fx.spans, [2]int64{off, off + n})
}

// scatter writes k random pieces: unaligned, grain-aligned, across 16 MiB table
// boundaries, tiny, at the end of the disk.
func (fx *seFixture) scatter(chain []*diskUnit, k int) {
	r := fx.rnd
	for i := 0; i < k; i++ {
		switch i % 6 {
		case 0: // anywhere, unaligned
			fx.write(chain, r.Int63n(fx.size), 1+r.Int63n(40000))
		case 1: // across a 16 MiB table boundary
			b := (1 + r.Int63n(fx.size/seTableCover)) * seTableCover
			fx.write(chain, b-1-r.Int63n(9000), 2+r.Int63n(20000))
		case 2: // whole grains
			fx.write(chain, r.Int63n(fx.size/seGrainBytes)*seGrainBytes, (1+r.Int63n(5))*seGrainBytes)
		case 3: // one byte
			fx.write(chain, r.Int63n(fx.size), 1)
		case 4: // the end of the disk
			n := 1 + r.Int63n(12000)
			fx.write(chain, fx.size-n, n)
		case 5: // a large piece over several tables' worth of grains
			fx.write(chain, r.Int63n(fx.size), 1+r.Int63n(300000))
		}
	}
}

func (fx *seFixture) readChain(chain []*diskUnit, top int) []byte {
	fx.t.Helper()
	buf := make([]byte, fx.size)
	if err := chainReadAt(chain, top, buf, 0); err != nil {
		fx.t.Fatalf("chainReadAt: %v", err)
	}
	return buf
}

func firstDiff(a, b []byte) string {
	if len(a) != len(b) {
		return fmt.Sprintf("sizes %d and %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Sprintf("first difference at byte %d (grain %d)", i, i/seGrainBytes)
		}
	}
	return "equal"
}

func (fx *seFixture) same(what string, got, want []byte) {
	fx.t.Helper()
	if !bytes.Equal(got, want) {
		fx.t.Fatalf("%s: %s", what, firstDiff(got, want))
	}
}

// qemuRaw is `qemu-img convert -O raw` of the descriptor at desc.
func (fx *seFixture) qemuRaw(desc string) []byte {
	fx.t.Helper()
	out := filepath.Join(fx.dir, fmt.Sprintf("qemu-%d.raw", time.Now().UnixNano()))
	defer os.Remove(out)
	cmd := exec.Command("qemu-img", "convert", "-f", "vmdk", "-O", "raw", desc, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		fx.t.Fatalf("qemu-img convert %s: %v: %s", desc, err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		fx.t.Fatal(err)
	}
	return data
}

const dissectRaw = `import sys
from dissect.hypervisor.disk.vmdk import VMDK
v = VMDK(sys.argv[1])
with open(sys.argv[2], "wb") as out:
    out.write(v.read(v.size))
`

func (fx *seFixture) dissectRaw(python, desc string) []byte {
	fx.t.Helper()
	out := filepath.Join(fx.dir, fmt.Sprintf("dissect-%d.raw", time.Now().UnixNano()))
	defer os.Remove(out)
	cmd := exec.Command(python, "-c", dissectRaw, desc, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		fx.t.Fatalf("dissect.hypervisor VMDK %s: %v: %s", desc, err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		fx.t.Fatal(err)
	}
	return data
}

// checkStructure checks an SEsparse extent as written by the lab: header fields, the
// volatile header's free table number, directory entries, table entries (only types 0 and
// 3, distinct grain numbers) and the file size (grains appended, nothing else after them).
func checkStructure(t *testing.T, p string, size int64) int {
	t.Helper()
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := seLayoutFor(size)
	var h seHeader
	_ = binary.Read(bytes.NewReader(raw[:512]), binary.LittleEndian, &h)
	if h != want || !bytes.Equal(raw[208:512], make([]byte, 304)) {
		t.Fatalf("%s: const header %+v, want %+v", p, h, want)
	}
	le := binary.LittleEndian
	if le.Uint64(raw[512:]) != seVolatileMagic || le.Uint64(raw[512+24:]) != 0 {
		t.Fatalf("%s: volatile header", p)
	}
	freeGT := le.Uint64(raw[512+8:])
	tables := map[uint64]bool{}
	grains := map[uint64]bool{}
	ndir := int(ceilDiv(ceilDiv(h.Capacity, 8), seTableEntries))
	for di := 0; di < int(h.GrainDirSize*512/8); di++ {
		e := le.Uint64(raw[int(h.GrainDirOffset)*512+di*8:])
		if e == 0 {
			continue
		}
		n := e & 0xffffffff
		if di >= ndir || e>>32 != 0x10000000 || n >= freeGT || tables[n] {
			t.Fatalf("%s: directory entry %d = %#x (free_gt_number %d)", p, di, e, freeGT)
		}
		tables[n] = true
		base := int(h.GrainTablesOffset+n*64) * 512
		for i := 0; i < seTableEntries; i++ {
			te := le.Uint64(raw[base+i*8:])
			if te == 0 {
				continue
			}
			g := seDecodeGrain(te)
			if te&seTypeMask != seTypeAlloc || grains[g] || int64(di*seTableEntries+i) >= int64(ceilDiv(h.Capacity, 8)) {
				t.Fatalf("%s: table %d entry %d = %#x", p, n, i, te)
			}
			if seEncodeGrain(g) != te {
				t.Fatalf("%s: grain %d does not encode back to %#x", p, g, te)
			}
			grains[g] = true
		}
	}
	if uint64(len(tables)) != freeGT {
		t.Fatalf("%s: %d tables in the directory, free_gt_number %d", p, len(tables), freeGT)
	}
	for g := range grains {
		if g >= uint64(len(grains)) {
			t.Fatalf("%s: grain numbers are not 0..%d (has %d)", p, len(grains)-1, g)
		}
	}
	if wantSize := int64(h.GrainsOffset)*512 + int64(len(grains))*seGrainBytes; int64(len(raw)) != wantSize {
		t.Fatalf("%s: %d bytes, want %d (grains offset + %d grains)", p, len(raw), wantSize, len(grains))
	}
	return len(grains)
}

func TestSESparseChainQemuDissect(t *testing.T) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("SESPARSE_SEED"); s != "" {
		seed, _ = strconv.ParseInt(s, 10, 64)
	}
	t.Logf("SESPARSE_SEED=%d", seed)
	dir := t.TempDir()
	// 3 whole grain tables and a part of a fourth (a capacity ESXi could have: 50 MiB + 8 KiB)
	size := int64(50<<20 + 8192)
	fx := &seFixture{t: t, dir: dir, size: size, rnd: rand.New(rand.NewSource(seed)), model: make([]byte, size)}

	// the flat base, as make_disk.sh + content.go write it
	baseDesc := &descriptor{CID: randomCID(), ParentCID: "ffffffff", CreateType: "vmfs", Sectors: size / 512,
		ExtentType: "VMFS", ExtentFile: "lab-flat.vmdk",
		DDB: map[string]string{"ddb.adapterType": "lsilogic", "ddb.thinProvisioned": "1", "ddb.uuid": ddbUUID()}}
	baseLocal := filepath.Join(dir, "lab.vmdk")
	if err := writeFileAtomic(baseLocal, baseDesc.render()); err != nil {
		t.Fatal(err)
	}
	flat := filepath.Join(dir, "lab-flat.vmdk")
	if err := os.WriteFile(flat, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(flat, size); err != nil {
		t.Fatal(err)
	}
	base := &diskUnit{DescLocal: baseLocal, ExtentLocal: flat, Desc: baseDesc}
	chain := []*diskUnit{base}
	fx.scatter(chain, 30)
	model0 := append([]byte(nil), fx.model...)

	newDelta := func(parent *diskUnit, n int) *diskUnit {
		u, err := createDelta(parent, filepath.Base(parent.DescLocal),
			filepath.Join(dir, fmt.Sprintf("lab-%06d.vmdk", n)),
			filepath.Join(dir, fmt.Sprintf("lab-%06d-sesparse.vmdk", n)), size)
		if err != nil {
			t.Fatal(err)
		}
		if g := checkStructure(t, u.ExtentLocal, size); g != 0 {
			t.Fatalf("new delta holds %d grains", g)
		}
		return u
	}
	d1 := newDelta(base, 1)
	chain = append(chain, d1)
	fx.scatter(chain, 30)
	// more than 4096 grains: grain numbers >= 0x1000 use the entry's low 48 bits too
	fx.write(chain, 1+fx.rnd.Int63n(size/4), 18<<20)
	fx.scatter(chain, 30)
	model1 := append([]byte(nil), fx.model...)
	d2 := newDelta(d1, 2)
	chain = append(chain, d2)
	fx.scatter(chain, 60)
	model2 := append([]byte(nil), fx.model...)
	g1, g2 := checkStructure(t, d1.ExtentLocal, size), checkStructure(t, d2.ExtentLocal, size)
	t.Logf("delta 1: %d grains, delta 2: %d grains", g1, g2)
	if g1 <= 0x1000 {
		t.Fatalf("delta 1 holds %d grains: grain numbers above 0xfff untested", g1)
	}

	// the lab's own reads: each level as it was frozen; the base untouched by the delta writes
	fx.same("lab read of the base", fx.readChain(chain, 0), model0)
	fx.same("lab read at delta 1", fx.readChain(chain, 1), model1)
	fx.same("lab read at delta 2", fx.readChain(chain, 2), model2)
	flatData, _ := os.ReadFile(flat)
	fx.same("the base flat file", flatData, model0)

	// CopyVirtualDisk's materialize and CBT "*"'s allocated areas
	for top, want := range [][]byte{model0, model1, model2} {
		out := filepath.Join(dir, fmt.Sprintf("copy-%d.raw", top))
		if err := materialize(chain, top, size, out, false); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(out)
		fx.same(fmt.Sprintf("materialize at %d", top), got, want)
		os.Remove(out)
	}
	areas, err := allocatedAreas(chain, 2, size)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range fx.spans {
		covered := false
		for _, a := range areas {
			if a[0] <= s[0] && s[1] <= a[1] {
				covered = true
			}
		}
		if !covered {
			t.Fatalf("written range %v is not in the allocated areas", s)
		}
	}

	t.Run("qemu-img", func(t *testing.T) {
		fx.t = t
		if _, err := exec.LookPath("qemu-img"); err != nil {
			fx.need("qemu-img (apt-get install qemu-utils)")
		}
		out, err := exec.Command("qemu-img", "info", "--output=json", d2.DescLocal).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-img info: %v: %s", err, out)
		}
		var info struct {
			Format   string `json:"format"`
			Virtual  int64  `json:"virtual-size"`
			Specific struct {
				Data struct {
					CreateType string `json:"create-type"`
				} `json:"data"`
			} `json:"format-specific"`
			BackingFilename string `json:"backing-filename"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			t.Fatalf("qemu-img info: %v: %s", err, out)
		}
		if info.Format != "vmdk" || info.Specific.Data.CreateType != "seSparse" || info.Virtual != size {
			t.Fatalf("qemu-img info: %s", out)
		}
		fx.same("qemu-img convert of delta 2", fx.qemuRaw(d2.DescLocal), model2)
		fx.same("qemu-img convert of delta 1", fx.qemuRaw(d1.DescLocal), model1)
		fx.same("qemu-img convert of the base", fx.qemuRaw(baseLocal), model0)
	})
	t.Run("dissect", func(t *testing.T) {
		fx.t = t
		python := os.Getenv("SESPARSE_PYTHON")
		if python == "" {
			python, _ = filepath.Abs("../../.venv/bin/python")
		}
		if exec.Command(python, "-c", "import dissect.hypervisor.disk.vmdk").Run() != nil {
			fx.need("dissect.hypervisor in " + python + " (pip install dissect.hypervisor)")
		}
		fx.same("dissect VMDK of delta 2", fx.dissectRaw(python, d2.DescLocal), model2)
		fx.same("dissect VMDK of delta 1", fx.dissectRaw(python, d1.DescLocal), model1)
	})
	fx.t = t

	// consolidation: delta 2 into delta 1 (SEsparse into SEsparse), then delta 1 into the base
	if err := mergeInto(d2, d1, size); err != nil {
		t.Fatal(err)
	}
	checkStructure(t, d1.ExtentLocal, size)
	chain = chain[:2]
	fx.same("lab read after merging delta 2 into delta 1", fx.readChain(chain, 1), model2)
	if _, err := exec.LookPath("qemu-img"); err == nil {
		fx.same("qemu-img convert of delta 1 after the merge", fx.qemuRaw(d1.DescLocal), model2)
	}
	// a write after the merge (the reopened delta appends after its merged grains)
	fx.scatter(chain, 12)
	checkStructure(t, d1.ExtentLocal, size)
	fx.same("lab read after more writes", fx.readChain(chain, 1), fx.model)
	if err := mergeInto(d1, base, size); err != nil {
		t.Fatal(err)
	}
	flatData, _ = os.ReadFile(flat)
	fx.same("the base after consolidating everything", flatData, fx.model)
}

func TestSESparseGrainEncoding(t *testing.T) {
	for _, g := range []uint64{0, 1, 0xfff, 0x1000, 0x1001, 0x123456789, 1<<60 - 1} {
		e := seEncodeGrain(g)
		if e&seTypeMask != seTypeAlloc || seDecodeGrain(e) != g {
			t.Fatalf("grain %#x -> %#x -> %#x", g, e, seDecodeGrain(e))
		}
	}
	// the brief's example layout for a 64 MiB lab disk
	h := seLayoutFor(64 << 20)
	if h.Capacity != 131072 || h.GrainDirOffset != 4096 || h.GrainDirSize != 2048 || h.GrainTablesOffset != 6144 ||
		h.GrainTablesSize != 2048 || h.GrainsSize != 131072 || h.GrainsOffset != 12288 {
		t.Fatalf("layout of a 64 MiB disk: %+v", h)
	}
}
