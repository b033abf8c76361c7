package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// Frame kinds.
const (
	KindRequest  = "request"
	KindResponse = "response"
	KindEvent    = "event"
)

// Frame is one message on the connection (tag "frame"). Exactly one of
// Request, Response and Event is set, matching Kind; ID is meaningful for
// requests and responses.
type Frame struct {
	Kind     string
	ID       uint64
	Request  Request
	Response Response
	Event    Event
}

// RequestFrame builds a request frame.
func RequestFrame(id uint64, r Request) Frame { return Frame{Kind: KindRequest, ID: id, Request: r} }

// ResponseFrame builds a response frame.
func ResponseFrame(id uint64, r Response) Frame {
	return Frame{Kind: KindResponse, ID: id, Response: r}
}

// EventFrame builds an event frame.
func EventFrame(e Event) Frame { return Frame{Kind: KindEvent, Event: e} }

// BadRequestError is a frame that is a JSON object with a usable request id
// but whose request cannot be decoded (unknown op, missing field, wrong
// type). The server answers it with an err response carrying ID and keeps
// the connection open.
type BadRequestError struct {
	ID  uint64
	Op  string // may be empty when the op itself is missing or unreadable
	Err error
}

func (e *BadRequestError) Error() string {
	if e.Op != "" {
		return fmt.Sprintf("invalid %s request: %s", clip(e.Op, 64), clip(e.Err.Error(), 300))
	}
	return fmt.Sprintf("invalid request: %s", clip(e.Err.Error(), 300))
}

// clip cuts s to at most n bytes, on a rune boundary. A request's values
// can be megabytes long, and the errors about them (ours, encoding/json's,
// net/netip's) quote them whole; the err answer and the log keep a
// sentence.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func (e *BadRequestError) Unwrap() error { return e.Err }

// ErrMalformed marks a frame body that is not a decodable frame at all; the
// server closes such a connection.
var ErrMalformed = errors.New("malformed frame")

// RawRequest is a request object already encoded as JSON, sent verbatim. It
// lets tools send requests this package cannot build (unknown ops, bad
// fields) to exercise a server's error handling.
type RawRequest []byte

// Op reads the op out of the raw object ("" if there is none).
func (r RawRequest) Op() string {
	var head struct {
		Op string `json:"op"`
	}
	_ = json.Unmarshal(r, &head)
	return head.Op
}

// MarshalFrame encodes f exactly as the reference does: compact JSON, keys in
// the reference's order, optional fields omitted.
func MarshalFrame(f Frame) ([]byte, error) {
	return AppendFrame(nil, f)
}

// AppendFrame appends the encoding of f to dst.
func AppendFrame(dst []byte, f Frame) ([]byte, error) {
	b := bytes.NewBuffer(dst)
	switch f.Kind {
	case KindRequest:
		if f.Request == nil {
			return nil, errors.New("request frame without a request")
		}
		b.WriteString(`{"frame":"request","id":`)
		b.WriteString(strconv.FormatUint(f.ID, 10))
		b.WriteString(`,"request":`)
		if raw, ok := f.Request.(RawRequest); ok {
			b.Write(raw)
		} else if err := writeTagged(b, "op", f.Request.Op(), f.Request); err != nil {
			return nil, err
		}
		b.WriteByte('}')
	case KindResponse:
		if f.Response == nil {
			return nil, errors.New("response frame without a response")
		}
		b.WriteString(`{"frame":"response","id":`)
		b.WriteString(strconv.FormatUint(f.ID, 10))
		b.WriteString(`,"response":`)
		if err := writeTagged(b, "result", f.Response.Result(), normalizeResponse(f.Response)); err != nil {
			return nil, err
		}
		b.WriteByte('}')
	case KindEvent:
		if f.Event == nil {
			return nil, errors.New("event frame without an event")
		}
		// The event is a newtype variant: its own tag and fields are
		// flattened into the frame object.
		b.WriteString(`{"frame":"event",`)
		if err := writeTaggedBody(b, "event", f.Event.Name(), f.Event); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown frame kind %q", f.Kind)
	}
	return b.Bytes(), nil
}

