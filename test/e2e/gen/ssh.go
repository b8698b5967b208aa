package gen

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ctguard/ctguard/test/e2e/wire"
)

// OperatorConfig is the server's operator: a real ssh client that logs in
// at the start and keeps ONE session for the whole run, sending a command
// through it every Every and recording whether the answer came back within
// Timeout. If the session ends it logs in again (the commands in between
// fail).
type OperatorConfig struct {
	SSH      string     // client binary; default "ssh"
	Key      string     // private key file
	Bind     netip.Addr // local address of the session (ssh -b)
	Host     netip.Addr
	User     string        // default "root"
	Every    time.Duration // default 1 s
	Timeout  time.Duration // default 2 s
	Login    time.Duration // bound for a login; default 15 s
	Duration time.Duration
}

// sshArgs is the client's command line: no config files, no known hosts,
// key only, no terminal; the remote side echoes each line back, bounded by
// the run's length.
func (c *OperatorConfig) sshArgs() []string {
	secs := int(c.Duration.Seconds()) + 10
	remote := fmt.Sprintf(`exec timeout %d sh -c 'while read -r l; do echo "ok $l"; done'`, secs)
	return []string{"-F", "none", "-T", "-i", c.Key, "-b", c.Bind.String(),
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
		c.User + "@" + c.Host.String(), remote}
}

type opAnswer struct {
	seq int
	at  time.Time
}

type opSession struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *lineTail
	start  time.Time
}

type opExit struct {
	s   *opSession
	err error
}

// lineTail keeps the end of a process's stderr.
type lineTail struct {
	mu  sync.Mutex
	buf []byte
}

func (t *lineTail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > 1024 {
		t.buf = t.buf[len(t.buf)-1024:]
	}
	return len(b), nil
}

func (t *lineTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// startOpSession starts a client and its login round trip ("0"); answers
// and the client's exit arrive on the channels.
func startOpSession(ctx context.Context, cfg *OperatorConfig, answers chan<- opAnswer, exits chan<- opExit) (*opSession, error) {
	cmd := exec.CommandContext(ctx, cfg.SSH, cfg.sshArgs()...)
	cmd.WaitDelay = 2 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	s := &opSession{cmd: cmd, stdin: stdin, stderr: &lineTail{}, start: time.Now()}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("operator: start %s: %w", cfg.SSH, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 2 || f[0] != "ok" {
				continue
			}
			n, err := strconv.Atoi(f[1])
			if err != nil {
				continue
			}
			select {
			case answers <- opAnswer{seq: n, at: time.Now()}:
			case <-ctx.Done():
			}
		}
		err := cmd.Wait()
		if err == nil {
			err = errors.New("session ended")
		}
		select {
		case exits <- opExit{s, err}:
		case <-ctx.Done():
		}
	}()
	// The login round trip; if the write fails, the exit follows.
	_, _ = io.WriteString(stdin, "0\n")
	return s, nil
}

func (s *opSession) kill() {
	s.stdin.Close()
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
	}
}

