// Package sdnotify tells systemd about the daemon's life over the sd_notify
// protocol (sd_notify(3)): one datagram of NAME=VALUE lines sent to the
// unix socket named by $NOTIFY_SOCKET, "READY=1" once started, "STATUS=..."
// for `systemctl status`, "WATCHDOG=1" as the keep-alive ping and
// "STOPPING=1" at shutdown.
//
// Outside systemd (no $NOTIFY_SOCKET) every call does nothing, and so do
// the calls on a nil *Notifier.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// sendTimeout bounds one send: a service manager that stopped reading
// must not stall the daemon's loop.
const sendTimeout = 2 * time.Second

// Notifier sends notifications to the service manager.
type Notifier struct {
	addr     *net.UnixAddr // nil: not started by a service manager
	watchdog time.Duration // how often to send WATCHDOG=1; 0: no watchdog
}

// FromEnv reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID as systemd
// sets them. Without $NOTIFY_SOCKET it returns a notifier that does
// nothing. A bad watchdog variable is an error, returned with a notifier
// that still sends but has no watchdog.
func FromEnv() (*Notifier, error) {
	return New(os.Getenv("NOTIFY_SOCKET"), os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid())
}

// New is FromEnv with the variables' values given: socket is
// $NOTIFY_SOCKET (a path, or an abstract name starting with '@'), usec and
// wpid $WATCHDOG_USEC and $WATCHDOG_PID, pid this process's id.
func New(socket, usec, wpid string, pid int) (*Notifier, error) {
	n := &Notifier{}
	if socket == "" {
		return n, nil
	}
	if socket[0] != '/' && socket[0] != '@' {
		return n, fmt.Errorf("NOTIFY_SOCKET=%q: want an absolute path or an abstract socket name (@name)", socket)
	}
	// Go's net package turns a leading '@' into the NUL byte of Linux's
	// abstract socket namespace.
	n.addr = &net.UnixAddr{Name: socket, Net: "unixgram"}
	iv, err := watchdogInterval(usec, wpid, pid)
	if err != nil {
		return n, err
	}
	n.watchdog = iv
	return n, nil
}

// watchdogInterval is half the watchdog timeout, as sd_watchdog_enabled(3)
// advises, or 0 when there is none or it is meant for another process.
func watchdogInterval(usec, wpid string, pid int) (time.Duration, error) {
	if usec == "" {
		return 0, nil
	}
	if wpid != "" {
		p, err := strconv.Atoi(wpid)
		if err != nil || p <= 0 {
			return 0, fmt.Errorf("WATCHDOG_PID=%q: not a process id", wpid)
		}
		if p != pid {
			return 0, nil // the watchdog is another process's
		}
	}
	us, err := strconv.ParseUint(usec, 10, 64)
	if err != nil || us == 0 || us > uint64(1<<63-1)/uint64(time.Microsecond) {
		return 0, fmt.Errorf("WATCHDOG_USEC=%q: not a positive number of microseconds", usec)
	}
	return time.Duration(us) * time.Microsecond / 2, nil
}

// Enabled reports whether a service manager listens.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// WatchdogInterval is how often Watchdog must be called: half the
// service's WatchdogSec=, or 0 when the watchdog is off.
func (n *Notifier) WatchdogInterval() time.Duration {
	if !n.Enabled() {
		return 0
	}
	return n.watchdog
}

// Ready says that start-up is complete ("READY=1").
func (n *Notifier) Ready() error { return n.Send("READY=1") }

// Stopping says that shutdown began ("STOPPING=1").
func (n *Notifier) Stopping() error { return n.Send("STOPPING=1") }

// Watchdog is the keep-alive ping ("WATCHDOG=1").
func (n *Notifier) Watchdog() error { return n.Send("WATCHDOG=1") }

// Status sets the line `systemctl status` shows ("STATUS=..."); line
// breaks become spaces, since each line of a notification is an
// assignment of its own.
func (n *Notifier) Status(s string) error {
	return n.Send("STATUS=" + strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s))
}

// Send sends one notification: newline-separated NAME=VALUE assignments.
// It does nothing when no service manager listens.
func (n *Notifier) Send(state string) error {
	if !n.Enabled() {
		return nil
	}
	if state == "" {
		return errors.New("sd_notify: empty notification")
	}
	// A socket per notification, as sd_notify does: it survives the
	// manager re-creating its socket (daemon-reexec).
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify %s: %w", firstLine(state), err)
	}
	defer c.Close()
	if err := c.SetWriteDeadline(time.Now().Add(sendTimeout)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", firstLine(state), err)
	}
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %s: %w", firstLine(state), err)
	}
	return nil
}

// firstLine names a notification in errors.
func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return s
}
