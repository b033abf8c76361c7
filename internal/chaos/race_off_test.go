//go:build linux && !race

package chaos

const raceOn = false
