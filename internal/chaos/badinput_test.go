//go:build linux

package chaos

import (
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/zlayer/zlayer-overlayd/protocol"
)

// The bad-input suite: hostile and broken input through the real socket
// of a real daemon. Every case must get the outcome docs/protocol.md
// ("Errors") documents, and after every case a second connection, open
// since before the first case, must still be served and see exactly the
// state it saw before the first case (and, as root, the node's kernel must
// be unchanged too).

// Outcomes of a case.
const (
	answered = iota // a response with the case's id (and result); the connection stays open
	closed          // the daemon closes the connection without an answer
	ignored         // no answer; the connection stays open
	custom          // the case judges itself
)

type badCase struct {
	name string
	// state marks cases that need the state only a root daemon can build
	// (a global overlay, a service, an attached container).
	state bool
	send  func(c *rawConn, env *badEnv)
	want  int
	id    uint64
	// result is the expected result kind for answered cases ("err" when
	// empty); msg lists alternatives, one of which the message contains.
	result string
	msg    []string
	judge  func(c *rawConn, env *badEnv) error
}

// badEnv is what cases may refer to.
type badEnv struct {
	daemonPID int
	svc       string // a service set up on the node (root only)
	ctrPID    int    // an attached container (root only)
	nodeIP    netip.Addr
	gateway   netip.Addr
	peerKey   string // a peer of the node (root only)
}

const validKey = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

func sendReq(id uint64, req string) func(*rawConn, *badEnv) {
	return func(c *rawConn, _ *badEnv) { c.write(frame(request(id, req))) }
}

func sendBody(body string) func(*rawConn, *badEnv) {
	return func(c *rawConn, _ *badEnv) { c.write(frame(body)) }
}

func sendBytes(b []byte) func(*rawConn, *badEnv) {
	return func(c *rawConn, _ *badEnv) { c.write(b) }
}

// andHangUp sends b, then closes the sending half, as a client that dies
// mid-frame does.
func andHangUp(b []byte) func(*rawConn, *badEnv) {
	return func(c *rawConn, _ *badEnv) {
		c.write(b)
		c.nc.CloseWrite()
	}
}

func errCase(name string, id uint64, req string, msg ...string) badCase {
	return badCase{name: name, send: sendReq(id, req), want: answered, id: id, msg: msg}
}

func nested(depth int) string { return strings.Repeat("[", depth) + strings.Repeat("]", depth) }

