// Package control is the daemon's local control API: JSON over HTTP on a
// Unix socket that only root and the superpeer group may open. The ops
// subcommands (status, pinholes, peers, overlay, nat, discover) are its
// clients.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Handler answers one query with a value that is encoded as JSON.
type Handler func(ctx context.Context, r *http.Request) (any, error)

// UnavailableError says that a capability is not there (not built into
// this daemon, or not running on this node, e.g. the overlay on a peer
// that is not a superpeer). Clients exit with ExitUnavailable.
type UnavailableError struct{ What, Why string }

func (e *UnavailableError) Error() string { return e.What + ": " + e.Why }

// Server serves the control API on a Unix socket.
type Server struct {
	mux *http.ServeMux
	srv *http.Server
	ln  net.Listener
	log *slog.Logger
}

// NewServer returns a server with no handlers.
func NewServer(log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{mux: http.NewServeMux(), log: log}
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 5 * time.Second}
	return s
}

// Handle registers h for GET (or POST, when post is true) of path.
func (s *Server) Handle(method, path string, h Handler) {
	s.mux.HandleFunc(method+" "+path, func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		v, err := h(ctx, r)
		w.Header().Set("Content-Type", "application/json")
		if err != nil {
			code := http.StatusInternalServerError
			var ue *UnavailableError
			if errors.As(err, &ue) {
				code = http.StatusNotImplemented
			}
			w.WriteHeader(code)
			json.NewEncoder(w).Encode(apiError{Error: err.Error()})
			return
		}
		json.NewEncoder(w).Encode(v)
	})
}

type apiError struct {
	Error string `json:"error"`
}

// Listen opens the socket at path with mode 0660, group group when that
// group exists, replacing a stale socket that no daemon answers on.
func (s *Server) Listen(path, group string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another daemon is answering on it", path)
	}
	os.Remove(path)
	old := syscall.Umask(0o117)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if group != "" {
		if g, err := user.LookupGroup(group); err == nil {
			if gid, err := strconv.Atoi(g.Gid); err == nil {
				os.Chown(path, -1, gid)
			}
		}
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	s.ln = ln
	return nil
}

// Serve serves until Close.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops serving and removes the socket.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if s.ln != nil {
		os.Remove(s.ln.Addr().String())
	}
	return err
}

// Exit codes of the ops subcommands, for scripts.
const (
	ExitOK          = 0
	ExitError       = 1 // the daemon answered with an error, or output failed
	ExitUsage       = 2 // bad flags or arguments
	ExitNoDaemon    = 3 // no daemon answers on the control socket
	ExitUnavailable = 4 // the daemon does not have this capability (yet)
)

// Client talks to a daemon's control socket.
type Client struct {
	Socket string
	hc     *http.Client
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client {
	return &Client{Socket: path, hc: &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}}
}

// NoDaemonError means nothing answered on the socket.
type NoDaemonError struct {
	Socket string
	Err    error
}

func (e *NoDaemonError) Error() string {
	return fmt.Sprintf("no superpeer daemon answers on %s (is `superpeer run` running, and may you open its socket?): %v", e.Socket, e.Err)
}

func (e *NoDaemonError) Unwrap() error { return e.Err }

// Get fetches path into out (a pointer) or, when out is a *json.RawMessage,
// keeps the raw JSON.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, out)
}

// Post sends a POST with no body and decodes the answer into out.
func (c *Client) Post(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodPost, path, out)
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://superpeer"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return &NoDaemonError{Socket: c.Socket, Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("reading %s from the daemon: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var ae apiError
		json.Unmarshal(body, &ae)
		if ae.Error == "" {
			ae.Error = resp.Status
		}
		if resp.StatusCode == http.StatusNotImplemented {
			return &UnavailableError{What: "daemon", Why: ae.Error}
		}
		return fmt.Errorf("daemon: %s", ae.Error)
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], body...)
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decoding %s from the daemon: %w", path, err)
	}
	return nil
}

// ExitCode maps an error from Client to the exit code a script sees.
func ExitCode(err error) int {
	var nd *NoDaemonError
	var ue *UnavailableError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &nd):
		return ExitNoDaemon
	case errors.As(err, &ue):
		return ExitUnavailable
	}
	return ExitError
}
