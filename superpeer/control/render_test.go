package control

import (
	"strings"
	"testing"
)

func TestRenderKeepsDaemonOrderAndAligns(t *testing.T) {
	raw := []byte(`{"role":"superpeer","uptime_seconds":12.5,"public":true,"set":["a","b"],
	"pinholes":[{"local":"192.168.1.10:5060","remote":"203.0.113.7:4701","sent":3},
	{"local":"192.168.1.10:40000","remote":"203.0.113.9:3478","sent":12,"losses":1}],"empty":[]}`)
	var b strings.Builder
	if err := Render(&b, raw); err != nil {
		t.Fatal(err)
	}
	want := `role            superpeer
uptime seconds  12.5
public          yes
set             a, b
empty           -

pinholes:
  LOCAL               REMOTE            SENT  LOSSES
  192.168.1.10:5060   203.0.113.7:4701  3     -
  192.168.1.10:40000  203.0.113.9:3478  12    1
`
	if b.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestRenderRefusesBrokenJSON(t *testing.T) {
	var b strings.Builder
	if err := Render(&b, []byte(`{"role":`)); err == nil {
		t.Fatal("broken JSON rendered without an error")
	}
}
