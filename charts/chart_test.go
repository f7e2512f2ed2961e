package charts

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Every rendered object of every ci values file decodes strictly into its API
// type, lives in the release namespace (but the cluster-scoped webhook
// configuration), has a valid unique name and the release's labels.
func TestCIValuesRender(t *testing.T) {
	typed := map[string]func(*testing.T, object){
		"Deployment":                   func(t *testing.T, o object) { decode[appsv1.Deployment](t, o) },
		"StatefulSet":                  func(t *testing.T, o object) { decode[appsv1.StatefulSet](t, o) },
		"Service":                      func(t *testing.T, o object) { decode[corev1.Service](t, o) },
		"ServiceAccount":               func(t *testing.T, o object) { decode[corev1.ServiceAccount](t, o) },
		"Secret":                       func(t *testing.T, o object) { decode[corev1.Secret](t, o) },
		"ConfigMap":                    func(t *testing.T, o object) { decode[corev1.ConfigMap](t, o) },
		"Pod":                          func(t *testing.T, o object) { decode[corev1.Pod](t, o) },
		"PodDisruptionBudget":          func(t *testing.T, o object) { decode[policyv1.PodDisruptionBudget](t, o) },
		"NetworkPolicy":                func(t *testing.T, o object) { decode[networkingv1.NetworkPolicy](t, o) },
		"MutatingWebhookConfiguration": func(t *testing.T, o object) { decode[admissionregistrationv1.MutatingWebhookConfiguration](t, o) },
		"ClusterRole":                  func(t *testing.T, o object) { decode[rbacv1.ClusterRole](t, o) },
		"ClusterRoleBinding":           func(t *testing.T, o object) { decode[rbacv1.ClusterRoleBinding](t, o) },
		"Role":                         func(t *testing.T, o object) { decode[rbacv1.Role](t, o) },
		"RoleBinding":                  func(t *testing.T, o object) { decode[rbacv1.RoleBinding](t, o) },
		"Certificate":                  nil,
		"Issuer":                       nil,
		"PeerAuthentication":           nil,
		"ServiceEntry":                 nil,
		"Sidecar":                      nil,
		"ServiceMonitor":               nil,
		"PrometheusRule":               nil,
	}
	for _, file := range ciValuesFiles(t) {
		t.Run(file, func(t *testing.T) {
			r := mustRender(t, renderOpts{valuesFile: file, apiVersions: []string{monitoringAPI}})
			seen := map[string]bool{}
			for _, o := range r.Objects {
				check, known := typed[o.Kind]
				if !known {
					t.Errorf("%s: unexpected kind", o)
					continue
				}
				if check != nil {
					check(t, o)
				}
				key := o.Kind + "/" + o.Name
				if seen[key] {
					t.Errorf("%s rendered twice", key)
				}
				seen[key] = true
				if errs := validation.IsDNS1123Subdomain(o.Name); len(errs) > 0 || len(o.Name) > 63 {
					t.Errorf("%s: bad name: %v", o, errs)
				}
				wantNS := namespace
				switch o.Kind {
				case "MutatingWebhookConfiguration", "ClusterRole", "ClusterRoleBinding":
					wantNS = ""
				}
				if o.Namespace != wantNS {
					t.Errorf("%s: namespace %q, want %q", o, o.Namespace, wantNS)
				}
				if o.Labels["app.kubernetes.io/instance"] != releaseName || o.Labels["app.kubernetes.io/managed-by"] != "Helm" {
					t.Errorf("%s: missing release labels: %v", o, o.Labels)
				}
			}
		})
	}
}

