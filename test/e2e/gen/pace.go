package gen

import (
	"context"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ctguard/ctguard/test/e2e/wire"
)

// pacer hands out tokens at a fixed rate, in small batches so high rates do
// not need a timer per token. Tokens that nobody takes are not banked: a
// slow consumer just gets a lower rate.
func pacer(ctx context.Context, rate float64, total int64) <-chan struct{} {
	ch := make(chan struct{}, 1024)
	go func() {
		defer close(ch)
		start := time.Now()
		var given int64
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for given < total {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			due := int64(rate * time.Since(start).Seconds())
			if due > total {
				due = total
			}
			for given < due {
				select {
				case ch <- struct{}{}:
					given++
				case <-ctx.Done():
					return
				default:
					// Consumers are behind: drop the backlog instead of bursting later.
					given = due
				}
			}
		}
	}()
	return ch
}

// counters is a generator's running totals, reported once a second.
type counters struct {
	name               string
	sent, failed, live atomic.Int64
	peak               atomic.Int64 // most live at once
	pings, pingFailed  atomic.Int64
}

// addLive changes the live count and keeps the peak.
func (c *counters) addLive(d int64) {
	n := c.live.Add(d)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func (c *counters) report(ctx context.Context, w *wire.Writer, done <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-done:
			return
		case <-t.C:
			_ = w.Write(wire.Record{Kind: "progress", Progress: c.snapshot(false)})
		}
	}
}

func (c *counters) snapshot(done bool) *wire.Progress {
	return &wire.Progress{Gen: c.name, Sent: c.sent.Load(), Failed: c.failed.Load(), Live: c.live.Load(),
		PeakLive: c.peak.Load(), Pings: c.pings.Load(), PingFailed: c.pingFailed.Load(), Done: done}
}

// dialer returns a dialer bound to src that may use addresses the namespace
// only owns through an AnyIP route (IPv6 needs IPV6_FREEBIND for that), and
// that picks the port at connect time so many connections share one source.
func dialer(src netip.Addr, timeout time.Duration) *net.Dialer {
	return &net.Dialer{
		Timeout:   timeout,
		LocalAddr: &net.TCPAddr{IP: src.AsSlice()},
		Control: func(network, address string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if src.Is4() {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_FREEBIND, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1)
				}
				if serr == nil {
					serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
				}
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
}

func network(a netip.Addr, proto string) string {
	if a.Is4() {
		return proto + "4"
	}
	return proto + "6"
}
