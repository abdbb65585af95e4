// Command etcd runs the etcd server from go.etcd.io/etcd/server/v3 (the version k8s.io/kubernetes
// pins), so the tests need no etcd package from the system.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
