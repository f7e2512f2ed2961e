package images

import (
	"archive/tar"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"testing/fstest"
	"time"
)

// epoch is every file's modification time: the same inputs give the same
// layer digest.
var epoch = time.Unix(0, 0).UTC()

// RootFS is an image's file system before it becomes a layer: paths without a
// leading slash, as fs.FS wants them. Parent directories are added by the
// methods, root-owned and 0755, unless added before with other modes.
type RootFS struct {
	files fstest.MapFS
}

// NewRootFS returns an empty file system.
func NewRootFS() *RootFS {
	return &RootFS{files: fstest.MapFS{}}
}

// Owner is a numeric uid and gid.
type Owner struct{ UID, GID int }

// Root owns every file unless a method is given another owner.
var Root = Owner{}

// Dir adds a directory.
func (r *RootFS) Dir(name string, mode fs.FileMode, owner Owner) {
	name = clean(name)
	r.parents(name)
	r.files[name] = &fstest.MapFile{Mode: fs.ModeDir | mode, ModTime: epoch, Sys: owner.header()}
}

// File adds a regular file with the given content.
func (r *RootFS) File(name string, data []byte, mode fs.FileMode, owner Owner) {
	name = clean(name)
	r.parents(name)
	r.files[name] = &fstest.MapFile{Data: data, Mode: mode, ModTime: epoch, Sys: owner.header()}
}

// Symlink adds a symbolic link to target.
func (r *RootFS) Symlink(name, target string) {
	name = clean(name)
	r.parents(name)
	r.files[name] = &fstest.MapFile{Data: []byte(target), Mode: fs.ModeSymlink | 0o777, ModTime: epoch, Sys: Root.header()}
}

// HostFile copies a file of this machine (following symbolic links) to name,
// root-owned, keeping its permission bits.
func (r *RootFS) HostFile(name, hostPath string) error {
	info, err := os.Stat(hostPath)
	if err != nil {
		return fmt.Errorf("adding %s to the image: %w", hostPath, err)
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("adding %s to the image: it is not a regular file", hostPath)
	}
	data, err := os.ReadFile(hostPath)
	if err != nil {
		return fmt.Errorf("adding %s to the image: %w", hostPath, err)
	}
	r.File(name, data, info.Mode().Perm(), Root)
	return nil
}

// Account is a line of /etc/passwd and one of /etc/group (gid = uid).
type Account struct {
	Name string
	ID   int
	Home string
}

// Users adds /etc/passwd and /etc/group with root, nobody and the given
// accounts, every shell /sbin/nologin as in distroless.
func (r *RootFS) Users(accounts ...Account) {
	all := append([]Account{{"root", 0, "/root"}, {"nobody", 65534, "/nonexistent"}}, accounts...)
	var passwd, group strings.Builder
	for _, a := range all {
		fmt.Fprintf(&passwd, "%s:x:%d:%d:%s:%s:/sbin/nologin\n", a.Name, a.ID, a.ID, a.Name, a.Home)
		fmt.Fprintf(&group, "%s:x:%d:\n", a.Name, a.ID)
	}
	r.File("etc/passwd", []byte(passwd.String()), 0o644, Root)
	r.File("etc/group", []byte(group.String()), 0o644, Root)
}

// Has reports whether name was added.
func (r *RootFS) Has(name string) bool {
	_, ok := r.files[clean(name)]
	return ok
}

// FS is the file system as the layer writer reads it.
func (r *RootFS) FS() fs.FS { return r.files }

func (r *RootFS) parents(name string) {
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		if _, ok := r.files[dir]; !ok {
			r.files[dir] = &fstest.MapFile{Mode: fs.ModeDir | 0o755, ModTime: epoch, Sys: Root.header()}
		}
	}
}

func (o Owner) header() *tar.Header {
	// FileInfoHeader copies the owner from a *tar.Header returned by Sys.
	return &tar.Header{Uid: o.UID, Gid: o.GID}
}

func clean(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}

// CapNetBindService is the capability to bind ports below 1024.
const CapNetBindService = 10

// FileCapabilities gives the file at name the capabilities (permitted and
// effective, as `setcap cap_...=+ep` does), so that a non-root process can
// use them once the pod grants them; the upstream CoreDNS image does this
// for port 53. It is an extended attribute in the layer's PAX records, which
// containerd applies when it unpacks the layer.
func (r *RootFS) FileCapabilities(name string, caps ...uint) error {
	f, ok := r.files[clean(name)]
	if !ok || !f.Mode.IsRegular() {
		return fmt.Errorf("giving %s capabilities: no such regular file in the image", name)
	}
	var permitted [2]uint32
	for _, c := range caps {
		if c >= 64 {
			return fmt.Errorf("giving %s capabilities: %d is not a capability number", name, c)
		}
		permitted[c/32] |= 1 << (c % 32)
	}
	// struct vfs_cap_data, revision 2, little-endian: magic_etc with the
	// effective flag, then permitted and inheritable for each 32-bit half.
	const vfsCapRevision2, vfsCapFlagsEffective = 0x02000000, 0x1
	data := binary.LittleEndian.AppendUint32(nil, vfsCapRevision2|vfsCapFlagsEffective)
	for _, p := range permitted {
		data = binary.LittleEndian.AppendUint32(data, p)
		data = binary.LittleEndian.AppendUint32(data, 0)
	}
	h := f.Sys.(*tar.Header)
	if h.PAXRecords == nil {
		h.PAXRecords = map[string]string{}
	}
	h.PAXRecords["SCHILY.xattr.security.capability"] = string(data)
	return nil
}
