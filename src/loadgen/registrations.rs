//! Durable registrations per second: pre-signed genesis statements
//! submitted with `Submit`, each acknowledged only once fsynced, from a
//! number of concurrent clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tonic::transport::Channel;

use super::bench_key;
use crate::api::proto::{self, registry_client::RegistryClient};
use crate::{Action, Family, PluginSchema, Schema, Statement, sign_statement};

/// Submits `n` new plugin registrations with `clients` concurrent callers
/// on `channel`; registrations/s. `run` makes the keys unique to this run
/// (so a server that saw an earlier run stores them anew).
///
/// # Errors
/// A submission was refused or the server failed.
pub async fn registration_rate(
    channel: Channel,
    n: usize,
    clients: usize,
    run: &str,
) -> Result<f64, String> {
    let label = format!("register-{run}-{clients}");
    let envelopes: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..n as u64)
            .map(|i| {
                let (sk, did) = bench_key(&label, i);
                let st = Statement {
                    family: Family::Plugin,
                    subject: did.clone(),
                    signer: did,
                    seq: 0,
                    prev: None,
                    issued_at: 1_000,
                    action: Action::Register(Schema::Plugin(PluginSchema::new("bench", "1.0.0"))),
                };
                sign_statement(&st, &sk, None)
                    .map(|a| a.envelope().to_vec())
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?,
    );
    let next = Arc::new(AtomicUsize::new(0));
    let client = RegistryClient::new(channel);
    let t = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (mut c, next, envs) = (client.clone(), Arc::clone(&next), Arc::clone(&envelopes));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(envelope) = envs.get(i) else {
                        return Ok::<(), String>(());
                    };
                    c.submit(proto::SubmitRequest {
                        envelope: envelope.clone(),
                    })
                    .await
                    .map_err(|s| format!("Submit: {}", s.message()))?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}
