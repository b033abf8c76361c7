package nat

import (
	"encoding/json"
	"os/exec"
	"testing"
	"time"
)

// BenchmarkTunnelThroughput runs iperf3 (TCP, 3 s) through a real
// wireguard-go tunnel across the NAT lab, on wireguard-go's default bind
// and on a nat.Bind, idle and with a Discover every 20 ms. Run it with
// -benchtime=1x; the machine's other load shows in the numbers.
func BenchmarkTunnelThroughput(b *testing.B) {
	requireRoot(b, "iperf3", "ping")
	for _, bc := range []struct {
		name        string
		plain, stun bool
	}{
		{"default-bind", true, false},
		{"nat-bind", false, false},
		{"nat-bind-discover-every-20ms", false, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l := newNATLab(b)
			server := stunAddr1 + ":3478"
			startSTUNServers(b, l.net, server)
			peer := startWGHostBind(b, l.net, "zltn"+l.id+"p", 51820, "10.99.0.2/24", bc.plain)
			node := startWGHostBind(b, l.node, "zltn"+l.id+"d", 51830, "10.99.0.1/24", bc.plain)
			peer.addPeer(node, "", "10.99.0.1/32")
			node.addPeer(peer, peerAddr+":51820", "10.99.0.2/32")
			if n, out := pingAll(b, l.node, "10.99.0.2", 3, "0.2"); n == 0 {
				b.Fatalf("no tunnel:\n%s", out)
			}
			startDaemon(b, l.net, "iperf3", "-s", "-B", "10.99.0.2")
			time.Sleep(300 * time.Millisecond) // let iperf3 listen

			var bits float64
			var discovers <-chan nodeResponse
			for b.Loop() {
				if bc.stun {
					discovers = node.send(nodeRequest{Op: "discover", Servers: []string{server}, Count: 150, Interval: 20 * time.Millisecond})
				}
				out, err := exec.Command("ip", "netns", "exec", l.node, "iperf3", "-c", "10.99.0.2", "-t", "3", "-J").Output()
				if err != nil {
					b.Fatalf("iperf3: %v\n%s", err, out)
				}
				var res struct {
					End struct {
						SumReceived struct {
							BitsPerSecond float64 `json:"bits_per_second"`
						} `json:"sum_received"`
					} `json:"end"`
				}
				if err := json.Unmarshal(out, &res); err != nil {
					b.Fatal(err)
				}
				bits += res.End.SumReceived.BitsPerSecond
				if discovers != nil {
					r := <-discovers
					for _, got := range r.Results {
						if got != routerWAN+":51830" {
							b.Fatalf("Discover under load = %s", got)
						}
					}
				}
			}
			b.ReportMetric(bits/float64(b.N)/1e6, "Mbit/s")
		})
	}
}
