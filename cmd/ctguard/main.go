// Command ctguard keeps the host's conntrack table from filling up: it scans
// the table over ctnetlink, finds the sources holding it, bans them before
// conntrack and purges their entries. See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"
)

var version = "dev"

// command is one subcommand; each lives in its own file and registers itself.
type command struct {
	name    string
	args    string // usage after the name, e.g. "[--json]"
	summary string
	run     func(ctx context.Context, env *env, args []string) error
}

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

// env is what a subcommand may touch of the outside world; tests replace it.
type env struct {
	stdout, stderr io.Writer
	stdin          io.Reader // nil: os.Stdin
}

func (e *env) in() io.Reader {
	if e.stdin != nil {
		return e.stdin
	}
	return os.Stdin
}

// usageError is a bad flag, argument or value: exit status 2.
type usageError struct {
	msg    string
	noHint bool // bad input the help would not explain (a config file's values)
}

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{msg: fmt.Sprintf(format, a...)} }

// newFlags returns a flag set for a subcommand that reports errors instead of
// exiting, so that run() decides the exit status.
func newFlags(c *command, e *env) *flag.FlagSet {
	fs := flag.NewFlagSet("ctguard "+c.name, flag.ContinueOnError)
	// Flag errors go to stderr; asked-for help (-h, --help) to stdout.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// hiddenFlags point a command at another root for tests; they work but are
// not in the help.
var hiddenFlags = map[string]bool{"procfs": true, "sysfs": true, "etc": true, "resolv-conf": true}

// printCommandHelp writes a command's usage, summary and flags (GNU style:
// --name).
func printCommandHelp(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: ctguard %s %s\n\n%s\n", c.name, c.args, c.summary)
	if fs == nil {
		return
	}
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if hiddenFlags[f.Name] {
			return
		}
		if first {
			fmt.Fprintf(w, "\nflags:\n")
			first = false
		}
		typ, usage := flag.UnquoteUsage(f)
		name := "--" + f.Name
		if typ != "" {
			name += " " + strings.ToUpper(typ)
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "  %s\n      %s%s\n", name, usage, def)
	})
}

// parseFlags parses args and turns flag errors into usage errors; it rejects
// stray positional arguments unless allowArgs.
func parseFlags(fs *flag.FlagSet, args []string, allowArgs bool) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &helpRequest{fs: fs}
		}
		return &usageError{msg: err.Error()}
	}
	if !allowArgs && fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, &env{stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}

// helpRequest is -h or --help on a command: its help goes to stdout.
type helpRequest struct{ fs *flag.FlagSet }

func (h *helpRequest) Error() string { return "help requested" }

// run executes one command line and returns the process exit status.
func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		printUsage(e.stderr)
		return 2
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		if len(args) > 1 && args[0] == "help" {
			// ctguard help CMD: the command's own help.
			if _, ok := commands[args[1]]; ok {
				return run(ctx, e, []string{args[1], "--help"})
			}
			fmt.Fprintf(e.stderr, "ctguard help: unknown command %q\n", args[1])
			return 2
		}
		printUsage(e.stdout)
		return 0
	}
	if args[0] == "version" || args[0] == "--version" {
		return printVersion(e, args[1:])
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(e.stderr, "ctguard: unknown command %q (run 'ctguard help')\n", args[0])
		return 2
	}
	err := c.run(ctx, e, args[1:])
	var ue *usageError
	var help *helpRequest
	switch {
	case err == nil:
		return 0
	case errors.As(err, &help):
		printCommandHelp(e.stdout, c, help.fs)
		return 0
	case errors.As(err, &ue) && ue.noHint:
		fmt.Fprintf(e.stderr, "ctguard %s: %s\n", c.name, ue.msg)
		return 2
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "ctguard %s: %s\n(see 'ctguard help %s')\n", c.name, ue.msg, c.name)
		return 2
	default:
		fmt.Fprintf(e.stderr, "ctguard %s: %s\n", c.name, err)
		return 1
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "ctguard %s: keeps the conntrack table from filling up\n\nusage: ctguard COMMAND [flags]\n\ncommands:\n", version)
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := commands[n]
		fmt.Fprintf(w, "  %-8s %s\n", n, strings.SplitN(c.summary, "\n", 2)[0])
	}
	fmt.Fprintf(w, "  %-8s %s\n\nRun 'ctguard help COMMAND' (or 'ctguard COMMAND --help') for a command's flags.\n", "version", "print the version")
}

// buildInfo is what `ctguard version` reports.
type buildInfo struct {
	Version string `json:"version"`
	Commit  string `json:"commit,omitempty"`
	Date    string `json:"date,omitempty"` // the commit's time, RFC 3339
	Dirty   bool   `json:"dirty,omitempty"`
	Go      string `json:"go"`
}

func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, Go: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Commit = s.Value
			case "vcs.time":
				b.Date = s.Value
			case "vcs.modified":
				b.Dirty = s.Value == "true"
			}
		}
	}
	return b
}

func printVersion(e *env, args []string) int {
	b := readBuildInfo()
	switch {
	case len(args) == 1 && args[0] == "--json":
		out, _ := json.Marshal(b)
		fmt.Fprintf(e.stdout, "%s\n", out)
	case len(args) == 0:
		fmt.Fprintf(e.stdout, "ctguard %s", b.Version)
		if b.Commit != "" {
			short := b.Commit[:min(12, len(b.Commit))]
			if b.Dirty {
				short += "-dirty"
			}
			fmt.Fprintf(e.stdout, " (commit %s, %s)", short, b.Date)
		}
		fmt.Fprintf(e.stdout, ", %s\n", b.Go)
	default:
		fmt.Fprintf(e.stderr, "ctguard version: unexpected arguments %q (only --json)\n", args)
		return 2
	}
	return 0
}