// The objects present for each toggle (and, for the monitoring objects,
// only when the API exists too).
func TestKindsPerToggle(t *testing.T) {
	base := map[string]int{
		"Deployment": 1, "Service": 2, "ServiceAccount": 1, "PodDisruptionBudget": 2,
		"MutatingWebhookConfiguration": 1, "Issuer": 2, "Certificate": 2,
		"StatefulSet": 1, "Secret": 1, "ConfigMap": 1, "Pod": 2,
		"ClusterRole": 1, "ClusterRoleBinding": 1, "Role": 1, "RoleBinding": 1,
	}
	with := func(changes map[string]int) map[string]int {
		m := map[string]int{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range changes {
			if v == 0 {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	tests := []struct {
		name string
		opts renderOpts
		want map[string]int
	}{
		{"defaults", renderOpts{}, base},
		{"defaults with the monitoring API", renderOpts{apiVersions: []string{monitoringAPI}}, base},
		{"ci defaults", renderOpts{valuesFile: "default-values.yaml"}, base},
		{"serviceMonitor without the API", renderOpts{values: "serviceMonitor: {enabled: true}"}, base},
		{"serviceMonitor with the API", renderOpts{values: "serviceMonitor: {enabled: true}", apiVersions: []string{monitoringAPI}},
			with(map[string]int{"ServiceMonitor": 1})},
		{"prometheusRule without the API", renderOpts{values: "prometheusRule: {enabled: true}"}, base},
		{"prometheusRule with the API", renderOpts{values: "prometheusRule: {enabled: true}", apiVersions: []string{monitoringAPI}},
			with(map[string]int{"PrometheusRule": 1})},
		{"both monitoring objects", renderOpts{values: "serviceMonitor: {enabled: true}\nprometheusRule: {enabled: true}", apiVersions: []string{monitoringAPI + "/ServiceMonitor", monitoringAPI}},
			with(map[string]int{"ServiceMonitor": 1, "PrometheusRule": 1})},
		{"istio", renderOpts{values: "istio: {enabled: true}"},
			with(map[string]int{"PeerAuthentication": 2, "ServiceEntry": 1})},
		{"istio ci (with Sidecar)", renderOpts{valuesFile: "istio-values.yaml"},
			with(map[string]int{"PeerAuthentication": 2, "ServiceEntry": 1, "Sidecar": 1})},
		{"networkpolicy ci", renderOpts{valuesFile: "networkpolicy-values.yaml"},
			with(map[string]int{"NetworkPolicy": 4})},
		{"networkpolicy without default deny and tests", renderOpts{values: "networkPolicy: {enabled: true, defaultDeny: false}\ntests: {enabled: false}"},
			with(map[string]int{"NetworkPolicy": 2, "Pod": 0})},
		{"external redis ci", renderOpts{valuesFile: "external-redis-values.yaml"},
			with(map[string]int{"StatefulSet": 0, "ConfigMap": 0, "Service": 1, "PodDisruptionBudget": 1, "Pod": 0, "NetworkPolicy": 2})},
		{"external redis with existing secret and istio", renderOpts{values: "redis: {enabled: false}\nexternalRedis: {addresses: ['10.0.0.1:6379', 'b.example:6379', 'c.example:6379'], existingSecret: s}\nistio: {enabled: true}"},
			with(map[string]int{"StatefulSet": 0, "ConfigMap": 0, "Service": 1, "PodDisruptionBudget": 1, "Secret": 0, "PeerAuthentication": 1, "ServiceEntry": 2})},
		{"persistence off ci", renderOpts{valuesFile: "no-persistence-values.yaml"}, base},
		{"existing redis secret", renderOpts{values: "redis: {auth: {existingSecret: mine}}"}, with(map[string]int{"Secret": 0})},
		{"own issuer", renderOpts{values: "certManager: {issuerRef: {name: corp-ca, kind: ClusterIssuer, group: cert-manager.io}}"},
			with(map[string]int{"Issuer": 0, "Certificate": 1})},
		{"no cert-manager", renderOpts{values: "certManager: {enabled: false}\ntls: {existingSecret: tls, caBundle: Zm9v}"},
			with(map[string]int{"Issuer": 0, "Certificate": 0})},
		{"no PDBs, no service account", renderOpts{values: "webhook: {podDisruptionBudget: {enabled: false}}\nredis: {podDisruptionBudget: {enabled: false}}\nserviceAccount: {create: false}"},
			with(map[string]int{"PodDisruptionBudget": 0, "ServiceAccount": 0})},
		{"no tests", renderOpts{values: "tests: {enabled: false}"}, with(map[string]int{"Pod": 0})},
		{"no rbac", renderOpts{values: "rbac: {create: false}"},
			with(map[string]int{"ClusterRole": 0, "ClusterRoleBinding": 0, "Role": 0, "RoleBinding": 0})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRender(t, tc.opts)
			got := r.kindCounts()
			if fmtKinds(got) != fmtKinds(tc.want) {
				t.Errorf("kinds:\n got  %s\n want %s", fmtKinds(got), fmtKinds(tc.want))
			}
		})
	}
}

func redisFQDN(sts, svc, ns, domain string, i int) string {
	return fmt.Sprintf("%s-%d.%s.%s.svc.%s", sts, i, svc, ns, domain)
}

// The webhook's --redis-addresses follow the release (name, namespace,
// cluster domain, replicas) and externalRedis; the StatefulSet, the headless
// Service and the NOTES' quorum agree with them.
func TestRedisAddressesAndQuorum(t *testing.T) {
	tests := []struct {
		name       string
		opts       renderOpts
		wantAddrs  []string
		wantQuorum int
	}{
		{"3 nodes", renderOpts{}, nil, 2},
		{"5 nodes", renderOpts{values: "redis: {replicas: 5}"}, nil, 3},
		{"1 node", renderOpts{values: "redis: {replicas: 1}"}, nil, 1},
		{"5 nodes, other domain and namespace", renderOpts{values: "redis: {replicas: 5}\nclusterDomain: corp.internal", namespace: "other"}, nil, 3},
		{"fullnameOverride", renderOpts{values: "fullnameOverride: hook"}, nil, 2},
		{"external", renderOpts{valuesFile: "external-redis-values.yaml"},
			[]string{"redis-a.example.invalid:6379", "redis-b.example.invalid:6379", "redis-c.example.invalid:6380"}, 2},
		{"external 5", renderOpts{values: "redis: {enabled: false}\nexternalRedis: {addresses: [a:1, b:2, c:3, d:4, e:5]}"},
			[]string{"a:1", "b:2", "c:3", "d:4", "e:5"}, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRender(t, tc.opts)
			ns := tc.opts.namespace
			if ns == "" {
				ns = namespace
			}
			d := decode[appsv1.Deployment](t, r.all("Deployment")[0])
			got, ok := webhookArg(t, d, "redis-addresses")
			if !ok {
				t.Fatal("no --redis-addresses")
			}
			want := tc.wantAddrs
			if want == nil {
				sts := decode[appsv1.StatefulSet](t, r.all("StatefulSet")[0])
				var headless corev1.Service
				for _, o := range r.all("Service") {
					if o.Name == sts.Spec.ServiceName {
						headless = decode[corev1.Service](t, o)
					}
				}
				if headless.Name == "" || headless.Spec.ClusterIP != corev1.ClusterIPNone {
					t.Fatalf("StatefulSet serviceName %q is not a rendered headless Service", sts.Spec.ServiceName)
				}
				if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
					t.Errorf("podManagementPolicy %q", sts.Spec.PodManagementPolicy)
				}
				domain := "cluster.local"
				if strings.Contains(tc.opts.values, "corp.internal") {
					domain = "corp.internal"
				}
				for i := 0; i < int(*sts.Spec.Replicas); i++ {
					want = append(want, redisFQDN(sts.Name, sts.Spec.ServiceName, ns, domain, i)+":6379")
				}
				if 2*tc.wantQuorum-1 != int(*sts.Spec.Replicas) {
					t.Errorf("StatefulSet has %d replicas for quorum %d", *sts.Spec.Replicas, tc.wantQuorum)
				}
			}
			if got != strings.Join(want, ",") {
				t.Errorf("--redis-addresses\n got  %s\n want %s", got, strings.Join(want, ","))
			}
			if q := fmt.Sprintf("Quorum:      %d of %d", tc.wantQuorum, len(want)); !strings.Contains(r.Notes, q) {
				t.Errorf("NOTES lack %q:\n%s", q, r.Notes)
			}
			// The password file is passed exactly when a password exists.
			_, hasPw := webhookArg(t, d, "redis-password-file")
			if wantPw := tc.name != "external 5"; hasPw != wantPw {
				t.Errorf("--redis-password-file present %v, want %v", hasPw, wantPw)
			}
		})
	}
}

// The other webhook flags: the lease URL is the Service's in-cluster name,
// the sidecar image defaults to the chart's own image, and the names are the
// ones docs/configuration.md lists.
func TestWebhookArgs(t *testing.T) {
	tests := []struct {
		name   string
		values string
		want   map[string]string
		absent []string
	}{
		{"defaults", "", map[string]string{
			"lease-url":            "https://" + fullname + "." + namespace + ".svc:443",
			"sidecar-image":        "ghcr.io/kaidotio/prometheus-metrics-proxy-hook:0.1.0",
			"cert-dir":             "/tls",
			"listen-address":       ":9443",
			"metrics-address":      ":8080",
			"probe-address":        ":8081",
			"lease-ttl":            "30s",
			"redis-timeout":        "50ms",
			"no-quorum-policy":     "deny",
			"sidecar-port":         "65532",
			"native-sidecar":       "true",
			"enable-http2":         "false",
			"sidecar-memory-limit": "32Mi",
			"redis-password-file":  "/run/secrets/redis/password",
			"reconcile-window":     "90s",
			"reconcile-interval":   "15s",
		}, []string{"sidecar-cpu-limit", "kubeconfig"}},
		{"reconciler settings", "reconciler: {window: 2m, interval: 5s}", map[string]string{
			"reconcile-window": "2m", "reconcile-interval": "5s"}, nil},
		{"image tag follows into the sidecar", "image: {tag: v9}", map[string]string{
			"sidecar-image": "ghcr.io/kaidotio/prometheus-metrics-proxy-hook:v9"}, nil},
		{"image digest", "image: {digest: sha256:" + strings.Repeat("a", 64) + "}", map[string]string{
			"sidecar-image": "ghcr.io/kaidotio/prometheus-metrics-proxy-hook@sha256:" + strings.Repeat("a", 64)}, nil},
		{"own sidecar image", "sidecar: {image: {repository: reg.example/hook, tag: s1}, resources: {limits: {cpu: 100m}}, native: false}", map[string]string{
			"sidecar-image": "reg.example/hook:s1", "sidecar-cpu-limit": "100m", "native-sidecar": "false"}, nil},
		{"external redis without password", "redis: {enabled: false}\nexternalRedis: {addresses: [a:1]}", nil, []string{"redis-password-file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRender(t, renderOpts{values: tc.values})
			d := r.deployment(t)
			for k, v := range tc.want {
				got, ok := webhookArg(t, d, k)
				if !ok || got != v {
					t.Errorf("--%s = %q (present %v), want %q", k, got, ok, v)
				}
			}
			for _, k := range tc.absent {
				if v, ok := webhookArg(t, d, k); ok {
					t.Errorf("--%s=%s should be absent", k, v)
				}
			}
			c := container(t, d.Spec.Template.Spec, "webhook")
			if !slices.Equal(c.Command, []string{webhookCommand}) {
				t.Errorf("command %q, want [%s]", c.Command, webhookCommand)
			}
			// Every flag the chart passes is one the webhook has.
			known := regexp.MustCompile(`^--(listen-address|metrics-address|probe-address|cert-dir|enable-http2|redis-addresses|redis-password-file|redis-timeout|lease-ttl|lease-url|no-quorum-policy|sidecar-image|sidecar-image-pull-policy|sidecar-port|sidecar-cpu-request|sidecar-memory-request|sidecar-cpu-limit|sidecar-memory-limit|native-sidecar|scrape-interval|shutdown-timeout|log-level|log-format|reconcile-window|reconcile-interval|leader-election-namespace|leader-election-lease-name)=`)
			for _, a := range c.Args {
				if !known.MatchString(a) {
					t.Errorf("unknown webhook flag %q", a)
				}
			}
		})
	}
}

// The webhook Deployment: replicas, rolling update, spread, PDB, the serving
// Secret at --cert-dir, the service account token (the reconciler's).
func TestWebhookDeployment(t *testing.T) {
	r := mustRender(t, renderOpts{})
	d := r.deployment(t)
	if *d.Spec.Replicas != 2 {
		t.Errorf("replicas %d", *d.Spec.Replicas)
	}
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || d.Spec.Strategy.RollingUpdate.MaxUnavailable.IntValue() != 0 {
		t.Errorf("strategy %+v", d.Spec.Strategy)
	}
	spec := d.Spec.Template.Spec
	if spec.AutomountServiceAccountToken == nil || !*spec.AutomountServiceAccountToken {
		t.Error("the webhook pods must mount their service account token: the reconciler calls the API server")
	}
	sa := decode[corev1.ServiceAccount](t, r.get(t, "ServiceAccount", fullname))
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken || spec.ServiceAccountName != sa.Name {
		t.Errorf("service account %q automount %v", spec.ServiceAccountName, sa.AutomountServiceAccountToken)
	}
	if spec.Affinity == nil || spec.Affinity.PodAntiAffinity == nil || len(spec.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Fatalf("no soft anti-affinity: %+v", spec.Affinity)
	}
	podLabels := labels.Set(d.Spec.Template.Labels)
	term := spec.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm
	if !selects(t, term.LabelSelector, podLabels) || term.TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("anti-affinity term does not select the webhook pods by host: %+v", term)
	}
	if len(spec.TopologySpreadConstraints) == 0 {
		t.Error("no topology spread constraints")
	}
	for _, c := range spec.TopologySpreadConstraints {
		if !selects(t, c.LabelSelector, podLabels) {
			t.Errorf("spread constraint %s does not select the webhook pods", c.TopologyKey)
		}
	}
	var tlsVol *corev1.Volume
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == "tls" {
			tlsVol = &spec.Volumes[i]
		}
	}
	cert := unstructuredOf(t, r.get(t, "Certificate", fullname+"-serving"))
	secretName := cert["spec"].(map[string]any)["secretName"]
	if tlsVol == nil || tlsVol.Secret == nil || tlsVol.Secret.SecretName != secretName {
		t.Fatalf("the serving certificate's Secret %v is not a volume: %+v", secretName, tlsVol)
	}
	c := container(t, spec, "webhook")
	certDir, _ := webhookArg(t, d, "cert-dir")
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.Name == "tls" && m.MountPath == certDir && m.ReadOnly {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("tls volume not mounted read-only at --cert-dir %s", certDir)
	}
	if got := spec.TerminationGracePeriodSeconds; got == nil || *got != 30 {
		t.Errorf("terminationGracePeriodSeconds %v, want shutdown timeout 20s + 10s", got)
	}
	pdb := decode[policyv1.PodDisruptionBudget](t, r.get(t, "PodDisruptionBudget", fullname))
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("webhook PDB minAvailable %v", pdb.Spec.MinAvailable)
	}
	// Hard anti-affinity and none.
	hard := mustRender(t, renderOpts{values: "webhook: {podAntiAffinity: hard}"}).deployment(t)
	if a := hard.Spec.Template.Spec.Affinity; a == nil || len(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Errorf("hard anti-affinity: %+v", a)
	}
	none := mustRender(t, renderOpts{values: "webhook: {podAntiAffinity: none, topologySpreadConstraints: []}"}).deployment(t)
	if none.Spec.Template.Spec.Affinity != nil || none.Spec.Template.Spec.TopologySpreadConstraints != nil {
		t.Errorf("podAntiAffinity none still renders affinity/spread")
	}
}

