package config

import (
	"strings"
	"testing"
)

// config check reports every problem at once, each with its line, and
// suggests the key an unknown one was probably meant to be.
func TestCheckReportsEverything(t *testing.T) {
	text := `[daemon]
pol = "1s"
interval = ["1s", "5s", "2s", "1s"]

[policy]
high_fill = 2.0

[policy.weights]
idel = 1.0

[allow]
addresses = ["192.0.2.1/24"]
`
	got := check([]byte(text))
	want := []string{
		"line 2: unknown key daemon.pol (did you mean daemon.poll?)",
		"line 3: daemon.interval = [1s 5s 2s 1s]: want it to shorten",
		"line 6: policy.high_fill = 2",
		"line 9: unknown key policy.weights.idel (did you mean policy.weights.idle?)",
		"line 12: allow.addresses: \"192.0.2.1/24\" has host bits set",
	}
	var lines []string
	for _, p := range got {
		lines = append(lines, p.String())
	}
	all := strings.Join(lines, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("missing %q in:\n%s", w, all)
		}
	}
	// The threshold array has 3 elements where 4 are wanted: a decode
	// error, which stops the parser.
	if p := check([]byte("[policy]\nthreshold = [100, 60, 30]\n")); len(p) != 1 || p[0].Line != 2 {
		t.Errorf("short threshold array: %v", p)
	}
	if p := check([]byte("[daemon]\npoll = \"500ms\"\n")); len(p) != 0 {
		t.Errorf("a valid file: %v", p)
	}
}

func TestEditDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		d    int
	}{{"poll", "pol", 1}, {"idle", "idel", 2}, {"", "abc", 3}, {"same", "same", 0}} {
		if d := editDistance(c.a, c.b); d != c.d {
			t.Errorf("%q %q: %d, want %d", c.a, c.b, d, c.d)
		}
	}
}
