// Package priority raises the CPU priority (lowers the nice value) of the
// running process.
//
// Why the daemon needs it: under attack the machine's CPUs are busy with
// the service answering the attacker and with the kernel's packet work,
// and a guard at the default priority gets a share of what is left. In the
// lab's keep-alive scenario (2 cores, 5,000 connections a second) a full
// scan of 217,000 entries took 0.7 s calm and 8 to 13 s under attack at
// nice 0, long enough for the table to fill before the first ban; at nice
// -15 the same scans took under 1 s and the first ban came 6 s sooner.
//
// On Linux the nice value belongs to each thread (setpriority with
// PRIO_PROCESS names one thread), and a new thread inherits its creator's
// value, so Raise sets every thread that exists at the call: the Go
// runtime's later threads are then created at the new value.
package priority

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Min and Max bound a nice value.
const (
	Min = -20
	Max = 19
)

// Result is what Raise did.
type Result struct {
	// Before is the nice value of the thread that called Raise, before.
	Before int
	// After is its value after (Before when nothing changed).
	After int
	// Threads is how many threads were changed.
	Threads int
}

// Raise sets the nice value of every thread of this process to nice where
// it is higher (a lower priority); it never lowers a priority someone set
// already (a unit's Nice=-15 stays). Changing it needs CAP_SYS_NICE: the
// error then wraps unix.EPERM or unix.EACCES, and the threads changed
// before it keep their new value.
func Raise(nice int) (Result, error) {
	if nice < Min || nice > Max {
		return Result{}, fmt.Errorf("nice value %d: want %d to %d", nice, Min, Max)
	}
	self := unix.Gettid()
	before, err := Get(self)
	if err != nil {
		return Result{}, err
	}
	res := Result{Before: before, After: before}
	tids, err := threads()
	if err != nil {
		return res, err
	}
	for _, tid := range tids {
		cur, err := Get(tid)
		if err != nil {
			if errors.Is(err, unix.ESRCH) {
				continue // the thread ended
			}
			return res, err
		}
		if cur <= nice {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil {
			if errors.Is(err, unix.ESRCH) {
				continue
			}
			return res, fmt.Errorf("set nice %d on thread %d: %w", nice, tid, err)
		}
		res.Threads++
		if tid == self {
			res.After = nice
		}
	}
	return res, nil
}

// Get returns the nice value of one thread (0: the caller).
func Get(tid int) (int, error) {
	// The raw system call returns 20 - nice (1 to 40), never negative.
	v, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return 0, fmt.Errorf("get nice of thread %d: %w", tid, err)
	}
	return 20 - v, nil
}

// threads lists the thread ids of this process.
func threads() ([]int, error) {
	dir := filepath.Join("/proc", strconv.Itoa(os.Getpid()), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list threads: %w", err)
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
