// Command kube-apiserver-e2e runs a real kube-apiserver, with etcd embedded in the same
// process, on loopback for metalmem's end-to-end tests (`make e2e-kube`).
//
// Why: tests/kubefake.py encodes our reading of the API; this server is the real thing
// (server-side apply, structural pruning, events.k8s.io validation, RBAC), so the places where
// the fake could agree with our own mistakes get checked. It serves with a CA and serving
// certificate it makes, authenticates two static tokens (an admin in system:masters and the
// agent's service-account identity that deploy/kubernetes/rbac.yaml binds), authorizes with
// RBAC, writes a kubeconfig for each, prints one JSON line when /readyz answers, and on
// SIGTERM or SIGINT stops the API server, then etcd, and removes what it created.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as cmd/kube-apiserver
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

const (
	adminUser  = "metalmem-e2e-admin"
	agentSA    = "metalmem-agent"
	agentSANS  = "metalmem"
	readyLimit = 120 * time.Second
)

// Ready is the one JSON line printed on stdout once the server answers /readyz.
type Ready struct {
	Server          string  `json:"server"`
	CAFile          string  `json:"ca_file"`
	AdminKubeconfig string  `json:"admin_kubeconfig"`
	AgentKubeconfig string  `json:"agent_kubeconfig"`
	AdminToken      string  `json:"admin_token"`
	AgentToken      string  `json:"agent_token"`
	AgentUser       string  `json:"agent_user"`
	Etcd            string  `json:"etcd"`
	Dir             string  `json:"dir"`
	StartSeconds    float64 `json:"start_seconds"`
	PID             int     `json:"pid"`
}

func main() {
	os.Exit(run())
}

func run() int {
	started := time.Now()
	dirFlag := flag.String("dir", "", "state directory (default: a new temporary one, removed at exit)")
	port := flag.Int("port", 0, "secure port on 127.0.0.1 (0: a free one)")
	verbosity := flag.String("v", "0", "kube-apiserver log verbosity")
	flag.Parse()

	dir := *dirFlag
	ownDir := false
	if dir == "" {
		d, err := os.MkdirTemp("", "metalmem-kube-apiserver-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "kube-apiserver-e2e:", err)
			return 2
		}
		dir, ownDir = d, true
	}
	if ownDir {
		defer os.RemoveAll(dir)
	}
	code, err := serve(dir, *port, *verbosity, started)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-apiserver-e2e:", err)
	}
	return code
}

func serve(dir string, port int, verbosity string, started time.Time) (int, error) {
	pki := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return 2, err
	}
	caFile, certFile, keyFile, err := writeServingPKI(pki)
	if err != nil {
		return 2, fmt.Errorf("serving certificate: %w", err)
	}
	saKey := filepath.Join(pki, "sa.key")
	if err := writeECKey(saKey); err != nil {
		return 2, fmt.Errorf("service-account key: %w", err)
	}
	adminToken, agentToken := randomToken(), randomToken()
	agentUser := "system:serviceaccount:" + agentSANS + ":" + agentSA
	tokens := fmt.Sprintf("%s,%s,%s,\"system:masters,system:authenticated\"\n"+
		"%s,%s,%s,\"system:serviceaccounts,system:serviceaccounts:%s,system:authenticated\"\n",
		adminToken, adminUser, "uid-admin", agentToken, agentUser, "uid-agent", agentSANS)
	tokenFile := filepath.Join(pki, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(tokens), 0o600); err != nil {
		return 2, err
	}

	etcd, etcdURL, err := startEtcd(filepath.Join(dir, "etcd"))
	if err != nil {
		return 1, fmt.Errorf("etcd: %w", err)
	}
	defer func() {
		etcd.Close()
		<-etcd.Server.StopNotify()
	}()

	if port == 0 {
		if port, err = freePort(); err != nil {
			return 1, err
		}
	}
	server := "https://127.0.0.1:" + strconv.Itoa(port)
	cmd := app.NewAPIServerCommand() // installs the SIGTERM/SIGINT handler that stops it
	cmd.SetArgs([]string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + certFile,
		"--tls-private-key-file=" + keyFile,
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--anonymous-auth=false",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		"--service-cluster-ip-range=10.0.0.0/24",
		// Loopback cannot be a Service endpoint; nothing here routes to the server by Service.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + pki,
		"--v=" + verbosity,
	})
	done := make(chan int, 1)
	go func() { done <- cli.Run(cmd) }()

	ready := Ready{
		Server: server, CAFile: caFile, AdminToken: adminToken, AgentToken: agentToken,
		AgentUser: agentUser, Etcd: etcdURL, Dir: dir, PID: os.Getpid(),
		AdminKubeconfig: filepath.Join(dir, "admin.kubeconfig"),
		AgentKubeconfig: filepath.Join(dir, "agent.kubeconfig"),
	}
	if err := waitReady(server, caFile, adminToken, done); err != nil {
		return 1, err
	}
	if err := writeKubeconfig(ready.AdminKubeconfig, server, caFile, adminUser, adminToken, "default"); err != nil {
		return 1, err
	}
	if err := writeKubeconfig(ready.AgentKubeconfig, server, caFile, agentSA, agentToken, "default"); err != nil {
		return 1, err
	}
	ready.StartSeconds = time.Since(started).Seconds()
	line, _ := json.Marshal(ready)
	fmt.Println(string(line))
	os.Stdout.Sync()
	return <-done, nil
}

