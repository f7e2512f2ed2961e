package charts

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// endpoint is one end of a connection: a pod (namespace and labels) or,
// when namespace is empty, something outside the pod network (the API
// server, an external Redis) known only by its IP.
type endpoint struct {
	name      string
	namespace string
	nsLabels  map[string]string
	labels    map[string]string
	ip        string
}

func (e endpoint) isPod() bool { return e.namespace != "" }

// netpolEvaluator decides connections the way the NetworkPolicy API defines
// them: a pod selected by a policy of a type is isolated for that direction
// and admits only what some rule of some selecting policy admits; a
// connection needs the destination's ingress and the source's egress.
type netpolEvaluator struct {
	policies []networkingv1.NetworkPolicy
}

func (e netpolEvaluator) allowed(t *testing.T, src, dst endpoint, port int32, proto corev1.Protocol) bool {
	t.Helper()
	return e.direction(t, dst, src, port, proto, networkingv1.PolicyTypeIngress) &&
		e.direction(t, src, dst, port, proto, networkingv1.PolicyTypeEgress)
}

// direction evaluates the policies of pod `self` for traffic with `peer`.
func (e netpolEvaluator) direction(t *testing.T, self, peer endpoint, port int32, proto corev1.Protocol, dir networkingv1.PolicyType) bool {
	if !self.isPod() {
		return true // not subject to NetworkPolicy
	}
	isolated := false
	for _, p := range e.policies {
		if p.Namespace != self.namespace || !selects(t, &p.Spec.PodSelector, labels.Set(self.labels)) || !hasType(p, dir) {
			continue
		}
		isolated = true
		if dir == networkingv1.PolicyTypeIngress {
			for _, r := range p.Spec.Ingress {
				if portsMatch(r.Ports, port, proto) && peersMatch(t, r.From, p.Namespace, peer) {
					return true
				}
			}
		} else {
			for _, r := range p.Spec.Egress {
				if portsMatch(r.Ports, port, proto) && peersMatch(t, r.To, p.Namespace, peer) {
					return true
				}
			}
		}
	}
	return !isolated
}

func hasType(p networkingv1.NetworkPolicy, dir networkingv1.PolicyType) bool {
	if len(p.Spec.PolicyTypes) == 0 {
		// The API defaults: Ingress always, Egress when egress rules exist.
		return dir == networkingv1.PolicyTypeIngress || len(p.Spec.Egress) > 0
	}
	for _, pt := range p.Spec.PolicyTypes {
		if pt == dir {
			return true
		}
	}
	return false
}

func portsMatch(ports []networkingv1.NetworkPolicyPort, port int32, proto corev1.Protocol) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pp := corev1.ProtocolTCP
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if pp != proto {
			continue
		}
		if p.Port == nil {
			return true
		}
		// The chart uses numeric ports only; a named port would need the
		// destination's container ports.
		if p.Port.IntVal == port || (p.EndPort != nil && port >= p.Port.IntVal && port <= *p.EndPort) {
			return true
		}
	}
	return false
}

func peersMatch(t *testing.T, peers []networkingv1.NetworkPolicyPeer, policyNS string, e endpoint) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if p.IPBlock != nil {
			if e.ip == "" {
				continue
			}
			addr := netip.MustParseAddr(e.ip)
			in := netip.MustParsePrefix(p.IPBlock.CIDR).Contains(addr)
			for _, ex := range p.IPBlock.Except {
				if netip.MustParsePrefix(ex).Contains(addr) {
					in = false
				}
			}
			if in {
				return true
			}
			continue
		}
		if !e.isPod() {
			continue
		}
		nsOK := e.namespace == policyNS
		if p.NamespaceSelector != nil {
			nsOK = selects(t, p.NamespaceSelector, labels.Set(e.nsLabels))
		}
		podOK := p.PodSelector == nil || selects(t, p.PodSelector, labels.Set(e.labels))
		if nsOK && podOK {
			return true
		}
	}
	return false
}

