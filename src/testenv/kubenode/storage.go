package kubenode

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/kubetest"
)

// StorageClass is the node's default StorageClass. Nothing provisions its
// volumes: claims bind to the local PersistentVolumes CreateLocalVolumes
// makes beforehand, as an administrator's static provisioning does.
const StorageClass = "local"

// volumesDir holds the volumes' directories under the node's directory, so
// that Stop and the sweep of a crashed run remove them with it.
const volumesDir = "volumes"

// createStorageClass makes StorageClass the cluster's default. Binding waits
// for the first pod, so that the scheduler places it where its volume is.
func (n *Node) createStorageClass(ctx context.Context) error {
	retain := corev1.PersistentVolumeReclaimRetain
	wait := storagev1.VolumeBindingWaitForFirstConsumer
	sc := storagev1.StorageClass{
		TypeMeta: metav1.TypeMeta{APIVersion: "storage.k8s.io/v1", Kind: "StorageClass"},
		ObjectMeta: metav1.ObjectMeta{Name: StorageClass,
			Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"}},
		Provisioner:       "kubernetes.io/no-provisioner",
		ReclaimPolicy:     &retain,
		VolumeBindingMode: &wait,
	}
	if err := n.Do(ctx, http.MethodPost, "/apis/storage.k8s.io/v1/storageclasses", sc, nil); err != nil {
		return fmt.Errorf("cannot create the default StorageClass: %w", err)
	}
	return nil
}

// CreateLocalVolumes makes count local PersistentVolumes of StorageClass,
// named prefix-0, prefix-1..., each an empty directory of the node holding
// capacity (a quantity such as "1Gi"; nothing enforces it). They are
// retained when their claims go: DeleteLocalVolumes removes them.
func (n *Node) CreateLocalVolumes(ctx context.Context, prefix string, count int, capacity string) ([]string, error) {
	size, err := resource.ParseQuantity(capacity)
	if err != nil {
		return nil, fmt.Errorf("the capacity %q of the local volumes is not a quantity: %w", capacity, err)
	}
	var names []string
	for i := range count {
		name := prefix + "-" + strconv.Itoa(i)
		dir := n.VolumeDir(name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return names, fmt.Errorf("cannot create the directory of volume %s: %w", name, err)
		}
		if err := n.Do(ctx, http.MethodPost, "/api/v1/persistentvolumes", n.localVolume(name, dir, size), nil); err != nil {
			return names, fmt.Errorf("cannot create the PersistentVolume %s: %w", name, err)
		}
		names = append(names, name)
	}
	return names, nil
}

// VolumeDir is the directory of a volume CreateLocalVolumes made.
func (n *Node) VolumeDir(name string) string {
	return filepath.Join(n.Dir, volumesDir, name)
}

// localVolume is a local PersistentVolume on this node: the kubelet applies
// the pod's fsGroup to its directory, as on a cluster's local disks.
func (n *Node) localVolume(name, dir string, size resource.Quantity) corev1.PersistentVolume {
	return corev1.PersistentVolume{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolume"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              StorageClass,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: dir}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{n.Name},
				}}}},
			}},
		},
	}
}

// DeleteLocalVolumes deletes PersistentVolumes CreateLocalVolumes made and
// their directories, waiting until each object is gone: delete their claims
// first, or this waits until ctx ends.
func (n *Node) DeleteLocalVolumes(ctx context.Context, names []string) error {
	var errs []error
	for _, name := range names {
		path := "/api/v1/persistentvolumes/" + name
		if err := n.Do(ctx, http.MethodDelete, path, nil, nil); err != nil && !kubetest.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("cannot delete the PersistentVolume %s: %w", name, err))
			continue
		}
		if err := n.waitGone(ctx, path); err != nil {
			errs = append(errs, fmt.Errorf("the PersistentVolume %s: %w", name, err))
			continue
		}
		if err := os.RemoveAll(n.VolumeDir(name)); err != nil {
			errs = append(errs, fmt.Errorf("cannot remove the directory of volume %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// waitGone waits until GET path answers 404.
func (n *Node) waitGone(ctx context.Context, path string) error {
	for {
		var obj struct {
			Status struct{ Phase string }
		}
		err := n.Do(ctx, http.MethodGet, path, nil, &obj)
		if kubetest.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still there when the wait ended (phase %q, last error %v): %w", obj.Status.Phase, err, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}
