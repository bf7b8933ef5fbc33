//! How the ledger's data sits in fjall: keyspace names, key encodings and
//! the stored subject record. Pure code; spec/ledger.md mirrors it.

use super::error::{LedgerError, LedgerErrorCode};
use crate::{AttestationId, ChainHead, Did, Family};

/// The keyspaces, one concept each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Ks {
    /// index (u64 BE) → envelope bytes.
    Entries,
    /// level (u8) ‖ index (u64 BE) → 32-byte hash of a perfect subtree.
    Nodes,
    /// attestation ID (32) → index (u64 BE).
    ById,
    /// subject key (32) → [`SubjectRecord`].
    Subjects,
    /// subject key (32) ‖ seq (u64 BE) → index (u64 BE).
    Chains,
    /// family (u8) ‖ name ‖ 0x00 ‖ subject key (32) → empty.
    ByName,
    /// plugin key (32) ‖ handler key (32) → empty.
    ByPlugin,
    /// subject key (32) ‖ seq (u64 BE) → logged index (u64 BE) ‖ the first
    /// rejected envelope for that seq (one record per seq bounds storage).
    Equivocations,
    /// text key → value: `size` (u64 BE), `checkpoint` (signed note), `origin`.
    Meta,
}

impl Ks {
    pub(crate) const ALL: [Ks; 9] = [
        Ks::Entries,
        Ks::Nodes,
        Ks::ById,
        Ks::Subjects,
        Ks::Chains,
        Ks::ByName,
        Ks::ByPlugin,
        Ks::Equivocations,
        Ks::Meta,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Ks::Entries => "entries",
            Ks::Nodes => "nodes",
            Ks::ById => "by_id",
            Ks::Subjects => "subjects",
            Ks::Chains => "chains",
            Ks::ByName => "by_name",
            Ks::ByPlugin => "by_plugin",
            Ks::Equivocations => "equivocations",
            Ks::Meta => "meta",
        }
    }
}

pub(crate) const META_SIZE: &[u8] = b"size";
pub(crate) const META_CHECKPOINT: &[u8] = b"checkpoint";
pub(crate) const META_ORIGIN: &[u8] = b"origin";

pub(crate) fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(crate) fn read_u64(bytes: &[u8]) -> Result<u64, LedgerError> {
    let arr: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt("an 8-byte integer is short"))?;
    Ok(u64::from_be_bytes(arr))
}

pub(crate) fn node_key(level: u8, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

pub(crate) fn chain_key(subject: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(subject);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn name_key(family: Family, name: &str, subject: &[u8; 32]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len() + 1 + 32);
    k.push(family_byte(family));
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(subject);
    k
}

pub(crate) fn plugin_key(plugin: &[u8; 32], handler: &[u8; 32]) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(plugin);
    k[32..].copy_from_slice(handler);
    k
}

pub(crate) fn equivocation_key(subject: &[u8; 32], seq: u64) -> [u8; 40] {
    chain_key(subject, seq)
}

pub(crate) fn family_byte(f: Family) -> u8 {
    match f {
        Family::Handler => 0,
        Family::Plugin => 1,
    }
}

fn corrupt(what: &str) -> LedgerError {
    LedgerError::new(
        LedgerErrorCode::Integrity,
        format!("stored data is corrupt: {what}"),
    )
}

/// What the ledger keeps per subject: its chain head, where its
/// statements are, and the index keys derived from its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectRecord {
    /// The chain's head (key, seq, head ID, issued_at, revoked).
    pub head: ChainHead,
    /// Log index of the genesis statement.
    pub genesis_index: u64,
    /// Log index of the head statement.
    pub head_index: u64,
    /// Log index of the statement that carries the schema in force.
    pub schema_index: u64,
    /// The schema's name.
    pub name: String,
    /// For a handler, the plugin its schema names.
    pub plugin: Option<Did>,
}

const RECORD_VERSION: u8 = 1;
const FIXED: usize = 1 + 1 + 1 + 8 * 5 + 32 * 4 + 1;

impl SubjectRecord {
    /// version ‖ family ‖ revoked ‖ seq ‖ issued_at ‖ genesis_index ‖
    /// head_index ‖ schema_index ‖ subject ‖ key ‖ head ID ‖ has_plugin ‖
    /// plugin (32, zero if none) ‖ name.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let h = &self.head;
        let mut out = Vec::with_capacity(FIXED + self.name.len());
        out.push(RECORD_VERSION);
        out.push(family_byte(h.family));
        out.push(u8::from(h.revoked));
        for n in [
            h.seq,
            h.issued_at,
            self.genesis_index,
            self.head_index,
            self.schema_index,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(h.subject.public_key());
        out.extend_from_slice(h.key.public_key());
        out.extend_from_slice(h.head.as_bytes());
        out.push(u8::from(self.plugin.is_some()));
        out.extend_from_slice(self.plugin.as_ref().map_or(&[0u8; 32], |p| p.public_key()));
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<SubjectRecord, LedgerError> {
        if bytes.len() < FIXED || bytes[0] != RECORD_VERSION {
            return Err(corrupt("subject record has the wrong length or version"));
        }
        let family = match bytes[1] {
            0 => Family::Handler,
            1 => Family::Plugin,
            _ => return Err(corrupt("subject record family")),
        };
        let n = |i: usize| read_u64(&bytes[3 + 8 * i..]);
        let key32 = |at: usize| -> Result<Did, LedgerError> {
            let raw: [u8; 32] = bytes[at..at + 32].try_into().map_err(|_| corrupt("key"))?;
            Did::from_public_key(raw).map_err(|_| corrupt("stored key is not a valid key"))
        };
        let k = 3 + 8 * 5;
        let head_id: [u8; 32] = bytes[k + 64..k + 96]
            .try_into()
            .map_err(|_| corrupt("head"))?;
        let plugin = match bytes[k + 96] {
            0 => None,
            _ => Some(key32(k + 97)?),
        };
        let name = std::str::from_utf8(&bytes[FIXED..])
            .map_err(|_| corrupt("subject name is not UTF-8"))?
            .to_owned();
        Ok(SubjectRecord {
            head: ChainHead {
                subject: key32(k)?,
                family,
                key: key32(k + 32)?,
                seq: n(0)?,
                head: AttestationId(head_id),
                issued_at: n(1)?,
                revoked: bytes[2] != 0,
            },
            genesis_index: n(2)?,
            head_index: n(3)?,
            schema_index: n(4)?,
            name,
            plugin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let did = |n: u8| {
            Did::from_verifying_key(
                &ed25519_dalek::SigningKey::from_bytes(&[n; 32]).verifying_key(),
            )
            .unwrap()
        };
        for plugin in [None, Some(did(3))] {
            let r = SubjectRecord {
                head: ChainHead {
                    subject: did(1),
                    family: Family::Handler,
                    key: did(2),
                    seq: 7,
                    head: AttestationId([9; 32]),
                    issued_at: 1234,
                    revoked: true,
                },
                genesis_index: 1,
                head_index: 99,
                schema_index: 50,
                name: "python.script".into(),
                plugin: plugin.clone(),
            };
            assert_eq!(SubjectRecord::decode(&r.encode()).unwrap(), r);
        }
        assert!(SubjectRecord::decode(&[1, 0, 0]).is_err());
    }
}
