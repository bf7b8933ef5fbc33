//! The JSON view of statements and chain states, used by `--json` output
//! and by the test vectors (`spec/attestation.md`, "JSON forms").

use serde_json::{Map, Value, json};

use super::chain::ChainState;
use super::schema::Schema;
use super::statement::{Action, Statement};

impl Schema {
    /// The schema as a JSON object: present fields only; `code` as hex.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        };
        match self {
            Schema::Handler(s) => {
                put("name", Some(json!(s.name)));
                put("version", Some(json!(s.version)));
                put("plugin", Some(json!(s.plugin.to_string())));
                put("input_schema", s.input_schema.as_ref().map(|x| json!(x)));
                put("output_schema", s.output_schema.as_ref().map(|x| json!(x)));
                put("timeout_ms", s.timeout_ms.map(|x| json!(x)));
                put("max_attempts", s.max_attempts.map(|x| json!(x)));
                put("max_cost", s.max_cost.map(|x| json!(x)));
                put("max_concurrency", s.max_concurrency.map(|x| json!(x)));
                put("description", s.description.as_ref().map(|x| json!(x)));
                put("code", s.code.as_ref().map(|x| json!(hex::encode(x))));
                put("access", s.access.as_ref().map(access_json));
                put("network", s.network.map(|n| json!(n.as_str())));
            }
            Schema::Plugin(s) => {
                put("name", Some(json!(s.name)));
                put("version", Some(json!(s.version)));
                put("protocol", Some(json!(s.protocol)));
                put("endpoint", s.endpoint.as_ref().map(|x| json!(x)));
                put("description", s.description.as_ref().map(|x| json!(x)));
            }
        }
        Value::Object(m)
    }
}

/// Access lists as JSON: each written list as an array of its members'
/// text, lists left out absent.
fn access_json(a: &super::access::HandlerAccess) -> Value {
    let mut m = Map::new();
    for right in super::access::Right::ALL {
        if let Some(list) = a.written(right) {
            let items: Vec<String> = list.iter().map(ToString::to_string).collect();
            m.insert(right.as_str().to_owned(), json!(items));
        }
    }
    Value::Object(m)
}

impl Statement {
    /// The statement as a JSON object with the body's field names; `prev`
    /// as hex, absent fields left out.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("v".into(), json!(super::statement::FORMAT_VERSION));
        m.insert("kind".into(), json!(self.kind().to_string()));
        m.insert("subject".into(), json!(self.subject.to_string()));
        m.insert("signer".into(), json!(self.signer.to_string()));
        m.insert("seq".into(), json!(self.seq));
        if let Some(p) = self.prev {
            m.insert("prev".into(), json!(p.to_string()));
        }
        m.insert("issued_at".into(), json!(self.issued_at));
        match &self.action {
            Action::Register(s) | Action::Update(s) => {
                m.insert("schema".into(), s.to_json());
            }
            Action::Rotate { new_key } => {
                m.insert("new_key".into(), json!(new_key.to_string()));
            }
            Action::Revoke { reason } => {
                if let Some(r) = reason {
                    m.insert("reason".into(), json!(r));
                }
            }
        }
        Value::Object(m)
    }
}

impl ChainState {
    /// The state as a JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "subject": self.subject.to_string(),
            "family": self.family.as_str(),
            "key": self.key.to_string(),
            "seq": self.seq,
            "head": self.head.to_string(),
            "issued_at": self.issued_at,
            "revoked": self.revoked,
            "schema": self.schema.to_json(),
        })
    }
}
