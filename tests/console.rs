//! The web console's listener (issue 25, spec/console.md): its pages, and
//! its JSON API answering with the gRPC API's tokens, scopes and rules,
//! against a real `serve` with a real plugin, over real HTTP.

#![allow(clippy::unwrap_used)] // test code: a panic is a failure report

#[macro_use]
mod common;

use std::time::Duration;

use base64::Engine as _;
use common::console::ConsoleServe;
use common::{handler_register, key, key_file, operator_token, plugin_register, tempdir};
use pulse_ledger::api::proto::{self, jobs_client::JobsClient, registry_client::RegistryClient};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn start(dir: &std::path::Path, config: &str) -> ConsoleServe {
    let path = dir.join("console.toml");
    std::fs::write(&path, config).unwrap();
    let data = dir.join("data");
    ConsoleServe::start(
        &["--config", path.to_str().unwrap()],
        &data,
        &[("RUST_LOG", "warn")],
    )
}

/// `msg` as a gRPC request that carries `token`.
fn bearer<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// An HTTP/1.1 answer: status, headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request on its own connection (`Connection: close`).
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    let body = if method == "POST" { "{}" } else { "" };
    if let Some(c) = content_type {
        head.push_str(&format!("content-type: {c}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(head.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status: status.parse().unwrap(),
        headers,
        body: body.to_owned(),
    }
}

/// The first `event: NAME` of a server-sent event stream, and its data.
async fn first_event(addr: &str, path: &str, token: &str, name: &str) -> Value {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let marker = format!("event: {name}\ndata: ");
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the stream ended: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if let Some(at) = text.find(&marker) {
                let rest = &text[at + marker.len()..];
                if let Some(end) = rest.find('\n') {
                    return serde_json::from_str(&rest[..end]).unwrap();
                }
            }
        }
    })
    .await
    .expect("no event within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_its_pages_and_the_api_under_the_grpc_rules() {
    let dir = tempdir("console-api");
    let p = key("console-plugin");
    let pkey = key_file(&dir, &p);
    let (reader, reader_table) = operator_token("console-reader", &["read"]);
    let (operator, operator_table) =
        operator_token("console-operator", &["read", "enqueue", "cancel"]);
    let plugin = common::plugin_table(
        "tools",
        &["--key".into(), pkey.display().to_string()],
        &dir.join("events.log"),
    );
    let c = start(&dir, &format!("{plugin}{reader_table}\n{operator_table}\n"));

    // The page and its assets, each under the content security policy.
    let page = http(&c.http, "GET", "/", None, None).await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.body.contains("/app.js"), "{}", page.body);
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    for (path, kind) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let a = http(&c.http, "GET", path, None, None).await;
        assert_eq!(a.status, 200, "{path}");
        assert!(
            a.header("content-type").unwrap().starts_with(kind),
            "{path}"
        );
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    }

    // A plugin, a handler and a long job, through gRPC.
    let mut reg = RegistryClient::connect(c.grpc.clone()).await.unwrap();
    let h = key("console-sleep");
    let mut envelopes = Vec::new();
    for a in [
        plugin_register(&p, "tools"),
        handler_register(&h, "sleep", &p.did),
    ] {
        envelopes.push(a.envelope().to_vec());
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    let mut jobs = JobsClient::connect(c.grpc.clone()).await.unwrap();
    let enqueue = bearer(
        &operator,
        proto::EnqueueRequest {
            handler: h.did.to_string(),
            payload: b"30000".to_vec(),
            ..Default::default()
        },
    );
    let id = hex::encode(
        jobs.enqueue(enqueue)
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .id,
    );

    // No token, no read: the gRPC API's refusal, as HTTP and JSON.
    let refused = http(&c.http, "GET", "/api/v1/jobs", None, None).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["code"], "token_missing");
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let wrong = http(&c.http, "GET", "/api/v1/jobs", Some("not-a-token"), None).await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);

    // Reads with the read scope.
    let list = http(&c.http, "GET", "/api/v1/jobs?limit=10", Some(&reader), None).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let listed = list.json();
    assert_eq!(listed["jobs"][0]["id"], id.as_str());
    assert_eq!(listed["jobs"][0]["handler"], h.did.to_string());
    let job = first_event(&c.http, &format!("/api/v1/jobs/{id}/live"), &reader, "job").await;
    assert_eq!(job["id"], id.as_str());
    let shown = http(
        &c.http,
        "GET",
        &format!("/api/v1/jobs/{id}"),
        Some(&reader),
        None,
    )
    .await
    .json();
    // "30000" is a JSON document (a number): shown as JSON.
    assert_eq!(shown["payload"], serde_json::json!({"json": 30000}));
    let found = http(
        &c.http,
        "GET",
        "/api/v1/subjects?name_prefix=sle",
        Some(&reader),
        None,
    )
    .await
    .json();
    assert_eq!(found["subjects"][0]["did"], h.did.to_string());
    assert_eq!(found["subjects"][0]["name"], "sleep");
    let bad_family = http(
        &c.http,
        "GET",
        "/api/v1/subjects?family=x",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(bad_family.json()["code"], "invalid_family");
    let bad_id = http(&c.http, "GET", "/api/v1/jobs/xyz", Some(&reader), None).await;
    assert_eq!(bad_id.status, 400);
    assert_eq!(bad_id.json()["code"], "invalid_job_id");
    let unknown = http(
        &c.http,
        "GET",
        &format!("/api/v1/jobs/{}", "00".repeat(16)),
        Some(&operator),
        None,
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let no_path = http(&c.http, "GET", "/api/v1/nothing", Some(&reader), None).await;
    assert_eq!(no_path.status, 404);
    assert_eq!(no_path.json()["code"], "no_such_path");

    let overview = http(&c.http, "GET", "/api/v1/overview", Some(&reader), None).await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    let o = overview.json();
    assert_eq!(o["log"]["size"], 2);
    assert!(o["checkpoint"]["note"].as_str().unwrap().contains("\n2\n"));
    assert_eq!(
        ["running", "ready", "held", "delayed"]
            .iter()
            .map(|k| o["queues"][k].as_u64().unwrap())
            .sum::<u64>(),
        1
    );
    assert_eq!(o["nodes"]["nodes"].as_array().unwrap().len(), 1);

    // The log, its entries as submitted, and a chain whose proofs verify
    // against the checkpoint's root.
    let log = http(&c.http, "GET", "/api/v1/log", Some(&reader), None)
        .await
        .json();
    assert_eq!(log["size"], 2);
    let entries = http(
        &c.http,
        "GET",
        "/api/v1/log/entries?start=0&end=2",
        Some(&reader),
        None,
    )
    .await
    .json();
    let b64 = base64::engine::general_purpose::STANDARD;
    for (i, e) in entries["entries"].as_array().unwrap().iter().enumerate() {
        assert_eq!(e["index"], i as u64);
        assert_eq!(
            b64.decode(e["envelope"].as_str().unwrap()).unwrap(),
            envelopes[i]
        );
    }
    let bad_query = http(
        &c.http,
        "GET",
        "/api/v1/log/entries?start=x",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(bad_query.status, 400);
    let bad_cursor = http(&c.http, "GET", "/api/v1/jobs?after=zz", Some(&reader), None).await;
    assert_eq!(bad_cursor.status, 400);
    assert_eq!(bad_cursor.json()["code"], "invalid_page_token");
    let chain = http(
        &c.http,
        "GET",
        &format!("/api/v1/subjects/{}", h.did),
        Some(&reader),
        None,
    )
    .await
    .json();
    assert_eq!(chain["subject"]["name"], "sleep");
    assert_eq!(chain["subject"]["family"], "FAMILY_HANDLER");
    let root: [u8; 32] = hex::decode(log["root_hash"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let entry = &chain["entries"][0];
    let proof: Vec<[u8; 32]> = entry["inclusion_proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            hex::decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect();
    let leaf =
        pulse_ledger::ledger::leaf_hash(&b64.decode(entry["envelope"].as_str().unwrap()).unwrap());
    pulse_ledger::ledger::verify_inclusion(&leaf, 1, 2, &proof, &root).unwrap();

    // Actions: the scope, and a JSON request, or nothing changes.
    let path = format!("/api/v1/jobs/{id}/cancel");
    let denied = http(
        &c.http,
        "POST",
        &path,
        Some(&reader),
        Some("application/json"),
    )
    .await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert_eq!(denied.json()["code"], "scope_missing");
    let form = http(
        &c.http,
        "POST",
        &path,
        Some(&operator),
        Some("application/x-www-form-urlencoded"),
    )
    .await;
    assert_eq!(form.status, 400);
    assert_eq!(form.json()["code"], "json_required");
    let still = http(
        &c.http,
        "GET",
        &format!("/api/v1/jobs/{id}"),
        Some(&reader),
        None,
    )
    .await
    .json();
    assert!(
        ["queued", "held", "running"].contains(&still["state"].as_str().unwrap()),
        "{still}"
    );
    let cancelled = http(
        &c.http,
        "POST",
        &path,
        Some(&operator),
        Some("application/json"),
    )
    .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.json()["state"], "cancelled");
    let retried = http(
        &c.http,
        "POST",
        &format!("/api/v1/jobs/{id}/retry"),
        Some(&operator),
        Some("application/json"),
    )
    .await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_ne!(retried.json()["state"], "cancelled");

    // Bulk cancel: the handler's unfinished jobs, with the cancel scope.
    let bulk = |token: String| {
        let (addr, handler) = (c.http.clone(), h.did.to_string());
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let body = format!("{{\"handler\": \"{handler}\"}}");
            let req = format!(
                "POST /api/v1/jobs/cancel HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).await.unwrap();
            raw
        }
    };
    let refused = bulk(reader.clone()).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let done = bulk(operator.clone()).await;
    assert!(done.starts_with("HTTP/1.1 200"), "{done}");
    assert!(done.contains("\"cancelled\":1"), "{done}");
    let after = http(
        &c.http,
        "GET",
        &format!("/api/v1/jobs/{id}"),
        Some(&reader),
        None,
    )
    .await
    .json();
    assert_eq!(after["state"], "cancelled");
}

/// The console's address follows the gRPC listener's rules: plaintext
/// only on loopback, and an open API only on loopback.
#[test]
fn a_console_on_a_public_address_needs_tls_and_tokens() {
    let dir = tempdir("console-public");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "0.0.0.0:0",
        ])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plaintext_not_loopback"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pulse-ledger"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "0.0.0.0:0",
        ])
        .arg("--allow-plaintext")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jobs_api_unauthenticated") && err.contains("0.0.0.0"),
        "{err}"
    );
}

