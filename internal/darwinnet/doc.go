// Package darwinnet is the engine's network stack on macOS: addresses, MTU,
// link state and routes of the utun interfaces that carry the WireGuard
// overlay, through the same kernel interfaces ifconfig(8) and route(8) use
// (SIOCAIFADDR/SIOCDIFADDR and their IPv6 twins, SIOCSIFMTU, SIOCSIFFLAGS,
// and PF_ROUTE messages), never by running those tools.
//
// # Names
//
// The engine names devices itself ("zl-prod-g"), but macOS does not let
// anyone name a utun interface: the kernel hands out utun0, utun1, ... in
// creation order. The WireGuard backend keeps the engine's name for the
// device and records which utunN the kernel gave it (wg.SystemName, and
// /var/run/wireguard/NAME.name for operators). Net is constructed with that
// lookup and resolves every name through it before touching the kernel; a
// name the lookup does not know is taken as a literal interface name, so a
// device that is not open simply does not exist here. Links reports our
// devices under the engine's names.
//
// # What macOS cannot do
//
// There are no Linux bridges, veth pairs or network namespaces on macOS:
// EnsureBridge, Attach and Detach answer an error that says so. Containers
// on macOS run inside a Linux VM and attach as guest_managed peers of the
// overlay instead.
//
// Labels (Linux's IFLA_IFALIAS, which marks links as ours across restarts)
// do not exist for utun interfaces either. They are kept in memory, which
// loses nothing: a utun interface disappears with the process that opened
// it, so no interface can outlive the labels that describe it.
package darwinnet
