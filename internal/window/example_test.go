package window_test

import (
	"fmt"
	"time"

	"github.com/limiterd/limiterd/internal/window"
)

func Example() {
	rate := window.MustRate(3, time.Minute, 60) // 3 per minute, 1s steps
	var w window.Sliding
	start := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	for i := range 4 {
		now := start.Add(time.Duration(i) * 10 * time.Second)
		d := w.Allow(&rate, now, 1)
		fmt.Printf("call %d at +%v: allowed=%v remaining=%d retry_after=%v\n",
			i+1, now.Sub(start), d.Allowed, d.Remaining, d.RetryAfter)
	}
	// The first hit leaves the window one minute and one step after it
	// was made: the 4th call fits at +61s.
	d := w.Allow(&rate, start.Add(61*time.Second), 1)
	fmt.Printf("call 4 again at +1m1s: allowed=%v remaining=%d\n", d.Allowed, d.Remaining)
	// Output:
	// call 1 at +0s: allowed=true remaining=2 retry_after=0s
	// call 2 at +10s: allowed=true remaining=1 retry_after=0s
	// call 3 at +20s: allowed=true remaining=0 retry_after=0s
	// call 4 at +30s: allowed=false remaining=0 retry_after=31s
	// call 4 again at +1m1s: allowed=true remaining=0
}