/// `GET /api/v1/log` over TLS to the console at `addr`, trusting the test
/// CA, with `client` (a certificate and key file) if given: the raw
/// answer, or why the connection failed.
async fn tls_get_log(
    addr: &str,
    token: &str,
    client: Option<(&str, &str)>,
) -> std::io::Result<String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(common::fixture("ca.pem")).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(
        format!(
            "GET /api/v1/log HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\nauthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut raw = String::new();
    tls.read_to_string(&mut raw).await?;
    Ok(raw)
}

/// With a TLS certificate the console is served over TLS, with the gRPC
/// listener's certificate: a client that trusts the CA reads the API with
/// a token; a plaintext request gets no HTTP answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_speaks_tls_with_the_servers_certificate() {
    let dir = tempdir("console-tls");
    let (reader, table) = operator_token("tls-reader", &["read"]);
    let c = start(
        &dir,
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}\n{table}\n",
            common::fixture("server.pem"),
            common::fixture("server.key")
        ),
    );
    let raw = tls_get_log(&c.http, &reader, None).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"log_did\""), "{raw}");
    // Plaintext HTTP to the TLS listener: no HTTP answer comes back.
    let mut plain = tokio::net::TcpStream::connect(&c.http).await.unwrap();
    plain
        .write_all(b"GET /api/v1/log HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(12), plain.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}

/// With a client CA (`tls_client_ca`, mutual TLS) the console, like the
/// gRPC listener, serves only clients with a certificate that CA signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_with_a_client_ca_needs_a_client_certificate() {
    let dir = tempdir("console-mtls");
    let (reader, table) = operator_token("mtls-reader", &["read"]);
    let c = start(
        &dir,
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}\ntls_client_ca = {:?}\n{table}\n",
            common::fixture("server.pem"),
            common::fixture("server.key"),
            common::fixture("ca.pem")
        ),
    );
    let (cert, key) = (common::fixture("client.pem"), common::fixture("client.key"));
    let raw = tls_get_log(&c.http, &reader, Some((&cert, &key)))
        .await
        .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("\"log_did\""), "{raw}");
    // Without a certificate the handshake (or the first read after it,
    // in TLS 1.3) fails: no HTTP answer.
    if let Ok(raw) = tls_get_log(&c.http, &reader, None).await {
        assert!(!raw.starts_with("HTTP/1.1"), "{raw}");
    }
}

