package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDebVersion(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.3":                  "1.2.3-1",
		"1.2.3":                   "1.2.3-1",
		"v1.2.3-rc.1":             "1.2.3~rc.1-1",
		"v1.2.3-4-gabcdef0":       "1.2.3+git4.gabcdef0-1",
		"v1.2.3-rc1-4-gabcdef0":   "1.2.3~rc1+git4.gabcdef0-1",
		"v1.2.3-4-gabcdef0-dirty": "1.2.3+git4.gabcdef0+dirty-1",
		"e8d8b5f":                 "0.0.0~gite8d8b5f-1",
		"1234567":                 "0.0.0~git1234567-1",
		"e8d8b5f-dirty":           "0.0.0~gite8d8b5f+dirty-1",
		"dev":                     "0.0.0~dev-1",
	} {
		got, err := debVersion(in)
		if err != nil || got != want {
			t.Errorf("debVersion(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-dirty", "release_1", "v1.2.3 4", "vX"} {
		if got, err := debVersion(bad); err == nil {
			t.Errorf("debVersion(%q) = %q, want an error", bad, got)
		}
	}
}

func TestGoArchToDeb(t *testing.T) {
	for _, c := range []struct{ goarch, goarm, want string }{
		{"amd64", "", "amd64"}, {"arm64", "", "arm64"}, {"386", "", "i386"},
		{"arm", "7", "armhf"}, {"arm", "", "armhf"}, {"arm", "6", "armel"}, {"ppc64le", "", "ppc64el"},
	} {
		if got, err := goArchToDeb(c.goarch, c.goarm); err != nil || got != c.want {
			t.Errorf("goArchToDeb(%q, %q) = %q, %v; want %q", c.goarch, c.goarm, got, err, c.want)
		}
	}
	if _, err := goArchToDeb("wasm", ""); err == nil {
		t.Error("goArchToDeb(wasm) gave no error")
	}
}

// Lintian wants man pages and changelogs compressed at the highest level,
// without a name or a time stamp.
func TestGzipIsReproducible(t *testing.T) {
	data := []byte(strings.Repeat("ctguard\n", 100))
	a, b := gz(data), gz(data)
	if !bytes.Equal(a, b) {
		t.Fatal("two compressions of the same data differ")
	}
	if a[8] != 2 { // XFL: maximum compression
		t.Errorf("XFL = %d, want 2 (best compression)", a[8])
	}
	r, err := gzip.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	if !r.ModTime.IsZero() || r.Name != "" {
		t.Errorf("gzip header has mtime %v, name %q", r.ModTime, r.Name)
	}
	got, _ := io.ReadAll(r)
	if !bytes.Equal(got, data) {
		t.Error("round trip changed the data")
	}
}

func TestDebUnit(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "u.service")
	unit := "# make install: /usr/local/sbin/ctguard\n[Unit]\nDescription=x\n\n[Service]\nExecStartPre=/usr/local/sbin/ctguard config check /etc/ctguard/ctguard.toml\nExecStart=/usr/local/sbin/ctguard run --config /etc/ctguard/ctguard.toml\n"
	os.WriteFile(p, []byte(unit), 0o644)
	out, err := debUnit(p)
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, want := range []string{
		"ExecStart=/usr/sbin/ctguard run ", "ExecStartPre=/usr/sbin/ctguard config check ",
		"Description=x\nDocumentation=man:ctguard(8)", "# make install: /usr/local/sbin/ctguard\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("unit lacks %q:\n%s", want, s)
		}
	}
	os.WriteFile(p, []byte("[Service]\nExecStart=/usr/bin/other\n"), 0o644)
	if _, err := debUnit(p); err == nil {
		t.Error("a unit without ExecStart=/usr/local/sbin/ctguard gave no error")
	}
	os.WriteFile(p, []byte("[Unit]\nDescription=x\n[Service]\nExecStart=/usr/local/sbin/ctguard run\nReadWritePaths=/usr/local/var\n"), 0o644)
	if _, err := debUnit(p); err == nil {
		t.Error("a unit still naming /usr/local/ gave no error")
	}
}

func TestListManPagesNeedsPages(t *testing.T) {
	dir := t.TempDir()
	if _, err := listManPages(dir); err == nil || !strings.Contains(err.Error(), "make man") {
		t.Errorf("empty man dir: err = %v, want one that says to run make man", err)
	}
	os.WriteFile(filepath.Join(dir, "ctguard-run.8"), []byte(".TH x"), 0o644)
	if _, err := listManPages(dir); err == nil {
		t.Error("a man dir without ctguard.8 gave no error")
	}
	os.WriteFile(filepath.Join(dir, "ctguard.8"), []byte(".TH x"), 0o644)
	if pages, err := listManPages(dir); err != nil || len(pages) != 2 {
		t.Errorf("listManPages = %v, %v", pages, err)
	}
}

func TestClassify(t *testing.T) {
	for text, want := range map[string]string{
		"Apache License\nVersion 2.0, January 2004":                                             "Apache-2.0",
		"Permission is hereby granted, free of charge, to any person":                           "Expat",
		"Redistribution and use in source and binary forms ... Neither the name of Google":      "BSD-3-clause",
		"Redistribution and use in source and binary forms ...":                                 "BSD-2-clause",
		"MIT part: Permission is hereby granted, free of charge ... Apache License Version 2.0": "Apache-2.0 Expat",
		"some other terms": "",
	} {
		if got := strings.Join(classify(text), " "); got != want {
			t.Errorf("classify(%q) = %q, want %q", text, got, want)
		}
	}
}
