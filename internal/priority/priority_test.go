package priority

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRaiseRefusesOutOfRange(t *testing.T) {
	for _, n := range []int{Min - 1, Max + 1, 100} {
		if _, err := Raise(n); err == nil {
			t.Errorf("Raise(%d): no error", n)
		}
	}
}

func TestGetMatchesProc(t *testing.T) {
	n, err := Get(0)
	if err != nil {
		t.Fatal(err)
	}
	if got := procNice(t, unix.Gettid()); got != n {
		t.Errorf("Get(0) = %d, /proc says %d", n, got)
	}
}

// Raising to a value at or above the current one changes nothing.
func TestRaiseNeverLowers(t *testing.T) {
	before, err := Get(0)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Raise(Max)
	if err != nil {
		t.Fatal(err)
	}
	if res.Threads != 0 || res.Before != before || res.After != before {
		t.Errorf("Raise(%d) from %d: %+v, want nothing changed", Max, before, res)
	}
}

// The child runs under `nice -n 10`: as root Raise(-5) must put every
// thread, and the threads the runtime starts afterwards, at -5; without
// CAP_SYS_NICE it must fail with a permission error.
func TestRaiseEveryThread(t *testing.T) {
	if os.Getenv("PRIORITY_CHILD") == "1" {
		child(t)
		return
	}
	cmd := exec.Command("nice", "-n", "10", os.Args[0], "-test.run=^TestRaiseEveryThread$", "-test.v")
	cmd.Env = append(os.Environ(), "PRIORITY_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "child ok") {
		t.Fatalf("the child did not run its checks:\n%s", out)
	}
	t.Logf("%s", out)
}

func child(t *testing.T) {
	if n, _ := Get(0); n != 10 {
		t.Fatalf("child starts at nice %d, want 10", n)
	}
	res, err := Raise(-5)
	if os.Geteuid() != 0 {
		if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES) {
			t.Fatalf("Raise(-5) without root: %+v, %v; want a permission error", res, err)
		}
		t.Log("child ok (not root: permission refused as expected)")
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Before != 10 || res.After != -5 || res.Threads == 0 {
		t.Fatalf("Raise(-5) = %+v, want 10 -> -5", res)
	}
	// Force new OS threads: goroutines that lock theirs and block.
	var wg, started sync.WaitGroup
	release := make(chan struct{})
	for range 8 {
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			started.Done()
			<-release
		}()
	}
	started.Wait()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) < 9 {
		t.Fatalf("only %d threads: the locked goroutines did not get their own", len(ents))
	}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		if n := procNice(t, tid); n != -5 {
			t.Errorf("thread %d at nice %d, want -5", tid, n)
		}
	}
	close(release)
	wg.Wait()
	t.Logf("child ok (%d threads at -5)", len(ents))
}

// procNice reads a thread's nice value from its stat file (field 19).
func procNice(t *testing.T, tid int) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc/self/task", strconv.Itoa(tid), "stat"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	n, err := strconv.Atoi(f[16])
	if err != nil {
		t.Fatalf("stat of %d: %v", tid, err)
	}
	return n
}
