package linuxnet

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// maxDumpAttempts bounds how often a dump is repeated when the kernel flags it with
// NLM_F_DUMP_INTR (the table changed while it was being read, so the result may be
// incomplete). Churn that outlasts this many attempts is reported rather than
// papered over: acting on a partial link or address list could delete the wrong thing.
const maxDumpAttempts = 5

// retryDump runs dump until it completes without being interrupted.
func retryDump[T any](what string, dump func() (T, error)) (T, error) {
	var zero T
	for range maxDumpAttempts {
		v, err := dump()
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			continue
		}
		if err != nil {
			return zero, fmt.Errorf("%s: %w", what, err)
		}
		return v, nil
	}
	return zero, fmt.Errorf("%s: the kernel interrupted the dump %d times in a row because the table kept changing; try again: %w",
		what, maxDumpAttempts, netlink.ErrDumpInterrupted)
}

func listLinks(h *netlink.Handle) ([]netlink.Link, error) {
	return retryDump("list links", h.LinkList)
}

func listAddrs(h *netlink.Handle, link netlink.Link, family int) ([]netlink.Addr, error) {
	return retryDump(fmt.Sprintf("list addresses of %s", link.Attrs().Name), func() ([]netlink.Addr, error) {
		return h.AddrList(link, family)
	})
}

// listRoutesOn returns the main-table routes of one family whose output interface is link.
func listRoutesOn(h *netlink.Handle, link netlink.Link, family int) ([]netlink.Route, error) {
	filter := &netlink.Route{LinkIndex: link.Attrs().Index}
	return retryDump(fmt.Sprintf("list routes on %s", link.Attrs().Name), func() ([]netlink.Route, error) {
		return h.RouteListFiltered(family, filter, netlink.RT_FILTER_OIF)
	})
}
