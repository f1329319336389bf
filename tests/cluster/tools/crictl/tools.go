//go:build tools

// Package tools pins crictl (sigs.k8s.io/cri-tools), the CRI client scripts and tests use to
// list the real node's containers the way a node's operator would.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
