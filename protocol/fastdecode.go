package protocol

import (
	"bytes"
	"encoding/json"
	"reflect"
	"unicode/utf8"
)

// The fast path decodes the request frames a well-behaved client sends and
// the response frames a server sends — the frames decoded at volume —
// with one cheap scan of the envelope and the object's top-level members
// and one encoding/json pass over the body, which validates it (a
// json.Valid pass for variants without fields, such as status or ok). The
// general decoder below makes five passes, one of them into a map.
//
// The fast path never produces an error: any frame it is not certain to
// decode exactly as the general decoder would (not valid JSON, keys with
// escapes, duplicate keys, keys that only match case-insensitively, an
// unknown op, a missing or null required field, a body that does not
// decode) is handed to the general decoder, which also writes the error
// message. So the two can never disagree on a frame's meaning.

// envelopeKeys are the members rawFrame decodes; encoding/json matches
// them case-insensitively (Unicode simple folding), which the fast path
// does not attempt.
var envelopeKeys = [...]string{"frame", "id", "request", "response", "event"}

// member is one top-level member of a JSON object.
type member struct {
	key, value []byte
}

// maxFastMembers bounds the members the fast path tracks without
// allocating; bigger objects take the general path.
const maxFastMembers = 48

// scanObject lists the top-level members of the JSON object data starts
// with, and returns the index just past it. It checks the object's own
// syntax (braces, colons, commas, string keys) but not its keys' and
// values' contents: callers validate those (validMembers, or the
// encoding/json pass that decodes them). It reports false when data does
// not start with an object, when a key contains an escape, or when there
// are more members than fit in out.
func scanObject(data []byte, out *[maxFastMembers]member) (n, end int, ok bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return 0, 0, false
	}
	i = skipSpace(data, i+1)
	if i < len(data) && data[i] == '}' {
		return 0, i + 1, true
	}
	for i < len(data) {
		if data[i] != '"' {
			return 0, 0, false
		}
		kend := i + 1
		for kend < len(data) && data[kend] != '"' {
			if data[kend] == '\\' {
				return 0, 0, false
			}
			kend++
		}
		if kend >= len(data) || n == len(out) {
			return 0, 0, false
		}
		key := data[i+1 : kend]
		i = skipSpace(data, kend+1)
		if i >= len(data) || data[i] != ':' {
			return 0, 0, false
		}
		i = skipSpace(data, i+1)
		vend := skipValue(data, i)
		if vend <= i {
			return 0, 0, false
		}
		out[n] = member{key: key, value: data[i:vend]}
		n++
		i = skipSpace(data, vend)
		if i >= len(data) {
			return 0, 0, false
		}
		switch data[i] {
		case ',':
			i = skipSpace(data, i+1)
		case '}':
			return n, i + 1, true
		default:
			return 0, 0, false
		}
	}
	return 0, 0, false
}

// validMembers reports whether the keys and values of members are valid
// JSON, leaving out the value skip (the one a caller validates by
// decoding it). With scanObject's syntax check and nothing but white
// space after the object, that makes the whole object valid.
func validMembers(members []member, skip []byte) bool {
	for _, m := range members {
		// scanObject let no quote or backslash into a key, and the
		// frame's UTF-8 is checked whole: only control characters are
		// left to refuse.
		for _, c := range m.key {
			if c < 0x20 {
				return false
			}
		}
		if len(skip) > 0 && len(m.value) > 0 && &m.value[0] == &skip[0] {
			continue
		}
		if !json.Valid(m.value) {
			return false
		}
	}
	return true
}

