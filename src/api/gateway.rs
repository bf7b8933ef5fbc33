//! The `PluginGateway` service: plugins that connect in. The caller's
//! credentials are checked here (TLS by the transport, the bearer token
//! by the gate before the stream is read, the `plugin` scope once the
//! process proved which plugin it is); the session itself is the plugin
//! layer's ([`crate::plugin::Gateway`]).

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

use super::proto::{self, plugin_gateway_server::PluginGateway};
use crate::auth::AccessCell;
use crate::plugin::{Gateway, Outbound, Refused};

/// Serves `PluginGateway.Join`.
pub struct GatewayService {
    gateway: Gateway,
    access: Arc<AccessCell>,
}

impl GatewayService {
    /// A service admitting plugins into `gateway`'s pools.
    pub fn new(gateway: Gateway, access: Arc<AccessCell>) -> GatewayService {
        GatewayService { gateway, access }
    }
}

#[tonic::async_trait]
impl PluginGateway for GatewayService {
    type JoinStream = Outbound;

    async fn join(
        &self,
        request: Request<Streaming<proto::PluginMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        let peer = request.remote_addr();
        let grant = self.access.authenticate(header).map_err(|e| {
            self.access.refused(&e, peer);
            super::status::auth_status(&e)
        })?;
        let access = Arc::clone(&self.access);
        let authorise = move |plugin: &crate::Did| {
            grant.may_join(plugin).map_err(|e| {
                access.refused(&e, peer);
                Refused {
                    code: e.code().as_str(),
                    message: e.to_string(),
                }
            })
        };
        let address = peer.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let inbound = Box::pin(request.into_inner());
        Ok(Response::new(
            self.gateway.connect(inbound, address, authorise),
        ))
    }
}
