package gen

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/ctguard/ctguard/test/e2e/wire"
)

// Some roles need more open files than one process may hold: a keep-alive
// attack holds ~260,000 connections, and so does the server answering
// them, while RLIMIT_NOFILE's hard limit (20,000 in some containers) can
// only be raised with CAP_SYS_RESOURCE. Such a role runs as K child
// processes of the same binary, each with its share of the work; the parent
// only supervises and reports for all of them.

// ShardsFor says how many processes hold n files when each may hold
// perProc (at least 1).
func ShardsFor(n, perProc int) int {
	if perProc < 1 {
		perProc = 1
	}
	return max(1, (n+perProc-1)/perProc)
}

// Shard restricts Sources to every k-th source starting at i: shard i of k
// uses global sources i, i+k, i+2k, ...
func (s Sources) Shard(i, k int) Sources {
	if k <= 1 {
		return s
	}
	s.stride, s.offset = k, i
	return s
}

// ShardCount is how many of n items shard i of k gets (i, i+k, ... < n).
func ShardCount(n, i, k int) int {
	if k <= 1 {
		return n
	}
	if i >= n {
		return 0
	}
	return (n-1-i)/k + 1
}

// child is one helper process and its exit.
type child struct {
	cmd *exec.Cmd
	err error
}

// Children are the helper processes of one role.
type Children struct {
	mu   sync.Mutex
	kids []*child
	recs chan childRecord
	wg   sync.WaitGroup
}

type childRecord struct {
	i   int
	rec wire.Record
}

// SpawnChildren starts k copies of this binary with args(i); they die with
// the parent (SIGKILL) and are stopped with SIGTERM when ctx ends. Their
// stdout records arrive on Records until all have exited.
func SpawnChildren(ctx context.Context, k int, args func(i int) []string) (*Children, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("children: own binary: %w", err)
	}
	c := &Children{recs: make(chan childRecord, 256)}
	for i := 0; i < k; i++ {
		cmd := exec.CommandContext(ctx, self, args(i)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 10 * time.Second
		// One P each: a shard has a k-th of the work, and dozens of
		// processes each spinning up threads for every core only crowd a
		// small machine's scheduler.
		cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("children: start %d of %d: %w", i, k, err)
		}
		ch := &child{cmd: cmd}
		c.kids = append(c.kids, ch)
		c.wg.Add(1)
		go func(i int) {
			defer c.wg.Done()
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 64<<10), 16<<20)
			for sc.Scan() {
				var rec wire.Record
				if json.Unmarshal(sc.Bytes(), &rec) != nil {
					continue
				}
				c.recs <- childRecord{i, rec}
			}
			err := cmd.Wait()
			c.mu.Lock()
			ch.err = err
			c.mu.Unlock()
		}(i)
	}
	go func() {
		c.wg.Wait()
		close(c.recs)
	}()
	return c, nil
}

// Err joins the children's exit errors (after Records is drained).
func (c *Children) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for i, k := range c.kids {
		if k.err != nil {
			errs = append(errs, fmt.Errorf("child %d: %w", i, k.err))
		}
	}
	return errors.Join(errs...)
}

// Supervise reports for sharded generators: it forwards the children's log
// records and writes one progress record a second (and a final one) that
// sums theirs, under name. PeakLive is the most live connections summed
// over the children's reports (once a second each).
func (c *Children) Supervise(name string, w *wire.Writer) error {
	last := make([]*wire.Progress, len(c.kids))
	var peak int64
	sum := func(done bool) *wire.Progress {
		p := &wire.Progress{Gen: name, Done: done}
		for _, l := range last {
			if l == nil {
				continue
			}
			p.Sent += l.Sent
			p.Failed += l.Failed
			p.Live += l.Live
			p.Pings += l.Pings
			p.PingFailed += l.PingFailed
		}
		peak = max(peak, p.Live)
		p.PeakLive = peak
		return p
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case r, ok := <-c.recs:
			if !ok {
				p := sum(true)
				p.Live = 0
				if err := w.Write(wire.Record{Kind: "progress", Progress: p}); err != nil {
					return err
				}
				return c.Err()
			}
			switch r.rec.Kind {
			case "progress":
				if r.rec.Progress != nil {
					last[r.i] = r.rec.Progress
				}
			case "log":
				_ = w.Write(r.rec)
			}
		case <-t.C:
			_ = w.Write(wire.Record{Kind: "progress", Progress: sum(false)})
		}
	}
}

// WaitReady waits until every child wrote a "ready" record.
func (c *Children) WaitReady(ctx context.Context, timeout time.Duration) error {
	ready := map[int]bool{}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for len(ready) < len(c.kids) {
		select {
		case r, ok := <-c.recs:
			if !ok {
				return fmt.Errorf("children exited before they were ready: %v", c.Err())
			}
			if r.rec.Kind == "ready" {
				ready[r.i] = true
			}
		case <-t.C:
			return fmt.Errorf("%d of %d children ready after %s", len(ready), len(c.kids), timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// Keep reading, so no child blocks on a full pipe.
	go func() {
		for range c.recs {
		}
	}()
	return nil
}

// Drain waits until every child has exited.
func (c *Children) Drain() { c.wg.Wait() }
