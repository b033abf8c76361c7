//go:build !amd64 || purego

package tun

func checksumNoFold(b []byte, initial uint64) uint64 {
	return checksumNoFoldGeneric(b, initial)
}

// checksumNoFoldSIMD exists so the tests build everywhere.
func checksumNoFoldSIMD(b []byte, initial uint64) uint64 {
	return checksumNoFoldGeneric(b, initial)
}
