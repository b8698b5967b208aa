package enforce

// The iptables side of the ipset backend: ctguard's chain in the raw table
// (iptables and ip6tables), written with iptables-restore --noflush and
// read back with iptables-save. Only the chain CTGUARD and ctguard's jump
// to it (the rule commented "ctguard" in raw PREROUTING) are written;
// nothing else in any table is touched.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// IPTablesFlavour selects the iptables tools: the host's default ones
// (whatever `iptables` is: Debian's alternatives pick legacy or nft), or
// one explicitly.
type IPTablesFlavour string

// The iptables flavours.
const (
	IPTablesDefault IPTablesFlavour = ""       // iptables-restore, iptables-save, ip6tables-…
	IPTablesLegacy  IPTablesFlavour = "legacy" // iptables-legacy-restore, …: the x_tables kernel interface
	IPTablesNFT     IPTablesFlavour = "nft"    // iptables-nft-restore, …: the nf_tables compatibility layer
)

// tool names one of the iptables programs of the flavour, e.g.
// tool(true, "save") = "ip6tables-legacy-save".
func (f IPTablesFlavour) tool(v6 bool, what string) string {
	name := "iptables"
	if v6 {
		name = "ip6tables"
	}
	if f != IPTablesDefault {
		name += "-" + string(f)
	}
	if what != "" {
		name += "-" + what
	}
	return name
}

// Names in iptables.
const (
	// IPTablesChain is ctguard's chain in the raw table of iptables and
	// ip6tables; raw PREROUTING jumps to it first.
	IPTablesChain = "CTGUARD"
	// IPTablesComment marks ctguard's rules; the chain's first rule carries
	// OwnerMark and the incarnation instead.
	IPTablesComment = "ctguard"
)

// iptRule is one rule as iptables-save prints it, split into words
// (quotes removed), without the leading "-A CHAIN".
type iptRule struct {
	Chain          string
	Args           []string
	Packets, Bytes uint64
	HasCounters    bool
	line           string // as printed, for -D
}

// target is the rule's -j target, "" when none.
func (r iptRule) target() string { return r.arg("-j") }

// arg is the word after the first occurrence of flag, "" when none.
func (r iptRule) arg(flag string) string {
	if i := slices.Index(r.Args, flag); i >= 0 && i+1 < len(r.Args) {
		return r.Args[i+1]
	}
	return ""
}

// iptTable is the raw table as iptables-save printed it: its chains (in
// order, with policies for built-in ones) and rules.
type iptTable struct {
	Chains map[string]string // name -> policy ("-" for user chains)
	Rules  []iptRule
}

func (t iptTable) chainRules(chain string) []iptRule {
	var out []iptRule
	for _, r := range t.Rules {
		if r.Chain == chain {
			out = append(out, r)
		}
	}
	return out
}

// parseSave reads the named table out of iptables-save output (with or
// without -c). Lines it does not understand are an error: a Check that
// misread the rules would rebuild them forever.
func parseSave(out, table string) (iptTable, error) {
	t := iptTable{Chains: map[string]string{}}
	in := false
	for n, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "*"):
			in = line[1:] == table
			continue
		case !in:
			continue
		case line == "COMMIT":
			in = false
			continue
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				return iptTable{}, fmt.Errorf("line %d: chain line %q", n+1, line)
			}
			t.Chains[f[0]] = f[1]
			continue
		}
		r := iptRule{line: line}
		if strings.HasPrefix(line, "[") {
			end := strings.IndexByte(line, ']')
			pk, by, ok := strings.Cut(line[1:max(end, 1)], ":")
			p, err1 := strconv.ParseUint(pk, 10, 64)
			b, err2 := strconv.ParseUint(by, 10, 64)
			if end < 0 || !ok || err1 != nil || err2 != nil {
				return iptTable{}, fmt.Errorf("line %d: counters in %q", n+1, line)
			}
			r.Packets, r.Bytes, r.HasCounters = p, b, true
			line = strings.TrimSpace(line[end+1:])
			r.line = line
		}
		words, err := splitWords(line)
		if err != nil {
			return iptTable{}, fmt.Errorf("line %d: %w", n+1, err)
		}
		if len(words) < 2 || words[0] != "-A" {
			return iptTable{}, fmt.Errorf("line %d: not a rule: %q", n+1, line)
		}
		r.Chain, r.Args = words[1], words[2:]
		t.Rules = append(t.Rules, r)
	}
	return t, nil
}