// MarshalRequest encodes just the request object ({"op":...}).
func MarshalRequest(r Request) ([]byte, error) {
	var b bytes.Buffer
	err := writeTagged(&b, "op", r.Op(), r)
	return b.Bytes(), err
}

// MarshalResponse encodes just the response object ({"result":...}).
func MarshalResponse(r Response) ([]byte, error) {
	var b bytes.Buffer
	err := writeTagged(&b, "result", r.Result(), normalizeResponse(r))
	return b.Bytes(), err
}

// normalizeResponse replaces nil slices of required array fields with empty
// ones so they encode as [] rather than null.
func normalizeResponse(r Response) Response {
	switch v := r.(type) {
	case GuestConfig:
		if v.Peers == nil {
			v.Peers = []PeerSpec{}
		}
		return v
	case *GuestConfig:
		return normalizeResponse(*v)
	case HelloResult:
		if v.Features == nil {
			v.Features = []string{}
		}
		return v
	case *HelloResult:
		return normalizeResponse(*v)
	case DNSRecords:
		if v.Records == nil {
			v.Records = []DNSRecord{}
		}
		if slices.ContainsFunc(v.Records, func(r DNSRecord) bool { return r.IPs == nil }) {
			v.Records = slices.Clone(v.Records)
			for i := range v.Records {
				if v.Records[i].IPs == nil {
					v.Records[i].IPs = []netip.Addr{}
				}
			}
		}
		return v
	case *DNSRecords:
		return normalizeResponse(*v)
	}
	return r
}

// writeTagged writes {"<tag>":"<name>",<fields of v>}.
func writeTagged(b *bytes.Buffer, tag, name string, v any) error {
	b.WriteByte('{')
	return writeTaggedBody(b, tag, name, v)
}

// writeTaggedBody writes "<tag>":"<name>",<fields of v>} — the caller has
// already written the opening brace and anything before the tag.
func writeTaggedBody(b *bytes.Buffer, tag, name string, v any) error {
	writeString(b, tag)
	b.WriteByte(':')
	writeString(b, name)
	es := encoders.Get().(*encoderState)
	defer func() {
		if es.buf.Cap() <= 64<<10 {
			es.buf.Reset()
			encoders.Put(es)
		}
	}()
	if err := es.enc.Encode(v); err != nil {
		es.buf.Reset()
		return err
	}
	body := bytes.TrimSuffix(es.buf.Bytes(), []byte("\n"))
	if bytes.Contains(body, []byte(`\u202`)) {
		body = unescapeLineSeparators(body)
	}
	// body is "{...}"; splice its members after the tag.
	if len(body) > 2 {
		b.WriteByte(',')
		b.Write(body[1 : len(body)-1])
	}
	b.WriteByte('}')
	return nil
}

// marshalCompact encodes v like serde_json does: no HTML escaping, and
// U+2028/U+2029 written raw.
func marshalCompact(v any) ([]byte, error) {
	return appendCompact(nil, v)
}

// encoderState is a reusable encoder: building a json.Encoder and its
// buffer per call was a third of the cost of a small response.
type encoderState struct {
	buf bytes.Buffer
	enc *json.Encoder
}

var encoders = sync.Pool{New: func() any {
	es := &encoderState{}
	es.enc = json.NewEncoder(&es.buf)
	es.enc.SetEscapeHTML(false)
	return es
}}

// appendCompact appends the compact encoding of v to dst.
func appendCompact(dst []byte, v any) ([]byte, error) {
	es := encoders.Get().(*encoderState)
	defer func() {
		if es.buf.Cap() <= 64<<10 {
			es.buf.Reset()
			encoders.Put(es)
		}
	}()
	if err := es.enc.Encode(v); err != nil {
		es.buf.Reset()
		return dst, err
	}
	out := bytes.TrimSuffix(es.buf.Bytes(), []byte("\n"))
	if bytes.Contains(out, []byte(`\u202`)) {
		return append(dst, unescapeLineSeparators(out)...), nil
	}
	return append(dst, out...), nil
}

