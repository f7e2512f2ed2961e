package admission

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
)

// TestPodObjectMirrorsThePodAPI: every member podObject reads has the name
// and the type it has in corev1.Pod, so that the webhook reads what the API
// server wrote and its JSON pointers address it.
func TestPodObjectMirrorsThePodAPI(t *testing.T) {
	mirrors(t, reflect.TypeFor[podObject](), reflect.TypeFor[corev1.Pod](), "pod")
}

func mirrors(t *testing.T, view, api reflect.Type, path string) {
	t.Helper()
	for view.Kind() == reflect.Pointer || view.Kind() == reflect.Slice {
		if api.Kind() != view.Kind() {
			t.Errorf("%s is a %s, in corev1 a %s", path, view.Kind(), api.Kind())
			return
		}
		view, api = view.Elem(), api.Elem()
	}
	if view == api {
		return
	}
	if view.Kind() != reflect.Struct || api.Kind() != reflect.Struct {
		t.Errorf("%s is %s, in corev1 %s", path, view, api)
		return
	}
	members := map[string]reflect.StructField{}
	for f := range api.Fields() {
		members[jsonName(f)] = f
	}
	for f := range view.Fields() {
		name := jsonName(f)
		a, ok := members[name]
		if !ok {
			t.Errorf("%s.%s is not a member of %s", path, name, api)
			continue
		}
		mirrors(t, f.Type, a.Type, path+"."+name)
	}
}

func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	return name
}

// TestPodObjectAgreesWithPod decodes the same pods as podObject and as
// corev1.Pod: what the webhook reads is the same either way.
func TestPodObjectAgreesWithPod(t *testing.T) {
	withInit := basePod()
	withInit.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "x", Ports: []corev1.ContainerPort{{ContainerPort: 1, HostPort: 2}}}}
	withInit.Spec.HostNetwork = true
	withInit.Spec.TerminationGracePeriodSeconds = ptr(int64(7))
	for _, pod := range []*corev1.Pod{basePod(), semaphorePod("k", "3"), withInit} {
		agreesWithPod(t, mustJSON(pod))
	}
}

// agreesWithPod fails the test when object decodes differently as a
// podObject and as a corev1.Pod.
func agreesWithPod(t *testing.T, object []byte) {
	t.Helper()
	var full corev1.Pod
	var view podObject
	if err := kjson.UnmarshalCaseSensitivePreserveInts(object, &full); err != nil {
		return
	}
	if err := kjson.UnmarshalCaseSensitivePreserveInts(object, &view); err != nil {
		t.Fatalf("a pod that decodes as corev1.Pod does not as podObject: %v", err)
	}
	want := podObject{ObjectMeta: full.ObjectMeta, Spec: podSpec{
		HostNetwork: full.Spec.HostNetwork, TerminationGracePeriodSeconds: full.Spec.TerminationGracePeriodSeconds,
		Containers: containersOf(full.Spec.Containers), InitContainers: containersOf(full.Spec.InitContainers),
	}}
	if !reflect.DeepEqual(view, want) {
		t.Fatalf("podObject %+v\ncorev1.Pod %+v", view, want)
	}
}

func containersOf(cs []corev1.Container) []containerPorts {
	if cs == nil {
		return nil
	}
	out := make([]containerPorts, 0, len(cs))
	for _, c := range cs {
		out = append(out, containerPorts{Name: c.Name, Ports: c.Ports})
	}
	return out
}
