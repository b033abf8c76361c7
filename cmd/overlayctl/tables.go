package main

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/zlayer/zlayer-overlayd/internal/doctor"
	"github.com/zlayer/zlayer-overlayd/protocol"
)

// Peer is one WireGuard peer as `overlayctl peers --json` prints it: the
// status fields, with the device it belongs to.
type Peer struct {
	// Scope is "global", or "service:<name>" for a dedicated overlay.
	Scope string `json:"scope"`
	protocol.PeerStatus
}

func allPeers(s protocol.StatusSnapshot) []Peer {
	var out []Peer
	for _, p := range s.Peers {
		out = append(out, Peer{Scope: "global", PeerStatus: p})
	}
	for _, sp := range s.ServicePeers {
		for _, p := range sp.Peers {
			out = append(out, Peer{Scope: "service:" + sp.Service, PeerStatus: p})
		}
	}
	return out
}

// table writes a header and rows aligned in columns, the way `wg show` and
// `tailscale status` line theirs up.
func table(w io.Writer, header string, rows func(tw io.Writer)) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	rows(tw)
	tw.Flush()
}

// ago is "12s ago", "3m4s ago", "never".
func ago(now time.Time, unix int64) string {
	if unix == 0 {
		return "never"
	}
	return doctor.Age(now, unix) + " ago"
}