func badCases() []badCase {
	status := request(1, `{"op":"status"}`)
	padded := func(size int) string {
		head := `{"frame":"request","id":77,"request":{"op":"status"},"pad":"`
		return head + strings.Repeat("x", size-len(head)-2) + `"}`
	}
	cases := []badCase{
		// Framing.
		{name: "length 0", send: sendBytes(prefix(0)), want: closed},
		{name: "length 2^32-1", send: sendBytes(prefix(1<<32 - 1)), want: closed},
		{name: "length 8 MiB + 1", send: sendBytes(append(prefix(protocol.MaxFrameBytes+1), '{')), want: closed},
		{name: "length exactly 8 MiB", send: sendBody(padded(protocol.MaxFrameBytes)), want: answered, id: 77, result: "status"},
		{name: "truncated length prefix", send: andHangUp([]byte{9, 0}), want: closed},
		{name: "truncated body", send: andHangUp(append(prefix(uint32(len(status))), status[:20]...)), want: closed},
		{name: "body announced 8 MiB, 1 byte sent", send: andHangUp(append(prefix(protocol.MaxFrameBytes), '{')), want: closed},
		{name: "one frame in 1-byte writes", send: func(c *rawConn, _ *badEnv) {
			for _, b := range frame(request(5, `{"op":"hello"}`)) {
				c.write([]byte{b})
			}
		}, want: answered, id: 5, result: "hello"},
		{name: "two frames in one write", send: sendBytes(append(frame(request(6, `{"op":"hello"}`)), frame(request(7, `{"op":"hello"}`))...)), want: custom,
			judge: func(c *rawConn, _ *badEnv) error { return answersInOrder(c, 6, "hello", 7, "hello") }},
		// Not a frame at all.
		{name: "not JSON", send: sendBody("hello, daemon"), want: closed},
		{name: "JSON null", send: sendBody("null"), want: closed},
		{name: "JSON array", send: sendBody(`[{"frame":"request","id":8,"request":{"op":"status"}}]`), want: closed},
		{name: "JSON string", send: sendBody(`"request"`), want: closed},
		{name: "empty object", send: sendBody(`{}`), want: closed},
		{name: "byte order mark", send: sendBody("\ufeff" + request(9, `{"op":"status"}`)), want: closed},
		{name: "trailing garbage", send: sendBody(request(9, `{"op":"status"}`) + "x"), want: closed},
		{name: "nested 100,000 deep", send: sendBody(`{"frame":"request","id":10,"request":{"op":"status","x":` + nested(100000) + `}}`), want: closed},
		// Ids.
		{name: "no id", send: sendBody(`{"frame":"request","request":{"op":"status"}}`), want: closed},
		{name: "id -1", send: sendBody(`{"frame":"request","id":-1,"request":{"op":"status"}}`), want: closed},
		{name: "id 1.5", send: sendBody(`{"frame":"request","id":1.5,"request":{"op":"status"}}`), want: closed},
		{name: "id 2^64", send: sendBody(`{"frame":"request","id":18446744073709551616,"request":{"op":"status"}}`), want: closed},
		{name: "id as a string", send: sendBody(`{"frame":"request","id":"11","request":{"op":"status"}}`), want: closed},
		{name: "id 2^64-1", send: sendReq(18446744073709551615, `{"op":"status"}`), want: answered, id: 18446744073709551615, result: "status"},
		{name: "duplicate ids", send: sendBytes(append(frame(request(12, `{"op":"status"}`)), frame(request(12, `{"op":"hello"}`))...)), want: custom,
			judge: func(c *rawConn, _ *badEnv) error { return answersInOrder(c, 12, "status", 12, "hello") }},
		// Frames a client must not send.
		{name: "unknown frame kind", send: sendBody(`{"frame":"reqest","id":13,"request":{"op":"status"}}`), want: answered, id: 13, msg: []string{"unknown frame kind"}},
		{name: "response from a client", send: sendBody(`{"frame":"response","id":14,"response":{"result":"ok"}}`), want: ignored},
		{name: "event from a client", send: sendBody(`{"frame":"event","event":"peer_health_changed","pubkey":"k","healthy":false}`), want: ignored},
		// Requests that cannot be decoded.
		{name: "request missing", send: sendBody(`{"frame":"request","id":15}`), want: answered, id: 15, msg: []string{"missing field `request`"}},
		{name: "request null", send: sendBody(`{"frame":"request","id":16,"request":null}`), want: answered, id: 16, msg: []string{"missing field `request`"}},
		{name: "request is a string", send: sendBody(`{"frame":"request","id":17,"request":"status"}`), want: answered, id: 17},
		errCase("op missing", 18, `{"service":"web"}`, "missing field `op`"),
		errCase("op is a number", 19, `{"op":5}`),
		errCase("unknown op", 20, `{"op":"format_disk"}`, `unknown op "format_disk"`),
		errCase("non-UTF-8 string", 21, "{\"op\":\"register_dns\",\"name\":\"a\xff\xfe\",\"ip\":\"10.77.1.9\"}", "UTF-8"),
		errCase("non-UTF-8 key", 22, "{\"op\":\"status\",\"\xc3\x28\":1}", "UTF-8"),
		{name: "nested 5,000 deep in an unknown field", send: sendReq(23, `{"op":"status","x":`+nested(5000)+`}`), want: answered, id: 23, result: "status"},
		errCase("nested object for a string", 24, `{"op":"teardown_service_overlay","service":{"a":{"b":[{"c":null}]}}}`, "field `service`"),
		errCase("missing field", 25, `{"op":"setup_service_overlay","service":"web"}`, "missing field `mode`"),
		errCase("null required field", 26, `{"op":"setup_service_overlay","service":null,"mode":"shared"}`, "must not be null"),
		// Wrong types and integers out of range.
		errCase("node_id as a string", 27, `{"op":"set_local_node_id","node_id":"7"}`, "field `node_id`"),
		errCase("node_id -1", 28, `{"op":"set_local_node_id","node_id":-1}`, "node_id"),
		errCase("node_id 2^64", 29, `{"op":"set_local_node_id","node_id":18446744073709551616}`, "node_id"),
		errCase("node_id 1e400", 30, `{"op":"set_local_node_id","node_id":1e400}`),
		errCase("node_id 1.5", 31, `{"op":"set_local_node_id","node_id":1.5}`, "node_id"),
		errCase("wg_port 70000", 32, `{"op":"setup_global_overlay","deployment":"zltr","instance_id":"1","cluster_cidr":"10.77.0.0/16","wg_port":70000,"nat_enabled":false}`, "wg_port"),
		errCase("wg_port -1", 33, `{"op":"setup_global_overlay","deployment":"zltr","instance_id":"1","cluster_cidr":"10.77.0.0/16","wg_port":-1,"nat_enabled":false}`, "wg_port"),
		errCase("wg_port 0", 34, `{"op":"setup_global_overlay","deployment":"zltr","instance_id":"1","cluster_cidr":"10.77.0.0/16","wg_port":0,"nat_enabled":false}`, "wg_port 0"),
		errCase("nat_enabled as a string", 35, `{"op":"setup_global_overlay","deployment":"zltr","instance_id":"1","cluster_cidr":"10.77.0.0/16","wg_port":1,"nat_enabled":"yes"}`, "nat_enabled"),
		errCase("keepalive 2^63", 36, `{"op":"add_peer","public_key":"`+validKey+`","endpoint":"192.0.2.1:51820","allowed_ips":"10.78.0.0/24","persistent_keepalive_secs":9223372036854775808}`, "persistent_keepalive_secs"),
		// Handles and PIDs.
		errCase("unknown handle platform", 37, `{"op":"detach_container","handle":{"platform":"bsd_jail","jid":1}}`, "bsd_jail"),
		errCase("handle without pid", 38, `{"op":"detach_container","handle":{"platform":"linux_pid"}}`, "missing field `pid`"),
		errCase("pid -1", 39, `{"op":"attach_container","handle":{"platform":"linux_pid","pid":-1},"service":"web","join_global":false}`, "pid"),
		errCase("pid 2^32", 40, `{"op":"attach_container","handle":{"platform":"linux_pid","pid":4294967296},"service":"web","join_global":false}`, "pid"),
		errCase("pid 0", 41, `{"op":"attach_container","handle":{"platform":"linux_pid","pid":0},"service":"web","join_global":false}`, "pid 0 is not a Linux process id"),
		errCase("pid above pid_max", 42, `{"op":"attach_container","handle":{"platform":"linux_pid","pid":4194305},"service":"web","join_global":false}`, "is not a Linux process id"),
		{name: "pid of no process", send: func(c *rawConn, _ *badEnv) {
			c.write(frame(request(43, fmt.Sprintf(`{"op":"attach_container","handle":{"platform":"linux_pid","pid":%d},"service":"web","join_global":false}`, deadPID()))))
		}, want: answered, id: 43, msg: []string{"does not exist"}},
		{name: "pid of the daemon itself", state: true, send: func(c *rawConn, env *badEnv) {
			c.write(frame(request(44, fmt.Sprintf(`{"op":"attach_container","handle":{"platform":"linux_pid","pid":%d},"service":%q,"join_global":false}`, env.daemonPID, env.svc))))
		}, want: answered, id: 44, msg: []string{"own network namespace"}},
		// netns handles (CNI).
		errCase("netns handle without container_id", 89, `{"op":"attach_container","handle":{"platform":"netns","path":"/run/netns/x","ifname":"eth0"},"service":"web","join_global":false}`, "missing field `container_id`"),
		errCase("netns path not absolute", 90, `{"op":"attach_container","handle":{"platform":"netns","path":"run/netns/x","container_id":"c","ifname":"eth0"},"service":"web","join_global":false}`, "must be absolute"),
		errCase("netns container id with /", 91, `{"op":"detach_container","handle":{"platform":"netns","container_id":"../c","ifname":"eth0"}}`, "not a CNI container id"),
		errCase("netns ifname lo", 92, `{"op":"detach_container","handle":{"platform":"netns","container_id":"c","ifname":"lo"}}`, "loopback"),
		{name: "netns path of the daemon's own namespace", state: true, send: func(c *rawConn, env *badEnv) {
			c.write(frame(request(93, fmt.Sprintf(`{"op":"attach_container","handle":{"platform":"netns","path":"/proc/%d/ns/net","container_id":"c","ifname":"eth0"},"service":%q,"join_global":false}`, env.daemonPID, env.svc))))
		}, want: answered, id: 93, msg: []string{"own network namespace"}},
		{name: "attached container to a second service", state: true, send: func(c *rawConn, env *badEnv) {
			c.write(frame(request(45, fmt.Sprintf(`{"op":"attach_container","handle":{"platform":"linux_pid","pid":%d},"service":"other","join_global":false}`, env.ctrPID))))
		}, want: answered, id: 45, msg: []string{"no overlay on this node", "attached to service"}},
		// Names.
		errCase("service with /", 46, `{"op":"setup_service_overlay","service":"a/b","mode":"shared"}`, `contains '/'`),
		errCase("service ..", 47, `{"op":"setup_service_overlay","service":"..","mode":"shared"}`, "is not a name"),
		errCase("service ../etc", 48, `{"op":"teardown_service_overlay","service":"../etc"}`, "must start with"),
		errCase("service with a space", 49, `{"op":"allocate_ip","service":"my svc","join_global":false}`, `contains ' '`),
		errCase("service with a control character", 50, `{"op":"setup_service_overlay","service":"web\u0001","mode":"shared"}`, `'\x01'`),
		errCase("service with a newline", 51, `{"op":"setup_service_overlay","service":"web\nx","mode":"shared"}`, `'\n'`),
		errCase("service of 300 bytes", 52, `{"op":"setup_service_overlay","service":"`+strings.Repeat("s", 300)+`","mode":"shared"}`, "300 bytes"),
		errCase("deployment ../etc", 53, `{"op":"setup_global_overlay","deployment":"../etc","instance_id":"1","cluster_cidr":"10.77.0.0/16","wg_port":51820,"nat_enabled":false}`, "deployment"),
		errCase("guest id with /", 54, `{"op":"attach_container","handle":{"platform":"guest_managed","id":"vm/1"},"service":"web","join_global":true}`, "guest id"),
		errCase("dns name with /", 55, `{"op":"register_dns","name":"a/b","ip":"10.77.1.9"}`, `contains "/"`),
		errCase("dns name with a space", 56, `{"op":"register_dns","name":"a b","ip":"10.77.1.9"}`, `contains " "`),
		errCase("dns name of 300 bytes", 57, `{"op":"unregister_dns","name":"`+strings.Repeat("n", 300)+`"}`, "300 bytes"),
		errCase("dns name outside the zone", 58, `{"op":"register_dns","name":"example.com.","ip":"10.77.1.9"}`, "outside zone"),
		errCase("mode unknown", 59, `{"op":"setup_service_overlay","service":"web","mode":"turbo"}`, "mode"),
		// Addresses, CIDRs, keys, endpoints.
		errCase("dns address not an address", 60, `{"op":"register_dns","name":"a","ip":"10.77.1"}`, `"10.77.1"`),
		errCase("dns address of 1 MiB", 87, `{"op":"register_dns","name":"a","ip":"1`+strings.Repeat("0", 1<<20)+`"}`, "invalid register_dns request"),
		errCase("cluster_cidr of 1 MiB", 88, `{"op":"setup_global_overlay","deployment":"zltr","instance_id":"1","cluster_cidr":"10.`+strings.Repeat("7", 1<<20)+`.0.0/16","wg_port":51820,"nat_enabled":false}`, "cluster_cidr"),
		errCase("dns address multicast", 61, `{"op":"register_dns","name":"a","ip":"239.1.1.1"}`, "not an address a name can point at"),
		errCase("cluster_cidr /33", 62, `{"op":"setup_global_overlay","deployment":"zltr","instance_id":"1","cluster_cidr":"10.77.0.0/33","wg_port":51820,"nat_enabled":false}`, "cluster_cidr"),
		errCase("cluster_cidr not a CIDR", 63, `{"op":"setup_global_overlay","deployment":"zltr","instance_id":"1","cluster_cidr":"banana","wg_port":51820,"nat_enabled":false}`, "cluster_cidr"),
		errCase("slice_cidr outside the cluster", 64, `{"op":"setup_global_overlay","deployment":"zltr","instance_id":"1","cluster_cidr":"10.77.0.0/16","slice_cidr":"10.99.0.0/24","wg_port":51820,"nat_enabled":false}`, "not inside cluster_cidr"),
		errCase("subnet without a prefix", 65, `{"op":"setup_service_overlay","service":"web","mode":"shared","subnet":"10.77.5.1"}`, "subnet"),
		errCase("key not base64", 66, `{"op":"add_peer","public_key":"not a key!","endpoint":"192.0.2.1:51820","allowed_ips":"10.78.0.0/24","persistent_keepalive_secs":0}`, "base64"),
		errCase("key of 31 bytes", 67, `{"op":"remove_peer","pubkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==","scope":{"scope":"global"}}`, "31 bytes"),
		errCase("key in hex", 68, `{"op":"remove_peer","pubkey":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f","scope":{"scope":"global"}}`, "hex"),
		errCase("private key not a key", 69, `{"op":"setup_global_overlay","deployment":"zltr","instance_id":"1","cluster_cidr":"10.77.0.0/16","wg_port":51820,"nat_enabled":false,"private_key":"AAAA"}`, "private_key"),
		errCase("allowed IPs not CIDRs", 70, `{"op":"add_peer","public_key":"`+validKey+`","endpoint":"192.0.2.1:51820","allowed_ips":"10.78.0.0/24,banana","persistent_keepalive_secs":0}`, "allowed IP"),
		errCase("endpoint without port", 71, `{"op":"add_peer","public_key":"`+validKey+`","endpoint":"192.0.2.1","allowed_ips":"10.78.0.0/24","persistent_keepalive_secs":0}`, "endpoint"),
		errCase("endpoint port 0", 72, `{"op":"add_peer","public_key":"`+validKey+`","endpoint":"192.0.2.1:0","allowed_ips":"10.78.0.0/24","persistent_keepalive_secs":0}`, "port"),
		errCase("endpoint port 65536", 73, `{"op":"add_peer","public_key":"`+validKey+`","endpoint":"192.0.2.1:65536","allowed_ips":"10.78.0.0/24","persistent_keepalive_secs":0}`, "port"),
		errCase("endpoint host with a space", 74, `{"op":"add_peer","public_key":"`+validKey+`","endpoint":"my host:1","allowed_ips":"10.78.0.0/24","persistent_keepalive_secs":0}`, "neither an IP address nor a host name"),
		errCase("candidate not host:port", 75, `{"op":"add_peer","public_key":"`+validKey+`","endpoint":"192.0.2.1:1","allowed_ips":"10.78.0.0/24","persistent_keepalive_secs":0,"candidates":["nowhere"]}`, "candidates"),
		errCase("cidr of add_allowed_ip", 76, `{"op":"add_allowed_ip","pubkey":"`+validKey+`","cidr":"10.78.0.0/99","scope":{"scope":"global"}}`, "cidr"),
		errCase("unknown scope", 77, `{"op":"remove_peer","pubkey":"`+validKey+`","scope":{"scope":"planet"}}`, "planet"),
		errCase("service scope without service", 78, `{"op":"remove_peer","pubkey":"`+validKey+`","scope":{"scope":"service"}}`, "missing field `service`"),
		errCase("allowed IP for an unknown peer", 79, `{"op":"add_allowed_ip","pubkey":"`+validKey+`","cidr":"10.78.0.0/24","scope":{"scope":"global"}}`, "add_peer it first", "global overlay not set up"),
		errCase("release an address never allocated", 80, `{"op":"release_ip","ip":"10.77.1.200"}`, "never allocated", "none of this node's pools"),
		{name: "release the node IP", state: true, send: func(c *rawConn, env *badEnv) {
			c.write(frame(request(81, fmt.Sprintf(`{"op":"release_ip","ip":%q}`, env.nodeIP))))
		}, want: answered, id: 81, msg: []string{"overlay IP"}},
		{name: "release a gateway", state: true, send: func(c *rawConn, env *badEnv) {
			c.write(frame(request(82, fmt.Sprintf(`{"op":"release_ip","ip":%q}`, env.gateway))))
		}, want: answered, id: 82, msg: []string{"gateway"}},
		{name: "dedicated peer of a shared service", state: true, send: func(c *rawConn, env *badEnv) {
			c.write(frame(request(83, fmt.Sprintf(`{"op":"remove_peer","pubkey":%q,"scope":{"scope":"service","service":%q}}`, env.peerKey, env.svc))))
		}, want: answered, id: 83, msg: []string{"no dedicated overlay"}},
		errCase("ip of release_ip empty", 84, `{"op":"release_ip","ip":""}`, "ip is empty"),
		// Connections that misbehave.
		{name: "a frame that never finishes", send: sendBytes(append(prefix(100), `{"frame":`...)), want: custom,
			judge: func(c *rawConn, _ *badEnv) error { return nil }}, // the second connection must still be served: checked after every case
		{name: "hang up before the answer", send: func(c *rawConn, _ *badEnv) {
			c.write(frame(request(85, `{"op":"status"}`)))
			c.nc.Close()
		}, want: custom, judge: func(*rawConn, *badEnv) error { return nil }},
		{name: "unknown fields are ignored", send: sendReq(86, `{"op":"hello","client_version":"x","shutdown":true,"op2":"shutdown"}`), want: answered, id: 86, result: "hello"},
	}
	return cases
}

