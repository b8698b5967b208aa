// Package scan ties a conntrack reader, the host's facts (sysctls, local
// addresses, read by package host) and the aggregator into one scan of the
// table. It is the glue that status, top, tune and the daemon share; the
// logic lives in conntrack and snapshot.
package scan

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/host"
	"github.com/ctguard/ctguard/internal/snapshot"
	"github.com/ctguard/ctguard/internal/sockets"
)

// Reader kinds accepted by Open.
const (
	Auto    = "auto"    // netlink, falling back to /proc when ctnetlink is missing
	Netlink = "netlink" // ctnetlink only
	Proc    = "proc"    // /proc/net/nf_conntrack only
)

// Source is an open reader of this host's (this namespace's) table.
type Source struct {
	procfs string
	nl     *conntrack.Conn // nil when reading /proc
	reader conntrack.Reader
	// Fallback says why the /proc reader is used under Auto, if it is.
	Fallback string
	// Sockets: list the host's TCP sockets before each scan so that
	// snapshots count orphan entries. Turned off (and SocketsErr set) when
	// the kernel cannot list them.
	Sockets    bool
	SocketsErr error
	dumper     sockets.Dumper
	lastSet    *sockets.Set // the last scan's listing (listed: it exists)
	listed     bool
}

// Open opens a reader of the given kind. procfs is the procfs root
// (normally /proc).
func Open(ctx context.Context, kind, procfs string) (*Source, error) {
	if !conntrack.Available(procfs) {
		return nil, fmt.Errorf("%w (no %s)", conntrack.ErrNotLoaded, filepath.Join(procfs, "sys/net/netfilter/nf_conntrack_max"))
	}
	s := &Source{procfs: procfs}
	switch kind {
	case Netlink, Auto:
		c, err := conntrack.Open()
		if err == nil {
			if _, err = c.Stats(ctx); err != nil {
				c.Close()
			}
		}
		if err == nil {
			s.nl, s.reader = c, c
			return s, nil
		}
		if kind == Netlink || errors.Is(err, conntrack.ErrPermission) {
			return nil, err
		}
		s.Fallback = err.Error()
		fallthrough
	case Proc:
		p := &conntrack.ProcReader{Path: conntrack.ProcPath(procfs)}
		if _, err := os.Stat(p.Path); err != nil {
			if os.IsNotExist(err) {
				return nil, fmt.Errorf("%s: %w", p.Path, conntrack.ErrNoProcFile)
			}
			return nil, fmt.Errorf("%s: %w", p.Path, err)
		}
		s.reader = p
		return s, nil
	}
	return nil, fmt.Errorf("unknown reader %q (want auto, netlink or proc)", kind)
}

// Close releases the reader.
func (s *Source) Close() error {
	if s.nl != nil {
		return s.nl.Close()
	}
	return nil
}

// Conn returns the netlink connection, or nil when reading /proc.
func (s *Source) Conn() *conntrack.Conn { return s.nl }

// ReaderName is "netlink" or "proc".
func (s *Source) ReaderName() string { return s.reader.Name() }

// Count reads the entry count and the limit only (cheap: for polling).
func (s *Source) Count(ctx context.Context) (conntrack.Stats, error) {
	if s.nl != nil {
		return s.nl.Count(ctx)
	}
	var st conntrack.Stats
	sc, err := ReadSysctls(s.procfs)
	st.Count, st.Max = uint32(sc.Count), uint32(sc.Max)
	return st, err
}

// Stats reads count, max and the kernel counters: over netlink, or from
// procfs files for the /proc reader.
func (s *Source) Stats(ctx context.Context) (conntrack.Stats, error) {
	if s.nl != nil {
		return s.nl.Stats(ctx)
	}
	var st conntrack.Stats
	sc, err := ReadSysctls(s.procfs)
	if err != nil {
		return st, err
	}
	st.Count, st.Max = uint32(sc.Count), uint32(sc.Max)
	if b, err := os.ReadFile(filepath.Join(s.procfs, "net/stat/nf_conntrack")); err == nil {
		if err := parseStatFile(b, &st); err != nil {
			return st, fmt.Errorf("%s: %w", filepath.Join(s.procfs, "net/stat/nf_conntrack"), err)
		}
	}
	return st, nil
}

// SocketPeers lists the peers of the last scan's served sockets on the
// given local ports, and whether that scan listed sockets. Call it from
// the goroutine that scans (the listing is reused by the next scan).
func (s *Source) SocketPeers(ports []uint16) ([]netip.AddrPort, bool) {
	if !s.Sockets || !s.listed {
		return nil, false
	}
	return s.lastSet.Peers(ports), true
}

