package app

import (
	"errors"
	"math/big"
	"strconv"
	"strings"
)

// canonicalQuantity parses a Kubernetes resource quantity and answers the
// string the API server would store for it: exactly what
// k8s.io/apimachinery's resource.ParseQuantity(s).String() answers, and its
// sign. It exists so that the webhook does not link apimachinery (and the
// CBOR and JSON libraries it brings) for four flags: that was 0.6 MB of
// binary and as much resident memory in every webhook and every sidecar,
// which run the same binary. TestCanonicalQuantity compares the two on
// thousands of inputs.
func canonicalQuantity(str string) (string, int, error) {
	if str == "" {
		return "", 0, errQuantity
	}
	if str == "0" {
		return "0", 0, nil
	}
	positive, value, num, denom, suf, err := splitQuantity(str)
	if err != nil {
		return "", 0, err
	}
	base, exponent, format, ok := interpretSuffix(suf)
	if !ok {
		return "", 0, errQuantity
	}

	// The int64 fast path of ParseQuantity, which keeps the input as the
	// canonical form when it already is one.
	precision, scale := int32(0), int32(0)
	mantissa := int64(1)
	switch format {
	case decimalExponent, decimalSI:
		scale = exponent
		precision = 18 - int32(len(num)+len(denom))
	case binarySI:
		if exponent >= 0 && len(denom) == 0 {
			mantissa = mantissa << uint64(exponent)
			precision = 15 - int32(len(num)) - int32(float32(exponent)*3/10) - 1
		} else {
			precision = -1
		}
	}
	if precision >= 0 {
		scale -= int32(len(denom))
		if scale >= -9 {
			shifted := num + denom
			v, err := strconv.ParseInt(shifted, 10, 64)
			if err != nil {
				return "", 0, errQuantity
			}
			if result, ok := multiply(v, mantissa); ok {
				if !positive {
					result = -result
				}
				sign := signOf(result)
				switch format {
				case binarySI:
					if exponent%10 == 0 && v&0x07 != 0 {
						return str, sign, nil
					}
				default:
					if scale%3 == 0 && !strings.HasSuffix(shifted, "000") && shifted[0] != '0' {
						return str, sign, nil
					}
				}
				return canonical(big.NewInt(result), scale, format), sign, nil
			}
		}
	}

	// The exact path: value * base^exponent, rounded up to the nano.
	digits := strings.Replace(strings.TrimLeft(value, "+-"), ".", "", 1)
	if digits == "" {
		return "", 0, errQuantity
	}
	n, ok := new(big.Int).SetString(digits, 10)
	if !ok {
		return "", 0, errQuantity
	}
	exp10 := int64(0)
	if dot := strings.IndexByte(value, '.'); dot >= 0 {
		exp10 = -int64(len(value) - dot - 1)
	}
	if base == 10 {
		exp10 += int64(exponent)
	} else {
		n.Lsh(n, uint(exponent))
	}
	if n.Sign() != 0 && exp10 < -9 {
		// Round up (away from zero) to 9 decimals.
		div := new(big.Int).Exp(big.NewInt(10), big.NewInt(-9-exp10), nil)
		q, r := new(big.Int).QuoRem(n, div, new(big.Int))
		if r.Sign() != 0 {
			q.Add(q, big.NewInt(1))
		}
		n, exp10 = q, -9
	}
	if format == binarySI {
		maxAllowed := big.NewInt(1<<63 - 1)
		if cmpScaled(n, exp10, maxAllowed, 0) > 0 {
			n, exp10 = maxAllowed, 0
		}
		if n.Sign() > 0 && cmpScaled(n, exp10, big.NewInt(1), 0) < 0 {
			format = decimalSI
		}
	}
	if !positive {
		n.Neg(n)
	}
	return canonical(n, int32(exp10), format), n.Sign(), nil
}

var errQuantity = errors.New("not a Kubernetes quantity")

type quantityFormat int

const (
	decimalExponent quantityFormat = iota
	binarySI
	decimalSI
)

// splitQuantity is resource.parseQuantityString.
func splitQuantity(str string) (positive bool, value, num, denom, suffix string, err error) {
	positive = true
	pos, end := 0, len(str)
	if pos < end {
		switch str[0] {
		case '-':
			positive = false
			pos++
		case '+':
			pos++
		}
	}
	for i := pos; ; i++ {
		if i >= end {
			return positive, "0", "0", "", "", nil
		}
		if str[i] != '0' {
			break
		}
		pos++
	}
	isDigit := func(c byte) bool { return c >= '0' && c <= '9' }
	i := pos
	for i < end && isDigit(str[i]) {
		i++
	}
	if i >= end {
		return positive, str, str[pos:], "", "", nil
	}
	num, pos = str[pos:i], i
	if num == "" {
		num = "0"
	}
	if pos < end && str[pos] == '.' {
		pos++
		i = pos
		for i < end && isDigit(str[i]) {
			i++
		}
		if i >= end {
			return positive, str, num, str[pos:], "", nil
		}
		denom, pos = str[pos:i], i
	}
	value = str[:pos]
	start := pos
	for i = pos; ; i++ {
		if i >= end {
			return positive, value, num, denom, str[start:], nil
		}
		if !strings.ContainsRune("eEinumkKMGTP", rune(str[i])) {
			pos = i
			break
		}
	}
	if pos < end && (str[pos] == '-' || str[pos] == '+') {
		pos++
	}
	for i = pos; i < end; i++ {
		if !isDigit(str[i]) {
			return false, "", "", "", "", errQuantity
		}
	}
	return positive, value, num, denom, str[start:], nil
}

