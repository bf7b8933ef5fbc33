//! The listening transport: the `Plugin` gRPC service Pulse dials (a
//! spawned plugin, or one at an address of the server's config).

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::PluginServer;
use super::attempts::{AttemptKey, Attempts};
use crate::api::proto::{self, plugin_server};

/// How long a stopping plugin waits for open connections to close.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

impl PluginServer {
    /// Serves on `listener` until `Shutdown` is called or `shutdown`
    /// resolves, without printing a handshake line (for a plugin reached
    /// as a remote address, or embedded in tests). Either way it drains
    /// first: no new attempt starts (Pulse holds their jobs, using no
    /// attempt), and the running ones finish.
    ///
    /// # Errors
    /// The transport fails.
    pub async fn serve_on(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(tls.load()?)?;
        }
        let attempts = Arc::new(Attempts::new(Arc::new(self)));
        let service = Service {
            attempts: Arc::clone(&attempts),
            stop: stop_tx,
        };
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
        let stop = async move {
            tokio::select! {
                _ = shutdown => {}
                _ = async { let _ = stop_rx.wait_for(|s| *s).await; } => {}
            }
            attempts.drain().await;
            let _ = stopping_tx.send(());
        };
        let server = builder
            .tcp_nodelay(true)
            .add_service(plugin_server::PluginServer::new(service))
            .serve_with_incoming_shutdown(incoming, stop);
        tokio::pin!(server);
        // A graceful stop waits for open connections (Pulse keeps one):
        // give it a moment, then return regardless.
        let bounded = async {
            let _ = stopping.await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        tokio::select! {
            r = &mut server => r?,
            _ = bounded => {}
        }
        Ok(())
    }
}

struct Service {
    attempts: Arc<Attempts>,
    stop: watch::Sender<bool>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl plugin_server::Plugin for Service {
    async fn metadata(
        &self,
        _: Request<proto::MetadataRequest>,
    ) -> Result<Response<proto::MetadataResponse>, Status> {
        Ok(Response::new(self.attempts.plugin.metadata.clone()))
    }

    async fn initialize(
        &self,
        request: Request<proto::InitializeRequest>,
    ) -> Result<Response<proto::InitializeResponse>, Status> {
        self.attempts
            .answer(&request.into_inner())
            .map(Response::new)
    }

    type ExecuteJobStream = EventStream;

    async fn execute_job(
        &self,
        request: Request<proto::ExecuteJobRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        self.attempts.start(request.into_inner(), tx).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel(
        &self,
        request: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::CancelResponse>, Status> {
        let r = request.into_inner();
        let job: [u8; 16] = r
            .job_id
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("invalid_job_id: a job ID is 16 bytes"))?;
        let found = self.attempts.cancel(job, r.lease);
        Ok(Response::new(proto::CancelResponse { found }))
    }

    async fn health(
        &self,
        _: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        Ok(Response::new(proto::HealthResponse {
            serving: !self.attempts.draining(),
            running: self.attempts.running() as u32,
        }))
    }

    async fn shutdown(
        &self,
        _: Request<proto::ShutdownRequest>,
    ) -> Result<Response<proto::ShutdownResponse>, Status> {
        let _ = self.stop.send(true);
        Ok(Response::new(proto::ShutdownResponse {}))
    }

    async fn session_refused(
        &self,
        request: Request<proto::SessionRefusal>,
    ) -> Result<Response<proto::SessionRefusedResponse>, Status> {
        let r = request.into_inner();
        super::report_refusal(&r.code, &r.message);
        Ok(Response::new(proto::SessionRefusedResponse {}))
    }

    type AttemptsStream = Pin<Box<dyn Stream<Item = Result<proto::PluginMessage, Status>> + Send>>;

    /// Attempts as messages (spec/plugin.md, "Attempt streams"), when
    /// this plugin asked for them. Headers go out at once (the stream is
    /// returned before any message); the attempts started on a stream are
    /// stopped when it ends, as Pulse has ended them; a stopping plugin
    /// says `drain` on it.
    async fn attempts(
        &self,
        request: Request<tonic::Streaming<proto::ServerMessage>>,
    ) -> Result<Response<Self::AttemptsStream>, Status> {
        if self.attempts.plugin.attempt_streams == 0 {
            return Err(Status::unimplemented(
                "this plugin takes each attempt as an ExecuteJob call",
            ));
        }
        let mut inbound = request.into_inner();
        let (out, rx) = mpsc::channel::<proto::PluginMessage>(256);
        let attempts = Arc::clone(&self.attempts);
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            use proto::server_message::Message;
            let mut started: Vec<AttemptKey> = Vec::new();
            let mut drained = false;
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(proto::ServerMessage { message: Some(Message::Execute(req)) })) => {
                            if let Some(key) = attempts.run_streamed(req, &out).await {
                                started.retain(|(j, l)| attempts.is_running(*j, l));
                                started.push(key);
                            }
                        }
                        Ok(Some(proto::ServerMessage { message: Some(Message::Cancel(c)) })) => {
                            if let Ok(job) = <[u8; 16]>::try_from(c.job_id.as_slice()) {
                                attempts.cancel(job, c.lease);
                            }
                        }
                        // Pulse sends nothing else here.
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    },
                    _ = async { let _ = stop.wait_for(|s| *s).await; }, if !drained => {
                        drained = true;
                        let drain = proto::plugin_message::Message::Drain(proto::DrainRequest {});
                        let out = out.clone();
                        tokio::spawn(async move {
                            let _ = out.send(proto::PluginMessage { message: Some(drain) }).await;
                        });
                    }
                }
            }
            for (job, lease) in started {
                attempts.stop(job, &lease);
            }
        });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(rx).map(Ok::<_, Status>),
        )))
    }
}
