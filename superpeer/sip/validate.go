package sip

import (
	"bytes"
	"strconv"
	"strings"
)

// The checks here run on a message's bytes before the parser sees them,
// because sipgo's parser accepts many messages that RFC 4475 says an element
// must refuse, and silently drops others that deserve an answer. They refuse
// with the response RFC 4475 names and never repair anything: a message is
// passed on byte for byte or not at all. One pass over the header section,
// no allocation on the success path.

// Kind of a checked message.
type msgKind int

const (
	kindGarbage  msgKind = iota // not SIP: drop
	kindRequest                 // a request
	kindResponse                // a response
)

// verdict is the outcome of checkMessage. code 0 means the message may go
// on; otherwise requests get a response with code and reason, responses
// and garbage are dropped.
type verdict struct {
	kind   msgKind
	code   int
	reason string
	// size is the length of the whole message (header section and body as
	// Content-Length says) within the input.
	size int
	// method is the request's method.
	method string
	// copy are the header lines that a locally made response copies
	// (Via, From, To, Call-ID, CSeq: RFC 3261 section 8.2.6.2), as slices
	// of the input; only kept when code != 0.
	copy [][]byte
}

// Maximum values of scalar header fields (RFC 3261 sections 8.1.1.5,
// 20.22 and 20.14).
const (
	maxCSeq        = 1<<31 - 1
	maxMaxForwards = 255
	// A Content-Length of more digits than this cannot fit any message we
	// accept; refusing it early avoids overflow.
	maxLengthDigits = 9
)

// header names we count, by canonical lower-case name.
const (
	hCallID = iota
	hCSeq
	hFrom
	hTo
	hMaxForwards
	hContentLength
	hContentType
	hVia
	hContact
	hOther
	nHeaders
)

// headerID maps a header name, full or compact (RFC 3261 section 7.3.3),
// to the ids above.
func headerID(name []byte) int {
	if len(name) == 1 {
		switch name[0] | 0x20 {
		case 'i':
			return hCallID
		case 'f':
			return hFrom
		case 't':
			return hTo
		case 'l':
			return hContentLength
		case 'c':
			return hContentType
		case 'v':
			return hVia
		case 'm':
			return hContact
		}
		return hOther
	}
	switch {
	case eqFold(name, "call-id"):
		return hCallID
	case eqFold(name, "cseq"):
		return hCSeq
	case eqFold(name, "from"):
		return hFrom
	case eqFold(name, "to"):
		return hTo
	case eqFold(name, "max-forwards"):
		return hMaxForwards
	case eqFold(name, "content-length"):
		return hContentLength
	case eqFold(name, "content-type"):
		return hContentType
	case eqFold(name, "via"):
		return hVia
	case eqFold(name, "contact"):
		return hContact
	}
	return hOther
}

func eqFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// isTokenChar reports whether c may appear in a token (RFC 3261 section 25.1).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("-.!%*_+`'~", c) >= 0
}

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !isTokenChar(c) {
			return false
		}
	}
	return true
}

func isDigits(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func trimLWS(b []byte) []byte { return bytes.Trim(b, " \t\r\n") }

// nextLine returns the line at the start of b without its CRLF, and the
// length including the CRLF. ok is false when b has no line end yet; bare
// is true for a line ended by a bare LF (the parser would not see a line
// end there, so such a message is refused rather than read two ways).
func nextLine(b []byte) (line []byte, n int, ok, bare bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, 0, false, false
	}
	line = b[:i]
	if len(line) == 0 || line[len(line)-1] != '\r' {
		return line, i + 1, true, true
	}
	return line[:len(line)-1], i + 1, true, false
}

