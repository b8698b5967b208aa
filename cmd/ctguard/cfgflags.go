package main

import (
	"cmp"
	"os"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/config"
)

// cfgFlags are --config and --socket: every command that works with a
// daemon or without one reads the same configuration, so the allowlist,
// the state directory and the socket agree with `ctguard run`'s.
type cfgFlags struct {
	fs     *pflag.FlagSet
	path   string
	socket string
}

func (f *cfgFlags) register(fs *pflag.FlagSet) {
	f.fs = fs
	fs.StringVar(&f.path, "config", "", "configuration `FILE` (default "+defaultConfigPath+" when it exists, else the built-in defaults)")
	fs.StringVar(&f.socket, "socket", "", "`PATH` of the running daemon's control socket (default $CTGUARD_SOCKET, else daemon.socket of the configuration)")
}

// load reads the configuration (loadConfig) and says which it used.
func (f *cfgFlags) load() (config.Config, string, error) { return loadConfig(f.path) }

// socketPath is the control socket: --socket, $CTGUARD_SOCKET, the
// configuration, the default (one precedence for every command and run).
func (f *cfgFlags) socketPath(c config.Config) string {
	return cmp.Or(f.socket, os.Getenv("CTGUARD_SOCKET"), c.Daemon.Socket)
}

// changed reports whether the flag name was given on the command line.
func (f *cfgFlags) changed(name string) bool { return f.fs != nil && f.fs.Changed(name) }

// loadConfig reads the configuration as the daemon would: the named file
// (an error when it is missing), else the default file when it exists,
// else the built-in defaults. It says which it used.
func loadConfig(path string) (config.Config, string, error) {
	if path == "" {
		if _, err := os.Stat(defaultConfigPath); err == nil {
			path = defaultConfigPath
		}
	}
	cfg, err := config.Load(path)
	if err != nil {
		return cfg, "", &usageError{msg: err.Error(), noHint: true}
	}
	if path == "" {
		return cfg, "the built-in defaults", nil
	}
	return cfg, path, nil
}
