package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/zlayer/zlayer-overlayd/internal/doctor"
)

func doctorCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check what usually breaks a node and say what to do (exit status 1 when something is wrong)",
		Long: `doctor checks, read-only: the daemon answers and has restored its state; the
kernel has WireGuard (or TUN), bridges and nftables; IP forwarding is on;
reverse-path filtering is not strict on our interfaces; no forward chain
outside our nftables table (Docker's FORWARD policy DROP, in nftables or
iptables-legacy) drops our bridges' traffic; MTUs fit between the overlay,
the bridges and the underlay path to every peer; DNS answers on every bridge
gateway; every peer has a recent handshake, and why not.

Run it as root inside the node's network namespace (where the daemon runs).
It exits 1 when a check fails, 0 otherwise (warnings included).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			in := doctor.Inputs{Socket: g.path(), Host: doctor.NewHost(), Now: time.Now()}
			in.Status, in.StatusErr = g.status()
			ctx, cancel := context.WithTimeout(context.Background(), g.timeout+30*time.Second)
			defer cancel()
			rep := doctor.Run(ctx, in)
			if asJSON {
				if err := printJSON(g.stdout, rep); err != nil {
					return err
				}
			} else {
				printReport(g.stdout, rep)
			}
			if rep.Failed() {
				return quietError{fmt.Errorf("doctor found problems")}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the results as JSON")
	return cmd
}

var marks = map[doctor.Status]string{doctor.OK: "ok", doctor.Warn: "WARN", doctor.Fail: "FAIL", doctor.Skip: "skip"}

func printReport(w io.Writer, rep doctor.Report) {
	failed, warned := 0, 0
	table(w, "STATUS\tCHECK\tFINDING", func(tw io.Writer) {
		for _, r := range rep.Results {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", marks[r.Status], r.Check, r.Message)
			if r.Fix != "" && (r.Status == doctor.Fail || r.Status == doctor.Warn) {
				fmt.Fprintf(tw, "\t\tfix: %s\n", r.Fix)
			}
			switch r.Status {
			case doctor.Fail:
				failed++
			case doctor.Warn:
				warned++
			}
		}
	})
	var sum []string
	if failed > 0 {
		sum = append(sum, plural(failed, "problem"))
	}
	if warned > 0 {
		sum = append(sum, plural(warned, "warning"))
	}
	if len(sum) == 0 {
		fmt.Fprintln(w, "\nno problems found")
		return
	}
	fmt.Fprintf(w, "\n%s found\n", strings.Join(sum, " and "))
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
