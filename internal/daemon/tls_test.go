package daemon

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/limiterd/limiterd/internal/auth"
	limiterv1 "github.com/limiterd/limiterd/proto/limiter/v1"
)

// writePKI makes a throwaway CA and one certificate for 127.0.0.1 usable as
// server and client certificate, and returns the file paths.
func writePKI(t *testing.T) (caFile, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "limiterd test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("node.pem", "CERTIFICATE", leafDER), write("node-key.pem", "EC PRIVATE KEY", keyDER)
}

// TestMutualTLSCluster runs two nodes whose gRPC ports require client
// certificates and whose peer calls go over mTLS with the cluster secret:
// a client with a certificate and a token is answered by either node (the
// key's owner decides), one without a certificate is refused.
func TestMutualTLSCluster(t *testing.T) {
	caFile, certFile, keyFile := writePKI(t)
	serverTLS, err := auth.ServerTLS(certFile, keyFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	peerTLS, err := auth.ClientTLS(caFile, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	a := authFile(t)
	nodes := startCluster(t, 2, func(c *Config) {
		c.TLS, c.PeerTLS, c.Auth, c.PeerSecret = serverTLS, peerTLS, a, peerSecret
	})
	clientTLS, err := auth.ClientTLS(caFile, certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(nodes[0].GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)),
		grpc.WithPerRPCCredentials(auth.TokenCredentials(clientToken)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := limiterv1.NewLimiterClient(conn)
	forwarded := 0
	for i := range 20 { // keys of both owners: some calls cross to the other node
		key := "tenant:" + string(rune('a'+i))
		if o, self := nodes[0].Node().Owner(key); !self && o.Name != "" {
			forwarded++
		}
		res, err := c.Allow(context.Background(), &limiterv1.AllowRequest{Key: key})
		if err != nil || !res.GetAllowed() || res.GetDegraded() {
			// degraded would mean the owner was not reached over peer mTLS
			t.Fatalf("Allow(%s) over mTLS = %v, %v, want allowed by the owner", key, res, err)
		}
	}
	if forwarded == 0 {
		t.Fatalf("no key owned by the other node; the test proves nothing about peer TLS")
	}
	noCert, _ := auth.ClientTLS(caFile, "", "")
	bad, err := grpc.NewClient(nodes[0].GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(noCert)),
		grpc.WithPerRPCCredentials(auth.TokenCredentials(clientToken)))
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := limiterv1.NewLimiterClient(bad).Allow(ctx, &limiterv1.AllowRequest{Key: "tenant:x"}); err == nil {
		t.Errorf("a client without a certificate was answered")
	}

	// The forwarded calls above went over the peer wire, which takes the
	// same mTLS: a dialer without a client certificate gets no answer.
	for i, m := range nodes {
		if m.WireAddr() == "" {
			t.Fatalf("node %d serves no peer wire", i)
		}
	}
	wc, err := tls.Dial("tcp", nodes[0].WireAddr(), noCert)
	if err == nil {
		defer wc.Close()
		_ = wc.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = wc.Write([]byte("LMTDPEER\x01\x00"))
		if _, err := wc.Read(make([]byte, 1)); err == nil {
			t.Errorf("the peer wire answered a dialer without a client certificate")
		}
	}
}
