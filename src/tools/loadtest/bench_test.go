package loadtest

import (
	"os"
	"testing"
)

// BenchmarkParseAnswer is the load tool's own cost per semaphore answer:
// it competes with the webhook for the same cores, so it must stay small.
func BenchmarkParseAnswer(b *testing.B) {
	body, err := os.ReadFile("testdata/semaphore-answer.json")
	if err != nil {
		b.Fatal(err)
	}
	const uid = "abcd1234-0000-4000-8000-000000000001"
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		a, err := ParseAnswer(body, uid, true)
		if err != nil || a.Slot < 0 {
			b.Fatal(a, err)
		}
	}
}
