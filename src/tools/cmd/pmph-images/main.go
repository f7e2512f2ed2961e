// Command pmph-images builds the container images of the local node
// (src/testenv/images) without a container engine, and writes them as
// tarballs or pushes them to a registry.
//
//	pmph-images -out DIR                 one DIR/NAME.tar per image (docker save layout:
//	                                     `ctr -n k8s.io images import`, `docker load`)
//	pmph-images -push 127.0.0.1:5000     push each image under its repository path
//	                                     (ghcr.io/kaidotio/x:1 -> 127.0.0.1:5000/kaidotio/x:1)
//	pmph-images -images project,redis    build only these (default: all)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/images"
	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/testenv/registry"
)

type config struct {
	out, push, names, workDir string
	opts                      images.Options
}

func main() {
	var cfg config
	flag.StringVar(&cfg.out, "out", "", "Directory to write one NAME.tar per image into.")
	flag.StringVar(&cfg.push, "push", "", "Registry host (HOST:PORT) to push the images to; plain HTTP for a loopback host.")
	flag.StringVar(&cfg.names, "images", "", "Comma-separated images to build, of: "+strings.Join(images.Names(), ", ")+" (default: all).")
	flag.StringVar(&cfg.workDir, "workdir", "", "Directory for binaries and layers (default: a temporary one, removed at exit).")
	flag.StringVar(&cfg.opts.Version, "version", "dev", "Version stamped into the project's binaries and labels.")
	flag.StringVar(&cfg.opts.Revision, "revision", "unknown", "Revision stamped into the project's binaries and labels.")
	flag.StringVar(&cfg.opts.Arch, "arch", "", "GOARCH of the project image (default: this machine's).")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "pmph-images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config) (err error) {
	if cfg.out == "" && cfg.push == "" {
		return errors.New("give -out DIR, -push HOST:PORT or both; building alone writes nothing")
	}
	if cfg.workDir == "" {
		if cfg.workDir, err = os.MkdirTemp("", "pmph-images-"); err != nil {
			return err
		}
		defer func() { err = errors.Join(err, os.RemoveAll(cfg.workDir)) }()
	}
	cfg.opts.WorkDir = cfg.workDir
	var names []string
	if cfg.names != "" {
		names = strings.Split(cfg.names, ",")
	}
	built, err := images.Build(ctx, cfg.opts, names...)
	if err != nil {
		return err
	}
	for _, b := range built {
		digest, err := b.Image.Digest()
		if err != nil {
			return err
		}
		if cfg.out != "" {
			if err := writeTarball(filepath.Join(cfg.out, b.Name+".tar"), b); err != nil {
				return err
			}
		}
		if cfg.push != "" {
			if _, err := registry.Push(ctx, cfg.push, b.Image, b.Refs...); err != nil {
				return err
			}
		}
		fmt.Printf("%-12s %s %s\n", b.Name, digest, strings.Join(b.Refs, " "))
	}
	return nil
}

func writeTarball(path string, b images.Built) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for _, ref := range b.Refs {
		tag, err := name.NewTag(ref, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("naming %s: %w", ref, err)
		}
		refs[tag] = b.Image
	}
	if err := tarball.MultiRefWriteToFile(path, refs); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
