package wg

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// This file converts between wgctrl's types and the text of WireGuard's
// cross-platform configuration protocol ("UAPI",
// https://www.wireguard.com/xplatform/#configuration-protocol). We speak it
// in-process to wireguard-go instead of through the socket: peer upserts are
// on the daemon's hot path, and a restart restores every peer in one call.

// encodeUAPISet renders cfg as the body of a UAPI "set" operation: one
// key=value line each, keys in hex, without the "set=1" header and the
// terminating blank line. Everything is validated before a single line is
// produced, because wireguard-go applies a set line by line and would leave
// a half-applied configuration behind a late error.
func encodeUAPISet(cfg wgtypes.Config) ([]byte, error) {
	b := make([]byte, 0, 128+len(cfg.Peers)*200)
	if cfg.PrivateKey != nil {
		b = appendKeyLine(b, "private_key", *cfg.PrivateKey)
	}
	if cfg.ListenPort != nil {
		p := *cfg.ListenPort
		if p < 0 || p > math.MaxUint16 {
			return nil, fmt.Errorf("listen port %d is out of range; use 0 (any free port) to 65535", p)
		}
		b = appendIntLine(b, "listen_port", int64(p))
	}
	if cfg.FirewallMark != nil {
		m := *cfg.FirewallMark
		if m < 0 || int64(m) > math.MaxUint32 {
			return nil, fmt.Errorf("firewall mark %d is out of range; use 0 (none) to %d", m, uint32(math.MaxUint32))
		}
		b = appendIntLine(b, "fwmark", int64(m))
	}
	if cfg.ReplacePeers {
		b = append(b, "replace_peers=true\n"...)
	}
	for i := range cfg.Peers {
		var err error
		b, err = appendPeer(b, &cfg.Peers[i])
		if err != nil {
			return nil, fmt.Errorf("peer %s: %w", cfg.Peers[i].PublicKey, err)
		}
	}
	return b, nil
}

func appendPeer(b []byte, p *wgtypes.PeerConfig) ([]byte, error) {
	b = appendKeyLine(b, "public_key", p.PublicKey)
	if p.Remove {
		// Everything after remove=true would only configure a throw-away
		// placeholder peer, so it is not sent.
		return append(b, "remove=true\n"...), nil
	}
	if p.UpdateOnly {
		// First, so that wireguard-go never creates the peer even briefly.
		b = append(b, "update_only=true\n"...)
	}
	if p.PresharedKey != nil {
		b = appendKeyLine(b, "preshared_key", *p.PresharedKey)
	}
	if p.Endpoint != nil {
		ap, err := endpointAddrPort(p.Endpoint)
		if err != nil {
			return nil, err
		}
		b = append(b, "endpoint="...)
		b = ap.AppendTo(b)
		b = append(b, '\n')
	}
	if p.PersistentKeepaliveInterval != nil {
		d := *p.PersistentKeepaliveInterval
		if d < 0 || d > math.MaxUint16*time.Second || d%time.Second != 0 {
			return nil, fmt.Errorf("persistent keepalive %v must be a whole number of seconds from 0 (off) to %d", d, math.MaxUint16)
		}
		b = appendIntLine(b, "persistent_keepalive_interval", int64(d/time.Second))
	}
	if p.ReplaceAllowedIPs {
		b = append(b, "replace_allowed_ips=true\n"...)
	}
	for _, n := range p.AllowedIPs {
		pfx, err := prefixFromIPNet(n)
		if err != nil {
			return nil, err
		}
		b = append(b, "allowed_ip="...)
		b = pfx.AppendTo(b)
		b = append(b, '\n')
	}
	return b, nil
}

func appendKeyLine(b []byte, name string, k wgtypes.Key) []byte {
	b = append(b, name...)
	b = append(b, '=')
	b = hex.AppendEncode(b, k[:])
	return append(b, '\n')
}

func appendIntLine(b []byte, name string, v int64) []byte {
	b = append(b, name...)
	b = append(b, '=')
	b = strconv.AppendInt(b, v, 10)
	return append(b, '\n')
}

// endpointAddrPort converts a peer endpoint, refusing the ones WireGuard
// could never send to.
func endpointAddrPort(a *net.UDPAddr) (netip.AddrPort, error) {
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("endpoint %v has no valid IP address", a)
	}
	// net.UDPAddr often carries IPv4 in its 16-byte form; WireGuard must see
	// it as IPv4 to send it from an IPv4 socket.
	ip = ip.Unmap()
	if ip.IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("endpoint %v has an unspecified address; give the peer's reachable IP", a)
	}
	if a.Port <= 0 || a.Port > math.MaxUint16 {
		return netip.AddrPort{}, fmt.Errorf("endpoint %v has port %d; use 1 to 65535", a, a.Port)
	}
	if a.Zone != "" {
		if !ip.Is6() {
			return netip.AddrPort{}, fmt.Errorf("endpoint %v has a zone but is not an IPv6 address", a)
		}
		ip = ip.WithZone(a.Zone)
	}
	return netip.AddrPortFrom(ip, uint16(a.Port)), nil
}

// prefixFromIPNet converts an allowed IP. The address is kept as given;
// WireGuard masks it.
func prefixFromIPNet(n net.IPNet) (netip.Prefix, error) {
	ones, bits := n.Mask.Size()
	switch {
	case bits == 8*net.IPv4len && n.IP.To4() != nil:
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(n.IP.To4())), ones), nil
	case bits == 8*net.IPv6len && len(n.IP) == net.IPv6len:
		return netip.PrefixFrom(netip.AddrFrom16([16]byte(n.IP)), ones), nil
	}
	return netip.Prefix{}, fmt.Errorf("allowed IP %q is not a valid IPv4 or IPv6 prefix", n.String())
}

