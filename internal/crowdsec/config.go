package crowdsec

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
)

// Config is the link to one LAPI. The config package embeds it (its keys
// are the toml tags); Default gives every default, Validate reports every
// problem.
type Config struct {
	// URL is the LAPI's base URL, e.g. http://127.0.0.1:8080/ (the
	// endpoints are below it: /v1/...).
	URL string `toml:"url"`

	// Push sends ctguard's bans to the LAPI as alerts (a watcher, with
	// MachineID and Password or PasswordFile).
	Push      bool   `toml:"push"`
	MachineID string `toml:"machine_id"`
	// Password is the machine's password; PasswordFile names a root-only
	// file holding it (or cscli's credentials YAML with a password: key).
	Password     Secret `toml:"password"`
	PasswordFile string `toml:"password_file"`
	// Scenario names ctguard's alerts and their decisions. It must match
	// OwnScenarios, so that pull recognises them.
	Scenario string `toml:"scenario"`
	// QueueSize bounds the alerts waiting for the LAPI; the oldest are
	// dropped beyond it.
	QueueSize int `toml:"queue_size"`
	// Timeout bounds one login or alerts request.
	Timeout time.Duration `toml:"timeout"`

	// Pull applies the LAPI's ban decisions (a bouncer, with APIKey or
	// APIKeyFile).
	Pull bool `toml:"pull"`
	// APIKey is the bouncer's key (cscli bouncers add); APIKeyFile names a
	// root-only file holding it.
	APIKey     Secret `toml:"api_key"`
	APIKeyFile string `toml:"api_key_file"`
	// PullInterval is the time between two stream requests.
	PullInterval time.Duration `toml:"pull_interval"`
	// PullTimeout bounds one stream request, body included.
	PullTimeout time.Duration `toml:"pull_timeout"`
	// Origins keeps only decisions of these origins (crowdsec, cscli,
	// CAPI, lists, ...); empty keeps every origin.
	Origins []string `toml:"origins"`
	// Scenarios keeps only decisions whose scenario matches one of these
	// patterns; empty keeps every scenario. ExcludeScenarios then drops
	// the matching ones. A pattern is a glob, case-insensitive, where *
	// matches any run of characters (slashes too) and ? one character:
	// "crowdsecurity/*" is a prefix, "*ssh*" a substring.
	Scenarios        []string `toml:"scenarios"`
	ExcludeScenarios []string `toml:"exclude_scenarios"`
	// OwnScenarios are the scenarios of this host's own alerts: their
	// decisions come back in the stream and are skipped (ctguard already
	// holds them). Same patterns as Scenarios.
	OwnScenarios []string `toml:"own_scenarios"`
	// MaxDecisions bounds the decisions held from the LAPI; decisions
	// beyond it are dropped and counted.
	MaxDecisions int `toml:"max_decisions"`
	// MinPrefixV4 and MinPrefixV6 are the broadest prefixes accepted from
	// the LAPI: a range shorter than these is refused and reported.
	MinPrefixV4 int `toml:"min_prefix_v4"`
	MinPrefixV6 int `toml:"min_prefix_v6"`
	// MaxBodyBytes bounds one stream response.
	MaxBodyBytes int64 `toml:"max_body_bytes"`

	// CAFile adds a PEM CA bundle to the system's roots for an https URL;
	// InsecureSkipVerify turns certificate checks off (never by default).
	CAFile             string `toml:"ca_file"`
	InsecureSkipVerify bool   `toml:"insecure_skip_verify"`
}

// Defaults.
const (
	DefaultScenario     = "ctguard/conntrack-holder"
	DefaultURL          = "http://127.0.0.1:8080/"
	DefaultMachineID    = "ctguard"
	DefaultMaxDecisions = 65536
	defaultMaxBody      = 256 << 20
)

// Default is the link with its defaults: both directions off.
func Default() Config {
	return Config{
		URL:          DefaultURL,
		MachineID:    DefaultMachineID,
		Scenario:     DefaultScenario,
		QueueSize:    1024,
		Timeout:      10 * time.Second,
		PullInterval: 10 * time.Second,
		PullTimeout:  time.Minute,
		OwnScenarios: []string{"ctguard/*"},
		MaxDecisions: DefaultMaxDecisions,
		MinPrefixV4:  16,
		MinPrefixV6:  32,
		MaxBodyBytes: defaultMaxBody,
	}
}

// Enabled reports whether either direction is on.
func (c *Config) Enabled() bool { return c.Push || c.Pull }

// Own reports whether a decision's scenario is one of this host's own
// (OwnScenarios): a decision that ctguard pushed and must not apply a
// second time.
func (c *Config) Own(scenario string) bool { return matchAny(c.OwnScenarios, scenario) }