func evaluatorFor(t *testing.T, r *rendered) netpolEvaluator {
	t.Helper()
	var e netpolEvaluator
	for _, o := range r.all("NetworkPolicy") {
		e.policies = append(e.policies, decode[networkingv1.NetworkPolicy](t, o))
	}
	if len(e.policies) == 0 {
		t.Fatal("no NetworkPolicies rendered")
	}
	return e
}

func nsLabels(ns string) map[string]string {
	return map[string]string{"kubernetes.io/metadata.name": ns}
}

// podOf is the endpoint of a rendered workload's pods.
func podOf(t *testing.T, r *rendered, name string) endpoint {
	t.Helper()
	for _, w := range r.workloads(t) {
		if w.name == name {
			return endpoint{name: name, namespace: namespace, nsLabels: nsLabels(namespace), labels: w.labels, ip: "10.244.1.10"}
		}
	}
	t.Fatalf("no workload %s", name)
	return endpoint{}
}

type flow struct {
	src, dst endpoint
	port     int32
	proto    corev1.Protocol
	want     bool
}

func checkFlows(t *testing.T, e netpolEvaluator, flows []flow) {
	t.Helper()
	for _, f := range flows {
		proto := f.proto
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		if got := e.allowed(t, f.src, f.dst, f.port, proto); got != f.want {
			t.Errorf("%s -> %s:%d/%s allowed=%v, want %v", f.src.name, f.dst.name, f.port, proto, got, f.want)
		}
	}
}

// Others, the same in every scenario.
var (
	apiServer  = endpoint{name: "kube-apiserver", ip: "172.18.0.2"}
	userPod    = endpoint{name: "team-a/app (sidecar)", namespace: "team-a", nsLabels: nsLabels("team-a"), labels: map[string]string{"app": "web"}, ip: "10.244.2.5"}
	prometheus = endpoint{name: "monitoring/prometheus", namespace: "monitoring", nsLabels: nsLabels("monitoring"),
		labels: map[string]string{"app.kubernetes.io/name": "prometheus"}, ip: "10.244.3.3"}
	otherMonitoring = endpoint{name: "monitoring/grafana", namespace: "monitoring", nsLabels: nsLabels("monitoring"),
		labels: map[string]string{"app.kubernetes.io/name": "grafana"}, ip: "10.244.3.4"}
	fakePrometheus = endpoint{name: "team-a/prometheus", namespace: "team-a", nsLabels: nsLabels("team-a"),
		labels: map[string]string{"app.kubernetes.io/name": "prometheus"}, ip: "10.244.2.6"}
	kubeDNS = endpoint{name: "kube-system/coredns", namespace: "kube-system", nsLabels: nsLabels("kube-system"),
		labels: map[string]string{"k8s-app": "kube-dns"}, ip: "10.244.0.2"}
	otherKubeSystem = endpoint{name: "kube-system/metrics-server", namespace: "kube-system", nsLabels: nsLabels("kube-system"),
		labels: map[string]string{"k8s-app": "metrics-server"}, ip: "10.244.0.3"}
	istiod = endpoint{name: "istio-system/istiod", namespace: "istio-system", nsLabels: nsLabels("istio-system"),
		labels: map[string]string{"app": "istiod"}, ip: "10.244.0.9"}
	internet     = endpoint{name: "internet", ip: "93.184.216.34"}
	externalNode = endpoint{name: "external redis", ip: "10.1.2.3"}
	strayPod     = endpoint{name: namespace + "/stray", namespace: namespace, nsLabels: nsLabels(namespace), labels: map[string]string{"app": "stray"}, ip: "10.244.1.99"}
)