func ipNetFromPrefix(p netip.Prefix) net.IPNet {
	a := p.Addr()
	return net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}

func udpAddrFromAddrPort(ap netip.AddrPort) *net.UDPAddr {
	return &net.UDPAddr{IP: ap.Addr().AsSlice(), Port: int(ap.Port()), Zone: ap.Addr().Zone()}
}

// parseUAPIGet parses the reply of a UAPI "get" operation into a device
// without Name and Type. It accepts the bare body wireguard-go produces
// in-process as well as a socket reply ending in "errno=N" and a blank line;
// a non-zero errno is an error. Keys it does not know are skipped, as the
// protocol asks of clients.
func parseUAPIGet(text []byte) (*wgtypes.Device, error) {
	p := uapiParser{dev: &wgtypes.Device{}}
	lineNo := 0
	for line := range bytes.Lines(text) {
		lineNo++
		line = bytes.TrimSuffix(line, []byte{'\n'})
		if len(line) == 0 {
			break // a blank line ends a reply
		}
		k, v, ok := bytes.Cut(line, []byte{'='})
		if !ok {
			return nil, fmt.Errorf("wireguard UAPI reply line %d %s has no '='", lineNo, quoteTruncated(string(line)))
		}
		done, err := p.line(k, v)
		if err != nil {
			return nil, fmt.Errorf("wireguard UAPI reply line %d (%s): %w", lineNo, k, err)
		}
		if done {
			break
		}
	}
	p.finishPeer()
	if !isZeroKey(p.dev.PrivateKey) {
		p.dev.PublicKey = p.dev.PrivateKey.PublicKey()
	}
	return p.dev, nil
}

type uapiParser struct {
	dev    *wgtypes.Device
	peer   *wgtypes.Peer // the peer whose lines are being read, if any
	hsSec  int64
	hsNsec int64
}

// line applies one key=value line; done reports the errno line that ends
// a socket reply.
func (p *uapiParser) line(k, v []byte) (done bool, err error) {
	switch string(k) {
	case "errno":
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return true, err
		}
		if n != 0 {
			return true, fmt.Errorf("wireguard reported errno %d", n)
		}
		return true, nil
	case "public_key":
		p.finishPeer()
		p.peer = &wgtypes.Peer{}
		return false, parseHexKey(v, &p.peer.PublicKey)
	}
	if p.peer == nil {
		return false, parseDeviceLine(p.dev, k, v)
	}
	return false, parsePeerLine(p.peer, &p.hsSec, &p.hsNsec, k, v)
}

func (p *uapiParser) finishPeer() {
	if p.peer == nil {
		return
	}
	if p.hsSec != 0 || p.hsNsec != 0 {
		p.peer.LastHandshakeTime = time.Unix(p.hsSec, p.hsNsec)
	}
	p.dev.Peers = append(p.dev.Peers, *p.peer)
	p.peer, p.hsSec, p.hsNsec = nil, 0, 0
}

func parseDeviceLine(dev *wgtypes.Device, key, v []byte) error {
	switch string(key) {
	case "private_key":
		return parseHexKey(v, &dev.PrivateKey)
	case "listen_port":
		n, err := strconv.ParseUint(string(v), 10, 16)
		dev.ListenPort = int(n)
		return err
	case "fwmark":
		n, err := strconv.ParseUint(string(v), 10, 32)
		dev.FirewallMark = int(n)
		return err
	}
	return nil
}

func parsePeerLine(p *wgtypes.Peer, hsSec, hsNsec *int64, key, v []byte) error {
	switch string(key) {
	case "preshared_key":
		return parseHexKey(v, &p.PresharedKey)
	case "protocol_version":
		n, err := strconv.ParseUint(string(v), 10, 31)
		p.ProtocolVersion = int(n)
		return err
	case "endpoint":
		ap, err := netip.ParseAddrPort(string(v))
		if err != nil {
			return err
		}
		p.Endpoint = udpAddrFromAddrPort(ap)
	case "last_handshake_time_sec":
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return err
		}
		if n < 0 {
			return fmt.Errorf("negative time %d", n)
		}
		*hsSec = n
	case "last_handshake_time_nsec":
		n, err := strconv.ParseInt(string(v), 10, 64)
		if err != nil {
			return err
		}
		if n < 0 || n >= int64(time.Second) {
			return fmt.Errorf("nanoseconds %d out of range", n)
		}
		*hsNsec = n
	case "rx_bytes":
		n, err := strconv.ParseUint(string(v), 10, 63)
		p.ReceiveBytes = int64(n)
		return err
	case "tx_bytes":
		n, err := strconv.ParseUint(string(v), 10, 63)
		p.TransmitBytes = int64(n)
		return err
	case "persistent_keepalive_interval":
		n, err := strconv.ParseUint(string(v), 10, 16)
		if err != nil {
			return err
		}
		p.PersistentKeepaliveInterval = time.Duration(n) * time.Second
	case "allowed_ip":
		pfx, err := netip.ParsePrefix(string(v))
		if err != nil {
			return err
		}
		p.AllowedIPs = append(p.AllowedIPs, ipNetFromPrefix(pfx))
	}
	return nil
}

func parseHexKey(v []byte, k *wgtypes.Key) error {
	if len(v) != 2*wgtypes.KeyLen {
		return fmt.Errorf("key is %d hex digits, want %d", len(v), 2*wgtypes.KeyLen)
	}
	_, err := hex.Decode(k[:], v)
	return err
}

func isZeroKey(k wgtypes.Key) bool { return k == wgtypes.Key{} }