// Operator runs the operator. Each command is one "op" record, and so is
// each login (Login set). The command clock starts with the first
// session, so a run whose operator never logs in has no commands at all,
// which the summary reports.
func Operator(ctx context.Context, cfg OperatorConfig, w *wire.Writer) error {
	if cfg.SSH == "" {
		cfg.SSH = "ssh"
	}
	if cfg.User == "" {
		cfg.User = "root"
	}
	if cfg.Every <= 0 {
		cfg.Every = time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Login <= 0 {
		cfg.Login = 15 * time.Second
	}
	if cfg.Key == "" || !cfg.Bind.IsValid() || !cfg.Host.IsValid() || cfg.Duration <= 0 {
		return errors.New("operator: need a key, a bind address, a host and a duration")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	c := &counters{name: "operator"}
	done := make(chan struct{})
	go c.report(ctx, w, done)
	answers := make(chan opAnswer, 64)
	exits := make(chan opExit, 4)
	record := func(op wire.Op, sent time.Time) {
		_ = w.Write(wire.Record{Kind: "op", T: sent.UnixMilli(), Op: &op})
	}
	fail := func(seq int, sent time.Time, why string) {
		c.failed.Add(1)
		record(wire.Op{Seq: seq, Err: why}, sent)
	}
	var sess, cand *opSession // logged in; logging in
	var nextLogin time.Time   // when to try the next login
	started := false
	pending := map[int]time.Time{}
	seq := 0
	tick := time.NewTicker(cfg.Every)
	defer tick.Stop()
	check := time.NewTicker(100 * time.Millisecond)
	defer check.Stop()
	loginFailed := func(why string) {
		record(wire.Op{Login: true, Err: why}, cand.start)
		cand.kill()
		cand = nil
		nextLogin = time.Now().Add(time.Second)
	}
	for {
		if sess == nil && cand == nil && !time.Now().Before(nextLogin) && ctx.Err() == nil {
			s, err := startOpSession(ctx, &cfg, answers, exits)
			if err != nil {
				record(wire.Op{Login: true, Err: err.Error()}, time.Now())
				nextLogin = time.Now().Add(time.Second)
			} else {
				cand = s
			}
		}
		select {
		case <-ctx.Done():
			for _, s := range []*opSession{sess, cand} {
				if s != nil {
					s.kill()
				}
			}
			close(done)
			return w.Write(wire.Record{Kind: "progress", Progress: c.snapshot(true)})
		case now := <-tick.C:
			if !started {
				continue
			}
			seq++
			if sess == nil {
				fail(seq, now, "no session")
				continue
			}
			if _, err := fmt.Fprintf(sess.stdin, "%d\n", seq); err != nil {
				fail(seq, now, "write: "+err.Error())
				continue
			}
			pending[seq] = now
		case now := <-check.C:
			for s, sent := range pending {
				if now.Sub(sent) > cfg.Timeout {
					fail(s, sent, "no answer within "+cfg.Timeout.String())
					delete(pending, s)
				}
			}
			if cand != nil && now.Sub(cand.start) > cfg.Login {
				loginFailed("no answer within " + cfg.Login.String() + ": " + cand.stderr.String())
			}
		case a := <-answers:
			if a.seq == 0 {
				if cand == nil {
					continue
				}
				sess, cand = cand, nil
				c.addLive(1)
				record(wire.Op{Login: true, OK: true, LatencyMS: ms(a.at.Sub(sess.start))}, sess.start)
				if !started {
					started = true
					tick.Reset(cfg.Every)
				}
				continue
			}
			sent, ok := pending[a.seq]
			if !ok {
				continue // already failed as late
			}
			delete(pending, a.seq)
			if lat := a.at.Sub(sent); lat > cfg.Timeout {
				fail(a.seq, sent, "answer after "+lat.String())
				continue
			}
			c.sent.Add(1)
			record(wire.Op{Seq: a.seq, OK: true, LatencyMS: ms(a.at.Sub(sent))}, sent)
		case e := <-exits:
			switch e.s {
			case cand:
				loginFailed(fmt.Sprintf("%v: %s", e.err, e.s.stderr))
			case sess:
				for s, sent := range pending {
					fail(s, sent, "session ended")
					delete(pending, s)
				}
				_ = w.Write(wire.Record{Kind: "log", Msg: fmt.Sprintf("operator: session ended: %v: %s", e.err, e.s.stderr)})
				sess = nil
				c.addLive(-1)
				nextLogin = time.Now().Add(time.Second)
			}
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// PreauthConfig holds one TCP connection to the victim's sshd open without
// ever authenticating: it sends an SSH version banner and then nothing,
// reconnecting when sshd closes it (LoginGraceTime).
type PreauthConfig struct {
	Src      netip.Addr
	Dst      netip.AddrPort
	Banner   bool
	Duration time.Duration
}

// Preauth runs the pre-auth holder.
func Preauth(ctx context.Context, cfg PreauthConfig, w *wire.Writer) error {
	if !cfg.Src.IsValid() || !cfg.Dst.IsValid() || cfg.Duration <= 0 {
		return errors.New("preauth: need a source, a destination and a duration")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	c := &counters{name: "preauth"}
	done := make(chan struct{})
	go c.report(ctx, w, done)
	buf := make([]byte, 4096)
	for ctx.Err() == nil {
		conn, err := dialer(cfg.Src, 3*time.Second).DialContext(ctx, network(cfg.Src, "tcp"), cfg.Dst.String())
		if err != nil {
			if ctx.Err() == nil {
				c.failed.Add(1)
				sleepCtx(ctx, time.Second)
			}
			continue
		}
		c.sent.Add(1)
		c.addLive(1)
		if cfg.Banner {
			_, _ = io.WriteString(conn, "SSH-2.0-OpenSSH_9.2p1 ctglab-preauth\r\n")
		}
		stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
		for {
			if _, err := conn.Read(buf); err != nil {
				break
			}
		}
		stop()
		c.addLive(-1)
		_ = conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
		if ctx.Err() == nil {
			_ = w.Write(wire.Record{Kind: "log", Msg: "preauth: sshd closed the connection; reconnecting"})
			sleepCtx(ctx, time.Second)
		}
	}
	close(done)
	return w.Write(wire.Record{Kind: "progress", Progress: c.snapshot(true)})
}
