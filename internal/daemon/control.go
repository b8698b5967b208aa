package daemon

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/forecast"
	"github.com/ctguard/ctguard/internal/policy"
	"github.com/ctguard/ctguard/internal/snapshot"
	"github.com/ctguard/ctguard/internal/store"
)

// Request is one control call: one JSON object per connection.
type Request struct {
	Op     string        `json:"op"`
	Target string        `json:"target,omitempty"`
	TTL    time.Duration `json:"ttl,omitempty"`
	Reason string        `json:"reason,omitempty"`
	All    bool          `json:"all,omitempty"`
	By     string        `json:"by,omitempty"`
	Prefix bool          `json:"prefix,omitempty"`
	N      int           `json:"n,omitempty"`
	// ExactTTL: the operator named the timeout, so it applies even when
	// it shortens an active ban.
	ExactTTL bool `json:"exact_ttl,omitempty"`
	// Targets are the addresses and prefixes of a bulk ban or unban
	// (ban-many, unban-many), in one kernel change.
	Targets []string `json:"targets,omitempty"`
}

// maxBulkTargets bounds one bulk request (a request is at most 1 MiB).
const maxBulkTargets = 50000

// Response carries a result or an error message.
type Response struct {
	Error  string          `json:"error,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	// DryRun: the daemon changes nothing in the kernel; what it reports as
	// done is what it would have done.
	DryRun bool `json:"dry_run,omitempty"`
}

// Serve listens on the control socket until ctx ends. The socket and its
// directory are root-only, and every peer's credentials are checked.
func (d *Daemon) Serve(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another ctguard is serving it", path)
	}
	os.Remove(path) // stale, from a daemon that died
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
		os.Remove(path)
	}()
	return acceptLoop(ctx, ln, d.log, func(c net.Conn) {
		if uc, ok := c.(*net.UnixConn); ok {
			d.handle(ctx, uc)
		} else {
			c.Close()
		}
	})
}

// acceptLoop hands every connection of ln to serve (each in its own
// goroutine) until ctx ends. An accept error never ends it: a daemon out
// of file descriptors (say a local flood of connections) waits and tries
// again, backing off from 5 ms to 1 s, and says so once per streak.
func acceptLoop(ctx context.Context, ln net.Listener, log *slog.Logger, serve func(net.Conn)) error {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("control socket: %w", err)
			}
			if delay == 0 {
				delay = 5 * time.Millisecond
				log.Warn("control socket: accept failed; retrying", "err", err)
			} else {
				delay = min(2*delay, time.Second)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		go serve(c)
	}
}

// maxRequest bounds a control request (a ban of thousands of targets
// fits many times over); requestTimeout bounds the time to send it.
const (
	maxRequest     = 1 << 20
	requestTimeout = 10 * time.Second
)

// errRequestTooLarge is what a client that sends more than maxRequest gets.
var errRequestTooLarge = fmt.Errorf("request larger than %d bytes", maxRequest)

// limitedReader reads at most n bytes, then fails with errRequestTooLarge.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errRequestTooLarge
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

func peerIsRoot(c *net.UnixConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var cred *syscall.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	return err == nil && cred != nil && cred.Uid == 0
}

func (d *Daemon) handle(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	enc := json.NewEncoder(c)
	if !peerIsRoot(c) {
		enc.Encode(Response{Error: "the control socket is root-only: run with sudo"})
		return
	}
	var req Request
	c.SetReadDeadline(time.Now().Add(requestTimeout))
	if err := json.NewDecoder(bufio.NewReader(&limitedReader{r: c, n: maxRequest})).Decode(&req); err != nil {
		enc.Encode(Response{Error: "bad request: " + err.Error()})
		return
	}
	c.SetReadDeadline(time.Time{})
	res, err := d.call(ctx, req)
	if err != nil {
		enc.Encode(Response{Error: err.Error()})
		return
	}
	b, err := json.Marshal(res)
	if err != nil {
		enc.Encode(Response{Error: err.Error()})
		return
	}
	enc.Encode(Response{Result: b, DryRun: d.dryRun})
}

// wireBanResult is enforce.BanResult with its error as text.
type wireBanResult struct {
	enforce.BanResult
	Err string `json:"error,omitempty"`
}

// wireUnbanResult is enforce.UnbanResult with its error as text.
type wireUnbanResult struct {
	enforce.UnbanResult
	Err string `json:"error,omitempty"`
}

func (d *Daemon) call(ctx context.Context, r Request) (any, error) {
	target := func() (netip.Prefix, error) {
		p, _, err := enforce.ParseTarget(r.Target)
		return p, err
	}
	switch r.Op {
	case "status":
		return d.Status(), nil
	case "top":
		return d.Top(r.By, r.Prefix, r.N), nil
	case "why":
		p, _, err := enforce.ParseTarget(r.Target)
		if err != nil {
			return nil, fmt.Errorf("why: %w", err)
		}
		return d.WhyPrefix(p)
	case "ban":
		p, err := target()
		if err != nil {
			return nil, err
		}
		res, err := d.eng.Ban(ctx, enforce.BanRequest{Prefix: p, TTL: r.TTL, Reason: r.Reason, Evidence: "manual ban over the control socket",
			Origin: store.OriginManual, ExactTTL: r.ExactTTL})
		w := wireBanResult{BanResult: res}
		if res.Err != nil {
			w.Err = res.Err.Error()
			err = nil
		}
		return w, err
	case "ban-many", "unban-many":
		if len(r.Targets) > maxBulkTargets {
			return nil, fmt.Errorf("%d targets in one request: at most %d", len(r.Targets), maxBulkTargets)
		}
		ps := make([]netip.Prefix, len(r.Targets))
		for i, t := range r.Targets {
			p, _, err := enforce.ParseTarget(t)
			if err != nil {
				return nil, fmt.Errorf("target %d: %w", i+1, err)
			}
			ps[i] = p
		}
		if r.Op == "unban-many" {
			res, err := d.eng.UnbanMany(ctx, ps, r.All)
			ws := make([]wireUnbanResult, len(res))
			for i, x := range res {
				ws[i] = wireUnbanResult{UnbanResult: x}
				if x.Err != nil {
					ws[i].Err = x.Err.Error()
				}
			}
			return ws, err
		}
		reqs := make([]enforce.BanRequest, len(ps))
		for i, p := range ps {
			reqs[i] = enforce.BanRequest{Prefix: p, TTL: r.TTL, Reason: r.Reason, Evidence: "manual bulk ban over the control socket",
				Origin: store.OriginManual, ExactTTL: r.ExactTTL}
		}
		res, err := d.eng.BanMany(ctx, reqs)
		ws := make([]wireBanResult, len(res))
		for i, x := range res {
			ws[i] = wireBanResult{BanResult: x}
			if x.Err != nil {
				ws[i].Err = x.Err.Error()
			}
		}
		return ws, err
	case "unban":
		p, err := target()
		if err != nil {
			return nil, err
		}
		return d.eng.Unban(ctx, p)
	case "list":
		return d.eng.List(r.All)
	case "allow":
		p, err := target()
		if err != nil {
			return nil, err
		}
		return d.eng.Allow(ctx, p, r.TTL, r.Reason)
	case "unallow":
		p, err := target()
		if err != nil {
			return nil, err
		}
		return nil, d.eng.RemoveAllow(p)
	case "allowlist":
		l, err := d.eng.Allowlist()
		if err != nil {
			return nil, err
		}
		return l.Entries(), nil
	case "purge":
		p, err := target()
		if err != nil {
			return nil, err
		}
		return d.eng.Purge(ctx, p)
	case "counters":
		return d.eng.Counters(ctx)
	case "reload":
		d.Reload()
		return "reload requested", nil
	}
	return nil, fmt.Errorf("unknown op %q", r.Op)
}

// StatusReply is the daemon's view for `status`.
type StatusReply struct {
	DryRun     bool               `json:"dry_run"`
	Stats      conntrack.Stats    `json:"stats"`
	Samples    []forecast.Sample  `json:"samples"`
	Snapshot   *snapshot.Snapshot `json:"snapshot"` // sources and prefixes left out
	Pressure   policy.Pressure    `json:"pressure"`
	Threshold  float64            `json:"threshold"`
	CycleAt    time.Time          `json:"cycle_at"`
	Cycles     uint64             `json:"cycles"`
	Counters   Counters           `json:"counters"`
	ActiveBans int                `json:"active_bans"`
	Buckets    int                `json:"buckets"`
	Kernel     string             `json:"kernel"`
	Timeouts   map[string]int     `json:"timeouts"`
	Reader     string             `json:"reader"`
	NumSources int                `json:"num_sources"`
	// Config is the configuration file the daemon runs with, or "the
	// built-in defaults".
	Config string `json:"config"`
	// Backend is the firewall holding the bans (nftables, ipset; "" in a
	// dry run) and BackendWhy the reason it was chosen.
	Backend    string `json:"backend,omitempty"`
	BackendWhy string `json:"backend_why,omitempty"`
	// Fleet is the link to CrowdSec's Local API, when configured.
	Fleet *FleetStatus `json:"crowdsec,omitempty"`
	// Losing is set while the last cycle ran under high or critical
	// pressure and banned nothing.
	Losing *Losing `json:"losing,omitempty"`
	// Service is set while a listening socket's accept queue is full.
	Service *ServiceState `json:"service,omitempty"`
}

// Status is what `status` shows of a running daemon.
func (d *Daemon) Status() StatusReply {
	active, _ := d.st.ActiveIndex(time.Now())
	d.mu.Lock()
	defer d.mu.Unlock()
	r := StatusReply{
		DryRun: d.dryRun, Stats: d.stats, Samples: slices.Clone(d.samples), Pressure: d.result.Pressure,
		Threshold: d.result.Threshold, CycleAt: d.cycleAt, Cycles: d.cycles, Counters: d.counters,
		ActiveBans: len(active), Buckets: d.sys.Buckets, Kernel: d.sys.Kernel, Timeouts: d.sys.Timeouts,
		Reader: d.src.ReaderName(), Losing: d.losing, Service: d.svc.state(), Config: cmp.Or(d.cfgPath, "the built-in defaults"),
		Backend: string(d.backend), BackendWhy: d.backendWhy, Fleet: d.fleetStatus(),
	}
	r.Counters.BansByReason = maps(d.counters.BansByReason)
	if d.snap != nil {
		s := *d.snap
		r.NumSources = max(s.NumSources, len(s.Sources))
		s.Sources, s.Prefixes = nil, nil
		s.Config.Local = nil
		r.Snapshot = &s
	}
	return r
}

func maps(m map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// TopReply is the daemon's last snapshot, ranked, for `top`.
type TopReply struct {
	Snapshot *snapshot.Snapshot `json:"snapshot"` // Sources or Prefixes holds the top N
	// How many sources and prefixes the scan found in all.
	NumSources  int `json:"num_sources"`
	NumPrefixes int `json:"num_prefixes"`
}

// MaxTopRows bounds a top reply (n = 0 asks for all): the snapshot lists
// at most the holders with two or more entries, which on a full table can
// still be 131,072.
const MaxTopRows = 10000

// Top returns the top n holders of the last scan (at most MaxTopRows).
func (d *Daemon) Top(by string, prefix bool, n int) TopReply {
	d.mu.Lock()
	snap := d.snap
	d.mu.Unlock()
	if snap == nil {
		return TopReply{}
	}
	s := *snap
	s.Config.Local = nil
	order := map[string]snapshot.Order{"held": snapshot.ByHeld, "idle": snapshot.ByIdle, "halfopen": snapshot.ByHalfOpen}[by]
	hs := slices.Clone(s.Sources)
	if prefix {
		hs = slices.Clone(s.Prefixes)
	}
	snapshot.SortBy(hs, order)
	if n <= 0 || n > MaxTopRows {
		n = MaxTopRows
	}
	if len(hs) > n {
		hs = hs[:n]
	}
	r := TopReply{Snapshot: &s, NumSources: max(s.NumSources, len(s.Sources)), NumPrefixes: max(s.NumPrefixes, len(s.Prefixes))}
	s.Sources, s.Prefixes = nil, nil
	if prefix {
		s.Prefixes = hs
	} else {
		s.Sources = hs
	}
	return r
}
