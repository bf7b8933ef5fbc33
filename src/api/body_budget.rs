//! The bytes of request bodies the server holds for callers it does not
//! know: anyone can sign a DID token, so a DID token cannot stand between
//! a stranger and a 16 MiB upload the way an operator token does
//! (spec/security.md, "Exhaustion"). All such bodies share one allowance
//! of bytes; a body that would take the allowance past its size is cut
//! off with `overloaded`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::Bytes;

/// Bytes of request bodies held at once for DID callers, all together.
pub(crate) const DID_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The shared allowance.
#[derive(Debug, Clone)]
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
}

impl BodyBudget {
    pub(crate) fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(bytes)),
        }
    }

    /// `body`, drawing on the allowance as its bytes arrive and giving
    /// them back when it is dropped (once its message is decoded, or the
    /// call ends).
    pub(crate) fn hold(&self, body: tonic::body::Body) -> tonic::body::Body {
        tonic::body::Body::new(Held {
            inner: body,
            bytes: Arc::clone(&self.bytes),
            held: None,
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
}

impl Body for Held {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
            match Arc::clone(&this.bytes).try_acquire_many_owned(n) {
                Ok(p) => match &mut this.held {
                    Some(held) => held.merge(p),
                    None => this.held = Some(p),
                },
                Err(_) => {
                    let e = crate::ledger::LedgerError::Ledger {
                        code: crate::ledger::LedgerErrorCode::Overloaded,
                        message: format!(
                            "the server holds at most {} MiB of request bodies for DID callers, \
                             and that much is in flight; retry shortly",
                            DID_BODY_BYTES / (1024 * 1024)
                        ),
                    };
                    return Poll::Ready(Some(Err(super::status::to_status(&e))));
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
        let budget = BodyBudget::new(1000);
        let mut a = budget.hold(body(&[400, 400]));
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
        let mut b = budget.hold(body(&[100, 300]));
        b.frame().await.unwrap().unwrap();
        let e = b.frame().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().starts_with("overloaded: "), "{}", e.message());
        drop((a, b));
        assert_eq!(budget.available(), 1000);
    }
}
