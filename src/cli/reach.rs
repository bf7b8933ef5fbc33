//! Why a server could not be reached, in words that say what to do: the
//! transport's error chain ("transport error") names no cause a person
//! can act on.

use std::error::Error;

/// Explains a failed connection to `url` from the error and its sources.
pub(crate) fn explain(url: &str, error: &(dyn Error + 'static)) -> String {
    let chain = chain(error);
    let text = chain.join(": ").to_ascii_lowercase();
    let io_kind = io_kind(error);
    let addr = url.split_once("://").map_or(url, |(_, rest)| rest);
    let addr = addr.trim_end_matches('/');
    let why = if io_kind == Some(std::io::ErrorKind::ConnectionRefused)
        || text.contains("connection refused")
    {
        format!(
            "nothing listens at {addr} (connection refused): is `pulse-ledger serve` running there? \
             (it listens on 127.0.0.1:7300 unless --listen says otherwise)"
        )
    } else if text.contains("unknownissuer") || text.contains("unknown issuer") {
        "the server's certificate is signed by a CA this client does not trust: give --ca with that CA's certificate (PEM)".to_owned()
    } else if text.contains("notvalidforname") || text.contains("not valid for name") {
        format!(
            "the server's certificate is not for the host in {url}: use the name it was issued for"
        )
    } else if text.contains("certificaterequired") || text.contains("certificate required") {
        "the server requires a client certificate: give --client-cert and --client-key".to_owned()
    } else if text.contains("invalid peer certificate") || text.contains("certificate") {
        format!(
            "TLS failed ({}): check --ca, and --client-cert/--client-key for a server that asks for one",
            chain.join(": ")
        )
    } else if text.contains("invalid http version")
        || text.contains("frame with invalid size")
        || text.contains("corrupt message")
        || (url.starts_with("http://") && text.contains("connection reset"))
    {
        format!(
            "{addr} did not answer as a plaintext gRPC server: if it serves TLS, use https://{addr}"
        )
    } else if text.contains("failed to lookup")
        || text.contains("name or service not known")
        || text.contains("dns error")
    {
        format!("cannot resolve the host in {url}: check its name")
    } else if io_kind == Some(std::io::ErrorKind::TimedOut) || text.contains("timed out") {
        format!("no answer from {addr} (timed out): is the host up, and the port open to you?")
    } else {
        chain.join(": ")
    };
    format!("cannot reach {url}: {why}")
}

/// The messages of the error and its sources, without repeats.
fn chain(error: &(dyn Error + 'static)) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !out.iter().any(|t| t.contains(&text)) {
            out.push(text);
        }
        next = e.source();
    }
    out
}

/// The kind of the first I/O error in the chain.
fn io_kind(error: &(dyn Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(&'static str, Option<std::io::Error>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_ref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn each_cause_says_what_to_do() {
        let refused = Wrapped(
            "transport error",
            Some(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        );
        let e = explain("http://127.0.0.1:7399", &refused);
        assert!(e.contains("nothing listens at 127.0.0.1:7399"), "{e}");
        assert!(e.contains("pulse-ledger serve"), "{e}");
        let ca = Wrapped(
            "transport error",
            Some(std::io::Error::other(
                "invalid peer certificate: UnknownIssuer",
            )),
        );
        assert!(explain("https://x:1", &ca).contains("give --ca"));
        let client = Wrapped(
            "transport error",
            Some(std::io::Error::other(
                "received fatal alert: CertificateRequired",
            )),
        );
        assert!(explain("https://x:1", &client).contains("--client-cert"));
        let other = Wrapped("transport error", Some(std::io::Error::other("odd")));
        assert_eq!(
            explain("http://127.0.0.1:1", &other),
            "cannot reach http://127.0.0.1:1: transport error: odd"
        );
    }
}