// maxPasswordLen is bcrypt's limit, which the LAPI's password hashes have.
const maxPasswordLen = 72

// Validate reports every problem, each naming its key. It checks the
// secret files' ownership and mode, not their content (New reads them).
// A link with both directions off is valid whatever the rest says.
func (c *Config) Validate() error {
	if !c.Enabled() {
		return nil
	}
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if _, err := parseBaseURL(c.URL); err != nil {
		add("url = %q: %w", showURL(c.URL), err)
	}
	if c.Push {
		if c.MachineID == "" || strings.ContainsAny(c.MachineID, " \t\r\n") {
			add("machine_id = %q: want the name given to cscli machines add (no spaces)", c.MachineID)
		}
		errs = append(errs, secretChoice("password", c.Password, "password_file", c.PasswordFile, "push")...)
		if len(c.Password) > maxPasswordLen {
			add("password: longer than %d bytes, which the LAPI (bcrypt) cannot check", maxPasswordLen)
		}
		if c.Scenario == "" || strings.ContainsAny(c.Scenario, " \t\r\n") {
			add("scenario = %q: want a name such as %s", c.Scenario, DefaultScenario)
		} else if !c.Own(c.Scenario) {
			add("scenario = %q: not matched by own_scenarios %q, so its decisions would come back as foreign ones", c.Scenario, c.OwnScenarios)
		}
		if c.QueueSize < 1 || c.QueueSize > 1_000_000 {
			add("queue_size = %d: want 1 to 1000000", c.QueueSize)
		}
		if c.Timeout < 100*time.Millisecond || c.Timeout > 10*time.Minute {
			add("timeout = %v: want 100ms to 10m", c.Timeout)
		}
	}
	if c.Pull {
		errs = append(errs, secretChoice("api_key", c.APIKey, "api_key_file", c.APIKeyFile, "pull")...)
		if c.PullInterval < time.Second || c.PullInterval > time.Hour {
			add("pull_interval = %v: want 1s to 1h", c.PullInterval)
		}
		if c.PullTimeout < 100*time.Millisecond || c.PullTimeout > 10*time.Minute {
			add("pull_timeout = %v: want 100ms to 10m", c.PullTimeout)
		}
		for _, o := range c.Origins {
			if o == "" || strings.ContainsAny(o, ", \t\r\n") {
				add("origins: %q is not an origin name (such as crowdsec, cscli, CAPI, lists)", o)
			}
		}
		for _, l := range []struct {
			key string
			v   []string
		}{{"scenarios", c.Scenarios}, {"exclude_scenarios", c.ExcludeScenarios}} {
			for _, p := range l.v {
				if strings.TrimSpace(p) == "" {
					add("%s: an empty pattern", l.key)
				}
			}
		}
		if c.MaxDecisions < 1 || c.MaxDecisions > 10_000_000 {
			add("max_decisions = %d: want 1 to 10000000", c.MaxDecisions)
		}
		if c.MinPrefixV4 < 0 || c.MinPrefixV4 > 32 {
			add("min_prefix_v4 = %d: want 0 to 32", c.MinPrefixV4)
		}
		if c.MinPrefixV6 < 0 || c.MinPrefixV6 > 128 {
			add("min_prefix_v6 = %d: want 0 to 128", c.MinPrefixV6)
		}
		if c.MaxBodyBytes < 64<<10 {
			add("max_body_bytes = %d: want at least 65536", c.MaxBodyBytes)
		}
	}
	for _, p := range c.OwnScenarios {
		if strings.TrimSpace(p) == "" {
			add("own_scenarios: an empty pattern")
		}
	}
	if c.CAFile != "" {
		if c.InsecureSkipVerify {
			add("ca_file and insecure_skip_verify: the CA is pointless when certificates are not checked; set one of them")
		}
		if st, err := os.Stat(c.CAFile); err != nil {
			add("ca_file = %q: %w", c.CAFile, err)
		} else if !st.Mode().IsRegular() {
			add("ca_file = %q: not a regular file", c.CAFile)
		}
	}
	return errors.Join(errs...)
}

// secretChoice checks that exactly one of an inline secret and a secret
// file is set, and the file's ownership and mode.
func secretChoice(key string, inline Secret, fileKey, file, dir string) []error {
	switch {
	case inline != "" && file != "":
		return []error{fmt.Errorf("%s and %s: set only one of them", key, fileKey)}
	case inline == "" && file == "":
		return []error{fmt.Errorf("%s: %s needs %s or %s", fileKey, dir, fileKey, key)}
	case file != "":
		f, err := os.Open(file)
		if err != nil {
			return []error{fmt.Errorf("%s = %q: %w", fileKey, file, err)}
		}
		defer f.Close()
		if err := checkRootOnly(f); err != nil {
			return []error{fmt.Errorf("%s = %q: %w", fileKey, file, err)}
		}
	}
	return nil
}

