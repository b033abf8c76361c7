//go:build linux && race

package chaos

// raceOn is true in binaries built with -race (the daemon the suites run too).
const raceOn = true
