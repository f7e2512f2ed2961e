package startuppages_test

import (
	"os"
	"strings"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/startuppages"
)

func TestReadOnlyMappings(t *testing.T) {
	const exe = "/usr/local/bin/prometheus-metrics-proxy-hook-sidecar"
	maps := strings.Join([]string{
		"00400000-008e6000 r-xp 00000000 fd:00 1234 " + exe,
		"008e6000-00e17000 r--p 004e6000 fd:00 1234 " + exe,
		"00e17000-00e7e000 rw-p 00a17000 fd:00 1234 " + exe, // data: never
		"00e7e000-02ec3000 rw-p 00000000 00:00 0 ",
		"7f0000000000-7f0000001000 r--s 00000000 fd:00 1234 " + exe, // shared: never
		"7f0000001000-7f0000002000 r-xp 00000000 fd:00 99 /usr/lib/other.so",
		"7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]",
	}, "\n")
	got, err := startuppages.ReadOnlyMappings(strings.NewReader(maps), exe)
	if err != nil {
		t.Fatal(err)
	}
	want := []startuppages.Mapping{{0x400000, 0x8e6000, "r-xp"}, {0x8e6000, 0xe17000, "r--p"}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("ReadOnlyMappings = %+v, want %+v", got, want)
	}
	if _, err := startuppages.ReadOnlyMappings(strings.NewReader("zz-yy r-xp 0 fd:00 1 "+exe), exe); err == nil {
		t.Error("a malformed line was accepted")
	}
}

// TestDropKeepsTheProcessWorking drops this test binary's read-only pages
// and keeps running code and reading data from them.
func TestDropKeepsTheProcessWorking(t *testing.T) {
	maps, err := startuppages.Drop()
	if err != nil {
		t.Fatal(err)
	}
	if len(maps) == 0 {
		t.Fatal("no read-only mapping of the executable was found")
	}
	for _, m := range maps {
		if strings.Contains(m.Perms, "w") {
			t.Errorf("a writable mapping was dropped: %+v", m)
		}
	}
	// Code and read-only data are mapped back as they are used.
	if s := strings.Repeat("ok", 3); s != "okokok" {
		t.Fatal(s)
	}
	if _, err := os.Stat("/proc/self/maps"); err != nil {
		t.Fatal(err)
	}
}
