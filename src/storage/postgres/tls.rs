//! TLS to the database server, chosen by the store URL as libpq users
//! expect (spec/storage.md, "PostgreSQL", "TLS to the database").
//!
//! tokio-postgres reads `sslmode` (`disable`, `prefer`, `require`) but not
//! `sslrootcert`, nor the `verify-ca` / `verify-full` modes operators copy
//! from libpq, and it leaves certificate checks to the connector. So the
//! URL is read here first: those options are taken out, and the connector
//! is rustls (the TLS stack the gRPC side already uses), which always
//! checks the server's certificate chain and name. Unlike libpq's
//! `require`, which encrypts without checking who answers, an encrypted
//! connection here is always a verified one: a database reached over a
//! network must not be impersonated by whoever sits on the path.

use std::str::FromStr;
use std::sync::Arc;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::storage::StorageError;

/// How connections to the database are made.
#[derive(Clone)]
pub(super) enum Tls {
    /// In plaintext (`sslmode` unset, `disable` or `prefer`, and no
    /// `sslrootcert`).
    Plain,
    /// Over TLS, the server's certificate checked against `sslrootcert` or
    /// the public web roots.
    Verified(MakeRustlsConnect),
}

/// The connection settings of a store URL, and whether it encrypts.
pub(super) struct Target {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: Tls,
}

/// Unless the URL says otherwise, a connection whose peer vanished (its
/// machine gone, a partition: no FIN, no RST) fails within about 30 s
/// instead of hanging its writer, its scans and the group commit until the
/// kernel gives up (two hours of keepalive silence, or about 15 minutes
/// of retransmissions): TCP keepalives after 10 s idle, every 5 s, 3
/// tries; and at most 30 s for data sent to be acknowledged. A slow
/// statement is not cut short: the server's kernel acknowledges it.
fn notice_a_vanished_peer(config: &mut tokio_postgres::Config, url: &str) {
    if !url.contains("keepalives") {
        config
            .keepalives(true)
            .keepalives_idle(std::time::Duration::from_secs(10))
            .keepalives_interval(std::time::Duration::from_secs(5))
            .keepalives_retries(3);
    }
    if !url.contains("tcp_user_timeout") {
        config.tcp_user_timeout(std::time::Duration::from_secs(30));
    }
}

/// Reads `url`: the options this module handles are taken out, the rest
/// goes to tokio-postgres. `shown` is the URL without its password, for
/// errors.
pub(super) fn target(url: &str, shown: &str) -> Result<Target, StorageError> {
    let bad = |why: String| StorageError::new(format!("{shown}: not a PostgreSQL URL: {why}"));
    let (rest, root, verify) = take_options(url).map_err(bad)?;
    let mut config =
        tokio_postgres::Config::from_str(&rest).map_err(|e| bad(super::with_causes(&e)))?;
    notice_a_vanished_peer(&mut config, &rest);
    let wants_tls = root.is_some() || verify || matches!(config.get_ssl_mode(), SslMode::Require);
    if !wants_tls {
        if let Some(host) = remote_host(&config) {
            tracing::warn!(
                store = %shown,
                "the connection to PostgreSQL on {host} is not encrypted: add ?sslmode=require (and sslrootcert=FILE for a private CA) to the store URL"
            );
        }
        return Ok(Target {
            config,
            tls: Tls::Plain,
        });
    }
    if matches!(config.get_ssl_mode(), SslMode::Disable) {
        return Err(bad(
            "TLS is asked for (sslrootcert, or sslmode=verify-ca/verify-full), but sslmode=disable turns it off".into(),
        ));
    }
    if config
        .get_hosts()
        .iter()
        .any(|h| matches!(h, Host::Unix(_)))
    {
        return Err(bad(
            "TLS is asked for, but a host is a Unix socket, which never leaves the machine: drop sslmode/sslrootcert for it".into(),
        ));
    }
    config.ssl_mode(SslMode::Require);
    let roots = match &root {
        Some(path) => {
            roots_from(path).map_err(|why| StorageError::new(format!("{shown}: {why}")))?
        }
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StorageError::new(format!("{shown}: TLS settings: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Target {
        config,
        tls: Tls::Verified(MakeRustlsConnect::new(client)),
    })
}

/// Splits `sslrootcert` out of a URL's query, and turns `sslmode=verify-ca`
/// or `verify-full` into `require` (the check is always full here).
/// Returns the rest of the URL, the root file, and whether a verify mode
/// was asked for. Key=value connection strings pass through unchanged.
fn take_options(url: &str) -> Result<(String, Option<String>, bool), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, false));
    };
    if !url.contains("://") {
        return Ok((url.to_owned(), None, false));
    }
    let (mut kept, mut root, mut verify) = (Vec::new(), None, false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslrootcert" => {
                if value.is_empty() {
                    return Err("sslrootcert names no file".into());
                }
                root = Some(percent_decoded(value)?);
            }
            "sslnegotiation" if value != "postgres" => {
                return Err(format!(
                    "sslnegotiation={value} is not supported: TLS is negotiated the standard way (sslmode=require)"
                ));
            }
            "sslmode" if value == "verify-ca" || value == "verify-full" => {
                verify = true;
                kept.push("sslmode=require".to_owned());
            }
            _ => kept.push(pair.to_owned()),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, root, verify))
}