// With the chart's own Redis: exactly the flows of the design.
func TestNetworkPolicyFlows(t *testing.T) {
	r := mustRender(t, renderOpts{valuesFile: "networkpolicy-values.yaml"})
	e := evaluatorFor(t, r)
	webhook := podOf(t, r, fullname)
	redis := podOf(t, r, fullname+"-redis")
	test := podOf(t, r, fullname+"-test-quorum")
	udp := corev1.ProtocolUDP
	checkFlows(t, e, []flow{
		// 9443: the API server and the sidecars anywhere.
		{src: apiServer, dst: webhook, port: 9443, want: true},
		{src: userPod, dst: webhook, port: 9443, want: true},
		{src: strayPod, dst: webhook, port: 9443, want: false}, // the stray pod's own egress is denied by default
		// 8080: Prometheus (namespace AND pod selector) and the helm test only.
		{src: prometheus, dst: webhook, port: 8080, want: true},
		{src: test, dst: webhook, port: 8080, want: true},
		{src: otherMonitoring, dst: webhook, port: 8080, want: false},
		{src: fakePrometheus, dst: webhook, port: 8080, want: false},
		{src: userPod, dst: webhook, port: 8080, want: false},
		{src: apiServer, dst: webhook, port: 8080, want: false},
		// Nothing else reaches the webhook.
		{src: userPod, dst: webhook, port: 8081, want: false},
		{src: prometheus, dst: webhook, port: 9090, want: false},
		{src: userPod, dst: webhook, port: 9443, proto: udp, want: false},
		// Redis 6379 only from the webhook pods.
		{src: webhook, dst: redis, port: 6379, want: true},
		{src: test, dst: redis, port: 6379, want: false},
		{src: strayPod, dst: redis, port: 6379, want: false},
		{src: userPod, dst: redis, port: 6379, want: false},
		{src: prometheus, dst: redis, port: 6379, want: false},
		{src: apiServer, dst: redis, port: 6379, want: false},
		{src: webhook, dst: redis, port: 16379, want: false},
		// DNS egress to kube-dns only.
		{src: webhook, dst: kubeDNS, port: 53, proto: udp, want: true},
		{src: webhook, dst: kubeDNS, port: 53, want: true},
		{src: test, dst: kubeDNS, port: 53, proto: udp, want: true},
		{src: webhook, dst: otherKubeSystem, port: 53, proto: udp, want: false},
		{src: strayPod, dst: kubeDNS, port: 53, proto: udp, want: false},
		// Webhook egress: Redis, DNS and the API server, nothing else.
		{src: webhook, dst: apiServer, port: 6443, want: true},
		{src: webhook, dst: apiServer, port: 443, want: true},
		{src: webhook, dst: apiServer, port: 2379, want: false},
		{src: webhook, dst: userPod, port: 65532, want: false},
		{src: webhook, dst: internet, port: 443, want: false},
		{src: redis, dst: apiServer, port: 6443, want: false},
		{src: test, dst: apiServer, port: 6443, want: false},
		{src: webhook, dst: externalNode, port: 6379, want: false},
		{src: webhook, dst: istiod, port: 15012, want: false},
		// Redis dials nobody.
		{src: redis, dst: kubeDNS, port: 53, proto: udp, want: false},
		{src: redis, dst: webhook, port: 9443, want: false},
		{src: redis, dst: internet, port: 443, want: false},
		// The test pod reaches the metrics and DNS only.
		{src: test, dst: webhook, port: 9443, want: false},
		// Default deny in the release namespace.
		{src: prometheus, dst: strayPod, port: 80, want: false},
		{src: strayPod, dst: internet, port: 443, want: false},
	})
}

// With Istio, the proxies also reach istiod (and only on 15012).
func TestNetworkPolicyFlowsIstio(t *testing.T) {
	r := mustRender(t, renderOpts{valuesFile: "networkpolicy-values.yaml", values: "istio: {enabled: true}"})
	e := evaluatorFor(t, r)
	webhook := podOf(t, r, fullname)
	redis := podOf(t, r, fullname+"-redis")
	checkFlows(t, e, []flow{
		{src: webhook, dst: istiod, port: 15012, want: true},
		{src: redis, dst: istiod, port: 15012, want: true},
		{src: redis, dst: kubeDNS, port: 53, proto: corev1.ProtocolUDP, want: true},
		{src: webhook, dst: istiod, port: 15010, want: false},
		{src: redis, dst: webhook, port: 9443, want: false},
		{src: webhook, dst: redis, port: 6379, want: true},
		{src: strayPod, dst: redis, port: 6379, want: false},
	})
}

