//! A handler's `input_schema` or `output_schema`, compiled once and used to
//! check every payload (at enqueue) or result (when a plugin returns it)
//! (spec/pulse.md, "Payload schemas"). Pure: no I/O. References to other
//! documents are never fetched (the validator is built without its
//! resolvers), so a schema cannot make the server reach out.

use super::error::{PulseError, PulseErrorCode};

/// Longest error message kept from the validator, bytes: it may quote the
/// value it refused.
const MAX_DETAIL_BYTES: usize = 512;

/// A compiled JSON Schema.
pub struct PayloadSchema(jsonschema::Validator);

impl std::fmt::Debug for PayloadSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadSchema")
    }
}

/// Which document a [`PayloadSchema`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Job payloads, against `input_schema`.
    Payload,
    /// Job results, against `output_schema`.
    Result,
}

impl Checked {
    fn what(self) -> &'static str {
        match self {
            Checked::Payload => "payload",
            Checked::Result => "result",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Checked::Payload => "input_schema",
            Checked::Result => "output_schema",
        }
    }

    fn code(self) -> PulseErrorCode {
        match self {
            Checked::Payload => PulseErrorCode::InvalidPayload,
            Checked::Result => PulseErrorCode::InvalidOutput,
        }
    }
}

impl PayloadSchema {
    /// Compiles a schema document (the text signed in the handler's
    /// schema: JSON, already checked by the attestation rules).
    ///
    /// # Errors
    /// `invalid_json_schema`: the document is not a JSON Schema the
    /// validator accepts (a keyword with a wrong type, an unknown format of
    /// `$schema`, a `$ref` to another document).
    pub fn compile(text: &str, checked: Checked) -> Result<PayloadSchema, PulseError> {
        let bad = |why: String| {
            PulseError::new(
                PulseErrorCode::InvalidJsonSchema,
                format!("the handler's {} cannot be used: {why}", checked.field()),
            )
        };
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("it is not JSON: {e}")))?;
        jsonschema::validator_for(&doc)
            .map(PayloadSchema)
            .map_err(|e| bad(cut(&e.to_string())))
    }

    /// Checks a payload or result: it must be JSON (UTF-8) and valid
    /// against the schema.
    ///
    /// # Errors
    /// `invalid_payload` or `invalid_output`, naming the JSON Pointer of
    /// the failing value and the rule it broke.
    pub fn check(&self, bytes: &[u8], checked: Checked) -> Result<(), PulseError> {
        let what = checked.what();
        let refuse = |why: String| PulseError::new(checked.code(), why);
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            refuse(format!(
                "the {what} is not JSON ({e}), but the handler's {} requires JSON",
                checked.field()
            ))
        })?;
        match self.0.validate(&value) {
            Ok(()) => Ok(()),
            Err(e) => {
                let path = e.instance_path().to_string();
                let at = if path.is_empty() {
                    "/".to_owned()
                } else {
                    path
                };
                Err(refuse(format!(
                    "the {what} breaks the handler's {} at {at}: {} (rule {})",
                    checked.field(),
                    cut(&e.to_string()),
                    e.schema_path()
                )))
            }
        }
    }
}

/// Schemas most remembered before the cache starts over.
const MAX_CACHED: usize = 10_000;

/// Compiled schemas by the BLAKE3 of their text (and what they check), so
/// each is compiled once however many jobs use it.
#[derive(Default)]
pub struct SchemaCache {
    compiled: std::sync::Mutex<std::collections::HashMap<([u8; 32], bool), Compiled>>,
}

/// A schema as compiled (or why it cannot be), shared by its users.
type Compiled = std::sync::Arc<Result<PayloadSchema, PulseError>>;

impl SchemaCache {
    /// Checks `bytes` against the schema document `text`, compiling it on
    /// first use.
    ///
    /// # Errors
    /// `invalid_json_schema` for a schema that cannot be used;
    /// `invalid_payload` or `invalid_output` for bytes that break it.
    pub fn check(&self, text: &str, bytes: &[u8], checked: Checked) -> Result<(), PulseError> {
        let key = (
            *blake3::hash(text.as_bytes()).as_bytes(),
            checked == Checked::Payload,
        );
        let cached = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let schema = match cached {
            Some(s) => s,
            None => {
                let s = std::sync::Arc::new(PayloadSchema::compile(text, checked));
                let mut map = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() >= MAX_CACHED {
                    map.clear();
                }
                map.insert(key, std::sync::Arc::clone(&s));
                s
            }
        };
        match schema.as_ref() {
            Ok(s) => s.check(bytes, checked),
            Err(e) => Err(e.clone()),
        }
    }
}

fn cut(text: &str) -> String {
    crate::pulse::cut_text(text.to_owned(), MAX_DETAIL_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = r#"{"type":"object","required":["a","b"],
        "properties":{"a":{"type":"integer"},"b":{"type":"integer"}}}"#;

    #[test]
    fn payloads_are_checked_and_refusals_name_the_path_and_rule() {
        let s = PayloadSchema::compile(SUM, Checked::Payload).unwrap();
        s.check(br#"{"a":1,"b":2}"#, Checked::Payload).unwrap();
        let e = s.check(b"hello", Checked::Payload).unwrap_err();
        assert_eq!(e.code(), PulseErrorCode::InvalidPayload);
        assert!(e.message().contains("is not JSON"), "{e}");
        let e = s.check(br#"{"a":1}"#, Checked::Payload).unwrap_err();
        assert!(e.message().contains("\"b\" is a required property"), "{e}");
        assert!(e.message().contains("at /:"), "{e}");
        assert!(e.message().contains("rule /required"), "{e}");
        let e = s
            .check(br#"{"a":1,"b":"x"}"#, Checked::Payload)
            .unwrap_err();
        assert!(e.message().contains("at /b"), "{e}");
        let e = s.check(b"[1]", Checked::Result).unwrap_err();
        assert_eq!(e.code(), PulseErrorCode::InvalidOutput);
        assert!(e.message().contains("output_schema"), "{e}");
    }

    #[test]
    fn unusable_schemas_are_refused_and_nothing_is_fetched() {
        for doc in [
            r#"{"type": 5}"#,
            r#"{"$ref": "https://example.com/schema.json"}"#,
            "not json",
        ] {
            let e = PayloadSchema::compile(doc, Checked::Payload).unwrap_err();
            assert_eq!(e.code(), PulseErrorCode::InvalidJsonSchema, "{doc}: {e}");
        }
        // `true` and `{}` accept any JSON.
        for doc in ["true", "{}"] {
            let s = PayloadSchema::compile(doc, Checked::Payload).unwrap();
            s.check(b"[1,2]", Checked::Payload).unwrap();
        }
    }
}