func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue returns the index just past the JSON value at i. On input
// that is not valid JSON it returns some index up to len(data), which the
// validation of the value's bytes then refuses.
func skipValue(data []byte, i int) int {
	if i >= len(data) {
		return i
	}
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for i < len(data) {
			switch data[i] {
			case '"':
				i = skipString(data, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default: // number, true, false, null
		for i < len(data) {
			switch data[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// skipString returns the index just past the string starting at i, or
// len(data) if it does not end.
func skipString(data []byte, i int) int {
	i++
	for i < len(data) {
		switch data[i] {
		case '\\':
			i += 2
			continue
		case '"':
			return i + 1
		}
		i++
	}
	return len(data)
}

// plainString is the content of a JSON string without escapes.
func plainString(raw []byte) ([]byte, bool) {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return nil, false
	}
	s := raw[1 : len(raw)-1]
	if bytes.IndexByte(s, '\\') >= 0 {
		return nil, false
	}
	return s, true
}

// exactOnly reports whether key either equals want or does not match it
// even case-insensitively: a key encoding/json would take for want but
// that is spelled differently sends the frame to the general decoder.
func exactOnly(key []byte, want string) (match, ok bool) {
	if string(key) == want {
		return true, true
	}
	if len(key) <= 3*len(want) && bytes.EqualFold(key, []byte(want)) {
		return false, false
	}
	return false, true
}

// fieldlessRequests and fieldlessResponses are the variants without JSON
// fields: their body needs validating but no decoding.
var (
	fieldlessRequests  = fieldlessOf(requestTypes)
	fieldlessResponses = fieldlessOf(responseTypes)
)

func fieldlessOf[T any](types map[string]func() T) map[string]bool {
	out := map[string]bool{}
	for name, mk := range types {
		if reflect.TypeOf(mk()).Elem().NumField() == 0 {
			out[name] = true
		}
	}
	return out
}

// fastFrame decodes a request or response frame, or reports false.
// Responses are what a client decodes at volume, and a status answer with
// a thousand peers is hundreds of kilobytes: every pass counts.
//
// The frame is validated in pieces rather than by one json.Valid pass
// ahead of the rest: its envelope here, and its body by the encoding/json
// pass that decodes it (which validates its input whole before decoding)
// or, for a body without fields, by json.Valid. A body is most of the
// frame, so this saves a pass over it.
func fastFrame(data []byte) (Frame, bool) {
	if !utf8.Valid(data) {
		return Frame{}, false
	}
	var members [maxFastMembers]member
	n, end, ok := scanObject(data, &members)
	if !ok || skipSpace(data, end) != len(data) {
		return Frame{}, false
	}
	var kind, idRaw, reqRaw, respRaw []byte
	var seen [len(envelopeKeys)]bool
	for _, m := range members[:n] {
		for k, name := range envelopeKeys {
			match, ok := exactOnly(m.key, name)
			if !ok {
				return Frame{}, false
			}
			if !match {
				continue
			}
			if seen[k] {
				return Frame{}, false // duplicate: encoding/json keeps the last
			}
			seen[k] = true
			switch k {
			case 0:
				kind = m.value
			case 1:
				idRaw = m.value
			case 2:
				reqRaw = m.value
			case 3:
				respRaw = m.value
			}
		}
	}
	var body []byte
	switch string(kind) {
	case `"request"`:
		body = reqRaw
	case `"response"`:
		body = respRaw
	}
	if !validMembers(members[:n], body) {
		return Frame{}, false
	}
	id, ok := parseID(idRaw)
	if !ok {
		return Frame{}, false
	}
	switch string(kind) {
	case `"request"`:
		req, ok := fastRequest(reqRaw)
		if !ok {
			return Frame{}, false
		}
		return Frame{Kind: KindRequest, ID: id, Request: req}, true
	case `"response"`:
		resp, ok := fastResponse(respRaw)
		if !ok {
			return Frame{}, false
		}
		return Frame{Kind: KindResponse, ID: id, Response: resp}, true
	}
	return Frame{}, false
}

// fastRequest decodes a request object, or reports false.
func fastRequest(data []byte) (Request, bool) {
	return fastTagged(data, "op", requestTypes, fieldlessRequests)
}

// fastResponse decodes a response object, or reports false.
func fastResponse(data []byte) (Response, bool) {
	return fastTagged(data, "result", responseTypes, fieldlessResponses)
}

// fastTagged decodes an object tagged by the member tag, or reports false.
// data is not yet known to be valid JSON: the decoding pass validates it,
// or json.Valid where there is nothing to decode.
func fastTagged[T any](data []byte, tag string, types map[string]func() T, fieldless map[string]bool) (T, bool) {
	var zero T
	var members [maxFastMembers]member
	n, _, ok := scanObject(data, &members)
	if !ok {
		return zero, false
	}
	var name []byte
	for i, m := range members[:n] {
		match, ok := exactOnly(m.key, tag)
		if !ok {
			return zero, false
		}
		if match {
			if name != nil {
				return zero, false
			}
			if name, ok = plainString(m.value); !ok {
				return zero, false
			}
		}
		for _, o := range members[:i] {
			if bytes.Equal(o.key, m.key) {
				return zero, false // duplicate member
			}
		}
	}
	if name == nil {
		return zero, false
	}
	mk, known := types[string(name)]
	if !known {
		return zero, false
	}
	p := mk()
	for _, k := range requiredKeys(reflect.TypeOf(p).Elem()) {
		found := false
		for _, m := range members[:n] {
			if string(m.key) == k {
				found = string(m.value) != "null"
				break
			}
		}
		if !found {
			return zero, false
		}
	}
	if fieldless[string(name)] {
		if !json.Valid(data) {
			return zero, false
		}
	} else if err := json.Unmarshal(data, p); err != nil {
		return zero, false
	}
	return reflect.ValueOf(p).Elem().Interface().(T), true
}