// waitReady polls /readyz with the admin token until it answers 200 or the server exits.
func waitReady(server, caFile, token string, done chan int) error {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	deadline := time.Now().Add(readyLimit)
	for time.Now().Before(deadline) {
		select {
		case code := <-done:
			done <- code
			return fmt.Errorf("kube-apiserver exited with %d before it was ready", code)
		default:
		}
		req, _ := http.NewRequest(http.MethodGet, server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready after %s", readyLimit)
}

func startEtcd(dir string) (*embed.Etcd, string, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.Name = "e2e"
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(clientPort)}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(peerPort)}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	cfg.Logger = "zap"
	cfg.LogLevel = zapcore.ErrorLevel.String()
	cfg.UnsafeNoFsync = true // a throwaway test store: no fsync keeps writes fast on a shared disk
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", errors.New("not ready after 60s")
	}
	return e, clientURL.String(), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomToken() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// writeServingPKI makes a CA and a serving certificate it signs for 127.0.0.1 and localhost:
// a separate CA keeps strict X.509 verifiers (Python's default context) happy.
func writeServingPKI(dir string) (caFile, certFile, keyFile string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "metalmem-e2e-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          []byte{1, 2, 3, 4},
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return
	}
	caFile = filepath.Join(dir, "ca.crt")
	certFile = filepath.Join(dir, "serving.crt")
	keyFile = filepath.Join(dir, "serving.key")
	if err = writePEM(caFile, "CERTIFICATE", caDER); err != nil {
		return
	}
	if err = writePEM(certFile, "CERTIFICATE", der); err != nil {
		return
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return
	}
	err = writePEM(keyFile, "EC PRIVATE KEY", keyDER)
	return
}

func writeECKey(path string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der)
}

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}

func writeKubeconfig(path, server, caFile, user, token, namespace string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	cfg := map[string]any{
		"apiVersion":      "v1",
		"kind":            "Config",
		"current-context": "e2e",
		"clusters": []any{map[string]any{"name": "e2e", "cluster": map[string]any{
			"server": server, "certificate-authority-data": b64(ca)}}},
		"users": []any{map[string]any{"name": user, "user": map[string]any{"token": token}}},
		"contexts": []any{map[string]any{"name": "e2e", "context": map[string]any{
			"cluster": "e2e", "user": user, "namespace": namespace}}},
	}
	data, err := json.MarshalIndent(cfg, "", "  ") // JSON is YAML: kubectl and Python read it
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

func b64(data []byte) string { return base64.StdEncoding.EncodeToString(data) }
