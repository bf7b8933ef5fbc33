//! The gRPC interfaces: generated protobuf types (the wire API, usable as a
//! client SDK), the registry service over the ledger, and the server.

mod bearer;
mod body_budget;
mod client_counts;
pub mod console;
mod gate;
mod gateway;
pub mod incoming;
mod jobs;
mod metrics;
pub mod nodes;
mod normalize;
mod read_limit;
mod registry;
mod server;
mod status;
pub mod streams;
pub mod tls;

pub use bearer::{AuthedChannel, Bearer};
pub use gateway::GatewayService;
pub use jobs::{JobsService, QueueDepths};
pub use metrics::Metrics;
pub use registry::RegistryService;
pub use server::{
    DEFAULT_DID_ENQUEUE_BURST, DEFAULT_DID_ENQUEUE_RATE, DEFAULT_DRAIN_GRACE_MS,
    DEFAULT_JOB_RETENTION_HOURS, DEFAULT_READ_BURST, DEFAULT_READ_RATE, DEFAULT_SUBMIT_BURST,
    DEFAULT_SUBMIT_DAILY, DEFAULT_SUBMIT_RATE, MAX_JOBS_REQUEST_BYTES, MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES, MAX_STREAMS_PER_CONNECTION, REFUSAL_RULES, REVOKED_TOKENS_FILE,
    ServeConfig, ServeError, serve,
};
pub use status::{ERROR_DOMAIN, to_status};

/// Types and client/server stubs generated from `proto/pulse_ledger/v1`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    tonic::include_proto!("pulse_ledger.v1");

    /// The encoded file descriptor set of every proto, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pulse_ledger_descriptor.bin"));
}
