// Command etcd is the etcd server, built at the version kube-apiserver is
// tested against, so the local control plane needs nothing from outside the
// Go module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
