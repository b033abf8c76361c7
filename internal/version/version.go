// Package version holds the build's version string, set at link time with
// -ldflags "-X github.com/zlayer/zlayer-overlayd/internal/version.Version=...".
package version

// Version of zlayer-overlayd.
var Version = "0.1.0-dev"
