package admission

import (
	"fmt"
	"strconv"

	"github.com/kaidotio/prometheus-metrics-proxy-hook/src/jsonscan"
)

// readPod fills the view and the gate from a pod object; see readObject.
func readPod(object []byte, p *podView, g *gate) (opted bool, err error) {
	s := scanner{jsonscan.Scanner{Data: object}}
	opted, err = s.readObject(p, g)
	if err == nil {
		err = s.End()
	}
	return opted, err
}

// readObject reads the pod object at the cursor in one pass: metadata
// first, which holds the gate (the opt-in and injected annotations), then
// the spec only if the gate says the pod is the webhook's to patch; other
// pods cost a validating skip and no allocation. opted reports whether the
// pod opted in and is not injected yet; p is filled only then.
//
// It is several times faster than encoding/json on big pods, and it matches
// member names exactly, as the JSON pointers of the patch do: encoding/json
// would also accept "Spec" or "CONTAINERS", and the patch would then miss
// its target.
func (s *scanner) readObject(p *podView, g *gate) (opted bool, err error) {
	if s.Peek() != '{' {
		return false, fmt.Errorf("the pod is not a JSON object")
	}
	var (
		sawMeta             bool
		annotations         []byte // span of metadata.annotations
		name, generateName  []byte
		nameEsc, genEsc     bool
		specSpan            []byte // a spec that came before metadata
		specRead, specFound bool
		owners              []byte // span of metadata.ownerReferences
		hasLabels           bool
	)
	interested := func() bool { return g.optIn == "true" && g.injected != "true" }
	err = s.Object(func(key []byte, esc bool) error {
		switch {
		case jsonscan.EqualsKey(key, esc, "metadata"):
			sawMeta = true
			*g = gate{}
			annotations, name, generateName = nil, nil, nil
			owners, hasLabels = nil, false
			if s.IsNull() {
				return nil
			}
			return s.Object(func(key []byte, esc bool) error {
				var err error
				switch {
				case jsonscan.EqualsKey(key, esc, "name"):
					name, nameEsc, err = s.optRaw()
				case jsonscan.EqualsKey(key, esc, "generateName"):
					generateName, genEsc, err = s.optRaw()
				case jsonscan.EqualsKey(key, esc, "ownerReferences"):
					owners, err = s.Span()
				case jsonscan.EqualsKey(key, esc, "labels"):
					hasLabels = !s.IsNull()
					err = s.Skip()
				case jsonscan.EqualsKey(key, esc, "annotations"):
					if s.IsNull() {
						annotations = nil
						return nil
					}
					s.SkipSpace()
					from := s.Pos
					err = s.Object(func(key []byte, esc bool) error {
						var dst *string
						var has *bool
						switch {
						case jsonscan.EqualsKey(key, esc, AnnotationOptIn):
							dst, has = &g.optIn, &g.hasOptIn
						case jsonscan.EqualsKey(key, esc, AnnotationInjected):
							dst, has = &g.injected, &g.hasInjected
						default:
							return s.Skip()
						}
						if s.IsNull() {
							*dst, *has = "", false
							return nil
						}
						*has = true
						return s.optText(dst)
					})
					annotations = s.Data[from:s.Pos]
				default:
					err = s.Skip()
				}
				return err
			})
		case jsonscan.EqualsKey(key, esc, "spec"):
			specFound = true
			if sawMeta && !interested() {
				specSpan, specRead = nil, false
				return s.Skip()
			}
			if !sawMeta {
				// Rare (the API server writes metadata first): keep the
				// span and read it once the gate is known.
				v, err := s.Span()
				specSpan, specRead = v, false
				return err
			}
			p.Spec = podSpecView{}
			specRead = true
			return s.readSpec(&p.Spec)
		}
		return s.Skip()
	})
	if err != nil {
		return interested(), err
	}
	if !interested() {
		return false, nil
	}
	if specFound && !specRead && specSpan != nil {
		p.Spec = podSpecView{}
		sub := scanner{jsonscan.Scanner{Data: specSpan}}
		if err := sub.readSpec(&p.Spec); err != nil {
			return true, err
		}
	}
	if name != nil {
		p.Metadata.Name = jsonscan.Unquote(name, nameEsc)
	}
	if generateName != nil {
		p.Metadata.GenerateName = jsonscan.Unquote(generateName, genEsc)
	}
	p.Metadata.HasLabels = hasLabels
	if owners != nil {
		if err := readController(owners, &p.Metadata.Controller); err != nil {
			return true, err
		}
	}
	if annotations != nil {
		m := make(map[string]string, 8)
		p.Metadata.Annotations = m
		sub := scanner{jsonscan.Scanner{Data: annotations}}
		if err := sub.Object(func(key []byte, esc bool) error {
			var v string
			if err := sub.optText(&v); err != nil {
				return err
			}
			m[jsonscan.Unquote(key, esc)] = v
			return nil
		}); err != nil {
			return true, err
		}
	}
	return true, nil
}

