package main

// The "guest" of each powered-on lab VM: a goroutine that writes a heartbeat block
// (counter + time) every heartbeatInterval into a reserved area (1 MiB before the end) of
// each of its disks, through the disk's CURRENT leaf: the flat file while the VM has no
// snapshot, the newest delta after one. So a frozen base demonstrably stops changing at
// snapshot time while the running VM goes on writing (and an independent disk, which
// snapshots skip, keeps changing in its flat file, as on ESXi).

import (
	"fmt"
	"log"
	"sync"
	"time"
)

const heartbeatInterval = 300 * time.Millisecond

type guestRunner struct {
	stop chan struct{}
	done chan struct{}
}

var guestsMu sync.Mutex

func startGuest(w *labVM) {
	guestsMu.Lock()
	defer guestsMu.Unlock()
	st := w.st
	if st.guest != nil {
		return
	}
	g := &guestRunner{stop: make(chan struct{}), done: make(chan struct{})}
	st.guest = g
	go g.run(w)
}

func stopGuest(w *labVM) {
	guestsMu.Lock()
	g := w.st.guest
	w.st.guest = nil
	guestsMu.Unlock()
	if g != nil {
		close(g.stop)
		<-g.done
	}
}

func stopAllGuests() {
	labVMs.Range(func(_, v interface{}) bool {
		stopGuest(v.(*labVM))
		return true
	})
}

func (g *guestRunner) run(w *labVM) {
	defer close(g.done)
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	failed := false
	for {
		if err := heartbeat(w); err != nil && !failed {
			log.Printf("guest of %s: heartbeat write failed: %v", w.st.Name, err)
			failed = true
		}
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
	}
}

// heartbeat writes one block per disk under the VM's state lock (a snapshot in progress
// holds it: the guest is stunned meanwhile, as ESXi stuns a VM to switch its disks).
func heartbeat(w *labVM) error {
	st := w.st
	st.mu.Lock()
	defer st.mu.Unlock()
	st.heartbeats++
	now := time.Now().UTC().Format(time.RFC3339Nano)
	for _, d := range st.Disks {
		block := make([]byte, heartbeatSize)
		copy(block, fmt.Sprintf("LAB-HEARTBEAT v1 vm=%q disk=%d counter=%d time=%s\n", st.Name, d.Key, st.heartbeats, now))
		if err := chainWriteAt(d.Chain, block, d.HBOffset); err != nil {
			return err
		}
		if d.ChangeUUID != "" { // CBT: remember which change sequence wrote this block
			if d.writes == nil {
				d.writes = map[int64][]int{}
			}
			g := d.HBOffset - d.HBOffset%cbtBlockSize
			if seqs := d.writes[g]; len(seqs) == 0 || seqs[len(seqs)-1] != d.ChangeSeq {
				d.writes[g] = append(seqs, d.ChangeSeq)
			}
		}
	}
	return nil
}
