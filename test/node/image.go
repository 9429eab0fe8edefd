package node

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
)

// Image is a one-layer image holding a single static binary, as a
// distroless image of it would, with no registry involved.
type Image struct {
	// Tag names it, for example meshcert.test/pause:1. A tag other than
	// latest keeps the kubelet from pulling it.
	Tag string
	// Binary is the file on this machine that the image holds.
	Binary string
	// Path is where it lives in the image, and its entrypoint.
	Path string
	// Others are more files the image holds, each by its path in the
	// image, from the file on this machine: the programs an entrypoint
	// runs, as kuma-dp runs envoy.
	Others map[string]string
	// User is the image's user, uid:gid; empty is root.
	User string
}

// WriteImageTar writes img as `docker save` does: a layer tar, a config, and
// manifest.json naming both with the tag.
func WriteImageTar(w io.Writer, img Image) error {
	files := map[string]string{img.Path: img.Binary}
	maps.Copy(files, img.Others)
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	dirs := map[string]bool{}
	for _, path := range slices.Sorted(maps.Keys(files)) {
		name := strings.TrimPrefix(path, "/")
		if err := writeParents(lw, name, dirs); err != nil {
			return err
		}
		binary, err := os.ReadFile(files[path])
		if err != nil {
			return err
		}
		if err := lw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: int64(len(binary)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := lw.Write(binary); err != nil {
			return err
		}
	}
	if err := lw.Close(); err != nil {
		return err
	}
	layerDigest := sha256.Sum256(layer.Bytes())
	layerID := hex.EncodeToString(layerDigest[:])

	imageConfig := map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{"User": img.User, "Entrypoint": []string{img.Path}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerID}},
		"history":      []map[string]string{{"created_by": "meshcert test/node"}},
	}
	configJSON, err := json.Marshal(imageConfig)
	if err != nil {
		return err
	}
	configDigest := sha256.Sum256(configJSON)
	configName := hex.EncodeToString(configDigest[:]) + ".json"

	manifest, err := json.Marshal([]map[string]any{{
		"Config":   configName,
		"RepoTags": []string{img.Tag},
		"Layers":   []string{layerID + "/layer.tar"},
	}})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	for _, f := range []struct {
		name string
		data []byte
	}{
		{layerID + "/layer.tar", layer.Bytes()},
		{configName, configJSON},
		{"manifest.json", manifest},
	} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

// writeParents writes the folders above name that the layer lacks yet.
func writeParents(w *tar.Writer, name string, written map[string]bool) error {
	dir := filepath.Dir(name)
	if dir == "." || written[dir] {
		return nil
	}
	if err := writeParents(w, dir, written); err != nil {
		return err
	}
	written[dir] = true
	return w.WriteHeader(&tar.Header{Name: dir + "/", Mode: 0o755, Typeflag: tar.TypeDir})
}

// BuildStatic builds the Go package pkg into out as the Dockerfile builds
// meshcert: static, without paths or symbols.
func BuildStatic(ctx context.Context, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %v: %s", pkg, err, b)
	}
	return nil
}