// The MutatingWebhookConfiguration as the design brief fixes it.
func TestMutatingWebhookConfiguration(t *testing.T) {
	tests := []struct {
		name   string
		values string
		check  func(t *testing.T, w admissionregistrationv1.MutatingWebhook, m admissionregistrationv1.MutatingWebhookConfiguration)
	}{
		{"defaults", "", func(t *testing.T, w admissionregistrationv1.MutatingWebhook, m admissionregistrationv1.MutatingWebhookConfiguration) {
			if got := m.Annotations["cert-manager.io/inject-ca-from"]; got != namespace+"/"+fullname+"-serving" {
				t.Errorf("inject-ca-from %q", got)
			}
			if *w.SideEffects != admissionregistrationv1.SideEffectClassNoneOnDryRun || *w.FailurePolicy != admissionregistrationv1.Fail ||
				*w.TimeoutSeconds != 5 || *w.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy ||
				!slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
				t.Errorf("webhook settings: %+v", w)
			}
			if len(w.Rules) != 1 || !slices.Equal(w.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) ||
				!slices.Equal(w.Rules[0].Resources, []string{"pods"}) || !slices.Equal(w.Rules[0].APIGroups, []string{""}) {
				t.Errorf("rules: %+v", w.Rules)
			}
			svc := w.ClientConfig.Service
			if svc == nil || svc.Name != fullname || svc.Namespace != namespace || *svc.Path != "/mutate" || *svc.Port != 443 {
				t.Errorf("clientConfig %+v", w.ClientConfig)
			}
			if w.ObjectSelector != nil && (len(w.ObjectSelector.MatchLabels) > 0 || len(w.ObjectSelector.MatchExpressions) > 0) {
				t.Errorf("objectSelector by default: %+v", w.ObjectSelector)
			}
			want := "has(object.metadata.annotations) && '" + optInKey + "' in object.metadata.annotations && object.metadata.annotations['" + optInKey + "'] == 'true'"
			if len(w.MatchConditions) != 1 || w.MatchConditions[0].Expression != want {
				t.Errorf("matchConditions %+v", w.MatchConditions)
			}
		}},
		{"ignore, timeout, object selector, no match conditions", "webhook: {failurePolicy: Ignore, timeoutSeconds: 10, objectSelector: {matchLabels: {team: a}}, matchConditions: {enabled: false}}",
			func(t *testing.T, w admissionregistrationv1.MutatingWebhook, _ admissionregistrationv1.MutatingWebhookConfiguration) {
				if *w.FailurePolicy != admissionregistrationv1.Ignore || *w.TimeoutSeconds != 10 || w.ObjectSelector.MatchLabels["team"] != "a" || w.MatchConditions != nil {
					t.Errorf("%+v", w)
				}
			}},
		{"no cert-manager: caBundle, no injection", "certManager: {enabled: false}\ntls: {existingSecret: tls, caBundle: Zm9v}",
			func(t *testing.T, w admissionregistrationv1.MutatingWebhook, m admissionregistrationv1.MutatingWebhookConfiguration) {
				if string(w.ClientConfig.CABundle) != "foo" || m.Annotations["cert-manager.io/inject-ca-from"] != "" {
					t.Errorf("caBundle %q annotations %v", w.ClientConfig.CABundle, m.Annotations)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRender(t, renderOpts{values: tc.values})
			m := decode[admissionregistrationv1.MutatingWebhookConfiguration](t, r.get(t, "MutatingWebhookConfiguration", fullname))
			if len(m.Webhooks) != 1 {
				t.Fatalf("%d webhooks", len(m.Webhooks))
			}
			tc.check(t, m.Webhooks[0], m)
		})
	}
}

