package node

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestWriteImageTar(t *testing.T) {
	binary := filepath.Join(t.TempDir(), "meshcert")
	if err := os.WriteFile(binary, []byte("\x7fELF static"), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteImageTar(&buf, Image{Tag: "meshcert.test/meshcert:1", Binary: binary, Path: "/meshcert", User: "65532:65532"}); err != nil {
		t.Fatal(err)
	}
	files := untar(t, buf.Bytes())
	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest) != 1 || len(manifest[0].Layers) != 1 || len(manifest[0].RepoTags) != 1 || manifest[0].RepoTags[0] != "meshcert.test/meshcert:1" {
		t.Fatalf("manifest.json: %s", files["manifest.json"])
	}
	configJSON := files[manifest[0].Config]
	if sum := sha256.Sum256(configJSON); manifest[0].Config != hex.EncodeToString(sum[:])+".json" {
		t.Errorf("config %s is not named by its digest", manifest[0].Config)
	}
	var config struct {
		Config struct {
			User       string
			Entrypoint []string
			Env        []string
		} `json:"config"`
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(configJSON, &config); err != nil {
		t.Fatal(err)
	}
	if config.Config.User != "65532:65532" || len(config.Config.Entrypoint) != 1 || config.Config.Entrypoint[0] != "/meshcert" || len(config.Config.Env) != 0 {
		t.Errorf("config: %s", configJSON)
	}
	layer := files[manifest[0].Layers[0]]
	if sum := sha256.Sum256(layer); len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Errorf("diff_ids %v do not name the layer", config.RootFS.DiffIDs)
	}
	// The layer holds the binary and nothing else.
	r := tar.NewReader(bytes.NewReader(layer))
	hdr, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	content, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if hdr.Name != "meshcert" || hdr.Mode != 0o755 || string(content) != "\x7fELF static" {
		t.Errorf("layer entry %s mode %o content %q", hdr.Name, hdr.Mode, content)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Errorf("the layer holds more than the binary: %v", err)
	}
}

func untar(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	r := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := r.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatal(err)
		}
		if files[hdr.Name], err = io.ReadAll(r); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWriteImageTarOthers(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"kuma-dp": "kuma-dp", "envoy": "envoy"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	img := Image{Tag: "docker.io/kumahq/kuma-dp:1", Binary: filepath.Join(dir, "kuma-dp"), Path: "/usr/bin/kuma-dp",
		Others: map[string]string{"/usr/bin/envoy": filepath.Join(dir, "envoy")}}
	if err := WriteImageTar(&buf, img); err != nil {
		t.Fatal(err)
	}
	files := untar(t, buf.Bytes())
	var manifest []struct{ Layers []string }
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil || len(manifest) != 1 || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest.json: %s (%v)", files["manifest.json"], err)
	}
	r := tar.NewReader(bytes.NewReader(files[manifest[0].Layers[0]]))
	var got []string
	for {
		hdr, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		content, _ := io.ReadAll(r)
		got = append(got, hdr.Name+"="+string(content))
	}
	// Each folder once, before what it holds.
	want := []string{"usr/=", "usr/bin/=", "usr/bin/envoy=envoy", "usr/bin/kuma-dp=kuma-dp"}
	if !slices.Equal(got, want) {
		t.Errorf("the layer holds %q, want %q", got, want)
	}
}
