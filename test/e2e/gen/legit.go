package gen

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ctguard/ctguard/test/e2e/wire"
)

// exchange sends req on a fresh connection from src and hands the answer
// to check, all within timeout; the connection is closed normally.
func exchange(ctx context.Context, src netip.Addr, dst netip.AddrPort, timeout time.Duration, req string, check func(*bufio.Reader) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := dialer(src, timeout).DialContext(ctx, network(src, "tcp"), dst.String())
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := io.WriteString(conn, req); err != nil {
		return err
	}
	return check(bufio.NewReader(conn))
}

// request sends one request line to the lab server and waits for its
// answer line.
func request(ctx context.Context, src netip.Addr, dst netip.AddrPort, path string, timeout time.Duration) error {
	return exchange(ctx, src, dst, timeout, "GET "+path+"\n", func(r *bufio.Reader) error {
		_, err := r.ReadString('\n')
		return err
	})
}

// httpGet fetches / over HTTP/1.1 and wants a 200 status line: what a
// browser needs from a real web server (Apache). The Host header is
// ADDR:PORT (an IPv6 address in brackets, as HTTP wants).
func httpGet(ctx context.Context, src netip.Addr, dst netip.AddrPort, timeout time.Duration) error {
	req := fmt.Sprintf("GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: ctglab-probe\r\nConnection: close\r\n\r\n", dst)
	return exchange(ctx, src, dst, timeout, req, httpStatusOK)
}

// httpStatusOK reads a status line and wants 200.
func httpStatusOK(r *bufio.Reader) error {
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	f := strings.Fields(line)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/") {
		return fmt.Errorf("not an HTTP status line: %q", strings.TrimSpace(line))
	}
	if f[1] != "200" {
		return fmt.Errorf("HTTP status %s", strings.Join(f[1:], " "))
	}
	return nil
}

// CrowdConfig is a benign crowd: short request/response connections from
// many sources, at a fixed rate.
type CrowdConfig struct {
	Sources  Sources
	N        int // distinct sources, used round-robin
	Rate     float64
	Dst      netip.AddrPort
	Duration time.Duration
	Timeout  time.Duration
	HTTP     bool // real HTTP/1.1 GETs that must answer 200 (a web server)
}

// Crowd runs the benign crowd.
func Crowd(ctx context.Context, cfg CrowdConfig, w *wire.Writer) error {
	if cfg.N < 1 || cfg.Rate <= 0 || cfg.Duration <= 0 {
		return fmt.Errorf("crowd: need n, rate and duration > 0")
	}
	if _, err := cfg.Sources.Addr(cfg.N - 1); err != nil {
		return fmt.Errorf("crowd: %w", err)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	c := &counters{name: "crowd"}
	done := make(chan struct{})
	go c.report(ctx, w, done)
	total := int64(cfg.Rate*cfg.Duration.Seconds()) + 1
	tokens := pacer(ctx, cfg.Rate, total)
	var wg sync.WaitGroup
	var mu sync.Mutex
	next := 0
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range tokens {
				mu.Lock()
				idx := next % cfg.N
				next++
				mu.Unlock()
				src, _ := cfg.Sources.Addr(idx)
				get := func() error { return request(ctx, src, cfg.Dst, "/crowd", cfg.Timeout) }
				if cfg.HTTP {
					get = func() error { return httpGet(ctx, src, cfg.Dst, cfg.Timeout) }
				}
				if err := get(); err != nil {
					if ctx.Err() != nil {
						return
					}
					c.failed.Add(1)
					continue
				}
				c.sent.Add(1)
			}
		}()
	}
	wg.Wait()
	close(done)
	return w.Write(wire.Record{Kind: "progress", Progress: c.snapshot(true)})
}

// NATConfig is a set of NAT gateways: each one address carrying Users live
// connections that each send a request every Interval (with jitter).
type NATConfig struct {
	Gateways []netip.Addr
	Users    int
	// UsersStart, if set (1..Users-1), makes each gateway grow, as a
	// carrier-grade NAT does over the day: UsersStart users connect at once
	// (their first requests spread over the interval), then users join at
	// a steady pace until Users are live at RampOver (default: 90% of
	// Duration).
	UsersStart int
	RampOver   time.Duration
	Interval   time.Duration
	Dst        netip.AddrPort
	Duration   time.Duration
}

// Validate checks the bounds.
func (c *NATConfig) Validate() error {
	if len(c.Gateways) == 0 || c.Users < 1 || c.Users > 5000 || c.Interval <= 0 || c.Duration <= 0 {
		return fmt.Errorf("nat: need gateways, 1..5000 users, interval and duration > 0")
	}
	if c.UsersStart < 0 || (c.UsersStart != 0 && c.UsersStart >= c.Users) {
		return fmt.Errorf("nat: users-start %d: want 1..%d (0: no ramp)", c.UsersStart, c.Users-1)
	}
	if c.RampOver < 0 || c.RampOver > c.Duration {
		return fmt.Errorf("nat: ramp %s: want 0..duration (%s)", c.RampOver, c.Duration)
	}
	return nil
}

