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

func TestStarved(t *testing.T) {
	const faultedAddr = "127.0.0.1:9"
	cases := []struct {
		name string
		msg  string
		want bool
	}{
		{"healthy nodes timed out", `no Redis quorum for acquire: 2 of 3 nodes failed and 2 must answer (127.0.0.1:1: read tcp 127.0.0.1:5->127.0.0.1:1: i/o timeout; 127.0.0.1:2: context deadline exceeded); the pod`, true},
		{"faulted node and a timeout", `no Redis quorum (127.0.0.1:9: dial tcp 127.0.0.1:9: connect: connection refused; 127.0.0.1:2: read tcp 127.0.0.1:5->127.0.0.1:2: i/o timeout); the pod`, true},
		{"a healthy node refused", `no Redis quorum (127.0.0.1:9: i/o timeout; 127.0.0.1:2: dial tcp 127.0.0.1:2: connect: connection refused); the pod`, false},
		{"no failures listed", `no slot was claimed on a quorum of 2 of 3 Redis nodes in 5 attempts`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := starved(tc.msg, faultedAddr); got != tc.want {
				t.Fatalf("starved = %v, want %v", got, tc.want)
			}
		})
	}
}
