package admission

import (
	"strconv"
	"unicode/utf8"
)

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD so
// that a value copied from a pod can never make the answer invalid JSON.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				const hex = "0123456789abcdef"
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendPointerString appends the JSON string of a JSON pointer made of
// prefix and one reference token escaped per RFC 6901 ("~" as "~0", "/" as
// "~1").
func appendPointerString(b []byte, prefix, token string) []byte {
	esc := make([]byte, 0, len(prefix)+len(token)+4)
	esc = append(esc, prefix...)
	for i := 0; i < len(token); i++ {
		switch token[i] {
		case '~':
			esc = append(esc, '~', '0')
		case '/':
			esc = append(esc, '~', '1')
		default:
			esc = append(esc, token[i])
		}
	}
	return appendString(b, string(esc))
}

func appendInt(b []byte, n int64) []byte { return strconv.AppendInt(b, n, 10) }
