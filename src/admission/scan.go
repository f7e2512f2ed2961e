package admission

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// scanner reads just enough of a JSON document to answer the fast path. It
// validates the syntax of everything it passes over, values it skips
// included, so that malformed input is refused as encoding/json would refuse
// it, but it builds nothing: skipping a 64 KiB pod costs a pass over its
// bytes and no allocation.
type scanner struct {
	data []byte
	pos  int
}

// maxDepth matches encoding/json's nesting limit, so that both decoders
// agree on what is too deep.
const maxDepth = 10000

var errSyntax = errors.New("invalid JSON")

func (s *scanner) fail(what string) error {
	if s.pos >= len(s.data) {
		return fmt.Errorf("%w: unexpected end of input, expected %s", errSyntax, what)
	}
	return fmt.Errorf("%w: unexpected character %q at offset %d, expected %s", errSyntax, s.data[s.pos], s.pos, what)
}

func (s *scanner) skipSpace() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, 0 at the end.
func (s *scanner) peek() byte {
	s.skipSpace()
	if s.pos < len(s.data) {
		return s.data[s.pos]
	}
	return 0
}

func (s *scanner) consume(c byte, what string) error {
	if s.peek() != c {
		return s.fail(what)
	}
	s.pos++
	return nil
}

// plainString marks the bytes a string can hold without a closer look.
var plainString = func() (t [256]bool) {
	for i := 0x20; i < 256; i++ {
		t[i] = i != '"' && i != '\\'
	}
	return t
}()

// str reads a string at the cursor and returns its raw bytes (quotes
// included, escapes untouched) and whether it has escapes.
func (s *scanner) str() (raw []byte, escaped bool, err error) {
	if s.peek() != '"' {
		return nil, false, s.fail("a string")
	}
	start := s.pos
	i := s.pos + 1
	data := s.data
	for {
		// Eight bytes at a time while none of them ends the string, starts
		// an escape or is a control character: most of a pod is string
		// content.
		for i+8 <= len(data) {
			w := binary.LittleEndian.Uint64(data[i:])
			if hasZero(w^quotes)|hasZero(w^backslashes)|hasLess(w, 0x20) != 0 {
				break
			}
			i += 8
		}
		for i < len(data) && plainString[data[i]] {
			i++
		}
		if i >= len(data) {
			s.pos = i
			return nil, false, s.fail("the end of a string")
		}
		switch c := data[i]; {
		case c == '"':
			s.pos = i + 1
			return data[start:s.pos], escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(data) {
				s.pos = i + 1
				return nil, false, s.fail("an escape sequence")
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) || !isHex(data[i+2]) || !isHex(data[i+3]) || !isHex(data[i+4]) || !isHex(data[i+5]) {
					s.pos = i + 1
					return nil, false, s.fail("four hex digits after \\u")
				}
				i += 6
			default:
				s.pos = i + 1
				return nil, false, s.fail("an escape sequence")
			}
		default:
			s.pos = i
			return nil, false, s.fail("no control character in a string")
		}
	}
}

const (
	ones        = 0x0101010101010101
	highs       = 0x8080808080808080
	quotes      = '"' * ones
	backslashes = '\\' * ones
)

// hasZero is non-zero when a byte of w is zero.
func hasZero(w uint64) uint64 { return (w - ones) & ^w & highs }

// hasLess is non-zero when a byte of w is below n (n <= 128).
func hasLess(w uint64, n uint64) uint64 { return (w - ones*n) & ^w & highs }

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// text reads a string and returns its value. Strings without escapes (all
// that the API server writes for the fields read here) cost no decoding.
func (s *scanner) text() (string, error) {
	raw, escaped, err := s.str()
	if err != nil {
		return "", err
	}
	return unquote(raw, escaped), nil
}

// unquote turns a raw string token into its value. Invalid UTF-8 becomes
// U+FFFD, as encoding/json does.
func unquote(raw []byte, escaped bool) string {
	inner := raw[1 : len(raw)-1]
	if !escaped && utf8.Valid(inner) {
		return string(inner)
	}
	var v string
	if err := json.Unmarshal(raw, &v); err != nil {
		// The scanner accepted the token, so this cannot happen; an empty
		// value is the safe answer if it ever does.
		return ""
	}
	return v
}

