//! Durable registrations per second: pre-signed genesis statements
//! submitted with `Submit`, each acknowledged only once fsynced, from a
//! number of concurrent clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tonic::transport::Channel;

use super::plugin_genesis;
use crate::api::proto::{self, registry_client::RegistryClient};

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
            .map(|i| plugin_genesis(&label, i))
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

/// `Submit` acknowledgement latency: new plugin registrations sent at
/// `rate` per second, open loop, for `secs`; µs from each one's scheduled
/// send time to its durable acknowledgement, in send order. `label` makes
/// the keys unique.
///
/// # Errors
/// A submission was refused or the server failed.
pub async fn submit_latency(
    channel: Channel,
    rate: f64,
    secs: f64,
    label: &str,
) -> Result<Vec<u64>, String> {
    let count = (rate * secs).max(1.0) as usize;
    let envelopes = (0..count as u64)
        .map(|i| plugin_genesis(label, i))
        .collect::<Result<Vec<_>, _>>()?;
    let client = RegistryClient::new(channel);
    let start = Instant::now();
    let mut sent = Vec::with_capacity(count);
    for (i, envelope) in envelopes.into_iter().enumerate() {
        let due = start + std::time::Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let mut c = client.clone();
        sent.push(tokio::spawn(async move {
            c.submit(proto::SubmitRequest { envelope })
                .await
                .map_err(|s| format!("Submit: {}", s.message()))?;
            Ok::<_, String>(due.elapsed().as_micros() as u64)
        }));
    }
    let mut out = Vec::with_capacity(count);
    for s in sent {
        out.push(s.await.map_err(|e| e.to_string())??);
    }
    Ok(out)
}

/// As [`registration_rate`], over `streams` `SubmitStream` calls instead
/// of unary calls: each stream sends its share at once and the server
/// keeps a bounded number in flight per stream, so the client spends far
/// less CPU per registration than a unary call costs it.
///
/// # Errors
/// A submission was refused or the server failed.
pub async fn registration_stream_rate(
    channel: Channel,
    n: usize,
    streams: usize,
    run: &str,
) -> Result<f64, String> {
    let label = format!("register-stream-{run}-{streams}");
    let envelopes: Vec<Vec<u8>> = (0..n as u64)
        .map(|i| plugin_genesis(&label, i))
        .collect::<Result<_, _>>()?;
    let streams = streams.max(1);
    let mut shares: Vec<Vec<proto::SubmitRequest>> = (0..streams).map(|_| Vec::new()).collect();
    for (i, envelope) in envelopes.into_iter().enumerate() {
        shares[i % streams].push(proto::SubmitRequest { envelope });
    }
    let client = RegistryClient::new(channel);
    let t = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let count = share.len();
                let mut answers = c
                    .submit_stream(tokio_stream::iter(share))
                    .await
                    .map_err(|s| format!("SubmitStream: {}", s.message()))?
                    .into_inner();
                let mut answered = 0;
                while let Some(a) = answers
                    .message()
                    .await
                    .map_err(|s| format!("SubmitStream: {}", s.message()))?
                {
                    if let Some(proto::submit_stream_response::Result::Rejected(e)) = a.result {
                        return Err(format!("SubmitStream: item {}: {}", a.position, e.message));
                    }
                    answered += 1;
                }
                if answered != count {
                    return Err(format!("SubmitStream: {answered} of {count} answered"));
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}