// checkMessage validates one message. datagram says the input is exactly
// one UDP datagram (its end is the message's end); otherwise b starts with
// a message on a stream and may hold more (or less: then size is 0 and
// code is 0 and the caller waits for more bytes, see frameStream).
func checkMessage(b []byte, datagram bool) verdict {
	var v verdict
	start, n, ok, bare := nextLine(b)
	if !ok || bare {
		return verdict{kind: kindGarbage, code: 400, reason: "No Line End"}
	}
	// Start line.
	if bytes.HasPrefix(start, []byte("SIP/")) {
		v.kind = kindResponse
		if !validStatusLine(start) {
			v.code, v.reason = 400, "Bad Status Line"
		}
	} else {
		v.kind = kindRequest
		v.method, v.code, v.reason = checkRequestLine(start)
	}
	var (
		counts   [nHeaders]int
		clen     = -1
		cseqMeth []byte
		off      = n
		lastID   = -1
		valOff   int // offsets of the current header's value
		valEnd   int
		lastCopy = -1      // copyIdx entry of the current header, if copied
		copyIdx  [8][2]int // start,end offsets of lines to copy
		nCopy    int
		bodyOff  = -1
		badValue string
	)
	finishHeader := func() {
		if lastID < 0 || badValue != "" {
			return
		}
		lastVal := b[valOff:valEnd]
		if msg := checkHeaderValue(lastID, lastVal, v.kind == kindRequest); msg != "" {
			badValue = msg
			return
		}
		switch lastID {
		case hContentLength:
			val := trimLWS(lastVal)
			if !isDigits(val) || len(val) > maxLengthDigits {
				badValue = "Bad Content-Length"
				return
			}
			l, _ := strconv.Atoi(string(val))
			clen = l
		case hCSeq:
			cseqMeth = cseqMethod(lastVal)
		}
	}
	for {
		line, ln, ok, bare := nextLine(b[off:])
		if !ok {
			if datagram {
				return refuse(v, 400, "Truncated Header")
			}
			return verdict{kind: v.kind} // wait for more bytes
		}
		if bare {
			return refuse(v, 400, "Bare LF")
		}
		lineStart := off
		off += ln
		if len(line) == 0 {
			finishHeader()
			bodyOff = off
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if lastID < 0 {
				return refuse(v, 400, "Bad Header Folding")
			}
			// A folded line continues the value: widen it to this line.
			valEnd = lineStart + len(line)
			if lastCopy >= 0 {
				copyIdx[lastCopy][1] = valEnd
			}
			continue
		}
		finishHeader()
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return refuse(v, 400, "Bad Header Line")
		}
		name := bytes.TrimRight(line[:colon], " \t")
		if !isToken(name) {
			return refuse(v, 400, "Bad Header Name")
		}
		id := headerID(name)
		counts[id]++
		lastID = id
		valOff, valEnd = lineStart+colon+1, lineStart+len(line)
		lastCopy = -1
		switch id {
		case hVia, hFrom, hTo, hCallID, hCSeq:
			if nCopy < len(copyIdx) {
				copyIdx[nCopy] = [2]int{lineStart, lineStart + len(line)}
				lastCopy = nCopy
				nCopy++
			}
		}
	}
	// A refusal needs the lines a local response copies.
	keep := func(v verdict) verdict {
		if v.kind == kindRequest && v.code != 0 {
			for i := range nCopy {
				v.copy = append(v.copy, b[copyIdx[i][0]:copyIdx[i][1]])
			}
		}
		return v
	}
	if v.code != 0 {
		return keep(finishSize(v, b, bodyOff, clen, datagram))
	}
	if badValue != "" {
		return keep(finishSize(refuse(v, 400, badValue), b, bodyOff, clen, datagram))
	}
	// Required header fields (RFC 3261 section 8.1.1), once each.
	switch {
	case counts[hVia] == 0:
		v.code, v.reason = 400, "Missing Via"
	case counts[hCallID] != 1, counts[hCSeq] != 1, counts[hFrom] != 1, counts[hTo] != 1:
		if counts[hCallID] == 0 || counts[hCSeq] == 0 || counts[hFrom] == 0 || counts[hTo] == 0 {
			v.code, v.reason = 400, "Missing Required Header"
		} else {
			v.code, v.reason = 400, "Duplicate Header"
		}
	case v.kind == kindRequest && counts[hMaxForwards] == 0:
		v.code, v.reason = 400, "Missing Max-Forwards"
	case counts[hMaxForwards] > 1, counts[hContentLength] > 1, counts[hContentType] > 1:
		v.code, v.reason = 400, "Duplicate Header"
	case !datagram && counts[hContentLength] == 0:
		// RFC 3261 section 18.3: a stream cannot be framed without it.
		v.code, v.reason = 400, "Missing Content-Length"
	case v.kind == kindRequest && string(cseqMeth) != v.method:
		v.code, v.reason = 400, "CSeq Method Mismatch"
	}
	return keep(finishSize(v, b, bodyOff, clen, datagram))
}

