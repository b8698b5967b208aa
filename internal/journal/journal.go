// Package journal gives log lines their syslog priority when stderr is
// systemd's journal: it prefixes each line with "<3>" (error), "<4>"
// (warning), "<6>" (info) or "<7>" (debug), as sd-daemon(3) describes, so
// that `journalctl -p warning` and the journal's colours work. Anywhere
// else (a terminal, a file, a pipe) lines are left as they are.
package journal

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// The sd-daemon(3) prefixes used here.
const (
	Err     = "<3>"
	Warning = "<4>"
	Info    = "<6>"
	Debug   = "<7>"
)

// Prefix is the priority prefix of a record at level l.
func Prefix(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return Err
	case l >= slog.LevelWarn:
		return Warning
	case l >= slog.LevelInfo:
		return Info
	}
	return Debug
}

// IsJournal reports whether f is the stream $JOURNAL_STREAM names
// ("DEVICE:INODE", what systemd sets when it connects stdout or stderr to
// the journal). A redirected stderr keeps the variable but is another
// file, so the device and inode must match.
func IsJournal(f *os.File) (bool, error) {
	v := os.Getenv("JOURNAL_STREAM")
	if v == "" || f == nil {
		return false, nil
	}
	ds, is, ok := strings.Cut(v, ":")
	dev, err1 := strconv.ParseUint(ds, 10, 64)
	ino, err2 := strconv.ParseUint(is, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return false, fmt.Errorf("JOURNAL_STREAM=%q: want DEVICE:INODE", v)
	}
	fi, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("journal stream: stat %s: %w", f.Name(), err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false, nil
	}
	return uint64(st.Dev) == dev && uint64(st.Ino) == ino, nil
}

// Wrap returns newHandler(w), or, when w is the journal's stream (see
// IsJournal), a handler built the same way whose every line starts with
// its record's priority. newHandler is called once per priority.
func Wrap(w io.Writer, newHandler func(io.Writer) slog.Handler) slog.Handler {
	if f, ok := w.(*os.File); ok {
		if yes, _ := IsJournal(f); yes {
			return NewHandler(w, newHandler)
		}
	}
	return newHandler(w)
}

// levels are the priorities a Handler writes, most severe first.
var levels = [...]slog.Level{slog.LevelError, slog.LevelWarn, slog.LevelInfo, slog.LevelDebug}

// Handler prefixes each line its inner handlers write with the record's
// priority. It holds one inner handler per priority, each writing through
// its own prefix to the one shared writer.
type Handler struct {
	hs [len(levels)]slog.Handler
}

// NewHandler always prefixes (Wrap decides whether to); newHandler builds
// the inner handler (text, JSON) on the writer it is given.
func NewHandler(w io.Writer, newHandler func(io.Writer) slog.Handler) *Handler {
	mu := new(sync.Mutex)
	h := &Handler{}
	for i, l := range levels {
		h.hs[i] = newHandler(&prefixWriter{mu: mu, w: w, prefix: []byte(Prefix(l))})
	}
	return h
}

// pick is the inner handler for level l.
func (h *Handler) pick(l slog.Level) slog.Handler {
	for i, hl := range levels {
		if l >= hl {
			return h.hs[i]
		}
	}
	return h.hs[len(levels)-1]
}

// Enabled asks the inner handlers (they share their options).
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.pick(l).Enabled(ctx, l) }

// Handle writes r through the inner handler of its priority.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	return h.pick(r.Level).Handle(ctx, r)
}

// WithAttrs adds attrs to every priority's handler.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &Handler{}
	for i, in := range h.hs {
		n.hs[i] = in.WithAttrs(attrs)
	}
	return n
}

// WithGroup opens the group in every priority's handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	n := &Handler{}
	for i, in := range h.hs {
		n.hs[i] = in.WithGroup(name)
	}
	return n
}

// prefixWriter starts every line of each write with prefix. slog's
// handlers write one record per call; the shared mutex keeps records
// whole when handlers of several priorities write at once.
type prefixWriter struct {
	mu     *sync.Mutex
	w      io.Writer
	prefix []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	buf := make([]byte, 0, len(b)+len(p.prefix)+8)
	buf = append(buf, p.prefix...)
	body := b[:len(b)-1]
	// A line break inside a record (a handler that does not escape them)
	// starts a journal entry of its own: give it the priority too.
	for {
		i := bytes.IndexByte(body, '\n')
		if i < 0 {
			break
		}
		buf = append(buf, body[:i+1]...)
		buf = append(buf, p.prefix...)
		body = body[i+1:]
	}
	buf = append(buf, body...)
	buf = append(buf, b[len(b)-1])
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.w.Write(buf); err != nil {
		return 0, err
	}
	return len(b), nil
}

var _ slog.Handler = (*Handler)(nil)
