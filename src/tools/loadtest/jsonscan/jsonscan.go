// Package jsonscan reads JSON in place: a cursor over a document that
// validates the syntax of everything it passes over, values it skips
// included, so that malformed input is refused as encoding/json would refuse
// it, but builds nothing. The load tool reads the webhook's answers with it:
// the tool shares the cores with the webhook it measures, so its own cost
// per answer is kept small.
package jsonscan

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Scanner is a cursor at Pos in Data. Callers that keep the bytes of a value
// read Pos before and after it.
type Scanner struct {
	Data []byte
	Pos  int
}

// maxDepth matches encoding/json's nesting limit, so that both decoders
// agree on what is too deep.
const maxDepth = 10000

// ErrSyntax is wrapped by every error about malformed input.
var ErrSyntax = errors.New("invalid JSON")

// Fail is the syntax error at the cursor, where what was expected.
func (s *Scanner) Fail(what string) error {
	if s.Pos >= len(s.Data) {
		return fmt.Errorf("%w: unexpected end of input, expected %s", ErrSyntax, what)
	}
	return fmt.Errorf("%w: unexpected character %q at offset %d, expected %s", ErrSyntax, s.Data[s.Pos], s.Pos, what)
}

// SkipSpace moves the cursor past white space.
func (s *Scanner) SkipSpace() {
	for s.Pos < len(s.Data) {
		switch s.Data[s.Pos] {
		case ' ', '\t', '\n', '\r':
			s.Pos++
		default:
			return
		}
	}
}

// Peek returns the next non-space byte, 0 at the end.
func (s *Scanner) Peek() byte {
	s.SkipSpace()
	if s.Pos < len(s.Data) {
		return s.Data[s.Pos]
	}
	return 0
}

// Consume moves past c, the next non-space byte, or fails expecting what.
func (s *Scanner) Consume(c byte, what string) error {
	if s.Peek() != c {
		return s.Fail(what)
	}
	s.Pos++
	return nil
}

// plainString marks the bytes a string can hold without a closer look.
var plainString = func() (t [256]bool) {
	for i := 0x20; i < 256; i++ {
		t[i] = i != '"' && i != '\\'
	}
	return t
}()

