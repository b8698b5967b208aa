package main

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"

	"github.com/spf13/pflag"

	"github.com/ctguard/ctguard/internal/config"
)

func init() {
	register(&command{
		name:    "config",
		args:    "check|show [FILE]",
		summary: "check a configuration file or show the effective configuration",
		sub: []*command{{
			name: "check",
			args: "[FILE]",
			summary: "check a configuration file: every problem at once, each with its line\n" +
				"FILE defaults to " + defaultConfigPath + ". Exits 0 when the file is valid, 2 when it is not.",
			example: "  ctguard config check\n  ctguard config check ./ctguard.toml --json",
			maxArgs: 1,
			flags: func(fs *pflag.FlagSet) action {
				asJSON := fs.Bool("json", false, "print one JSON object (file, valid, problems)")
				return func(_ context.Context, e *env, args []string) error { return configCheck(e, args, *asJSON) }
			},
			fileArgs: true,
		}, {
			name: "show",
			args: "[FILE]",
			summary: "print the configuration the daemon would run with (defaults merged) as TOML\n" +
				"Without FILE: " + defaultConfigPath + " when it exists, else the built-in defaults.",
			maxArgs:  1,
			flags:    func(*pflag.FlagSet) action { return configShow },
			fileArgs: true,
		}},
	})
}

const defaultConfigPath = "/etc/ctguard/ctguard.toml"

// checkJSON is `config check --json`.
type checkJSON struct {
	envelope
	File     string        `json:"file"`
	Valid    bool          `json:"valid"`
	Problems []problemJSON `json:"problems"`
}

type problemJSON struct {
	Line    int    `json:"line,omitempty"`
	Key     string `json:"key,omitempty"`
	Message string `json:"message"`
}

func configCheck(e *env, args []string, asJSON bool) error {
	path := defaultConfigPath
	if len(args) == 1 {
		path = args[0]
	}
	problems, err := config.Check(path)
	if err != nil {
		return &usageError{msg: err.Error(), noHint: true}
	}
	if asJSON {
		out := checkJSON{envelope: newEnvelope("config check"), File: path, Valid: len(problems) == 0, Problems: []problemJSON{}}
		for _, p := range problems {
			out.Problems = append(out.Problems, problemJSON{Line: p.Line, Key: p.Key, Message: p.Msg})
		}
		if err := writeJSON(e.stdout, out); err != nil {
			return err
		}
		if len(problems) > 0 {
			return &usageError{msg: fmt.Sprintf("%s: %s", path, plural(len(problems), "problem", "problems")), noHint: true}
		}
		return nil
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
}

func configShow(_ context.Context, e *env, args []string) error {
	path := defaultConfigPath
	if len(args) == 1 {
		path = args[0]
	} else if _, err := os.Stat(path); errors.Is(err, iofs.ErrNotExist) {
		// As the daemon: the default file when it exists, else the
		// built-in defaults.
		path = ""
	}
	cfg, err := config.Load(path)
	if err != nil {
		return &usageError{msg: err.Error(), noHint: true}
	}
	src := path
	if src == "" {
		src = "the built-in defaults (" + defaultConfigPath + " does not exist)"
	}
	fmt.Fprintf(e.stdout, "# effective configuration: %s\n", src)
	return config.Show(e.stdout, cfg)
}
