// Command overlayctl is the operator's window into zlayer-overlayd: status,
// a live event stream, and raw requests.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/zlayer/zlayer-overlayd/client"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

const usage = `usage: overlayctl [--socket PATH | --data-dir DIR] [--timeout D] COMMAND

commands:
  status [--json]        show the overlay (a table, or the raw status result)
  watch [--json]         print events as the daemon pushes them (Ctrl-C to stop)
  call '<request json>'  send one request, e.g. '{"op":"status"}', print the response
  hello                  show the daemon's protocol version and features
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("overlayctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	socket := fs.String("socket", "", "daemon socket (default: derived from --data-dir like the daemon does)")
	dataDir := fs.String("data-dir", "", "the daemon's --data-dir, to find its default socket")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the daemon")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	path := *socket
	if path == "" {
		if *dataDir != "" {
			path = client.SocketFor(*dataDir)
		} else {
			path = client.DefaultSocket()
		}
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	var err error
	switch cmd {
	case "status":
		err = cmdStatus(path, *timeout, rest, stdout)
	case "watch":
		err = cmdWatch(path, *timeout, rest, stdout)
	case "call":
		err = cmdCall(path, *timeout, rest, stdout)
	case "hello":
		err = cmdCall(path, *timeout, []string{`{"op":"hello"}`}, stdout)
	default:
		fmt.Fprintf(stderr, "overlayctl: unknown command %q\n", cmd)
		fs.Usage()
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "overlayctl:", err)
		return 1
	}
	return 0
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

func cmdCall(path string, timeout time.Duration, args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return errors.New(`call takes one argument, the request object, e.g. '{"op":"status"}'`)
	}
	req := []byte(args[0])
	if !json.Valid(req) {
		return errors.New("the request is not valid JSON")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := connect(ctx, path)
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.DoRaw(ctx, req)
	if err != nil {
		return err
	}
	b, err := protocol.MarshalResponse(resp)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, string(b))
	if e, ok := resp.(protocol.Err); ok {
		return fmt.Errorf("the daemon answered err: %s", e.Message)
	}
	return nil
}

func cmdStatus(path string, timeout time.Duration, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the status result as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := connect(ctx, path)
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		b, err := protocol.MarshalResponse(protocol.StatusResult{StatusSnapshot: s})
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, string(b))
		return nil
	}
	printStatus(stdout, s, time.Now())
	return nil
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
	row("events dropped", s.EventsDropped)
	for _, w := range s.Warnings {
		row("warning", w)
	}
	tw.Flush()

	if len(s.Peers) > 0 {
		table(w, "PEER\tENDPOINT\tALLOWED IPS\tHANDSHAKE\tHEALTHY\tRX\tTX", func(tw io.Writer) {
			for _, p := range s.Peers {
				hs := "never"
				if p.LastHandshakeUnixSecs > 0 {
					hs = now.Sub(time.Unix(p.LastHandshakeUnixSecs, 0)).Truncate(time.Second).String() + " ago"
				}
				healthy := "-"
				if p.Healthy != nil {
					healthy = fmt.Sprint(*p.Healthy)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", p.PublicKey, p.Endpoint, p.AllowedIPs, hs, healthy, p.RxBytes, p.TxBytes)
			}
		})
	}
	if len(s.Services) > 0 {
		table(w, "SERVICE\tMODE\tDEVICE\tSUBNET\tGATEWAY\tUSED\tFREE", func(tw io.Writer) {
			for _, sv := range s.Services {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", sv.Service, sv.Mode, sv.Bridge, sv.Subnet, sv.Gateway, sv.Used, sv.Free)
			}
		})
	}
	if len(s.Attachments) > 0 {
		table(w, "CONTAINER\tSERVICE\tIP\tGLOBAL IP\tHOST LINK", func(tw io.Writer) {
			for _, a := range s.Attachments {
				gip := "-"
				if a.GlobalIP.IsValid() {
					gip = a.GlobalIP.String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", a.Handle, a.Service, a.IP, gip, a.HostLink)
			}
		})
	}
	if len(s.DedicatedServices) > 0 {
		table(w, "DEDICATED\tINTERFACE\tPORT\tOVERLAY IP\tSUBNET\tPEERS\tPUBLIC KEY", func(tw io.Writer) {
			for _, d := range s.DedicatedServices {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%s\n", d.Service, d.Interface, d.ListenPort, d.OverlayIP, d.Subnet, d.PeerCount, d.PublicKey)
			}
		})
	}
}

// table prints one section of the status: a blank line, then header and
// the rows rows writes, aligned in columns.
func table(w io.Writer, header string, rows func(tw io.Writer)) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	rows(tw)
	tw.Flush()
}

func cmdWatch(path string, timeout time.Duration, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print each event as its JSON frame")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	c, err := connect(ctx, path)
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	fmt.Fprintf(os.Stderr, "watching %s for events (Ctrl-C to stop)\n", path)
	for {
		select {
		case <-sigs:
			return nil
		case ev, ok := <-c.Events():
			if !ok {
				return nil
			}
			if *asJSON {
				b, err := protocol.MarshalFrame(protocol.EventFrame(ev))
				if err != nil {
					return err
				}
				fmt.Fprintln(stdout, string(b))
				continue
			}
			ts := time.Now().Format(time.RFC3339)
			switch e := ev.(type) {
			case protocol.PeerHealthChanged:
				fmt.Fprintf(stdout, "%s peer_health_changed pubkey=%s healthy=%t\n", ts, e.Pubkey, e.Healthy)
			case protocol.NATEndpointChanged:
				fmt.Fprintf(stdout, "%s nat_endpoint_changed pubkey=%s endpoint=%s\n", ts, e.Pubkey, e.Endpoint)
			default:
				b, _ := json.Marshal(ev)
				fmt.Fprintf(stdout, "%s %s %s\n", ts, ev.Name(), b)
			}
		}
	}
}
