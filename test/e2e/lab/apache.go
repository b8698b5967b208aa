package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/ctguard/ctguard/test/e2e/topo"
)

// Apache is the web server the Apache variants of the scenarios run in the
// victim: Debian's apache2 package, with the MPM and request-timeout
// settings Debian ships (mods-available/mpm_event.conf and reqtimeout.conf,
// read from the package, not copied), on port ApachePort. Its service
// must not run in the root namespace; the lab never starts or changes it.
const (
	ApacheBin     = "/usr/sbin/apache2"
	ApacheModules = "/usr/lib/apache2/modules"
	ApacheConfDir = "/etc/apache2"
	ApachePort    = 80
)

// ApacheAvailable says why the lab cannot run Apache here, or nil.
func ApacheAvailable() error {
	for _, f := range []string{ApacheBin, filepath.Join(ApacheModules, "mod_mpm_event.so"),
		filepath.Join(ApacheConfDir, "mods-available", "mpm_event.conf"), filepath.Join(ApacheConfDir, "mods-available", "reqtimeout.conf")} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%w: %s: %v (Debian: apt-get install apache2)", ErrUnavailable, f, err)
		}
	}
	return nil
}

// apacheConfig is the run's Apache configuration: Debian's event MPM and
// request timeouts, one static page, everything the server writes in dir,
// no access log (it would cost the victim CPU the lab server does not pay).
func apacheConfig(dir string) string {
	return fmt.Sprintf(`# ctglab: the victim's Apache for one run
ServerRoot %[2]s
ServerName ctglab-victim
PidFile %[1]s/apache2.pid
DefaultRuntimeDir %[1]s
Mutex file:%[1]s default
ErrorLog %[1]s/error.log
LogLevel warn
User www-data
Group www-data

LoadModule mpm_event_module %[3]s/mod_mpm_event.so
LoadModule authz_core_module %[3]s/mod_authz_core.so
LoadModule reqtimeout_module %[3]s/mod_reqtimeout.so
LoadModule dir_module %[3]s/mod_dir.so
# Debian's defaults: 150 request workers (MaxRequestWorkers), and a
# request header must arrive within 20-40 s.
Include %[2]s/mods-available/mpm_event.conf
Include %[2]s/mods-available/reqtimeout.conf

Listen 0.0.0.0:%[4]d
Listen [::]:%[4]d
DocumentRoot %[1]s/www
DirectoryIndex index.html
<Directory />
	Require all denied
</Directory>
<Directory %[1]s/www>
	Require all granted
</Directory>
`, dir, ApacheConfDir, ApacheModules, ApachePort)
}

// prepareApache writes the config and the page into dir (readable by
// www-data, which Apache's children run as) and checks the config.
func prepareApache(ctx context.Context, dir string) (string, error) {
	if err := ApacheAvailable(); err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	www := filepath.Join(dir, "www")
	if err := os.Mkdir(www, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("<!doctype html><title>ctglab</title><p>ok</p>\n"), 0o644); err != nil {
		return "", err
	}
	cfg := filepath.Join(dir, "apache2.conf")
	if err := os.WriteFile(cfg, []byte(apacheConfig(dir)), 0o644); err != nil {
		return "", err
	}
	if out, err := exec.CommandContext(ctx, ApacheBin, "-t", "-f", cfg).CombinedOutput(); err != nil {
		return "", fmt.Errorf("apache2 -t: %w: %s", err, out)
	}
	return cfg, nil
}

// startApache runs Apache in the victim in the foreground and waits until
// it listens. Its children are killed by pid when the run stops.
func (r *run) startApache(ctx context.Context, cfg string) error {
	h, err := r.startNative(ctx, Proc{Name: "apache2", Role: topo.Victim, Args: []string{"-D", "FOREGROUND", "-f", cfg}}, ApacheBin, nil, nil)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.trees = append(r.trees, h.cmd.Process.Pid)
	r.mu.Unlock()
	return r.waitListen(ctx, h, ApachePort)
}

// apacheFull counts the lines of an Apache error log that say the server
// ran out of workers (Apache says it once until it has spare workers again).
func apacheFull(log string) int {
	return strings.Count(log, "server reached MaxRequestWorkers")
}
