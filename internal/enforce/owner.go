package enforce

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

// ErrTableOwned means another ctguard process already owns this network
// namespace's table. Two of them (say, with different state directories)
// would take turns rebuilding it, each dropping the other's bans.
var ErrTableOwned = errors.New("another ctguard owns this network namespace's table")

// tableLockName is an abstract unix socket: abstract names live in the
// network namespace, vanish with the process that holds them (a crash
// leaves no stale lock), and touch no file.
const tableLockName = "@ctguard/table-owner"

// TableLock is the claim of one process on its network namespace's table.
type TableLock struct{ l *net.UnixListener }

// LockTable claims the table of the calling thread's network namespace.
// When another process holds it, the error names its pid.
func LockTable() (*TableLock, error) {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tableLockName, Net: "unix"})
	if err == nil {
		return &TableLock{l: l}, nil
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("claim the table of this network namespace: %w", err)
	}
	if pid := lockHolder(); pid > 0 {
		return nil, fmt.Errorf("%w (pid %d)", ErrTableOwned, pid)
	}
	return nil, ErrTableOwned
}

// lockHolder asks the kernel for the pid behind the lock (SO_PEERCRED of a
// connection to it); 0 when unknown.
func lockHolder() int {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: tableLockName, Net: "unix"})
	if err != nil {
		return 0
	}
	defer c.Close()
	return PeerPID(c)
}

// PeerPID is the pid of the process at the other end of a unix socket
// connection (SO_PEERCRED), 0 when unknown.
func PeerPID(c *net.UnixConn) int {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	pid := 0
	_ = raw.Control(func(fd uintptr) {
		if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

// Release gives the claim up.
func (t *TableLock) Release() error {
	if t == nil || t.l == nil {
		return nil
	}
	return t.l.Close()
}
