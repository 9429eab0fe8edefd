package main

import (
	"crypto/fips140"
	"fmt"
	"runtime/debug"
)

// versionText is what --version prints: meshcert's version, the GOFIPS140
// setting it was built with and the Go Cryptographic Module that gives, and
// the FIPS 140-3 mode it runs in.
func versionText(version string, build []debug.BuildSetting) string {
	return fmt.Sprintf("%s\nGOFIPS140: %s (Go Cryptographic Module %s)\nFIPS 140-3 mode: %s\n",
		version, fipsBuild(build), fips140.Version(), fipsMode())
}

// fipsBuild is the binary's GOFIPS140 setting, which the go command records
// only when it is not off.
func fipsBuild(build []debug.BuildSetting) string {
	for _, s := range build {
		if s.Key == "GOFIPS140" {
			return s.Value
		}
	}
	return "off"
}

// fipsMode names the FIPS 140-3 mode as the fips140 GODEBUG setting does: on,
// only (non-approved cryptography fails), or off.
func fipsMode() string {
	switch {
	case fips140.Enforced():
		return "only"
	case fips140.Enabled():
		return "on"
	default:
		return "off"
	}
}

// buildSettings are the binary's build settings, or none when it has no build
// information.
func buildSettings() []debug.BuildSetting {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return nil
	}
	return info.Settings
}
