package app

import (
	"testing"
	"time"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
)

func TestRecordlessLeases(t *testing.T) {
	cluster := redistest.StartT(t, 3)
	sem, err := semaphore.New(semaphore.Config{Addrs: cluster.Addrs(), Password: cluster.Password, NodeTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sem.Close() })
	ctx := t.Context()
	const ns, key, size = "team-a", "jobs", 3
	name := leaseapi.SemaphoreName(ns, key)
	recorded, err := sem.AcquireWithRecord(ctx, name, size, time.Minute, semaphore.NewHolderID(), semaphore.Record{Granted: time.Now(), Pod: "web-0"})
	if err != nil {
		t.Fatal(err)
	}
	previous, err := sem.AcquireAs(ctx, name, size, time.Minute, semaphore.NewHolderID())
	if err != nil {
		t.Fatal(err)
	}
	lease := func(l semaphore.Lease) leaseapi.Lease {
		return leaseapi.Lease{Namespace: ns, Key: key, Slot: l.Slot, Holder: l.Holder}
	}
	for _, tc := range []struct {
		name  string
		lease leaseapi.Lease
		want  bool
	}{
		{"a lease of this release needs its pod's token", lease(recorded), false},
		{"a lease of the previous release goes by its holder id", lease(previous), true},
		{"a lease that is not held goes on to hear that it was lost", leaseapi.Lease{Namespace: ns, Key: key, Slot: 2, Holder: semaphore.NewHolderID()}, true},
		{"another holder on a held slot goes on to hear that it was lost", leaseapi.Lease{Namespace: ns, Key: key, Slot: recorded.Slot, Holder: semaphore.NewHolderID()}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := recordlessLeases{sem}.IsLegacy(ctx, tc.lease)
			if err != nil || got != tc.want {
				t.Errorf("IsLegacy = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}
