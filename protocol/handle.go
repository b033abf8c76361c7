package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
)

// Platforms of an AttachHandle.
const (
	PlatformLinuxPID         = "linux_pid"
	PlatformWindowsContainer = "windows_container"
	PlatformGuestManaged     = "guest_managed"
	// PlatformNetns (extension) is a network namespace given by its file,
	// as CNI gives it: no process, a container id and an interface name.
	PlatformNetns = "netns"
)

// AttachHandle identifies the container to attach (tag "platform"). Exactly
// the fields of its Platform are meaningful:
//
//	linux_pid          PID
//	windows_container  ContainerID, IP (optional)
//	guest_managed      ID
//	netns              Path (optional on detach), ContainerID, IfName
type AttachHandle struct {
	Platform    string
	PID         uint32
	ContainerID string
	IP          netip.Addr
	ID          string
	// Path is the network namespace file of a netns handle, e.g.
	// /var/run/netns/cni-1234 or /proc/4242/ns/net.
	Path string
	// IfName is the interface a netns handle names inside the namespace.
	IfName string
}

// LinuxPID is a handle for a Linux container given by its init PID.
func LinuxPID(pid uint32) AttachHandle {
	return AttachHandle{Platform: PlatformLinuxPID, PID: pid}
}

// WindowsContainer is a handle for a Windows container (HCS id, or the
// namespace GUID on detach); ip may be the zero Addr.
func WindowsContainer(id string, ip netip.Addr) AttachHandle {
	return AttachHandle{Platform: PlatformWindowsContainer, ContainerID: id, IP: ip}
}

// GuestManaged is a handle for a VM guest that runs its own WireGuard.
func GuestManaged(id string) AttachHandle {
	return AttachHandle{Platform: PlatformGuestManaged, ID: id}
}

// Netns is a handle for an interface ifName of container containerID in the
// network namespace at path (CNI's CNI_NETNS, CNI_CONTAINERID, CNI_IFNAME).
// A (container id, ifname) pair is one attachment; path may be empty on a
// detach.
func Netns(path, containerID, ifName string) AttachHandle {
	return AttachHandle{Platform: PlatformNetns, Path: path, ContainerID: containerID, IfName: ifName}
}

// String is a short form for logs and lock keys, e.g. "linux_pid:4242".
func (h AttachHandle) String() string {
	switch h.Platform {
	case PlatformLinuxPID:
		return h.Platform + ":" + strconv.FormatUint(uint64(h.PID), 10)
	case PlatformWindowsContainer:
		return h.Platform + ":" + h.ContainerID
	case PlatformGuestManaged:
		return h.Platform + ":" + h.ID
	case PlatformNetns:
		return h.Platform + ":" + h.ContainerID + "/" + h.IfName
	}
	return h.Platform
}

