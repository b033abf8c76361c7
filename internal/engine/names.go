package engine

import (
	"fmt"
	"strconv"
	"strings"
)

// maxIfName is the longest Linux interface name (IFNAMSIZ - 1).
const maxIfName = 15

// ifName derives a kernel interface name from stable inputs, like the
// reference: "zl-" + parts joined by "-" + "-" + suffix when that fits in 15
// bytes, else "zl-" + a hash + "-" + suffix. Unlike the reference we never
// feed it the main daemon's PID (its instance_id), so names survive restarts
// of both daemons, and the hash is FNV-1a, which is stable across Go
// releases (the reference's SipHash output is not promised to be).
func ifName(suffix string, parts ...string) string {
	short := "zl-" + strings.Join(parts, "-")
	if suffix != "" {
		short += "-" + suffix
	}
	if len(short) <= maxIfName && validIfName(short) && unambiguous(parts) {
		return short
	}
	h := uint64(0xcbf29ce484222325)
	for _, p := range append(parts, suffix) {
		for i := 0; i < len(p); i++ {
			h ^= uint64(p[i])
			h *= 0x100000001b3
		}
		// A separator keeps ("a-b","c") and ("a","b-c") apart.
		h ^= 0xff
		h *= 0x100000001b3
	}
	hex := fmt.Sprintf("%016x", h)
	budget := maxIfName - len("zl-") - 1 - len(suffix)
	if suffix == "" || budget < 6 {
		return "zl-" + hex[:12]
	}
	return "zl-" + hex[:min(budget, len(hex))] + "-" + suffix
}

// unambiguous reports whether joining parts with "-" can be split back in
// only one way: every part but the last is free of dashes. Otherwise
// ("a-b","c") and ("a","b-c") would get the same name.
func unambiguous(parts []string) bool {
	for _, p := range parts[:max(len(parts)-1, 0)] {
		if strings.Contains(p, "-") {
			return false
		}
	}
	return true
}

// validIfName reports whether s is usable verbatim as a Linux interface
// name: no '/', ':', whitespace or control bytes.
func validIfName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '/' || c == ':' {
			return false
		}
	}
	return s != "" && s != "." && s != ".."
}

// maxPID is PID_MAX_LIMIT on 64-bit Linux; larger PIDs cannot exist, and
// every valid one keeps vethName within 15 bytes.
const maxPID = 4194304

// vethName is the host end of a container's veth pair: "zl-v<pid>-e0" for
// eth0 and "-e1" for eth1. The main daemon's stale-link sweep deletes
// "veth-*" and "zl-<deployment>-*"; this shape avoids both.
func vethName(pid uint32, ifIndex int) string {
	return "zl-v" + strconv.FormatUint(uint64(pid), 10) + "-e" + strconv.Itoa(ifIndex)
}

// parseVethName is the inverse of vethName.
func parseVethName(name string) (pid uint32, ifIndex int, ok bool) {
	rest, found := strings.CutPrefix(name, "zl-v")
	if !found {
		return 0, 0, false
	}
	p, e, found := strings.Cut(rest, "-e")
	if !found {
		return 0, 0, false
	}
	pp, err1 := strconv.ParseUint(p, 10, 32)
	ee, err2 := strconv.Atoi(e)
	if err1 != nil || err2 != nil || (ee != 0 && ee != 1) {
		return 0, 0, false
	}
	return uint32(pp), ee, true
}
