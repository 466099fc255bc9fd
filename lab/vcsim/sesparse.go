package main

// VMware SEsparse ("space-efficient sparse") extents: the "<name>-00000N-sesparse.vmdk" file
// of a snapshot delta as ESXi 6.5+ writes it on VMFS6 (descriptor createType="seSparse",
// extent type SESPARSE). The lab writes the on-disk format that QEMU's vmdk driver and
// dissect.hypervisor read (see BEHAVIOUR-vms.md, "SEsparse deltas"); all fields are
// little-endian, offsets and sizes are in 512-byte sectors:
//
//	sector 0        const header (26 u64 + zero pad): magic 0xcafebabe, version 2.1,
//	                capacity, grain size 8 (4 KiB grains), grain table size 64 (one table
//	                = 4096 u64 entries = 16 MiB of the disk), the regions below
//	sector 1        volatile header: magic 0xcafecafe, free_gt_number (the next free grain
//	                table number), next_txn_seq_number, replay_journal (0)
//	sector 2, 2048  journal header, journal: never used by the lab (zeros)
//	sector 4096     grain directory: one u64 per 16 MiB, 0 = no table (read the parent),
//	                else 0x10000000<<32 | table number
//	...             grain tables (64 sectors each, numbered in allocation order), free
//	                bitmap and backmap (sized, left zero), then the grains, numbered in
//	                allocation order, each at grains_offset + g*8
//
// A grain table entry's top nibble is its type: 0 unallocated (read the parent), 1 SCSI
// unmapped, 2 zero grain, 3 allocated with grain number
// g = ((e>>48)&0xfff) | ((e&0xffffffffffff)<<12). The lab writes only types 0 and 3 (no
// journal, no unmap, no zero grains); it reads 1 and 2 as zeros. Every region is aligned to
// 1 MiB (2048 sectors) and sized for the capacity; the file is sparse up to the grains and
// grows by one grain (4 KiB) per allocation. Write order: grain data, then its table entry,
// then (new table) the directory entry and the volatile header's free_gt_number.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

const (
	seSector        = 512
	seMagic         = 0x00000000cafebabe
	seVersion       = 0x0000000200000001
	seVolatileMagic = 0x00000000cafecafe
	seGrainSectors  = 8
	seGrainBytes    = seGrainSectors * seSector // 4 KiB: ESXi's SEsparse default grain
	seTableSectors  = 64
	seTableEntries  = seTableSectors * seSector / 8 // 4096 grains per table
	seTableCover    = seTableEntries * seGrainBytes // 16 MiB of the disk per table
	seAlign         = 2048                          // sectors: regions start on 1 MiB boundaries

	seDirTable   = uint64(0x10000000) << 32 // grain directory entry of an allocated table
	seTypeMask   = uint64(0xf) << 60
	seTypeUnused = uint64(0x0) << 60 // unallocated: read the parent
	seTypeUnmap  = uint64(0x1) << 60 // SCSI-unmapped (never written by the lab)
	seTypeZero   = uint64(0x2) << 60 // zero grain (never written by the lab)
	seTypeAlloc  = uint64(0x3) << 60 // allocated grain
)

// seHeader is the const header's 26 fields (then 304 zero bytes to 512).
type seHeader struct {
	Magic, Version, Capacity, GrainSize, GrainTableSize, Flags uint64
	Reserved                                                   [4]uint64
	VolatileHeaderOffset, VolatileHeaderSize                   uint64
	JournalHeaderOffset, JournalHeaderSize                     uint64
	JournalOffset, JournalSize                                 uint64
	GrainDirOffset, GrainDirSize                               uint64
	GrainTablesOffset, GrainTablesSize                         uint64
	FreeBitmapOffset, FreeBitmapSize                           uint64
	BackmapOffset, BackmapSize                                 uint64
	GrainsOffset, GrainsSize                                   uint64
}

// seVolatile is the volatile header's 4 fields (then 480 zero bytes to 512).
type seVolatile struct {
	Magic, FreeGTNumber, NextTxnSeqNumber, ReplayJournal uint64
}

func ceilDiv(a, b uint64) uint64 { return (a + b - 1) / b }

func roundUp(a, b uint64) uint64 { return ceilDiv(a, b) * b }

