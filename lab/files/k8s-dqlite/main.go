// qrlab-k8s-dqlite: the lab's MicroK8s-shaped dqlite member, the quorum.recovery project's own
// small program (not k8s-dqlite itself), built offline from Debian 12's go-dqlite 1.11.5 sources
// by scripts/build-k8s-dqlite. It keeps its backend directory the way MicroK8s's k8s-dqlite does:
//
//   - the raft files (metadata1/2, segments, snapshots) directly in the backend directory;
//   - info.yaml and cluster.yaml (go-dqlite's app: this node; the members it knows);
//   - cluster.crt / cluster.key: ONE certificate shared by every node, used for TLS both ways;
//   - init.yaml (Address, Cluster): read once at the first start, then removed; only the files
//     k8s-dqlite accepts next to it may exist then (cluster.crt, cluster.key, failure-domain,
//     tuning.yaml), so a member is never initialised over existing state;
//   - update.yaml (Address): at start, the membership is reconfigured to THIS NODE ALONE with that
//     address, info.yaml and cluster.yaml are rewritten and update.yaml is removed (what
//     k8s-dqlite does; a leftover one after a recovery would split the cluster);
//   - failure-domain (an integer) and tuning.yaml (snapshot threshold/trailing, network latency);
//   - localnode.yaml: written at every start once the node is ready, a one-entry list of this node
//     (from info.yaml): the peer file kine is given, so kine asks this node first.
//
// The data lives in the database "k8s", table "kine" (kine's columns: a row per revision). kine
// would serve an etcd API on kine.sock; the lab stands in a tiny HTTP API instead (GET/PUT /KEY,
// the same as dqlite-demo's, so the lab's client and faults drive both shapes alike).
//
//   qrlab-k8s-dqlite serve --storage-dir DIR --api HOST:PORT
//   qrlab-k8s-dqlite check|put --storage-dir DIR --server HOST:PORT --prefix P --count N [--start I] [--size S]
//   qrlab-k8s-dqlite cluster|leader --storage-dir DIR --server HOST:PORT
//
// cluster and leader print what the shell's .cluster (-f json) and .leader print. The lab asks
// with these rather than with the shell: go-dqlite 1.11.5's shell keeps a TLS session cache, and
// with one certificate (one server name) for every node it offers one node's session to the
// next; seen here, its call then hangs whenever the node asked first is not the leader.
//
// check and put talk the dqlite wire protocol over TLS (cluster.crt/key of DIR) to the member at
// --server (the driver asks it for the leader), with no HTTP in between; they print one JSON line.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/canonical/go-dqlite"
	"github.com/canonical/go-dqlite/app"
	"github.com/canonical/go-dqlite/client"
	"github.com/canonical/go-dqlite/driver"
	"github.com/ghodss/yaml"
	"golang.org/x/sys/unix"
)

const database = "k8s"

var schema = []string{
	`CREATE TABLE IF NOT EXISTS kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT,
	   created INTEGER, deleted INTEGER, create_revision INTEGER, prev_revision INTEGER,
	   lease INTEGER, value BLOB, old_value BLOB)`,
	`CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name)`,
	`CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision)`,
}

// a key of the lab's clients is stored under kine's usual prefix
func kineName(key string) string { return "/registry/qrlab/" + key }

const (
	getQuery = `SELECT value FROM kine WHERE name = ? ORDER BY id DESC LIMIT 1`
	putQuery = `INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
	  VALUES (?, 1, 0, 0, COALESCE((SELECT MAX(id) FROM kine WHERE name = ?), 0), 0, ?, NULL)`
)

// files k8s-dqlite accepts in a backend directory it is asked to initialise
var initFiles = map[string]bool{"cluster.crt": true, "cluster.key": true, "init.yaml": true,
	"failure-domain": true, "tuning.yaml": true}

type initConfig struct {
	Address string   `json:"Address"`
	Cluster []string `json:"Cluster"`
}