// The namespaceSelector leaves out kube-system, the release namespace and
// the configured ones, and takes in every other namespace.
func TestNamespaceSelector(t *testing.T) {
	r := mustRender(t, renderOpts{values: "webhook: {excludeNamespaces: [batch-system], namespaceSelector: {matchLabels: {hook: enabled}}}"})
	m := decode[admissionregistrationv1.MutatingWebhookConfiguration](t, r.get(t, "MutatingWebhookConfiguration", fullname))
	sel := m.Webhooks[0].NamespaceSelector
	tests := []struct {
		ns     string
		labels map[string]string
		want   bool
	}{
		{"kube-system", map[string]string{"hook": "enabled"}, false},
		{namespace, map[string]string{"hook": "enabled"}, false},
		{"batch-system", map[string]string{"hook": "enabled"}, false},
		{"team-a", map[string]string{"hook": "enabled"}, true},
		{"team-b", nil, false},
	}
	for _, tc := range tests {
		l := labels.Set{"kubernetes.io/metadata.name": tc.ns}
		for k, v := range tc.labels {
			l[k] = v
		}
		if got := selects(t, sel, l); got != tc.want {
			t.Errorf("namespace %s %v: selected %v, want %v", tc.ns, tc.labels, got, tc.want)
		}
	}
	// Defaults: every namespace but kube-system and the release's.
	d := mustRender(t, renderOpts{})
	dm := decode[admissionregistrationv1.MutatingWebhookConfiguration](t, d.get(t, "MutatingWebhookConfiguration", fullname))
	for ns, want := range map[string]bool{"kube-system": false, namespace: false, "default": true, "team-a": true} {
		if got := selects(t, dm.Webhooks[0].NamespaceSelector, labels.Set{"kubernetes.io/metadata.name": ns}); got != want {
			t.Errorf("default selector, namespace %s: %v, want %v", ns, got, want)
		}
	}
}

