package enforce

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/store"
)

// A state directory with no space left: the ban still lands and purges
// (the error says it is not recorded), unban lifts it from the kernel, and
// a start on the same store adopts what it never recorded.
func TestRootFullStateDirectory(t *testing.T) {
	l := newLab(t)
	l.listen(8080)
	l.requireTracking("192.0.2.3", 8080)
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	st, err := store.Open(dir, store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	eng := New(Config{Store: st, Firewall: l.fw, Purger: l.ct, Allow: l.eng.allowC})
	ctx := context.Background()
	if _, err := eng.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Fill the file system.
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()

	// Evidence larger than the whole file system: the record cannot fit,
	// whatever free pages the database still has.
	huge := strings.Repeat("x", 300<<10)
	r, err := eng.Ban(ctx, BanRequest{Prefix: pfx("192.0.2.3/32"), TTL: time.Hour, Reason: "test", Evidence: huge})
	if err == nil || !strings.Contains(err.Error(), "not recorded") {
		t.Fatalf("ban on a full disk: %v (want an error saying it is not recorded)", err)
	}
	if r.Ban.Purged == 0 || r.Ban.Remaining != 0 {
		t.Errorf("the ban did not purge: %+v", r.Ban)
	}
	if set := l.vic.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); !strings.Contains(set, "192.0.2.3") {
		t.Fatalf("the ban is not in the kernel:\n%s", set)
	}
	if c := l.dial("192.0.2.3", 8080, 2); len(c) != 0 {
		t.Fatal("the banned source still connects")
	}

	// unban finds it in the kernel although the store does not know it.
	b, err := eng.Unban(ctx, pfx("192.0.2.3/32"))
	if err != nil || b.Reason != "not recorded" {
		t.Fatalf("unban of the unrecorded ban: %+v %v", b, err)
	}
	if set := l.vic.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); strings.Contains(set, "192.0.2.3") {
		t.Fatalf("unban left it in the kernel:\n%s", set)
	}
	l.requireTracking("192.0.2.3", 8080)

	// Banned again on the full disk, then space comes back: the next cycle
	// records it (and a restart would adopt it).
	if _, err := eng.Ban(ctx, BanRequest{Prefix: pfx("192.0.2.4/32"), TTL: time.Hour, Reason: "test", Evidence: huge}); err == nil {
		t.Fatal("the second ban on a full disk reported no error")
	}
	os.Remove(filepath.Join(dir, "filler"))
	if n, err := eng.RecordUnrecorded(ctx); err != nil || n != 1 {
		t.Fatalf("recording the kernel-only ban: %d %v, want 1", n, err)
	}
	if n, err := eng.RecordUnrecorded(ctx); err != nil || n != 0 {
		t.Fatalf("a second repair: %d %v, want nothing to do", n, err)
	}
	if b, err := st.GetBan(pfx("192.0.2.4/32")); err != nil || b.Reason != AdoptedReason {
		t.Fatalf("adopted record: %+v %v", b, err)
	}
}