type updateConfig struct {
	Address string `json:"Address"`
}

type tuningConfig struct {
	Snapshot *struct {
		Threshold uint64 `json:"threshold"`
		Trailing  uint64 `json:"trailing"`
	} `json:"snapshot"`
	NetworkLatency *string `json:"network-latency"`
}

func exists(dir, name string) bool {
	_, err := os.Stat(filepath.Join(dir, name))
	return err == nil
}

func readYAML(dir, name string, out interface{}) error {
	data, err := ioutil.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func writeYAML(dir, name string, in interface{}) error {
	data, err := yaml.Marshal(in)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := ioutil.WriteFile(tmp, data, 0600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, name))
}

func clusterTLS(dir string) (tls.Certificate, *x509.CertPool, error) {
	crt, key := filepath.Join(dir, "cluster.crt"), filepath.Join(dir, "cluster.key")
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		return pair, nil, fmt.Errorf("load cluster.crt and cluster.key: %w", err)
	}
	pem, err := ioutil.ReadFile(crt)
	if err != nil {
		return pair, nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return pair, nil, fmt.Errorf("cluster.crt holds no certificate")
	}
	return pair, pool, nil
}

func serve(dir, api string) error {
	var options []app.Option
	if exists(dir, "init.yaml") {
		entries, err := ioutil.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, entry := range entries {
			if !initFiles[entry.Name()] {
				return fmt.Errorf("data directory seems to have existing state %q; not initialising over it", entry.Name())
			}
		}
		var init initConfig
		if err := readYAML(dir, "init.yaml", &init); err != nil {
			return err
		}
		if init.Address == "" {
			return fmt.Errorf("empty Address in init.yaml")
		}
		if err := os.Remove(filepath.Join(dir, "init.yaml")); err != nil {
			return err
		}
		log.Printf("initialising node %s (cluster %v)", init.Address, init.Cluster)
		options = append(options, app.WithAddress(init.Address), app.WithCluster(init.Cluster))
	} else if exists(dir, "update.yaml") {
		var update updateConfig
		var info client.NodeInfo
		if err := readYAML(dir, "update.yaml", &update); err != nil {
			return err
		}
		if update.Address == "" {
			return fmt.Errorf("empty Address in update.yaml")
		}
		if err := readYAML(dir, "info.yaml", &info); err != nil {
			return err
		}
		log.Printf("update.yaml: reconfiguring to this node alone, address %s -> %s", info.Address, update.Address)
		info.Address = update.Address
		if err := dqlite.ReconfigureMembership(dir, []dqlite.NodeInfo{info}); err != nil {
			return fmt.Errorf("reconfigure for update.yaml: %w", err)
		}
		if err := writeYAML(dir, "info.yaml", info); err != nil {
			return err
		}
		if err := writeYAML(dir, "cluster.yaml", []client.NodeInfo{info}); err != nil {
			return err
		}
		if err := os.Remove(filepath.Join(dir, "update.yaml")); err != nil {
			return err
		}
	}
	if exists(dir, "failure-domain") {
		data, err := ioutil.ReadFile(filepath.Join(dir, "failure-domain"))
		if err != nil {
			return err
		}
		domain, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
		if err != nil {
			return fmt.Errorf("failure-domain: %w", err)
		}
		options = append(options, app.WithFailureDomain(domain))
	}
	if exists(dir, "tuning.yaml") {
		var tuning tuningConfig
		if err := readYAML(dir, "tuning.yaml", &tuning); err != nil {
			return err
		}
		if tuning.Snapshot != nil {
			options = append(options, app.WithSnapshotParams(dqlite.SnapshotParams{
				Threshold: tuning.Snapshot.Threshold, Trailing: tuning.Snapshot.Trailing}))
		}
		if tuning.NetworkLatency != nil {
			latency, err := time.ParseDuration(*tuning.NetworkLatency)
			if err != nil {
				return fmt.Errorf("tuning.yaml network-latency: %w", err)
			}
			options = append(options, app.WithNetworkLatency(latency))
		}
	}
	pair, pool, err := clusterTLS(dir)
	if err != nil {
		return err
	}
	listen, dial := app.SimpleTLSConfig(pair, pool)
	// No TLS session cache on the dial side, as k8s-dqlite runs by default: every node has the
	// same certificate (one server name), so a cached session of one node is offered to another,
	// and its connections then fail with "tls: bad record MAC" (seen here: a node never promoted).
	dial.ClientSessionCache = nil
	options = append(options, app.WithTLS(listen, dial))

	node, err := app.New(dir, options...)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := node.Ready(ctx); err != nil {
		return err
	}
	var info client.NodeInfo
	if err := readYAML(dir, "info.yaml", &info); err != nil {
		return err
	}
	if err := writeYAML(dir, "localnode.yaml", []client.NodeInfo{info}); err != nil {
		return err
	}
	db, err := node.Open(context.Background(), database)
	if err != nil {
		return err
	}
	for _, stmt := range schema {
		if _, err := db.Exec(stmt); err != nil {
			return err
		}
	}
	log.Printf("serving node %d at %s, database %q, API on %s", node.ID(), node.Address(), database, api)

	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		key := strings.TrimLeft(r.URL.Path, "/")
		result := ""
		switch r.Method {
		case "GET":
			var value []byte
			if err := db.QueryRow(getQuery, kineName(key)).Scan(&value); err != nil {
				result = "Error: " + err.Error()
			} else {
				result = string(value)
			}
		case "PUT":
			value, _ := ioutil.ReadAll(r.Body)
			result = "done"
			if _, err := db.Exec(putQuery, kineName(key), kineName(key), value); err != nil {
				result = "Error: " + err.Error()
			}
		default:
			result = fmt.Sprintf("Error: unsupported method %q", r.Method)
		}
		fmt.Fprintf(w, "%s\n", result)
	})
	listener, err := net.Listen("tcp", api)
	if err != nil {
		return err
	}
	go http.Serve(listener, nil)

	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGPWR, unix.SIGINT, unix.SIGQUIT, unix.SIGTERM)
	<-ch
	listener.Close()
	db.Close()
	node.Handover(context.Background())
	return node.Close()
}