// unescapeLineSeparators turns the \u2028 and \u2029 escapes encoding/json
// writes back into raw characters, skipping escaped backslashes.
func unescapeLineSeparators(in []byte) []byte {
	out := make([]byte, 0, len(in))
	for i := 0; i < len(in); i++ {
		c := in[i]
		if c != '\\' || i+1 >= len(in) {
			out = append(out, c)
			continue
		}
		if in[i+1] == 'u' && i+6 <= len(in) {
			switch string(in[i+2 : i+6]) {
			case "2028":
				out = utf8.AppendRune(out, '\u2028')
				i += 5
				continue
			case "2029":
				out = utf8.AppendRune(out, '\u2029')
				i += 5
				continue
			}
		}
		// Any other escape: copy both bytes so "\\" is never re-read.
		out = append(out, c, in[i+1])
		i++
	}
	return out
}

// writeString writes s as a JSON string the way serde_json does.
func writeString(b *bytes.Buffer, s string) {
	if plainJSON(s) {
		b.WriteByte('"')
		b.WriteString(s)
		b.WriteByte('"')
		return
	}
	enc, _ := marshalCompact(s)
	b.Write(enc)
}

// plainJSON reports whether s encodes as itself between quotes: printable
// ASCII without '"' or '\\'. (serde_json writes other UTF-8 raw too, but
// those strings are rare on the wire and take the general encoder.)
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// rawFrame is the envelope of every frame; event fields are read from the
// whole object separately.
type rawFrame struct {
	Frame    json.RawMessage `json:"frame"`
	ID       json.RawMessage `json:"id"`
	Request  json.RawMessage `json:"request"`
	Response json.RawMessage `json:"response"`
	Event    json.RawMessage `json:"event"`
}

// UnmarshalFrame decodes one frame body. A body that is not a JSON object
// with a known frame kind wraps ErrMalformed. A request frame with a valid id
// whose request cannot be decoded returns a *BadRequestError.
func UnmarshalFrame(data []byte) (Frame, error) {
	if f, ok := fastFrame(data); ok {
		return f, nil
	}
	return unmarshalFrameGeneral(data)
}