func (s *scanner) readSpec(spec *podSpecView) error {
	if s.IsNull() {
		return nil
	}
	return s.Object(func(key []byte, esc bool) error {
		switch {
		case jsonscan.EqualsKey(key, esc, "containers"):
			return s.containers(&spec.Containers)
		case jsonscan.EqualsKey(key, esc, "initContainers"):
			return s.containers(&spec.InitContainers)
		case jsonscan.EqualsKey(key, esc, "hostNetwork"):
			v, err := s.Boolean()
			spec.HostNetwork = v
			return err
		case jsonscan.EqualsKey(key, esc, "terminationGracePeriodSeconds"):
			if s.IsNull() {
				spec.TerminationGracePeriodSeconds = nil
				return nil
			}
			n, err := s.integer(64)
			spec.TerminationGracePeriodSeconds = &n
			return err
		}
		return s.Skip()
	})
}

// optRaw reads a string or null and returns its raw token (nil for null).
func (s *scanner) optRaw() ([]byte, bool, error) {
	if s.IsNull() {
		return nil, false, nil
	}
	return s.Str()
}

func (s *scanner) containers(dst *[]containerView) error {
	*dst = nil
	if s.IsNull() {
		return nil
	}
	*dst = []containerView{}
	return s.Array("an array of containers", func() error {
		var c containerView
		// A null element decodes as an empty container, as in encoding/json.
		if !s.IsNull() {
			if err := s.Object(func(key []byte, esc bool) error {
				switch {
				case jsonscan.EqualsKey(key, esc, "name"):
					return s.optText(&c.Name)
				case jsonscan.EqualsKey(key, esc, "ports"):
					return s.ports(&c)
				}
				return s.Skip()
			}); err != nil {
				return err
			}
		}
		*dst = append(*dst, c)
		return nil
	})
}

func (s *scanner) ports(c *containerView) error {
	c.Ports = nil
	if s.IsNull() {
		return nil
	}
	return s.Array("an array of ports", func() error {
		var port portView
		if !s.IsNull() {
			if err := s.Object(func(key []byte, esc bool) error {
				var err error
				switch {
				case jsonscan.EqualsKey(key, esc, "name"):
					return s.optText(&port.Name)
				case jsonscan.EqualsKey(key, esc, "containerPort"):
					var n int64
					n, err = s.integer(32)
					port.ContainerPort = int32(n)
				case jsonscan.EqualsKey(key, esc, "hostPort"):
					var n int64
					n, err = s.integer(32)
					port.HostPort = int32(n)
				default:
					return s.Skip()
				}
				return err
			}); err != nil {
				return err
			}
		}
		c.Ports = append(c.Ports, port)
		return nil
	})
}

// integer reads a JSON number that must be an integer of the given size.
func (s *scanner) integer(bits int) (int64, error) {
	if s.IsNull() {
		return 0, nil
	}
	start := s.Pos
	if err := s.Number(); err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(string(s.Data[start:s.Pos]), 10, bits)
	if err != nil {
		return 0, fmt.Errorf("%s is not an integer of %d bits", s.Data[start:s.Pos], bits)
	}
	return n, nil
}
