// Command ctguard keeps the host's conntrack table from filling up: it scans
// the table over ctnetlink, finds the sources holding it, bans them before
// conntrack and purges their entries. See README.md.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// version, commit and date are set by the build (make build: -ldflags -X);
// without them ctguard version reads what the Go toolchain recorded.
var (
	version = "dev"
	commit  string
	date    string
)

// action runs a command once cobra has parsed its flags; args are its
// positional arguments.
type action func(ctx context.Context, e *env, args []string) error

// command is one subcommand; each lives in its own file and registers
// itself. Its flags are declared by flags, which returns the action that
// reads them, so the same tree serves the run, the help, the completion
// and the man pages.
type command struct {
	name    string
	args    string // usage after the name, e.g. "ADDR|CIDR [--ttl D]"
	summary string // first line: the short help; the rest: the long help
	example string
	// maxArgs bounds the positional arguments (-1: no bound).
	maxArgs int
	flags   func(fs *pflag.FlagSet) action
	// complete offers the positional arguments (nil: none); fileArgs
	// lets the shell offer file names instead.
	complete func(args []string, toComplete string) []string
	fileArgs bool
	sub      []*command
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

// hiddenFlags point a command at another root for tests; they work but are
// not in the help, the completion or the man pages.
var hiddenFlags = []string{"procfs", "sysfs", "etc", "resolv-conf"}

// flagValues are the values the shell completion offers for flags that
// take one of a few words.
var flagValues = map[string][]cobra.Completion{
	"by":     {"held", "idle", "halfopen"},
	"reader": {"auto", "netlink", "proc"},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, &env{stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}

// newRoot builds the command tree for one run.
func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "ctguard",
		Short: "keeps the conntrack table from filling up",
		Long: "ctguard keeps the host's conntrack table from filling up: it scans the table over\n" +
			"ctnetlink, finds the sources holding it, bans them before conntrack and purges\n" +
			"their entries, and explains every decision.",
		SilenceErrors:     true,
		SilenceUsage:      true,
		DisableAutoGenTag: true,
	}
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetIn(e.in())
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{msg: err.Error()} })
	root.SetHelpCommand(helpCommand(root))
	root.CompletionOptions.DisableDescriptions = false
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		root.AddCommand(cobraCommand(e, commands[n]))
	}
	root.AddCommand(versionCommand(e))
	root.AddCommand(genManCommand())
	return root
}

// cobraCommand turns a command (and its subcommands) into cobra's form.
func cobraCommand(e *env, c *command) *cobra.Command {
	short, long, _ := strings.Cut(c.summary, "\n")
	cc := &cobra.Command{
		Use:                   strings.TrimSpace(c.name + " " + c.args),
		Short:                 short,
		Example:               c.example,
		DisableFlagsInUseLine: true,
	}
	if long != "" {
		cc.Long = short + "\n\n" + long
	}
	if c.flags != nil {
		act := c.flags(cc.Flags())
		for name, vals := range flagValues {
			if cc.Flags().Lookup(name) != nil {
				_ = cc.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(vals, cobra.ShellCompDirectiveNoFileComp))
			}
		}
		for _, h := range hiddenFlags {
			if cc.Flags().Lookup(h) != nil {
				_ = cc.Flags().MarkHidden(h)
			}
		}
		cc.RunE = func(cmd *cobra.Command, args []string) error {
			if c.maxArgs >= 0 && len(args) > c.maxArgs {
				return usagef("unexpected argument %q", args[c.maxArgs])
			}
			return act(cmd.Context(), e, args)
		}
	}
	cc.ValidArgsFunction = func(_ *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if c.fileArgs {
			return nil, cobra.ShellCompDirectiveDefault
		}
		if c.complete == nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return c.complete(args, toComplete), cobra.ShellCompDirectiveNoFileComp
	}
	if len(c.sub) > 0 && c.flags == nil {
		var names []string
		for _, s := range c.sub {
			names = append(names, s.name)
		}
		want := strings.Join(names, " or ")
		cc.RunE = func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("want %s", want)
			}
			return usagef("unknown command %q: want %s", args[0], want)
		}
	}
	for _, s := range c.sub {
		cc.AddCommand(cobraCommand(e, s))
	}
	return cc
}

// helpCommand is `ctguard help [COMMAND]`: help on stdout, an unknown
// command is a usage error.
func helpCommand(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND]",
		Short: "help about any command",
		ValidArgsFunction: func(_ *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			var out []cobra.Completion
			if len(args) == 0 {
				for _, c := range root.Commands() {
					if c.IsAvailableCommand() && strings.HasPrefix(c.Name(), toComplete) {
						out = append(out, cobra.CompletionWithDesc(c.Name(), c.Short))
					}
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			target, rest, err := root.Find(args)
			if err != nil || target == nil || len(rest) > 0 {
				return &usageError{msg: fmt.Sprintf("unknown command %q (run 'ctguard help')", strings.Join(args, " ")), noHint: true}
			}
			return target.Help()
		},
	}
}

// run executes one command line and returns the process exit status.
func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 {
		root := newRoot(e)
		root.SetOut(e.stderr)
		_ = root.Usage()
		return 2
	}
	if args[0] == "--version" {
		args = append([]string{"version"}, args[1:]...)
	}
	root := newRoot(e)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	name := "ctguard"
	if cmd != nil && cmd != root {
		name = cmd.CommandPath()
	}
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case cmd == root && strings.HasPrefix(err.Error(), "unknown command"):
		fmt.Fprintf(e.stderr, "ctguard: unknown command %q (run 'ctguard help')\n", args[0])
		return 2
	case errors.As(err, &ue) && ue.noHint:
		fmt.Fprintf(e.stderr, "%s: %s\n", name, ue.msg)
		return 2
	case errors.As(err, &ue):
		fmt.Fprintf(e.stderr, "%s: %s\n(see 'ctguard help%s')\n", name, ue.msg, strings.TrimPrefix(name, "ctguard"))
		return 2
	default:
		fmt.Fprintf(e.stderr, "%s: %s\n", name, err)
		return 1
	}
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
	if commit != "" {
		b.Commit, b.Date = commit, cmp.Or(date, b.Date)
		b.Dirty = strings.HasSuffix(version, "-dirty")
	}
	return b
}

// versionCommand is `ctguard version [--json]`.
func versionCommand(e *env) *cobra.Command {
	var asJSON bool
	cc := &cobra.Command{
		Use:   "version",
		Short: "print the version, commit, build date and Go version",
		RunE: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unexpected argument %q", args[0])
			}
			b := readBuildInfo()
			if asJSON {
				out, err := json.Marshal(view(versionJSON{newEnvelope("version"), b}))
				if err != nil {
					return err
				}
				fmt.Fprintf(e.stdout, "%s\n", out)
				return nil
			}
			fmt.Fprintf(e.stdout, "ctguard %s", b.Version)
			if b.Commit != "" {
				short := b.Commit[:min(12, len(b.Commit))]
				if b.Dirty {
					short += "-dirty"
				}
				fmt.Fprintf(e.stdout, " (commit %s, %s)", short, b.Date)
			}
			fmt.Fprintf(e.stdout, ", %s\n", b.Go)
			return nil
		},
	}
	cc.Flags().BoolVar(&asJSON, "json", false, "print one JSON object")
	return cc
}

type versionJSON struct {
	envelope
	buildInfo
}
