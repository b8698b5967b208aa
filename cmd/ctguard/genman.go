package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// genManCommand writes the man pages (section 8) of the whole command tree
// into a directory: `make man` runs it. Hidden: it is for packaging.
func genManCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "gen-man DIR",
		Short:  "write the man pages of every command into DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("man pages: %w", err)
			}
			hdr := &doc.GenManHeader{Section: "8", Source: "ctguard " + version, Manual: "System Administration"}
			opts := doc.GenManTreeOptions{Header: hdr, Path: dir, CommandSeparator: "-"}
			if err := doc.GenManTreeFromOpts(cmd.Root(), opts); err != nil {
				return fmt.Errorf("man pages in %s: %w", dir, err)
			}
			return nil
		},
	}
}
