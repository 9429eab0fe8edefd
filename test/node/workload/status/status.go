// Package status is what the tests' workload serves at /svid: the SVID it
// holds and how it came by it.
package status

import "time"

// Status is what the workload serves at /svid.
type Status struct {
	// Started is when the program started.
	Started time.Time `json:"started"`
	// FirstSVID is when it got its first SVID; zero before.
	FirstSVID time.Time `json:"firstSVID"`
	// ID, Serial, NotAfter and Chain are the SVID it holds now: its SPIFFE
	// ID, its leaf's serial and expiry, and its certificates in PEM.
	ID       string    `json:"id,omitempty"`
	Serial   string    `json:"serial,omitempty"`
	NotAfter time.Time `json:"notAfter"`
	Chain    string    `json:"chain,omitempty"`
	// Bundle is the PEM of the roots of the SVID's trust domain.
	Bundle string `json:"bundle,omitempty"`
	// Updates counts the SVIDs received, StreamErrors the watch's failures.
	Updates      int `json:"updates"`
	StreamErrors int `json:"streamErrors"`
	// LastError is the watch's last failure.
	LastError string `json:"lastError,omitempty"`
	// Lapses counts the times, after the first SVID, that the one held
	// had expired before the next arrived.
	Lapses int `json:"lapses"`
}