func selects(t *testing.T, sel *metav1.LabelSelector, l labels.Set) bool {
	t.Helper()
	if sel == nil {
		return true
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector %+v: %v", sel, err)
	}
	return s.Matches(l)
}

// Every Service, PodDisruptionBudget, workload selector, PeerAuthentication
// and ServiceMonitor selects exactly the pods it is meant for.
func TestSelectorsMatchTheirPods(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		t.Run(file, func(t *testing.T) {
			r := mustRender(t, renderOpts{valuesFile: file, values: "serviceMonitor: {enabled: true}", apiVersions: []string{monitoringAPI}})
			pods := r.workloads(t)
			byName := map[string]workload{}
			for _, w := range pods {
				byName[w.name] = w
			}
			check := func(what string, sel *metav1.LabelSelector, want ...string) {
				t.Helper()
				var got []string
				for _, w := range pods {
					if selects(t, sel, labels.Set(w.labels)) {
						got = append(got, w.name)
					}
				}
				slices.Sort(got)
				slices.Sort(want)
				if !slices.Equal(got, want) {
					t.Errorf("%s selects %v, want %v", what, got, want)
				}
			}
			redisEnabled := len(r.all("StatefulSet")) == 1
			for _, o := range r.all("Deployment") {
				d := decode[appsv1.Deployment](t, o)
				check("Deployment "+o.Name, d.Spec.Selector, o.Name)
			}
			for _, o := range r.all("StatefulSet") {
				s := decode[appsv1.StatefulSet](t, o)
				check("StatefulSet "+o.Name, s.Spec.Selector, o.Name)
			}
			for _, o := range r.all("Service") {
				s := decode[corev1.Service](t, o)
				want := fullname
				if s.Spec.ClusterIP == corev1.ClusterIPNone {
					want = fullname + "-redis"
				}
				check("Service "+o.Name, &metav1.LabelSelector{MatchLabels: s.Spec.Selector}, want)
				// Every target port is a named port of the selected pods.
				for _, p := range s.Spec.Ports {
					if !hasPort(byName[want].spec, p.TargetPort.String()) {
						t.Errorf("Service %s port %s targets %s, not a port of %s", o.Name, p.Name, p.TargetPort.String(), want)
					}
				}
			}
			for _, o := range r.all("PodDisruptionBudget") {
				p := decode[policyv1.PodDisruptionBudget](t, o)
				want := fullname
				if strings.HasSuffix(o.Name, "-redis") {
					want = fullname + "-redis"
					if p.Spec.MaxUnavailable == nil || p.Spec.MaxUnavailable.IntValue() != 1 {
						t.Errorf("Redis PDB maxUnavailable %v, want 1", p.Spec.MaxUnavailable)
					}
				}
				check("PodDisruptionBudget "+o.Name, p.Spec.Selector, want)
			}
			if redisEnabled != (len(r.all("PodDisruptionBudget")) == 2) {
				t.Errorf("Redis PDB present %v, Redis enabled %v", len(r.all("PodDisruptionBudget")) == 2, redisEnabled)
			}
			for _, o := range r.all("PeerAuthentication") {
				pa := unstructuredOf(t, o)
				ml := pa["spec"].(map[string]any)["selector"].(map[string]any)["matchLabels"].(map[string]any)
				sel := &metav1.LabelSelector{MatchLabels: map[string]string{}}
				for k, v := range ml {
					sel.MatchLabels[k] = v.(string)
				}
				want := fullname
				if strings.HasSuffix(o.Name, "-redis") {
					want = fullname + "-redis"
				}
				check("PeerAuthentication "+o.Name, sel, want)
			}
			for _, o := range r.all("ServiceMonitor") {
				sm := unstructuredOf(t, o)
				ml := sm["spec"].(map[string]any)["selector"].(map[string]any)["matchLabels"].(map[string]any)
				var matched []string
				for _, so := range r.all("Service") {
					ok := true
					for k, v := range ml {
						if so.Labels[k] != v {
							ok = false
						}
					}
					if ok {
						matched = append(matched, so.Name)
					}
				}
				if !slices.Equal(matched, []string{fullname}) {
					t.Errorf("ServiceMonitor selects Services %v, want [%s]", matched, fullname)
				}
				ep := sm["spec"].(map[string]any)["endpoints"].([]any)[0].(map[string]any)
				svc := decode[corev1.Service](t, r.get(t, "Service", fullname))
				found := false
				for _, p := range svc.Spec.Ports {
					if p.Name == ep["port"] && p.Port == 8080 {
						found = true
					}
				}
				if !found {
					t.Errorf("ServiceMonitor port %v is not the Service's 8080 port", ep["port"])
				}
			}
		})
	}
}

