//! Handler and plugin schemas: what a register or update statement says
//! about its subject.

use super::access::{DEFAULT_MEMBERS, HandlerAccess, Member, Right};
use super::cbor::{Map, Value};
use super::did::Did;
use super::error::Error;
use super::fields::Fields;
use super::json_number;

/// Default `timeout_ms` when a handler schema leaves it out: 5 minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;
/// Largest `timeout_ms`: one day.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// Default `max_attempts` when a handler schema leaves it out.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Largest `max_attempts`.
pub const MAX_MAX_ATTEMPTS: u32 = 100;
/// Largest `max_cost` (2^53 - 1, exact in every JSON implementation).
pub const MAX_MAX_COST: u64 = (1 << 53) - 1;
/// Largest `max_concurrency`.
pub const MAX_MAX_CONCURRENCY: u32 = 100_000;
/// Largest inline `code`, in bytes.
pub const MAX_CODE_BYTES: usize = 48 * 1024;
/// Largest `input_schema` / `output_schema` document, in bytes.
pub const MAX_JSON_SCHEMA_BYTES: usize = 16 * 1024;
/// Largest `description`, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Largest `version` string, in bytes.
pub const MAX_VERSION_BYTES: usize = 64;
/// Largest plugin `endpoint`, in bytes.
pub const MAX_ENDPOINT_BYTES: usize = 256;
/// Plugin protocol versions this implementation can describe.
pub const MAX_PROTOCOL: u64 = 1000;

const HANDLER_FIELDS: &[&str] = &[
    "name",
    "version",
    "plugin",
    "input_schema",
    "output_schema",
    "timeout_ms",
    "max_attempts",
    "max_cost",
    "max_concurrency",
    "description",
    "code",
    "access",
    "network",
];
const PLUGIN_FIELDS: &[&str] = &["name", "version", "protocol", "endpoint", "description"];

/// What a handler is: its name, version, the one plugin allowed to run it,
/// and the limits its jobs run under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSchema {
    /// `[a-z0-9][a-z0-9._-]{0,63}`, e.g. `python.script`.
    pub name: String,
    /// Semantic Version 2.0.0, at most 64 bytes.
    pub version: String,
    /// did:key of the only plugin allowed to execute this handler.
    pub plugin: Did,
    /// JSON Schema (object or boolean) for job payloads, as JSON text.
    pub input_schema: Option<String>,
    /// JSON Schema (object or boolean) for job results, as JSON text.
    pub output_schema: Option<String>,
    /// Per-attempt timeout in milliseconds (1 ..= 86,400,000); `None` means
    /// [`DEFAULT_TIMEOUT_MS`].
    pub timeout_ms: Option<u64>,
    /// Attempts per job (1 ..= 100); `None` means [`DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: Option<u32>,
    /// Most cost units one job may spend; `None` means no cost budget.
    pub max_cost: Option<u64>,
    /// Most attempts running at once; `None` means no per-handler limit.
    pub max_concurrency: Option<u32>,
    /// Free text for people, at most 1,024 bytes.
    pub description: Option<String>,
    /// Inline script for script handlers, at most 48 KiB.
    pub code: Option<Vec<u8>>,
    /// Who may enqueue, read, cancel and budget; `None` gives every right
    /// to the owner and the operator's tokens.
    pub access: Option<HandlerAccess>,
    /// The network the handler's code asks for; `None`: none. A plugin
    /// grants it only if its operator allows it.
    pub network: Option<NetworkAccess>,
}

/// The network a handler's code may ask its plugin for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkAccess {
    /// `"outbound"`: open connections out (TCP, UDP); never listen on a
    /// TCP port.
    Outbound,
}

impl NetworkAccess {
    /// The schema's text for it.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkAccess::Outbound => "outbound",
        }
    }
}

impl HandlerSchema {
    /// A schema with only the required fields set.
    pub fn new(name: impl Into<String>, version: impl Into<String>, plugin: Did) -> HandlerSchema {
        HandlerSchema {
            name: name.into(),
            version: version.into(),
            plugin,
            input_schema: None,
            output_schema: None,
            timeout_ms: None,
            max_attempts: None,
            max_cost: None,
            max_concurrency: None,
            description: None,
            code: None,
            access: None,
            network: None,
        }
    }

