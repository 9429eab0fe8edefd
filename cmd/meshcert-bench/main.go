// Command meshcert-bench measures meshcert against baselines in the same run
// and writes the table to bench/results.md. `make bench` runs it.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/meshcert/meshcert/internal/bench"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == "load" {
		// A load run of the bench, in a process of its own.
		if err := bench.Load(ctrl.SetupSignalHandler(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "meshcert-bench load: %v\n", err)
			os.Exit(1)
		}
		return
	}
	// The bench's own informers log only what goes wrong.
	ctrl.SetLogger(zap.New(zap.Level(zapcore.ErrorLevel)))
	quick := flag.Bool("quick", false, "Run every measure at a small size, in a few minutes.")
	results := flag.String("results", "bench/results.md", "Where to write the results table; empty for none.")
	only := flag.String("only", "", "Comma-separated ids of the measures to run, e.g. P3; all when empty.")
	flag.Parse()
	if err := bench.Run(ctrl.SetupSignalHandler(), bench.Options{Quick: *quick, Out: os.Stdout, Results: *results, Only: onlyIDs(*only)}); err != nil {
		fmt.Fprintf(os.Stderr, "meshcert-bench: %v\n", err)
		os.Exit(1)
	}
}

func onlyIDs(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.ToUpper(s), ",")
}
