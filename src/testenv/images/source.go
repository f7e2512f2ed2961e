package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// ExportCommit writes the tree of commit, from the git repository at root,
// into dir (created if missing) with `git archive | tar -x`, so that an
// earlier release's image and chart can be built next to the current ones
// without touching the repository's work trees. The caller removes dir.
func ExportCommit(ctx context.Context, root, commit, dir string) error {
	if out, err := exec.CommandContext(ctx, "git", "-C", root, "cat-file", "-e", commit+"^{commit}").CombinedOutput(); err != nil {
		return fmt.Errorf("commit %s is not in the repository at %s (a shallow clone lacks it; fetch the history): %w\n%s", commit, root, err, out)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating the directory for commit %s: %w", commit, err)
	}
	archive := exec.CommandContext(ctx, "git", "-C", root, "archive", "--format=tar", commit)
	extract := exec.CommandContext(ctx, "tar", "-x", "-C", dir)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return err
	}
	extract.Stdin = pipe
	var archiveErr, extractErr strings.Builder
	archive.Stderr, extract.Stderr = &archiveErr, &extractErr
	if err := extract.Start(); err != nil {
		return fmt.Errorf("starting tar: %w", err)
	}
	if err := archive.Run(); err != nil {
		return errors.Join(fmt.Errorf("git archive %s: %w: %s", commit, err, archiveErr.String()), extract.Wait())
	}
	if err := extract.Wait(); err != nil {
		return fmt.Errorf("extracting commit %s into %s: %w: %s", commit, dir, err, extractErr.String())
	}
	return nil
}
