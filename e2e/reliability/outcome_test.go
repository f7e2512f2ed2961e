package reliability

import "testing"

func TestNodeCountedTwice(t *testing.T) {
	cases := []struct {
		msg  string
		want bool
	}{
		{`no slot of semaphore "a/b" could be taken: no Redis quorum for acquire: 2 of 3 nodes failed and 2 must answer (127.0.0.1:1: dial tcp 127.0.0.1:1: connect: connection refused; 127.0.0.1:1: dial tcp 127.0.0.1:1: connect: connection refused); the pod will be created when Redis recovers`, true},
		{`no slot of semaphore "a/b" could be taken: no Redis quorum for acquire: 2 of 3 nodes failed and 2 must answer (127.0.0.1:1: dial tcp 127.0.0.1:1: connect: connection refused; 127.0.0.1:2: i/o timeout); the pod will be created when Redis recovers`, false},
		{`semaphore "a/b" is full (2/2 slots held)`, false},
	}
	for _, tc := range cases {
		if got := nodeCountedTwice(tc.msg); got != tc.want {
			t.Errorf("nodeCountedTwice(%q) = %v, want %v", tc.msg, got, tc.want)
		}
	}
}