func hasPort(spec corev1.PodSpec, nameOrNumber string) bool {
	for _, c := range spec.Containers {
		for _, p := range c.Ports {
			if p.Name == nameOrNumber || strconv.Itoa(int(p.ContainerPort)) == nameOrNumber {
				return true
			}
		}
	}
	return false
}

// The webhook Service maps 443 to the container's 9443 (named https) and
// exposes 8080 for metrics; the webhook configuration calls port 443.
func TestWebhookServicePorts(t *testing.T) {
	r := mustRender(t, renderOpts{})
	svc := decode[corev1.Service](t, r.get(t, "Service", fullname))
	d := r.deployment(t)
	c := container(t, d.Spec.Template.Spec, "webhook")
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	want := map[string][2]int32{"https": {443, 9443}, "metrics": {8080, 8080}}
	if len(svc.Spec.Ports) != len(want) {
		t.Fatalf("ports %+v", svc.Spec.Ports)
	}
	for _, p := range svc.Spec.Ports {
		w, ok := want[p.Name]
		if !ok || p.Port != w[0] || ports[p.TargetPort.String()] != w[1] {
			t.Errorf("Service port %s %d -> %s (container %d), want %v", p.Name, p.Port, p.TargetPort.String(), ports[p.TargetPort.String()], w)
		}
	}
	if ports["probes"] != 8081 {
		t.Errorf("probe port %d", ports["probes"])
	}
	for _, probe := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Port.String() != "probes" {
			t.Errorf("probe %+v does not use port 8081", probe)
		}
	}
	if c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("probe paths %s %s", c.ReadinessProbe.HTTPGet.Path, c.LivenessProbe.HTTPGet.Path)
	}
}

// The cert-manager chain: self-signed Issuer -> CA Certificate -> CA Issuer
// -> serving Certificate for the Service's names, rotating its key; or the
// user's issuer.
func TestCertificates(t *testing.T) {
	spec := func(o object) map[string]any { return unstructuredOf(t, o)["spec"].(map[string]any) }
	r := mustRender(t, renderOpts{values: "clusterDomain: corp.internal"})
	self := spec(r.get(t, "Issuer", fullname+"-selfsigned"))
	if _, ok := self["selfSigned"]; !ok {
		t.Errorf("self-signed issuer %v", self)
	}
	ca := spec(r.get(t, "Certificate", fullname+"-ca"))
	if ca["isCA"] != true || ca["issuerRef"].(map[string]any)["name"] != fullname+"-selfsigned" {
		t.Errorf("CA certificate %v", ca)
	}
	caIssuer := spec(r.get(t, "Issuer", fullname+"-ca"))
	if caIssuer["ca"].(map[string]any)["secretName"] != ca["secretName"] {
		t.Errorf("CA issuer %v does not use the CA's Secret %v", caIssuer, ca["secretName"])
	}
	serving := spec(r.get(t, "Certificate", fullname+"-serving"))
	if serving["issuerRef"].(map[string]any)["name"] != fullname+"-ca" {
		t.Errorf("serving issuer %v", serving["issuerRef"])
	}
	var dns []string
	for _, n := range serving["dnsNames"].([]any) {
		dns = append(dns, n.(string))
	}
	wantDNS := []string{fullname + "." + namespace + ".svc", fullname + "." + namespace + ".svc.corp.internal"}
	if !slices.Equal(dns, wantDNS) {
		t.Errorf("dnsNames %v, want %v", dns, wantDNS)
	}
	for name, c := range map[string]map[string]any{"ca": ca, "serving": serving} {
		if c["privateKey"].(map[string]any)["rotationPolicy"] != "Always" {
			t.Errorf("%s: rotationPolicy %v", name, c["privateKey"])
		}
	}
	// The lease URL's host is one of the certificate's names.
	d := r.deployment(t)
	u, _ := webhookArg(t, d, "lease-url")
	if !slices.Contains(wantDNS, strings.TrimSuffix(strings.TrimPrefix(u, "https://"), ":443")) {
		t.Errorf("lease URL %s is not covered by the certificate %v", u, wantDNS)
	}
	own := mustRender(t, renderOpts{values: "certManager: {issuerRef: {name: corp-ca, kind: ClusterIssuer, group: cert-manager.io}}"})
	ref := spec(own.get(t, "Certificate", fullname+"-serving"))["issuerRef"].(map[string]any)
	if ref["name"] != "corp-ca" || ref["kind"] != "ClusterIssuer" {
		t.Errorf("own issuerRef %v", ref)
	}
}

