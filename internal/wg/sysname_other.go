//go:build linux || windows || freebsd || openbsd

package wg

// publishSystemName records the interface's name for SystemName. The
// kernel kept the requested name here, so nothing needs to be written for
// tools outside the process.
func publishSystemName(name, system string) (func(), error) {
	return rememberSystemName(name, system), nil
}
