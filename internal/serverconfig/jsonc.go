package serverconfig

// stripJSONC turns JSON with comments into plain JSON of the same length:
// "// …" and "/* … */" comments outside strings, and commas that stand
// right before a closing '}' or ']' (trailing commas), become spaces.
// Newlines are kept, so byte offsets and line numbers in the result are
// those of the input. An unterminated block comment is an error at its
// start offset.
func stripJSONC(in []byte) ([]byte, int, bool) {
	out := append([]byte(nil), in...)
	inString := false
	lastComma := -1 // offset of a comma not yet followed by a value
	for i := 0; i < len(out); i++ {
		c := out[i]
		if inString {
			switch c {
			case '\\':
				i++ // skip the escaped character
			case '"':
				inString = false
			}
			continue
		}
		switch {
		case c == '"':
			inString = true
			lastComma = -1
		case c == '/' && i+1 < len(out) && out[i+1] == '/':
			for ; i < len(out) && out[i] != '\n'; i++ {
				out[i] = ' '
			}
		case c == '/' && i+1 < len(out) && out[i+1] == '*':
			start := i
			out[i], out[i+1] = ' ', ' '
			i += 2
			for ; i < len(out) && !(out[i] == '*' && i+1 < len(out) && out[i+1] == '/'); i++ {
				if out[i] != '\n' {
					out[i] = ' '
				}
			}
			if i >= len(out) {
				return nil, start, false
			}
			out[i], out[i+1] = ' ', ' '
			i++
		case c == ',':
			lastComma = i
		case c == '}' || c == ']':
			if lastComma >= 0 {
				out[lastComma] = ' '
			}
			lastComma = -1
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
		default:
			lastComma = -1
		}
	}
	return out, 0, true
}

// lineCol returns the 1-based line and column of byte offset off in b.
func lineCol(b []byte, off int) (line, col int) {
	line, col = 1, 1
	for i := 0; i < off && i < len(b); i++ {
		if b[i] == '\n' {
			line++
			col = 1
		} else {
			col++
		}
	}
	return line, col
}
