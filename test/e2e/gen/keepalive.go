package gen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctguard/ctguard/test/e2e/victim"
	"github.com/ctguard/ctguard/test/e2e/wire"
)

// KeepAliveConfig is a keep-alive bot attack: sources rotate exactly as the
// silent bots' do (N sources, PerSource connections each, Active sources at
// a time, Rate connections per second in all), but the attacker keeps every
// connection open and alive: after the handshake it sends one request line
// and then a short line every Interval until the run ends, and the server
// answers each (the answers are drained, never parsed). Each such entry is
// ESTABLISHED, never idle for long, and has a real socket behind it on the
// victim: nothing about it looks like an orphan.
type KeepAliveConfig struct {
	BotConfig
	Interval time.Duration // between keep-alive lines per connection; default 20 s
}

// Keep-alive wire format: one request, then pings.
var (
	kaRequest = []byte("GET /ka\n")
	kaPing    = []byte("k\n")
)

// Validate checks the bounds.
func (c *KeepAliveConfig) Validate() error {
	if err := c.BotConfig.Validate(); err != nil {
		return fmt.Errorf("keepalive: %w", err)
	}
	if c.Interval < 0 {
		return fmt.Errorf("keepalive: negative interval %s", c.Interval)
	}
	return nil
}

// kaConn is one open connection and when it is next due for a ping.
type kaConn struct {
	c    *net.TCPConn
	rc   syscall.RawConn
	next int64 // unix ns
}

// pinger owns the open connections: one goroutine walks them in the order
// they are due, so 300,000 connections cost a slice entry each, not a
// goroutine each. Reads and writes are single non-blocking attempts on the
// raw socket: a ping never waits.
type pinger struct {
	interval time.Duration
	c        *counters

	mu       sync.Mutex
	incoming []kaConn
	queue    []kaConn
	head     int
	buf      []byte
}

func (p *pinger) add(k kaConn) {
	p.mu.Lock()
	p.incoming = append(p.incoming, k)
	p.mu.Unlock()
}

// run pings due connections every tick until ctx ends.
func (p *pinger) run(ctx context.Context) {
	t := time.NewTicker(25 * time.Millisecond)
	defer t.Stop()
	var in []kaConn
	for {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			p.queue = append(p.queue[p.head:], p.incoming...)
			p.head, p.incoming = 0, nil
			p.mu.Unlock()
			return
		case <-t.C:
		}
		p.mu.Lock()
		in, p.incoming = p.incoming, in[:0]
		p.mu.Unlock()
		p.queue = append(p.queue, in...)
		now := time.Now().UnixNano()
		// Connections are queued in the order they are due (each is pushed
		// back one interval later), so the walk stops at the first that is
		// not due yet. The tick bounds the work per tick by what fell due.
		end := len(p.queue)
		for p.head < end && p.queue[p.head].next <= now && ctx.Err() == nil {
			k := p.queue[p.head]
			p.queue[p.head] = kaConn{}
			p.head++
			if p.ping(k) {
				k.next = now + int64(p.interval)
				p.queue = append(p.queue, k)
			}
		}
		if p.head > 4096 && p.head > len(p.queue)/2 {
			n := copy(p.queue, p.queue[p.head:])
			clear(p.queue[n:])
			p.queue, p.head = p.queue[:n], 0
		}
	}
}

// ping drains what the server sent and writes one line. It returns false
// (and closes the connection) when the connection is gone.
func (p *pinger) ping(k kaConn) bool {
	gone := false
	_ = k.rc.Read(func(fd uintptr) bool {
		for {
			n, err := unix.Read(int(fd), p.buf)
			if n == 0 && err == nil {
				gone = true // the server closed
			}
			if err != nil && !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EINTR) {
				gone = true
			}
			if n < len(p.buf) {
				return true
			}
		}
	})
	if !gone {
		var werr error
		_ = k.rc.Write(func(fd uintptr) bool {
			_, werr = unix.Write(int(fd), kaPing)
			return true
		})
		switch {
		case werr == nil:
			p.c.pings.Add(1)
			return true
		case errors.Is(werr, unix.EAGAIN):
			// Send buffer full: the victim stopped acknowledging (a ban).
			// The connection is still ours; try again next round.
			p.c.pingFailed.Add(1)
			return true
		}
		p.c.pingFailed.Add(1)
	}
	abort(k.c)
	p.c.addLive(-1)
	return false
}

// abort closes without a FIN handshake: the RST is dropped by the
// attacker's ruleset, and the socket is freed at once.
func abort(c *net.TCPConn) {
	_ = c.SetLinger(0)
	c.Close()
}

// closeAll closes every connection still held, on a few goroutines.
func (p *pinger) closeAll() {
	p.mu.Lock()
	all := append(p.queue[p.head:], p.incoming...)
	p.queue, p.incoming, p.head = nil, nil, 0
	p.mu.Unlock()
	const workers = 4
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < len(all); i += workers {
				abort(all[i].c)
			}
		}(w)
	}
	wg.Wait()
	p.c.live.Store(0)
}

