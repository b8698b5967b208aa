package main

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"

	"github.com/ctguard/ctguard/internal/config"
)

func init() {
	register(&command{
		name: "config",
		args: "check [FILE] | show [FILE]",
		summary: "check a configuration file (every problem, with its line) or show the effective configuration\n" +
			"FILE defaults to " + defaultConfigPath + ". check exits 0 when the file is valid, 2 when it is not.\n" +
			"show prints the configuration the daemon would run with (defaults merged) as TOML.",
		run: runConfig,
	})
}

const defaultConfigPath = "/etc/ctguard/ctguard.toml"

func runConfig(ctx context.Context, e *env, args []string) error {
	c := commands["config"]
	fs := newFlags(c, e)
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 || len(rest) > 2 {
		return usagef("want check [FILE] or show [FILE]")
	}
	path := defaultConfigPath
	if len(rest) == 2 {
		path = rest[1]
	}
	switch rest[0] {
	case "check":
		problems, err := config.Check(path)
		if err != nil {
			return usagef("%v", err)
		}
		for _, p := range problems {
			line := ""
			if p.Line > 0 {
				line = fmt.Sprintf("%d:", p.Line)
			}
			fmt.Fprintf(e.stderr, "%s:%s %s\n", path, line, p.Msg)
		}
		if len(problems) > 0 {
			return &usageError{msg: fmt.Sprintf("%s: %s", path, plural(len(problems), "problem", "problems")), noHint: true}
		}
		fmt.Fprintf(e.stdout, "%s: ok\n", path)
		return nil
	case "show":
		if len(rest) == 1 {
			// As the daemon: the default file when it exists, else the
			// built-in defaults.
			if _, err := os.Stat(path); errors.Is(err, iofs.ErrNotExist) {
				path = ""
			}
		}
		cfg, err := config.Load(path)
		if err != nil {
			return usagef("%v", err)
		}
		src := path
		if src == "" {
			src = "the built-in defaults (" + defaultConfigPath + " does not exist)"
		}
		fmt.Fprintf(e.stdout, "# effective configuration: %s\n", src)
		return config.Show(e.stdout, cfg)
	}
	return usagef("unknown config command %q: want check or show", rest[0])
}
