package config

import (
	"bufio"
	"bytes"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

var durationType = reflect.TypeOf(time.Duration(0))

// decode applies the file's settings to c. The first bad line ends it: a
// refused file changes nothing, because Parse works on a copy.
func decode(name string, data []byte, c *Config) error {
	if !utf8.Valid(data) {
		return &Error{File: name, Reason: "not UTF-8 text"}
	}
	root := reflect.ValueOf(c).Elem()
	sections := map[string]reflect.Value{}
	for i := range root.NumField() {
		if tag := root.Type().Field(i).Tag.Get("conf"); tag != "" && tag != "-" {
			sections[tag] = root.Field(i)
		}
	}
	var section string
	var cur reflect.Value
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		fail := func(format string, args ...any) error {
			return &Error{File: name, Line: line, Reason: fmt.Sprintf(format, args...)}
		}
		if text[0] == '[' {
			if !strings.HasSuffix(text, "]") {
				return fail("section header %q has no closing ]", text)
			}
			section = strings.TrimSpace(text[1 : len(text)-1])
			v, ok := sections[section]
			if !ok {
				return fail("unknown section [%s] (known: %s)", section, known(sections))
			}
			cur = v
			continue
		}
		key, value, ok := strings.Cut(text, "=")
		if !ok {
			return fail("want key = value, got %q", text)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if !cur.IsValid() {
			return fail("%s is outside any [section]", key)
		}
		fields := map[string]reflect.Value{}
		for i := range cur.NumField() {
			if tag := cur.Type().Field(i).Tag.Get("conf"); tag != "" {
				fields[tag] = cur.Field(i)
			}
		}
		f, ok := fields[key]
		if !ok {
			return fail("unknown key %q in [%s] (known: %s)", key, section, known(fields))
		}
		full := section + "." + key
		if prev, dup := seen[full]; dup {
			return fail("%s is set twice (first on line %d)", key, prev)
		}
		seen[full] = line
		if err := set(f, unquote(value)); err != nil {
			return fail("%s: %v", full, err)
		}
		c.lines[full] = line
	}
	if err := sc.Err(); err != nil {
		return &Error{File: name, Line: line + 1, Reason: err.Error()}
	}
	return nil
}

func set(f reflect.Value, value string) error {
	switch {
	case f.Type() == durationType:
		d, err := time.ParseDuration(value)
		if err != nil {
			return fmt.Errorf("%q is not a duration such as 30s or 5m", value)
		}
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(value)
	case f.Kind() == reflect.Int:
		n, err := strconv.Atoi(value)
		if err != nil {
			return fmt.Errorf("%q is not a whole number", value)
		}
		f.SetInt(int64(n))
	case f.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(value)
		if err != nil {
			return fmt.Errorf("%q is not true or false", value)
		}
		f.SetBool(b)
	case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String:
		var items []string
		for _, it := range strings.Split(value, ",") {
			if it = strings.TrimSpace(it); it != "" {
				items = append(items, it)
			}
		}
		f.Set(reflect.ValueOf(items))
	default:
		return fmt.Errorf("unsupported setting type %v", f.Type())
	}
	return nil
}

func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' && v[len(v)-1] == '"' || v[0] == '\'' && v[len(v)-1] == '\'') {
		return v[1 : len(v)-1]
	}
	return v
}

func known(m map[string]reflect.Value) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}