// Str reads a string at the cursor and returns its raw bytes (quotes
// included, escapes untouched) and whether it has escapes.
func (s *Scanner) Str() (raw []byte, escaped bool, err error) {
	if s.Peek() != '"' {
		return nil, false, s.Fail("a string")
	}
	start := s.Pos
	i := s.Pos + 1
	data := s.Data
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
			s.Pos = i
			return nil, false, s.Fail("the end of a string")
		}
		switch c := data[i]; {
		case c == '"':
			s.Pos = i + 1
			return data[start:s.Pos], escaped, nil
		case c == '\\':
			escaped = true
			if i+1 >= len(data) {
				s.Pos = i + 1
				return nil, false, s.Fail("an escape sequence")
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(data) || !isHex(data[i+2]) || !isHex(data[i+3]) || !isHex(data[i+4]) || !isHex(data[i+5]) {
					s.Pos = i + 1
					return nil, false, s.Fail("four hex digits after \\u")
				}
				i += 6
			default:
				s.Pos = i + 1
				return nil, false, s.Fail("an escape sequence")
			}
		default:
			s.Pos = i
			return nil, false, s.Fail("no control character in a string")
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

// Text reads a string and returns its value. Strings without escapes (all
// that the API server writes for the fields read here) cost no decoding.
func (s *Scanner) Text() (string, error) {
	raw, escaped, err := s.Str()
	if err != nil {
		return "", err
	}
	return Unquote(raw, escaped), nil
}

// Unquote turns a raw string token into its value. Invalid UTF-8 becomes
// U+FFFD, as encoding/json does.
func Unquote(raw []byte, escaped bool) string {
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

// EqualsKey reports whether a raw string token equals want (want has no
// characters that need escaping).
func EqualsKey(raw []byte, escaped bool, want string) bool {
	if !escaped {
		return len(raw) == len(want)+2 && string(raw[1:len(raw)-1]) == want
	}
	return Unquote(raw, true) == want
}

// Object calls field for each member of the object at the cursor, with the
// cursor on the member's value; field must consume the value (skip does).
func (s *Scanner) Object(field func(key []byte, escaped bool) error) error {
	if err := s.Consume('{', "an object"); err != nil {
		return err
	}
	if s.Peek() == '}' {
		s.Pos++
		return nil
	}
	for {
		key, escaped, err := s.Str()
		if err != nil {
			return err
		}
		if err := s.Consume(':', "':' after an object key"); err != nil {
			return err
		}
		if err := field(key, escaped); err != nil {
			return err
		}
		switch s.Peek() {
		case ',':
			s.Pos++
		case '}':
			s.Pos++
			return nil
		default:
			return s.Fail("',' or '}' in an object")
		}
	}
}

// Array calls elem for each element of the array at the cursor, what
// naming it in errors ("an array of ports"); elem must consume the element.
func (s *Scanner) Array(what string, elem func() error) error {
	if err := s.Consume('[', what); err != nil {
		return err
	}
	if s.Peek() == ']' {
		s.Pos++
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		switch s.Peek() {
		case ',':
			s.Pos++
		case ']':
			s.Pos++
			return nil
		default:
			return s.Fail("',' or ']' in " + what)
		}
	}
}

// Bytes reads a string and returns its value: the input's own bytes when
// it has no escapes, a decoded copy when it has.
func (s *Scanner) Bytes() ([]byte, error) {
	raw, escaped, err := s.Str()
	if err != nil {
		return nil, err
	}
	if escaped {
		return []byte(Unquote(raw, true)), nil
	}
	return raw[1 : len(raw)-1], nil
}

// OptText reads a string, or null as "".
func (s *Scanner) OptText() (string, error) {
	if s.IsNull() {
		return "", nil
	}
	return s.Text()
}

// Span skips the value at the cursor and returns its bytes.
func (s *Scanner) Span() ([]byte, error) {
	s.SkipSpace()
	start := s.Pos
	if err := s.Skip(); err != nil {
		return nil, err
	}
	return s.Data[start:s.Pos], nil
}

// Skip passes over one value of any kind, validating it. Containers are
// tracked on an explicit stack so that deep nesting cannot exhaust the
// goroutine stack.
func (s *Scanner) Skip() error {
	var small [64]byte
	stack := small[:0] // '{' or '[' per open container
	for {
		// A value.
		switch c := s.Peek(); c {
		case '{', '[':
			if len(stack) >= maxDepth {
				return fmt.Errorf("%w: nested deeper than %d levels", ErrSyntax, maxDepth)
			}
			s.Pos++
			closer := byte('}')
			if c == '[' {
				closer = ']'
			}
			if s.Peek() == closer {
				s.Pos++
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
			if _, _, err := s.Str(); err != nil {
				return err
			}
		case 't':
			if err := s.Literal("true"); err != nil {
				return err
			}
		case 'f':
			if err := s.Literal("false"); err != nil {
				return err
			}
		case 'n':
			if err := s.Literal("null"); err != nil {
				return err
			}
		default:
			if err := s.Number(); err != nil {
				return err
			}
		}
		// After a value: close containers or move to the next element.
		for {
			if len(stack) == 0 {
				return nil
			}
			top := stack[len(stack)-1]
			c := s.Peek()
			if c == ',' {
				s.Pos++
				if top == '{' {
					if err := s.memberKey(); err != nil {
						return err
					}
				}
				break
			}
			if (top == '{' && c == '}') || (top == '[' && c == ']') {
				s.Pos++
				stack = stack[:len(stack)-1]
				continue
			}
			if top == '{' {
				return s.Fail("',' or '}' in an object")
			}
			return s.Fail("',' or ']' in an array")
		}
	}
}

func (s *Scanner) memberKey() error {
	if _, _, err := s.Str(); err != nil {
		return err
	}
	return s.Consume(':', "':' after an object key")
}

// Literal moves past word (true, false or null) at the cursor.
func (s *Scanner) Literal(word string) error {
	if len(s.Data)-s.Pos < len(word) || string(s.Data[s.Pos:s.Pos+len(word)]) != word {
		return s.Fail(word)
	}
	s.Pos += len(word)
	return nil
}

// Number moves past a number at the cursor; the caller reads its bytes
// between Pos before and after.
func (s *Scanner) Number() error {
	d := s.Data
	i := s.Pos
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
		s.Pos = i
		return s.Fail("a value")
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			s.Pos = i
			return s.Fail("a digit after '.'")
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
			s.Pos = i
			return s.Fail("a digit in an exponent")
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	s.Pos = i
	return nil
}

// End checks that only white space follows the document.
func (s *Scanner) End() error {
	if s.Peek() != 0 || s.Pos < len(s.Data) {
		return s.Fail("the end of the document")
	}
	return nil
}

// Boolean reads true, false or null (false).
func (s *Scanner) Boolean() (bool, error) {
	switch s.Peek() {
	case 't':
		return true, s.Literal("true")
	case 'f':
		return false, s.Literal("false")
	case 'n':
		return false, s.Literal("null")
	}
	return false, s.Fail("a boolean")
}

// IsNull reports and consumes a null at the cursor.
func (s *Scanner) IsNull() bool {
	if s.Peek() == 'n' && s.Literal("null") == nil {
		return true
	}
	return false
}
