// Package victim is the lab's server: it listens on TCP 22, 80 and 443 and
// UDP 443 on all addresses (IPv4 and IPv6), behaves like a typical HTTPS
// server (never sends first, answers each request line, keeps the
// connection open, raised file-descriptor limit) and sets TCP_DEFER_ACCEPT
// on 443, as Apache does for https by default. With deferred accept a
// client that completes the handshake but never sends stays in SYN_RECV on
// the server while conntrack already holds the flow as ESTABLISHED: the
// mismatch netstat showed during the incident (fewer sockets than
// conntrack entries per bot).
package victim

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Config selects ports and timeouts.
type Config struct {
	TCPPorts     []int         // default 22, 80, 443
	DeferPorts   []int         // ports with TCP_DEFER_ACCEPT; default 443
	UDPPorts     []int         // default 443
	DeferSeconds int           // TCP_DEFER_ACCEPT value; default 30
	IdleTimeout  time.Duration // close a connection idle this long; default 10 min
	Backlog      int           // listen backlog (capped by somaxconn); default 1<<20
	MaxConns     int           // accepted connections kept at once; default 200000
	NoFileLimit  uint64        // RLIMIT_NOFILE to raise to; default 1<<20
	// ReusePort sets SO_REUSEPORT on the TCP listeners, so several server
	// processes share the ports (the kernel spreads connections over them)
	// when one process may not hold enough files.
	ReusePort bool
}

func (c *Config) defaults() {
	if c.TCPPorts == nil {
		c.TCPPorts = []int{22, 80, 443}
	}
	if c.DeferPorts == nil {
		c.DeferPorts = []int{443}
	}
	if c.UDPPorts == nil {
		c.UDPPorts = []int{443}
	}
	if c.DeferSeconds == 0 {
		c.DeferSeconds = 30
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 10 * time.Minute
	}
	if c.Backlog == 0 {
		c.Backlog = 1 << 20
	}
	if c.MaxConns == 0 {
		c.MaxConns = 200000
	}
	if c.NoFileLimit == 0 {
		c.NoFileLimit = 1 << 20
	}
}

// Server is a running victim server.
type Server struct {
	cfg      Config
	log      *slog.Logger
	lns      []net.Listener
	pcs      []net.PacketConn
	wg       sync.WaitGroup
	live     atomic.Int64
	requests atomic.Int64
}

// RaiseNoFile lifts the soft (and if allowed the hard) RLIMIT_NOFILE, to at
// most fs.nr_open (the kernel refuses more).
func RaiseNoFile(want uint64) (uint64, error) {
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		var n uint64
		if _, err := fmt.Sscan(string(b), &n); err == nil && n > 0 && want > n {
			want = n
		}
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("getrlimit: %w", err)
	}
	if rl.Max < want {
		rl.Max = want // root may raise the hard limit up to fs.nr_open
	}
	rl.Cur = want
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		// Fall back to the hard limit we already have.
		if err2 := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err2 != nil {
			return 0, fmt.Errorf("setrlimit %d: %w", want, err)
		}
		rl.Cur = rl.Max
		if err2 := unix.Setrlimit(unix.RLIMIT_NOFILE, &rl); err2 != nil {
			return 0, fmt.Errorf("setrlimit %d: %w", want, err)
		}
	}
	return rl.Cur, nil
}

