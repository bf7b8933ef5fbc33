//! The client side of bearer tokens: an interceptor that adds the
//! `authorization` header to every call (spec/security.md, "Tokens").

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>` to every call, or nothing.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// No token: calls go out as they are.
    pub fn none() -> Bearer {
        Bearer(None)
    }

    /// A token for calls to `server`: sent only over TLS or to a loopback
    /// address unless `allow_plaintext`, and marked sensitive so the
    /// HTTP/2 stack never logs it.
    ///
    /// # Errors
    /// `plaintext_not_loopback`, or a token that is not a header value.
    pub fn new(token: &str, server: &str, allow_plaintext: bool) -> Result<Bearer, String> {
        super::tls::check_plaintext(server, allow_plaintext).map_err(|e| {
            format!("{e} (a token would cross the network in clear; --allow-plaintext to send it anyway)")
        })?;
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        value.set_sensitive(true);
        Ok(Bearer(Some(value)))
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(…)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry a bearer token.
pub type AuthedChannel = InterceptedService<Channel, Bearer>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_go_only_where_they_are_safe_and_never_show() {
        let b = Bearer::new("plt_x", "http://127.0.0.1:7300", false).unwrap();
        assert_eq!(format!("{b:?}"), "Bearer(…)");
        assert!(Bearer::new("plt_x", "https://ledger.example.com", false).is_ok());
        let e = Bearer::new("plt_x", "http://ledger.example.com", false).unwrap_err();
        assert!(e.starts_with("plaintext_not_loopback"), "{e}");
        assert!(Bearer::new("plt_x", "http://ledger.example.com", true).is_ok());
        assert!(Bearer::new("plt\nx", "http://127.0.0.1:7300", false).is_err());
        let mut b = b;
        let r = b.call(tonic::Request::new(())).unwrap();
        let v = r.metadata().get("authorization").unwrap();
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().unwrap(), "Bearer plt_x");
        let r = Bearer::none().call(tonic::Request::new(())).unwrap();
        assert!(r.metadata().get("authorization").is_none());
    }
}
