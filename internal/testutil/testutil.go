// Package testutil holds helpers for ctguard's root-only integration tests:
// gating on privileges and creating throw-away network namespaces.
//
// It must never touch the root namespace's firewall, conntrack table or
// sysctls: everything it creates lives in namespaces it made itself, and is
// removed when the test ends.
package testutil

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

// InCI reports whether the tests run under CI (CI=true), where a root test
// that would skip must fail instead.
func InCI() bool { return os.Getenv("CI") == "true" }

// RequireRoot skips the test when not running as root with the tools it
// needs, and fails it instead under CI so that a broken setup cannot pass
// silently. tools are executables looked up in PATH (for example "nft").
func RequireRoot(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root (run as root, or with sudo)")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool+" in PATH")
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "integration test needs " + strings.Join(missing, ", ")
	if InCI() {
		t.Fatal(msg + " (CI=true: refusing to skip)")
	}
	t.Skip(msg)
}

var nsSeq atomic.Int64

// NS is a named network namespace created for one test.
type NS struct {
	Name string
}

// NewNS creates a fresh named network namespace (visible to `ip netns
// exec`), brings its loopback up, and removes it when the test ends.
func NewNS(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t, "ip")
	name := fmt.Sprintf("ctgt-%d-%d", os.Getpid(), nsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &NS{Name: name}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Run runs a command inside the namespace and returns its combined output.
func (ns *NS) Run(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	if err != nil {
		return buf.String(), fmt.Errorf("in netns %s: %s: %w: %s", ns.Name, strings.Join(args, " "), err, buf.String())
	}
	return buf.String(), nil
}

// Output runs a command inside the namespace and returns its standard output
// alone (tools such as conntrack print summaries on stderr).
func (ns *NS) Output(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("in netns %s: %s: %w: %s", ns.Name, strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// MustRun is Run that fails the test on error.
func (ns *NS) MustRun(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ns.Run(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Script runs a shell script inside the namespace (sh -ec).
func (ns *NS) Script(t testing.TB, script string) string {
	t.Helper()
	return ns.MustRun(t, "sh", "-ec", script)
}

// Do runs fn on a locked OS thread switched into the namespace, and switches
// the thread back before unlocking it. Sockets opened inside fn belong to the
// namespace; read /proc/thread-self/net, not /proc/net, from inside fn.
func (ns *NS) Do(t testing.TB, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		t.Fatalf("open netns %s: %v", ns.Name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		t.Fatalf("enter netns %s: %v", ns.Name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// The thread is in the wrong namespace: never let it go back to the pool.
			panic(fmt.Sprintf("restore netns: %v", err))
		}
	}()
	fn()
}

// Veth links two namespaces with a veth pair named a/b, assigning the given
// addresses (CIDR notation, IPv4 or IPv6; several per side allowed, separated
// by spaces) and bringing both ends up.
func Veth(t testing.TB, nsA *NS, ifA, addrsA string, nsB *NS, ifB, addrsB string) {
	t.Helper()
	tmp := fmt.Sprintf("ctgv%d", nsSeq.Add(1))
	nsA.MustRun(t, "ip", "link", "add", ifA, "type", "veth", "peer", "name", tmp)
	nsA.MustRun(t, "ip", "link", "set", tmp, "netns", nsB.Name)
	nsB.MustRun(t, "ip", "link", "set", tmp, "name", ifB)
	for _, side := range []struct {
		ns    *NS
		ifc   string
		addrs string
	}{{nsA, ifA, addrsA}, {nsB, ifB, addrsB}} {
		for _, a := range strings.Fields(side.addrs) {
			args := []string{"ip", "addr", "add", a, "dev", side.ifc}
			if strings.Contains(a, ":") {
				args = []string{"ip", "-6", "addr", "add", a, "dev", side.ifc, "nodad"}
			}
			side.ns.MustRun(t, args...)
		}
		side.ns.MustRun(t, "ip", "link", "set", side.ifc, "up")
	}
}
