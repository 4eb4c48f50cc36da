package election

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
)

func TestBoltStoreLogsSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s, err := OpenBoltStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if i, _ := s.FirstIndex(); i != 0 {
		t.Errorf("empty store FirstIndex %d", i)
	}
	var logs []*raft.Log
	for i := uint64(1); i <= 10; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1 + i/5, Type: raft.LogCommand, Data: []byte{byte(i)}})
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(1, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("n2")); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = OpenBoltStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	if first != 4 || last != 10 {
		t.Errorf("after reopen: first %d last %d, want 4 and 10", first, last)
	}
	var l raft.Log
	if err := s.GetLog(7, &l); err != nil || l.Term != 2 || l.Data[0] != 7 {
		t.Errorf("GetLog(7) = %+v, %v", l, err)
	}
	if err := s.GetLog(2, &l); !errors.Is(err, raft.ErrLogNotFound) {
		t.Errorf("GetLog of a deleted entry: %v, want ErrLogNotFound", err)
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 7 {
		t.Errorf("CurrentTerm = %d, %v", v, err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "n2" {
		t.Errorf("LastVoteCand = %q, %v", v, err)
	}
	// Raft tells a missing key from a failure by this exact text.
	if _, err := s.GetUint64([]byte("nothing")); err == nil || err.Error() != "not found" {
		t.Errorf("missing key: %v", err)
	}
}

func TestBoltStoreRefusesASecondOpener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s, err := OpenBoltStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := OpenBoltStore(path); err == nil {
		s2.Close()
		t.Fatal("a second daemon opened the same raft store")
	}
}
