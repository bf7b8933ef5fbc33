//! The bytes of request bodies the server holds for callers it does not
//! know: anyone can sign a DID token, so a DID token cannot stand between
//! a stranger and a 16 MiB upload the way an operator token does
//! (spec/security.md, "Exhaustion"). All such bodies share one allowance
//! of bytes; a body that would take the allowance past its size is cut
//! off with `overloaded`. What is held is the message being received: a
//! stream of requests (`EnqueueStream`) gives back each message's bytes
//! once it has arrived whole, so a long stream of small jobs holds no
//! more than one job's bytes.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::Bytes;

use super::client_counts::ClientCounts;

/// Bytes of request bodies held at once for DID callers, all together.
pub(crate) const DID_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Of which one client (address, or IPv6 /64) may hold at most this much.
pub(crate) const DID_BODY_BYTES_PER_CLIENT: usize = 16 * 1024 * 1024;
/// Time a DID caller has to send a whole request message, from the start
/// of the call or from the message's first byte.
pub(crate) const DID_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The shared allowance.
#[derive(Debug, Clone)]
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
    per_client: Arc<ClientCounts>,
    client_bytes: usize,
    timeout: std::time::Duration,
}

impl BodyBudget {
    pub(crate) fn new(
        bytes: usize,
        client_bytes: usize,
        timeout: std::time::Duration,
    ) -> BodyBudget {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(bytes)),
            per_client: Arc::default(),
            client_bytes,
            timeout,
        }
    }

    /// `body` of a call from `client`, drawing on the allowance (and the
    /// client's share of it) as its bytes arrive and giving them back once
    /// their message has arrived whole, or when the body is dropped (the
    /// call ends). A message not complete within the timeout (the first
    /// from the call's start, each later one from its first byte) is cut
    /// off.
    pub(crate) fn hold(
        &self,
        body: tonic::body::Body,
        client: Option<IpAddr>,
    ) -> tonic::body::Body {
        tonic::body::Body::new(Held {
            inner: body,
            bytes: Arc::clone(&self.bytes),
            held: None,
            client: client.map(|c| (super::incoming::client_of(c), 0)),
            budget: self.clone(),
            deadline: Some(Box::pin(tokio::time::sleep(self.timeout))),
            framing: Framing::default(),
        })
    }

    /// Bytes not held now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

struct Held {
    inner: tonic::body::Body,
    bytes: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    /// The client and the bytes this body holds of its share.
    client: Option<(IpAddr, usize)>,
    budget: BodyBudget,
    /// When the message being received must be whole; none between
    /// messages.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    framing: Framing,
}

/// Where a body is in its gRPC messages: each is a 5-byte prefix (a flag,
/// then its length, big-endian) and that many bytes.
#[derive(Debug, Default)]
struct Framing {
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the message still to come once its prefix is read.
    left: usize,
    /// Bytes of the message being received that have arrived.
    partial: usize,
}

impl Framing {
    /// Follows `data` through the messages.
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = if self.prefix_len < 5 {
                let take = (5 - self.prefix_len).min(data.len());
                self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
                self.prefix_len += take;
                if self.prefix_len == 5 {
                    let len = [
                        self.prefix[1],
                        self.prefix[2],
                        self.prefix[3],
                        self.prefix[4],
                    ];
                    self.left = u32::from_be_bytes(len) as usize;
                }
                take
            } else {
                let take = self.left.min(data.len());
                self.left -= take;
                take
            };
            self.partial += take;
            data = &data[take..];
            if self.prefix_len == 5 && self.left == 0 {
                // Whole: the next byte starts the next message.
                self.prefix_len = 0;
                self.partial = 0;
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((c, n)) = self.client {
            self.budget.per_client.sub(c, n);
        }
    }
}

fn overloaded(message: String) -> tonic::Status {
    super::status::to_status(&crate::ledger::LedgerError::Ledger {
        code: crate::ledger::LedgerErrorCode::Overloaded,
        message,
    })
}

