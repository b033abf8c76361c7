// Package winnet is the engine's network stack on Windows: addresses, MTU,
// link state and routes of the Wintun adapters that carry the WireGuard
// overlay, through the IP Helper API (iphlpapi.dll; the calls x/sys/windows
// lacks are bound with windows.NewLazySystemDLL), never through netsh or
// PowerShell.
//
// Adapters are found by their alias, which is the name the engine gave
// the WireGuard device (wireguard-go creates Wintun adapters under that
// alias). Addresses are added without duplicate address detection, as on
// Linux, because IPAM already guarantees uniqueness. Routes the engine
// installs are static (MIB_IPPROTO_NETMGMT) and Routes reports only those,
// leaving out the on-link routes Windows derives from addresses, exactly
// like linuxnet leaves out proto-kernel routes.
//
// # What Windows does differently
//
// There are no Linux bridges, veth pairs or network namespaces: Windows
// containers are attached through the Host Compute Network service
// (internal/hcn), so EnsureBridge, Attach and Detach answer an error that
// says so. Labels (Linux's IFLA_IFALIAS) are kept in memory: a Wintun
// adapter is removed when the process that created it exits, so no adapter
// can outlive the labels that describe it.
package winnet