var decimalSuffixes = map[string]int32{"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

var binarySuffixes = map[string]int32{"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}

// interpretSuffix is the suffixer's interpret.
func interpretSuffix(s string) (base, exponent int32, f quantityFormat, ok bool) {
	if e, ok := decimalSuffixes[s]; ok {
		return 10, e, decimalSI, true
	}
	if e, ok := binarySuffixes[s]; ok {
		return 2, e, binarySI, true
	}
	if len(s) > 1 && (s[0] == 'E' || s[0] == 'e') {
		parsed, err := strconv.ParseInt(s[1:], 10, 64)
		if err != nil {
			return 0, 0, decimalExponent, false
		}
		return 10, int32(parsed), decimalExponent, true
	}
	return 0, 0, decimalExponent, false
}

func multiply(a, b int64) (int64, bool) {
	if a == 0 || b == 0 || a == 1 || b == 1 {
		return a * b, true
	}
	if a == -1<<63 || b == -1<<63 {
		return 0, false
	}
	c := a * b
	return c, c/b == a
}

func signOf(v int64) int {
	switch {
	case v < 0:
		return -1
	case v > 0:
		return 1
	}
	return 0
}

// cmpScaled compares a*10^ea with b*10^eb.
func cmpScaled(a *big.Int, ea int64, b *big.Int, eb int64) int {
	x, y := new(big.Int).Set(a), new(big.Int).Set(b)
	if ea > eb {
		x.Mul(x, new(big.Int).Exp(big.NewInt(10), big.NewInt(ea-eb), nil))
	} else if eb > ea {
		y.Mul(y, new(big.Int).Exp(big.NewInt(10), big.NewInt(eb-ea), nil))
	}
	return x.Cmp(y)
}

// canonical is Quantity.CanonicalizeBytes for the value n*10^exp10.
func canonical(n *big.Int, exp10 int32, f quantityFormat) string {
	if n.Sign() == 0 {
		return "0"
	}
	if f == binarySI {
		lo, hi := big.NewInt(-1024), big.NewInt(1024)
		if cmpScaled(n, int64(exp10), lo, 0) > 0 && cmpScaled(n, int64(exp10), hi, 0) < 0 {
			f = decimalSI
		} else if exp10 < 0 {
			// An integer only if the fraction is zero.
			div := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(-exp10)), nil)
			q, r := new(big.Int).QuoRem(n, div, new(big.Int))
			if r.Sign() != 0 {
				f = decimalSI
			} else {
				n, exp10 = q, 0
			}
		}
	}
	if f == binarySI {
		v := new(big.Int).Set(n)
		if exp10 > 0 {
			v.Mul(v, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(exp10)), nil))
		}
		times := int32(0)
		neg := v.Sign() < 0
		v.Abs(v)
		k := big.NewInt(1024)
		for v.Cmp(k) >= 0 {
			q, r := new(big.Int).QuoRem(v, k, new(big.Int))
			if r.Sign() != 0 {
				break
			}
			v = q
			times++
		}
		if neg {
			v.Neg(v)
		}
		suffix := ""
		for s, e := range binarySuffixes {
			if e == times*10 {
				suffix = s
			}
		}
		return v.String() + suffix
	}
	v := new(big.Int).Set(n)
	neg := v.Sign() < 0
	v.Abs(v)
	ten := big.NewInt(10)
	for v.Cmp(ten) >= 0 {
		q, r := new(big.Int).QuoRem(v, ten, new(big.Int))
		if r.Sign() != 0 {
			break
		}
		v = q
		exp10++
	}
	for exp10%3 != 0 {
		v.Mul(v, ten)
		exp10--
	}
	if neg {
		v.Neg(v)
	}
	switch f {
	case decimalExponent:
		if exp10 == 0 {
			return v.String()
		}
		return v.String() + "e" + strconv.FormatInt(int64(exp10), 10)
	default:
		for s, e := range decimalSuffixes {
			if e == exp10 {
				return v.String() + s
			}
		}
		// resource.Quantity writes no suffix for an exponent outside the
		// SI table (e.g. 1000E); so does this.
		return v.String()
	}
}
