package sockets_test

import (
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/e2e/reliability/sockets"
)

func TestOwnSockets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	before, err := sockets.FDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		conns = append(conns, c)
	}
	after, err := sockets.FDs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after < before+6 {
		t.Fatalf("%d descriptors after opening 6 sockets, %d before", after, before)
	}
	got, err := sockets.TCP(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	count := sockets.Count(got)
	if count[port] != 3 {
		t.Fatalf("%d established connections to port %d, want 3: %v", count[port], port, got)
	}
	listening := false
	for _, c := range got {
		if c.State == sockets.Listen && c.Local == netip.MustParseAddrPort(ln.Addr().String()) {
			listening = true
		}
	}
	if !listening {
		t.Fatalf("the listener on %s is missing from %v", ln.Addr(), got)
	}
	conns[0].Close()
	got, err = sockets.TCP(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if n := sockets.Count(got)[port]; n != 2 {
		t.Fatalf("%d established connections to port %d after closing one, want 2", n, port)
	}
}
