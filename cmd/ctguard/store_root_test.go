package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A store damaged while the daemon was stopped: the next start moves it
// aside, says so, starts a new store and keeps the bans still in the
// kernel (adopted with their remaining time) instead of dropping them.
func TestRootRunDamagedStore(t *testing.T) {
	ns, _ := daemonLab(t)
	dir := t.TempDir()
	cfg := writeConfig(t, dir, "")
	log, cmd := startDaemon(t, ns, "--config", cfg)
	waitFor(t, "the bot's ban", 10*time.Second, func() bool { return strings.Contains(log.String(), "action=ban target=203.0.113.110/32") })
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()

	db := filepath.Join(dir, "state", "ctguard.db")
	st, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	// Zero every page, keeping the size (what a crashed disk or a bad copy
	// leaves behind).
	if err := os.WriteFile(db, make([]byte, st.Size()), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := self(ns, "list", "--state-dir", filepath.Join(dir, "state")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), db) || !strings.Contains(string(out), "damaged") {
		t.Errorf("list on the damaged store: %v\n%s", err, out)
	}

	log2, _ := startDaemon(t, ns, "--config", cfg)
	waitFor(t, "the restart to adopt the kernel's ban", 10*time.Second, func() bool {
		return strings.Contains(log2.String(), "msg=\"adopted bans")
	})
	if !strings.Contains(log2.String(), "level=ERROR msg=\"the store was damaged") {
		t.Errorf("no error about the damaged store:\n%s", log2.String())
	}
	moved, _ := filepath.Glob(db + ".damaged-*")
	if len(moved) != 1 {
		t.Errorf("damaged file kept as %v, want one ctguard.db.damaged-TIME", moved)
	}
	set := ns.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4")
	if !strings.Contains(set, "203.0.113.110") {
		t.Errorf("the ban was dropped at the restart:\n%s", set)
	}
	out, err = self(ns, "list", "--socket", filepath.Join(dir, "ctguard.sock")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "203.0.113.110") || !strings.Contains(string(out), "adopted") {
		t.Errorf("list after the restart: %v\n%s", err, out)
	}
}
