package superpeer

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/pion/transport/v5"

	"github.com/superpeer/superpeer/nat/probe"
)

// NATCheck is `superpeer nat --stun HOST:PORT [--lifetime]`: it asks an
// RFC 5780 STUN server from this host, without a daemon, and prints what it
// learnt for people or as JSON.
type NATCheck struct {
	// Server is the RFC 5780 STUN server, host:port.
	Server string
	// Lifetime also measures the UDP binding lifetime (both conntrack
	// states); it takes a little longer than the longest lifetime.
	Lifetime bool
	// MaxLifetime is the longest lifetime probed (default 10 minutes).
	MaxLifetime time.Duration
	// JSON prints {"behaviour": ..., "lifetime": ...} instead of tables.
	JSON bool
	// Net opens the sockets; nil means the host's network.
	Net transport.Net
}

// Run runs the check and prints the result to w.
func (c NATCheck) Run(ctx context.Context, w io.Writer) error {
	cfg := probe.DefaultConfig()
	cfg.Server = c.Server
	cfg.Net = c.Net
	cfg.Logger = discardLogger()
	if err := cfg.Validate(); err != nil {
		return err
	}
	rep, err := probe.Discover(ctx, cfg)
	if err != nil {
		return fmt.Errorf("NAT behaviour discovery against %s: %w", c.Server, err)
	}
	var life *probe.LifetimeReport
	if c.Lifetime {
		lc := probe.DefaultLifetimeConfig()
		if c.MaxLifetime > 0 {
			lc.Max = c.MaxLifetime
		}
		life, err = probe.MeasureLifetime(ctx, cfg, lc)
		if err != nil {
			return fmt.Errorf("binding-lifetime measurement against %s: %w", c.Server, err)
		}
	}
	if c.JSON {
		return json.NewEncoder(w).Encode(struct {
			Behaviour *probe.Report         `json:"behaviour"`
			Lifetime  *probe.LifetimeReport `json:"lifetime,omitempty"`
		}{rep, life})
	}
	if err := rep.Format(w); err != nil {
		return err
	}
	if life != nil {
		fmt.Fprintln(w)
		return life.Format(w)
	}
	return nil
}
