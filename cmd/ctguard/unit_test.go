package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The systemd unit passes systemd-analyze verify (where the systemd package
// provides it; no systemd runs here, the check is offline). The binary's
// path is pointed at this test binary, which exists; everything else is the
// shipped file.
func TestUnitVerifies(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (package systemd): unit not verified")
	}
	unit := mustRead(t, "../../packaging/ctguard.service")
	if !strings.Contains(unit, "Type=notify") || !strings.Contains(unit, "WatchdogSec=") || !strings.Contains(unit, "ExecStartPre=/usr/local/sbin/ctguard config check") {
		t.Errorf("the unit lost Type=notify, its watchdog or its config check")
	}
	exe, _ := os.Executable()
	dir := t.TempDir()
	p := filepath.Join(dir, "ctguard.service")
	os.WriteFile(p, []byte(strings.ReplaceAll(unit, "/usr/local/sbin/ctguard", exe)), 0o644)
	out, err := exec.Command(sa, "verify", "--man=no", p).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
