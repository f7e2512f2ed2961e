package app

import (
	"math/rand/v2"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
)

// TestCanonicalQuantity compares canonicalQuantity with apimachinery's
// resource.ParseQuantity(s).String() (a test-only dependency) on the
// quantities people write, on edge cases and on random strings made of the
// characters quantities are made of.
func TestCanonicalQuantity(t *testing.T) {
	inputs := []string{
		"0", "00", "+0", "-0", "0.0", "0m", "10m", "100m", "1000m", "1500m", "0.5", ".5", "5.", "1.", ".", "+.5", "-.5",
		"1", "01", "+1", "-1", "1k", "1000", "1000000", "1M", "1G", "1T", "1P", "1E", "1000E", "1000000E", "1n", "1u",
		"1.5n", "0.0000000001", "1.0000000001", "16Mi", "32Mi", "1Gi", "1.5Gi", "0.5Gi", "0.1Gi", "1536Ki", "1024Ki",
		"8Ki", "1Ki", "1023", "1024", "2048", "0.5Ki", "1.1Ki", "1e3", "1E3", "1e-3", "1.5e3", "2e0", "1e+3", "1e", "e3",
		"1ei", "1Ki1", "1KiB", "abc", "", "-", "+", "1.2.3", "1..2", "--1", "1Mi ", " 1Mi", "1e99", "1e-99", "123456789012345678",
		"1234567890123456789", "12345678901234567890", "9223372036854775807", "9223372036854775808", "8Ei", "16Ei",
		"9.999999999999999999999", "0.000000001", "0.0000000009", "-1.5Gi", "-1024", "-1023", "1.000", "100.500m",
		"0e0", "5e-1", "1.23456789e2", "500u", "1000u", "1000n", "0.001m",
	}
	r := rand.New(rand.NewPCG(1, 2))
	parts := []string{"0", "1", "2", "5", "9", "00", "000", "123", "1024", ".", "+", "-", "e", "E", "i", "n", "u", "m", "k", "K", "M", "G", "T", "P", "Ki", "Mi", "Gi", "Ei", "e3", "e-2", "e+1"}
	for range 20000 {
		var b strings.Builder
		for range 1 + r.IntN(5) {
			b.WriteString(parts[r.IntN(len(parts))])
		}
		inputs = append(inputs, b.String())
	}
	for _, in := range inputs {
		want, wantErr := resource.ParseQuantity(in)
		got, sign, err := canonicalQuantity(in)
		if (err != nil) != (wantErr != nil) {
			t.Errorf("%q: error %v, apimachinery %v", in, err, wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if got != want.String() || sign != want.Sign() {
			t.Errorf("%q: %q (sign %d), apimachinery %q (sign %d)", in, got, sign, want.String(), want.Sign())
		}
	}
}
