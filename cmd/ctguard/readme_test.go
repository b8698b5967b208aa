package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// The README's package map lists every package of the module, and nothing
// else.
func TestReadmePackageMap(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, m := range regexp.MustCompile("(?m)^  \\| `([a-z0-9/_]+)` \\|").FindAllStringSubmatch(string(b), -1) {
		listed = append(listed, m[1])
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	cmd := exec.Command(gobin, "list", "./...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []string
	for _, l := range strings.Fields(string(out)) {
		pkgs = append(pkgs, strings.TrimPrefix(l, "github.com/ctguard/ctguard/"))
	}
	slices.Sort(listed)
	slices.Sort(pkgs)
	if !slices.Equal(listed, pkgs) {
		t.Fatalf("README package map %v\ngo list ./...      %v", listed, pkgs)
	}
}

// The README's command table lists exactly the binary's commands.
func TestReadmeCommandList(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	i := strings.Index(text, "## Commands")
	if i < 0 {
		t.Fatal("README has no Commands section")
	}
	sec := text[i+len("## Commands"):]
	if j := strings.Index(sec, "\n## "); j >= 0 {
		sec = sec[:j]
	}
	var listed []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z]+)` \\|").FindAllStringSubmatch(sec, -1) {
		listed = append(listed, m[1])
	}
	// The command tree as the user sees it (help lists the same).
	var want []string
	root := newRoot(&env{stdout: io.Discard, stderr: io.Discard})
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.IsAvailableCommand() && c.Name() != "help" {
			want = append(want, c.Name())
		}
	}
	slices.Sort(listed)
	slices.Sort(want)
	if !slices.Equal(listed, want) {
		t.Fatalf("README commands %v\nbinary's commands %v", listed, want)
	}
}
