package election

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// The group's own requests travel over mutual TLS connections of kindRPC
// as length-prefixed JSON frames, one request and one answer at a time.
const (
	rpcJoin      = "join"       // add or update a member (leader)
	rpcApply     = "apply"      // apply a command (leader)
	rpcReadIndex = "read-index" // the leader's commit index after a leader check
	rpcRefresh   = "refresh"    // hold registration refreshes in memory
	rpcLeave     = "leave"      // a member is shutting down (leader)
	rpcPing      = "ping"       // are you there

	maxFrame = 4 << 20
)

type rpcRequest struct {
	Method string          `json:"method"`
	Body   json.RawMessage `json:"body"`
}

type rpcResponse struct {
	Err string `json:"err,omitempty"`
	// NotLeader carries the leader's group address when the request
	// needs the leader and this peer is not it.
	NotLeader  bool            `json:"not_leader,omitempty"`
	LeaderAddr string          `json:"leader_addr,omitempty"`
	Body       json.RawMessage `json:"body,omitempty"`
}

// NotLeaderError is returned for a request that only the leader serves,
// sent to another peer.
type NotLeaderError struct {
	// LeaderAddr is the leader's group address, empty when unknown.
	LeaderAddr string
}

func (e *NotLeaderError) Error() string {
	if e.LeaderAddr == "" {
		return "not the leader, and no leader known"
	}
	return "not the leader; the leader is at " + e.LeaderAddr
}

// RemoteError is a refusal from the peer that served a request.
type RemoteError struct {
	Addr string
	Msg  string
	err  error // the matching local sentinel, if any
}

func (e *RemoteError) Error() string { return fmt.Sprintf("group peer %s: %s", e.Addr, e.Msg) }
func (e *RemoteError) Unwrap() error { return e.err }

func writeFrame(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

func readFrame(r io.Reader, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxFrame {
		return fmt.Errorf("group frame of %d bytes exceeds %d", n, maxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// rpcHandler serves one method; it returns the answer body or an error.
type rpcHandler func(ctx context.Context, body json.RawMessage) (any, error)

// serveRPCConn answers requests on c until it closes or idles out.
// base ends when the node stops.
func serveRPCConn(base context.Context, c net.Conn, idle, timeout time.Duration, handlers map[string]rpcHandler) {
	br := bufio.NewReader(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(idle))
		var req rpcRequest
		if err := readFrame(br, &req); err != nil {
			return
		}
		var resp rpcResponse
		h, ok := handlers[req.Method]
		if !ok {
			resp.Err = "unknown method " + req.Method
		} else {
			ctx, cancel := context.WithTimeout(base, timeout)
			body, err := h(ctx, req.Body)
			cancel()
			var nl *NotLeaderError
			switch {
			case errors.As(err, &nl):
				resp.NotLeader, resp.LeaderAddr = true, nl.LeaderAddr
			case err != nil:
				resp.Err = err.Error()
			default:
				if resp.Body, err = json.Marshal(body); err != nil {
					resp.Err = err.Error()
				}
			}
		}
		_ = c.SetWriteDeadline(time.Now().Add(timeout))
		if err := writeFrame(c, &resp); err != nil {
			return
		}
	}
}

// rpcClient keeps one connection per peer address and sends one request at
// a time on it.
type rpcClient struct {
	dial func(ctx context.Context, addr string) (net.Conn, error)

	mu    sync.Mutex // guards following
	conns map[string]*rpcConn
}

type rpcConn struct {
	mu sync.Mutex // serialises requests on c
	c  net.Conn
	br *bufio.Reader
}

func newRPCClient(dial func(ctx context.Context, addr string) (net.Conn, error)) *rpcClient {
	return &rpcClient{dial: dial, conns: map[string]*rpcConn{}}
}

// call sends method with req to addr and decodes the answer into resp.
// A pooled connection that turns out dead is replaced once.
func (r *rpcClient) call(ctx context.Context, addr, method string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encoding %s request: %w", method, err)
	}
	for attempt := 0; ; attempt++ {
		pc, fresh, err := r.conn(ctx, addr)
		if err != nil {
			return err
		}
		ans, err := pc.roundTrip(ctx, &rpcRequest{Method: method, Body: body})
		if err != nil {
			r.drop(addr, pc)
			if !fresh && attempt == 0 && ctx.Err() == nil {
				continue // the pooled connection had died; try a new one
			}
			return fmt.Errorf("%s request to group peer %s: %w", method, addr, err)
		}
		switch {
		case ans.NotLeader:
			return &NotLeaderError{LeaderAddr: ans.LeaderAddr}
		case ans.Err != "":
			re := &RemoteError{Addr: addr, Msg: ans.Err}
			for _, e := range commandErrors {
				if strings.HasPrefix(ans.Err, e.Error()) {
					re.err = e
				}
			}
			return re
		}
		if resp != nil {
			if err := json.Unmarshal(ans.Body, resp); err != nil {
				return fmt.Errorf("decoding %s answer from %s: %w", method, addr, err)
			}
		}
		return nil
	}
}

func (r *rpcClient) conn(ctx context.Context, addr string) (*rpcConn, bool, error) {
	r.mu.Lock()
	pc := r.conns[addr]
	r.mu.Unlock()
	if pc != nil {
		return pc, false, nil
	}
	c, err := r.dial(ctx, addr)
	if err != nil {
		return nil, true, err
	}
	pc = &rpcConn{c: c, br: bufio.NewReader(c)}
	r.mu.Lock()
	if old := r.conns[addr]; old != nil {
		r.mu.Unlock()
		c.Close()
		return old, false, nil
	}
	r.conns[addr] = pc
	r.mu.Unlock()
	return pc, true, nil
}

func (r *rpcClient) drop(addr string, pc *rpcConn) {
	r.mu.Lock()
	if r.conns[addr] == pc {
		delete(r.conns, addr)
	}
	r.mu.Unlock()
	pc.c.Close()
}

func (r *rpcClient) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for a, pc := range r.conns {
		pc.c.Close()
		delete(r.conns, a)
	}
}

func (pc *rpcConn) roundTrip(ctx context.Context, req *rpcRequest) (*rpcResponse, error) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Minute)
	}
	_ = pc.c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = pc.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := writeFrame(pc.c, req); err != nil {
		return nil, err
	}
	var resp rpcResponse
	if err := readFrame(pc.br, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}
