package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The shipped default file and the reference documentation must name every
// key the daemon reads, with its real default: these tests walk Config by
// reflection, so a key added to the code without its line in
// packaging/ctguard.toml and docs/configuration.md fails here.

const (
	shippedFile = "../../packaging/ctguard.toml"
	docsFile    = "../../docs/configuration.md"
)

// configKeys returns the dotted key of every leaf of t ("daemon.poll",
// "policy.weights.idle"), in declaration order. Nested structs are tables;
// arrays and slices of structs would be arrays of tables, whose keys are
// the element's; anything else is a value.
func configKeys(t reflect.Type, prefix string) ([]string, error) {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := strings.Split(f.Tag.Get("toml"), ",")[0]
		if tag == "-" {
			continue
		}
		if tag == "" {
			// The decoder would match the Go name case-insensitively: an
			// undocumented spelling. Every key gets an explicit tag.
			return nil, fmt.Errorf("%s%s has no toml tag", prefix, f.Name)
		}
		ft := f.Type
		if k := ft.Kind(); (k == reflect.Array || k == reflect.Slice || k == reflect.Pointer) && ft.Elem().Kind() == reflect.Struct {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct {
			sub, err := configKeys(ft, prefix+tag+".")
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
			continue
		}
		out = append(out, prefix+tag)
	}
	return out, nil
}

func allKeys(t *testing.T) []string {
	t.Helper()
	keys, err := configKeys(reflect.TypeFor[Config](), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 40 {
		t.Fatalf("only %d keys found by reflection: %v", len(keys), keys)
	}
	return keys
}

var (
	headerRE     = regexp.MustCompile(`^\[([a-z0-9_.]+)\]\s*$`)
	commentKeyRE = regexp.MustCompile(`^# ([a-z0-9_]+) = (.+)$`)
)

// commentedKeys reads a TOML file whose keys are commented out
// ("# key = value" under an uncommented [section] header) and returns each
// dotted key with its value as written.
func commentedKeys(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	section := ""
	for n, line := range strings.Split(string(b), "\n") {
		if m := headerRE.FindStringSubmatch(line); m != nil {
			section = m[1] + "."
			continue
		}
		m := commentKeyRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if section == "" {
			return nil, fmt.Errorf("%s:%d: key %s outside any [section]", path, n+1, m[1])
		}
		k := section + m[1]
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%s:%d: %s listed twice", path, n+1, k)
		}
		out[k] = strings.TrimSpace(m[2])
	}
	return out, nil
}

