package main

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/store"
	"github.com/ctguard/ctguard/internal/testutil"
)

// TestRootSoak runs the daemon under a rotating attack while its world is
// damaged around it: the store on a 1 MiB tmpfs, the chain's policy flipped
// to drop and the ruleset flushed at random moments, and the store file
// truncated while the daemon is stopped, then restarted. At the end: no
// panic, no unplanned exit, every kernel ban has a store record, and the
// peak RSS stayed under memLimitMiB. CTGUARD_SOAK sets the length (make
// soak: 30m); 40 s otherwise.
func TestRootSoak(t *testing.T) {
	testutil.RequireRoot(t, "nft", "ip")
	length := 40 * time.Second
	if v := os.Getenv("CTGUARD_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 10*time.Second {
			t.Fatalf("CTGUARD_SOAK=%q: want a duration of at least 10s", v)
		}
		length = d
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 1))
	t.Logf("soak for %v, seed %d", length, seed)

	ns := testutil.NewNS(t)
	ns.MustRun(t, "ip", "addr", "add", "192.0.2.10/24", "dev", "lo")
	const labTable = "add table inet lab; add chain inet lab in { type filter hook input priority 0; }; add rule inet lab in ct state established accept"
	ns.MustRun(t, "nft", labTable)
	var ct *conntrack.Conn
	var err error
	ns.Do(t, func() { ct, err = conntrack.Open() })
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()

	dir := t.TempDir()
	stateDir := filepath.Join(dir, "state")
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", stateDir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount a 1 MiB tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(stateDir, syscall.MNT_DETACH) })
	cfg := writeConfig(t, dir, "")

	type incarnation struct {
		log    *syncBuf
		cmd    *exec.Cmd
		exited chan struct{}
	}
	start := func() *incarnation {
		// The plain binary: -race (make test) would inflate the RSS bound.
		log, cmd := startPlain(t, ns, "--config", cfg)
		in := &incarnation{log: log, cmd: cmd, exited: make(chan struct{})}
		go func() { cmd.Wait(); close(in.exited) }()
		waitFor(t, "the daemon to start", 15*time.Second, func() bool { return strings.Contains(log.String(), "ctguard running") })
		return in
	}
	stop := func(in *incarnation) {
		in.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-in.exited:
		case <-time.After(20 * time.Second):
			t.Fatalf("the daemon did not stop within 20 s of SIGTERM\n%s", in.log.String())
		}
	}
	var logs []*syncBuf
	cur := start()
	logs = append(logs, cur.log)

	// A new silent bot every 3 s: 300 idle ESTABLISHED entries each,
	// eight bots per /24, so prefix bans happen too.
	dst := netip.MustParseAddr("192.0.2.10")
	bot := func(i int) {
		src := netip.AddrFrom4([4]byte{198, 18, byte(i / 8), byte(i%8*16 + 1)})
		es := make([]conntrack.Entry, 300)
		for j := range es {
			p := uint16(20000 + j)
			es[j] = conntrack.Entry{Proto: conntrack.ProtoTCP, Orig: conntrack.Tuple{Src: src, Dst: dst, SrcPort: p, DstPort: 443},
				Reply:  conntrack.Tuple{Src: dst, Dst: src, SrcPort: 443, DstPort: p},
				Status: conntrack.StatusConfirmed | conntrack.StatusSeenReply | conntrack.StatusAssured, Timeout: 431000,
				TCPState: conntrack.TCPEstablished, HasTCPState: true}
		}
		if _, err := ct.Create(context.Background(), es); err != nil {
			t.Logf("create bot %s: %v", src, err)
		}
	}

	begin := time.Now()
	deadline := begin.Add(length)
	restartAt := begin.Add(length / 2)
	restarted := false
	var bots, flips, flushes int
	var peakRSS float64
	for tick := 0; time.Now().Before(deadline); tick++ {
		select {
		case <-cur.exited:
			t.Fatalf("the daemon exited unplanned after %v\n%s", time.Since(begin).Round(time.Second), cur.log.String())
		case <-time.After(time.Second):
		}
		if tick%3 == 0 {
			bot(bots)
			bots++
		}
		switch r := rng.IntN(20); {
		case r == 0:
			// The chain exists unless a flush just removed it.
			if _, err := ns.Run("nft", "add chain inet ctguard prerouting { type filter hook prerouting priority -300; policy drop; }"); err == nil {
				flips++
			}
		case r == 1:
			ns.MustRun(t, "nft", "flush", "ruleset")
			ns.MustRun(t, "nft", labTable)
			flushes++
		}
		if !restarted && time.Now().After(restartAt) {
			restarted = true
			stop(cur)
			if code := cur.cmd.ProcessState.ExitCode(); code != 0 {
				t.Fatalf("planned stop: exit status %d\n%s", code, cur.log.String())
			}
			db := filepath.Join(stateDir, store.FileName)
			if err := os.Truncate(db, 5000); err != nil {
				t.Fatal(err)
			}
			cur = start()
			logs = append(logs, cur.log)
		}
		peakRSS = max(peakRSS, statusKiB(t, cur.cmd.Process.Pid, "VmHWM")/1024)
	}
	// A flush in the last seconds leaves the table to the daemon's next
	// check, up to a calm scan interval (30 s) away: the bans must be back
	// before the final count.
	waitFor(t, "the table rebuilt after the last flush", 40*time.Second, func() bool {
		_, err := ns.Run("nft", "list", "table", "inet", "ctguard")
		return err == nil
	})
	stop(cur)
	if code := cur.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("final stop: exit status %d\n%s", code, cur.log.String())
	}
	all := ""
	for _, l := range logs {
		all += l.String()
	}
	for _, bad := range []string{"panic", "goroutine "} {
		if strings.Contains(all, bad) {
			t.Fatalf("%q in the daemon's log:\n%s", bad, all)
		}
	}

	// Every ban in the kernel has a store record in force.
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	elems, err := enforce.NewNFT(nil, enforce.NFTOptions{NetNSFd: int(h)}).Elements(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(stateDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	unrecorded := 0
	for _, e := range elems {
		if b, err := st.GetBan(e.Prefix); err != nil || !b.Active(now) {
			unrecorded++
			t.Errorf("kernel ban %s (%v left) has no store record in force: %+v %v", e.Prefix, e.TTL.Round(time.Second), b, err)
		}
	}
	recs, _ := st.Bans()
	t.Logf("soak %v: %d bots, %d kernel bans (%d without a record), %d store records, %d policy flips, %d ruleset flushes, "+
		"1 restart over a truncated store (adopted: %v), %d table rebuilds logged, peak RSS %.1f MiB",
		time.Since(begin).Round(time.Second), bots, len(elems), unrecorded, len(recs), flips, flushes,
		strings.Contains(all, "msg=\"adopted bans"), strings.Count(all, "table was missing or wrong")+strings.Count(all, "needs rebuilding"), peakRSS)
	if len(elems) == 0 {
		t.Error("no bans in the kernel at the end: the daemon did not defend")
	}
	if peakRSS > memLimitMiB {
		t.Errorf("peak RSS %.1f MiB, want at most %d MiB", peakRSS, memLimitMiB)
	}
}