func refuse(v verdict, code int, reason string) verdict {
	if v.code == 0 {
		v.code, v.reason = code, reason
	}
	return v
}

// finishSize sets the message size from Content-Length and refuses a
// datagram whose body is shorter than Content-Length says (RFC 3261
// section 18.3; RFC 4475 section 3.1.2.2).
func finishSize(v verdict, b []byte, bodyOff, clen int, datagram bool) verdict {
	if bodyOff < 0 {
		return v
	}
	if datagram {
		v.size = len(b)
		if clen >= 0 {
			if bodyOff+clen > len(b) {
				return refuse(v, 400, "Content-Length Larger Than Message")
			}
			v.size = bodyOff + clen
		}
		return v
	}
	if clen < 0 {
		// No usable Content-Length on a stream: the message cannot be
		// framed (the verdict, 400, says why), and size 0 closes the stream.
		return refuse(v, 400, "Missing Content-Length")
	}
	if bodyOff+clen <= len(b) {
		v.size = bodyOff + clen
	}
	return v
}

// checkRequestLine validates "Method SP Request-URI SP SIP-Version": one
// space each, a token method, a URI with a scheme and no whitespace or
// angle brackets, SIP/2.0 (RFC 3261 section 25.1; RFC 4475 sections
// 3.1.2.7 to 3.1.2.11, 3.1.2.16, 3.3.2 and 3.3.3).
func checkRequestLine(line []byte) (method string, code int, reason string) {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return "", 400, "Bad Request Line"
	}
	if !isToken(line[:sp1]) {
		return "", 400, "Bad Method"
	}
	method = string(line[:sp1])
	rest := line[sp1+1:]
	sp2 := bytes.LastIndexByte(rest, ' ')
	if sp2 <= 0 {
		return method, 400, "Bad Request Line"
	}
	uri, version := rest[:sp2], rest[sp2+1:]
	if len(version) == 0 || bytes.ContainsAny(uri, " \t") {
		return method, 400, "Bad Request Line"
	}
	if !bytes.Equal(version, []byte("SIP/2.0")) {
		if v, ok := bytes.CutPrefix(version, []byte("SIP/")); ok && isVersionNumber(v) {
			return method, 505, "Version Not Supported"
		}
		return method, 400, "Bad SIP Version"
	}
	colon := bytes.IndexByte(uri, ':')
	if colon <= 0 || !isScheme(uri[:colon]) {
		return method, 400, "Bad Request-URI"
	}
	scheme := uri[:colon]
	if !eqFold(scheme, "sip") && !eqFold(scheme, "sips") {
		return method, 416, "Unsupported URI Scheme"
	}
	if bytes.ContainsAny(uri, "<>\"?") {
		// Headers in a Request-URI are not allowed (RFC 3261 section
		// 19.1.5; RFC 4475 section 3.1.2.11).
		return method, 400, "Bad Request-URI"
	}
	if len(uri) == colon+1 {
		return method, 400, "Bad Request-URI"
	}
	return method, 0, ""
}

func isVersionNumber(b []byte) bool {
	dot := bytes.IndexByte(b, '.')
	return dot > 0 && isDigits(b[:dot]) && isDigits(b[dot+1:])
}

func isScheme(b []byte) bool {
	if len(b) == 0 || !('a' <= b[0]|0x20 && b[0]|0x20 <= 'z') {
		return false
	}
	for _, c := range b[1:] {
		if !(isTokenChar(c) && c != '!' && c != '%' && c != '*' && c != '_' && c != '`' && c != '\'' && c != '~') {
			return false
		}
	}
	return true
}

// validStatusLine checks "SIP/2.0 SP 3DIGIT SP Reason" with a code in
// 100..699 (RFC 4475 sections 3.1.2.19 and 3.1.2.5 say to drop others).
func validStatusLine(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, []byte("SIP/2.0 "))
	if !ok || len(rest) < 4 || rest[3] != ' ' || !isDigits(rest[:3]) {
		return false
	}
	return rest[0] >= '1' && rest[0] <= '6'
}

func cseqMethod(val []byte) []byte {
	val = trimLWS(val)
	i := bytes.IndexAny(val, " \t")
	if i < 0 {
		return nil
	}
	return trimLWS(val[i:])
}

