//go:build linux

// Command zlayer-cni is a CNI plugin (spec 1.1.0) that hands containers to
// zlayer-overlayd: install it in /opt/cni/bin and name it as "type" in a
// network configuration (docs/operations.md, "CNI").
package main

import "github.com/zlayer/zlayer-overlayd/internal/cniplugin"

func main() { cniplugin.Main() }
