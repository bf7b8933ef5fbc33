//! The ledger: every accepted attestation, in one append-only Merkle log
//! stored in fjall, with signed checkpoints, proofs and indexes.

mod checkpoint;
mod error;
mod layout;
mod merkle;
mod space;
mod store;
mod stored;
mod view;
mod writer;

pub use checkpoint::{Checkpoint, is_valid_origin, key_id, verifier_key, verify_checkpoint};
pub use error::{LedgerError, LedgerErrorCode};
pub use layout::SubjectRecord;
pub use merkle::{
    Frontier, Hash, NewNode, NodeSource, consistency_proof, empty_root, inclusion_proof, leaf_hash,
    node_hash, subtree_root, verify_consistency, verify_inclusion,
};
pub use space::{DEFAULT_LOG_RESERVE_BYTES, DEFAULT_MIN_FREE_BYTES, SpaceGuard};
pub use store::{
    AuditReport, CHANGE_LOG_ENTRIES, ChainPage, DEFAULT_WRITE_QUEUE_DEPTH, EquivocationRecord,
    Ledger, LedgerConfig, MAX_ENTRY_RANGE, MAX_PAGE, MAX_SCAN, PendingAppend, Receipt,
    SubjectFilter, TreeHead, space_names,
};
pub use stored::StoredLog;