// Scan dumps the table into a (after Reset) and returns the snapshot.
func (s *Source) Scan(ctx context.Context, a *snapshot.Aggregator) (*snapshot.Snapshot, error) {
	a.Reset()
	start := time.Now()
	a.SetSockets(nil)
	s.listed = false
	if s.Sockets {
		set, err := s.dumper.Dump(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			s.Sockets, s.SocketsErr = false, err
		} else {
			a.SetSockets(set)
			s.lastSet, s.listed = set, true
		}
	}
	err := s.reader.Dump(ctx, conntrack.DumpOptions{}, func(e *conntrack.Entry) error {
		a.Add(e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	snap := a.Snapshot()
	snap.Time = start
	snap.Duration = time.Since(start)
	snap.Reader = s.reader.Name()
	return snap, nil
}

// Sysctls are the table limits and timeouts of this namespace (count and
// timeouts are per namespace; max and buckets are global).
type Sysctls struct {
	Count, Max, Buckets int
	// Timeouts in seconds, keyed by the sysctl's suffix after
	// nf_conntrack_ (for example "tcp_timeout_established").
	Timeouts map[string]int
	Kernel   string
}

// ReadSysctls reads procfs/sys/net/netfilter/nf_conntrack_* and the kernel
// release. Missing timeouts are left out; a missing max means no conntrack.
func ReadSysctls(procfs string) (Sysctls, error) {
	h := host.FS{ProcRoot: procfs}
	s := Sysctls{Timeouts: map[string]int{}}
	limit, err := h.ConntrackSysctl("nf_conntrack_max")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return s, fmt.Errorf("%w (no %s)", conntrack.ErrNotLoaded, h.ConntrackSysctlPath("nf_conntrack_max"))
		}
		return s, err
	}
	s.Max = int(limit)
	if n, err := h.ConntrackSysctl("nf_conntrack_count"); err == nil {
		s.Count = int(n)
	}
	if n, err := h.ConntrackSysctl("nf_conntrack_buckets"); err == nil {
		s.Buckets = int(n)
	}
	names, _ := h.ConntrackSysctlNames()
	for _, file := range names {
		name := strings.TrimPrefix(file, "nf_conntrack_")
		if !strings.Contains(name, "timeout") {
			continue
		}
		if n, err := h.ConntrackSysctl(file); err == nil {
			s.Timeouts[name] = int(n)
		}
	}
	k, _ := h.Kernel() // Release is set whenever the file is readable
	s.Kernel = k.Release
	return s, nil
}

// SnapshotConfig derives the classification reference timeouts from the
// sysctls: the established timeout, and the unacknowledged/retransmit cap.
func (s Sysctls) SnapshotConfig(base snapshot.Config) snapshot.Config {
	if v := s.Timeouts["tcp_timeout_established"]; v > 0 && base.EstablishedTimeout == 0 {
		base.EstablishedTimeout = uint32(v)
	}
	if base.StallCap == 0 {
		c := max(s.Timeouts["tcp_timeout_unacknowledged"], s.Timeouts["tcp_timeout_max_retrans"])
		if c > 0 {
			base.StallCap = uint32(c)
		}
	}
	return base.WithDefaults()
}

// LocalAddrs returns the addresses of this namespace's interfaces.
func LocalAddrs() (*snapshot.LocalSet, error) {
	ps, err := host.FS{}.LocalAddrs()
	if err != nil {
		return nil, err
	}
	as := make([]netip.Addr, len(ps))
	for i, p := range ps {
		as[i] = p.Addr()
	}
	return snapshot.NewLocalSet(as...), nil
}

// parseStatFile sums the per-CPU rows of /proc/net/stat/nf_conntrack (hex
// columns named by the header line) into st.
func parseStatFile(b []byte, st *conntrack.Stats) error {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) < 2 {
		return errors.New("no per-CPU rows")
	}
	cols := strings.Fields(lines[0])
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != len(cols) {
			return fmt.Errorf("row has %d columns, header %d", len(f), len(cols))
		}
		st.CPUs++
		for i, c := range cols {
			v, err := strconv.ParseUint(f[i], 16, 64)
			if err != nil {
				return fmt.Errorf("column %s: %w", c, err)
			}
			switch c {
			case "found":
				st.Found += v
			case "invalid":
				st.Invalid += v
			case "insert":
				st.Insert += v
			case "insert_failed":
				st.InsertFailed += v
			case "drop":
				st.Drop += v
			case "early_drop":
				st.EarlyDrop += v
			case "error":
				st.Error += v
			case "search_restart":
				st.SearchRestart += v
			}
		}
	}
	return nil
}
