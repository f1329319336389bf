// Command coredns is CoreDNS with only the plugins a cluster's DNS uses (the kube-dns
// Service of the test bed's real node): Kubernetes names, health, readiness, metrics,
// caching and reloading. Nothing is forwarded upstream: the test bed reaches nothing
// outside. The full CoreDNS (`github.com/coredns/coredns`) links every cloud provider's SDK
// for plugins a test bed never loads.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func init() {
	// The plugins' order in a server block, as CoreDNS's plugin.cfg orders them.
	dnsserver.Directives = []string{
		"reload", "ready", "health", "prometheus", "errors", "log",
		"loadbalance", "cache", "kubernetes", "loop",
	}
}

func main() {
	coremain.Run()
}
