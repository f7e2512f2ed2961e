//go:build !linux

package startuppages

import "errors"

func dontNeed(start, length uintptr) error {
	return errors.New("dropping pages is only implemented on Linux")
}
