package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/zlayer/zlayer-overlayd/internal/store"
	"github.com/zlayer/zlayer-overlayd/internal/wg"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// NodeConfigFile is the file `zlayer node init/join` writes into the data
// directory. The cluster knows this node by the public key in it, so the
// global device must use the private key beside it: with any other key no
// peer accepts our handshakes.
const NodeConfigFile = "node_config.json"

// Where the global device's private key came from, in order of precedence
// (status key_source).
const (
	keyFromRequest    = "request"     // setup_global_overlay's private_key
	keyFromNodeConfig = "node_config" // <data-dir>/node_config.json
	keyFromStore      = "stored"      // our own, persisted on an earlier setup
	keyFromGenerated  = "generated"   // made on the first setup
)

// nodeConfigKey is the key pair node_config.json holds.
type nodeConfigKey struct {
	private wgtypes.Key
	public  string // base64, as the file spells it after canonicalisation
}

// maxNodeConfigSize bounds what we read: the real file is well under 4 KiB.
const maxNodeConfigSize = 1 << 20

// readNodeConfigKey reads the WireGuard key pair of ZLayer's node
// configuration. A missing file, or one without a private key, is (nil,
// nil): the node simply has no key from the main daemon. A file we must not
// trust (readable or writable by others, owned by another user) or whose
// keys do not belong together is an error saying what to fix; the caller
// then keeps the key it had.
func readNodeConfigKey(path string) (*nodeConfigKey, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := trustedKeyFile(path, fi); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxNodeConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxNodeConfigSize {
		return nil, fmt.Errorf("%s is larger than %d bytes; it is not a ZLayer node configuration", path, maxNodeConfigSize)
	}
	var doc struct {
		PrivateKey string `json:"wireguard_private_key"`
		PublicKey  string `json:"wireguard_public_key"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s is not valid JSON: %v", path, err)
	}
	if doc.PrivateKey == "" {
		return nil, nil
	}
	priv, err := wg.ParseKey(doc.PrivateKey)
	if err != nil {
		// ParseKey quotes at most a short prefix: the key stays out of logs.
		return nil, fmt.Errorf("%s: wireguard_private_key: %w", path, err)
	}
	pub := priv.PublicKey().String()
	if doc.PublicKey != "" {
		if k, err := wg.ParseKey(doc.PublicKey); err != nil || k.String() != pub {
			return nil, fmt.Errorf("%s: wireguard_public_key %q is not the public key of wireguard_private_key (%s); the file is inconsistent, re-run zlayer node init or fix the keys", path, truncate(doc.PublicKey), pub)
		}
	}
	return &nodeConfigKey{private: priv, public: pub}, nil
}

// chooseNodeKey picks the global device's private key: the request's
// private_key, else the key of ZLayer's node_config.json (when the main
// daemon's set_local_wg_pubkey, if it sent one that is a key, names the same
// public key), else the key this node already has, else a new one.
func (e *Engine) chooseNodeKey(requested *wgtypes.Key, have wgtypes.Key, node store.Node) (wgtypes.Key, string, error) {
	if requested != nil {
		e.noteNodeConfigProblem("")
		return *requested, keyFromRequest, nil
	}
	if k := e.nodeConfigKey(node.ExpectedPubkey); k != nil {
		return k.private, keyFromNodeConfig, nil
	}
	if have != (wgtypes.Key{}) {
		src := node.KeySource
		if src == "" {
			src = keyFromStore
		}
		return have, src, nil
	}
	k, err := wg.GenerateKey()
	return k, keyFromGenerated, err
}

// nodeConfigKey returns the usable key of node_config.json, or nil; why a
// file that exists is not used is logged and kept for status.
func (e *Engine) nodeConfigKey(expected string) *nodeConfigKey {
	k, err := readNodeConfigKey(e.cfg.NodeConfigPath)
	if err != nil {
		e.noteNodeConfigProblem(err.Error() + "; the global device keeps its own key, which the cluster does not know")
		return nil
	}
	if k == nil {
		e.noteNodeConfigProblem("")
		return nil
	}
	if want, err := wg.ParseKey(expected); err == nil && want.String() != k.public {
		e.noteNodeConfigProblem(fmt.Sprintf("%s holds public key %s but the main daemon's set_local_wg_pubkey named %s; not adopting the file's key until they agree", e.cfg.NodeConfigPath, k.public, want.String()))
		return nil
	}
	e.noteNodeConfigProblem("")
	return k
}

// noteNodeConfigProblem records (msg != "") or clears why node_config.json
// is not used, logging each new problem once.
func (e *Engine) noteNodeConfigProblem(msg string) {
	var changed bool
	e.locked(func() {
		changed = e.nodeConfigProblem != msg
		e.nodeConfigProblem = msg
	})
	if changed && msg != "" {
		e.log.Warn("not using the node key of " + NodeConfigFile + ": " + msg)
	}
}

// adoptNodeConfigKey moves a running global device to the key of
// node_config.json when the main daemon has just named that key as this
// node's (set_local_wg_pubkey after setup_global_overlay, which is the order
// the ZLayer daemon sends them in). The caller holds the topology
// exclusively.
func (e *Engine) adoptNodeConfigKey(expected string) error {
	var g *globalState
	var cur wgtypes.Key
	var node store.Node
	e.locked(func() { g, cur, node = e.st.global, e.st.key, e.st.node })
	if g == nil || g.dev == nil {
		return nil // the next setup_global_overlay picks the key
	}
	k := e.nodeConfigKey(expected)
	if k == nil || k.private == cur || node.KeySource == keyFromRequest {
		return nil
	}
	spec := e.globalSpec(g.rec, k.private)
	if _, err := e.syncDevice(g.dev, func() deviceSpec { return spec }); err != nil {
		e.restoreGlobal(g)
		return fmt.Errorf("switch %s to the key of %s: %w", g.rec.Interface, NodeConfigFile, err)
	}
	node.PrivateKey, node.KeySource = k.private.String(), keyFromNodeConfig
	if err := e.store.Update(func(tx *store.Tx) error { return tx.PutNode(node) }); err != nil {
		e.restoreGlobal(g)
		return err
	}
	e.locked(func() {
		e.st.key = k.private
		e.st.node.PrivateKey, e.st.node.KeySource = node.PrivateKey, node.KeySource
	})
	e.log.Info("global device switched to the node key of "+NodeConfigFile, "interface", g.rec.Interface,
		"public_key", k.public, "previous", cur.PublicKey().String())
	return nil
}
