package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ctguard/ctguard/internal/allow"
	"github.com/ctguard/ctguard/internal/enforce"
	"github.com/ctguard/ctguard/internal/store"
)

// ErrNoDaemon means no daemon answers on the control socket.
var ErrNoDaemon = errors.New("no ctguard daemon is running")

// Client talks to a running daemon.
type Client struct {
	Path   string
	dryRun atomic.Bool // the last reply came from a dry-run daemon
}

// DryRun reports whether the daemon that answered last runs in dry-run
// mode (its bans, purges and unbans only say what they would do).
func (c *Client) DryRun() bool { return c.dryRun.Load() }

// ErrOtherNamespace means the daemon answering on the socket runs in
// another network namespace: the socket is a file, files are shared
// across namespaces, and that daemon's table and bans are not this one's.
var ErrOtherNamespace = errors.New("the ctguard daemon on this socket runs in another network namespace")

// ErrSocketDenied means the caller may not use the control socket.
var ErrSocketDenied = errors.New("permission denied on the control socket (it is root's: run with sudo)")

// Dial returns a client if a daemon of this network namespace answers on
// path; else ErrNoDaemon, ErrSocketDenied or ErrOtherNamespace.
func Dial(path string) (*Client, error) {
	c, err := net.DialTimeout("unix", path, time.Second)
	if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		return nil, ErrSocketDenied
	}
	if err != nil {
		return nil, ErrNoDaemon
	}
	defer c.Close()
	if pid, other := otherNamespace(c.(*net.UnixConn)); other {
		return nil, fmt.Errorf("%w (pid %d)", ErrOtherNamespace, pid)
	}
	return &Client{Path: path}, nil
}

// otherNamespace reports whether the peer of c (the daemon, by
// SO_PEERCRED) lives in another network namespace than the caller. Unknown
// counts as the same: a pid namespace that hides the peer must not lock
// the operator out of the daemon.
func otherNamespace(c *net.UnixConn) (int, bool) {
	pid := enforce.PeerPID(c)
	if pid <= 0 {
		return 0, false
	}
	theirs, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	ours, err2 := os.Readlink("/proc/self/ns/net")
	if err1 != nil || err2 != nil {
		return pid, false
	}
	return pid, theirs != ours
}

// Call sends one request and decodes the result into out (may be nil).
func (c *Client) Call(ctx context.Context, req Request, out any) error {
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "unix", c.Path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoDaemon, err)
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	} else {
		conn.SetDeadline(time.Now().Add(2 * time.Minute))
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	c.dryRun.Store(resp.DryRun)
	if resp.Error != "" {
		return errors.New(resp.Error)
	}
	if out != nil && len(resp.Result) > 0 {
		return json.Unmarshal(resp.Result, out)
	}
	return nil
}

// Ban asks the daemon to ban.
func (c *Client) Ban(ctx context.Context, r enforce.BanRequest) (enforce.BanResult, error) {
	var w wireBanResult
	err := c.Call(ctx, Request{Op: "ban", Target: r.Prefix.String(), TTL: r.TTL, Reason: r.Reason, ExactTTL: r.ExactTTL}, &w)
	if err != nil {
		return enforce.BanResult{Prefix: r.Prefix, Err: err}, err
	}
	res := w.BanResult
	if w.Err != "" {
		res.Err = errors.New(w.Err)
	}
	return res, res.Err
}

// BanMany asks the daemon to ban many targets in one kernel change; they
// must share one timeout and reason (the command line's bulk ban).
func (c *Client) BanMany(ctx context.Context, reqs []enforce.BanRequest) ([]enforce.BanResult, error) {
	if len(reqs) == 0 {
		return nil, nil
	}
	r := Request{Op: "ban-many", TTL: reqs[0].TTL, Reason: reqs[0].Reason, ExactTTL: reqs[0].ExactTTL}
	for _, q := range reqs {
		if q.TTL != r.TTL || q.Reason != r.Reason || q.ExactTTL != r.ExactTTL {
			return nil, errors.New("a bulk ban through the daemon takes one timeout and one reason")
		}
		r.Targets = append(r.Targets, q.Prefix.String())
	}
	var ws []wireBanResult
	err := c.Call(ctx, r, &ws)
	out := make([]enforce.BanResult, len(ws))
	for i, w := range ws {
		out[i] = w.BanResult
		if w.Err != "" {
			out[i].Err = errors.New(w.Err)
		}
	}
	return out, err
}

// UnbanMany asks the daemon to lift many bans (all: every active one).
func (c *Client) UnbanMany(ctx context.Context, ps []netip.Prefix, all bool) ([]enforce.UnbanResult, error) {
	r := Request{Op: "unban-many", All: all}
	for _, p := range ps {
		r.Targets = append(r.Targets, p.String())
	}
	var ws []wireUnbanResult
	err := c.Call(ctx, r, &ws)
	out := make([]enforce.UnbanResult, len(ws))
	for i, w := range ws {
		out[i] = w.UnbanResult
		if w.Err != "" {
			out[i].Err = errors.New(w.Err)
		}
	}
	return out, err
}

// Unban asks the daemon to unban.
func (c *Client) Unban(ctx context.Context, p netip.Prefix) (store.Ban, error) {
	var b store.Ban
	return b, c.Call(ctx, Request{Op: "unban", Target: p.String()}, &b)
}

// List returns the daemon's ban list.
func (c *Client) List(all bool) ([]store.Ban, error) {
	var bs []store.Ban
	return bs, c.Call(context.Background(), Request{Op: "list", All: all}, &bs)
}

// Allow adds a runtime allowlist entry through the daemon.
func (c *Client) Allow(ctx context.Context, p netip.Prefix, ttl time.Duration, note string) (enforce.AllowResult, error) {
	var r enforce.AllowResult
	return r, c.Call(ctx, Request{Op: "allow", Target: p.String(), TTL: ttl, Reason: note}, &r)
}

// RemoveAllow removes a runtime allowlist entry through the daemon.
func (c *Client) RemoveAllow(p netip.Prefix) error {
	return c.Call(context.Background(), Request{Op: "unallow", Target: p.String()}, nil)
}

// Allowlist returns the daemon's allowlist.
func (c *Client) Allowlist() (*allow.List, error) {
	var es []allow.Entry
	if err := c.Call(context.Background(), Request{Op: "allowlist"}, &es); err != nil {
		return nil, err
	}
	return allow.NewList(es), nil
}

// Purge asks the daemon to purge p's entries.
func (c *Client) Purge(ctx context.Context, p netip.Prefix) (enforce.PurgeResult, error) {
	var r enforce.PurgeResult
	return r, c.Call(ctx, Request{Op: "purge", Target: p.String()}, &r)
}

// Counters returns the drop counters of ctguard's table.
func (c *Client) Counters(ctx context.Context) (enforce.Counters, error) {
	var r enforce.Counters
	return r, c.Call(ctx, Request{Op: "counters"}, &r)
}
