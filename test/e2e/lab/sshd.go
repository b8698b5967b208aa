package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ctguard/ctguard/test/e2e/topo"
)

// SSHDBin is the OpenSSH server the ssh-trick scenario runs in the victim
// (Debian: openssh-server; its service must not run in the root namespace).
const SSHDBin = "/usr/sbin/sshd"

// SSHDAvailable says why the lab cannot run a real sshd here, or nil.
func SSHDAvailable() error {
	if _, err := os.Stat(SSHDBin); err != nil {
		return fmt.Errorf("%w: %s: %v (Debian: apt-get install openssh-server)", ErrUnavailable, SSHDBin, err)
	}
	for _, t := range []string{"ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrUnavailable, t, err)
		}
	}
	return nil
}

// sshdConfig is the run's sshd configuration: everything in dir, key login
// for root with the run's own test key only.
func sshdConfig(dir string) string {
	return fmt.Sprintf(`# ctglab: the victim's sshd for one run
Port 22
ListenAddress 0.0.0.0
ListenAddress ::
HostKey %[1]s/host_ed25519
PidFile %[1]s/sshd.pid
AuthorizedKeysFile %[1]s/id_ed25519.pub
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
LoginGraceTime 120
PrintMotd no
PrintLastLog no
UseDNS no
`, dir)
}

// prepareSSHD generates the host key, the operator's key and the config
// into dir, and makes sure sshd's privilege-separation directory exists.
func prepareSSHD(ctx context.Context, dir string) (string, error) {
	if err := SSHDAvailable(); err != nil {
		return "", err
	}
	for _, k := range []string{"host_ed25519", "id_ed25519"} {
		out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ctglab-"+k, "-f", filepath.Join(dir, k)).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("ssh-keygen %s: %w: %s", k, err, out)
		}
	}
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return "", fmt.Errorf("sshd privilege separation directory: %w", err)
	}
	cfg := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfg, []byte(sshdConfig(dir)), 0o600); err != nil {
		return "", err
	}
	if out, err := exec.CommandContext(ctx, SSHDBin, "-t", "-f", cfg).CombinedOutput(); err != nil {
		return "", fmt.Errorf("sshd -t: %w: %s", err, out)
	}
	return cfg, nil
}

// startSSHD runs sshd in the victim and waits until it listens on 22. Its
// descendants (one per connection, each in its own session) are killed by
// pid when the run stops: a session whose client vanished would otherwise
// outlive the run.
func (r *run) startSSHD(ctx context.Context, cfg string) error {
	h, err := r.startNative(ctx, Proc{Name: "sshd", Role: topo.Victim, Args: []string{"-D", "-e", "-f", cfg}}, SSHDBin, nil, nil)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.trees = append(r.trees, h.cmd.Process.Pid)
	r.mu.Unlock()
	return r.waitListen(ctx, h, 22)
}

// waitListen waits until a native process listens on TCP port in the
// victim (10 s at most), or says why not.
func (r *run) waitListen(ctx context.Context, h *proc, port int) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := r.topo.Output(ctx, topo.Victim, "ss", "-Htln", "sport = :"+strconv.Itoa(port))
		if err == nil && strings.TrimSpace(out) != "" {
			return nil
		}
		select {
		case err := <-h.done:
			h.done <- err
			return fmt.Errorf("%s exited before it listened: %v: %s", h.p.Name, err, h.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %d after 10 s: %s", h.p.Name, port, h.stderr.String())
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// killTrees kills the descendants of the recorded processes (by pid) and
// forgets them, so a later call cannot hit a reused pid.
func (r *run) killTrees() {
	r.mu.Lock()
	roots := r.trees
	r.trees = nil
	r.mu.Unlock()
	for _, root := range roots {
		for _, pid := range descendants(root) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// descendants lists the processes below pid (children first-level first).
func descendants(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, err := parentOf(n)
		if err != nil {
			continue
		}
		children[ppid] = append(children[ppid], n)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// parentOf reads the parent pid from /proc/PID/stat ("pid (comm) state ppid ...").
func parentOf(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("stat: no comm")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, errors.New("stat: short")
	}
	return strconv.Atoi(f[1])
}
