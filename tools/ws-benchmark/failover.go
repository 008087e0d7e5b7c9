package main

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func runFailover(ctx context.Context, o *options, dir string, cli *clientv3.Client, etcdURL string) ([]row, error) {
	return nil, nil
}
