//! The bytes of request bodies the server holds for callers it does not
//! know: anyone can sign a DID token, so a DID token cannot stand between
//! a stranger and a 16 MiB upload the way an operator token does
//! (spec/security.md, "Exhaustion"). All such bodies share one allowance
//! of bytes; a body that would take the allowance past its size is cut
//! off with `overloaded`.

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
/// Time a DID caller has to send its whole request body.
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
    /// it is dropped (once its message is decoded, or the call ends). A
    /// body not complete within the timeout is cut off.
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
            deadline: Box::pin(tokio::time::sleep(self.timeout)),
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
    deadline: Pin<Box<tokio::time::Sleep>>,
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

impl Body for Held {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        if !this.inner.is_end_stream() && this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(overloaded(format!(
                "a DID caller's request body must arrive within {} s",
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

    fn body(chunks: &[usize]) -> tonic::body::Body {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .iter()
            .map(|n| Ok(Frame::data(Bytes::from(vec![0u8; *n]))))
            .collect();
        tonic::body::Body::new(http_body_util::StreamBody::new(tokio_stream::iter(frames)))
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
