package auth

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// ServerTLS returns a TLS 1.2+ configuration for the gRPC port from a PEM
// certificate chain and key. When clientCAFile is not empty, clients must
// present a certificate signed by one of its CAs (mutual TLS,
// tls.RequireAndVerifyClientCert); empty means no client certificates are
// asked for. Files are read once: restart to pick up renewed certificates.
// Use it with grpc.Creds(credentials.NewTLS(cfg)). Errors wrap ErrTLS.
func ServerTLS(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("%w: server certificate and key files are both required", ErrTLS)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: load server key pair %s, %s: %v", ErrTLS, certFile, keyFile, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if clientCAFile != "" {
		pool, err := loadPool(clientCAFile)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ClientTLS returns a TLS 1.2+ configuration for calling a limiterd gRPC port,
// for nodes calling their peers and for clients. caFile holds the PEM CAs
// that sign the server's certificate; empty means the system roots.
// certFile and keyFile are the client certificate for mutual TLS: both or
// neither. The server name is left empty, so gRPC checks the certificate
// against the host of the dial target. Use it with
// grpc.WithTransportCredentials(credentials.NewTLS(cfg)). Errors wrap ErrTLS.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := loadPool(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("%w: client certificate and key files go together: got cert %q, key %q", ErrTLS, certFile, keyFile)
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: load client key pair %s, %s: %v", ErrTLS, certFile, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// loadPool reads PEM certificates from path into a new pool.
func loadPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: read CA file: %v", ErrTLS, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%w: CA file %s holds no PEM certificate", ErrTLS, path)
	}
	return pool, nil
}
