package protocol

import (
	"errors"
	"strings"
	"testing"
)

// A request's values can be megabytes long; the err answer to a request
// that cannot be decoded quotes them cut short, never whole.
func TestBadRequestMessagesAreBounded(t *testing.T) {
	huge := strings.Repeat("9", 1<<20)
	for _, body := range []string{
		`{"frame":"request","id":1,"request":{"op":"register_dns","name":"a","ip":"1` + huge + `"}}`,
		`{"frame":"request","id":1,"request":{"op":"` + huge + `"}}`,
		`{"frame":"` + huge + `","id":1}`,
		`{"frame":"request","id":1,"request":{"op":"detach_container","handle":{"platform":"` + huge + `"}}}`,
		`{"frame":"request","id":1,"request":{"op":"remove_peer","pubkey":"k","scope":{"scope":"` + huge + `"}}}`,
		`{"frame":"request","id":1,"request":{"op":"detach_container","handle":{"platform":"windows_container","container_id":"c","ip":"` + huge + `"}}}`,
		`{"frame":"request","id":1,"request":{"op":"hello","client_version":"é` + strings.Repeat("é", 500) + `"},"x":` + "\"\xff\"" + `}`,
	} {
		_, err := UnmarshalFrame([]byte(body))
		var bad *BadRequestError
		if !errors.As(err, &bad) {
			t.Fatalf("%.80q…: %v", body, err)
		}
		if msg := bad.Error(); len(msg) > 400 {
			t.Errorf("a %d-byte message: %.120q…", len(msg), msg)
		}
	}
}