// Start opens all listeners. Stop them with Close.
func Start(cfg Config, log *slog.Logger) (*Server, error) {
	cfg.defaults()
	s := &Server{cfg: cfg, log: log}
	lim, err := RaiseNoFile(cfg.NoFileLimit)
	if err != nil {
		return nil, err
	}
	log.Info("file limit", "nofile", lim, "max_conns", cfg.MaxConns)
	if room := int(lim) - 1024; room < cfg.MaxConns {
		// Accepting past the file limit would fail with EMFILE in a loop.
		log.Warn("file limit below max conns: capping", "nofile", lim, "max_conns", cfg.MaxConns, "cap", room)
		cfg.MaxConns = max(room, 1)
		s.cfg.MaxConns = cfg.MaxConns
	}
	for _, p := range cfg.TCPPorts {
		deferAccept := contains(cfg.DeferPorts, p)
		ln, err := s.listenTCP(p, deferAccept)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.lns = append(s.lns, ln)
		s.wg.Add(1)
		go s.acceptLoop(ln)
	}
	for _, p := range cfg.UDPPorts {
		pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", p))
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("listen udp %d: %w", p, err)
		}
		s.pcs = append(s.pcs, pc)
		s.wg.Add(1)
		go s.udpLoop(pc)
	}
	return s, nil
}

func (s *Server) listenTCP(port int, deferAccept bool) (net.Listener, error) {
	// net.Listen uses somaxconn as backlog; we want our own, and the defer
	// option set before listen(), so build the socket by hand.
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(fd)
		}
	}()
	opts := []struct{ level, opt, val int }{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1},
		{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0}, // dual stack: IPv4 arrives as v4-mapped
	}
	if deferAccept {
		opts = append(opts, struct{ level, opt, val int }{unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, s.cfg.DeferSeconds})
	}
	if s.cfg.ReusePort {
		opts = append(opts, struct{ level, opt, val int }{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.val); err != nil {
			return nil, fmt.Errorf("setsockopt %d/%d on :%d: %w", o.level, o.opt, port, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{Port: port}); err != nil {
		return nil, fmt.Errorf("bind :%d: %w", port, err)
	}
	if err := unix.Listen(fd, s.cfg.Backlog); err != nil {
		return nil, fmt.Errorf("listen :%d: %w", port, err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("tcp-listener-%d", port))
	ln, err := net.FileListener(f)
	f.Close() // FileListener dup'ed it
	if err != nil {
		return nil, fmt.Errorf("file listener :%d: %w", port, err)
	}
	ok = true
	return ln, nil
}

func (s *Server) acceptLoop(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			s.log.Warn("accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if s.live.Load() >= int64(s.cfg.MaxConns) {
			c.Close()
			continue
		}
		s.live.Add(1)
		go s.serve(c)
	}
}

// serve answers every request line with one response line and keeps the
// connection open until the client closes or it idles out.
func (s *Server) serve(c net.Conn) {
	defer s.live.Add(-1)
	defer c.Close()
	r := bufio.NewReaderSize(c, 512)
	for {
		_ = c.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		n := s.requests.Add(1)
		resp := fmt.Sprintf("OK %d %s\n", n, strings.TrimSpace(firstField(line)))
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte(resp)); err != nil {
			return
		}
	}
}

// udpLoop answers datagrams that look like a request ("GET ...") and stays
// silent on anything else, so a flood of garbage leaves unreplied entries.
func (s *Server) udpLoop(pc net.PacketConn) {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if n >= 4 && string(buf[:4]) == "GET " {
			s.requests.Add(1)
			_, _ = pc.WriteTo([]byte("OK udp\n"), addr)
		}
	}
}

// MaxConns returns the effective cap on accepted connections (after the
// file limit).
func (s *Server) MaxConns() int { return s.cfg.MaxConns }

// Live returns the number of accepted connections currently open.
func (s *Server) Live() int64 { return s.live.Load() }

// Requests returns the number of requests answered.
func (s *Server) Requests() int64 { return s.requests.Load() }

// Close stops the listeners; open connections end with the process.
func (s *Server) Close() {
	for _, ln := range s.lns {
		ln.Close()
	}
	for _, pc := range s.pcs {
		pc.Close()
	}
}

func contains(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func firstField(s string) string {
	f := strings.Fields(s)
	if len(f) == 0 {
		return ""
	}
	if len(f[0]) > 32 {
		return f[0][:32]
	}
	return f[0]
}
