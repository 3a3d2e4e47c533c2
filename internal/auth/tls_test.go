package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// testPKI is a throwaway CA with a server and a client certificate, as PEM
// files in a temporary directory.
type testPKI struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
	otherCAFile                                          string // a CA that signed nothing here
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, caCert, caPEM := newCA(t, "limiterd test CA")
	_, _, otherPEM := newCA(t, "other CA")
	p := testPKI{
		caFile:      writeFile(t, dir, "ca.pem", caPEM),
		otherCAFile: writeFile(t, dir, "other-ca.pem", otherPEM),
	}
	srvCert, srvKey := newLeaf(t, caKey, caCert, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "limiterd"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	p.serverCert = writeFile(t, dir, "server.pem", srvCert)
	p.serverKey = writeFile(t, dir, "server-key.pem", srvKey)
	cliCert, cliKey := newLeaf(t, caKey, caCert, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "edge-gateway"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	p.clientCert = writeFile(t, dir, "client.pem", cliCert)
	p.clientKey = writeFile(t, dir, "client-key.pem", cliKey)
	return p
}

// nextSerial returns a random 128-bit serial number.
func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic(err)
	}
	return n
}

func newCA(t *testing.T, name string) (*ecdsa.PrivateKey, *x509.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func newLeaf(t *testing.T, caKey *ecdsa.PrivateKey, ca *x509.Certificate, tmpl *x509.Certificate) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = nextSerial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startTLS serves health on 127.0.0.1:0 with cfg and returns the address.
func startTLS(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	healthpb.RegisterHealthServer(g, health.NewServer())
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// check makes one health call to addr with cfg.
func check(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatalf("grpc.NewClient() error = %v", err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func TestTLS(t *testing.T) {
	p := newTestPKI(t)
	mustServer := func(clientCA string) *tls.Config {
		cfg, err := ServerTLS(p.serverCert, p.serverKey, clientCA)
		if err != nil {
			t.Fatalf("ServerTLS() error = %v", err)
		}
		return cfg
	}
	mustClient := func(ca, cert, key string) *tls.Config {
		cfg, err := ClientTLS(ca, cert, key)
		if err != nil {
			t.Fatalf("ClientTLS() error = %v", err)
		}
		return cfg
	}
	tlsAddr := startTLS(t, mustServer(""))
	mtlsAddr := startTLS(t, mustServer(p.caFile))

	tests := []struct {
		name   string
		addr   string
		client *tls.Config
		want   codes.Code
	}{
		{"TLS, trusted CA", tlsAddr, mustClient(p.caFile, "", ""), codes.OK},
		{"TLS, client cert not needed", tlsAddr, mustClient(p.caFile, p.clientCert, p.clientKey), codes.OK},
		{"TLS, untrusted server", tlsAddr, mustClient(p.otherCAFile, "", ""), codes.Unavailable},
		{"mTLS, client cert", mtlsAddr, mustClient(p.caFile, p.clientCert, p.clientKey), codes.OK},
		{"mTLS, no client cert refused", mtlsAddr, mustClient(p.caFile, "", ""), codes.Unavailable},
		{"mTLS, server cert as client cert refused", mtlsAddr, mustClient(p.caFile, p.serverCert, p.serverKey), codes.Unavailable},
		{"TLS 1.1 client refused", tlsAddr, func() *tls.Config {
			c := mustClient(p.caFile, "", "")
			c.MaxVersion = tls.VersionTLS11
			return c
		}(), codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := check(t, tt.addr, tt.client)
			if got := status.Code(err); got != tt.want {
				t.Errorf("code = %v (%v), want %v", got, err, tt.want)
			}
		})
	}
}

func TestTLSConfigErrors(t *testing.T) {
	p := newTestPKI(t)
	notPEM := writeFile(t, t.TempDir(), "garbage.pem", []byte("not pem"))
	tests := []struct {
		name string
		f    func() (*tls.Config, error)
	}{
		{"server: no cert", func() (*tls.Config, error) { return ServerTLS("", p.serverKey, "") }},
		{"server: no key", func() (*tls.Config, error) { return ServerTLS(p.serverCert, "", "") }},
		{"server: key mismatch", func() (*tls.Config, error) { return ServerTLS(p.serverCert, p.clientKey, "") }},
		{"server: missing file", func() (*tls.Config, error) { return ServerTLS(p.serverCert+".gone", p.serverKey, "") }},
		{"server: client CA not PEM", func() (*tls.Config, error) { return ServerTLS(p.serverCert, p.serverKey, notPEM) }},
		{"server: client CA missing", func() (*tls.Config, error) { return ServerTLS(p.serverCert, p.serverKey, notPEM+".gone") }},
		{"client: CA not PEM", func() (*tls.Config, error) { return ClientTLS(notPEM, "", "") }},
		{"client: cert without key", func() (*tls.Config, error) { return ClientTLS(p.caFile, p.clientCert, "") }},
		{"client: key without cert", func() (*tls.Config, error) { return ClientTLS(p.caFile, "", p.clientKey) }},
		{"client: key mismatch", func() (*tls.Config, error) { return ClientTLS(p.caFile, p.clientCert, p.serverKey) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := tt.f()
			if !errors.Is(err, ErrTLS) || cfg != nil {
				t.Errorf("got %v, %v, want nil, ErrTLS", cfg, err)
			}
		})
	}
	t.Run("server settings", func(t *testing.T) {
		cfg, err := ServerTLS(p.serverCert, p.serverKey, p.caFile)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.MinVersion != tls.VersionTLS12 || cfg.ClientAuth != tls.RequireAndVerifyClientCert || cfg.ClientCAs == nil {
			t.Errorf("got MinVersion %x, ClientAuth %v, ClientCAs %v, want TLS 1.2, RequireAndVerifyClientCert, a pool", cfg.MinVersion, cfg.ClientAuth, cfg.ClientCAs)
		}
	})
}