fn percent_decoded(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {value:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{value:?} is not UTF-8 once decoded"))
}

/// The certificates of a PEM file, as trust roots.
fn roots_from(path: &str) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let pem = std::fs::read(path).map_err(|e| format!("sslrootcert {path}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("sslrootcert {path}: not PEM certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {path}: no certificate in it"));
    }
    Ok(roots)
}

/// The first address of `config` reached over a network, if any: a Unix
/// socket or a loopback address never leaves the machine. A `hostaddr` is
/// where the connection goes, whatever the host's name says.
fn remote_host(config: &tokio_postgres::Config) -> Option<String> {
    let addrs = config.get_hostaddrs();
    if let Some(ip) = addrs.iter().find(|ip| !ip.is_loopback()) {
        return Some(ip.to_string());
    }
    if !addrs.is_empty() {
        return None;
    }
    config.get_hosts().iter().find_map(|h| match h {
        Host::Tcp(name) => {
            let loopback = name == "localhost"
                || name
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            (!loopback).then(|| name.clone())
        }
        Host::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(url: &str) -> (String, Option<String>, bool) {
        take_options(url).unwrap()
    }

    #[test]
    fn a_vanished_peer_is_noticed_unless_the_url_says_otherwise() {
        let secs = std::time::Duration::from_secs;
        let t = target("postgres://u@127.0.0.1/db", "shown").unwrap();
        assert!(t.config.get_keepalives());
        assert_eq!(t.config.get_keepalives_idle(), secs(10));
        assert_eq!(t.config.get_keepalives_interval(), Some(secs(5)));
        assert_eq!(t.config.get_keepalives_retries(), Some(3));
        assert_eq!(t.config.get_tcp_user_timeout(), Some(&secs(30)));
        let t = target(
            "postgres://u@127.0.0.1/db?keepalives_idle=600&tcp_user_timeout=5",
            "shown",
        )
        .unwrap();
        assert_eq!(t.config.get_keepalives_idle(), secs(600));
        assert_eq!(t.config.get_keepalives_interval(), None);
        assert_eq!(t.config.get_tcp_user_timeout(), Some(&secs(5)));
    }

    #[test]
    fn sslrootcert_and_verify_modes_are_taken_out_and_the_rest_kept_in_order() {
        assert_eq!(
            taken(
                "postgres://u@h/db?connect_timeout=5&sslrootcert=%2Fetc%2Fca.pem&sslmode=verify-full&application_name=x"
            ),
            (
                "postgres://u@h/db?connect_timeout=5&sslmode=require&application_name=x".into(),
                Some("/etc/ca.pem".into()),
                true
            )
        );
        assert_eq!(
            taken("postgres://u@h/db?sslrootcert=ca.pem"),
            ("postgres://u@h/db".into(), Some("ca.pem".into()), false)
        );
        assert_eq!(
            taken("postgres://u@h/db?sslmode=require"),
            ("postgres://u@h/db?sslmode=require".into(), None, false)
        );
        assert_eq!(
            taken("postgres://u@h/db"),
            ("postgres://u@h/db".into(), None, false)
        );
        assert_eq!(
            taken("host=h sslmode=require"),
            ("host=h sslmode=require".into(), None, false)
        );
        assert!(take_options("postgres://u@h/db?sslrootcert=").is_err());
        assert!(take_options("postgres://u@h/db?sslrootcert=%zz").is_err());
        assert!(take_options("postgres://u@h/db?sslnegotiation=direct").is_err());
    }

    /// Why `target` refuses `url`.
    fn refusal(url: &str) -> String {
        target(url, "x").err().expect("refused").to_string()
    }

    #[test]
    fn tls_is_plain_unless_asked_for_and_never_unverified() {
        let plain = target("postgres://u@127.0.0.1/db", "x").unwrap();
        assert!(matches!(plain.tls, Tls::Plain));
        let prefer = target("postgres://u@db.example/db?sslmode=prefer", "x").unwrap();
        assert!(matches!(prefer.tls, Tls::Plain));
        let required = target("postgres://u@db.example/db?sslmode=require", "x").unwrap();
        assert!(matches!(required.tls, Tls::Verified(_)));
        assert!(matches!(required.config.get_ssl_mode(), SslMode::Require));
        let full = target("postgres://u@db.example/db?sslmode=verify-full", "x").unwrap();
        assert!(matches!(full.tls, Tls::Verified(_)));
        let err = refusal("postgres://u@h/db?sslmode=disable&sslrootcert=/nonexistent");
        assert!(err.contains("sslmode=disable"), "{err}");
        let err = refusal("postgres://u@h/db?sslrootcert=/nonexistent/ca.pem");
        assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
        let err = refusal("postgres://u@%2Frun%2Fpostgresql/db?sslmode=require");
        assert!(err.contains("Unix socket"), "{err}");
        let err = refusal("postgres://u@h/db?sslmode=verify-ful");
        assert!(err.contains("sslmode"), "{err}");
    }

    #[test]
    fn a_root_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("pulse-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = roots_from(path.to_str().unwrap()).err().unwrap();
        assert!(err.contains("no certificate"), "{err}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn loopback_and_sockets_are_not_remote() {
        let remote = |url: &str| remote_host(&tokio_postgres::Config::from_str(url).unwrap());
        assert_eq!(remote("postgres://u@127.0.0.1/db"), None);
        assert_eq!(remote("postgres://u@localhost/db"), None);
        assert_eq!(remote("postgres://u@[::1]/db"), None);
        assert_eq!(remote("postgres://u@%2Frun%2Fpostgresql/db"), None);
        assert_eq!(
            remote("postgres://u@db.internal/db"),
            Some("db.internal".into())
        );
        assert_eq!(
            remote("postgres://u@localhost/db?hostaddr=10.1.2.3"),
            Some("10.1.2.3".into())
        );
        assert_eq!(
            remote("postgres://u@db.internal/db?hostaddr=127.0.0.1"),
            None
        );
    }
}