    /// Who holds `right` over this handler's jobs.
    pub fn access_members(&self, right: Right) -> &[Member] {
        match &self.access {
            Some(a) => a.members(right),
            None => DEFAULT_MEMBERS,
        }
    }

    /// The timeout that applies, with the default filled in.
    pub fn effective_timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)
    }

    /// The attempt limit that applies, with the default filled in.
    pub fn effective_max_attempts(&self) -> u32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)
    }

    /// blake3 of the inline code, which a plugin checks before running it.
    pub fn code_digest(&self) -> Option<[u8; 32]> {
        self.code.as_ref().map(|c| *blake3::hash(c).as_bytes())
    }

    pub(crate) fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("name", Value::Text(self.name.clone()));
        m.insert("version", Value::Text(self.version.clone()));
        m.insert("plugin", Value::Text(self.plugin.to_string()));
        m.insert_opt("input_schema", self.input_schema.clone().map(Value::Text));
        m.insert_opt("output_schema", self.output_schema.clone().map(Value::Text));
        m.insert_opt("timeout_ms", self.timeout_ms.map(Value::Uint));
        m.insert_opt(
            "max_attempts",
            self.max_attempts.map(|n| Value::Uint(n.into())),
        );
        m.insert_opt("max_cost", self.max_cost.map(Value::Uint));
        m.insert_opt(
            "max_concurrency",
            self.max_concurrency.map(|n| Value::Uint(n.into())),
        );
        m.insert_opt("description", self.description.clone().map(Value::Text));
        m.insert_opt("code", self.code.clone().map(Value::Bytes));
        m.insert_opt("access", self.access.as_ref().map(HandlerAccess::to_value));
        m.insert_opt(
            "network",
            self.network.map(|n| Value::Text(n.as_str().to_owned())),
        );
        Value::Map(m)
    }

    pub(crate) fn from_value(value: Value) -> Result<HandlerSchema, Error> {
        let f = Fields::new(value, "schema", HANDLER_FIELDS)?;
        f.require(&["name", "version", "plugin"])?;
        let small = |n: u64| n as u32; // range-checked before conversion
        let code = f.bytes("code")?;
        if let Some(c) = &code {
            if c.is_empty() || c.len() > MAX_CODE_BYTES {
                return Err(f.invalid("code", format_args!("must be 1 to {MAX_CODE_BYTES} bytes")));
            }
        }
        Ok(HandlerSchema {
            name: name(&f)?,
            version: version(&f)?,
            plugin: f.did("plugin")?.unwrap_or_else(|| unreachable!("required")),
            input_schema: json_schema(&f, "input_schema")?,
            output_schema: json_schema(&f, "output_schema")?,
            timeout_ms: f.uint_in("timeout_ms", 1, MAX_TIMEOUT_MS)?,
            max_attempts: f
                .uint_in("max_attempts", 1, MAX_MAX_ATTEMPTS.into())?
                .map(small),
            max_cost: f.uint_in("max_cost", 1, MAX_MAX_COST)?,
            max_concurrency: f
                .uint_in("max_concurrency", 1, MAX_MAX_CONCURRENCY.into())?
                .map(small),
            description: f.prose("description", MAX_DESCRIPTION_BYTES)?,
            code,
            access: f
                .value("access")
                .cloned()
                .map(HandlerAccess::from_value)
                .transpose()?,
            network: network(&f)?,
        })
    }
}

/// What a plugin is: its name, version, protocol and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSchema {
    /// `[a-z0-9][a-z0-9._-]{0,63}`.
    pub name: String,
    /// Semantic Version 2.0.0, at most 64 bytes.
    pub version: String,
    /// Plugin protocol version (1 ..= 1000); this release speaks 1.
    pub protocol: u64,
    /// `http://` or `https://` URL of a plugin that runs on its own; `None`
    /// for a plugin that is only spawned locally.
    pub endpoint: Option<String>,
    /// Free text for people, at most 1,024 bytes.
    pub description: Option<String>,
}

