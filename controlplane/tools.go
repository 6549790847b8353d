//go:build tools

// The control plane the test tier runs: these imports pin the commands to this module's
// versions. Build them with `go build -o DIR k8s.io/kubernetes/cmd/kube-apiserver ...`.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
