package control

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Render prints a control API answer for people: an object as aligned
// "key  value" lines, an array of objects as a compact aligned table (one
// column per key, in the order the daemon sent them), nested the same way.
// Field order is kept from the JSON, so the daemon decides the layout.
func Render(w io.Writer, raw []byte) error {
	v, err := decodeOrdered(raw)
	if err != nil {
		return fmt.Errorf("decoding the daemon's answer: %w", err)
	}
	return render(w, v, "")
}

type field struct {
	key string
	val any
}

type object []field

func decodeOrdered(raw []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return decodeValue(dec)
}

func decodeValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			var o object
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				o = append(o, field{kt.(string), v})
			}
			_, err := dec.Token()
			return o, err
		case '[':
			var a []any
			for dec.More() {
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			_, err := dec.Token()
			return a, err
		}
	}
	return tok, nil
}

func render(w io.Writer, v any, indent string) error {
	switch t := v.(type) {
	case object:
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		var nested []field
		for _, f := range t {
			if isScalar(f.val) || isScalarList(f.val) {
				fmt.Fprintf(tw, "%s%s\t%s\n", indent, label(f.key), scalar(f.val))
			} else {
				nested = append(nested, f)
			}
		}
		tw.Flush()
		for _, f := range nested {
			fmt.Fprintf(w, "\n%s%s:\n", indent, label(f.key))
			if err := render(w, f.val, indent+"  "); err != nil {
				return err
			}
		}
	case []any:
		if len(t) == 0 {
			fmt.Fprintf(w, "%s(none)\n", indent)
			return nil
		}
		var cols []string
		seen := map[string]bool{}
		for _, row := range t {
			o, ok := row.(object)
			if !ok {
				fmt.Fprintf(w, "%s%s\n", indent, scalar(row))
				continue
			}
			for _, f := range o {
				if !seen[f.key] {
					seen[f.key] = true
					cols = append(cols, f.key)
				}
			}
		}
		if len(cols) == 0 {
			return nil
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		head := make([]string, len(cols))
		for i, c := range cols {
			head[i] = strings.ToUpper(label(c))
		}
		fmt.Fprintf(tw, "%s%s\n", indent, strings.Join(head, "\t"))
		for _, row := range t {
			o, ok := row.(object)
			if !ok {
				continue
			}
			cells := make([]string, len(cols))
			for i, c := range cols {
				cells[i] = "-"
				for _, f := range o {
					if f.key == c {
						cells[i] = scalar(f.val)
					}
				}
			}
			fmt.Fprintf(tw, "%s%s\n", indent, strings.Join(cells, "\t"))
		}
		tw.Flush()
	default:
		fmt.Fprintf(w, "%s%s\n", indent, scalar(v))
	}
	return nil
}

func label(key string) string { return strings.ReplaceAll(key, "_", " ") }

func isScalar(v any) bool {
	switch v.(type) {
	case object, []any:
		return false
	}
	return true
}

func isScalarList(v any) bool {
	a, ok := v.([]any)
	if !ok {
		return false
	}
	for _, x := range a {
		if !isScalar(x) {
			return false
		}
	}
	return true
}

func scalar(v any) string {
	switch t := v.(type) {
	case nil:
		return "-"
	case string:
		if t == "" {
			return "-"
		}
		return t
	case json.Number:
		if f, err := t.Float64(); err == nil && strings.Contains(t.String(), ".") {
			return strconv.FormatFloat(f, 'f', 1, 64)
		}
		return t.String()
	case bool:
		if t {
			return "yes"
		}
		return "no"
	case []any:
		parts := make([]string, len(t))
		for i, x := range t {
			parts[i] = scalar(x)
		}
		if len(parts) == 0 {
			return "-"
		}
		return strings.Join(parts, ", ")
	case object:
		var parts []string
		for _, f := range t {
			parts = append(parts, f.key+"="+scalar(f.val))
		}
		return strings.Join(parts, " ")
	}
	return fmt.Sprint(v)
}