// seLayoutFor is the header of a new SEsparse extent of capacity bytes.
func seLayoutFor(capacity int64) seHeader {
	sectors := ceilDiv(uint64(capacity), seSector)
	grains := ceilDiv(sectors, seGrainSectors)
	tables := ceilDiv(grains, seTableEntries)
	h := seHeader{
		Magic: seMagic, Version: seVersion, Capacity: sectors,
		GrainSize: seGrainSectors, GrainTableSize: seTableSectors,
		VolatileHeaderOffset: 1, VolatileHeaderSize: 1,
		JournalHeaderOffset: 2, JournalHeaderSize: 2,
		JournalOffset: seAlign, JournalSize: seAlign,
		GrainDirOffset: 2 * seAlign,
	}
	h.GrainDirSize = roundUp(ceilDiv(tables*8, seSector), seAlign)
	h.GrainTablesOffset = h.GrainDirOffset + h.GrainDirSize
	h.GrainTablesSize = roundUp(tables*seTableSectors, seAlign)
	h.FreeBitmapOffset = h.GrainTablesOffset + h.GrainTablesSize
	h.FreeBitmapSize = roundUp(ceilDiv(ceilDiv(tables, 8), seSector), seAlign) // a bit per table
	h.BackmapOffset = h.FreeBitmapOffset + h.FreeBitmapSize
	h.BackmapSize = roundUp(ceilDiv(grains*8, seSector), seAlign) // a u64 per grain
	h.GrainsOffset = h.BackmapOffset + h.BackmapSize
	h.GrainsSize = grains * seGrainSectors
	return h
}

func (h *seHeader) bytes() []byte {
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, h)
	b.Write(make([]byte, seSector-b.Len()))
	return b.Bytes()
}

func (v *seVolatile) bytes() []byte {
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, v)
	b.Write(make([]byte, seSector-b.Len()))
	return b.Bytes()
}

// createSESparse creates a new, empty SEsparse extent of capacity bytes at p (which must not
// exist): the headers written, the rest a hole up to the grains region.
func createSESparse(p string, capacity int64) error {
	h := seLayoutFor(capacity)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	vol := seVolatile{Magic: seVolatileMagic}
	_, err = f.WriteAt(h.bytes(), 0)
	if err == nil {
		_, err = f.WriteAt(vol.bytes(), int64(h.VolatileHeaderOffset)*seSector)
	}
	if err == nil {
		err = f.Truncate(int64(h.GrainsOffset) * seSector)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(p)
	}
	return err
}

// seSparse is an open SEsparse extent.
type seSparse struct {
	f         *os.File
	name      string
	h         seHeader
	vol       seVolatile
	dir       []uint64            // the directory entries covering the capacity
	tables    map[uint64][]uint64 // table number -> entries, read on demand
	nextGrain uint64
	writable  bool
}

// openSESparse opens an SEsparse extent, checking its headers as QEMU does.
func openSESparse(p string, writable bool) (*seSparse, error) {
	flags := os.O_RDONLY
	if writable {
		flags = os.O_RDWR
	}
	f, err := os.OpenFile(p, flags, 0)
	if err != nil {
		return nil, err
	}
	s := &seSparse{f: f, name: p, tables: map[uint64][]uint64{}, writable: writable}
	if err := s.load(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %v", p, err)
	}
	return s, nil
}

