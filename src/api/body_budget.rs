//! The bytes of request bodies the server holds for callers it does not
//! know: anyone can sign a DID token, so a DID token cannot stand between
//! a stranger and a 16 MiB upload the way an operator token does
//! (spec/security.md, "Exhaustion"). All such bodies share one allowance
//! of bytes; a body that would take the allowance past its size is cut
//! off with `overloaded`. A call of one request holds its body until the
//! body ends, which must be within the timeout of the call's start. A
//! stream of requests (`EnqueueStream`) holds the message being received
//! and as many bytes as its largest message so far (what the decoder keeps
//! reserved for it), each message must arrive whole within the timeout of
//! its first byte, and a message larger than one job can be is cut off: a
//! long stream of small jobs holds about one job's bytes, and may idle
//! between jobs.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::Bytes;

use super::client_counts::ClientCounts;

/// The largest message of a DID caller's stream of requests: a job's
/// largest payload and room for its other fields. Larger is cut off with
/// `too_large` (the decoder would reserve it for the stream's life).
pub(crate) const MAX_STREAMED_REQUEST: usize = crate::pulse::MAX_PAYLOAD_BYTES + 4096;

/// Bytes of request bodies held at once for DID callers, all together.
pub(crate) const DID_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Of which one client (address, or IPv6 /64) may hold at most this much.
pub(crate) const DID_BODY_BYTES_PER_CLIENT: usize = 16 * 1024 * 1024;
/// Time a DID caller has to send its whole request body (one request), or
/// each whole message of a stream of requests from its first byte.
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
    /// client's share of it) as its bytes arrive and giving them back when
    /// it is dropped (the call ends). A body not complete within the
    /// timeout is cut off. With `stream`, the body is a stream of requests
    /// instead (see the module's comment).
    pub(crate) fn hold(
        &self,
        body: tonic::body::Body,
        client: Option<IpAddr>,
        stream: Option<StreamRule>,
    ) -> tonic::body::Body {
        tonic::body::Body::new(Held {
            inner: body,
            bytes: Arc::clone(&self.bytes),
            held: None,
            client: client.map(|c| (super::incoming::client_of(c), 0)),
            budget: self.clone(),
            // A stream's deadline starts with each message's first byte.
            deadline: stream
                .is_none()
                .then(|| Box::pin(tokio::time::sleep(self.timeout))),
            framing: stream.map(|rule| (rule, Framing::default())),
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
    /// When the body (or, on a stream, the message being received) must
    /// be whole; none between a stream's messages.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// For a stream of requests: its rule, and where it is in its messages.
    framing: Option<(StreamRule, Framing)>,
}

/// How a stream of requests is held.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamRule {
    /// The largest message (prefix included) a request may be.
    pub(crate) max_message: usize,
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
    /// The largest message so far, prefix included.
    largest: usize,
    /// The largest length a prefix so far declared, prefix included.
    declared: usize,
}

impl Framing {
    /// Follows `data` through the messages; how many it completed.
    fn feed(&mut self, mut data: &[u8]) -> usize {
        let mut completed = 0;
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
                    self.declared = self.declared.max(5 + self.left);
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
                self.largest = self.largest.max(self.partial);
                self.prefix_len = 0;
                self.partial = 0;
                completed += 1;
            }
        }
        completed
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((c, n)) = self.client {
            self.budget.per_client.sub(c, n);
        }
    }
}

fn too_large(message: &str) -> tonic::Status {
    super::normalize::refusal(tonic::Code::ResourceExhausted, "too_large", message)
}

fn overloaded(message: String) -> tonic::Status {
    super::status::to_status(&crate::ledger::LedgerError::Ledger {
        code: crate::ledger::LedgerErrorCode::Overloaded,
        message,
    })
}

