//! Plugins: out-of-process executors of handlers, reached over gRPC only
//! after Pulse verified from the ledger that the handler's chain names the
//! plugin and the plugin proved it holds its current key
//! (spec/plugin.md).

mod admit;
mod attempt_streams;
mod executor;
mod gateway;
mod handshake;
mod host;
mod link;
mod proof;
mod resolve;
mod session;

pub mod confine;
pub mod sdk;

pub use admit::{Refused, admit};
pub use attempt_streams::MAX_ATTEMPT_STREAMS;
pub use executor::{
    MAX_ERROR_MESSAGE_BYTES, MAX_PLUGIN_CHECKPOINT_BYTES, MAX_PROGRESS_MESSAGE_BYTES,
    MAX_RESULT_BYTES, PluginExecutor, exec_event,
};
pub use gateway::{Gateway, Inbound, Outbound};
pub use handshake::{HANDSHAKE_MAGIC, PROTOCOL_VERSION, handshake_line, parse_handshake};
pub use host::{DrainConnected, HostConfig, PluginConfig, PluginHost, PluginSource};
pub use link::StreamLink;
pub use proof::{
    AnnouncedHandler, Announcement, MAX_ANNOUNCED, NONCE_BYTES, PROOF_CONTEXT, ProofError,
    proof_message, sign_proof, verify_proof,
};
pub use resolve::{ChainRouter, Verdict, resolve_chains};
pub use session::{Connection, Link, RefusedProof, Session, SessionLost, Sessions};
