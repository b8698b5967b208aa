package main

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ctguard/ctguard/internal/daemon"
	"github.com/ctguard/ctguard/internal/sockets"
)

// TestStatusShowsFullAcceptQueue: while a listener's accept queue is full,
// status says so, names the listener and its queue, and whether it has
// drained since.
func TestStatusShowsFullAcceptQueue(t *testing.T) {
	web := sockets.Listener{Local: netip.MustParseAddrPort("[::]:80"), Queue: 512, Backlog: 511}
	r := &statusReport{Max: 262144, Daemon: &daemonStatus{LastCycle: time.Now(),
		Service: &daemon.ServiceState{Full: []sockets.Listener{web}, Since: time.Now().Add(-3 * time.Second)}}}
	var b bytes.Buffer
	printStatus(&b, r)
	out := b.String()
	for _, want := range []string{"SERVICE    accept queue full", "full now", "[::]:80  512 of 511 queued"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	r.Daemon.Service.Drained = time.Now().Add(-2 * time.Second)
	b.Reset()
	printStatus(&b, r)
	if !strings.Contains(b.String(), "drained 2s ago") {
		t.Errorf("status does not say the queue drained:\n%s", b.String())
	}
	r.Daemon.Service = nil
	b.Reset()
	printStatus(&b, r)
	if strings.Contains(b.String(), "SERVICE") {
		t.Errorf("status shows a service episode when there is none:\n%s", b.String())
	}
}
