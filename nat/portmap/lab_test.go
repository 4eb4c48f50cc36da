package portmap

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/superpeer/superpeer/netlab"
)

// wanVerifier verifies a mapping the plain way: a WAN host sends to the
// external address from a fresh socket (a fresh flow, which no earlier
// conntrack entry lets through) while the mapped socket listens.
func wanVerifier(wan *netlab.Host, conn net.PacketConn) Verifier {
	var mu sync.Mutex
	seq := 0
	return VerifierFunc(func(ctx context.Context, external netip.AddrPort) error {
		mu.Lock()
		seq++
		token := fmt.Sprintf("verify-%d", seq)
		mu.Unlock()
		ws, err := wan.UDP(netip.AddrPortFrom(wan.Addr, 0))
		if err != nil {
			return err
		}
		defer ws.Close()
		stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
		defer stop()
		buf := make([]byte, 256)
		for ctx.Err() == nil {
			ws.WriteToUDPAddrPort([]byte(token), external)
			conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			for {
				n, _, err := conn.ReadFrom(buf)
				if err != nil {
					break
				}
				if string(buf[:n]) == token {
					return nil
				}
			}
		}
		return fmt.Errorf("nothing sent to %v arrived: %w", external, ctx.Err())
	})
}

// TestLabMiniupnpd maps ports through the lab's miniupnpd: UPnP (verified
// by a WAN host sending to the mapping), NAT-PMP and PCP (verified with
// RFC 5780 RESPONSE-PORT against the lab's coturn). Each mapping is made,
// verified, renewed at half its 20 s lease; after miniupnpd restarts with
// its table purged each dead mapping is noticed and made again within one
// verification interval; Close releases them and the ports stop
// forwarding.
func TestLabMiniupnpd(t *testing.T) {
	const verifyEvery = 4 * time.Second
	// A 2 s unreplied timeout lets the conntrack entries of one
	// verification expire before the next, so a purged mapping cannot
	// pass on an old entry.
	lab := netlab.Start(t, netlab.Topology{Sites: []netlab.SiteConfig{{UPnP: true, UDPTimeout: 2 * time.Second}}})
	site, wan := lab.Sites[0], lab.WAN[0]
	lan := site.LAN[0]
	n, err := lan.Net()
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Net = n
	cfg.Gateway = site.NAT.Addr
	// Renewals every 10 s; verifications every 4 s catch a purge before
	// the next renewal would quietly add the mapping back.
	cfg.Lease = 20 * time.Second
	cfg.VerifyInterval = verifyEvery
	cfg.RetryInterval = 500 * time.Millisecond
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	defer c.Close(ctx)

	avail, err := c.Probe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("probe: %+v", avail)
	if !avail.UPnP || !avail.PMP {
		t.Fatalf("miniupnpd not found: %+v\nminiupnpd said:\n%s", avail, site.UPnP().Output())
	}
	if avail.External != site.External {
		t.Errorf("gateway reports external %v, want %v", avail.External, site.External)
	}
	protos := []Protocol{UPnP, PMP}
	if avail.PCP {
		protos = append(protos, PCP)
	} else {
		t.Log("miniupnpd does not answer PCP ANNOUNCE here; PCP not tested in the lab")
	}

	type held struct {
		proto Protocol
		h     *Held
		conn  net.PacketConn
	}
	var hs []held
	for i, p := range protos {
		port := uint16(5555 + i)
		conn, err := n.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var v Verifier = &STUNVerifier{Net: n, Server: lab.STUN, Conn: conn}
		if p == UPnP {
			v = wanVerifier(wan, conn)
		}
		h, err := c.Hold(netip.AddrPortFrom(lan.Addr, port), HoldOptions{Protocols: []Protocol{p}, Verifier: v})
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, held{p, h, conn})
	}

	// Made, verified and renewed (at half the 20 s lease; miniupnpd gives
	// PCP at least 120 s, so PCP is not waited for renewal).
	err = netlab.Wait(ctx, 30*time.Second, func() error {
		for _, x := range hs {
			s := x.h.Status()
			if !s.Active || !s.Verified || (s.Renewals < 1 && x.proto != PCP) {
				return fmt.Errorf("%s: %+v", x.proto, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("mappings not made, verified and renewed: %v\nminiupnpd said:\n%s", err, site.UPnP().Output())
	}
	before := map[Protocol]MappingStatus{}
	for _, x := range hs {
		s := x.h.Status()
		before[x.proto] = s
		t.Logf("%s: %v -> %v, lease until %v, %d renewals, %d verifications", x.proto, s.External, s.Internal,
			s.GoodUntil.Format(time.TimeOnly), s.Renewals, s.Verifications)
		if s.External.Addr() != site.External {
			t.Errorf("%s mapping's external address %v is not the site's %v", x.proto, s.External, site.External)
		}
		if s.Permanent {
			t.Errorf("%s mapping is permanent; miniupnpd grants finite leases", x.proto)
		}
	}

	// The router forgets everything.
	if err := site.RestartUPnP(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	err = netlab.Wait(ctx, 3*verifyEvery, func() error {
		for _, x := range hs {
			s := x.h.Status()
			if s.Recreations < 1 || !s.Verified || !s.Active {
				return fmt.Errorf("%s: %+v", x.proto, s)
			}
		}
		return nil
	})
	took := time.Since(restarted)
	if err != nil {
		t.Fatalf("purged mappings not made again: %v", err)
	}
	t.Logf("all mappings made again %v after the restart", took)
	// One verification interval, plus the time one failing verification
	// may take (3 x RequestTimeout) and the time to map again.
	if limit := verifyEvery + 3*cfg.RequestTimeout + cfg.RequestTimeout; took > limit {
		t.Errorf("re-creation took %v, more than one verification interval (%v with the check's own time)", took, limit)
	}

	exts := map[Protocol]netip.AddrPort{}
	for _, x := range hs {
		exts[x.proto] = x.h.Status().External
	}
	if err := c.Close(ctx); err != nil {
		t.Fatalf("releasing: %v", err)
	}
	for _, x := range hs {
		if s := x.h.Status(); s.Active {
			t.Errorf("%s still active after Close: %+v", x.proto, s)
		}
		vctx, vcancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		err := wanVerifier(wan, x.conn).Verify(vctx, exts[x.proto])
		vcancel()
		if err == nil {
			t.Errorf("%s mapping %v still forwards after Close", x.proto, exts[x.proto])
		}
	}
	out, _ := lan.Run(ctx, "upnpc", "-i", "-l")
	if strings.Contains(out, cfg.Description) {
		t.Errorf("miniupnpd still lists our mappings after Close:\n%s", out)
	}
}