// checkRootOnly refuses a secret file that is not a regular file owned by
// root (or by the user running ctguard), or that group or others may read
// or write.
func checkRootOnly(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%v)", st.Mode().Type())
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("mode %04o gives group or others access to a secret; make it root-only: chmod 600 %s", perm, f.Name())
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		if euid := os.Geteuid(); sys.Uid != 0 && int(sys.Uid) != euid {
			return fmt.Errorf("owned by uid %d, not by root (or uid %d, which runs ctguard): chown root %s", sys.Uid, euid, f.Name())
		}
	}
	return nil
}

// maxSecretFile bounds a secret file.
const maxSecretFile = 64 << 10

// readSecretFile reads a root-only secret file. key names it in errors;
// yamlKey, when set, is the key to take from a cscli credentials file
// (login:/password:/url: lines), and wantLogin the login it must name.
func readSecretFile(key, path, yamlKey, wantLogin string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("%s = %q: %w", key, path, err)
	}
	defer f.Close()
	if err := checkRootOnly(f); err != nil {
		return "", fmt.Errorf("%s = %q: %w", key, path, err)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", fmt.Errorf("%s = %q: %w", key, path, err)
	}
	if len(b) > maxSecretFile {
		return "", fmt.Errorf("%s = %q: larger than %d bytes, not a secret file", key, path, maxSecretFile)
	}
	s, err := parseSecret(b, yamlKey, wantLogin)
	if err != nil {
		return "", fmt.Errorf("%s = %q: %w", key, path, err)
	}
	return s, nil
}

// parseSecret takes the secret out of a file's content: the one non-empty
// line, or (with yamlKey) the value of a "yamlKey:" line of a cscli
// credentials file. Its errors never quote the content.
func parseSecret(b []byte, yamlKey, wantLogin string) (string, error) {
	var lines []string
	fields := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxSecretFile+1)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, l)
		if k, v, ok := strings.Cut(l, ":"); ok && yamlKey != "" {
			fields[strings.TrimSpace(k)] = unquote(strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if yamlKey != "" {
		if v, ok := fields[yamlKey]; ok {
			if login, ok := fields["login"]; ok && wantLogin != "" && login != wantLogin {
				return "", fmt.Errorf("a credentials file for machine %q, not %q (machine_id)", login, wantLogin)
			}
			if v == "" {
				return "", fmt.Errorf("its %s: key is empty", yamlKey)
			}
			return v, nil
		}
	}
	switch len(lines) {
	case 0:
		return "", errors.New("empty")
	case 1:
		return lines[0], nil
	}
	if yamlKey != "" {
		return "", fmt.Errorf("%d lines and no %s: key; want the secret alone on one line", len(lines), yamlKey)
	}
	return "", fmt.Errorf("%d lines; want the secret alone on one line", len(lines))
}

// unquote strips YAML's single or double quotes from a scalar.
func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' && s[len(s)-1] == '"' || s[0] == '\'' && s[len(s)-1] == '\'') {
		inner := s[1 : len(s)-1]
		if s[0] == '\'' {
			return strings.ReplaceAll(inner, "''", "'")
		}
		return strings.NewReplacer(`\"`, `"`, `\\`, `\`).Replace(inner)
	}
	return s
}

// showURL is a URL for a report, without the password it may carry.
func showURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
}

// parseBaseURL checks the LAPI URL: http or https, a host, no
// credentials, query or fragment.
func parseBaseURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("empty: want the LAPI's URL, e.g. " + DefaultURL)
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, errors.New("not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("want an http:// or https:// URL")
	case u.Host == "" || u.Hostname() == "":
		return nil, errors.New("no host")
	case u.User != nil:
		return nil, errors.New("credentials do not belong in the URL (use password_file and api_key_file)")
	case u.RawQuery != "" || u.Fragment != "":
		return nil, errors.New("want no query or fragment")
	}
	if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	u.RawPath = ""
	return u, nil
}

// Secret is a credential read from the configuration. It prints, logs
// and marshals as "[redacted]"; only the package reads its value.
type Secret string

const redacted = "[redacted]"

// String redacts a set secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

// GoString redacts a set secret for %#v.
func (s Secret) GoString() string { return fmt.Sprintf("%q", s.String()) }

// LogValue redacts a set secret for log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText redacts a set secret for TOML and JSON output.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a secret from TOML.
func (s *Secret) UnmarshalText(b []byte) error {
	*s = Secret(b)
	return nil
}