impl PluginSchema {
    /// A schema with only the required fields set, speaking protocol 1.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> PluginSchema {
        PluginSchema {
            name: name.into(),
            version: version.into(),
            protocol: 1,
            endpoint: None,
            description: None,
        }
    }

    pub(crate) fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("name", Value::Text(self.name.clone()));
        m.insert("version", Value::Text(self.version.clone()));
        m.insert("protocol", Value::Uint(self.protocol));
        m.insert_opt("endpoint", self.endpoint.clone().map(Value::Text));
        m.insert_opt("description", self.description.clone().map(Value::Text));
        Value::Map(m)
    }

    pub(crate) fn from_value(value: Value) -> Result<PluginSchema, Error> {
        let f = Fields::new(value, "schema", PLUGIN_FIELDS)?;
        f.require(&["name", "version", "protocol"])?;
        Ok(PluginSchema {
            name: name(&f)?,
            version: version(&f)?,
            protocol: f
                .uint_in("protocol", 1, MAX_PROTOCOL)?
                .unwrap_or_else(|| unreachable!("required")),
            endpoint: endpoint(&f)?,
            description: f.prose("description", MAX_DESCRIPTION_BYTES)?,
        })
    }
}

/// Either kind of schema, as carried by a register or update statement.
// One schema per statement: boxing the larger variant would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    /// A handler's schema.
    Handler(HandlerSchema),
    /// A plugin's schema.
    Plugin(PluginSchema),
}

impl Schema {
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Schema::Handler(s) => s.to_value(),
            Schema::Plugin(s) => s.to_value(),
        }
    }
}

/// Whether `name` matches `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn is_valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        })
}

fn name(f: &Fields) -> Result<String, Error> {
    let n = f.text("name")?.unwrap_or_default();
    if !is_valid_name(&n) {
        return Err(f.invalid(
            "name",
            format_args!("{n:?} does not match [a-z0-9][a-z0-9._-]{{0,63}}"),
        ));
    }
    Ok(n)
}

fn version(f: &Fields) -> Result<String, Error> {
    let v = f.text("version")?.unwrap_or_default();
    if v.len() > MAX_VERSION_BYTES {
        return Err(f.invalid(
            "version",
            format_args!("is longer than {MAX_VERSION_BYTES} bytes"),
        ));
    }
    if let Err(e) = semver::Version::parse(&v) {
        return Err(f.invalid(
            "version",
            format_args!("{v:?} is not a Semantic Version 2.0.0: {e}"),
        ));
    }
    Ok(v)
}

fn json_schema(f: &Fields, key: &str) -> Result<Option<String>, Error> {
    let Some(text) = f.text(key)? else {
        return Ok(None);
    };
    if text.len() > MAX_JSON_SCHEMA_BYTES {
        return Err(f.invalid(
            key,
            format_args!("is longer than {MAX_JSON_SCHEMA_BYTES} bytes"),
        ));
    }
    // The range rule comes first, so the parser never sees a number it could
    // round past the binary64 range (or refuse where another parser accepts).
    if let Some(n) = json_number::first_refused(&text) {
        return Err(f.invalid(
            key,
            format_args!(
                "holds the number {}, outside the range a JSON Schema document may hold \
                 (0, or a magnitude in [1e-300, 1e301) with an exponent of at most 4 digits)",
                shorten(n)
            ),
        ));
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(_) | serde_json::Value::Bool(_)) => Ok(Some(text)),
        Ok(_) => Err(f.invalid(key, "must be a JSON Schema: a JSON object or boolean")),
        Err(e) => Err(f.invalid(key, format_args!("is not valid JSON: {e}"))),
    }
}

/// A number token short enough for an error message.
fn shorten(n: &str) -> String {
    if n.len() <= 40 {
        return n.to_owned();
    }
    // Number tokens are ASCII, so any byte index is a char boundary.
    format!(
        "{}…{} ({} characters)",
        &n[..24],
        &n[n.len() - 8..],
        n.len()
    )
}

fn network(f: &Fields) -> Result<Option<NetworkAccess>, Error> {
    match f.text("network")?.as_deref() {
        None => Ok(None),
        Some("outbound") => Ok(Some(NetworkAccess::Outbound)),
        Some(other) => Err(f.invalid(
            "network",
            format_args!("is {other:?}; the one value defined is \"outbound\""),
        )),
    }
}

