// Command etcd runs the etcd server from go.etcd.io/etcd/server/v3, exactly as etcd's own
// release binary does (its entry point lives in a module with local replace lines, which
// a dependent module cannot build).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
