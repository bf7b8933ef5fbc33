//! Notices from the other processes sharing a database: one connection of
//! its own LISTENs on one channel and hands each message on, and after it
//! had to connect again (the database restarted, the network broke) says
//! that some may have been missed ([`Notice::Gap`]).
//!
//! A message on the wire is `ORIGIN:TOPIC:TEXT`, ORIGIN naming the backend
//! that committed it, so a process skips its own.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_postgres::{AsyncMessage, Connection, NoTls};

use super::tls::Tls;
use super::{StorageError, query_error, with_causes};
use crate::storage::Notice;

/// The channel every notice goes out on.
pub(super) const CHANNEL: &str = "pulse_ledger";

/// Notices kept for a subscriber that has not read them yet; one that
/// falls further behind is told [`Notice::Gap`].
const BACKLOG: usize = 4096;

/// Longest wait between two attempts to connect again.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The wire form of a notice from `origin`.
pub(super) fn encode(origin: &str, topic: &str, text: &str) -> String {
    format!("{origin}:{topic}:{text}")
}

/// A notice from the wire, unless it is `origin`'s own or not one of ours.
fn decode(origin: &str, payload: &str) -> Option<Notice> {
    let (from, rest) = payload.split_once(':')?;
    let (topic, text) = rest.split_once(':')?;
    (from != origin).then(|| Notice::Message {
        topic: topic.to_owned(),
        payload: text.to_owned(),
    })
}

/// Starts listening on `handle`, and returns once the first LISTEN is in
/// place (so nothing committed after this returns is missed), or why it
/// could not be.
pub(super) fn start(
    handle: &tokio::runtime::Handle,
    config: tokio_postgres::Config,
    tls: Tls,
    origin: String,
) -> Result<broadcast::Sender<Notice>, StorageError> {
    let (tx, _) = broadcast::channel(BACKLOG);
    let (ready_tx, ready_rx) = oneshot::channel();
    let sender = tx.clone();
    handle.spawn(async move {
        let mut ready = Some(ready_tx);
        let mut wait = Duration::from_millis(50);
        loop {
            let (notes_tx, notes_rx) = mpsc::unbounded_channel();
            let listening = match &tls {
                Tls::Plain => listen(&config, NoTls, notes_tx).await,
                Tls::Verified(t) => listen(&config, t.clone(), notes_tx).await,
            };
            match listening {
                Ok(client) => {
                    wait = Duration::from_millis(50);
                    match ready.take() {
                        Some(r) => {
                            let _ = r.send(Ok(()));
                        }
                        None => {
                            let _ = sender.send(Notice::Gap);
                        }
                    }
                    forward(&origin, notes_rx, &sender).await;
                    drop(client);
                    // The gap is told once listening again: a reader that
                    // reloaded now would find the database still away.
                    tracing::warn!("the PostgreSQL notice connection closed: connecting again");
                }
                Err(e) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e));
                        return;
                    }
                    tracing::debug!(error = %e, "the PostgreSQL notice connection failed");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
    });
    super::wait(ready_rx)
        .map_err(|_| StorageError::unavailable("the PostgreSQL notice listener stopped"))??;
    Ok(tx)
}

/// Connects, drives the connection in a task of its own (forwarding what
/// it receives), and LISTENs.
async fn listen<T>(
    config: &tokio_postgres::Config,
    tls: T,
    notes: mpsc::UnboundedSender<String>,
) -> Result<tokio_postgres::Client, StorageError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await.map_err(|e| {
        StorageError::unavailable(format!(
            "connecting to listen for notices: {}",
            with_causes(&e)
        ))
    })?;
    tokio::spawn(drive(connection, notes));
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| query_error("listening for notices", &e))?;
    Ok(client)
}

/// Polls the connection until it ends, passing on each notification.
async fn drive<S, T>(mut connection: Connection<S, T>, notes: mpsc::UnboundedSender<String>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if notes.send(n.payload().to_owned()).is_err() {
                    return;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

/// Hands every notice on until the connection ends.
async fn forward(
    origin: &str,
    mut notes: mpsc::UnboundedReceiver<String>,
    sender: &broadcast::Sender<Notice>,
) {
    while let Some(payload) = notes.recv().await {
        if let Some(notice) = decode(origin, &payload) {
            let _ = sender.send(notice);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_skips_its_own_notices_and_reads_the_others() {
        let wire = encode("aa", "log", "12:x");
        assert_eq!(decode("aa", &wire), None);
        assert_eq!(
            decode("bb", &wire),
            Some(Notice::Message {
                topic: "log".into(),
                payload: "12:x".into()
            })
        );
        assert_eq!(decode("bb", "not ours"), None);
    }
}
