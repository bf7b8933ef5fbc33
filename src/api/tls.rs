//! TLS settings for the gRPC server and for clients of it (the CLI, the
//! plugin host dialing remote plugins): PEM files in, tonic configs out,
//! every failure naming the file.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The server's certificate and key, and optionally the CA whose client
/// certificates it requires (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate
    /// signed by one of them.
    pub client_ca: Option<PathBuf>,
}

/// How a client checks the server, and the certificate it presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificates to trust instead of the public web roots.
    pub ca: Option<PathBuf>,
    /// A client certificate and key, for servers that require mutual TLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name to check in the server's certificate, if not the URL's host.
    pub domain: Option<String>,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!(
            "{what} {}: not a PEM file (no -----BEGIN line)",
            path.display()
        ));
    }
    Ok(bytes)
}

impl ServerTls {
    /// The tonic server config.
    ///
    /// # Errors
    /// A file is missing or not PEM.
    pub fn load(&self) -> Result<ServerTlsConfig, String> {
        let identity = Identity::from_pem(
            read(&self.cert, "TLS certificate")?,
            read(&self.key, "TLS key")?,
        );
        // A client that stalls mid-handshake is dropped instead of
        // holding a task and a socket.
        let mut config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(std::time::Duration::from_secs(10));
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        Ok(config)
    }
}

impl ServerTls {
    /// The same certificate, key and client CA as a rustls config for an
    /// HTTP/1.1 listener (the web console's).
    ///
    /// # Errors
    /// A file is missing, not PEM, or refused by rustls.
    pub fn rustls(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(&read(&self.cert, "TLS certificate")?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("TLS certificate {}: {e}", self.cert.display()))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key, "TLS key")?)
            .map_err(|e| format!("TLS key {}: {e}", self.key.display()))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(std::sync::Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&read(ca, "client CA")?) {
                    let c = c.map_err(|e| format!("client CA {}: {e}", ca.display()))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    std::sync::Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("TLS certificate and key: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(std::sync::Arc::new(config))
    }
}

impl ClientTls {
    /// The tonic client config: the given CA, or the public web roots.
    ///
    /// # Errors
    /// A file is missing or not PEM.
    pub fn load(&self) -> Result<ClientTlsConfig, String> {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca, "CA")?)),
            None => config.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(
                read(cert, "client certificate")?,
                read(key, "client key")?,
            ));
        }
        if let Some(d) = &self.domain {
            config = config.domain_name(d.clone());
        }
        Ok(config)
    }

    /// Whether nothing was configured (an `https://` URL still gets TLS
    /// with the public roots).
    pub fn is_empty(&self) -> bool {
        *self == ClientTls::default()
    }
}

/// Whether `url` may be dialed: `https://` always; plaintext `http://`
/// only to a loopback address or `localhost`, unless `forced`; no other
/// scheme (the transport would dial it in plaintext).
///
/// # Errors
/// `unsupported_scheme` or `plaintext_not_loopback`, naming the URL.
pub fn check_plaintext(url: &str, forced: bool) -> Result<(), String> {
    // Parsed as the transport will parse it, so the host checked is the
    // host dialed (`http://127.0.0.1:1@10.0.0.7/` goes to 10.0.0.7).
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| format!("{url} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("https") => return Ok(()),
        Some("http") => {}
        other => {
            return Err(format!(
                "unsupported_scheme: {url}: the scheme is {}, not https:// (or http:// to this host)",
                other.map_or_else(|| "missing".to_owned(), |s| format!("{s}://"))
            ));
        }
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "{url}: a server URL carries no user name or password"
        ));
    }
    let host = uri.host().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback || forced {
        Ok(())
    } else {
        Err(format!(
            "plaintext_not_loopback: {url} is plaintext to another host; use https:// (with TLS \
             settings), or force plaintext explicitly"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_allowed_only_to_loopback_unless_forced() {
        for ok in [
            "http://127.0.0.1:7300",
            "http://localhost:7300",
            "http://[::1]:7300/",
            "http://127.9.9.9",
            "https://10.0.0.7:7400",
            "https://plugins.example.com",
        ] {
            check_plaintext(ok, false).unwrap();
        }
        for bad in [
            "http://10.0.0.7:7400",
            "http://[2001:db8::1]:7400",
            "http://example.com",
            "http://localhost.example.com:80",
            "http://127.0.0.1:1@10.0.0.7:7400",
            "http://localhost@10.0.0.7",
        ] {
            let e = check_plaintext(bad, false).unwrap_err();
            if bad.contains('@') {
                assert!(e.contains("no user name"), "{e}");
                assert!(check_plaintext(bad, true).is_err());
            } else {
                assert!(e.starts_with("plaintext_not_loopback"), "{e}");
                check_plaintext(bad, true).unwrap();
            }
        }
    }

    /// Any other scheme would be dialed in plaintext by the transport
    /// while looking like something else: refused, forced or not.
    #[test]
    fn other_schemes_are_refused() {
        for bad in [
            "grpc://127.0.0.1:7300",
            "grpc://10.0.0.7:7300",
            "grpcs://example.com",
            "ftp://10.0.0.1:7400",
            "HTTPX://localhost",
            "127.0.0.1:7300",
        ] {
            for forced in [false, true] {
                let e = check_plaintext(bad, forced).unwrap_err();
                assert!(
                    e.starts_with("unsupported_scheme") || e.contains("is not a URL"),
                    "{bad}: {e}"
                );
            }
        }
    }

    #[test]
    fn missing_and_non_pem_files_are_named() {
        let dir = std::env::temp_dir().join(format!("pulse-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, b"not a certificate").unwrap();
        let e = ServerTls {
            cert: dir.join("missing.pem"),
            key: junk.clone(),
            client_ca: None,
        }
        .load()
        .unwrap_err();
        assert!(
            e.contains("TLS certificate") && e.contains("missing.pem"),
            "{e}"
        );
        let e = ClientTls {
            ca: Some(junk.clone()),
            ..ClientTls::default()
        }
        .load()
        .unwrap_err();
        assert!(
            e.contains("not a PEM file") && e.contains("junk.pem"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