// checkHeaderValue validates the values the proxy relies on; it returns a
// reason phrase for 400, or "".
func checkHeaderValue(id int, val []byte, request bool) string {
	val = trimLWS(val)
	switch id {
	case hCSeq:
		i := bytes.IndexAny(val, " \t")
		if i <= 0 {
			return "Bad CSeq"
		}
		num := val[:i]
		if !isDigits(num) || len(num) > 10 {
			return "Bad CSeq"
		}
		if n, err := strconv.ParseUint(string(num), 10, 64); err != nil || n > maxCSeq {
			return "CSeq Out Of Range"
		}
		if !isToken(trimLWS(val[i:])) {
			return "Bad CSeq"
		}
	case hMaxForwards:
		if !isDigits(val) || len(val) > 3 {
			return "Bad Max-Forwards"
		}
		if n, _ := strconv.Atoi(string(val)); n > maxMaxForwards {
			return "Max-Forwards Out Of Range"
		}
	case hCallID:
		if len(val) == 0 || bytes.ContainsAny(val, " \t") {
			return "Bad Call-ID"
		}
	case hFrom, hTo:
		if msg := checkAddress(val, false); msg != "" {
			return msg
		}
	case hContact:
		if len(val) == 1 && val[0] == '*' {
			return ""
		}
		for part := range splitList(val) {
			if msg := checkAddress(part, true); msg != "" {
				return msg
			}
		}
	case hVia:
		for part := range splitList(val) {
			if msg := checkVia(part); msg != "" {
				return msg
			}
		}
	}
	return ""
}

// splitList yields the comma-separated elements of a header value, not
// splitting inside quotes or angle brackets.
func splitList(val []byte) func(func([]byte) bool) {
	return func(yield func([]byte) bool) {
		inQuote, inAngle, esc := false, false, false
		start := 0
		for i, c := range val {
			switch {
			case esc:
				esc = false
			case inQuote && c == '\\':
				esc = true
			case c == '"':
				inQuote = !inQuote
			case !inQuote && c == '<':
				inAngle = true
			case !inQuote && c == '>':
				inAngle = false
			case !inQuote && !inAngle && c == ',':
				if !yield(trimLWS(val[start:i])) {
					return
				}
				start = i + 1
			}
		}
		yield(trimLWS(val[start:]))
	}
}

// checkAddress validates a name-addr or addr-spec with parameters (RFC
// 3261 section 20.10): balanced quotes, a display name that is a quoted
// string or tokens, no whitespace inside <>, and an addr-spec without <>
// must not carry a header part, a comma or a question mark (RFC 4475
// sections 3.1.2.6, 3.1.2.13 to 3.1.2.15).
func checkAddress(val []byte, contact bool) string {
	if len(val) == 0 {
		return "Empty Address"
	}
	lt := -1
	inQuote, esc := false, false
	for i, c := range val {
		switch {
		case esc:
			esc = false
		case inQuote && c == '\\':
			esc = true
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '<' && lt < 0:
			lt = i
		}
	}
	if inQuote {
		return "Unterminated Quoted String"
	}
	if lt < 0 {
		// addr-spec form: the URI runs to the first ';'.
		uri := val
		if i := bytes.IndexByte(val, ';'); i >= 0 {
			uri = val[:i]
			if msg := checkParams(val[i:]); msg != "" {
				return msg
			}
		}
		if bytes.ContainsAny(uri, " \t?,\"") || bytes.IndexByte(uri, ':') <= 0 {
			return "Bad Address"
		}
		return ""
	}
	gt := bytes.IndexByte(val[lt:], '>')
	if gt < 0 {
		return "Unterminated Address"
	}
	gt += lt
	inner := val[lt+1 : gt]
	if len(inner) == 0 || bytes.ContainsAny(inner, " \t<\"") || bytes.IndexByte(inner, ':') <= 0 {
		return "Bad Address"
	}
	if msg := checkDisplayName(trimLWS(val[:lt])); msg != "" {
		return msg
	}
	if rest := trimLWS(val[gt+1:]); len(rest) > 0 {
		if rest[0] != ';' {
			return "Bad Address"
		}
		return checkParams(rest)
	}
	return ""
}

