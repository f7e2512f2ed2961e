package admission

import (
	"fmt"
	"strconv"
)

// readPod fills the view from a pod object with the scanner. It is several
// times faster than encoding/json on big pods (it skips what it does not
// read without reflection), and it matches member names exactly, as the
// JSON pointers of the patch do; encoding/json would also accept "Spec" or
// "CONTAINERS", and the patch would then miss its target.
func readPod(object []byte, p *podView) error {
	s := scanner{data: object}
	if s.peek() != '{' {
		return fmt.Errorf("the pod is not a JSON object")
	}
	err := s.object(func(key []byte, esc bool) error {
		switch {
		case equalsKey(key, esc, "metadata"):
			if s.isNull() {
				return nil
			}
			return s.object(func(key []byte, esc bool) error {
				switch {
				case equalsKey(key, esc, "name"):
					return s.optText(&p.Metadata.Name)
				case equalsKey(key, esc, "generateName"):
					return s.optText(&p.Metadata.GenerateName)
				case equalsKey(key, esc, "annotations"):
					if s.isNull() {
						p.Metadata.Annotations = nil
						return nil
					}
					m := make(map[string]string, 8)
					p.Metadata.Annotations = m
					return s.object(func(key []byte, esc bool) error {
						var v string
						if err := s.optText(&v); err != nil {
							return err
						}
						m[unquote(key, esc)] = v
						return nil
					})
				}
				return s.skip()
			})
		case equalsKey(key, esc, "spec"):
			if s.isNull() {
				return nil
			}
			return s.object(func(key []byte, esc bool) error {
				switch {
				case equalsKey(key, esc, "containers"):
					return s.containers(&p.Spec.Containers)
				case equalsKey(key, esc, "initContainers"):
					return s.containers(&p.Spec.InitContainers)
				case equalsKey(key, esc, "hostNetwork"):
					v, err := s.boolean()
					p.Spec.HostNetwork = v
					return err
				case equalsKey(key, esc, "terminationGracePeriodSeconds"):
					if s.isNull() {
						p.Spec.TerminationGracePeriodSeconds = nil
						return nil
					}
					n, err := s.integer(64)
					p.Spec.TerminationGracePeriodSeconds = &n
					return err
				}
				return s.skip()
			})
		}
		return s.skip()
	})
	if err == nil {
		err = s.end()
	}
	return err
}

func (s *scanner) containers(dst *[]containerView) error {
	*dst = nil
	if s.isNull() {
		return nil
	}
	if err := s.consume('[', "an array of containers"); err != nil {
		return err
	}
	if s.peek() == ']' {
		s.pos++
		*dst = []containerView{}
		return nil
	}
	for {
		var c containerView
		if s.isNull() {
			// A null element decodes as an empty container, as in
			// encoding/json.
		} else if err := s.object(func(key []byte, esc bool) error {
			switch {
			case equalsKey(key, esc, "name"):
				return s.optText(&c.Name)
			case equalsKey(key, esc, "ports"):
				return s.ports(&c)
			}
			return s.skip()
		}); err != nil {
			return err
		}
		*dst = append(*dst, c)
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return nil
		default:
			return s.fail("',' or ']' in an array of containers")
		}
	}
}

func (s *scanner) ports(c *containerView) error {
	c.Ports = nil
	if s.isNull() {
		return nil
	}
	if err := s.consume('[', "an array of ports"); err != nil {
		return err
	}
	if s.peek() == ']' {
		s.pos++
		return nil
	}
	for {
		var port portView
		if !s.isNull() {
			if err := s.object(func(key []byte, esc bool) error {
				var err error
				switch {
				case equalsKey(key, esc, "name"):
					return s.optText(&port.Name)
				case equalsKey(key, esc, "containerPort"):
					var n int64
					n, err = s.integer(32)
					port.ContainerPort = int32(n)
				case equalsKey(key, esc, "hostPort"):
					var n int64
					n, err = s.integer(32)
					port.HostPort = int32(n)
				default:
					return s.skip()
				}
				return err
			}); err != nil {
				return err
			}
		}
		c.Ports = append(c.Ports, port)
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return nil
		default:
			return s.fail("',' or ']' in an array of ports")
		}
	}
}

// integer reads a JSON number that must be an integer of the given size.
func (s *scanner) integer(bits int) (int64, error) {
	if s.isNull() {
		return 0, nil
	}
	start := s.pos
	if err := s.number(); err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(string(s.data[start:s.pos]), 10, bits)
	if err != nil {
		return 0, fmt.Errorf("%s is not an integer of %d bits", s.data[start:s.pos], bits)
	}
	return n, nil
}
