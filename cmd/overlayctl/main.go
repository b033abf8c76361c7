// Command overlayctl is the operator's window into zlayer-overlayd: the
// overlay at a glance (status), its peers, services, containers and DNS
// names as tables, a diagnosis (doctor), a hot backup of the state file,
// a live event stream, raw requests, and shell completion.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a command line that cannot be run as given: exit status 2.
type usageError struct{ error }

// quietError has already been reported (doctor's findings): exit status 1
// without another line.
type quietError struct{ error }

// globals are the flags every command takes.
type globals struct {
	socket  string
	dataDir string
	timeout time.Duration
	stdout  io.Writer
	stderr  io.Writer
}

// path is the daemon's socket: --socket, else derived from --data-dir as
// the daemon does, else the default.
func (g *globals) path() string {
	switch {
	case g.socket != "":
		return g.socket
	case g.dataDir != "":
		return client.SocketFor(g.dataDir)
	}
	return client.DefaultSocket()
}

// dial connects within the timeout; ctx bounds the whole command.
func (g *globals) dial() (context.Context, context.CancelFunc, *client.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	c, err := connect(ctx, g.path())
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return ctx, cancel, c, nil
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "overlayctl",
		Short: "Look into and look after zlayer-overlayd",
		Long: `overlayctl talks to the zlayer-overlayd of this node over its socket.

Without --socket or --data-dir it uses the paths the ZLayer main daemon
expects ($ZLAYER_DATA_DIR, else /var/lib/zlayer with the socket at
/var/run/zlayer-overlayd.sock as root).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SetOut(stderr)
			cmd.Usage()
			return usageError{errors.New("a command is needed")}
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.socket, "socket", "", "daemon socket (default: derived from --data-dir like the daemon does)")
	pf.StringVar(&g.dataDir, "data-dir", "", "the daemon's --data-dir, to find its default socket")
	pf.DurationVar(&g.timeout, "timeout", 10*time.Second, "how long to wait for the daemon")
	root.MarkPersistentFlagDirname("data-dir")

	root.AddGroup(&cobra.Group{ID: "look", Title: "Looking:"}, &cobra.Group{ID: "care", Title: "Looking after:"})
	for _, c := range []*cobra.Command{statusCmd(g), peersCmd(g), servicesCmd(g), containersCmd(g), dnsCmd(g), watchCmd(g)} {
		c.GroupID = "look"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{doctorCmd(g), backupCmd(g), callCmd(g), helloCmd(g)} {
		c.GroupID = "care"
		root.AddCommand(c)
	}
	return root
}

func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	var usage usageError
	var quiet quietError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &quiet):
		return 1
	case errors.As(err, &usage), strings.HasPrefix(err.Error(), "unknown command"), strings.HasPrefix(err.Error(), "unknown flag"):
		fmt.Fprintln(stderr, "overlayctl:", err)
		fmt.Fprintln(stderr, "see overlayctl --help")
		return 2
	default:
		fmt.Fprintln(stderr, "overlayctl:", err)
		return 1
	}
}

// exactArgs is cobra.ExactArgs as a usage error.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError{fmt.Errorf("%s takes %s", cmd.Name(), what)}
		}
		return nil
	}
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", cmd.Name(), strings.Join(args, " "))}
	}
	return nil
}

// connect fails fast with a useful message when nobody listens, instead of
// retrying for the whole timeout.
func connect(ctx context.Context, path string) (*client.Client, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("zlayer-overlayd is not running (no socket at %s); start it, or pass --socket / --data-dir", path)
	} else if err != nil {
		return nil, fmt.Errorf("cannot reach the socket: %w (run as root, the daemon's user, or a member of group zlayer)", err)
	}
	return client.Dial(ctx, path)
}

// status reads the daemon's status.
func (g *globals) status() (protocol.StatusSnapshot, error) {
	ctx, cancel, c, err := g.dial()
	if err != nil {
		return protocol.StatusSnapshot{}, err
	}
	defer cancel()
	defer c.Close()
	return c.Status(ctx)
}

// printJSON writes v indented, as kubectl -o json does.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func callCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "call REQUEST",
		Short: `Send one request, e.g. '{"op":"status"}', and print the response`,
		Args:  exactArgs(1, `one argument, the request object, e.g. '{"op":"status"}'`),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call([]byte(args[0]))
		},
	}
}

func helloCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "hello",
		Short: "Show the daemon's protocol version and features",
		Args:  noArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return g.call([]byte(`{"op":"hello"}`)) },
	}
}

func (g *globals) call(req []byte) error {
	if !json.Valid(req) {
		return errors.New("the request is not valid JSON")
	}
	ctx, cancel, c, err := g.dial()
	if err != nil {
		return err
	}
	defer cancel()
	defer c.Close()
	resp, err := c.DoRaw(ctx, req)
	if err != nil {
		return err
	}
	b, err := protocol.MarshalResponse(resp)
	if err != nil {
		return err
	}
	fmt.Fprintln(g.stdout, string(b))
	if e, ok := resp.(protocol.Err); ok {
		return fmt.Errorf("the daemon answered err: %s", e.Message)
	}
	return nil
}

func statusCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the overlay: device, addresses, peers, services, containers",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.status()
			if err != nil {
				return err
			}
			if asJSON {
				b, err := protocol.MarshalResponse(protocol.StatusResult{StatusSnapshot: s})
				if err != nil {
					return err
				}
				fmt.Fprintln(g.stdout, string(b))
				return nil
			}
			printStatus(g.stdout, s, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status result as JSON (the wire form)")
	return cmd
}

func printStatus(w io.Writer, s protocol.StatusSnapshot, now time.Time) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	row := func(k string, v any) {
		if str := fmt.Sprint(v); str != "" && str != "0" && str != "invalid IP" {
			fmt.Fprintf(tw, "%s\t%s\n", k, str)
		}
	}
	row("version", s.Version)
	row("node id", s.NodeID)
	row("interface", s.Interface)
	row("backend", s.WGBackend)
	row("node ip", s.NodeIP)
	row("public key", s.PublicKey)
	row("key source", s.KeySource)
	if s.PubkeyMismatch {
		row("WARNING", "the key set with set_local_wg_pubkey ("+s.ExpectedPubkey+") is not the device's key")
	}
	row("listen port", s.WGPort)
	row("cluster cidr", s.OverlayCIDR)
	row("node slice", s.SliceCIDR)
	if s.SlicePool != nil {
		row("slice use", fmt.Sprintf("%d used, %d free", s.SlicePool.Used, s.SlicePool.Free))
	}
	row("mtu", s.MTU)
	fmt.Fprintf(tw, "peers\t%d\n", s.PeerCount)
	fmt.Fprintf(tw, "services\t%d\n", s.ServiceCount)
	if s.DNS != nil {
		row("dns zone", s.DNS.Zone)
		row("dns listeners", strings.Join(s.DNS.Listeners, " "))
		if s.DNS.Delegated {
			row("dns role", "serving the main daemon's addresses too (delegated)")
		}
		fmt.Fprintf(tw, "dns records\t%d\n", s.DNS.Records)
	}
	if s.NAT != nil {
		row("nat reflexive", strings.Join(s.NAT.ReflexiveAddrs, " "))
		row("nat behaviour", s.NAT.Behaviour)
	}
	if s.LastReconcile > 0 {
		row("last reconcile", ago(now, s.LastReconcile))
	}
	row("events dropped", s.EventsDropped)
	for _, w := range s.Warnings {
		row("warning", w)
	}
	tw.Flush()

	if peers := allPeers(s); len(peers) > 0 {
		fmt.Fprintln(w)
		printPeers(w, peers, now)
	}
	if len(s.Services) > 0 {
		fmt.Fprintln(w)
		printServices(w, s)
	}
	if len(s.Attachments)+len(s.Guests) > 0 {
		fmt.Fprintln(w)
		printContainers(w, containersOf(s))
	}
}

func watchCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Print events as the daemon pushes them (Ctrl-C to stop)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, cancel, c, err := g.dial()
			if err != nil {
				return err
			}
			cancel() // the timeout bounds connecting; the stream runs until Ctrl-C
			defer c.Close()
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
			defer signal.Stop(sigs)
			fmt.Fprintf(g.stderr, "watching %s for events (Ctrl-C to stop)\n", g.path())
			for {
				select {
				case <-sigs:
					return nil
				case ev, ok := <-c.Events():
					if !ok {
						return nil
					}
					if err := printEvent(g.stdout, ev, asJSON); err != nil {
						return err
					}
				}
			}
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each event as its JSON frame")
	return cmd
}

func printEvent(w io.Writer, ev protocol.Event, asJSON bool) error {
	if asJSON {
		b, err := protocol.MarshalFrame(protocol.EventFrame(ev))
		if err != nil {
			return err
		}
		fmt.Fprintln(w, string(b))
		return nil
	}
	ts := time.Now().Format(time.RFC3339)
	switch e := ev.(type) {
	case protocol.PeerHealthChanged:
		fmt.Fprintf(w, "%s peer_health_changed pubkey=%s healthy=%t\n", ts, e.Pubkey, e.Healthy)
	case protocol.NATEndpointChanged:
		fmt.Fprintf(w, "%s nat_endpoint_changed pubkey=%s endpoint=%s\n", ts, e.Pubkey, e.Endpoint)
	default:
		b, _ := json.Marshal(ev)
		fmt.Fprintf(w, "%s %s %s\n", ts, ev.Name(), b)
	}
	return nil
}