// checkDisplayName accepts an empty name, a quoted string, or tokens
// separated by whitespace.
func checkDisplayName(dn []byte) string {
	if len(dn) == 0 {
		return ""
	}
	if dn[0] == '"' {
		if len(dn) < 2 || dn[len(dn)-1] != '"' {
			return "Bad Display Name"
		}
		return ""
	}
	for _, f := range bytes.Fields(dn) {
		if !isToken(f) {
			return "Bad Display Name"
		}
	}
	return ""
}

// checkParams validates ";name[=value]" parameters: no empty ones.
func checkParams(p []byte) string {
	for len(p) > 0 {
		if p[0] != ';' {
			return "Bad Parameter"
		}
		p = p[1:]
		end := len(p)
		inQuote := false
		for i, c := range p {
			if c == '"' {
				inQuote = !inQuote
			}
			if c == ';' && !inQuote {
				end = i
				break
			}
		}
		param := trimLWS(p[:end])
		name := param
		if eq := bytes.IndexByte(param, '='); eq >= 0 {
			name = trimLWS(param[:eq])
			if len(trimLWS(param[eq+1:])) == 0 {
				return "Bad Parameter"
			}
		}
		if !isToken(name) {
			return "Bad Parameter"
		}
		p = p[end:]
	}
	return ""
}

// checkVia validates "SIP/2.0/transport sent-by *(;params)" (RFC 3261
// section 20.42; RFC 4475 section 3.1.2.1).
func checkVia(v []byte) string {
	proto, rest, ok := bytes.Cut(v, []byte{'/'})
	if !ok || !eqFold(trimLWS(proto), "sip") {
		return "Bad Via"
	}
	ver, rest, ok := bytes.Cut(rest, []byte{'/'})
	if !ok || !bytes.Equal(trimLWS(ver), []byte("2.0")) {
		return "Bad Via"
	}
	rest = bytes.TrimLeft(rest, " \t")
	i := bytes.IndexAny(rest, " \t")
	if i <= 0 || !isToken(rest[:i]) {
		return "Bad Via"
	}
	rest = trimLWS(rest[i:])
	sentBy := rest
	if j := bytes.IndexByte(rest, ';'); j >= 0 {
		sentBy = trimLWS(rest[:j])
		if msg := checkParams(rest[j:]); msg != "" {
			return "Bad Via"
		}
	}
	if len(sentBy) == 0 || bytes.ContainsAny(sentBy, " \t,\"<>") {
		return "Bad Via"
	}
	return ""
}

// refusalResponse builds the response to a refused request from its raw
// header lines (RFC 3261 section 8.2.6): the copied Via, From, To, Call-ID
// and CSeq lines, a To tag when there is none, and no body.
func refusalResponse(v verdict, extra string) []byte {
	var buf bytes.Buffer
	buf.WriteString("SIP/2.0 ")
	buf.WriteString(strconv.Itoa(v.code))
	buf.WriteByte(' ')
	buf.WriteString(v.reason)
	buf.WriteString("\r\n")
	for _, line := range v.copy {
		buf.Write(line)
		colon := bytes.IndexByte(line, ':')
		if colon > 0 && headerID(bytes.TrimRight(line[:colon], " \t")) == hTo && !hasTag(line[colon+1:]) {
			buf.WriteString(";tag=sp")
			buf.WriteString(strconv.Itoa(v.code))
		}
		buf.WriteString("\r\n")
	}
	buf.WriteString(extra)
	buf.WriteString("Content-Length: 0\r\n\r\n")
	return buf.Bytes()
}

func hasTag(val []byte) bool {
	gt := bytes.LastIndexByte(val, '>')
	if gt >= 0 {
		val = val[gt:]
	}
	for p := range bytes.SplitSeq(val, []byte{';'}) {
		name, _, _ := bytes.Cut(trimLWS(p), []byte{'='})
		if eqFold(trimLWS(name), "tag") {
			return true
		}
	}
	return false
}

// frameStream finds the first message on a stream buffer: it returns its
// verdict, or size 0 when more bytes are needed. A stream whose message
// cannot be framed (bad Content-Length) has code 400 and must be closed
// after the answer: there is no boundary to resynchronise on.
func frameStream(b []byte) verdict {
	return checkMessage(b, false)
}
