// Package packaging holds no code: it is where the service definitions for
// each platform live (systemd/, launchd/, windows/), and its tests check
// them — systemd-analyze verify, the capability set against a real daemon,
// the launchd plist's structure.
package packaging
