// Package leases ends etcd leases on the way out, for the programs that
// hold one in a concurrency.Session: the registrar (its node key) and the
// monitor (its election candidate).
package leases

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
)

// RevokeTimeout bounds one revoke. A stopping program waits no longer than
// this for etcd; if the revoke does not make it, the lease's keys expire
// after the TTL instead.
const RevokeTimeout = 2 * time.Second

// Release ends a session for good: it stops the keep-alive (Orphan) and then
// revokes the lease, so the keys attached to it vanish at once.
//
// Why not sess.Close: Close revokes with the session's own context, which is
// the context given to concurrency.WithContext. That is usually the context
// whose cancellation made us stop, and a cancelled context cannot be used to
// revoke: the key would stay for a whole TTL. Close also waits up to a whole
// TTL for the revoke. Release uses a fresh context bounded by RevokeTimeout.
//
// Why Orphan first: with the keep-alive stopped, the revoke is final, and if
// the revoke fails (etcd unreachable) nothing renews the lease any more, so
// it expires after its TTL rather than living on as a zombie (an election
// candidate or a node key that nobody holds).
//
// A revoke that fails is logged, with what follows from it, and returned. A
// lease that is already gone (expired, or revoked by someone else) counts as
// released: its keys are gone too.
func Release(sess *concurrency.Session, log *zap.Logger) error {
	sess.Orphan()
	return Revoke(sess.Client(), sess.Lease(), log)
}

// Revoke revokes a lease that no session keeps alive, with its own bounded
// context (as Release does), logging a failure.
func Revoke(cli *clientv3.Client, id clientv3.LeaseID, log *zap.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), RevokeTimeout)
	defer cancel()
	_, err := cli.Revoke(ctx, id)
	if err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return nil
	}
	if log != nil {
		log.Warn("could not revoke the lease; its keys expire after the TTL",
			zap.String("lease", fmt.Sprintf("%x", id)), zap.Error(err))
	}
	return fmt.Errorf("revoke lease %x: %w", id, err)
}