// answersInOrder reads the answers to two requests, which must come in
// the order the requests were sent.
func answersInOrder(c *rawConn, id1 uint64, r1 string, id2 uint64, r2 string) error {
	for _, w := range []struct {
		id uint64
		r  string
	}{{id1, r1}, {id2, r2}} {
		resp, err := c.answer(w.id)
		if err != nil {
			return err
		}
		if resp.Result() != w.r {
			return fmt.Errorf("answer to request %d is %s, want %s (answers out of order?)", w.id, resp.Result(), w.r)
		}
	}
	return nil
}

// deadPID is a PID no process has.
func deadPID() int {
	for pid := 4194000; ; pid++ {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); os.IsNotExist(err) {
			return pid
		}
	}
}

func TestBadInputThroughTheSocket(t *testing.T) {
	d := newTarget(t, "--dns-port", strconv.Itoa(dnsPort))
	env := &badEnv{}
	root := d.node != nil
	if root {
		env = buildState(t, d)
	} else {
		c := dialRaw(t, d.socket)
		for i, req := range []string{`{"op":"set_local_node_id","node_id":7}`, `{"op":"register_dns","name":"web","ip":"10.77.1.5"}`} {
			c.write(frame(request(uint64(i+1), req)))
			if resp, err := c.answer(uint64(i + 1)); err != nil || resp.Result() != "ok" {
				t.Fatalf("setting up: %v %#v", err, resp)
			}
		}
	}
	env.daemonPID = d.pid()

	// The second connection, open across every case.
	watcher := dialRaw(t, d.socket)
	base, err := watcher.status(1)
	if err != nil {
		t.Fatal(err)
	}
	want := digest(base)
	var kernel string
	if root {
		kernel = kernelDigest(t, d.exec())
	}
	statusID := uint64(1 << 40)
	ran, skipped := 0, 0
	for _, tc := range badCases() {
		t.Run(tc.name, func(t *testing.T) {
			if tc.state && !root {
				skipped++
				t.Skip("needs a global overlay, a service and an attached container, which only a root daemon can build")
			}
			ran++
			c := dialRaw(t, d.socket)
			tc.send(c, env)
			if err := judge(c, tc); err != nil {
				t.Fatal(err)
			}
			// The other connection is still served and sees the same state.
			statusID++
			s, err := watcher.status(statusID)
			if err != nil {
				t.Fatalf("the second connection was not served after this case: %v", err)
			}
			if got := digest(s); got != want {
				t.Fatalf("state changed:\n%s", diffLines(want, got))
			}
		})
	}
	if root {
		if got := kernelDigest(t, d.exec()); got != kernel {
			t.Fatalf("the node's kernel changed:\n%s", diffLines(kernel, got))
		}
	}
	t.Logf("%d cases ran, %d skipped", ran, skipped)

	// Last: requests that arrive after shutdown. They are pipelined behind
	// the shutdown in one write: each is refused or never read, none runs.
	t.Run("requests after shutdown", func(t *testing.T) {
		c := dialRaw(t, d.socket)
		var b []byte
		b = append(b, frame(request(90, `{"op":"shutdown"}`))...)
		b = append(b, frame(request(91, `{"op":"register_dns","name":"after-shutdown","ip":"10.77.1.77"}`))...)
		b = append(b, frame(request(92, `{"op":"set_local_node_id","node_id":99}`))...)
		c.write(b)
		resp, err := c.answer(90)
		if err != nil || resp.Result() != "ok" {
			t.Fatalf("shutdown: %v %#v", err, resp)
		}
		for id := uint64(91); id <= 92; id++ {
			resp, err := c.answer(id)
			if err != nil {
				break // not read: the daemon stopped reading, as documented
			}
			if e, ok := resp.(protocol.Err); !ok || !strings.Contains(e.Message, "shutting down") {
				t.Fatalf("request %d after shutdown answered %#v", id, resp)
			}
		}
		if err := c.closed(); err != nil {
			t.Fatal(err)
		}
		// A connection made now is refused (the daemon is gone) or, if
		// it is still stopping, gets only refusals.
		d.restart()
		s, err := dialRaw(t, d.socket).status(1)
		if err != nil {
			t.Fatal(err)
		}
		if got := digest(s); got != want {
			t.Fatalf("state after shutdown and restart differs:\n%s", diffLines(want, got))
		}
	})
}

