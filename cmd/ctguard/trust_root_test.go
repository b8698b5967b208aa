package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/testutil"
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

// Two daemons with different state directories in one namespace would take
// turns rebuilding the table: the second refuses to start, naming the first.
func TestRootOneDaemonPerNamespace(t *testing.T) {
	ns, _ := daemonLab(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	logA, a := startDaemon(t, ns, "--config", writeConfig(t, dirA, ""))
	waitFor(t, "the first daemon", 10*time.Second, func() bool { return strings.Contains(logA.String(), "ctguard running") })
	out, err := self(ns, "run", "--config", writeConfig(t, dirB, "")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another ctguard owns this network namespace's table") ||
		!strings.Contains(string(out), fmt.Sprintf("pid %d", a.Process.Pid)) {
		t.Fatalf("second daemon: %v\n%s", err, out)
	}
	// A command without a daemon of its own is refused too.
	out, err = self(ns, "ban", "198.51.100.99", "--state-dir", filepath.Join(dirB, "state"), "--socket", filepath.Join(dirB, "none.sock")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another ctguard owns") {
		t.Fatalf("in-process ban beside a daemon: %v\n%s", err, out)
	}
	if set := ns.MustRun(t, "nft", "list", "set", "inet", "ctguard", "ban4"); strings.Contains(set, "198.51.100.99") {
		t.Fatalf("the refused ban reached the kernel:\n%s", set)
	}
}

// The control socket is a file, and files are shared across network
// namespaces: a command in another namespace must not take the daemon's
// answers (or act through it) as its own.
func TestRootSocketOfAnotherNamespace(t *testing.T) {
	ns, _ := daemonLab(t)
	dir := t.TempDir()
	log, _ := startDaemon(t, ns, "--config", writeConfig(t, dir, ""))
	waitFor(t, "the daemon", 10*time.Second, func() bool { return strings.Contains(log.String(), "ctguard running") })
	sock := filepath.Join(dir, "ctguard.sock")
	other := testutil.NewNS(t)
	out, err := self(other, "why", "203.0.113.110", "--socket", sock).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another network namespace") {
		t.Fatalf("why from another namespace: %v\n%s", err, out)
	}
	// status reads this namespace's own (empty) table instead.
	out, err = self(other, "status", "--json", "--socket", sock).CombinedOutput()
	if err != nil || strings.Contains(string(out), `"daemon"`) {
		t.Fatalf("status from another namespace answered from the daemon: %v\n%s", err, out)
	}
	// The daemon's own namespace still gets the daemon.
	out, err = self(ns, "status", "--json", "--socket", sock).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"daemon"`) {
		t.Fatalf("status beside the daemon: %v\n%s", err, out)
	}
}

// run takes its socket like every other command: --socket, then
// $CTGUARD_SOCKET, then the config.
func TestRootRunSocketPrecedence(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, dir, "") // daemon.socket = dir/ctguard.sock
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"config", "", nil, "ctguard.sock"},
		{"environment over config", "env.sock", nil, "env.sock"},
		{"flag over environment", "env.sock", []string{"--socket", filepath.Join(dir, "flag.sock")}, "flag.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns, _ := daemonLab(t)
			cmd := self(ns, append([]string{"run", "--config", cfg}, tc.args...)...)
			if tc.env != "" {
				cmd.Env = append(cmd.Env, "CTGUARD_SOCKET="+filepath.Join(dir, tc.env))
			}
			var log syncBuf
			cmd.Stdout, cmd.Stderr = &log, &log
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
			want := filepath.Join(dir, tc.want)
			waitFor(t, "the socket "+want, 10*time.Second, func() bool {
				_, err := os.Stat(want)
				return err == nil
			})
			waitFor(t, "the daemon to answer on "+want, 10*time.Second, func() bool {
				out, err := self(ns, "status", "--json", "--socket", want).CombinedOutput()
				return err == nil && strings.Contains(string(out), `"daemon"`)
			})
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		})
	}
}
