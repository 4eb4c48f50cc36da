package election

import (
	"slices"
	"strconv"
	"time"
)

// Services are where a peer serves the LAN, host:port each; empty when it
// does not. Superpeers advertise them by DNS-SD and desktop agents forward
// to them.
type Services struct {
	SIP  string `json:"sip,omitempty"`
	STUN string `json:"stun,omitempty"`
	TURN string `json:"turn,omitempty"`
}

// Member is a peer of the site as the replicated state knows it.
type Member struct {
	ID         string     `json:"id"`
	Addr       string     `json:"addr"`
	Role       Role       `json:"role"`
	Capability Capability `json:"capability"`
	Score      int        `json:"score"`
	Services   Services   `json:"services"`
	// Away: it shut down gracefully and is not elected superpeer until it
	// reports again (every daemon reports when it starts).
	Away bool `json:"away,omitempty"`
}

// SuperpeerSet is the committed set of superpeers.
type SuperpeerSet struct {
	// Epoch is the log index of the command that committed the set; a
	// later set has a larger epoch.
	Epoch uint64 `json:"epoch"`
	// IDs are the superpeers' node IDs, best score first.
	IDs []string `json:"ids"`
	// Members are the superpeers' member records, in the order of IDs
	// (filled in when read; a member missing from the table is absent).
	Members []Member `json:"members,omitempty"`
	// Reason says why the leader changed the set.
	Reason string `json:"reason"`
	// Committed is when the leader proposed the set.
	Committed time.Time `json:"committed"`
}

// Contains reports whether id is in the set.
func (s SuperpeerSet) Contains(id string) bool { return slices.Contains(s.IDs, id) }

// Flow is the connection a binding was registered over (RFC 5626): the
// superpeer that holds it and the addresses of its two ends.
type Flow struct {
	// Superpeer is the node ID of the superpeer that holds the flow.
	Superpeer string `json:"superpeer"`
	// Transport is udp, tcp, tls, ws or wss.
	Transport string `json:"transport"`
	// Remote is the phone's address as the superpeer sees it (received
	// and rport, RFC 3581).
	Remote string `json:"remote"`
	// Local is the superpeer's address the flow arrived on.
	Local string `json:"local"`
	// Token is the RFC 5626 flow token, if the registrar issued one.
	Token string `json:"token,omitempty"`
}

// Binding is one contact registered for an address of record.
type Binding struct {
	AOR     string `json:"aor"`
	Contact string `json:"contact"`
	// InstanceID and RegID identify an RFC 5626 registration; when
	// InstanceID is set they, not the Contact URI, identify the binding.
	InstanceID string   `json:"instance_id,omitempty"`
	RegID      int      `json:"reg_id,omitempty"`
	Q          int      `json:"q,omitempty"` // q-value in thousandths
	Path       []string `json:"path,omitempty"`
	CallID     string   `json:"call_id,omitempty"`
	CSeq       uint32   `json:"cseq,omitempty"`
	Flow       Flow     `json:"flow"`
	// Expires is when the binding lapses unless refreshed.
	Expires time.Time `json:"expires"`
	// Index is the log index of the put that created this version of the
	// binding; the store sets it. Refreshes name it, so a refresh never
	// revives a binding that was removed and put again meanwhile.
	Index uint64 `json:"index"`
	// Outbound says the phone registered with RFC 5626 outbound: requests
	// go over Flow, never to the Contact address.
	Outbound bool `json:"outbound,omitempty"`
	// Registered is when a REGISTER last wrote this binding (a refresh
	// moves only Expires).
	Registered time.Time `json:"registered,omitzero"`
}

// Key identifies a binding within its AOR: the instance and reg-id for an
// RFC 5626 registration, the Contact URI otherwise.
func (b Binding) Key() string {
	if b.InstanceID != "" {
		return b.InstanceID + ";reg-id=" + strconv.Itoa(b.RegID)
	}
	return b.Contact
}

func (b Binding) clone() Binding {
	b.Path = slices.Clone(b.Path)
	return b
}

// TURNSecret is the shared secret of the site's TURN servers (the TURN
// REST credential scheme): credentials made with Current or Previous are
// accepted, so a rotation does not break calls in progress.
type TURNSecret struct {
	Current  []byte    `json:"current"`
	Previous []byte    `json:"previous,omitempty"`
	Rotated  time.Time `json:"rotated"`
}

// OverlayRecord is a record the site's superpeers publish into the overlay
// (the value is opaque here; overlay/ signs and stores it).
type OverlayRecord struct {
	Key     string    `json:"key"`
	Value   []byte    `json:"value"`
	Expires time.Time `json:"expires"`
}

// SiteConfig is the configuration every peer of the site shares.
type SiteConfig struct {
	// Domain is the SIP domain of the site's own AORs.
	Domain string `json:"domain,omitempty"`
	// SuperpeerCount overrides Config.SuperpeerCount when positive.
	SuperpeerCount int `json:"superpeer_count,omitempty"`
	// Settings carries the other parts' site-wide settings.
	Settings map[string]string `json:"settings,omitempty"`
}
