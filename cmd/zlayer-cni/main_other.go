//go:build !linux

// Command zlayer-cni is a CNI plugin for Linux network namespaces; on
// other platforms it only says so.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Fprintf(os.Stderr, "zlayer-cni: CNI network namespaces are a Linux feature; this is %s\n", runtime.GOOS)
	os.Exit(1)
}
