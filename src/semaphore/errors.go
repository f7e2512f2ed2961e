package semaphore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Sentinels for errors.Is; the typed errors below carry the details.
var (
	ErrFull      = errors.New("semaphore is full")
	ErrNoQuorum  = errors.New("no Redis quorum")
	ErrLeaseLost = errors.New("lease lost")
	ErrAuth      = errors.New("Redis rejected the credentials")
)

// FullError reports that every slot of a semaphore is held.
type FullError struct {
	Name string
	Size int
	// Held is how many slots are held; it can exceed Size for a while after
	// the size was lowered, until the extra holders release.
	Held int
}

func (e *FullError) Error() string {
	return fmt.Sprintf("semaphore %q is full (%d/%d slots held)", e.Name, e.Held, e.Size)
}

func (e *FullError) Is(target error) bool { return target == ErrFull }

// NodeError is one node's failure during an operation.
type NodeError struct {
	Node string
	Err  error
}

func (e NodeError) Error() string { return e.Node + ": " + e.Err.Error() }
func (e NodeError) Unwrap() error { return e.Err }

// Is lets errors.Is(nodeErr, ErrAuth) tell a rejected password from an
// outage.
func (e NodeError) Is(target error) bool { return target == ErrAuth && e.Reason() == reasonAuth }

// Reason is a short, stable classification for metrics labels and logs.
func (e NodeError) Reason() string { return classify(e.Err) }

// NoQuorumError reports that fewer than a quorum of nodes gave a usable
// answer, or that the nodes never agreed on one slot.
type NoQuorumError struct {
	Op       string
	Quorum   int
	Nodes    int
	Failures []NodeError
	// Split is set when enough nodes answered but no slot was claimed on a
	// quorum of them in any attempt (heavy contention, or nodes whose data
	// diverged after a restart).
	Split    bool
	Attempts int
}

func (e *NoQuorumError) Error() string {
	var b strings.Builder
	if e.Split {
		fmt.Fprintf(&b, "no slot was claimed on a quorum of %d of %d Redis nodes in %d attempts", e.Quorum, e.Nodes, e.Attempts)
	} else {
		fmt.Fprintf(&b, "no Redis quorum for %s: %d of %d nodes failed and %d must answer", e.Op, len(e.Failures), e.Nodes, e.Quorum)
	}
	if len(e.Failures) > 0 {
		b.WriteString(" (")
		for i, f := range e.Failures {
			if i > 0 {
				b.WriteString("; ")
			}
			b.WriteString(f.Error())
		}
		b.WriteString(")")
	}
	return b.String()
}

func (e *NoQuorumError) Is(target error) bool {
	if target == ErrNoQuorum {
		return true
	}
	if target == ErrAuth {
		for _, f := range e.Failures {
			if f.Reason() == reasonAuth {
				return true
			}
		}
	}
	return false
}

// LostReason says why a lease is no longer held.
type LostReason string

const (
	// LostExpired: the lease's validity ran out before a quorum renewed it.
	LostExpired LostReason = "expired"
	// LostNotFound: a quorum of nodes no longer holds the lease (it expired
	// there or was released).
	LostNotFound LostReason = "not found"
	// LostHeldByOther: another holder owns the slot on a quorum of nodes.
	LostHeldByOther LostReason = "held by another holder"
)

// LeaseLostError reports a lease that can no longer be renewed. It is never
// resurrected: the holder must acquire again.
type LeaseLostError struct {
	Lease  Lease
	Reason LostReason
}

func (e *LeaseLostError) Error() string {
	switch e.Reason {
	case LostExpired:
		return fmt.Sprintf("lease on slot %d of semaphore %q expired before a quorum renewed it", e.Lease.Slot, e.Lease.Name)
	case LostHeldByOther:
		return fmt.Sprintf("slot %d of semaphore %q is held by another holder", e.Lease.Slot, e.Lease.Name)
	default:
		return fmt.Sprintf("lease on slot %d of semaphore %q is not held on a quorum of nodes (it expired or was released)", e.Lease.Slot, e.Lease.Name)
	}
}

func (e *LeaseLostError) Is(target error) bool { return target == ErrLeaseLost }

const (
	reasonTimeout  = "timeout"
	reasonAuth     = "auth"
	reasonConn     = "connection"
	reasonLoading  = "loading"
	reasonRedis    = "redis_error"
	reasonProtocol = "protocol"
)

func classify(err error) string {
	var rerr redis.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return reasonTimeout
	case errors.As(err, &rerr):
		msg := string(rerr)
		switch {
		case strings.HasPrefix(msg, "NOAUTH"), strings.HasPrefix(msg, "WRONGPASS"),
			strings.Contains(msg, "invalid password"), strings.Contains(msg, "AUTH <password> called without any password"):
			return reasonAuth
		case strings.HasPrefix(msg, "LOADING"):
			return reasonLoading
		}
		return reasonRedis
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return reasonTimeout
	}
	var perr *protocolError
	if errors.As(err, &perr) {
		return reasonProtocol
	}
	return reasonConn
}

// protocolError is a reply of an unexpected shape; it means a script and the
// code disagree, never a network problem.
type protocolError struct {
	what  string
	reply any
}

func (e *protocolError) Error() string {
	return fmt.Sprintf("unexpected reply to %s: %T %v", e.what, e.reply, e.reply)
}

// drift is the Redlock clock-drift allowance: 1% of the TTL plus 2 ms for the
// granularity of Redis' expiry.
func drift(ttl time.Duration) time.Duration { return ttl/100 + 2*time.Millisecond }