// equalsKey reports whether a raw string token equals want (want has no
// characters that need escaping).
func equalsKey(raw []byte, escaped bool, want string) bool {
	if !escaped {
		return len(raw) == len(want)+2 && string(raw[1:len(raw)-1]) == want
	}
	return unquote(raw, true) == want
}

// object calls field for each member of the object at the cursor, with the
// cursor on the member's value; field must consume the value (skip does).
func (s *scanner) object(field func(key []byte, escaped bool) error) error {
	if err := s.consume('{', "an object"); err != nil {
		return err
	}
	if s.peek() == '}' {
		s.pos++
		return nil
	}
	for {
		key, escaped, err := s.str()
		if err != nil {
			return err
		}
		if err := s.consume(':', "':' after an object key"); err != nil {
			return err
		}
		if err := field(key, escaped); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return nil
		default:
			return s.fail("',' or '}' in an object")
		}
	}
}

// span skips the value at the cursor and returns its bytes.
func (s *scanner) span() ([]byte, error) {
	s.skipSpace()
	start := s.pos
	if err := s.skip(); err != nil {
		return nil, err
	}
	return s.data[start:s.pos], nil
}

// skip passes over one value of any kind, validating it. Containers are
// tracked on an explicit stack so that deep nesting cannot exhaust the
// goroutine stack.
func (s *scanner) skip() error {
	var small [64]byte
	stack := small[:0] // '{' or '[' per open container
	for {
		// A value.
		switch c := s.peek(); c {
		case '{', '[':
			if len(stack) >= maxDepth {
				return fmt.Errorf("%w: nested deeper than %d levels", errSyntax, maxDepth)
			}
			s.pos++
			closer := byte('}')
			if c == '[' {
				closer = ']'
			}
			if s.peek() == closer {
				s.pos++
				break
			}
			stack = append(stack, c)
			if c == '{' {
				if err := s.memberKey(); err != nil {
					return err
				}
			}
			continue
		case '"':
			if _, _, err := s.str(); err != nil {
				return err
			}
		case 't':
			if err := s.literal("true"); err != nil {
				return err
			}
		case 'f':
			if err := s.literal("false"); err != nil {
				return err
			}
		case 'n':
			if err := s.literal("null"); err != nil {
				return err
			}
		default:
			if err := s.number(); err != nil {
				return err
			}
		}
		// After a value: close containers or move to the next element.
		for {
			if len(stack) == 0 {
				return nil
			}
			top := stack[len(stack)-1]
			c := s.peek()
			if c == ',' {
				s.pos++
				if top == '{' {
					if err := s.memberKey(); err != nil {
						return err
					}
				}
				break
			}
			if (top == '{' && c == '}') || (top == '[' && c == ']') {
				s.pos++
				stack = stack[:len(stack)-1]
				continue
			}
			if top == '{' {
				return s.fail("',' or '}' in an object")
			}
			return s.fail("',' or ']' in an array")
		}
	}
}

func (s *scanner) memberKey() error {
	if _, _, err := s.str(); err != nil {
		return err
	}
	return s.consume(':', "':' after an object key")
}

func (s *scanner) literal(word string) error {
	if len(s.data)-s.pos < len(word) || string(s.data[s.pos:s.pos+len(word)]) != word {
		return s.fail(word)
	}
	s.pos += len(word)
	return nil
}

func (s *scanner) number() error {
	d := s.data
	i := s.pos
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		s.pos = i
		return s.fail("a value")
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			s.pos = i
			return s.fail("a digit after '.'")
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			s.pos = i
			return s.fail("a digit in an exponent")
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	s.pos = i
	return nil
}

// end checks that only white space follows the document.
func (s *scanner) end() error {
	if s.peek() != 0 || s.pos < len(s.data) {
		return s.fail("the end of the document")
	}
	return nil
}

// boolean reads true, false or null (false).
func (s *scanner) boolean() (bool, error) {
	switch s.peek() {
	case 't':
		return true, s.literal("true")
	case 'f':
		return false, s.literal("false")
	case 'n':
		return false, s.literal("null")
	}
	return false, s.fail("a boolean")
}

// isNull reports and consumes a null at the cursor.
func (s *scanner) isNull() bool {
	if s.peek() == 'n' && s.literal("null") == nil {
		return true
	}
	return false
}