impl Held {
    /// On a stream of requests: refuses a message larger than a request
    /// may be, gives back the bytes beyond those of the message being
    /// received and of the largest one so far, and times each message from
    /// its first byte.
    fn follow_messages(&mut self, data: &[u8]) -> Result<(), tonic::Status> {
        let Some((rule, framing)) = &mut self.framing else {
            return Ok(());
        };
        let completed = framing.feed(data);
        if framing.declared > rule.max_message {
            return Err(too_large(&format!(
                "a DID caller's streamed request is at most {} bytes, not {}",
                rule.max_message, framing.declared
            )));
        }
        let (partial, largest) = (framing.partial, framing.largest);
        let keep = partial.max(largest);
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
        if partial == 0 {
            self.deadline = None;
        } else if completed > 0 || self.deadline.is_none() {
            // A message began in this frame: its own time starts now.
            self.deadline = Some(Box::pin(tokio::time::sleep(self.budget.timeout)));
        }
        Ok(())
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
            if let Err(e) = this.follow_messages(data) {
                return Poll::Ready(Some(Err(e)));
            }
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

    const STREAM: Option<StreamRule> = Some(StreamRule {
        max_message: 100_000,
    });

    /// A body that never sends a byte.
    fn silent() -> tonic::body::Body {
        let nothing = tokio_stream::pending::<Result<Frame<Bytes>, std::convert::Infallible>>();
        tonic::body::Body::new(http_body_util::StreamBody::new(nothing))
    }

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
        let mut body = budget.hold(chopped(&bytes, &cuts, false), client, STREAM);
        let mut seen = 0;
        while let Some(frame) = body.frame().await {
            seen += frame.unwrap().into_data().unwrap().len();
            // What is held is the message in flight, or the largest one
            // so far (the decoder keeps that much reserved).
            let framed = 205;
            let held = 1000 - budget.available();
            assert_eq!(held, seen.min(framed), "after {seen} bytes");
        }
        assert_eq!(seen, bytes.len());
        drop(body);
        assert_eq!(budget.available(), 1000);
        // A message larger than the client's share is still cut off.
        let mut big = budget.hold(chopped(&messages(&[700]), &[300], false), client, STREAM);
        big.frame().await.unwrap().unwrap();
        assert!(big.frame().await.unwrap().is_err());
        drop(big);
        assert_eq!(budget.available(), 1000);
        // So is one larger than a request may be, from its prefix on.
        let rule = Some(StreamRule { max_message: 300 });
        let mut huge = budget.hold(chopped(&messages(&[400]), &[10], false), client, rule);
        let e = huge.frame().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().starts_with("too_large: "), "{}", e.message());
    }

    #[tokio::test]
    async fn one_request_is_held_whole_until_its_body_ends() {
        let budget = BodyBudget::new(1000, 1000, std::time::Duration::from_millis(50));
        let mut one = budget.hold(chopped(&messages(&[100, 100]), &[50], false), None, None);
        while let Some(frame) = one.frame().await {
            frame.unwrap();
        }
        assert_eq!(budget.available(), 1000 - 210);
        drop(one);
        // A whole message whose body never ends is still cut off.
        let mut open = budget.hold(chopped(&messages(&[10]), &[], true), None, None);
        open.frame().await.unwrap().unwrap();
        let cut = open.frame().await.unwrap().unwrap_err();
        assert!(cut.message().contains("within"), "{}", cut.message());
    }

    #[tokio::test]
    async fn a_stream_may_idle_between_messages_but_not_inside_one() {
        let budget = BodyBudget::new(1000, 1000, std::time::Duration::from_millis(50));
        let patience = std::time::Duration::from_millis(300);
        let mut quiet = budget.hold(silent(), None, STREAM);
        let waited = tokio::time::timeout(patience, quiet.frame()).await;
        assert!(
            waited.is_err(),
            "a stream before its first message is not cut off"
        );
        let whole = messages(&[10]);
        let mut idle = budget.hold(chopped(&whole, &[], true), None, STREAM);
        idle.frame().await.unwrap().unwrap();
        let waited = tokio::time::timeout(patience, idle.frame()).await;
        assert!(waited.is_err(), "a stream between messages is not cut off");
        // Half a message, then nothing: cut off.
        let half_bytes = &messages(&[10, 10])[..20];
        let mut half = budget.hold(chopped(half_bytes, &[], true), None, STREAM);
        half.frame().await.unwrap().unwrap();
        let cut = half.frame().await.unwrap().unwrap_err();
        assert!(cut.message().contains("within"), "{}", cut.message());
    }

    #[tokio::test]
    async fn each_message_of_a_stream_has_its_own_time() {
        // Frames at 0, 150 and 300 ms against a timeout of 200 ms: the
        // second frame ends the first message and starts the second, whose
        // time runs from then, so nothing is late.
        let budget = BodyBudget::new(1000, 1000, std::time::Duration::from_millis(200));
        let bytes = messages(&[20, 20]);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let frames = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut body = budget.hold(
            tonic::body::Body::new(http_body_util::StreamBody::new(frames)),
            None,
            STREAM,
        );
        let gap = std::time::Duration::from_millis(150);
        let sender = tokio::spawn(async move {
            for part in [&bytes[..10], &bytes[10..35], &bytes[35..]] {
                let frame = Frame::data(Bytes::copy_from_slice(part));
                tx.send(Ok::<_, std::convert::Infallible>(frame))
                    .await
                    .unwrap();
                tokio::time::sleep(gap).await;
            }
        });
        for _ in 0..3 {
            body.frame().await.unwrap().unwrap();
        }
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn bodies_share_the_allowance_and_give_it_back() {
        let budget = BodyBudget::new(1000, 1000, std::time::Duration::from_secs(30));
        let mut a = budget.hold(body(&[400, 400]), None, None);
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
        let mut b = budget.hold(body(&[100, 300]), None, None);
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
        let mut a = budget.hold(body(&[400, 200]), x, None);
        a.frame().await.unwrap().unwrap();
        // The same client's next bytes go past its share; another's do not.
        let mut b = budget.hold(body(&[200]), x, None);
        assert!(b.frame().await.unwrap().is_err());
        let mut c = budget.hold(body(&[200]), y, None);
        c.frame().await.unwrap().unwrap();
        drop((a, b));
        let mut d = budget.hold(body(&[400]), x, None);
        d.frame().await.unwrap().unwrap();
        // A body that does not finish in time is cut off.
        let slow = BodyBudget::new(1000, 1000, std::time::Duration::from_millis(50));
        let mut e = slow.hold(silent(), x, None);
        let cut = e.frame().await.unwrap().unwrap_err();
        assert!(cut.message().contains("within"), "{}", cut.message());
    }
}
