// Command workload is the tests' workload: it watches its X.509 SVID over the
// SPIFFE Workload API with go-spiffe's client, logs each one it gets, and
// serves what it holds over HTTP for the test to read from the node.
//
// With -once it fetches one SVID and exits, printing it or the error: the
// tests' attacker runs it on the node, outside any pod.
package main

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshcert/meshcert/test/node/workload/status"
)

type workload struct {
	mu sync.Mutex
	s  status.Status
}

func (w *workload) OnX509ContextUpdate(c *workloadapi.X509Context) {
	svid, ok := c.DefaultSVID(), len(c.SVIDs) > 0
	if !ok {
		return
	}
	leaf := svid.Certificates[0]
	var chain []byte
	for _, cert := range svid.Certificates {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	var bundle []byte
	if b, err := c.Bundles.GetX509BundleForTrustDomain(svid.ID.TrustDomain()); err == nil {
		bundle = pemOf(b)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	if w.s.FirstSVID.IsZero() {
		w.s.FirstSVID = now
	} else if now.After(w.s.NotAfter) {
		w.s.Lapses++
	}
	w.s.ID, w.s.Serial, w.s.NotAfter = svid.ID.String(), leaf.SerialNumber.String(), leaf.NotAfter
	w.s.Chain, w.s.Bundle = string(chain), string(bundle)
	w.s.Updates++
	log.Printf("svid id=%s serial=%s notAfter=%s", w.s.ID, w.s.Serial, leaf.NotAfter.Format(time.RFC3339))
}

func (w *workload) OnX509ContextWatchError(err error) {
	w.mu.Lock()
	w.s.StreamErrors++
	w.s.LastError = err.Error()
	w.mu.Unlock()
	log.Printf("watch error: %v", err)
}

func pemOf(b *x509bundle.Bundle) []byte {
	var out []byte
	for _, cert := range b.X509Authorities() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	return out
}

func main() {
	addr := flag.String("addr", os.Getenv("SPIFFE_ENDPOINT_SOCKET"), "the Workload API's address, unix:///<path>")
	listen := flag.String("listen", ":8080", "where to serve /svid")
	once := flag.Bool("once", false, "fetch one SVID, print it and exit")
	noSVID := flag.Bool("no-svid", false, "serve /svid without asking for an SVID: the baseline pods")
	flag.Parse()
	w := &workload{s: status.Status{Started: time.Now()}}

	if *once {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(*addr))
		if err != nil {
			fmt.Println("refused:", err)
			os.Exit(1)
		}
		fmt.Println("svid:", svid.ID)
		return
	}

	if !*noSVID {
		go func() {
			client, err := workloadapi.New(context.Background(), workloadapi.WithAddr(*addr))
			if err != nil {
				log.Fatal(err)
			}
			// It retries with backoff until the program ends.
			err = client.WatchX509Context(context.Background(), w)
			log.Fatalf("the watch ended: %v", err)
		}()
	}
	http.HandleFunc("/svid", func(rw http.ResponseWriter, _ *http.Request) {
		w.mu.Lock()
		s := w.s
		w.mu.Unlock()
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(s)
	})
	srv := &http.Server{Addr: *listen, ReadHeaderTimeout: 5 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