// splitWords splits a rule as iptables-save prints it: words separated by
// spaces, double quotes around words with spaces, backslash escapes inside
// quotes.
func splitWords(s string) ([]string, error) {
	var out []string
	var w strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
		case c == '"':
			quoted = !quoted
			inWord = true
		case c == ' ' && !quoted:
			if inWord {
				out = append(out, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		out = append(out, w.String())
	}
	return out, nil
}

// quoteWord quotes a word for iptables-restore when it needs it.
func quoteWord(w string) string {
	if w != "" && !strings.ContainsAny(w, " \"\\'\t") {
		return w
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(w) + `"`
}

func joinWords(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = quoteWord(w)
	}
	return strings.Join(q, " ")
}

// ownerComment is the comment of the chain's first rule: OwnerMark and the
// incarnation (a random number per Setup, which Check compares).
func ownerComment(token uint64) string {
	return fmt.Sprintf("%s id=%016x", OwnerMark, token)
}

// parseOwnerComment returns the incarnation in a first rule's comment; ok
// is false when the comment is not ctguard's mark.
func parseOwnerComment(c string) (token uint64, ok bool) {
	rest, found := strings.CutPrefix(c, OwnerMark+" id=")
	if !found {
		return 0, false
	}
	v, err := strconv.ParseUint(rest, 16, 64)
	return v, err == nil
}

// multiportMax is how many ports one -m multiport match takes.
const multiportMax = 15

// chainRules renders the rules of ctguard's chain for one family, as
// iptables-save prints them (without "-A CTGUARD"): the full bans drop,
// TCP to the SSH ports returns to PREROUTING (like nft's accept, it ends
// only this chain, after every full ban), then the scoped bans drop.
func chainRules(v6 bool, ports []uint16, token uint64) [][]string {
	fam := "4"
	if v6 {
		fam = "6"
	}
	drop := func(set, comment string) []string {
		return []string{"-m", "set", "--match-set", set, "src", "-m", "comment", "--comment", comment, "-j", "DROP"}
	}
	out := [][]string{
		drop(IPSetPrefix+"ban"+fam, ownerComment(token)),
		drop(IPSetPrefix+"net"+fam, IPTablesComment),
	}
	for chunk := range slices.Chunk(ports, multiportMax) {
		ps := make([]string, len(chunk))
		for i, p := range chunk {
			ps[i] = strconv.Itoa(int(p))
		}
		out = append(out, []string{"-p", "tcp", "-m", "multiport", "--dports", strings.Join(ps, ","),
			"-m", "comment", "--comment", IPTablesComment, "-j", "RETURN"})
	}
	return append(out,
		drop(IPSetPrefix+"ban"+fam+IPSetScopedSuffix, IPTablesComment),
		drop(IPSetPrefix+"net"+fam+IPSetScopedSuffix, IPTablesComment))
}

// jumpRule is ctguard's rule in raw PREROUTING.
var jumpRule = []string{"-m", "comment", "--comment", IPTablesComment, "-j", IPTablesChain}

// restoreScript renders the iptables-restore --noflush input that makes
// ctguard's chain exactly chainRules and its jump the first rule of raw
// PREROUTING, in one transaction per family. Declaring the chain flushes it
// when it exists; old jumps (read from cur) are deleted by their exact text
// so that nothing else in PREROUTING moves.
func restoreScript(cur iptTable, rules [][]string) string {
	var b strings.Builder
	b.WriteString("*raw\n:" + IPTablesChain + " - [0:0]\n")
	for _, r := range rules {
		b.WriteString("-A " + IPTablesChain + " " + joinWords(r) + "\n")
	}
	for _, r := range cur.chainRules("PREROUTING") {
		if slices.Equal(r.Args, jumpRule) {
			b.WriteString("-D PREROUTING " + joinWords(r.Args) + "\n")
		}
	}
	b.WriteString("-I PREROUTING 1 " + joinWords(jumpRule) + "\nCOMMIT\n")
	return b.String()
}

// removeScript renders the iptables-restore --noflush input that deletes
// ctguard's jumps and chain.
func removeScript(cur iptTable) string {
	var b strings.Builder
	b.WriteString("*raw\n")
	for _, r := range cur.chainRules("PREROUTING") {
		if r.target() == IPTablesChain {
			b.WriteString("-D PREROUTING " + joinWords(r.Args) + "\n")
		}
	}
	if _, ok := cur.Chains[IPTablesChain]; ok {
		b.WriteString("-F " + IPTablesChain + "\n-X " + IPTablesChain + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// chainProblem compares the raw table read back with what Setup writes and
// says what differs, or "". token is the incarnation found in the chain's
// first rule (0 when there is no mark).
func chainProblem(t iptTable, v6 bool, ports []uint16) (problem string, token uint64) {
	prog := "iptables"
	if v6 {
		prog = "ip6tables"
	}
	if _, ok := t.Chains[IPTablesChain]; !ok {
		return fmt.Sprintf("%s chain raw %s is missing", prog, IPTablesChain), 0
	}
	got := t.chainRules(IPTablesChain)
	if len(got) > 0 {
		token, _ = parseOwnerComment(got[0].arg("--comment"))
	}
	want := chainRules(v6, ports, token)
	if len(got) != len(want) {
		return fmt.Sprintf("%s chain raw %s has %d rules, want %d", prog, IPTablesChain, len(got), len(want)), token
	}
	for i := range want {
		if !slices.Equal(got[i].Args, want[i]) {
			return fmt.Sprintf("%s chain raw %s rule %d is %q, want %q", prog, IPTablesChain, i+1,
				joinWords(got[i].Args), joinWords(want[i])), token
		}
	}
	jumps := 0
	for i, r := range t.chainRules("PREROUTING") {
		if slices.Equal(r.Args, jumpRule) {
			jumps++
			continue
		}
		if jumps == 0 && (r.target() == "ACCEPT" || r.target() == "RETURN") {
			// An accept ends the table's PREROUTING: the bans behind it
			// would never be looked at.
			return fmt.Sprintf("%s raw PREROUTING rule %d (%s) accepts before the jump to %s", prog, i+1,
				joinWords(r.Args), IPTablesChain), token
		}
	}
	if jumps != 1 {
		return fmt.Sprintf("%s raw PREROUTING has %d jumps to %s, want 1", prog, jumps, IPTablesChain), token
	}
	return "", token
}

// foreignChain says why an existing chain CTGUARD is another tool's, or ""
// when it is ctguard's (its first rule carries the mark), empty, or
// missing.
func foreignChain(t iptTable, v6 bool) string {
	if _, ok := t.Chains[IPTablesChain]; !ok {
		return ""
	}
	rules := t.chainRules(IPTablesChain)
	if len(rules) == 0 {
		return ""
	}
	if _, ok := parseOwnerComment(rules[0].arg("--comment")); ok {
		return ""
	}
	prog := "iptables"
	if v6 {
		prog = "ip6tables"
	}
	return fmt.Sprintf("%s chain raw %s holds %d rules without ctguard's mark (first: %s)", prog, IPTablesChain,
		len(rules), joinWords(rules[0].Args))
}

// cmdTimeout bounds one run of an iptables tool.
const cmdTimeout = 30 * time.Second

// runTool runs an iptables tool, in the network namespace netns when it is
// not 0, with stdin as input. The error names the command and carries what
// it printed on stderr.
func runTool(ctx context.Context, netns int, stdin []byte, name string, args ...string) ([]byte, error) {
	if netns == 0 {
		return runCommand(ctx, stdin, name, args...)
	}
	type result struct {
		out []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The child inherits this thread's network namespace. The thread
		// is never unlocked: it dies with this goroutine instead of going
		// back to the pool in the wrong namespace.
		runtime.LockOSThread()
		if err := unix.Setns(netns, unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("%s: enter network namespace: %w", name, err)}
			return
		}
		out, err := runCommand(ctx, stdin, name, args...)
		ch <- result{out, err}
	}()
	r := <-ch
	return r.out, r.err
}

func runCommand(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		msg := strings.TrimSpace(errb.String())
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("%s not found in PATH (install iptables): %w", name, err)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w (%v)", name, strings.Join(args, " "), ctx.Err(), err)
		}
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return out.Bytes(), nil
}
