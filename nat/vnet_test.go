package nat

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/pion/stun/v4"
	"github.com/pion/transport/v5/vnet"
)

// serveSTUN answers STUN Binding requests on conn with the sender's
// address, and hands every other datagram to data (if not nil), until conn
// is closed.
func serveSTUN(conn net.PacketConn, data chan<- netip.AddrPort) {
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		src := from.(*net.UDPAddr).AddrPort()
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if !stun.IsMessage(buf[:n]) {
			if data != nil {
				select {
				case data <- src:
				default:
				}
			}
			continue
		}
		req := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
		if req.Decode() != nil || req.Type != stun.BindingRequest {
			continue
		}
		resp, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: src.Addr().AsSlice(), Port: int(src.Port())}, stun.Fingerprint)
		if err != nil {
			continue
		}
		conn.WriteTo(resp.Raw, from)
	}
}

// ownerLoop is a flow owner's read loop: STUN answers go to the keeper,
// everything else to data.
func ownerLoop(k *Keeper, conn net.PacketConn, data chan<- string) {
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if k.HandleSTUN(buf[:n], from.(*net.UDPAddr).AddrPort()) {
			continue
		}
		select {
		case data <- string(buf[:n]):
		default:
		}
	}
}

// TestVNetKeepsBindingAndNoticesRemap runs the keeper's STUN keepalives
// through pion's virtual NAT (real time, 1 s bindings): the binding stays
// open over several lifetimes, and when the lifetime estimate is too long
// the binding expires, the next refresh shows the new mapping, and the
// owner and the lifetime source hear of it.
func TestVNetKeepsBindingAndNoticesRemap(t *testing.T) {
	const life = time.Second
	logs := logging.NewDefaultLoggerFactory()
	wan, err := vnet.NewRouter(&vnet.RouterConfig{CIDR: "203.0.113.0/24", LoggerFactory: logs})
	if err != nil {
		t.Fatal(err)
	}
	lan, err := vnet.NewRouter(&vnet.RouterConfig{
		CIDR:          "192.168.1.0/24",
		StaticIPs:     []string{"203.0.113.100"},
		LoggerFactory: logs,
		NATType: &vnet.NATType{
			MappingBehavior:   vnet.EndpointIndependent,
			FilteringBehavior: vnet.EndpointAddrPortDependent,
			MappingLifeTime:   life,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := wan.AddRouter(lan); err != nil {
		t.Fatal(err)
	}
	remoteNet, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{"203.0.113.10"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := wan.AddNet(remoteNet); err != nil {
		t.Fatal(err)
	}
	lanNet, err := vnet.NewNet(&vnet.NetConfig{StaticIPs: []string{"192.168.1.10"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := lan.AddNet(lanNet); err != nil {
		t.Fatal(err)
	}
	if err := wan.Start(); err != nil {
		t.Fatal(err)
	}
	defer wan.Stop()

	server, err := remoteNet.ListenPacket("udp4", "203.0.113.10:3478")
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	go serveSTUN(server, nil)

	src := &switchableLifetime{}
	src.set(life, 0, true)
	cfg := DefaultKeeperConfig()
	cfg.Lifetime = src
	cfg.MinMargin = 200 * time.Millisecond
	cfg.MinInterval = 100 * time.Millisecond
	cfg.WarmUp = 0 // vnet has no unreplied timer
	k, err := NewKeeper(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Start(); err != nil {
		t.Fatal(err)
	}
	defer k.Close()

	conn, err := lanNet.ListenPacket("udp4", "192.168.1.10:5060")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	data := make(chan string, 8)
	go ownerLoop(k, conn, data)

	var mu sync.Mutex
	var events []Event
	remapped := make(chan struct{}, 1)
	p, err := k.Add(PinholeSpec{
		Local:  netip.MustParseAddrPort("192.168.1.10:5060"),
		Remote: netip.MustParseAddrPort("203.0.113.10:3478"),
		Conn:   conn,
		Notify: func(ev Event) {
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
			if ev.Kind == EventRemapped {
				remapped <- struct{}{}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}

	// Hold the pinhole for four binding lifetimes: the span under test.
	time.Sleep(4 * life)
	st := p.Status()
	if st.Losses != 0 || st.Remaps != 0 || !st.External.IsValid() {
		t.Fatalf("after 4 lifetimes: %+v", st)
	}
	if st.Keepalives < 5 || st.Keepalives > 8 {
		t.Fatalf("%d keepalives in 4 lifetimes, want 5-8 (one each 0.8 lifetime, plus the opening pair)", st.Keepalives)
	}
	if _, err := server.WriteTo([]byte("hello"), net.UDPAddrFromAddrPort(st.External)); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-data:
		if got != "hello" {
			t.Fatalf("LAN got %q", got)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("the far end's packet to %v did not pass the NAT after 4 lifetimes", st.External)
	}

	// An estimate three times too long: the binding expires between
	// refreshes and the next one finds a new mapping.
	src.set(3*life, 0, true)
	select {
	case <-remapped:
	case <-time.After(10 * life):
		t.Fatal("binding expired under a too-long estimate, and no remap was noticed")
	}
	mu.Lock()
	ev := events[len(events)-1]
	mu.Unlock()
	if ev.OldExternal != st.External || ev.NewExternal == st.External || !ev.NewExternal.IsValid() {
		t.Fatalf("remap event %v -> %v, old external was %v", ev.OldExternal, ev.NewExternal, st.External)
	}
	if got := src.observed(); len(got) != 1 || got[0] < life {
		t.Fatalf("lifetime source heard %v, want one remap after more than %v idle", got, life)
	}
}
