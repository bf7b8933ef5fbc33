//! Per-call deadlines of the client commands (`--timeout`; spec/audit.md,
//! "Deadlines"): a server that accepts a connection and never answers
//! ends the command with exit status 3, naming the call, instead of
//! leaving it waiting forever.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use super::client::call_failed;
use super::error::CliError;

/// The default of `--timeout`.
pub(crate) const DEFAULT_TIMEOUT: &str = "30s";

/// How long one call to the server may take: connecting; a unary call
/// from sending it to the whole answer; a stream's opening; and each item
/// a command waits for while the server owes it one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline(Duration);

impl Deadline {
    /// The default deadline.
    pub(crate) fn standard() -> Deadline {
        parse(DEFAULT_TIMEOUT).unwrap_or(Deadline(Duration::from_secs(30)))
    }

    /// `work` (named `call` in the error), finished within the deadline.
    pub(crate) async fn run<T>(
        self,
        call: &'static str,
        work: impl Future<Output = T>,
    ) -> Result<T, CliError> {
        tokio::time::timeout(self.0, work)
            .await
            .map_err(|_| CliError::Timeout {
                call,
                after: self.0,
            })
    }

    /// One call answered in time: its message, or the server's error.
    pub(crate) async fn call<T>(
        self,
        call: &'static str,
        rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CliError> {
        match self.run(call, rpc).await? {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(call_failed(&s)),
        }
    }

    /// One call answered in time, its status left to the caller (who
    /// treats some codes, such as `NOT_FOUND`, as answers).
    pub(crate) async fn status<T>(
        self,
        call: &'static str,
        rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<Result<T, tonic::Status>, CliError> {
        Ok(self.run(call, rpc).await?.map(tonic::Response::into_inner))
    }

    /// The next item of a stream the server owes one on; `None` at its end.
    pub(crate) async fn next<T>(
        self,
        call: &'static str,
        stream: &mut tonic::Streaming<T>,
    ) -> Result<Option<T>, CliError> {
        self.run(call, stream.message())
            .await?
            .map_err(|s| call_failed(&s))
    }
}

impl From<Duration> for Deadline {
    fn from(d: Duration) -> Deadline {
        Deadline(d)
    }
}

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 60_000 == 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1_000 == 0 {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Parses `--timeout`: a whole number with a unit, `ms`, `s` or `m`
/// (`500ms`, `30s`, `2m`), or a bare number of seconds; at least 1 ms and
/// at most one day.
pub(crate) fn parse(text: &str) -> Result<Deadline, String> {
    let bad = || {
        format!(
            "{text:?} is not a duration: a whole number with ms, s or m (500ms, 30s, 2m), between 1ms and 1440m"
        )
    };
    let (digits, unit_ms) = if let Some(d) = text.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = text.strip_suffix('s') {
        (d, 1_000)
    } else if let Some(d) = text.strip_suffix('m') {
        (d, 60_000)
    } else {
        (text, 1_000)
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    if ms == 0 || ms > 86_400_000 {
        return Err(bad());
    }
    Ok(Deadline(Duration::from_millis(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_print_back() {
        for (text, ms, shown) in [
            ("500ms", 500, "500ms"),
            ("30s", 30_000, "30s"),
            ("2m", 120_000, "2m"),
            ("7", 7_000, "7s"),
            ("1500ms", 1_500, "1500ms"),
            ("60s", 60_000, "1m"),
        ] {
            let d = parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(d, Deadline::from(Duration::from_millis(ms)), "{text}");
            assert_eq!(d.to_string(), shown);
        }
        for bad in [
            "",
            "s",
            "0",
            "0ms",
            "-1s",
            "1.5s",
            "10h",
            "1441m",
            "99999999999999999999",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("not a duration"), "{bad}: {e}");
        }
        assert_eq!(Deadline::standard().to_string(), DEFAULT_TIMEOUT);
    }
}
