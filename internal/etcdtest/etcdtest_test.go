package etcdtest

import (
	"context"
	"testing"
	"time"
)

func TestSingleMemberPutGetAcrossRestart(t *testing.T) {
	c := Start(t)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	c.Stop(0)
	c.Restart(0)
	resp, err := cli.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: %v %v", resp, err)
	}
}

func TestThreeMembersSurviveOneStop(t *testing.T) {
	c := StartMembers(t, 3)
	cli := c.Client(t)
	c.Stop(0)
	c.WaitLeader(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put with one of three members down: %v", err)
	}
}