// humanBytes is bytes in IEC units, as `wg show` prints transfer.
func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatUint(n, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func health(p protocol.PeerStatus) string {
	switch {
	case p.Healthy == nil:
		return "-"
	case *p.Healthy:
		return "healthy"
	}
	return "unhealthy"
}

func printPeers(w io.Writer, peers []Peer, now time.Time) {
	table(w, "PEER\tSCOPE\tENDPOINT\tALLOWED IPS\tHANDSHAKE\tRX\tTX\tHEALTH", func(tw io.Writer) {
		for _, p := range peers {
			ep := p.Endpoint
			switch {
			case ep == "":
				ep = "(none)"
			case p.EndpointLearned:
				ep += " (learned)"
			}
			ips := p.AllowedIPs
			if ips == "" {
				ips = "(none)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.PublicKey, p.Scope, ep, strings.ReplaceAll(ips, ",", ", "),
				ago(now, p.LastHandshakeUnixSecs), humanBytes(p.RxBytes), humanBytes(p.TxBytes), health(p.PeerStatus))
		}
	})
}

func printServices(w io.Writer, s protocol.StatusSnapshot) {
	dedicated := map[string]protocol.DedicatedServiceStatus{}
	for _, d := range s.DedicatedServices {
		dedicated[d.Service] = d
	}
	table(w, "SERVICE\tMODE\tBRIDGE\tSUBNET\tGATEWAY\tUSED\tFREE\tDEVICE", func(tw io.Writer) {
		for _, sv := range s.Services {
			subnet := strings.Join(append([]string{sv.Subnet}, sv.Ranges...), ", ")
			dev := "-"
			if d, ok := dedicated[sv.Service]; ok {
				dev = fmt.Sprintf("%s :%d (%d peers)", d.Interface, d.ListenPort, d.PeerCount)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", sv.Service, sv.Mode, dash(sv.Bridge), subnet, addr(sv.Gateway), sv.Used, sv.Free, dev)
		}
	})
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func addr(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

// Container is one attachment as `overlayctl containers --json` prints
// it: a container (a handle) or a VM guest (an id and its key).
type Container struct {
	Kind      string                 `json:"kind"` // "container" or "guest"
	Handle    *protocol.AttachHandle `json:"handle,omitempty"`
	GuestID   string                 `json:"guest_id,omitempty"`
	Service   string                 `json:"service,omitempty"`
	IP        netip.Addr             `json:"ip"`
	GlobalIP  netip.Addr             `json:"global_ip,omitzero"`
	HostLink  string                 `json:"host_link,omitempty"`
	PublicKey string                 `json:"public_key,omitempty"`
}

func containersOf(s protocol.StatusSnapshot) []Container {
	var out []Container
	for _, a := range s.Attachments {
		h := a.Handle
		out = append(out, Container{Kind: "container", Handle: &h, Service: a.Service, IP: a.IP, GlobalIP: a.GlobalIP, HostLink: a.HostLink})
	}
	for _, g := range s.Guests {
		out = append(out, Container{Kind: "guest", GuestID: g.ID, Service: g.Service, IP: g.IP, PublicKey: g.PublicKey})
	}
	return out
}

// handleColumns is what identifies an attachment: its platform, and its
// PID (Linux), container id (Windows) or guest id.
func handleColumns(c Container) (platform, id string) {
	if c.Handle == nil {
		return protocol.PlatformGuestManaged, c.GuestID
	}
	h := *c.Handle
	switch h.Platform {
	case protocol.PlatformLinuxPID:
		return h.Platform, strconv.FormatUint(uint64(h.PID), 10)
	case protocol.PlatformWindowsContainer:
		return h.Platform, h.ContainerID
	case protocol.PlatformGuestManaged:
		return h.Platform, h.ID
	}
	s := h.String()
	if rest, ok := strings.CutPrefix(s, h.Platform+":"); ok {
		return h.Platform, rest
	}
	return h.Platform, "-"
}

func printContainers(w io.Writer, cs []Container) {
	table(w, "PID/ID\tPLATFORM\tSERVICE\tIP\tGLOBAL IP\tHOST LINK", func(tw io.Writer) {
		for _, c := range cs {
			platform, id := handleColumns(c)
			link := c.HostLink
			if c.Kind == "guest" {
				link = "wireguard " + doctorShort(c.PublicKey)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", id, platform, dash(c.Service), addr(c.IP), addr(c.GlobalIP), dash(link))
		}
	})
}

func doctorShort(key string) string {
	if len(key) > 10 {
		return key[:10] + "…"
	}
	return key
}

// listCmd builds a command that prints one part of the status as a table,
// or as JSON with --json.
func listCmd(g *globals, use, short string, pick func(protocol.StatusSnapshot) any, print func(io.Writer, protocol.StatusSnapshot, time.Time)) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.status()
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(g.stdout, pick(s))
			}
			print(g.stdout, s, time.Now())
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

func peersCmd(g *globals) *cobra.Command {
	return listCmd(g, "peers", "List WireGuard peers: endpoint, allowed IPs, last handshake, traffic, health",
		func(s protocol.StatusSnapshot) any { return nonNil(allPeers(s)) },
		func(w io.Writer, s protocol.StatusSnapshot, now time.Time) {
			peers := allPeers(s)
			if len(peers) == 0 {
				fmt.Fprintln(w, "no peers")
				return
			}
			printPeers(w, peers, now)
		})
}

func servicesCmd(g *globals) *cobra.Command {
	return listCmd(g, "services", "List service overlays: mode, bridge, subnet, gateway, address use",
		func(s protocol.StatusSnapshot) any { return nonNil(s.Services) },
		func(w io.Writer, s protocol.StatusSnapshot, _ time.Time) {
			if len(s.Services) == 0 {
				fmt.Fprintln(w, "no services")
				return
			}
			printServices(w, s)
		})
}

func containersCmd(g *globals) *cobra.Command {
	return listCmd(g, "containers", "List attached containers and VM guests: PID, service, addresses, host link",
		func(s protocol.StatusSnapshot) any { return nonNil(containersOf(s)) },
		func(w io.Writer, s protocol.StatusSnapshot, _ time.Time) {
			cs := containersOf(s)
			if len(cs) == 0 {
				fmt.Fprintln(w, "no containers")
				return
			}
			printContainers(w, cs)
		})
}

// nonNil makes an empty list print as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func dnsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "dns",
		Short: "List the names of the cluster zone and their addresses",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel, c, err := g.dial()
			if err != nil {
				return err
			}
			defer cancel()
			defer c.Close()
			resp, err := c.Call(ctx, protocol.ListDNS{})
			if err != nil {
				return err
			}
			recs, ok := resp.(protocol.DNSRecords)
			if !ok {
				return fmt.Errorf("list_dns answered %s; is the daemon older than this overlayctl?", resp.Result())
			}
			if asJSON {
				return printJSON(g.stdout, protocol.DNSRecords{Zone: recs.Zone, Records: nonNil(recs.Records)})
			}
			if len(recs.Records) == 0 {
				fmt.Fprintf(g.stdout, "no names in zone %s\n", recs.Zone)
				return nil
			}
			table(g.stdout, "NAME\tADDRESSES", func(tw io.Writer) {
				for _, r := range recs.Records {
					ips := make([]string, len(r.IPs))
					for i, ip := range r.IPs {
						ips[i] = ip.String()
					}
					fmt.Fprintf(tw, "%s\t%s\n", r.Name, strings.Join(ips, ", "))
				}
			})
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the list_dns result as JSON")
	return cmd
}
