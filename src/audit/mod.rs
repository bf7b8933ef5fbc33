//! Checking a log from the outside (spec/audit.md): the full audit of its
//! entries against a signed checkpoint, offline bundles of one subject's
//! chain with inclusion proofs, and the comparisons that catch a rewritten
//! history. Pure: callers bring the bytes.

mod auditor;
mod batch;
mod bundle;
mod error;

pub use auditor::{AuditSummary, LogAuditor, compare_checkpoints};
pub use batch::{available_threads, verify_all, verify_parallel};
pub use bundle::{
    BUNDLE_VERSION, Bundle, BundleEntry, BundleReport, MAX_BUNDLE_BYTES, verify_bundle,
};
pub use error::{AuditCode, AuditError};