impl Held {
    /// Gives back the bytes of the messages that arrived whole, keeping
    /// those of the one being received, and times that one from its first
    /// byte.
    fn release_whole_messages(&mut self) {
        let keep = self.framing.partial;
        if let Some(permit) = &mut self.held {
            let whole = permit.num_permits().saturating_sub(keep);
            if whole > 0 {
                drop(permit.split(whole));
            }
        }
        if let Some((c, held)) = &mut self.client {
            let whole = held.saturating_sub(keep);
            if whole > 0 {
                self.budget.per_client.sub(*c, whole);
                *held -= whole;
            }
        }
        if keep == 0 {
            self.deadline = None;
        } else if self.deadline.is_none() {
            self.deadline = Some(Box::pin(tokio::time::sleep(self.budget.timeout)));
        }
    }
}

impl Body for Held {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let late = this
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if !this.inner.is_end_stream() && late {
            return Poll::Ready(Some(Err(overloaded(format!(
                "a DID caller's request message must arrive whole within {} s",
                this.budget.timeout.as_secs()
            )))));
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            if let Some((c, held)) = &mut this.client {
                if !this
                    .budget
                    .per_client
                    .try_add(*c, data.len(), this.budget.client_bytes)
                {
                    return Poll::Ready(Some(Err(overloaded(format!(
                        "one client holds at most {} MiB of request bodies as a DID caller at once; retry shortly",
                        this.budget.client_bytes / (1024 * 1024)
                    )))));
                }
                *held += data.len();
            }
            let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
            match Arc::clone(&this.bytes).try_acquire_many_owned(n) {
                Ok(p) => match &mut this.held {
                    Some(held) => held.merge(p),
                    None => this.held = Some(p),
                },
                Err(_) => {
                    return Poll::Ready(Some(Err(overloaded(format!(
                        "the server holds at most {} MiB of request bodies for DID callers, \
                         and that much is in flight; retry shortly",
                        DID_BODY_BYTES / (1024 * 1024)
                    )))));
                }
            }
            this.framing.feed(data);
            this.release_whole_messages();
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body in frames of `chunks` bytes that are all one message, which
    /// they leave one byte short: an upload that has not finished.
    fn body(chunks: &[usize]) -> tonic::body::Body {
        let total: usize = chunks.iter().sum();
        let mut bytes = messages(&[total - 5 + 1]);
        bytes.truncate(total);
        let cuts: Vec<usize> = chunks
            .iter()
            .scan(0, |at, n| {
                *at += n;
                Some(*at)
            })
            .filter(|&at| at < total)
            .collect();
        chopped(&bytes, &cuts, false)
    }

    /// `len` bytes of gRPC messages of `sizes`, back to back.
    fn messages(sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in sizes {
            out.push(0);
            out.extend_from_slice(&u32::try_from(*n).unwrap().to_be_bytes());
            out.extend(std::iter::repeat_n(7u8, *n));
        }
        out
    }

    /// A body of `bytes` cut into frames at `cuts`, then pending for ever
    /// if `open`.
    fn chopped(bytes: &[u8], cuts: &[usize], open: bool) -> tonic::body::Body {
        let mut frames = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&bytes.len())) {
            frames.push(Ok::<_, std::convert::Infallible>(Frame::data(
                Bytes::copy_from_slice(&bytes[from..to]),
            )));
            from = to;
        }
        let frames = tokio_stream::iter(frames);
        if open {
            use tokio_stream::StreamExt as _;
            tonic::body::Body::new(http_body_util::StreamBody::new(
                frames.chain(tokio_stream::pending()),
            ))
        } else {
            tonic::body::Body::new(http_body_util::StreamBody::new(frames))
        }
    }

    #[tokio::test]
    async fn a_stream_holds_only_the_message_being_received() {
        // 20 messages of 200 bytes through an allowance of 1,000, in
        // frames that split prefixes and messages anywhere.
        let budget = BodyBudget::new(1000, 600, std::time::Duration::from_secs(30));
        let bytes = messages(&[200; 20]);
        let cuts: Vec<usize> = (1..bytes.len()).step_by(97).collect();
        let client = Some(IpAddr::from([192, 0, 2, 9]));
        let mut body = budget.hold(chopped(&bytes, &cuts, false), client);
        let mut seen = 0;
        while let Some(frame) = body.frame().await {
            seen += frame.unwrap().into_data().unwrap().len();
            // What is held is the part of the message in flight.
            let framed = 205;
            let held = 1000 - budget.available();
            assert_eq!(held, seen % framed, "after {seen} bytes");
        }
        assert_eq!(seen, bytes.len());
        assert_eq!(budget.available(), 1000);
        // A message larger than the client's share is still cut off.
        let mut big = budget.hold(chopped(&messages(&[700]), &[300], false), client);
        big.frame().await.unwrap().unwrap();
        assert!(big.frame().await.unwrap().is_err());
        drop(big);
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test]
    async fn a_stream_may_idle_between_messages_but_not_inside_one() {
        let budget = BodyBudget::new(1000, 1000, std::time::Duration::from_millis(50));
        let whole = messages(&[10]);
        let mut idle = budget.hold(chopped(&whole, &[], true), None);
        idle.frame().await.unwrap().unwrap();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(300), idle.frame()).await;
        assert!(waited.is_err(), "a stream between messages is not cut off");
        // Half a message, then nothing: cut off.
        let mut half = budget.hold(chopped(&messages(&[10, 10])[..20], &[], true), None);
        half.frame().await.unwrap().unwrap();
        let cut = half.frame().await.unwrap().unwrap_err();
        assert!(cut.message().contains("whole within"), "{}", cut.message());
    }

    #[tokio::test]
    async fn bodies_share_the_allowance_and_give_it_back() {
        let budget = BodyBudget::new(1000, 1000, std::time::Duration::from_secs(30));
        let mut a = budget.hold(body(&[400, 400]), None);
        assert_eq!(
            a.frame().await.unwrap().unwrap().into_data().unwrap().len(),
            400
        );
        assert_eq!(
            a.frame().await.unwrap().unwrap().into_data().unwrap().len(),
            400
        );
        assert_eq!(budget.available(), 200);
        // A second body past the allowance is cut off with `overloaded`.
        let mut b = budget.hold(body(&[100, 300]), None);
        b.frame().await.unwrap().unwrap();
        let e = b.frame().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().starts_with("overloaded: "), "{}", e.message());
        drop((a, b));
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test]
    async fn one_client_holds_its_share_and_a_slow_body_is_cut_off() {
        let budget = BodyBudget::new(1000, 500, std::time::Duration::from_secs(30));
        let (x, y) = (
            Some(IpAddr::from([192, 0, 2, 1])),
            Some(IpAddr::from([192, 0, 2, 2])),
        );
        let mut a = budget.hold(body(&[400, 200]), x);
        a.frame().await.unwrap().unwrap();
        // The same client's next bytes go past its share; another's do not.
        let mut b = budget.hold(body(&[200]), x);
        assert!(b.frame().await.unwrap().is_err());
        let mut c = budget.hold(body(&[200]), y);
        c.frame().await.unwrap().unwrap();
        drop((a, b));
        let mut d = budget.hold(body(&[400]), x);
        d.frame().await.unwrap().unwrap();
        // A body that does not finish in time is cut off.
        let slow = BodyBudget::new(1000, 1000, std::time::Duration::from_millis(50));
        let never =
            tonic::body::Body::new(http_body_util::StreamBody::new(tokio_stream::pending::<
                Result<Frame<Bytes>, std::convert::Infallible>,
            >()));
        let mut e = slow.hold(never, x);
        let cut = e.frame().await.unwrap().unwrap_err();
        assert!(cut.message().contains("within"), "{}", cut.message());
    }
}
