package leaseapi_test

import (
	"strings"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
)

func TestValidate(t *testing.T) {
	holder := strings.Repeat("0f", 16)
	ok := leaseapi.Lease{Namespace: "team-a", Key: "batch.jobs_1", Slot: 1023, Holder: holder}
	cases := []struct {
		name  string
		edit  func(*leaseapi.AcquireRequest)
		error string
	}{
		{"valid", func(*leaseapi.AcquireRequest) {}, ""},
		{"namespace empty", func(r *leaseapi.AcquireRequest) { r.Namespace = "" }, `the namespace "" must be a DNS label`},
		{"namespace upper", func(r *leaseapi.AcquireRequest) { r.Namespace = "Team" }, `the namespace "Team" must be a DNS label`},
		{"namespace long", func(r *leaseapi.AcquireRequest) { r.Namespace = strings.Repeat("a", 64) }, "must be a DNS label"},
		{"key empty", func(r *leaseapi.AcquireRequest) { r.Key = "" }, `the key "" must be 1 to 63 characters`},
		{"key edge", func(r *leaseapi.AcquireRequest) { r.Key = "a-" }, `the key "a-" must be 1 to 63 characters`},
		{"key slash", func(r *leaseapi.AcquireRequest) { r.Key = "a/b" }, `the key "a/b"`},
		{"key long", func(r *leaseapi.AcquireRequest) { r.Key = strings.Repeat("k", 64) }, "must be 1 to 63 characters"},
		{"slot negative", func(r *leaseapi.AcquireRequest) { r.Slot = -1 }, "the slot -1 must be from 0 to 1023"},
		{"slot high", func(r *leaseapi.AcquireRequest) { r.Slot = 1024 }, "the slot 1024 must be from 0 to 1023"},
		{"holder short", func(r *leaseapi.AcquireRequest) { r.Holder = "abc" }, `the holder "abc" must be 32 lowercase hex digits`},
		{"holder upper", func(r *leaseapi.AcquireRequest) { r.Holder = strings.ToUpper(holder) }, "must be 32 lowercase hex digits"},
		{"holder huge", func(r *leaseapi.AcquireRequest) { r.Holder = strings.Repeat("z", 500) }, `"` + strings.Repeat("z", 40) + `..."`},
		{"size 0", func(r *leaseapi.AcquireRequest) { r.Size = 0 }, "the size 0 must be from 1 to 1024"},
		{"size 1025", func(r *leaseapi.AcquireRequest) { r.Size = 1025 }, "the size 1025 must be from 1 to 1024"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := leaseapi.AcquireRequest{Lease: ok, Size: 1024}
			tc.edit(&r)
			err := r.Validate()
			switch {
			case tc.error == "" && err != nil:
				t.Fatalf("unexpected error %v", err)
			case tc.error != "" && (err == nil || !strings.Contains(err.Error(), tc.error)):
				t.Fatalf("got %v, want an error containing %q", err, tc.error)
			}
		})
	}
}

func TestSemaphoreName(t *testing.T) {
	l := leaseapi.Lease{Namespace: "team-a", Key: "batch"}
	if l.Name() != "team-a/batch" || leaseapi.SemaphoreName("team-a", "batch") != "team-a/batch" {
		t.Fatalf("name %q, want team-a/batch", l.Name())
	}
}
