package leaseserver_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/admission"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/leaseapi"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/semaphore"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/redistest"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/webhooktest"
)

const audience = "prometheus-metrics-proxy-hook"

// shared is one control plane for every test of the package that needs
// one: starting kube-apiserver costs more than all those tests together.
// Tests keep to their own namespaces.
var shared struct {
	once sync.Once
	cp   *kubetest.ControlPlane
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.cp != nil {
		if err := shared.cp.Stop(); err != nil && code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func controlPlane(t testing.TB) *kubetest.ControlPlane {
	t.Helper()
	shared.once.Do(func() {
		shared.cp, shared.err = kubetest.Start(context.Background(), kubetest.Options{Logf: t.Logf})
	})
	if shared.err != nil {
		t.Fatalf("cannot start the control plane (run `make tools` first if a tool is missing): %v", shared.err)
	}
	return shared.cp
}

// kubeEnv is a webhook process that checks tokens with the real API server,
// on three real Redis nodes.
type kubeEnv struct {
	cp   *kubetest.ControlPlane
	kube kubernetes.Interface
	sem  *semaphore.Client
	wh   *webhooktest.Webhook
}

// newKubeEnv starts a webhook process, with args after the defaults.
func newKubeEnv(t testing.TB, args ...string) *kubeEnv {
	t.Helper()
	e, redis := newKube(t)
	e.wh = webhooktest.Start(t, webhooktest.Options{Redis: redis.Addrs(), RedisPassword: redis.Password,
		Kubeconfig: e.cp.KubeconfigPath, Args: args})
	return e
}

// newKube is the API server client and the Redis nodes, for tests that
// serve the lease API in their own process.
func newKube(t testing.TB) (*kubeEnv, *redistest.Cluster) {
	t.Helper()
	cp := controlPlane(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.KubeconfigPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 1000, 2000
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	redis := redistest.StartT(t, 3)
	sem, err := semaphore.New(semaphore.Config{Addrs: redis.Addrs(), Password: redis.Password, NodeTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sem.Close() })
	return &kubeEnv{cp: cp, kube: kube, sem: sem}, redis
}

// namespace creates a namespace with a unique name and its default
// ServiceAccount (no controller manager runs to create it).
func (e *kubeEnv) namespace(t testing.TB, prefix string) string {
	t.Helper()
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := prefix + "-" + hex.EncodeToString(b[:])
	ctx := context.Background()
	if _, err := e.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.kube.CoreV1().ServiceAccounts(name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

// pod creates a pod with annotations; it is never scheduled (no kubelet),
// which is all its identity needs.
func (e *kubeEnv) pod(t testing.TB, ns, name string, annotations map[string]string) *corev1.Pod {
	t.Helper()
	p, err := e.kube.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// member takes a slot of ns/key as admission would and creates the pod
// that holds it, with the annotations admission writes.
func (e *kubeEnv) member(t testing.TB, ns, name, key string, size int) (*corev1.Pod, leaseapi.Lease) {
	t.Helper()
	got := e.admit(t, leaseapi.SemaphoreName(ns, key), size, name)
	p := e.pod(t, ns, name, map[string]string{
		admission.AnnotationOptIn: "true", admission.AnnotationSemaphoreKey: key,
		admission.AnnotationSemaphoreSize: strconv.Itoa(size), admission.AnnotationInjected: "true",
		admission.AnnotationSemaphoreSlot: strconv.Itoa(got.Slot), admission.AnnotationHolder: got.Holder,
	})
	return p, leaseapi.Lease{Namespace: ns, Key: key, Slot: got.Slot, Holder: got.Holder}
}

// admit takes a slot as admission does: with a lease record, which tells
// the lease apart from one granted before records (and tokens) existed.
func (e *kubeEnv) admit(t testing.TB, name string, size int, pod string) semaphore.Lease {
	t.Helper()
	holder := semaphore.NewHolderID()
	rec := semaphore.Record{Granted: time.Now(), Pod: pod}
	got, err := e.sem.AcquireWithRecord(context.Background(), name, size, 5*time.Minute, holder, rec)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// token asks the TokenRequest API for a token bound to pod, as the kubelet
// does for a projected volume.
func (e *kubeEnv) token(t testing.TB, p *corev1.Pod, aud string) string {
	t.Helper()
	tr, err := e.kube.CoreV1().ServiceAccounts(p.Namespace).CreateToken(context.Background(), "default", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			Audiences: []string{aud}, ExpirationSeconds: ptr.To[int64](600),
			BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// call posts body to path with token (none when empty).
func (e *kubeEnv) call(t testing.TB, path, token string, body any) (int, leaseapi.ErrorResponse) {
	t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, e.wh.LeaseURL()+path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.wh.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	var er leaseapi.ErrorResponse
	_ = json.Unmarshal(answer, &er)
	return resp.StatusCode, er
}

// slots is the holder of every slot of a semaphore.
func (e *kubeEnv) slots(t testing.TB, name string, size int) []string {
	t.Helper()
	st, err := e.sem.Inspect(context.Background(), name, size)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, 0, size)
	for _, sl := range st.Slots {
		out = append(out, sl.Holder)
	}
	return out
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