func (s *seSparse) load() error {
	buf := make([]byte, seSector)
	if _, err := s.f.ReadAt(buf, 0); err != nil {
		return fmt.Errorf("not an SEsparse extent (header: %v)", err)
	}
	if err := binary.Read(bytes.NewReader(buf), binary.LittleEndian, &s.h); err != nil {
		return err
	}
	h := &s.h
	switch {
	case h.Magic != seMagic:
		return fmt.Errorf("not an SEsparse extent (magic %#x)", h.Magic)
	case h.Version != seVersion:
		return fmt.Errorf("SEsparse version %#x is not 0x200000001", h.Version)
	case h.GrainSize != seGrainSectors || h.GrainTableSize != seTableSectors:
		return fmt.Errorf("SEsparse grain size %d / table size %d sectors are not 8 / 64", h.GrainSize, h.GrainTableSize)
	case h.Flags != 0 || h.Reserved != [4]uint64{}:
		return errors.New("SEsparse flags or reserved fields are set")
	case h.Capacity == 0:
		return errors.New("SEsparse capacity 0")
	case !bytes.Equal(buf[208:], make([]byte, seSector-208)):
		return errors.New("SEsparse const header pad is not zero")
	}
	ntables := ceilDiv(ceilDiv(h.Capacity, seGrainSectors), seTableEntries)
	if h.GrainDirSize*seSector/8 < ntables {
		return fmt.Errorf("SEsparse grain directory (%d sectors) does not cover the capacity", h.GrainDirSize)
	}
	if _, err := s.f.ReadAt(buf, int64(h.VolatileHeaderOffset)*seSector); err != nil {
		return fmt.Errorf("SEsparse volatile header: %v", err)
	}
	if err := binary.Read(bytes.NewReader(buf), binary.LittleEndian, &s.vol); err != nil {
		return err
	}
	if s.vol.Magic != seVolatileMagic {
		return fmt.Errorf("SEsparse volatile header magic %#x", s.vol.Magic)
	}
	if s.vol.ReplayJournal != 0 {
		return errors.New("SEsparse journal needs replaying (not supported)")
	}
	raw := make([]byte, ntables*8)
	if _, err := s.f.ReadAt(raw, int64(h.GrainDirOffset)*seSector); err != nil && err != io.EOF {
		return fmt.Errorf("SEsparse grain directory: %v", err)
	}
	s.dir = make([]uint64, ntables)
	maxTable := uint64(0)
	for i := range s.dir {
		e := binary.LittleEndian.Uint64(raw[i*8:])
		s.dir[i] = e
		if e == 0 {
			continue
		}
		if e&0xffffffff00000000 != seDirTable {
			return fmt.Errorf("SEsparse grain directory entry %d is %#x", i, e)
		}
		if n := e & 0xffffffff; n+1 > maxTable {
			maxTable = n + 1
		}
	}
	if s.vol.FreeGTNumber < maxTable { // the volatile header lags (a crash between the writes)
		s.vol.FreeGTNumber = maxTable
	}
	// grains are appended: the next free one follows the end of the file
	st, err := s.f.Stat()
	if err != nil {
		return err
	}
	if end := st.Size() - int64(h.GrainsOffset)*seSector; end > 0 {
		s.nextGrain = ceilDiv(uint64(end), seGrainBytes)
	}
	return nil
}

func (s *seSparse) Close() error { return s.f.Close() }

// sizeBytes is the virtual size of the extent.
func (s *seSparse) sizeBytes() int64 { return int64(s.h.Capacity) * seSector }

func (s *seSparse) tableOffset(n uint64) int64 {
	return int64(s.h.GrainTablesOffset+n*seTableSectors) * seSector
}

func (s *seSparse) grainOffset(g uint64) int64 {
	return int64(s.h.GrainsOffset+g*seGrainSectors) * seSector
}

func seEncodeGrain(g uint64) uint64 {
	return seTypeAlloc | (g&0xfff)<<48 | (g>>12)&0x0000ffffffffffff
}

func seDecodeGrain(e uint64) uint64 {
	return (e&0x0fff000000000000)>>48 | (e&0x0000ffffffffffff)<<12
}

// table returns the entries of the grain table that covers directory index di (nil: none).
func (s *seSparse) table(di int) ([]uint64, error) {
	e := s.dir[di]
	if e == 0 {
		return nil, nil
	}
	n := e & 0xffffffff
	if n >= s.h.GrainTablesSize/seTableSectors {
		return nil, fmt.Errorf("%s: grain table %d outside the tables region", s.name, n)
	}
	if t, ok := s.tables[n]; ok {
		return t, nil
	}
	raw := make([]byte, seTableSectors*seSector)
	if _, err := s.f.ReadAt(raw, s.tableOffset(n)); err != nil && err != io.EOF {
		return nil, err
	}
	t := make([]uint64, seTableEntries)
	for i := range t {
		t[i] = binary.LittleEndian.Uint64(raw[i*8:])
	}
	s.tables[n] = t
	return t, nil
}