// natSchedule says when user u of a gateway starts (delay) and how long it
// waits after its first request, made on connecting, before its second
// (phase), so that the users' requests are spread over the interval.
func natSchedule(cfg *NATConfig, gi, u int) (delay, phase time.Duration) {
	// Spread the users' phases over the interval.
	spread := time.Duration((gi*cfg.Users+u)%97) * cfg.Interval / 97
	if cfg.UsersStart <= 0 {
		return spread, 0
	}
	if u < cfg.UsersStart {
		// Connected from the start: the gateway holds its users'
		// connections at once.
		return 0, spread
	}
	ramp := cfg.RampOver
	if ramp <= 0 {
		ramp = cfg.Duration * 9 / 10
	}
	k, n := u-cfg.UsersStart+1, cfg.Users-cfg.UsersStart
	return time.Duration(int64(ramp) * int64(k) / int64(n)), 0
}

// NAT runs the gateways' users. A user whose connection fails reconnects
// after a second, as a browser would.
func NAT(ctx context.Context, cfg NATConfig, w *wire.Writer) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	c := &counters{name: "nat"}
	done := make(chan struct{})
	go c.report(ctx, w, done)
	var wg sync.WaitGroup
	for gi, gw := range cfg.Gateways {
		for u := 0; u < cfg.Users; u++ {
			wg.Add(1)
			delay, phase := natSchedule(&cfg, gi, u)
			go func(gw netip.Addr) {
				defer wg.Done()
				natUser(ctx, gw, cfg, delay, phase, c)
			}(gw)
		}
	}
	wg.Wait()
	close(done)
	return w.Write(wire.Record{Kind: "progress", Progress: c.snapshot(true)})
}

// natUser waits delay, connects and sends a request, waits phase, then
// sends a request every Interval on its one connection until the run ends.
func natUser(ctx context.Context, gw netip.Addr, cfg NATConfig, delay, phase time.Duration, c *counters) {
	sleep := func(d time.Duration) bool { return sleepCtx(ctx, d) }
	if !sleep(delay) {
		return
	}
	for ctx.Err() == nil {
		conn, err := dialer(gw, 3*time.Second).DialContext(ctx, network(gw, "tcp"), cfg.Dst.String())
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.failed.Add(1)
			if !sleep(time.Second) {
				return
			}
			continue
		}
		c.addLive(1)
		r := bufio.NewReader(conn)
		for ctx.Err() == nil {
			_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := fmt.Fprintf(conn, "GET /nat\n"); err != nil {
				c.failed.Add(1)
				break
			}
			if _, err := r.ReadString('\n'); err != nil {
				if ctx.Err() == nil {
					c.failed.Add(1)
				}
				break
			}
			c.sent.Add(1)
			wait := cfg.Interval
			if phase > 0 {
				// The first request goes out at once (a user connects to
				// ask for something); the next ones are spread.
				wait, phase = phase, 0
			}
			if !sleep(wait) {
				break
			}
		}
		c.addLive(-1)
		conn.Close()
		if !sleep(time.Second) {
			return
		}
	}
}

// ProbeConfig is the legit probe: a fresh connection every Interval from the
// next address of Sources, recording success and latency.
type ProbeConfig struct {
	Sources  Sources
	N        int // distinct probe sources, used round-robin
	Interval time.Duration
	Timeout  time.Duration
	Dst      netip.AddrPort
	Duration time.Duration
	// HTTP makes each probe a real HTTP/1.1 GET that must answer 200 (a
	// web server such as Apache), instead of the lab server's line.
	HTTP bool
}

// Probes runs the probes; each outcome is one "probe" record.
func Probes(ctx context.Context, cfg ProbeConfig, w *wire.Writer) error {
	if cfg.N < 1 || cfg.Interval <= 0 || cfg.Timeout <= 0 || cfg.Duration <= 0 {
		return fmt.Errorf("probes: need n, interval, timeout and duration > 0")
	}
	if _, err := cfg.Sources.Addr(cfg.N - 1); err != nil {
		return fmt.Errorf("probes: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	var wg sync.WaitGroup
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-t.C:
		}
		src, _ := cfg.Sources.Addr(i % cfg.N)
		start := time.Now()
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A probe has its own deadline and is not cut short by the end
			// of the run, so every started probe gets an outcome.
			var err error
			if cfg.HTTP {
				err = httpGet(context.Background(), src, cfg.Dst, cfg.Timeout)
			} else {
				err = request(context.Background(), src, cfg.Dst, "/probe", cfg.Timeout)
			}
			p := &wire.Probe{Src: src.String(), OK: err == nil, LatencyMS: float64(time.Since(start).Microseconds()) / 1000}
			if err != nil {
				p.Err = err.Error()
			}
			_ = w.Write(wire.Record{Kind: "probe", T: start.UnixMilli(), Probe: p})
		}()
	}
}
