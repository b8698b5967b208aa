package gen

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/ctguard/ctguard/internal/conntrack"
	"github.com/ctguard/ctguard/test/e2e/wire"
)

// PrefillConfig injects silent-bot entries over ctnetlink, as if the attack
// had already been running for a while: ESTABLISHED, ASSURED, five days to
// live, from N sources with PerSource entries each. The kernel treats them
// like the live bots' entries (never early-dropped). Only the short CI
// scenarios use it, so that they do not spend half a minute filling the
// table of a 2-core machine connection by connection.
//
// With Forwarded, the entries are forwarded ones instead: neither end is an
// address of the namespace (checked), as if the host routed them, so a
// guard counts them in the table's fill but attributes them to no remote
// source. They fill the table without giving any defense a target: the
// keep-alive and ssh-trick scenarios use them for pressure.
type PrefillConfig struct {
	Sources   Sources
	N         int
	PerSource int
	Dst       netip.AddrPort
	Duration  time.Duration
	Forwarded bool
	// ReplySrc, if valid, makes the entries DNAT'ed ones: the reply comes
	// from this address and port (a container behind the victim) instead
	// of from Dst, as the kernel records a connection to a published port.
	ReplySrc netip.AddrPort
	// Idle makes the entries look silent for that long already (their
	// timeout that much under the established timeout), as the first bots'
	// entries of an attack that has been running for a while are. Zero:
	// fresh, as the other short scenarios inject them.
	Idle time.Duration
}

// establishedTimeout is the kernel's default nf_conntrack_tcp_timeout_established
// (five days), which the lab's namespaces keep.
const establishedTimeout = 432000

// checkForwarded fails if an end of the entries is a local address.
func checkForwarded(cfg *PrefillConfig) error {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return fmt.Errorf("prefill: local addresses: %w", err)
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip == cfg.Dst.Addr().Unmap() || cfg.Sources.Prefix.Contains(ip) {
			return fmt.Errorf("prefill: forwarded entries must not touch local address %s", ip)
		}
	}
	return nil
}

// Prefill runs inside the victim namespace.
func Prefill(ctx context.Context, cfg PrefillConfig, w *wire.Writer) error {
	if cfg.N < 1 || cfg.PerSource < 1 || cfg.PerSource > 60000 || cfg.N*cfg.PerSource > 1_000_000 || cfg.Duration <= 0 {
		return fmt.Errorf("prefill: need 1..1M entries, per-source <= 60000, and a duration")
	}
	if _, err := cfg.Sources.Addr(cfg.N - 1); err != nil {
		return fmt.Errorf("prefill: %w", err)
	}
	if cfg.ReplySrc.IsValid() && (cfg.Forwarded || cfg.ReplySrc.Addr().Unmap().Is4() != cfg.Dst.Addr().Unmap().Is4()) {
		return fmt.Errorf("prefill: reply source %s: want the destination's family, and no --forwarded", cfg.ReplySrc)
	}
	if cfg.Idle < 0 || cfg.Idle >= establishedTimeout*time.Second {
		return fmt.Errorf("prefill: idle %s: want 0 up to five days", cfg.Idle)
	}
	if cfg.Forwarded {
		if err := checkForwarded(&cfg); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	c, err := conntrack.Open()
	if err != nil {
		return fmt.Errorf("prefill: %w", err)
	}
	defer c.Close()
	const chunk = 4096
	batch := make([]conntrack.Entry, 0, chunk)
	created := 0
	flush := func() error {
		n, err := c.Create(ctx, batch)
		created += n
		batch = batch[:0]
		return err
	}
	dst, reply := cfg.Dst.Addr(), cfg.Dst
	timeout := uint32(establishedTimeout-1) - uint32(cfg.Idle/time.Second)
	if cfg.ReplySrc.IsValid() {
		reply = cfg.ReplySrc
	}
	for i := 0; i < cfg.N; i++ {
		src, _ := cfg.Sources.Addr(i)
		for j := 0; j < cfg.PerSource; j++ {
			sport := uint16(1024 + j)
			batch = append(batch, conntrack.Entry{
				Proto:       conntrack.ProtoTCP,
				Orig:        conntrack.Tuple{Src: src, Dst: dst, SrcPort: sport, DstPort: cfg.Dst.Port()},
				Reply:       conntrack.Tuple{Src: reply.Addr(), Dst: src, SrcPort: reply.Port(), DstPort: sport},
				TCPState:    conntrack.TCPEstablished,
				HasTCPState: true,
				Status:      conntrack.StatusConfirmed | conntrack.StatusSeenReply | conntrack.StatusAssured,
				Timeout:     timeout,
			})
			if len(batch) == chunk {
				if err := flush(); err != nil {
					return fmt.Errorf("prefill after %d entries: %w", created, err)
				}
			}
		}
	}
	if len(batch) > 0 {
		if err := flush(); err != nil {
			return fmt.Errorf("prefill after %d entries: %w", created, err)
		}
	}
	return w.Write(wire.Record{Kind: "progress", Progress: &wire.Progress{Gen: "prefill", Sent: int64(created), Done: true}})
}