// The Redis StatefulSet: config safety settings, password never in the
// ConfigMap, args or env, persistence and the start delay without it.
func TestRedisStatefulSet(t *testing.T) {
	tests := []struct {
		name       string
		opts       renderOpts
		persistent bool
		delay      int // seconds; -1 for no start-delay container
		minReady   int32
	}{
		{"defaults", renderOpts{values: "redis: {persistence: {size: 5Gi, storageClass: fast}}"}, true, -1, 30},
		{"persistence off, default delay", renderOpts{values: "redis: {persistence: {enabled: false}}"}, false, 3660, 30},
		{"persistence off ci", renderOpts{valuesFile: "no-persistence-values.yaml"}, false, 5, 30},
		{"persistence off, 2h3m4s", renderOpts{values: "redis: {persistence: {enabled: false, startDelay: 2h3m4s}}"}, false, 7384, 30},
		{"persistence off, 90s", renderOpts{values: "redis: {persistence: {enabled: false, startDelay: 90s}}"}, false, 90, 30},
		{"lease TTL 1m30s", renderOpts{values: "webhook: {leaseTTL: 1m30s}\nredis: {persistence: {size: 5Gi, storageClass: fast}}"}, true, -1, 90},
		{"lease TTL 1.5m", renderOpts{values: "webhook: {leaseTTL: 1.5m}\nredis: {persistence: {size: 5Gi, storageClass: fast}}"}, true, -1, 90},
		{"lease TTL 45500ms, rounded up", renderOpts{values: "webhook: {leaseTTL: 45500ms}\nredis: {persistence: {size: 5Gi, storageClass: fast}}"}, true, -1, 46},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustRender(t, tc.opts)
			sts := r.statefulSet(t)
			spec := sts.Spec.Template.Spec
			// One lease TTL between two nodes of a rolling update: every
			// sidecar renews within it and so repairs the replaced node.
			if sts.Spec.MinReadySeconds != tc.minReady {
				t.Errorf("minReadySeconds %d, want the lease TTL %d s", sts.Spec.MinReadySeconds, tc.minReady)
			}
			if tc.persistent {
				if len(sts.Spec.VolumeClaimTemplates) != 1 {
					t.Fatalf("volumeClaimTemplates %+v", sts.Spec.VolumeClaimTemplates)
				}
				pvc := sts.Spec.VolumeClaimTemplates[0]
				if pvc.Name != "data" || pvc.Spec.Resources.Requests.Storage().String() != "5Gi" || *pvc.Spec.StorageClassName != "fast" {
					t.Errorf("claim %+v", pvc)
				}
			} else {
				if len(sts.Spec.VolumeClaimTemplates) != 0 {
					t.Error("volume claims without persistence")
				}
				found := false
				for _, v := range spec.Volumes {
					if v.Name == "data" && v.EmptyDir != nil {
						found = true
					}
				}
				if !found {
					t.Error("no emptyDir data volume without persistence")
				}
			}
			var delay = -1
			for _, c := range spec.InitContainers {
				if c.Name == "start-delay" {
					m := regexp.MustCompile(`sleep (\d+)`).FindStringSubmatch(strings.Join(c.Command, " "))
					if m == nil {
						t.Fatalf("start-delay without sleep: %v", c.Command)
					}
					delay, _ = strconv.Atoi(m[1])
				}
			}
			if delay != tc.delay {
				t.Errorf("start delay %d s, want %d", delay, tc.delay)
			}
			if tc.delay >= 0 && tc.delay < 3600 && !strings.Contains(r.Notes, "shorter than the longest lease") {
				t.Errorf("NOTES do not warn about a start delay below 1h:\n%s", r.Notes)
			}
			cm := decode[corev1.ConfigMap](t, r.get(t, "ConfigMap", fullname+"-redis"))
			conf := cm.Data["redis.conf"]
			for _, line := range []string{"appendonly yes", "appendfsync always", "maxmemory-policy noeviction", "protected-mode yes", "include /run/redis-auth/auth.conf"} {
				if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(line) + `$`).MatchString(conf) {
					t.Errorf("redis.conf lacks %q", line)
				}
			}
			if strings.Contains(conf, "requirepass") && !strings.Contains(conf, "# requirepass") {
				t.Error("redis.conf carries requirepass itself")
			}
			// The password is in no env, arg or ConfigMap.
			secret := decode[corev1.Secret](t, r.get(t, "Secret", fullname+"-redis-auth"))
			pw := string(secret.Data["redis-password"])
			if len(pw) < 32 {
				t.Errorf("generated password of %d characters", len(pw))
			}
			for _, c := range append(spec.InitContainers, spec.Containers...) {
				if len(c.Env) > 0 || len(c.EnvFrom) > 0 {
					t.Errorf("container %s has environment variables: %+v", c.Name, c.Env)
				}
				if strings.Contains(strings.Join(append(c.Command, c.Args...), " "), pw) {
					t.Errorf("container %s has the password on its command line", c.Name)
				}
			}
			if strings.Contains(conf, pw) {
				t.Error("the password is in the ConfigMap")
			}
		})
	}
}

// The ServiceEntry lists exactly the Redis pods' FQDNs, for 3 and 5 nodes.
func TestServiceEntryHosts(t *testing.T) {
	for _, n := range []int{3, 5} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			r := mustRender(t, renderOpts{values: fmt.Sprintf("istio: {enabled: true}\nredis: {replicas: %d}", n)})
			sts := r.statefulSet(t)
			var want []string
			for i := range n {
				want = append(want, redisFQDN(sts.Name, sts.Spec.ServiceName, namespace, "cluster.local", i))
			}
			se := unstructuredOf(t, r.get(t, "ServiceEntry", fullname+"-redis"))["spec"].(map[string]any)
			var hosts []string
			for _, h := range se["hosts"].([]any) {
				hosts = append(hosts, h.(string))
			}
			if !slices.Equal(hosts, want) {
				t.Errorf("hosts %v, want %v", hosts, want)
			}
			d := r.deployment(t)
			addrs, _ := webhookArg(t, d, "redis-addresses")
			for i, a := range strings.Split(addrs, ",") {
				if strings.TrimSuffix(a, ":6379") != hosts[i] {
					t.Errorf("address %s is not ServiceEntry host %s", a, hosts[i])
				}
			}
			// Injection only when Istio is on; PeerAuthentication STRICT with 9443 PERMISSIVE.
			if d.Spec.Template.Labels["sidecar.istio.io/inject"] != "true" || sts.Spec.Template.Labels["sidecar.istio.io/inject"] != "true" {
				t.Error("pods not labelled for injection")
			}
			pa := unstructuredOf(t, r.get(t, "PeerAuthentication", fullname))["spec"].(map[string]any)
			if pa["mtls"].(map[string]any)["mode"] != "STRICT" || pa["portLevelMtls"].(map[string]any)["9443"].(map[string]any)["mode"] != "PERMISSIVE" {
				t.Errorf("PeerAuthentication %v", pa)
			}
		})
	}
	off := mustRender(t, renderOpts{})
	for _, w := range off.workloads(t) {
		if _, ok := w.labels["sidecar.istio.io/inject"]; ok {
			t.Errorf("%s has an Istio injection label with Istio off", w.name)
		}
	}
}

