package journal

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func text(w io.Writer) slog.Handler {
	return slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	})
}

// devIno is a file's JOURNAL_STREAM value.
func devIno(t *testing.T, f *os.File) string {
	t.Helper()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func tempFile(t *testing.T, name string) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func readBack(t *testing.T, f *os.File) string {
	t.Helper()
	b, err := os.ReadFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func logAll(l *slog.Logger) {
	l.Error("store failed", "err", "disk full")
	l.Warn("pressure is high")
	l.Info("decision", "target", "203.0.113.110/32")
	l.Debug("cycle", "entries", 267)
	l.Log(context.Background(), slog.LevelError+4, "worse than error")
	l.Log(context.Background(), slog.LevelDebug-4, "filtered out: under the handler's level")
}

// Under systemd (JOURNAL_STREAM names this very file) every line carries
// its priority.
func TestPrefixesWhenStderrIsTheJournal(t *testing.T) {
	f := tempFile(t, "journal")
	t.Setenv("JOURNAL_STREAM", devIno(t, f))
	if ok, err := IsJournal(f); !ok || err != nil {
		t.Fatalf("IsJournal = %v, %v", ok, err)
	}
	logAll(slog.New(Wrap(f, text)))
	want := `<3>level=ERROR msg="store failed" err="disk full"
<4>level=WARN msg="pressure is high"
<6>level=INFO msg=decision target=203.0.113.110/32
<7>level=DEBUG msg=cycle entries=267
<3>level=ERROR+4 msg="worse than error"
`
	if got := readBack(t, f); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

// A terminal, a redirect to a file or a buffer: nothing is added, even when
// JOURNAL_STREAM was inherited from a unit but stderr was redirected.
func TestNoPrefixElsewhere(t *testing.T) {
	journal := tempFile(t, "journal")
	other := tempFile(t, "redirected")
	for _, c := range []struct {
		name, env string
	}{
		{"unset", ""},
		{"another file", devIno(t, journal)},
		{"malformed", "journal"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("JOURNAL_STREAM", c.env)
			if ok, _ := IsJournal(other); ok {
				t.Fatal("IsJournal on another file")
			}
			if err := other.Truncate(0); err != nil {
				t.Fatal(err)
			}
			if _, err := other.Seek(0, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			slog.New(Wrap(other, text)).Warn("pressure is high")
			if got := readBack(t, other); got != "level=WARN msg=\"pressure is high\"\n" {
				t.Fatalf("got %q", got)
			}
		})
	}
	var buf bytes.Buffer
	t.Setenv("JOURNAL_STREAM", devIno(t, journal))
	slog.New(Wrap(&buf, text)).Error("x")
	if strings.HasPrefix(buf.String(), "<") {
		t.Fatalf("a buffer got a prefix: %q", buf.String())
	}
}

func TestMalformedJournalStream(t *testing.T) {
	f := tempFile(t, "x")
	for _, v := range []string{"journal", "1:", ":2", "a:b"} {
		t.Setenv("JOURNAL_STREAM", v)
		if ok, err := IsJournal(f); ok || err == nil || !strings.Contains(err.Error(), "JOURNAL_STREAM") {
			t.Errorf("JOURNAL_STREAM=%q: %v, %v", v, ok, err)
		}
	}
}

// Attributes and groups reach every priority; the JSON handler works the
// same; the level filter is the inner handler's.
func TestHandlerAttrsGroupsAndLevel(t *testing.T) {
	var buf bytes.Buffer
	h := NewHandler(&buf, func(w io.Writer) slog.Handler {
		return slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}})
	})
	l := slog.New(h).With("daemon", "ctguard").WithGroup("scan")
	l.Debug("hidden")
	l.Info("cycle", "entries", 3)
	l.Error("failed")
	want := `<6>{"level":"INFO","msg":"cycle","daemon":"ctguard","scan":{"entries":3}}
<3>{"level":"ERROR","msg":"failed","daemon":"ctguard"}
`
	if buf.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

// A record with a raw line break gets the prefix on each line: journald
// makes an entry of every line.
func TestPrefixEveryLine(t *testing.T) {
	var buf bytes.Buffer
	w := &prefixWriter{mu: new(sync.Mutex), w: &buf, prefix: []byte(Warning)}
	n, err := w.Write([]byte("one\ntwo\n"))
	if err != nil || n != 8 {
		t.Fatalf("wrote %d, %v", n, err)
	}
	if buf.String() != "<4>one\n<4>two\n" {
		t.Fatalf("got %q", buf.String())
	}
}

// Records of several priorities written at once stay whole lines.
func TestConcurrentRecordsStayWhole(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(NewHandler(&buf, text))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 100 {
				if i%2 == 0 {
					l.Error("e", "i", i, "j", j)
				} else {
					l.Info("i", "i", i, "j", j)
				}
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 800 {
		t.Fatalf("%d lines", len(lines))
	}
	for _, ln := range lines {
		if !strings.HasPrefix(ln, "<3>level=ERROR msg=e ") && !strings.HasPrefix(ln, "<6>level=INFO msg=i ") {
			t.Fatalf("mangled line %q", ln)
		}
	}
}
