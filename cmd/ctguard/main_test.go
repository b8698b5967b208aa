package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"testing"
)

// TestMain lets root tests run this very test binary as the ctguard
// command inside a network namespace (CTGUARD_TEST_MAIN=1), so the
// daemon's every thread lives there, as under `ip netns exec`.
func TestMain(m *testing.M) {
	if os.Getenv("CTGUARD_TEST_MAIN") == "1" {
		// As main: SIGTERM stops the command cleanly.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := run(ctx, &env{stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:])
		stop()
		os.Exit(code)
	}
	// Never talk to a daemon that may run on this machine.
	os.Setenv("CTGUARD_SOCKET", "/nonexistent/ctguard-test.sock")
	os.Exit(m.Run())
}
