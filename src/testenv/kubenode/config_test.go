package kubenode

import (
	"net/netip"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

func TestSplitRule(t *testing.T) {
	for _, tc := range []struct {
		line string
		want []string
	}{
		{"-N KUBE-SERVICES", []string{"-N", "KUBE-SERVICES"}},
		{`-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS`,
			[]string{"-A", "INPUT", "-m", "comment", "--comment", "kubernetes health check service ports", "-j", "KUBE-NODEPORTS"}},
		{`-A X -m comment --comment "say \"hi\"" -j DROP`, []string{"-A", "X", "-m", "comment", "--comment", `say "hi"`, "-j", "DROP"}},
		{`-A X -m comment --comment "" -j DROP`, []string{"-A", "X", "-m", "comment", "--comment", "", "-j", "DROP"}},
	} {
		if got := splitRule(tc.line); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitRule(%q) = %q, want %q", tc.line, got, tc.want)
		}
	}
}

func TestJumpsToOwn(t *testing.T) {
	for _, tc := range []struct {
		rule string
		want bool
	}{
		{"-A INPUT -j KUBE-FIREWALL", true},
		{"-A FORWARD -j " + guardChain, true},
		{"-A POSTROUTING -g CNI-HOSTPORT-MASQ", true},
		{`-A FORWARD -m comment --comment "kube-router netpol - 4IA2OSFRMVNDXBVV" -j KUBE-ROUTER-FORWARD`, true},
		{`-A KUBE-ROUTER-FORWARD -m physdev --physdev-is-bridged -s 10.244.0.5/32 -j KUBE-POD-FW-ABCDEFGHIJKLMNOP`, true},
		{"-A INPUT -j ACCEPT", false},
		{"-A DOCKER-USER -j RETURN", false},
	} {
		if got := jumpsToOwn(splitRule(tc.rule)); got != tc.want {
			t.Errorf("jumpsToOwn(%q) = %v, want %v", tc.rule, got, tc.want)
		}
	}
}

func TestOwnSet(t *testing.T) {
	for _, tc := range []struct {
		name string
		want bool
	}{
		{"KUBE-SRC-ABCDEFGHIJKLMNOP", true},
		{"KUBE-DST-ABCDEFGHIJKLMNOP", true},
		{"inet6:KUBE-SRC-ABCDEFGHIJKLMNOP", true},
		{"TMP-ABCDEFGHIJKLMN23", true},
		{"inet6:TMP-ABCDEFGHIJKLMN23", true},
		{probeSet, true},
		{"TMP-backup", false},
		{"TMP-ABCDEFGHIJKLMN239", false},
		{"KUBE-CLUSTER-IP", false},
		{"cali40all-hosts", false},
	} {
		if got := ownSet(tc.name); got != tc.want {
			t.Errorf("ownSet(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSetTOMLKey(t *testing.T) {
	config := "root = \"/var/lib/containerd\"\n[grpc]\n  address = \"/run/containerd/containerd.sock\"\n[ttrpc]\n  address = \"\"\n"
	for _, tc := range []struct {
		name, key, value string
		old              []string
		want, wantErr    string
	}{
		{name: "top level", key: "root", value: `"/x"`, want: "root = \"/x\"\n"},
		{name: "indented, chosen by old value", key: "address", value: `"/s"`, old: []string{`"/run/containerd/containerd.sock"`}, want: "  address = \"/s\"\n"},
		{name: "ambiguous", key: "address", value: `"/s"`, wantErr: "more than one"},
		{name: "missing", key: "sandbox_image", value: `"p"`, wantErr: "no \"sandbox_image\" line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := setTOMLKey(config, tc.key, tc.value, tc.old...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(got, tc.want) {
				t.Errorf("config after setting %s:\n%s\nwant a line %q", tc.key, got, tc.want)
			}
		})
	}
}

// TestContainerdConfig checks the changes against the installed containerd's
// own defaults: a containerd whose defaults lack a key fails here, not in a
// pod sandbox.
func TestContainerdConfig(t *testing.T) {
	bin, err := exec.LookPath("containerd")
	if err != nil {
		t.Skip("containerd is not installed (run `make tools`)")
	}
	p := newContainerdPaths("/tmp/pmph-kubenode-x")
	config, err := containerdConfig(bin, p, "registry.k8s.io/pause:3.10")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"restrict_oom_score_adj = true",
		"enable_unprivileged_ports = true",
		`sandbox_image = "registry.k8s.io/pause:3.10"`,
		`bin_dir = "/usr/lib/cni"`,
		`conf_dir = "/tmp/pmph-kubenode-x/containerd/cni"`,
		`config_path = "/tmp/pmph-kubenode-x/containerd/certs.d"`,
		`address = "/tmp/pmph-kubenode-x/containerd/containerd.sock"`,
		"netns_mounts_under_state_dir = true",
		`Root = "/tmp/pmph-kubenode-x/containerd/state/runc"`,
		"SystemdCgroup = false",
	} {
		if !strings.Contains(config, want) {
			t.Errorf("the containerd config has no line %q", want)
		}
	}
}

func TestOverlapsAny(t *testing.T) {
	used := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("10.244.3.0/24")}
	if !overlapsAny(netip.MustParsePrefix("10.244.0.0/16"), used) {
		t.Error("10.244.0.0/16 overlaps 10.244.3.0/24")
	}
	if overlapsAny(netip.MustParsePrefix("10.245.0.0/16"), used) {
		t.Error("10.245.0.0/16 overlaps nothing but the default route, which does not count")
	}
}
