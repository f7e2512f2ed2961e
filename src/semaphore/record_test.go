package semaphore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

// rawDo runs one command on one node of the cluster.
func rawDo(t *testing.T, cluster *redistest.Cluster, node int, cmd string, args ...any) any {
	t.Helper()
	conn, err := redis.Dial("tcp", cluster.Nodes[node].Addr(), redis.DialPassword(cluster.Password))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	v, err := conn.Do(cmd, args...)
	if err != nil {
		t.Fatalf("%s on node %d: %v", cmd, node, err)
	}
	return v
}

func recordKey(name, holder string) string { return "pmph:{" + name + "}:record:" + holder }

func testRecord(pod string) semaphore.Record {
	return semaphore.Record{Granted: time.UnixMilli(time.Now().UnixMilli()), Pod: pod,
		Owner: "ReplicaSet/web-1", OwnerAPIVersion: "apps/v1", OwnerUID: "0b7c-uid"}
}

func TestRecordLivesAndDiesWithTheLease(t *testing.T) {
	c, cluster := newClient(t, 3, time.Second)
	ctx := context.Background()
	const name = "ns/rec"
	holder := semaphore.NewHolderID()
	rec := testRecord("web-1-abcde")
	lease, err := c.AcquireWithRecord(ctx, name, 2, 10*time.Second, holder, rec)
	if err != nil {
		t.Fatal(err)
	}
	for i := range cluster.Nodes {
		fields, err := redis.StringMap(rawDo(t, cluster, i, "HGETALL", recordKey(name, holder)), nil)
		if err != nil || fields["pod"] != "web-1-abcde" || fields["owner"] != "ReplicaSet/web-1" || fields["owner_uid"] != "0b7c-uid" {
			t.Fatalf("node %d record %v (%v), want the pod and owner", i, fields, err)
		}
		if pttl, _ := redis.Int64(rawDo(t, cluster, i, "PTTL", recordKey(name, holder)), nil); pttl <= 0 || pttl > 10_000 {
			t.Fatalf("node %d record PTTL %d, want the lease's 10 s", i, pttl)
		}
	}

	held, err := c.Leases(ctx, name, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0].Holder != holder || held[0].Slot != lease.Slot || !held[0].Held || held[0].Nodes != 3 {
		t.Fatalf("Leases = %+v, want the one lease on 3 nodes", held)
	}
	if r := held[0].Record; r == nil || !r.Granted.Equal(rec.Granted) || r.Pod != rec.Pod || r.OwnerAPIVersion != "apps/v1" {
		t.Fatalf("record %+v, want %+v", held[0].Record, rec)
	}

	if _, err := c.Renew(ctx, lease, time.Minute); err != nil {
		t.Fatal(err)
	}
	for i := range cluster.Nodes {
		if pttl, _ := redis.Int64(rawDo(t, cluster, i, "PTTL", recordKey(name, holder)), nil); pttl <= 10_000 {
			t.Fatalf("node %d record PTTL %d after a renewal to 1 min, want it renewed with the slot", i, pttl)
		}
	}

	// A re-acquisition without a record (the sidecar through the lease
	// API) keeps the admission's record.
	again, err := c.AcquireAs(ctx, name, 2, time.Minute, holder)
	if err != nil || again.Slot != lease.Slot {
		t.Fatalf("re-acquire: %+v %v", again, err)
	}
	if held, _ := c.Leases(ctx, name, 2); len(held) != 1 || held[0].Record == nil || held[0].Record.Pod != rec.Pod {
		t.Fatalf("after re-acquisition Leases = %+v, want the record kept", held)
	}

	if released, err := c.Release(ctx, lease); err != nil || !released {
		t.Fatalf("release: %v %v", released, err)
	}
	waitFor(t, 5*time.Second, "the record deleted on every node", func() bool {
		for i := range cluster.Nodes {
			if n, _ := redis.Int(rawDo(t, cluster, i, "EXISTS", recordKey(name, holder)), nil); n != 0 {
				return false
			}
		}
		return true
	})
	if all, err := c.RecordedLeases(ctx); err != nil || len(all) != 0 {
		t.Fatalf("RecordedLeases after release = %+v, %v; want none", all, err)
	}
}

func TestRecordExpiresWithTheClaim(t *testing.T) {
	c, _ := newClient(t, 3, time.Second)
	ctx := context.Background()
	holder := semaphore.NewHolderID()
	if _, err := c.AcquireWithRecord(ctx, "ns/short", 1, 300*time.Millisecond, holder, testRecord("p")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the record to expire with the claim", func() bool {
		all, err := c.RecordedLeases(ctx)
		return err == nil && len(all) == 0
	})
}

func TestRecordedLeasesWalksEverySemaphore(t *testing.T) {
	c, cluster := newClient(t, 3, time.Second)
	ctx := context.Background()
	want := map[string]string{} // holder -> semaphore
	for _, name := range []string{"a/one", "b/two", "b/two", "c/with:colon"} {
		h := semaphore.NewHolderID()
		if _, err := c.AcquireWithRecord(ctx, name, 3, time.Minute, h, testRecord("pod-"+h[:4])); err != nil {
			t.Fatal(err)
		}
		want[h] = name
	}
	// A lease of the previous release: no record, never listed.
	old := mustAcquire(t, c, "b/two", 3, time.Minute)

	check := func(label string) {
		t.Helper()
		all, err := c.RecordedLeases(ctx)
		if err != nil {
			t.Fatalf("%s: %v", label, err)
		}
		if len(all) != len(want) {
			t.Fatalf("%s: %d leases %+v, want %d", label, len(all), all, len(want))
		}
		for _, l := range all {
			if want[l.Holder] != l.Name || l.Record == nil || l.Record.Pod != "pod-"+l.Holder[:4] || l.Holder == old.Holder {
				t.Fatalf("%s: unexpected lease %+v", label, l)
			}
		}
	}
	check("all nodes")
	cluster.Nodes[2].Kill()
	check("one node down")
	cluster.Nodes[1].Kill()
	var nq *semaphore.NoQuorumError
	if _, err := c.RecordedLeases(ctx); !errors.As(err, &nq) {
		t.Fatalf("two nodes down: %v, want a NoQuorumError", err)
	}
}

func TestLeasesOfAFullSemaphore(t *testing.T) {
	c, _ := newClient(t, 3, time.Second)
	ctx := context.Background()
	const name = "ns/full"
	holders := map[int]string{}
	for range 2 {
		h := semaphore.NewHolderID()
		l, err := c.AcquireWithRecord(ctx, name, 3, time.Minute, h, testRecord("pod"))
		if err != nil {
			t.Fatal(err)
		}
		holders[l.Slot] = h
	}
	legacy := mustAcquire(t, c, name, 3, time.Minute)
	holders[legacy.Slot] = legacy.Holder
	_, err := c.Acquire(ctx, name, 3, time.Minute)
	wantFull(t, err, name, 3, 3)

	held, err := c.Leases(ctx, name, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 3 {
		t.Fatalf("Leases = %+v, want 3", held)
	}
	for i, l := range held {
		if l.Slot != i || holders[i] != l.Holder || !l.Held {
			t.Fatalf("lease %d = %+v, want slot %d of %s", i, l, i, holders[i])
		}
		if (l.Holder == legacy.Holder) != (l.Record == nil) {
			t.Fatalf("lease %+v: only the lease taken without a record may lack one", l)
		}
	}
}
