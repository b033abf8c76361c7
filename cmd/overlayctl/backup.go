package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

func backupCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "backup FILE",
		Short: "Write a consistent copy of the state file to FILE while the daemon serves",
		Long: `backup asks the daemon to copy its state file (one read transaction: every
change committed before it and none after) to FILE, while it keeps serving.
The daemon writes FILE itself, mode 0600, owned by its user (root): the state
holds the node's private keys. Only root and the daemon's user may ask.
FILE's directory must exist and be writable by root alone (not /tmp); an
existing FILE is replaced only when it is an earlier backup.

To restore: stop the daemon, copy FILE over <data-dir>/overlayd.db (mode
0600), start the daemon. See docs/operations.md, "Backup and restore".`,
		Args: exactArgs(1, "one argument, the file to write"),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The daemon's working directory is not ours: a relative
			// FILE means relative to where overlayctl runs.
			path, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			ctx, cancel, c, err := g.dial()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			resp, err := c.Call(ctx, protocol.Backup{Path: path})
			if err != nil {
				return err
			}
			done, ok := resp.(protocol.BackupDone)
			if !ok {
				return fmt.Errorf("backup answered %s; is the daemon older than this overlayctl?", resp.Result())
			}
			fmt.Fprintf(g.stdout, "wrote %s (%s), a consistent copy of the daemon's state file\n", done.Path, humanBytes(uint64(done.Bytes)))
			return nil
		},
	}
}
