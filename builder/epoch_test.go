package builder

import (
	"testing"
	"time"
)

func TestParseSourceDateEpoch(t *testing.T) {
	for _, tc := range []struct {
		in    string
		want  time.Time
		fixed bool
		bad   bool
	}{
		{in: "0", want: time.Unix(0, 0), fixed: true},
		{in: "1700000000", want: time.Unix(1700000000, 0), fixed: true},
		{in: " 1700000000\n", want: time.Unix(1700000000, 0), fixed: true}, // $(cat file)
		{in: "now"},
		{in: "-1", bad: true},
		{in: "1.5", bad: true},
		{in: "", bad: true},
		{in: "yesterday", bad: true},
		{in: "99999999999999", bad: true},
	} {
		got, fixed, err := ParseSourceDateEpoch(tc.in)
		if (err != nil) != tc.bad {
			t.Errorf("%q: err %v, want bad=%v", tc.in, err, tc.bad)
			continue
		}
		if !tc.bad && (fixed != tc.fixed || !got.Equal(tc.want)) {
			t.Errorf("%q: %s fixed=%v, want %s fixed=%v", tc.in, got, fixed, tc.want, tc.fixed)
		}
	}
}
