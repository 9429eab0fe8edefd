package agent

import (
	"context"
	"fmt"
	"reflect"
	"time"

	"golang.org/x/sync/singleflight"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// sharedReadTimeout bounds a read that several calls wait for: it is not
// ended by the call that started it, which may give up first.
const sharedReadTimeout = 30 * time.Second

// SharedReads is a reader whose Gets of one object, while one is in flight,
// share it: however many calls a workload opens at once, its Dataplane is
// read from the API server once at a time. Each call still waits no longer
// than its own context.
func SharedReads(r client.Reader) client.Reader {
	return &sharedReads{Reader: r}
}

type sharedReads struct {
	client.Reader
	inFlight singleflight.Group
}

func (s *sharedReads) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if len(opts) > 0 {
		// A read with options is not shared: it may differ from another of the object.
		return s.Reader.Get(ctx, key, obj, opts...)
	}
	shared := context.WithoutCancel(ctx)
	done := s.inFlight.DoChan(fmt.Sprintf("%T %s", obj, key), func() (any, error) {
		ctx, cancel := context.WithTimeout(shared, sharedReadTimeout)
		defer cancel()
		read := obj.DeepCopyObject().(client.Object)
		return read, s.Reader.Get(ctx, key, read)
	})
	select {
	case r := <-done:
		if r.Err != nil {
			return r.Err
		}
		// Every caller gets a copy of its own, as from a cache.
		reflect.ValueOf(obj).Elem().Set(reflect.ValueOf(r.Val.(client.Object).DeepCopyObject()).Elem())
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
