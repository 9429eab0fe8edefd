//go:build !linux

package node_test

import "testing"

func TestRealNode(t *testing.T) {
	t.Skip("a real node needs Linux")
}