func judge(c *rawConn, tc badCase) error {
	switch tc.want {
	case answered:
		resp, err := c.answer(tc.id)
		if err != nil {
			return fmt.Errorf("no answer: %v", err)
		}
		want := tc.result
		if want == "" {
			want = "err"
		}
		if resp.Result() != want {
			return fmt.Errorf("answered %#v, want a %s", resp, want)
		}
		if e, ok := resp.(protocol.Err); ok {
			if len(e.Message) > 400 {
				return fmt.Errorf("a %d-byte err message", len(e.Message))
			}
			if len(tc.msg) > 0 && !containsAny(e.Message, tc.msg) {
				return fmt.Errorf("err %q does not say %q", e.Message, strings.Join(tc.msg, `" or "`))
			}
		}
		// The connection stays open.
		if _, err := c.status(1 << 50); err != nil {
			return fmt.Errorf("the connection did not stay open after the answer: %v", err)
		}
	case closed:
		return c.closed()
	case ignored:
		if _, err := c.status(1 << 51); err != nil {
			return fmt.Errorf("after a frame that must be ignored: %v", err)
		}
	case custom:
		return tc.judge(c, nil)
	}
	return nil
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func diffLines(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for i := 0; i < max(len(al), len(bl)); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			out = append(out, "- "+x, "+ "+y)
		}
	}
	return strings.Join(out, "\n")
}