// MarshalJSON writes the handle with the reference's key order.
func (h AttachHandle) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`{"platform":`)
	writeString(&b, h.Platform)
	switch h.Platform {
	case PlatformLinuxPID:
		b.WriteString(`,"pid":`)
		b.WriteString(strconv.FormatUint(uint64(h.PID), 10))
	case PlatformWindowsContainer:
		b.WriteString(`,"container_id":`)
		writeString(&b, h.ContainerID)
		if h.IP.IsValid() {
			b.WriteString(`,"ip":`)
			writeString(&b, h.IP.String())
		}
	case PlatformGuestManaged:
		b.WriteString(`,"id":`)
		writeString(&b, h.ID)
	case PlatformNetns:
		if h.Path != "" {
			b.WriteString(`,"path":`)
			writeString(&b, h.Path)
		}
		b.WriteString(`,"container_id":`)
		writeString(&b, h.ContainerID)
		b.WriteString(`,"ifname":`)
		writeString(&b, h.IfName)
	default:
		return nil, fmt.Errorf("unknown attach handle platform %q", h.Platform)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON reads a handle, requiring the fields of its platform.
func (h *AttachHandle) UnmarshalJSON(data []byte) error {
	var raw struct {
		Platform    *string     `json:"platform"`
		PID         *uint32     `json:"pid"`
		ContainerID *string     `json:"container_id"`
		IP          *netip.Addr `json:"ip"`
		ID          *string     `json:"id"`
		Path        *string     `json:"path"`
		IfName      *string     `json:"ifname"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	if raw.Platform == nil {
		return fmt.Errorf("missing field `platform`")
	}
	*h = AttachHandle{Platform: *raw.Platform}
	switch h.Platform {
	case PlatformLinuxPID:
		if raw.PID == nil {
			return fmt.Errorf("missing field `pid` in %s handle", h.Platform)
		}
		h.PID = *raw.PID
	case PlatformWindowsContainer:
		if raw.ContainerID == nil {
			return fmt.Errorf("missing field `container_id` in %s handle", h.Platform)
		}
		h.ContainerID = *raw.ContainerID
		if raw.IP != nil {
			h.IP = *raw.IP
		}
	case PlatformGuestManaged:
		if raw.ID == nil {
			return fmt.Errorf("missing field `id` in %s handle", h.Platform)
		}
		h.ID = *raw.ID
	case PlatformNetns:
		if raw.ContainerID == nil {
			return fmt.Errorf("missing field `container_id` in %s handle", h.Platform)
		}
		if raw.IfName == nil {
			return fmt.Errorf("missing field `ifname` in %s handle", h.Platform)
		}
		h.ContainerID, h.IfName = *raw.ContainerID, *raw.IfName
		if raw.Path != nil {
			h.Path = *raw.Path
		}
	default:
		return fmt.Errorf("unknown variant %q for handle platform, expected one of linux_pid, windows_container, guest_managed, netns", h.Platform)
	}
	return nil
}

// Peer scopes.
const (
	ScopeGlobal  = "global"
	ScopeService = "service"
)

// PeerScope selects the WireGuard device a peer operation targets (tag
// "scope", nested inside the request field also named scope): the global
// overlay, or a service's dedicated overlay. The zero value is global, which
// is also what a request without a scope field means.
type PeerScope struct {
	Kind    string // ScopeGlobal (or empty) or ScopeService
	Service string // set when Kind is ScopeService
}

// GlobalScope is the scope of the node's global overlay.
func GlobalScope() PeerScope { return PeerScope{Kind: ScopeGlobal} }

// ServiceScope is the scope of a service's dedicated overlay.
func ServiceScope(service string) PeerScope {
	return PeerScope{Kind: ScopeService, Service: service}
}

// IsGlobal reports whether the scope targets the global overlay.
func (s PeerScope) IsGlobal() bool { return s.Kind != ScopeService }

// String is "global" or "service:<name>".
func (s PeerScope) String() string {
	if s.IsGlobal() {
		return ScopeGlobal
	}
	return ScopeService + ":" + s.Service
}

// MarshalJSON writes {"scope":"global"} or {"scope":"service","service":...}.
func (s PeerScope) MarshalJSON() ([]byte, error) {
	if s.IsGlobal() {
		return []byte(`{"scope":"global"}`), nil
	}
	var b bytes.Buffer
	b.WriteString(`{"scope":"service","service":`)
	writeString(&b, s.Service)
	b.WriteByte('}')
	return b.Bytes(), nil
}

// UnmarshalJSON reads a scope object; null means global.
func (s *PeerScope) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		*s = GlobalScope()
		return nil
	}
	var raw struct {
		Scope   *string `json:"scope"`
		Service *string `json:"service"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	if raw.Scope == nil {
		return fmt.Errorf("missing field `scope` in peer scope")
	}
	switch *raw.Scope {
	case ScopeGlobal:
		*s = GlobalScope()
	case ScopeService:
		if raw.Service == nil {
			return fmt.Errorf("missing field `service` in service scope")
		}
		*s = ServiceScope(*raw.Service)
	default:
		return fmt.Errorf("unknown variant %q for peer scope, expected global or service", *raw.Scope)
	}
	return nil
}
