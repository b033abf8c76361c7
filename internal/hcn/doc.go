// Package hcn attaches Windows containers to the overlay through the Host
// Compute Network service (HNS), with github.com/Microsoft/hcsshim/hcn.
//
// One Internal network per deployment ("<deployment>-overlay") spans the
// node's slice of the cluster CIDR, with the node IP as its gateway and no
// NetAdapterName policy: it is not bridged to a physical NIC, traffic
// leaves it only through the host, which routes it into the WireGuard
// overlay. Each container gets an endpoint with a fixed address from the
// slice (the engine's IPAM chose it), the cluster CIDR routed via the
// gateway and the cluster's DNS, in a network namespace (compartment) of
// its own. The namespace's GUID, bare and lower case, is what the engine
// answers in `attached` and what `detach_container` is keyed by.
//
// The JSON documents sent to HNS are built by the plain functions in
// documents.go, pinned by golden files under testdata/ and tested on every
// platform; only the calls into HNS are Windows-only.
package hcn