// buildState gives a root daemon something to lose: a global overlay, a
// peer, a service with an attached container, a DNS record and an address
// handed out.
func buildState(t *testing.T, d *target) *badEnv {
	t.Helper()
	n := d.node
	n.Call(protocol.SetLocalNodeID{NodeID: 7})
	n.Call(protocol.SetupGlobalOverlay{Deployment: deployment, InstanceID: "1", ClusterCIDR: clusterCIDR, SliceCIDR: "10.77.1.0/24", WGPort: wgPort})
	peer, err := keyFor("")
	if err != nil {
		t.Fatal(err)
	}
	n.Call(protocol.AddPeer{PeerSpec: protocol.PeerSpec{PublicKey: peer, Endpoint: "172.31.0.200:51820", AllowedIPs: "10.77.2.0/24,10.88.0.0/24", PersistentKeepaliveSecs: 25}})
	svc := n.Call(protocol.SetupServiceOverlay{Service: "web", Mode: protocol.ModeShared}).(protocol.ServiceOverlay)
	ctr := d.lab.AddContainer("c1")
	n.Call(protocol.AttachContainer{Handle: ctr.Handle(), Service: "web", JoinGlobal: true})
	n.Call(protocol.RegisterDNS{Name: "web", IP: netip.MustParseAddr("10.77.1.5")})
	n.Call(protocol.AllocateIP{Service: "web"})
	return &badEnv{svc: "web", ctrPID: ctr.PID, nodeIP: netip.MustParseAddr("10.77.1.1"), gateway: svc.Gateway, peerKey: peer}
}

// kernelDigest is what the node's kernel shows of our work: links (with
// their labels and bridge ports), routes, our nftables sets and the
// WireGuard peers.
func kernelDigest(t *testing.T, exec execFunc) string {
	t.Helper()
	var lines []string
	ls, err := links(exec)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		lines = append(lines, fmt.Sprintf("link %s %s master=%s alias=%s", l.Name, l.Info.Kind, l.Master, l.Alias))
	}
	rs, err := routes(exec)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		lines = append(lines, "route "+r.Dst+" dev "+r.Dev)
	}
	sets, err := nftIfnameSets(exec, "inet", "zlayer_overlay")
	if err != nil {
		t.Fatal(err)
	}
	for name, elems := range sets {
		lines = append(lines, "nft set "+name+" "+strings.Join(elems, ","))
	}
	dev, err := wgDump(exec, globalIface)
	if err != nil {
		t.Fatal(err)
	}
	for pub, p := range dev.Peers {
		lines = append(lines, "wg peer "+pub+" "+strings.Join(p.AllowedIPs, ","))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
