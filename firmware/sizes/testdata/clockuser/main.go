// Command clockuser is a small program for the sizes tests: the standard
// library and one package of this module.
package main

import (
	"fmt"
	"time"

	"github.com/superpeer/superpeer/nat/clock"
)

func main() {
	f := clock.NewFake(time.Unix(0, 0))
	f.AfterFunc(time.Second, func() { fmt.Println("fired") })
	f.Advance(2 * time.Second)
	fmt.Println(f.Timers())
}