// KeepAlivePlan says how many processes the attack needs, and how many
// connects each keeps in flight, under this process's file limit (raised as
// far as it goes; children inherit it).
func KeepAlivePlan(cfg *KeepAliveConfig) (shards, workers int, err error) {
	total := cfg.N * cfg.PerSource
	workers = cfg.Workers
	if workers == 0 {
		workers = 16384
	}
	lim, err := victim.RaiseNoFile(uint64(total + workers + 1024))
	if err != nil {
		return 0, 0, fmt.Errorf("keepalive: %w", err)
	}
	if int(lim) >= total+workers+1024 {
		return 1, workers, nil
	}
	if cfg.Workers == 0 {
		// Fewer connects in flight per process: dropped SYNs wait out
		// their timeout, but each shard only has its share of the rate.
		workers = min(max(int(lim)/16, 256), 16384)
	}
	perProc := (int(lim) - workers - 256) * 95 / 100
	if perProc < 1000 {
		return 0, 0, fmt.Errorf("keepalive: file limit %d is too low", lim)
	}
	shards = ShardsFor(total, perProc)
	if shards > cfg.N {
		return 0, 0, fmt.Errorf("keepalive: %d connections per source do not fit the file limit %d", cfg.PerSource, lim)
	}
	if shards > 64 {
		return 0, 0, fmt.Errorf("keepalive: %d connections need %d processes at %d files each: too many", total, shards, lim)
	}
	return shards, workers, nil
}

// Shard returns shard i of k: every k-th source, its share of the rate and
// of the active sources.
func (c KeepAliveConfig) Shard(i, k int) KeepAliveConfig {
	if k <= 1 {
		return c
	}
	c.Sources = c.Sources.Shard(i, k)
	c.N = ShardCount(c.N, i, k)
	c.Active = max(1, (c.Active+k-1)/k)
	c.Rate /= float64(k)
	if c.Name == "" {
		c.Name = "keepalive"
	}
	c.Name = fmt.Sprintf("%s-%d", c.Name, i)
	return c
}

// KeepAlive runs the attack: it opens connections at Rate from the rotating
// sources until N*PerSource are made (or refused), keeps them all alive,
// and closes them at the end, so that it is done by Duration.
func KeepAlive(ctx context.Context, cfg KeepAliveConfig, w *wire.Writer) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Workers == 0 {
		cfg.Workers = 16384
	}
	if cfg.Timeout == 0 {
		// Longer than the silent bots' 500 ms: on a loaded machine a connect
		// the victim already counts as ESTABLISHED can take longer to
		// complete here, and giving up on it would leave a silent entry
		// (our RST is dropped), not a kept-alive one.
		cfg.Timeout = 3 * time.Second
	}
	if cfg.Interval == 0 {
		cfg.Interval = 20 * time.Second
	}
	if cfg.Name == "" {
		cfg.Name = "keepalive"
	}
	total := cfg.N * cfg.PerSource
	lim, err := victim.RaiseNoFile(uint64(total + cfg.Workers + 1024)) // capped at fs.nr_open
	if err != nil {
		return fmt.Errorf("keepalive: %d connections: %w", total, err)
	}
	// Never run into EMFILE: connections beyond the file limit are not made.
	maxOpen := int64(lim) - int64(cfg.Workers) - 256
	if maxOpen < 1 {
		return fmt.Errorf("keepalive: file limit %d leaves no room for connections", lim)
	}
	rot, err := newRotation(&cfg.BotConfig)
	if err != nil {
		return err
	}
	// Closing 14,000 connections takes a process seconds on a loaded
	// machine, so the attack stops a little early (the victim cannot tell:
	// our RSTs are dropped, and a few seconds without a ping are nothing
	// against a 20 s interval) and is done by Duration.
	reserve := min(cfg.Duration/8, 6*time.Second)
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration-reserve)
	defer cancel()
	c := &counters{name: cfg.Name}
	done := make(chan struct{})
	go c.report(ctx, w, done)
	p := &pinger{interval: cfg.Interval, c: c, buf: make([]byte, 4096)}
	pingDone := make(chan struct{})
	go func() {
		defer close(pingDone)
		p.run(ctx)
	}()
	tokens := pacer(ctx, cfg.Rate, int64(total))
	dst := cfg.Dst.String()
	var wg sync.WaitGroup
	for i := 0; i < cfg.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range tokens {
				if c.live.Load() >= maxOpen {
					c.failed.Add(1)
					continue
				}
				src, ok := rot.take()
				if !ok {
					return
				}
				conn, err := dialer(src, cfg.Timeout).DialContext(ctx, network(src, "tcp"), dst)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					c.failed.Add(1)
					continue
				}
				tc := conn.(*net.TCPConn)
				rc, err := tc.SyscallConn()
				var werr error
				if err == nil {
					err = rc.Write(func(fd uintptr) bool {
						_, werr = unix.Write(int(fd), kaRequest)
						return true
					})
				}
				if err != nil || werr != nil {
					abort(tc)
					c.failed.Add(1)
					continue
				}
				c.sent.Add(1)
				c.addLive(1)
				p.add(kaConn{c: tc, rc: rc, next: time.Now().Add(cfg.Interval).UnixNano()})
			}
		}()
	}
	wg.Wait()
	// Every connection is made (or refused): hold them until the end.
	<-ctx.Done()
	<-pingDone
	p.closeAll()
	close(done)
	return w.Write(wire.Record{Kind: "progress", Progress: c.snapshot(true)})
}