// With external Redis nodes: the webhook reaches their ports (anywhere, or
// only the configured peers), and nothing else.
func TestNetworkPolicyFlowsExternalRedis(t *testing.T) {
	r := mustRender(t, renderOpts{valuesFile: "external-redis-values.yaml"})
	e := evaluatorFor(t, r)
	webhook := podOf(t, r, fullname)
	checkFlows(t, e, []flow{
		{src: webhook, dst: externalNode, port: 6379, want: true},
		{src: webhook, dst: externalNode, port: 6380, want: true},
		{src: webhook, dst: externalNode, port: 6381, want: false},
		// Without apiServer.peers the API server's ports are open to any
		// destination: its address is the cluster's own.
		{src: webhook, dst: apiServer, port: 6443, want: true},
		{src: webhook, dst: internet, port: 443, want: true},
		{src: webhook, dst: internet, port: 80, want: false},
		{src: webhook, dst: kubeDNS, port: 53, proto: corev1.ProtocolUDP, want: true},
		{src: apiServer, dst: webhook, port: 9443, want: true},
		{src: prometheus, dst: webhook, port: 8080, want: true},
	})
	narrowed := mustRender(t, renderOpts{valuesFile: "external-redis-values.yaml",
		values: "networkPolicy: {externalRedisPeers: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.9.0/24]}}]}"})
	ne := evaluatorFor(t, narrowed)
	checkFlows(t, ne, []flow{
		{src: webhook, dst: externalNode, port: 6379, want: true},
		{src: webhook, dst: endpoint{name: "10.1.9.1", ip: "10.1.9.1"}, port: 6379, want: false},
		{src: webhook, dst: endpoint{name: "10.2.0.1", ip: "10.2.0.1"}, port: 6379, want: false},
	})
}

// Without NetworkPolicies nothing is rendered, and the evaluator admits all.
func TestNetworkPolicyOffAdmitsAll(t *testing.T) {
	r := mustRender(t, renderOpts{})
	if n := len(r.all("NetworkPolicy")); n != 0 {
		t.Fatalf("%d NetworkPolicies with the toggle off", n)
	}
	e := netpolEvaluator{}
	if !e.allowed(t, userPod, podOf(t, r, fullname+"-redis"), 6379, corev1.ProtocolTCP) {
		t.Error("the evaluator denies without policies")
	}
}

// The evaluator itself: policy types, peers combining namespace and pod
// selectors, ports with protocols and ranges.
func TestNetpolEvaluator(t *testing.T) {
	tcp := corev1.ProtocolTCP
	end := int32(9000)
	ns := "x"
	pol := func(spec networkingv1.NetworkPolicySpec) networkingv1.NetworkPolicy {
		return networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns}, Spec: spec}
	}
	a := endpoint{name: "a", namespace: ns, nsLabels: nsLabels(ns), labels: map[string]string{"role": "a"}}
	b := endpoint{name: "b", namespace: ns, nsLabels: nsLabels(ns), labels: map[string]string{"role": "b"}}
	c := endpoint{name: "c", namespace: "y", nsLabels: nsLabels("y"), labels: map[string]string{"role": "a"}}
	port := func(p int32) *networkingv1.NetworkPolicyPort {
		v := intstrFrom(p)
		return &networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &v}
	}
	rng := *port(8000)
	rng.EndPort = &end
	e := netpolEvaluator{policies: []networkingv1.NetworkPolicy{
		// b accepts role=a from its own namespace on 8000-9000.
		pol(networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "b"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "a"}}}},
				Ports: []networkingv1.NetworkPolicyPort{rng},
			}},
		}),
	}}
	checkFlows(t, e, []flow{
		{src: a, dst: b, port: 8500, want: true},
		{src: a, dst: b, port: 9001, want: false},
		{src: c, dst: b, port: 8500, want: false}, // same labels, other namespace
		{src: b, dst: a, port: 8500, want: true},  // a is not isolated
		{src: a, dst: b, port: 8500, proto: corev1.ProtocolUDP, want: false},
	})
}

func intstrFrom(p int32) intstr.IntOrString { return intstr.FromInt32(p) }
