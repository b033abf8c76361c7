package hcn

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"

	"github.com/Microsoft/hcsshim/hcn"
	"github.com/zlayer/zlayer-overlayd/internal/engine"
	"github.com/zlayer/zlayer-overlayd/internal/winnet"
)

// HCN implements engine.HCN on the host's Host Network Service.
type HCN struct {
	log *slog.Logger

	mu       sync.Mutex        // serialises network creation and deletion
	networks map[string]string // network name → ID, for the networks we ensured
}

var _ engine.HCN = (*HCN)(nil)

// New checks that HNS speaks the v2 API the documents use (Windows Server
// 2019 / Windows 10 1809 and later).
func New(log *slog.Logger) (*HCN, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := hcn.V2ApiSupported(); err != nil {
		return nil, fmt.Errorf("the Host Network Service does not support its v2 API, which Windows containers on the overlay need (Windows Server 2019 / 1809 or later): %w", err)
	}
	return &HCN{log: log, networks: map[string]string{}}, nil
}

// decode turns one of our documents into hcsshim's type, refusing any
// field hcsshim does not know (it would be dropped silently otherwise).
func decode(doc []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(doc))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("HCN document does not fit hcsshim's schema: %w", err)
	}
	return nil
}

// EnsureNetwork creates the Internal network of the node slice, or adopts
// an existing one of that name when it spans the same slice with the same
// gateway. A network of that name on another slice is replaced when no
// endpoint uses it, and is an error otherwise.
func (h *HCN) EnsureNetwork(ctx context.Context, n engine.HCNNetwork) error {
	doc, err := NetworkDocument(n)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	existing, err := hcn.GetNetworkByName(n.Name)
	switch {
	case err == nil:
		raw, jerr := json.Marshal(existing)
		if jerr != nil {
			return jerr
		}
		diff := SameNetwork(raw, n)
		if diff == nil {
			h.networks[n.Name] = existing.Id
			h.enableForwarding(n)
			return nil
		}
		eps, lerr := hcn.ListEndpointsOfNetwork(existing.Id)
		if lerr != nil {
			return fmt.Errorf("HCN network %s: %w", n.Name, lerr)
		}
		if len(eps) > 0 {
			return fmt.Errorf("%w, and %d endpoints still use it; detach their containers (or delete the network) before the node slice can change", diff, len(eps))
		}
		h.log.Info("replacing an HCN network that no longer matches the node slice", "network", n.Name, "reason", diff)
		if err := existing.Delete(); err != nil && !hcn.IsNotFoundError(err) {
			return fmt.Errorf("delete stale HCN network %s: %w", n.Name, err)
		}
	case !hcn.IsNotFoundError(err):
		return fmt.Errorf("look up HCN network %s: %w", n.Name, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	var want hcn.HostComputeNetwork
	if err := decode(doc, &want); err != nil {
		return err
	}
	created, err := want.Create()
	if err != nil {
		return fmt.Errorf("create HCN network %s on %s: %w", n.Name, n.Subnet, err)
	}
	h.networks[n.Name] = created.Id
	h.log.Info("HCN network created", "network", n.Name, "id", created.Id, "subnet", n.Subnet, "gateway", n.Gateway)
	h.enableForwarding(n)
	return nil
}

// enableForwarding lets the host route between the network's vNIC and the
// overlay. Without it containers reach the node but nothing beyond, which
// is worth a warning but not a failed attach.
func (h *HCN) enableForwarding(n engine.HCNNetwork) {
	gw := netip.PrefixFrom(n.Gateway, n.Subnet.Bits())
	names, err := winnet.EnableForwardingFor(gw)
	if err != nil {
		h.log.Warn("cannot turn IP forwarding on for the HCN network's host interface; its containers will not reach other nodes", "network", n.Name, "gateway", gw, "err", err)
		return
	}
	h.log.Debug("IP forwarding on", "network", n.Name, "interfaces", names)
}

func (h *HCN) networkID(name string) (string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if id, ok := h.networks[name]; ok {
		return id, nil
	}
	nw, err := hcn.GetNetworkByName(name)
	if err != nil {
		return "", fmt.Errorf("HCN network %s: %w (setup_global_overlay creates it)", name, err)
	}
	h.networks[name] = nw.Id
	return nw.Id, nil
}

// Attach creates the container's namespace and its endpoint on the
// network, and returns the namespace GUID. An endpoint left for the same
// container by an attach that never completed is removed first. On error
// nothing is left behind.
func (h *HCN) Attach(ctx context.Context, a engine.HCNAttach) (string, error) {
	netID, err := h.networkID(a.Network)
	if err != nil {
		return "", err
	}
	epDoc, err := EndpointDocument(netID, a)
	if err != nil {
		return "", err
	}
	nsDoc, err := NamespaceDocument()
	if err != nil {
		return "", err
	}
	var ep hcn.HostComputeEndpoint
	var ns hcn.HostComputeNamespace
	if err := decode(epDoc, &ep); err != nil {
		return "", err
	}
	if err := decode(nsDoc, &ns); err != nil {
		return "", err
	}
	if err := h.removeLeftover(ep.Name); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}

	createdNS, err := ns.Create()
	if err != nil {
		return "", fmt.Errorf("create the HCN namespace of container %s: %w", a.ContainerID, err)
	}
	createdEP, err := ep.Create()
	if err != nil {
		h.deleteNamespace(createdNS.Id)
		return "", fmt.Errorf("create the HCN endpoint of container %s (%s on %s): %w", a.ContainerID, a.IP, a.Network, err)
	}
	if err := hcn.AddNamespaceEndpoint(createdNS.Id, createdEP.Id); err != nil {
		h.deleteEndpoint(createdEP)
		h.deleteNamespace(createdNS.Id)
		return "", fmt.Errorf("put the HCN endpoint of container %s into its namespace: %w", a.ContainerID, err)
	}
	guid, err := BareGUID(createdNS.Id)
	if err != nil {
		h.detach(createdNS.Id)
		return "", fmt.Errorf("HNS answered namespace ID %q: %w", createdNS.Id, err)
	}
	h.log.Debug("HCN endpoint attached", "container", a.ContainerID, "ip", a.IP, "namespace", guid, "endpoint", createdEP.Id)
	return guid, nil
}

// removeLeftover deletes an endpoint of that name, and its namespace when
// nothing else is in it.
func (h *HCN) removeLeftover(name string) error {
	ep, err := hcn.GetEndpointByName(name)
	if hcn.IsNotFoundError(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up HCN endpoint %s: %w", name, err)
	}
	h.log.Info("removing an HCN endpoint left by an attach that never completed", "endpoint", name, "id", ep.Id)
	if ns := ep.HostComputeNamespace; ns != "" {
		if err := hcn.RemoveNamespaceEndpoint(ns, ep.Id); err != nil && !hcn.IsNotFoundError(err) {
			return fmt.Errorf("take leftover HCN endpoint %s out of namespace %s: %w", name, ns, err)
		}
		h.deleteNamespaceIfEmpty(ns)
	}
	if err := ep.Delete(); err != nil && !hcn.IsNotFoundError(err) {
		return fmt.Errorf("delete leftover HCN endpoint %s: %w", name, err)
	}
	return nil
}

// Detach removes our endpoints from the namespace and deletes them, then
// the namespace unless someone else's endpoint is still in it. An unknown
// namespace is fine.
func (h *HCN) Detach(_ context.Context, namespaceGUID string) error {
	guid, err := BareGUID(namespaceGUID)
	if err != nil {
		return fmt.Errorf("detach: namespace %w", err)
	}
	return h.detach(guid)
}

func (h *HCN) detach(guid string) error {
	ids, err := hcn.GetNamespaceEndpointIds(guid)
	if hcn.IsNotFoundError(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read HCN namespace %s: %w", guid, err)
	}
	var errs []error
	for _, id := range ids {
		ep, err := hcn.GetEndpointByID(id)
		if hcn.IsNotFoundError(err) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("read HCN endpoint %s: %w", id, err))
			continue
		}
		if !strings.HasPrefix(ep.Name, endpointPrefix) {
			continue // not ours: the runtime's, say a NAT endpoint
		}
		if err := hcn.RemoveNamespaceEndpoint(guid, id); err != nil && !hcn.IsNotFoundError(err) {
			errs = append(errs, fmt.Errorf("take HCN endpoint %s out of namespace %s: %w", ep.Name, guid, err))
			continue
		}
		if err := ep.Delete(); err != nil && !hcn.IsNotFoundError(err) {
			errs = append(errs, fmt.Errorf("delete HCN endpoint %s: %w", ep.Name, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	h.deleteNamespaceIfEmpty(guid)
	return nil
}

func (h *HCN) deleteNamespaceIfEmpty(id string) {
	ids, err := hcn.GetNamespaceEndpointIds(id)
	if err != nil || len(ids) > 0 {
		if len(ids) > 0 {
			h.log.Info("keeping an HCN namespace other endpoints still use", "namespace", id, "endpoints", len(ids))
		}
		return
	}
	h.deleteNamespace(id)
}

func (h *HCN) deleteNamespace(id string) {
	ns, err := hcn.GetNamespaceByID(id)
	if err == nil {
		err = ns.Delete()
	}
	if err != nil && !hcn.IsNotFoundError(err) {
		h.log.Warn("deleting an HCN namespace failed", "namespace", id, "err", err)
	}
}

func (h *HCN) deleteEndpoint(ep *hcn.HostComputeEndpoint) {
	if err := ep.Delete(); err != nil && !hcn.IsNotFoundError(err) {
		h.log.Warn("deleting an HCN endpoint failed", "endpoint", ep.Name, "err", err)
	}
}

// DeleteNetwork removes the network; a missing one is fine. HNS refuses
// while endpoints remain, and that error is returned.
func (h *HCN) DeleteNetwork(_ context.Context, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.networks, name)
	nw, err := hcn.GetNetworkByName(name)
	if hcn.IsNotFoundError(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up HCN network %s: %w", name, err)
	}
	if err := nw.Delete(); err != nil && !hcn.IsNotFoundError(err) {
		return fmt.Errorf("delete HCN network %s: %w", name, err)
	}
	return nil
}