// unmarshalFrameGeneral decodes any frame and words every error.
func unmarshalFrameGeneral(data []byte) (Frame, error) {
	var raw rawFrame
	if err := json.Unmarshal(data, &raw); err != nil {
		return Frame{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	var kind string
	if err := json.Unmarshal(raw.Frame, &kind); err != nil || len(raw.Frame) == 0 {
		if id, ok := parseID(raw.ID); ok {
			return Frame{}, &BadRequestError{ID: id, Err: errors.New("field `frame` must be the string \"request\"")}
		}
		return Frame{}, fmt.Errorf("%w: missing or invalid field `frame`", ErrMalformed)
	}
	switch kind {
	case KindRequest:
		id, ok := parseID(raw.ID)
		if !ok {
			return Frame{}, fmt.Errorf("%w: request frame without a valid `id` (an unsigned 64-bit integer)", ErrMalformed)
		}
		if !utf8.Valid(data) {
			return Frame{}, &BadRequestError{ID: id, Err: errors.New("frame is not valid UTF-8")}
		}
		req, op, err := UnmarshalRequest(raw.Request)
		if err != nil {
			return Frame{}, &BadRequestError{ID: id, Op: op, Err: err}
		}
		return Frame{Kind: KindRequest, ID: id, Request: req}, nil
	case KindResponse:
		id, ok := parseID(raw.ID)
		if !ok {
			return Frame{}, fmt.Errorf("%w: response frame without a valid `id`", ErrMalformed)
		}
		resp, err := UnmarshalResponse(raw.Response)
		if err != nil {
			return Frame{}, fmt.Errorf("%w: response %d: %v", ErrMalformed, id, err)
		}
		return Frame{Kind: KindResponse, ID: id, Response: resp}, nil
	case KindEvent:
		var name string
		if err := json.Unmarshal(raw.Event, &name); err != nil || len(raw.Event) == 0 {
			return Frame{}, fmt.Errorf("%w: event frame without a string `event`", ErrMalformed)
		}
		ev, err := decodeTagged(data, name, eventTypes, "event")
		if err != nil {
			return Frame{}, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		return Frame{Kind: KindEvent, Event: ev}, nil
	default:
		if id, ok := parseID(raw.ID); ok {
			return Frame{}, &BadRequestError{ID: id, Err: fmt.Errorf("unknown frame kind %q, expected request", kind)}
		}
		return Frame{}, fmt.Errorf("%w: unknown frame kind %q", ErrMalformed, kind)
	}
}

func parseID(raw json.RawMessage) (uint64, bool) {
	if len(raw) == 0 {
		return 0, false
	}
	id, err := strconv.ParseUint(string(raw), 10, 64)
	return id, err == nil
}

// UnmarshalRequest decodes a request object. It also returns the op it
// found (empty if none) so errors can name it.
func UnmarshalRequest(data []byte) (Request, string, error) {
	if len(data) == 0 || string(data) == "null" {
		return nil, "", errors.New("missing field `request`")
	}
	var head struct {
		Op *string `json:"op"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, "", err
	}
	if head.Op == nil {
		return nil, "", errors.New("missing field `op`")
	}
	req, err := decodeTagged(data, *head.Op, requestTypes, "op")
	if err != nil {
		return nil, *head.Op, err
	}
	return req, *head.Op, nil
}

// UnmarshalResponse decodes a response object.
func UnmarshalResponse(data []byte) (Response, error) {
	if len(data) == 0 || string(data) == "null" {
		return nil, errors.New("missing field `response`")
	}
	var head struct {
		Result *string `json:"result"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, err
	}
	if head.Result == nil {
		return nil, errors.New("missing field `result`")
	}
	return decodeTagged(data, *head.Result, responseTypes, "result")
}

// decodeTagged looks name up in types, decodes data into a fresh value,
// checks that every required field was present, and returns the value (not
// the pointer) so callers can type-switch on plain struct types.
func decodeTagged[T any](data []byte, name string, types map[string]func() T, tag string) (T, error) {
	var zero T
	mk, ok := types[name]
	if !ok {
		return zero, fmt.Errorf("unknown %s %q", tag, name)
	}
	p := mk()
	if err := checkRequired(data, reflect.TypeOf(p).Elem()); err != nil {
		return zero, err
	}
	if err := json.Unmarshal(data, p); err != nil {
		return zero, describeJSONError(err)
	}
	return reflect.ValueOf(p).Elem().Interface().(T), nil
}

// describeJSONError rewrites encoding/json errors into the "field `x`:"
// style the rest of our messages use.
func describeJSONError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Errorf("field `%s`: expected %s, got JSON %s", te.Field, te.Type, te.Value)
	}
	return err
}

// requiredFields caches, per struct type, the JSON keys that must be present
// (serde's non-Option fields without a default).
var requiredFields sync.Map // reflect.Type -> []string

func checkRequired(data []byte, t reflect.Type) error {
	req := requiredKeys(t)
	if len(req) == 0 {
		return nil
	}
	var present map[string]json.RawMessage
	if err := json.Unmarshal(data, &present); err != nil {
		return err
	}
	for _, k := range req {
		v, ok := present[k]
		if !ok {
			return fmt.Errorf("missing field `%s`", k)
		}
		if string(v) == "null" {
			return fmt.Errorf("field `%s` must not be null", k)
		}
	}
	return nil
}

func requiredKeys(t reflect.Type) []string {
	if v, ok := requiredFields.Load(t); ok {
		return v.([]string)
	}
	var keys []string
	collectRequired(t, &keys)
	requiredFields.Store(t, keys)
	return keys
}

func collectRequired(t reflect.Type, keys *[]string) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			collectRequired(f.Type, keys)
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "" || tag == "-" || !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(opts, "omitempty") || strings.Contains(opts, "omitzero") {
			continue
		}
		if f.Type == reflect.TypeOf(PeerScope{}) {
			continue // serde(default): a missing scope means global
		}
		*keys = append(*keys, name)
	}
}