// The PrometheusRule alerts on the webhook's metric names.
func TestPrometheusRule(t *testing.T) {
	r := mustRender(t, renderOpts{values: "prometheusRule: {enabled: true, alertLabels: {team: platform}}", apiVersions: []string{monitoringAPI}})
	pr := unstructuredOf(t, r.get(t, "PrometheusRule", fullname))
	rules := pr["spec"].(map[string]any)["groups"].([]any)[0].(map[string]any)["rules"].([]any)
	want := map[string]string{
		"PrometheusMetricsProxyHookRedisQuorumAtRisk":    "prometheus_metrics_proxy_hook_redis_node_up",
		"PrometheusMetricsProxyHookRedisQuorumLost":      "prometheus_metrics_proxy_hook_redis_node_up",
		"PrometheusMetricsProxyHookRedisNodeDown":        "prometheus_metrics_proxy_hook_redis_node_up",
		"PrometheusMetricsProxyHookCertificateExpiring":  "prometheus_metrics_proxy_hook_certificate_expiry_timestamp_seconds",
		"PrometheusMetricsProxyHookSemaphoresFull":       `prometheus_metrics_proxy_hook_semaphore_operations_total{namespace="pmph-system",service="` + fullname + `",operation="acquire",result="full"}`,
		"PrometheusMetricsProxyHookLeaseRenewalFailures": `operation="renew",result=~"lost|no_quorum|error"`,
		"PrometheusMetricsProxyHookPodsOverLimit":        `prometheus_metrics_proxy_hook_lease_api_requests_total{namespace="pmph-system",service="` + fullname + `",operation="acquire",code="409"}`,
		"PrometheusMetricsProxyHookReleasesPilingUp":     `prometheus_metrics_proxy_hook_reconciler_releases_total{namespace="pmph-system",service="` + fullname + `",cause="no_pod"}`,
		"PrometheusMetricsProxyHookReconcilerFailing":    `prometheus_metrics_proxy_hook_reconciler_sweeps_total{namespace="pmph-system",service="` + fullname + `",result="error"}`,
	}
	got := map[string]bool{}
	for _, x := range rules {
		rule := x.(map[string]any)
		name := rule["alert"].(string)
		got[name] = true
		expr := rule["expr"].(string)
		if !strings.Contains(expr, want[name]) {
			t.Errorf("%s: expr %q lacks %q", name, expr, want[name])
		}
		if rule["labels"].(map[string]any)["team"] != "platform" {
			t.Errorf("%s: alert labels %v", name, rule["labels"])
		}
		if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
			t.Errorf("%s: unbalanced expression %q", name, expr)
		}
	}
	for name := range want {
		if !got[name] {
			t.Errorf("alert %s missing", name)
		}
	}
	if got, wantN := len(rules), len(want); got != wantN {
		t.Errorf("%d rules, want %d", got, wantN)
	}
	if !strings.Contains(rules[1].(map[string]any)["expr"].(string), "floor(count by (namespace, pod)") {
		t.Errorf("quorum lost is not up < floor(M/2)+1: %v", rules[1])
	}
}

// NOTES show how to annotate a pod.
func TestNotes(t *testing.T) {
	r := mustRender(t, renderOpts{})
	for _, s := range []string{optInKey + `: "true"`, "semaphore-key", "semaphore-size", "helm test " + releaseName} {
		if !strings.Contains(r.Notes, s) {
			t.Errorf("NOTES lack %q", s)
		}
	}
	m := mustRender(t, renderOpts{values: "serviceMonitor: {enabled: true}"})
	if !strings.Contains(m.Notes, "no ServiceMonitor was created") {
		t.Errorf("NOTES do not say the ServiceMonitor was skipped:\n%s", m.Notes)
	}
}

// The longest release name Helm allows (53 characters) still gives valid
// names: at most 63 characters, and at most 52 for the StatefulSet (its pods'
// controller-revision-hash label adds 11).
func TestLongReleaseName(t *testing.T) {
	long := strings.Repeat("r", 53)
	for _, values := range []string{"", "istio: {enabled: true}\nnetworkPolicy: {enabled: true}", "redis: {enabled: false}\nexternalRedis: {addresses: [a:1], password: p}\nistio: {enabled: true}"} {
		r := mustRender(t, renderOpts{releaseName: long, values: values})
		for _, o := range r.Objects {
			if errs := validation.IsDNS1123Subdomain(o.Name); len(errs) > 0 || len(o.Name) > 63 {
				t.Errorf("%s: invalid name (%d characters): %v", o, len(o.Name), errs)
			}
			if o.Kind == "Service" {
				if errs := validation.IsDNS1035Label(o.Name); len(errs) > 0 {
					t.Errorf("%s: not a DNS-1035 label: %v", o, errs)
				}
			}
			if o.Kind == "StatefulSet" && len(o.Name) > 52 {
				t.Errorf("%s: StatefulSet name of %d characters", o, len(o.Name))
			}
		}
	}
}
