// Package kuma holds the parts of Kuma's Mesh, Dataplane and mesh Secret that
// meshcert reads, as plain Go types.
//
// Kuma stores Mesh and Dataplane specs as free-form JSON and silently drops keys it
// does not know. The parsers here do the same, but report every value of the
// wrong type as a field error with its full path, so that a user sees exactly
// what to fix.
package kuma
