package protocol

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

// The decoders face whatever a local process writes to the socket. The
// properties below are what the server relies on: a decoder never panics,
// fails only in the two ways the server knows how to answer (close the
// connection, or an err response carrying the request's id), and whatever
// it accepts means exactly one thing: it re-encodes, and that encoding
// decodes to the same value and encodes to the same bytes again.
//
// The seed corpora are in testdata/fuzz; the golden vectors are added as
// seeds too. `go test` runs them all; `go test -fuzz=FuzzUnmarshalFrame`
// explores further.

func addGoldenSeeds(f *testing.F, request bool) {
	for _, file := range []string{"reference.jsonl", "extensions.jsonl"} {
		for _, line := range readVectorsF(f, file) {
			if !request {
				f.Add([]byte(line))
				continue
			}
			fr, err := UnmarshalFrame([]byte(line))
			if err != nil || fr.Kind != KindRequest {
				continue
			}
			b, err := MarshalRequest(fr.Request)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
		}
	}
}

func readVectorsF(f *testing.F, name string) []string {
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		f.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

func FuzzUnmarshalFrame(f *testing.F) {
	addGoldenSeeds(f, false)
	f.Fuzz(func(t *testing.T, body []byte) {
		fr, err := UnmarshalFrame(body)
		if err != nil {
			var bad *BadRequestError
			switch {
			case errors.As(err, &bad):
				if errors.Is(err, ErrMalformed) {
					t.Fatalf("an error is both malformed and a bad request: %v", err)
				}
				if bad.Err == nil {
					t.Fatal("a bad request that does not say what is wrong")
				}
				if msg := bad.Error(); len(msg) > 400 || !utf8.ValidString(msg) {
					t.Fatalf("a %d-byte bad-request message (UTF-8: %t): %.100q…", len(msg), utf8.ValidString(msg), msg)
				}
			case errors.Is(err, ErrMalformed):
			default:
				t.Fatalf("UnmarshalFrame failed with %v (%T): neither ErrMalformed nor *BadRequestError, so the server cannot tell whether to answer or hang up", err, err)
			}
			return
		}
		if fr.Kind == KindRequest && !utf8.Valid(body) {
			t.Fatalf("a request frame that is not UTF-8 was accepted: %q", body)
		}
		out, err := MarshalFrame(fr)
		if err != nil {
			t.Fatalf("decoded %q into %#v, which does not encode: %v", body, fr, err)
		}
		back, err := UnmarshalFrame(out)
		if err != nil {
			t.Fatalf("re-encoding of %q does not decode: %v\n%s", body, err, out)
		}
		if !reflect.DeepEqual(canonicalFrame(fr), canonicalFrame(back)) {
			t.Fatalf("round trip changed the frame\n in: %q\n  1: %#v\nout: %s\n  2: %#v", body, fr, out, back)
		}
		again, err := MarshalFrame(back)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("the encoding is not stable: %s then %s (%v)", out, again, err)
		}
	})
}

func FuzzUnmarshalRequest(f *testing.F) {
	addGoldenSeeds(f, true)
	f.Fuzz(func(t *testing.T, data []byte) {
		req, op, err := UnmarshalRequest(data)
		if err != nil {
			if req != nil {
				t.Fatalf("a failed decode returned a request: %#v", req)
			}
			return
		}
		if op != req.Op() {
			t.Fatalf("decoded op %q but the request is a %q", op, req.Op())
		}
		out, err := MarshalRequest(req)
		if err != nil {
			t.Fatalf("decoded %q into %#v, which does not encode: %v", data, req, err)
		}
		back, op2, err := UnmarshalRequest(out)
		if err != nil {
			t.Fatalf("re-encoding of %q does not decode: %v\n%s", data, err, out)
		}
		if op2 != op || !reflect.DeepEqual(canonicalRequest(req), canonicalRequest(back)) {
			t.Fatalf("round trip changed the request\n in: %q\n  1: %#v\nout: %s\n  2: %#v", data, req, out, back)
		}
		again, err := MarshalRequest(back)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("the encoding is not stable: %s then %s (%v)", out, again, err)
		}
	})
}

// canonicalFrame and canonicalRequest spell the values that have two Go
// representations one way: a peer scope of global may be the zero
// PeerScope (a request without scope) or GlobalScope(), and an optional
// list may be empty or nil; each pair means and encodes the same.
func canonicalFrame(f Frame) Frame {
	if f.Kind == KindRequest {
		f.Request = canonicalRequest(f.Request)
	}
	if f.Response != nil {
		f.Response = nilEmptySlices(f.Response).(Response)
	}
	return f
}

// nilEmptySlices returns a copy of v (a struct value) with every empty
// slice, at any depth, replaced by nil.
func nilEmptySlices(v any) any {
	rv := reflect.ValueOf(v)
	cp := reflect.New(rv.Type()).Elem()
	cp.Set(rv)
	var walk func(reflect.Value)
	walk = func(x reflect.Value) {
		switch x.Kind() {
		case reflect.Struct:
			for i := range x.NumField() {
				if x.Type().Field(i).IsExported() {
					walk(x.Field(i))
				}
			}
		case reflect.Pointer:
			if !x.IsNil() {
				c := reflect.New(x.Elem().Type())
				c.Elem().Set(x.Elem())
				x.Set(c)
				walk(c.Elem())
			}
		case reflect.Slice:
			if x.Len() == 0 {
				x.Set(reflect.Zero(x.Type()))
				return
			}
			c := reflect.MakeSlice(x.Type(), x.Len(), x.Len())
			reflect.Copy(c, x)
			x.Set(c)
			for i := range c.Len() {
				walk(c.Index(i))
			}
		}
	}
	walk(cp)
	return cp.Interface()
}

func canonicalRequest(r Request) Request {
	fix := func(s PeerScope) PeerScope {
		if s.IsGlobal() {
			return GlobalScope()
		}
		return s
	}
	r = nilEmptySlices(r).(Request)
	switch v := r.(type) {
	case AddPeer:
		v.Scope = fix(v.Scope)
		return v
	case RemovePeer:
		v.Scope = fix(v.Scope)
		return v
	case AddAllowedIP:
		v.Scope = fix(v.Scope)
		return v
	case RemoveAllowedIP:
		v.Scope = fix(v.Scope)
		return v
	}
	return r
}