/// The console's connections are bounded per client: silent sockets from
/// one address take its slots, the next is closed at once, and once they
/// close the console answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_hold_more_than_their_clients_share() {
    let dir = tempdir("console-bounds");
    let c = start(&dir, "");
    let mut silent = Vec::new();
    for _ in 0..32 {
        silent.push(tokio::net::TcpStream::connect(&c.http).await.unwrap());
    }
    // Let the server take them all before the next one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut over = tokio::net::TcpStream::connect(&c.http).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf))
        .await
        .expect("the connection over the bound was not closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    drop(silent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let page = http(&c.http, "GET", "/", None, None).await;
    assert_eq!(page.status, 200);
}

/// A connection that says nothing is closed by the console after its 10 s
/// to speak (spec/console.md, "Connections"), and not before: a slow
/// client that speaks within them is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_its_time_to_speak() {
    let dir = tempdir("console-silent");
    let c = start(&dir, "");
    let mut silent = tokio::net::TcpStream::connect(&c.http).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(&c.http).await.unwrap();
    let mut buf = [0u8; 64];
    // Well inside the 10 s, both are still open.
    let early = tokio::time::timeout(Duration::from_secs(2), silent.read(&mut buf)).await;
    assert!(early.is_err(), "closed before its time to speak: {early:?}");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: console\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut page = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), slow.read_to_end(&mut page))
        .await
        .expect("the slow client got no answer")
        .unwrap();
    assert!(
        page.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&page)
    );
    // The silent one is closed once its time is up (well before 30 s).
    let closed = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf))
        .await
        .expect("a silent connection was left open");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}

