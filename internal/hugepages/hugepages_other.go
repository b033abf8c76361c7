//go:build !linux

package hugepages

// Only Linux gives huge pages to memory that did not ask for them.
func refuse() error { return nil }

func readRefused(int) (refused, known bool, err error) { return false, false, nil }