func dialTLS(dir string) (client.DialFunc, error) {
	pair, pool, err := clusterTLS(dir)
	if err != nil {
		return nil, err
	}
	config := app.SimpleDialTLSConfig(pair, pool)
	config.ClientSessionCache = nil // see serve()
	return client.DialFuncWithTLS(client.DefaultDialFunc, config), nil
}

// ask: the cluster's members or its leader, asked of the member at server (then of its leader).
func ask(action, dir, server string) (interface{}, error) {
	dial, err := dialTLS(dir)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	store := client.NewInmemNodeStore()
	store.Set(ctx, []client.NodeInfo{{Address: server}})
	leader, err := client.FindLeader(ctx, store, client.WithDialFunc(dial))
	if err != nil {
		return nil, err
	}
	defer leader.Close()
	if action == "leader" {
		info, err := leader.Leader(ctx)
		if err != nil {
			return nil, err
		}
		return info.Address, nil
	}
	return leader.Cluster(ctx)
}

func valueFor(key string, size int) []byte {
	unit := []byte(key + "|")
	out := make([]byte, 0, size+len(unit))
	for len(out) < size {
		out = append(out, unit...)
	}
	return out[:size]
}

// keys: put or check P<start>..P<start+count-1> straight over the dqlite protocol with TLS.
func keys(action, dir, server, prefix string, start, count, size int) (map[string]interface{}, error) {
	dial, err := dialTLS(dir)
	if err != nil {
		return nil, err
	}
	store := client.NewInmemNodeStore()
	store.Set(context.Background(), []client.NodeInfo{{Address: server}})
	drv, err := driver.New(store, driver.WithDialFunc(dial), driver.WithConnectionTimeout(10*time.Second),
		driver.WithContextTimeout(10*time.Second))
	if err != nil {
		return nil, err
	}
	sql.Register("qrlab-dqlite", drv)
	db, err := sql.Open("qrlab-dqlite", database)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	retry := func(f func() error) error {
		var err error
		for attempt := 0; attempt < 40; attempt++ {
			if err = f(); err == nil || err == sql.ErrNoRows {
				return err
			}
			time.Sleep(time.Duration(50*(attempt+1)) * time.Millisecond)
		}
		return err
	}
	var missing, wrong []string
	found := 0
	for i := start; i < start+count; i++ {
		key := fmt.Sprintf("%s%06d", prefix, i)
		want := valueFor(key, size)
		if action == "put" {
			if err := retry(func() error { _, err := db.Exec(putQuery, kineName(key), kineName(key), want); return err }); err != nil {
				return nil, fmt.Errorf("put %s: %w", key, err)
			}
			continue
		}
		var value []byte
		err := retry(func() error { return db.QueryRow(getQuery, kineName(key)).Scan(&value) })
		if err == sql.ErrNoRows {
			missing = append(missing, key)
			continue
		} else if err != nil {
			return nil, fmt.Errorf("get %s: %w", key, err)
		}
		found++
		if string(value) != string(want) {
			wrong = append(wrong, key)
		}
	}
	if action == "put" {
		return map[string]interface{}{"written": count, "server": server, "tls": true}, nil
	}
	first := func(s []string) []string {
		if len(s) > 5 {
			return s[:5]
		}
		return append([]string{}, s...)
	}
	return map[string]interface{}{"expected": count, "found": found, "missing": len(missing), "wrong": len(wrong),
		"first_missing": first(missing), "first_wrong": first(wrong), "ok": len(missing) == 0 && len(wrong) == 0,
		"server": server, "tls": true}, nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: qrlab-k8s-dqlite serve|check|put [flags]")
		os.Exit(2)
	}
	action := os.Args[1]
	flags := flag.NewFlagSet(action, flag.ExitOnError)
	dir := flags.String("storage-dir", "", "backend directory (raft files, info.yaml, cluster.crt/key)")
	api := flags.String("api", "", "serve: HOST:PORT of the lab's key API")
	server := flags.String("server", "", "check/put: dqlite address of the member to ask")
	prefix := flags.String("prefix", "key", "")
	start := flags.Int("start", 0, "")
	count := flags.Int("count", 1000, "")
	size := flags.Int("size", 32, "")
	flags.Parse(os.Args[2:])
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "--storage-dir is required")
		os.Exit(2)
	}
	switch action {
	case "serve":
		if *api == "" {
			fmt.Fprintln(os.Stderr, "--api is required")
			os.Exit(2)
		}
		if err := serve(*dir, *api); err != nil {
			log.Fatalf("qrlab-k8s-dqlite: %v", err)
		}
	case "check", "put":
		if *server == "" {
			fmt.Fprintln(os.Stderr, "--server is required")
			os.Exit(2)
		}
		result, err := keys(action, *dir, *server, *prefix, *start, *count, *size)
		if err != nil {
			result = map[string]interface{}{"error": err.Error()}
		}
		out, _ := json.Marshal(result)
		fmt.Println(string(out))
		if err != nil {
			os.Exit(1)
		}
	case "cluster", "leader":
		if *server == "" {
			fmt.Fprintln(os.Stderr, "--server is required")
			os.Exit(2)
		}
		result, err := ask(action, *dir, *server)
		if err != nil {
			fmt.Fprintf(os.Stderr, "qrlab-k8s-dqlite %s: %v\n", action, err)
			os.Exit(1)
		}
		if address, ok := result.(string); ok {
			fmt.Println(address)
		} else {
			out, _ := json.Marshal(result)
			fmt.Println(string(out))
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown action %q (serve, check, put, cluster, leader)\n", action)
		os.Exit(2)
	}
}
