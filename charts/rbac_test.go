package charts

import (
	"slices"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

// The webhook's ServiceAccount gets exactly what the reconciler and the
// lease API's token reviews need: pods read cluster-wide, Events written,
// TokenReviews, and its own leader election Lease in the release namespace.
func TestRBAC(t *testing.T) {
	r := mustRender(t, renderOpts{})
	d := r.deployment(t)
	sa := d.Spec.Template.Spec.ServiceAccountName

	cr := decode[rbacv1.ClusterRole](t, r.get(t, "ClusterRole", fullname))
	wantCluster := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		{APIGroups: []string{"authentication.k8s.io"}, Resources: []string{"tokenreviews"}, Verbs: []string{"create"}},
	}
	checkRules(t, "ClusterRole", cr.Rules, wantCluster)

	lease, ok := webhookArg(t, d, "leader-election-lease-name")
	if !ok || lease != fullname+"-reconciler" {
		t.Fatalf("--leader-election-lease-name %q, want %s-reconciler", lease, fullname)
	}
	if ns, _ := webhookArg(t, d, "leader-election-namespace"); ns != namespace {
		t.Errorf("--leader-election-namespace %q, want the release namespace %s", ns, namespace)
	}
	role := decode[rbacv1.Role](t, r.get(t, "Role", fullname+"-leader-election"))
	if role.Namespace != namespace {
		t.Errorf("Role in %q, want %q", role.Namespace, namespace)
	}
	checkRules(t, "Role", role.Rules, []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{lease}, Verbs: []string{"get", "update"}},
	})

	crb := decode[rbacv1.ClusterRoleBinding](t, r.get(t, "ClusterRoleBinding", fullname))
	rb := decode[rbacv1.RoleBinding](t, r.get(t, "RoleBinding", fullname+"-leader-election"))
	for _, b := range []struct {
		kind     string
		ref      rbacv1.RoleRef
		subjects []rbacv1.Subject
		wantRef  string
	}{
		{"ClusterRoleBinding", crb.RoleRef, crb.Subjects, "ClusterRole/" + cr.Name},
		{"RoleBinding", rb.RoleRef, rb.Subjects, "Role/" + role.Name},
	} {
		if b.ref.Kind+"/"+b.ref.Name != b.wantRef {
			t.Errorf("%s refers to %s/%s, want %s", b.kind, b.ref.Kind, b.ref.Name, b.wantRef)
		}
		want := []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: namespace}}
		if !slices.Equal(b.subjects, want) {
			t.Errorf("%s subjects %+v, want %+v", b.kind, b.subjects, want)
		}
	}
}

func checkRules(t *testing.T, what string, got, want []rbacv1.PolicyRule) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s rules %+v, want %+v", what, got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if !slices.Equal(g.APIGroups, w.APIGroups) || !slices.Equal(g.Resources, w.Resources) ||
			!slices.Equal(g.Verbs, w.Verbs) || !slices.Equal(g.ResourceNames, w.ResourceNames) || len(g.NonResourceURLs) != 0 {
			t.Errorf("%s rule %d: %+v, want %+v", what, i, g, w)
		}
	}
}
