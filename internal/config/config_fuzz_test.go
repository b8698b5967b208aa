package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: no config file, however broken, panics; what parses is valid
// (or says which key is not).
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("..", "..", "packaging", "ctguard.toml")); err == nil {
		f.Add(b)
	}
	f.Add([]byte("[daemon]\ninterval = [\"30s\", \"5s\", \"2s\", \"1s\"]\nclose_sockets = false\n"))
	f.Add([]byte("[allow]\naddresses = [\"192.0.2.0/24\", \"2001:db8::1\"]\n"))
	f.Add([]byte("[policy]\ngrowth_window = \"-1s\"\n"))
	f.Add([]byte("[daemon\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parse("fuzz.toml", b)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("parsed but invalid: %v", verr)
			}
		}
	})
}
