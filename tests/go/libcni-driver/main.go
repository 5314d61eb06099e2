// Command libcni-driver drives CNI plugins through Go's libcni, the library
// containerd, CRI-O and podman use, so tests can prove that pycni's plugins
// interoperate with a real runtime library rather than only with our own
// Python harness.
//
//	libcni-driver add|check|del --conf FILE --netns PATH --id ID \
//	    --ifname IF --cni-path DIR[:DIR...] --cache-dir DIR
//
// FILE may be a .conflist (network list) or a single-plugin .conf, which is
// wrapped into a list exactly as runtimes do.  On success ADD prints the
// result JSON on stdout; CHECK and DEL print nothing.  On failure the
// command exits 1 and writes a JSON object {"error": ..., "code": ...,
// "msg": ..., "details": ...} on stderr (code/msg/details are present when
// the plugin returned a CNI error).  Usage errors exit 2.
//
// Build (GOPATH mode, Debian's golang-github-appc-cni-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode:$TMP GOCACHE=$TMP/cache \
//	    go build -o libcni-driver .
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(err error) {
	out := map[string]interface{}{"error": err.Error()}
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		out["code"] = cniErr.Code
		out["msg"] = cniErr.Msg
		if cniErr.Details != "" {
			out["details"] = cniErr.Details
		}
	}
	b, _ := json.Marshal(out)
	fmt.Fprintln(os.Stderr, string(b))
	os.Exit(1)
}

func usage(msg string) {
	fmt.Fprintf(os.Stderr, "libcni-driver: %s\nusage: libcni-driver add|check|del --conf FILE --netns PATH --id ID --ifname IF --cni-path DIR --cache-dir DIR\n", msg)
	os.Exit(2)
}

func loadList(path string) (*libcni.NetworkConfigList, error) {
	if strings.HasSuffix(path, ".conflist") {
		return libcni.ConfListFromFile(path)
	}
	conf, err := libcni.ConfFromFile(path)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromConf(conf)
}

func main() {
	if len(os.Args) < 2 {
		usage("missing command")
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet("libcni-driver "+cmd, flag.ExitOnError)
	confPath := fs.String("conf", "", "network config (.conflist or .conf)")
	netns := fs.String("netns", "", "network namespace path")
	id := fs.String("id", "", "container ID")
	ifname := fs.String("ifname", "eth0", "interface name inside the container")
	cniPath := fs.String("cni-path", "", "plugin directories, ':'-separated")
	cacheDir := fs.String("cache-dir", "", "libcni result cache directory")
	timeout := fs.Duration("timeout", 60*time.Second, "overall timeout")
	if err := fs.Parse(os.Args[2:]); err != nil {
		usage(err.Error())
	}
	if fs.NArg() != 0 {
		usage("unexpected arguments: " + strings.Join(fs.Args(), " "))
	}
	if *confPath == "" || *id == "" || *cniPath == "" || *cacheDir == "" {
		usage("--conf, --id, --cni-path and --cache-dir are required")
	}

	list, err := loadList(*confPath)
	if err != nil {
		fail(fmt.Errorf("loading %s: %w", *confPath, err))
	}
	cninet := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(*cniPath), *cacheDir, nil)
	rt := &libcni.RuntimeConf{
		ContainerID: *id,
		NetNS:       *netns,
		IfName:      *ifname,
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	switch cmd {
	case "add":
		result, err := cninet.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := result.PrintTo(os.Stdout); err != nil {
			fail(fmt.Errorf("printing result: %w", err))
		}
		fmt.Println()
	case "check":
		if err := cninet.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cninet.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		usage("unknown command " + cmd)
	}
}
