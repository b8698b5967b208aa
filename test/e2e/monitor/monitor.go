package monitor

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/test/e2e/wire"
)

// Config of a monitor run.
type Config struct {
	Interval    time.Duration // default 250 ms
	StatesEvery time.Duration // default 5 s; 0 keeps the default, <0 disables
	Duration    time.Duration // hard stop
	IPSets      []string      // ban lists to sample (`ipset save`); empty: none
	NFTTable    string        // nftables table whose sets hold bans, e.g. "inet ctguard"
	Procfs      string        // default /proc
	// AttackRanges: entries from these sources are counted on state ticks
	// (Sample.AttackHeld).
	AttackRanges []netip.Prefix
	// Watch: TCP entries from each address to each port (original
	// direction) are counted every WatchEvery (default 500 ms) with a
	// source-filtered ctnetlink dump, which is cheap even on a full table
	// (Sample.Watch, in this order).
	Watch      []netip.AddrPort
	WatchEvery time.Duration
}

// Run samples until ctx ends or Duration passes. It must run in the victim
// namespace (its /proc/sys/net and /proc/net are the namespace's).
func Run(ctx context.Context, cfg Config, w *wire.Writer, log *slog.Logger) error {
	if cfg.Interval <= 0 {
		cfg.Interval = 250 * time.Millisecond
	}
	if cfg.StatesEvery == 0 {
		cfg.StatesEvery = 5 * time.Second
	}
	if cfg.Procfs == "" {
		cfg.Procfs = "/proc"
	}
	if cfg.Duration <= 0 {
		return fmt.Errorf("monitor: need a duration")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()

	// States need a full table walk (up to a second at 262k entries), so they
	// run on their own clock and the latest result rides on the next tick.
	var mu sync.Mutex
	var counts *Counts
	if cfg.StatesEvery > 0 {
		go func() {
			t := time.NewTicker(cfg.StatesEvery)
			defer t.Stop()
			for {
				c, err := readStates(ctx, cfg.Procfs, cfg.AttackRanges)
				if err != nil && ctx.Err() == nil {
					log.Warn("states", "err", err)
				} else if err == nil {
					mu.Lock()
					counts = &c
					mu.Unlock()
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	var watch []int64
	if len(cfg.Watch) > 0 {
		if cfg.WatchEvery <= 0 {
			cfg.WatchEvery = 500 * time.Millisecond
		}
		ct, err := conntrack.Open()
		if err != nil {
			return fmt.Errorf("monitor: watch: %w", err)
		}
		defer ct.Close()
		go func() {
			t := time.NewTicker(cfg.WatchEvery)
			defer t.Stop()
			for {
				w, err := countWatched(ctx, ct, cfg.Watch)
				if err != nil && ctx.Err() == nil {
					log.Warn("watch", "err", err)
				} else if err == nil {
					mu.Lock()
					watch = w
					mu.Unlock()
				}
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	var lastBans, lastScoped []string
	for {
		s := &wire.Sample{}
		var err error
		if s.Count, err = readInt(cfg.Procfs + "/sys/net/netfilter/nf_conntrack_count"); err != nil {
			return err
		}
		if s.Max, err = readInt(cfg.Procfs + "/sys/net/netfilter/nf_conntrack_max"); err != nil {
			return err
		}
		st, err := readStats(ctx, cfg.Procfs)
		if err != nil && ctx.Err() == nil {
			log.Warn("stats", "err", err)
		}
		s.Drop, s.EarlyDrop, s.InsertFailed = st.Drop, st.EarlyDrop, st.InsertFailed
		mu.Lock()
		if counts != nil {
			s.States, s.AttackHeld = counts.States, counts.AttackHeld
			s.HeldSampled = true
			counts = nil
		}
		if watch != nil {
			s.Watch, s.WatchSampled = watch, true
			watch = nil
		}
		mu.Unlock()
		if len(cfg.IPSets) > 0 || cfg.NFTTable != "" {
			bans, scoped, drops, err := readBans(ctx, cfg)
			if err != nil && ctx.Err() == nil {
				log.Warn("bans", "err", err)
			} else if err == nil {
				s.DefenseDrops = drops
				if !slices.Equal(bans, lastBans) || !slices.Equal(scoped, lastScoped) {
					s.Bans, s.ScopedBans, s.BansChanged, lastBans, lastScoped = bans, scoped, true, bans, scoped
				}
			}
		}
		if err := w.Write(wire.Record{Kind: "sample", Sample: s}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// countWatched counts, per target, the TCP entries whose original source is
// the target's address and whose original destination port is its port.
func countWatched(ctx context.Context, ct *conntrack.Conn, targets []netip.AddrPort) ([]int64, error) {
	out := make([]int64, len(targets))
	bySrc := map[netip.Addr][]int{}
	for i, t := range targets {
		bySrc[t.Addr().Unmap()] = append(bySrc[t.Addr().Unmap()], i)
	}
	for src, idx := range bySrc {
		err := ct.Dump(ctx, conntrack.DumpOptions{Source: src}, func(e *conntrack.Entry) error {
			if e.Proto != conntrack.ProtoTCP {
				return nil
			}
			for _, i := range idx {
				if e.Orig.DstPort == targets[i].Port() {
					out[i]++
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("monitor: %w", err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("monitor: %s: %w", path, err)
	}
	return v, nil
}

// readStats prefers /proc/net/stat/nf_conntrack (no fork) and falls back to
// `conntrack -S` on kernels built without CONFIG_NF_CONNTRACK_PROCFS.
func readStats(ctx context.Context, procfs string) (Stats, error) {
	if f, err := os.Open(procfs + "/net/stat/nf_conntrack"); err == nil {
		defer f.Close()
		return ParseProcStat(f)
	}
	out, err := exec.CommandContext(ctx, "conntrack", "-S").Output()
	if err != nil {
		return Stats{}, fmt.Errorf("conntrack -S: %w", err)
	}
	return ParseConntrackS(bytes.NewReader(out))
}

func readStates(ctx context.Context, procfs string, attack []netip.Prefix) (Counts, error) {
	if f, err := os.Open(procfs + "/net/nf_conntrack"); err == nil {
		defer f.Close()
		return CountStates(f, attack)
	}
	cmd := exec.CommandContext(ctx, "conntrack", "-L")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return Counts{}, err
	}
	if err := cmd.Start(); err != nil {
		return Counts{}, fmt.Errorf("conntrack -L: %w", err)
	}
	m, perr := CountStates(out, attack)
	if err := cmd.Wait(); err != nil {
		return Counts{}, fmt.Errorf("conntrack -L: %w", err)
	}
	return m, perr
}

// scopedSets are ctguard's sets of scoped bans: everything but the SSH
// ports is banned (the target covers the peer of an open SSH session).
var scopedSets = map[string]bool{enforce.SetBan4Scoped: true, enforce.SetBan6Scoped: true,
	enforce.SetNet4Scoped: true, enforce.SetNet6Scoped: true}

// scopedIPSet says whether an ipset holds ctguard's scoped bans (its
// ipset backend's twins of scopedSets).
func scopedIPSet(name string) bool {
	return strings.HasPrefix(name, enforce.IPSetPrefix) && strings.HasSuffix(name, enforce.IPSetScopedSuffix)
}

// readBans returns every ban, and separately the scoped ones, and the
// packets the nftables table's drop rules dropped.
func readBans(ctx context.Context, cfg Config) (bans, scoped []string, drops int64, err error) {
	if len(cfg.IPSets) > 0 {
		bySet, err := readIPSets(ctx, cfg.IPSets)
		if err != nil {
			return nil, nil, 0, err
		}
		for set, b := range bySet {
			bans = append(bans, b...)
			if scopedIPSet(set) {
				scoped = append(scoped, b...)
			}
		}
	}
	if cfg.NFTTable != "" {
		var bySet map[string][]string
		bySet, drops, err = readNFTTable(ctx, cfg.NFTTable)
		if err != nil {
			return nil, nil, 0, err
		}
		for set, b := range bySet {
			bans = append(bans, b...)
			if scopedSets[set] {
				scoped = append(scoped, b...)
			}
		}
	}
	slices.Sort(bans)
	slices.Sort(scoped)
	return bans, scoped, drops, nil
}

func readIPSets(ctx context.Context, sets []string) (map[string][]string, error) {
	out, err := exec.CommandContext(ctx, "ipset", "save").Output()
	if err != nil {
		return nil, fmt.Errorf("ipset save: %w", err)
	}
	return ParseIPSetSaveBySet(bytes.NewReader(out), sets...)
}
