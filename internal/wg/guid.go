package wg

import "crypto/sha1"

// adapterNamespace is the RFC 4122 namespace of zlayer-overlayd's Wintun
// adapter GUIDs (a random UUID, fixed forever: changing it would give
// every existing adapter a new identity).
var adapterNamespace = [16]byte{0x6b, 0x2e, 0x0f, 0x4d, 0x93, 0x1c, 0x4a, 0x57, 0xa8, 0x3e, 0x5d, 0x1b, 0x7c, 0x02, 0x9f, 0x64}

// adapterGUID is the name-based (version 5, SHA-1) UUID of a device name in
// adapterNamespace, in RFC 4122 byte order: stable across restarts and
// machines, distinct per name.
func adapterGUID(name string) [16]byte {
	h := sha1.New()
	h.Write(adapterNamespace[:])
	h.Write([]byte(name))
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50 // version 5
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return u
}