fn endpoint(f: &Fields) -> Result<Option<String>, Error> {
    let Some(url) = f.text("endpoint")? else {
        return Ok(None);
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let ok = url.len() <= MAX_ENDPOINT_BYTES
        && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && url.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(f.invalid(
            "endpoint",
            format_args!("must be an http:// or https:// URL with a host, printable ASCII, at most {MAX_ENDPOINT_BYTES} bytes"),
        ));
    }
    Ok(Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::error::ErrorCode;

    fn check(input_schema: &str) -> Result<HandlerSchema, Error> {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        let plugin = Did::from_verifying_key(&sk.verifying_key()).unwrap();
        let mut s = HandlerSchema::new("python.script", "1.0.0", plugin);
        s.input_schema = Some(input_schema.to_owned());
        HandlerSchema::from_value(s.to_value())
    }

    fn refused_for_range(input_schema: &str) -> String {
        let e = check(input_schema).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidField, "{input_schema}: {e}");
        let msg = e.message().to_owned();
        assert!(msg.contains("outside the range"), "{input_schema}: {msg}");
        msg
    }

    #[test]
    fn numbers_in_range_are_kept_as_written() {
        for doc in [
            r#"{"maximum":9.999e300}"#,
            r#"{"minimum":-1E+300,"multipleOf":1e-300}"#,
            r#"{"const":0.1e301 , "x": 0e9999}"#,
            r#"{"const":"1e999","1e999":true}"#,
        ] {
            assert_eq!(check(doc).unwrap().input_schema.as_deref(), Some(doc));
        }
    }

    #[test]
    fn the_parser_accepts_every_number_at_the_edges_of_the_range() {
        // Mantissas of 1 to 40 nines (the largest at each length), placed at
        // A = 300 in several spellings, and at A = -300 for the smallest.
        for len in 1..=40 {
            let nines = "9".repeat(len);
            let e = 300 - (len as i64 - 1);
            let big = [
                format!("{nines}e{e}"),
                format!("9.{}9e300", &nines[1..]),
                format!("0.{nines}e301"),
                format!("-{nines}{}", "0".repeat(301 - len)),
                format!("0.{}{nines}e{}", "0".repeat(9000), 9301),
            ];
            let small = [
                format!("1{}e-{}", "0".repeat(len - 1), 300 + len - 1),
                format!("-0.{}1e-{}", "0".repeat(len - 1), 300 - len),
            ];
            for n in big.iter().chain(&small) {
                let doc = format!(r#"{{"const":{n}}}"#);
                assert!(check(&doc).is_ok(), "{n}");
                let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
                assert!(v["const"].as_f64().unwrap().is_finite(), "{n}");
            }
        }
    }

    #[test]
    fn numbers_out_of_range_are_refused_by_the_rule_not_the_parser() {
        // Past the midpoint above f64::MAX, yet serde_json rounds it down and
        // accepts it; the rule refuses it whatever the parser does.
        let edge = r#"{"maximum":1.79769313486231581e308}"#;
        let msg = refused_for_range(edge);
        assert!(msg.contains("schema.input_schema holds the number 1.79769313486231581e308"));
        refused_for_range(r#"{"maximum":1e301}"#);
        refused_for_range(r#"{"maximum":10e300}"#);
        refused_for_range(r#"{"minimum":-1e-301}"#);
        refused_for_range(r#"{"a":0e99999}"#);
        let long = format!(r#"{{"maximum":1{}}}"#, "0".repeat(301));
        let msg = refused_for_range(&long);
        assert!(msg.contains("(302 characters)"), "{msg}");
        let ok = format!(r#"{{"maximum":1{}}}"#, "0".repeat(300));
        assert!(check(&ok).is_ok());
    }

    #[test]
    fn text_that_is_not_json_is_still_refused() {
        for doc in [
            r#"{"a":00001e300}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":"\"#,
            "{type: object}",
        ] {
            let e = check(doc).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidField, "{doc}: {e}");
            assert!(e.message().contains("is not valid JSON"), "{doc}: {e}");
        }
    }
}
