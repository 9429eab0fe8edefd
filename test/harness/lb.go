package harness

import (
	"io"
	"net"
	"sync"
)

// LoadBalancer stands in for a Service in front of webhook replicas: it
// forwards each TCP connection to the next of its backends, round robin,
// skipping those that refuse. Remove takes a backend out, as the endpoints
// controller does for a terminating pod; its open connections go on.
type LoadBalancer struct {
	listener net.Listener
	mu       sync.Mutex
	backends []string
	next     int
	wg       sync.WaitGroup
}

// NewLoadBalancer listens on addr.
func NewLoadBalancer(addr string, backends ...string) (*LoadBalancer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	lb := &LoadBalancer{listener: l, backends: backends}
	lb.wg.Add(1)
	go lb.serve()
	return lb, nil
}

// Addr is where it listens.
func (lb *LoadBalancer) Addr() string { return lb.listener.Addr().String() }

// Remove takes a backend out of rotation.
func (lb *LoadBalancer) Remove(backend string) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for i, b := range lb.backends {
		if b == backend {
			lb.backends = append(lb.backends[:i], lb.backends[i+1:]...)
			return
		}
	}
}

// Close stops listening; open connections end with their ends.
func (lb *LoadBalancer) Close() error {
	err := lb.listener.Close()
	lb.wg.Wait()
	return err
}

func (lb *LoadBalancer) serve() {
	defer lb.wg.Done()
	for {
		conn, err := lb.listener.Accept()
		if err != nil {
			return
		}
		go lb.forward(conn)
	}
}

func (lb *LoadBalancer) forward(client net.Conn) {
	defer client.Close()
	lb.mu.Lock()
	candidates := append([]string(nil), lb.backends...)
	start := lb.next
	lb.next++
	lb.mu.Unlock()
	for i := range candidates {
		backend, err := net.Dial("tcp", candidates[(start+i)%len(candidates)])
		if err != nil {
			continue
		}
		defer backend.Close()
		done := make(chan struct{}, 2)
		go func() { _, _ = io.Copy(backend, client); done <- struct{}{} }()
		go func() { _, _ = io.Copy(client, backend); done <- struct{}{} }()
		<-done
		return
	}
}