// missingFromFile lists the keys absent from a commented file, and the
// file's keys that Config does not have (stale ones).
func missingFromFile(keys []string, path string) (missing, unknown []string, err error) {
	got, err := commentedKeys(path)
	if err != nil {
		return nil, nil, err
	}
	for _, k := range keys {
		if _, ok := got[k]; !ok {
			missing = append(missing, k)
		}
	}
	for k := range got {
		if !slices.Contains(keys, k) {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	return missing, unknown, nil
}

var docKeyRE = regexp.MustCompile("^\\| `([a-z0-9_.]+)` \\|")

// missingFromDocs lists the keys that have no table row in the docs
// ("| `section.key` | type | `default` | ...") or whose row does not show
// the default as the shipped file writes it, and the rows naming keys
// that Config does not have.
func missingFromDocs(keys []string, defaults map[string]string, path string) (problems []string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if m := docKeyRE.FindStringSubmatch(line); m != nil {
			rows[m[1]] = line
		}
	}
	for _, k := range keys {
		row, ok := rows[k]
		switch {
		case !ok:
			problems = append(problems, "no row for "+k)
		case defaults[k] != "" && !strings.Contains(row, "`"+defaults[k]+"`"):
			problems = append(problems, fmt.Sprintf("row for %s does not show the default `%s`", k, defaults[k]))
		}
	}
	var stale []string
	for k := range rows {
		if !slices.Contains(keys, k) {
			stale = append(stale, "row for unknown key "+k)
		}
	}
	slices.Sort(stale)
	return append(problems, stale...), nil
}

func TestShippedFileListsEveryKey(t *testing.T) {
	missing, unknown, err := missingFromFile(allKeys(t), shippedFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) > 0 {
		t.Errorf("%s lacks a commented line `# key = default` for: %s", shippedFile, strings.Join(missing, ", "))
	}
	if len(unknown) > 0 {
		t.Errorf("%s lists keys Config does not have: %s", shippedFile, strings.Join(unknown, ", "))
	}
}

func TestDocsListEveryKey(t *testing.T) {
	defaults, err := commentedKeys(shippedFile)
	if err != nil {
		t.Fatal(err)
	}
	problems, err := missingFromDocs(allKeys(t), defaults, docsFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", docsFile, p)
	}
}

// The checkers themselves must catch a missing key, a stale key and a
// wrong default (fixtures in testdata), or the two tests above prove
// nothing.
func TestCheckersCatchOmissions(t *testing.T) {
	keys := allKeys(t)
	missing, unknown, err := missingFromFile(keys, "testdata/missing-key.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"daemon.scan_on_growth", "policy.weights.orphan", "log.level"} {
		if !slices.Contains(missing, k) {
			t.Errorf("missing-key.toml: %s not reported missing (missing: %v)", k, missing)
		}
	}
	for _, k := range []string{"daemon.poll", "policy.threshold", "policy.weights.idle", "policy.weights.half_open"} {
		if slices.Contains(missing, k) {
			t.Errorf("missing-key.toml: %s reported missing but it is there", k)
		}
	}
	if !slices.Equal(unknown, []string{"daemon.scan_on_grow"}) {
		t.Errorf("missing-key.toml: unknown keys %v, want [daemon.scan_on_grow]", unknown)
	}
	defaults, err := commentedKeys(shippedFile)
	if err != nil {
		t.Fatal(err)
	}
	problems, err := missingFromDocs(keys, defaults, "testdata/docs-missing-key.md")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"no row for daemon.poll", "no row for log.level", "row for snapshot.v4_prefix does not show the default `24`", "row for unknown key log.colour"}
	var other []string
	for _, p := range problems {
		if !slices.Contains(want, p) && !strings.HasPrefix(p, "no row for ") {
			other = append(other, p)
		}
	}
	for _, w := range want {
		if !slices.Contains(problems, w) {
			t.Errorf("docs-missing-key.md: checker did not report %q (got %q)", w, problems)
		}
	}
	if len(other) > 0 {
		t.Errorf("docs-missing-key.md: unexpected problems %q", other)
	}
	if _, err := configKeys(reflect.TypeFor[struct {
		A int `toml:"a"`
		B int
	}](), ""); err == nil {
		t.Error("configKeys accepted a field without a toml tag")
	}
}

func TestShippedFileIsTheDefaults(t *testing.T) {
	c, err := Load(shippedFile)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("Load(%s) =\n%+v\nwant Default() =\n%+v", shippedFile, c, Default())
	}
}

// Uncommenting every key must still give the defaults: the values in the
// comments are the real ones, not stale copies.
func TestShippedCommentsShowTheDefaults(t *testing.T) {
	b, err := os.ReadFile(shippedFile)
	if err != nil {
		t.Fatal(err)
	}
	on := regexp.MustCompile(`(?m)^# ([a-z0-9_]+ = )`).ReplaceAll(b, []byte("$1"))
	p := filepath.Join(t.TempDir(), "uncommented.toml")
	if err := os.WriteFile(p, on, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(p)
	if err != nil {
		t.Fatalf("the shipped file with every key uncommented: %v", err)
	}
	nilEmptySlices(reflect.ValueOf(&c).Elem())
	if !reflect.DeepEqual(c, Default()) {
		t.Errorf("the shipped file with every key uncommented loads as\n%+v\nwant Default() =\n%+v", c, Default())
	}
}

// nilEmptySlices turns empty slices into nil ones: `addresses = []` in the
// file decodes to an empty slice where the default is nil, which is the
// same configuration.
func nilEmptySlices(v reflect.Value) {
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				nilEmptySlices(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Len() == 0 && !v.IsNil() {
			v.Set(reflect.Zero(v.Type()))
		}
	}
}