/// A client that starts a request and stalls mid-head (slowloris) is
/// closed once the head's 10 s are up, like one that sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_stalls_is_closed() {
    let dir = tempdir("console-slowloris");
    let c = start(&dir, "");
    let mut stalled = tokio::net::TcpStream::connect(&c.http).await.unwrap();
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: console\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_secs(2), stalled.read(&mut buf)).await;
    assert!(early.is_err(), "closed before its time: {early:?}");
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        // hyper may answer 408 before it closes; read to the end.
        let mut all = Vec::new();
        stalled.read_to_end(&mut all).await.map(|_| all)
    })
    .await
    .expect("a stalled request head was left open");
    if let Ok(all) = closed {
        assert!(
            all.is_empty() || all.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&all)
        );
    }
}

/// spec/console.md: a ListJobs page that read only jobs other than those
/// asked for (its scan stops after 10,000 index entries) is followed, so
/// the console's list shows the one job of a handler behind 10,001 of
/// another instead of an empty page with a link to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_list_passes_over_pages_that_hold_none_of_the_jobs_asked_for() {
    let dir = tempdir("console-empty-pages");
    let p = key("console-pages-plugin");
    let pkey = key_file(&dir, &p);
    let (operator, operator_table) = operator_token("console-pages", &["read", "enqueue"]);
    let plugin = common::plugin_table(
        "tools",
        &["--key".into(), pkey.display().to_string()],
        &dir.join("events.log"),
    );
    let c = start(&dir, &format!("{plugin}{operator_table}\n"));
    let mut reg = RegistryClient::connect(c.grpc.clone()).await.unwrap();
    let (many, one) = (key("console-pages-many"), key("console-pages-one"));
    for a in [
        plugin_register(&p, "tools"),
        handler_register(&many, "sleep", &p.did),
        handler_register(&one, "sleep", &p.did),
    ] {
        reg.submit(proto::SubmitRequest {
            envelope: a.envelope().to_vec(),
        })
        .await
        .unwrap();
    }
    let mut jobs = JobsClient::connect(c.grpc.clone()).await.unwrap();
    // Due in an hour: queued for the whole test.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    let request = |d: &pulse_ledger::Did| proto::EnqueueRequest {
        handler: d.to_string(),
        run_at_ms: later,
        ..Default::default()
    };
    for n in [1_000; 10].into_iter().chain([1]) {
        let batch = proto::EnqueueBatchRequest {
            jobs: (0..n).map(|_| request(&many.did)).collect(),
        };
        let results = jobs
            .enqueue_batch(bearer(&operator, batch))
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(results.len(), n);
    }
    let theirs = hex::encode(
        jobs.enqueue(bearer(&operator, request(&one.did)))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .id,
    );
    // ListJobs itself answers an empty first page with a token.
    let first = jobs
        .list_jobs(bearer(
            &operator,
            proto::ListJobsRequest {
                handler: one.did.to_string(),
                oldest_first: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(first.jobs.is_empty() && !first.next_page_token.is_empty());
    let path = format!("/api/v1/jobs?handler={}&oldest_first=true", one.did);
    let page = http(&c.http, "GET", &path, Some(&operator), None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let page = page.json();
    let listed: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![theirs.as_str()]);
    assert_eq!(page["next"], Value::Null);
}