// lookup tells what the extent holds for virtual grain vg: seTypeUnused (the parent's),
// seTypeZero (zeros; also for unmapped grains) or seTypeAlloc with the grain's file offset.
func (s *seSparse) lookup(vg int64) (uint64, int64, error) {
	di := int(vg / seTableEntries)
	if vg < 0 || di >= len(s.dir) {
		return 0, 0, fmt.Errorf("%s: grain %d beyond the capacity", s.name, vg)
	}
	t, err := s.table(di)
	if err != nil || t == nil {
		return seTypeUnused, 0, err
	}
	e := t[vg%seTableEntries]
	switch e & seTypeMask {
	case seTypeUnused:
		if e != 0 {
			return 0, 0, fmt.Errorf("%s: grain %d: bad unallocated entry %#x", s.name, vg, e)
		}
		return seTypeUnused, 0, nil
	case seTypeUnmap, seTypeZero:
		return seTypeZero, 0, nil
	case seTypeAlloc:
		g := seDecodeGrain(e)
		if g*seGrainSectors >= s.h.GrainsSize {
			return 0, 0, fmt.Errorf("%s: grain %d: grain number %d outside the grains region", s.name, vg, g)
		}
		return seTypeAlloc, s.grainOffset(g), nil
	}
	return 0, 0, fmt.Errorf("%s: grain %d: unknown grain type in entry %#x", s.name, vg, e)
}

// readIn reads buf from an allocated grain at fileOff (zeros past the end of the file).
func (s *seSparse) readIn(buf []byte, fileOff int64) error {
	n, err := s.f.ReadAt(buf, fileOff)
	if err == io.EOF {
		err = nil
	}
	for i := n; i < len(buf); i++ {
		buf[i] = 0
	}
	return err
}

// writeGrain stores the whole grain vg (data: seGrainBytes): in place when the extent holds
// it already, else in a new grain appended at the end (data, table entry, directory entry,
// volatile header, in that order).
func (s *seSparse) writeGrain(vg int64, data []byte) error {
	if !s.writable {
		return fmt.Errorf("%s: opened read-only", s.name)
	}
	if len(data) != seGrainBytes {
		return fmt.Errorf("writeGrain: %d bytes is not one grain", len(data))
	}
	kind, off, err := s.lookup(vg)
	if err != nil {
		return err
	}
	if kind == seTypeAlloc {
		_, err = s.f.WriteAt(data, off)
		return err
	}
	g := s.nextGrain
	if (g+1)*seGrainSectors > s.h.GrainsSize {
		return fmt.Errorf("%s: grains region full", s.name)
	}
	if _, err := s.f.WriteAt(data, s.grainOffset(g)); err != nil {
		return err
	}
	s.nextGrain++
	di := int(vg / seTableEntries)
	t, err := s.table(di)
	if err != nil {
		return err
	}
	newTable := t == nil
	n := s.vol.FreeGTNumber
	if newTable {
		if n >= s.h.GrainTablesSize/seTableSectors {
			return fmt.Errorf("%s: grain tables region full", s.name)
		}
		t = make([]uint64, seTableEntries)
	} else {
		n = s.dir[di] & 0xffffffff
	}
	e := seEncodeGrain(g)
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], e)
	if _, err := s.f.WriteAt(b[:], s.tableOffset(n)+(vg%seTableEntries)*8); err != nil {
		return err
	}
	t[vg%seTableEntries] = e
	s.tables[n] = t
	if !newTable {
		return nil
	}
	binary.LittleEndian.PutUint64(b[:], seDirTable|n)
	if _, err := s.f.WriteAt(b[:], int64(s.h.GrainDirOffset)*seSector+int64(di)*8); err != nil {
		return err
	}
	s.dir[di] = seDirTable | n
	s.vol.FreeGTNumber = n + 1
	_, err = s.f.WriteAt(s.vol.bytes(), int64(s.h.VolatileHeaderOffset)*seSector)
	return err
}

// grains calls fn for every grain the extent holds (allocated or zero), in disk order.
func (s *seSparse) grains(fn func(vg int64, kind uint64, fileOff int64) error) error {
	for di := range s.dir {
		t, err := s.table(di)
		if err != nil {
			return err
		}
		if t == nil {
			continue
		}
		for i, e := range t {
			if e == 0 {
				continue
			}
			vg := int64(di)*seTableEntries + int64(i)
			kind, off, err := s.lookup(vg)
			if err != nil {
				return err
			}
			if err := fn(vg, kind, off); err != nil {
				return err
			}
		}
	}
	return nil
}
