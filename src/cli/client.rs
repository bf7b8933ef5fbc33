//! Client commands against a running server: `submit`, `handler show|list`,
//! `log info|checkpoint|entries|watch`.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use super::deadline::{self, Deadline};
use super::error::{CliError, EXIT_USAGE, EXIT_VERIFY_FAILED};
use super::files;
use super::output::escape;
use crate::api::Bearer;
use crate::api::proto::{self, registry_client::RegistryClient};

/// Default server address for client commands.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:7300";

/// Where the server is, and how to prove who we are to it.
#[derive(Clone, clap::Args)]
pub(crate) struct ServerArg {
    /// Server URL: http:// on loopback, https:// elsewhere.
    #[arg(long, env = "PULSE_LEDGER_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    server: String,
    /// Bearer token for the jobs API (prefer the environment variable: a
    /// flag shows in the process list).
    #[arg(
        long,
        env = "PULSE_LEDGER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Act as the did:key of this key file instead of sending --token: the
    /// CLI signs a DID token for this server, valid 15 minutes
    /// (spec/security.md, "DID tokens"). Give a handler's own key file to
    /// act as its owner.
    #[arg(
        long,
        env = "PULSE_LEDGER_AS_KEY",
        value_name = "KEYFILE",
        conflicts_with = "token"
    )]
    as_key: Option<PathBuf>,
    /// Trust this PEM CA for an https:// server instead of the public roots.
    #[arg(long, env = "PULSE_LEDGER_CA", value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Client certificate for a server that requires mutual TLS (with
    /// --client-key).
    #[arg(
        long,
        env = "PULSE_LEDGER_CLIENT_CERT",
        value_name = "PEM",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// The PEM private key of --client-cert.
    #[arg(
        long,
        env = "PULSE_LEDGER_CLIENT_KEY",
        value_name = "PEM",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// Talk plaintext http:// to a host that is not loopback (reads, and
    /// --token with them): only behind a network you trust.
    #[arg(long, env = "PULSE_LEDGER_ALLOW_PLAINTEXT")]
    allow_plaintext: bool,
    /// Longest wait for one call to the server (500ms, 30s, 2m; a bare
    /// number is seconds): connecting, an answer, a stream's opening or an
    /// item it owes. When it passes, the command names the call and exits
    /// with status 3.
    #[arg(
        long,
        env = "PULSE_LEDGER_TIMEOUT",
        value_name = "DURATION",
        default_value = deadline::DEFAULT_TIMEOUT,
        value_parser = deadline::parse
    )]
    timeout: Deadline,
}

impl std::fmt::Debug for ServerArg {
    // The token is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerArg")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// Submit attestation files to the log.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  pulse-ledger submit h0.att
  pulse-ledger submit --server http://ledger:7300 p0.att h0.att h1.att

Prints `FILE index N id ID` per accepted file (`duplicate` if it was already
in the log) or `FILE rejected CODE: message`. Many files are sent over one
stream, in order. Exit status 1 if any file was rejected, 2 if a file
cannot be read (or is a key file), 3 if the server cannot be reached.")]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Attestation files, in the order to append them.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Print one JSON object per file.
    #[arg(long)]
    json: bool,
}

/// Show a subject's current state from the server.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  pulse-ledger handler show did:key:z6Mk...
  pulse-ledger handler show --json did:key:z6Mk... | jq .schema

In --json, byte fields (IDs) are lowercase hex.")]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    server: ServerArg,
    /// The handler's (or plugin's) did:key.
    did: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// List subjects, a page at a time.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  pulse-ledger handler list
  pulse-ledger handler list --name-prefix python. --plugin did:key:z6Mk... --all
  pulse-ledger handler list --page-size 50 --page-token <token from the last page>")]
pub(crate) struct ListArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Only names starting with this.
    #[arg(long, default_value = "")]
    name_prefix: String,
    /// Only handlers bound to this plugin did:key.
    #[arg(long, value_name = "DID")]
    plugin: Option<String>,
    /// Include revoked subjects.
    #[arg(long)]
    include_revoked: bool,
    /// Entries per page (1..1000).
    #[arg(long, default_value_t = 100)]
    page_size: u32,
    /// Continue after a previous page (hex token it printed).
    #[arg(long)]
    page_token: Option<String>,
    /// Follow every page to the end.
    #[arg(long)]
    all: bool,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

/// Read the log.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum LogCmd {
    /// The log's did:key, name, size and root.
    #[command(after_help = "Example:\n  pulse-ledger log info --server http://127.0.0.1:7300")]
    Info {
        #[command(flatten)]
        server: ServerArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The newest signed checkpoint (C2SP signed note), as the server sent it.
    #[command(after_help = "Example:\n  pulse-ledger log checkpoint > checkpoint.txt")]
    Checkpoint {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Entries by index range.
    #[command(after_help = "Example:\n  pulse-ledger log entries --from 0 --to 10")]
    Entries {
        #[command(flatten)]
        server: ServerArg,
        /// First index (inclusive).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Last index (exclusive); default: 100 after --from.
        #[arg(long)]
        to: Option<u64>,
        /// Print JSON lines with the envelope in hex.
        #[arg(long)]
        json: bool,
    },
    /// Follow the log: every entry from --from on, then new ones as they come.
    #[command(after_help = "Example:\n  pulse-ledger log watch --from 1200")]
    Watch {
        #[command(flatten)]
        server: ServerArg,
        /// First index.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Print JSON lines with the envelope in hex.
        #[arg(long)]
        json: bool,
    },
}

impl ServerArg {
    /// A server given by a command's own `--server` flag; credentials come
    /// from the same environment variables the flags read.
    pub(crate) fn new(url: String) -> ServerArg {
        let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
        ServerArg {
            server: url,
            token: std::env::var("PULSE_LEDGER_TOKEN").ok(),
            as_key: env("PULSE_LEDGER_AS_KEY")
                .filter(|_| std::env::var_os("PULSE_LEDGER_TOKEN").is_none()),
            ca: env("PULSE_LEDGER_CA"),
            client_cert: env("PULSE_LEDGER_CLIENT_CERT"),
            client_key: env("PULSE_LEDGER_CLIENT_KEY"),
            allow_plaintext: std::env::var_os("PULSE_LEDGER_ALLOW_PLAINTEXT")
                .is_some_and(|v| !v.is_empty() && v != "false" && v != "0"),
            timeout: std::env::var("PULSE_LEDGER_TIMEOUT")
                .ok()
                .and_then(|t| deadline::parse(&t).ok())
                .unwrap_or_else(Deadline::standard),
        }
    }

    /// The same server with another per-call deadline (`--timeout` of a
    /// command with its own `--server` flag).
    pub(crate) fn with_timeout(self, timeout: Option<Deadline>) -> ServerArg {
        ServerArg {
            timeout: timeout.unwrap_or(self.timeout),
            ..self
        }
    }

    /// The per-call deadline.
    pub(crate) fn deadline(&self) -> Deadline {
        self.timeout
    }

    /// A server given by a command's own flags, with a token and a CA of
    /// its own (`bench --server`).
    pub(crate) fn with_credentials(
        url: String,
        token: Option<String>,
        ca: Option<PathBuf>,
    ) -> ServerArg {
        ServerArg {
            token,
            ca,
            ..ServerArg::new(url)
        }
    }

    /// The server's URL.
    pub(crate) fn url(&self) -> &str {
        &self.server
    }

    /// A connection to the server, over TLS for an https:// URL.
    pub(crate) async fn channel(&self) -> Result<Channel, CliError> {
        let url = &self.server;
        let endpoint = self.endpoint()?;
        self.timeout
            .run("connect", endpoint.connect())
            .await?
            .map_err(|e| CliError::Unreachable(super::reach::explain(url, &e)))
    }

    /// Where [`ServerArg::channel`] connects, with its TLS settings, for a
    /// channel that spreads calls over several servers.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, CliError> {
        let url = &self.server;
        // Only https://, or http:// to this host: anything else would go
        // out in plaintext (spec/security.md, "Transport").
        if !url.contains("://") {
            return Err(CliError::Usage(format!(
                "--server {url} has no scheme: write http://{url} (plaintext, this host only) or https://{url}"
            )));
        }
        crate::api::tls::check_plaintext(url, self.allow_plaintext).map_err(|e| {
            CliError::Usage(format!("--server {e} (--allow-plaintext to force http://)"))
        })?;
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| CliError::Usage(format!("--server {url}: {e}")))?
            .tcp_nodelay(true);
        let tls = crate::api::tls::ClientTls {
            ca: self.ca.clone(),
            identity: self.client_cert.clone().zip(self.client_key.clone()),
            domain: None,
        };
        if url.starts_with("https://") {
            let config = tls.load().map_err(CliError::Usage)?;
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| CliError::Usage(format!("--server {url}: TLS: {e}")))?;
        } else if !tls.is_empty() {
            return Err(CliError::Usage(format!(
                "--ca and --client-cert apply to an https:// server, not {url}"
            )));
        }
        Ok(endpoint)
    }

    /// The `authorization` header for the jobs API, if a token was given.
    /// A token is only sent over TLS or to a loopback address, unless
    /// `--allow-plaintext`.
    pub(crate) fn bearer(&self) -> Result<Bearer, CliError> {
        match &self.token {
            None => Ok(Bearer::none()),
            Some(t) => Bearer::new(t, &self.server, self.allow_plaintext).map_err(CliError::Usage),
        }
    }

    /// What goes in the jobs API's `authorization` header: --token, or a
    /// DID token signed with --as-key for the server behind `channel`.
    pub(crate) async fn jobs_bearer(&self, channel: &Channel) -> Result<Bearer, CliError> {
        let Some(path) = &self.as_key else {
            return self.bearer();
        };
        // Refused before the key is read if it could not be sent safely.
        Bearer::new("pld_", &self.server, self.allow_plaintext).map_err(CliError::Usage)?;
        let token = did_token(path, channel, self.timeout, CLI_DID_TOKEN_MS).await?;
        Bearer::new(&token, &self.server, self.allow_plaintext).map_err(CliError::Usage)
    }
}

/// How long the DID tokens the CLI signs for itself are valid.
const CLI_DID_TOKEN_MS: u64 = 15 * 60 * 1000;

/// A DID token signed with the key in `path` for the server behind
/// `channel` (its log DID, asked with GetLogInfo), valid `lifetime_ms`.
pub(crate) async fn did_token(
    path: &std::path::Path,
    channel: &Channel,
    deadline: Deadline,
    lifetime_ms: u64,
) -> Result<String, CliError> {
    let key = crate::keyfile::load(path)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    let mut rpc = RegistryClient::new(channel.clone());
    let info = deadline
        .call("GetLogInfo", rpc.get_log_info(proto::GetLogInfoRequest {}))
        .await?;
    let audience = crate::Did::parse(&info.log_did)
        .map_err(|e| CliError::Usage(format!("the server's log DID {:?}: {e}", info.log_did)))?;
    let now = crate::clock::unix_ms();
    crate::auth::DidToken::sign(&key, &audience, now, now + lifetime_ms).map_err(CliError::Usage)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the async runtime: {e}")))
}

/// A registry client and the deadline of each of its calls.
#[derive(Clone)]
pub(crate) struct Registry {
    /// The gRPC client; wrap each call in `deadline`.
    pub(crate) rpc: RegistryClient<Channel>,
    /// The per-call deadline (`--timeout`).
    pub(crate) deadline: Deadline,
}

pub(crate) async fn connect(server: &ServerArg) -> Result<Registry, CliError> {
    let channel = server.channel().await?;
    Ok(Registry {
        rpc: RegistryClient::new(channel).max_decoding_message_size(crate::api::MAX_RESPONSE_BYTES),
        deadline: server.deadline(),
    })
}

/// A failed call: rejections (the caller's input) exit 1, the rest 2.
pub(crate) fn call_failed(status: &tonic::Status) -> CliError {
    // A call that never reached the service: the connection failed after
    // it opened (a TLS handshake refused, a plaintext client at a TLS
    // server). tonic reports these without a grpc-status from the server.
    let message = status.message();
    let from_transport = matches!(
        status.code(),
        tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Unavailable
    ) && status.metadata().get("grpc-status").is_none()
        && (message.contains("transport error")
            || message.contains("operation was canceled")
            || message.starts_with("h2 protocol error"));
    if from_transport && message.contains("reading a body") {
        // Mid-stream: the server went away (stopped, or closed an idle
        // connection), not a TLS mismatch.
        return CliError::Unreachable(format!(
            "the server closed the connection during the call ({message}); it may have stopped: try again"
        ));
    }
    if from_transport {
        return CliError::Unreachable(format!(
            "the connection failed ({message}): a TLS server needs an https:// URL (and --ca for a private CA); one that requires client certificates needs --client-cert and --client-key"
        ));
    }
    CliError::Server {
        code: status.code(),
        message: status.message().to_owned(),
    }
}

pub(crate) fn submit(args: SubmitArgs) -> Result<ExitCode, CliError> {
    let envelopes = args
        .files
        .iter()
        .map(|p| files::read_envelope(p))
        .collect::<Result<Vec<_>, _>>()?;
    runtime()?.block_on(async move {
        let mut client = connect(&args.server).await?;
        let mut worst = 0u8;
        let mut report = |file: &PathBuf, result: Result<proto::SubmitResponse, (String, String)>| {
            let shown = file.display().to_string();
            match result {
                Ok(r) => {
                    let id = hex::encode(&r.attestation_id);
                    if args.json {
                        println!("{}", json!({"file": shown, "ok": true, "index": r.index, "id": id, "duplicate": r.duplicate}));
                    } else {
                        let dup = if r.duplicate { " duplicate" } else { "" };
                        println!("{shown} index {} id {id}{dup}", r.index);
                    }
                }
                Err((code, message)) => {
                    worst = worst.max(EXIT_VERIFY_FAILED);
                    if args.json {
                        println!("{}", json!({"file": shown, "ok": false, "code": code, "message": message}));
                    } else {
                        println!("{shown} rejected {}", escape(&message));
                    }
                }
            }
        };
        if envelopes.len() == 1 {
            let envelope = envelopes.into_iter().next().unwrap_or_default();
            match client.deadline.status("Submit", client.rpc.submit(proto::SubmitRequest { envelope })).await? {
                Ok(r) => report(&args.files[0], Ok(r)),
                Err(s) if is_rejection(s.code()) => {
                    use tonic_types::StatusExt;
                    let code = s.get_details_error_info().map(|i| i.reason).unwrap_or_default();
                    report(&args.files[0], Err((code, s.message().to_owned())));
                }
                Err(s) => return Err(call_failed(&s)),
            }
        } else {
            let requests = tokio_stream::iter(envelopes.into_iter().map(|envelope| proto::SubmitRequest { envelope }));
            let mut responses = client.deadline.call("SubmitStream", client.rpc.submit_stream(requests)).await?;
            let mut seen = 0usize;
            while let Some(item) = client.deadline.next("SubmitStream", &mut responses).await? {
                let file = &args.files[(item.position as usize).min(args.files.len() - 1)];
                match item.result {
                    Some(proto::submit_stream_response::Result::Accepted(r)) => report(file, Ok(r)),
                    Some(proto::submit_stream_response::Result::Rejected(e)) => report(file, Err((e.code, e.message))),
                    None => report(file, Err(("internal".into(), "empty response".into()))),
                }
                seen += 1;
            }
            if seen != args.files.len() {
                return Err(CliError::Usage(format!("the server answered {seen} of {} files", args.files.len())));
            }
        }
        Ok(ExitCode::from(worst))
    })
}

fn is_rejection(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists
            | tonic::Code::ResourceExhausted
    )
}

pub(crate) fn show(args: ShowArgs) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async move {
        let mut client = connect(&args.server).await?;
        let s = client
            .deadline
            .call("GetSubject", client.rpc.get_subject(proto::GetSubjectRequest { did: args.did.clone() }))
            .await?
            .subject
            .unwrap_or_default();
        let schema: serde_json::Value = serde_json::from_str(&s.schema_json).unwrap_or_default();
        if args.json {
            println!("{}", json!({
                "did": s.did, "family": family(s.family), "key": s.current_key, "seq": s.seq,
                "head": hex::encode(&s.head_id), "issued_at": s.issued_at_ms, "revoked": s.revoked,
                "schema": schema, "statement_indexes": s.statement_indexes,
            }));
        } else {
            println!("subject  {}", escape(&s.did));
            println!("family   {}", family(s.family));
            println!("name     {}", escape(&s.name));
            if !s.plugin.is_empty() {
                println!("plugin   {}", escape(&s.plugin));
            }
            println!("key      {}", escape(&s.current_key));
            println!("seq      {}", s.seq);
            println!("head     {}", hex::encode(&s.head_id));
            println!("revoked  {}", if s.revoked { "yes" } else { "no" });
            println!("indexes  {:?}", s.statement_indexes);
            // serde_json escapes C0 controls but not DEL, C1 or bidi
            // controls a description may hold.
            println!("schema   {}", escape(&schema.to_string()));
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn family(f: i32) -> &'static str {
    if f == proto::Family::Plugin as i32 {
        "plugin"
    } else {
        "handler"
    }
}

pub(crate) fn list(args: ListArgs, plugins: bool) -> Result<ExitCode, CliError> {
    let mut token = match &args.page_token {
        Some(t) => hex::decode(t).map_err(|_| {
            CliError::Usage("--page-token is the hex token a previous page printed".into())
        })?,
        None => Vec::new(),
    };
    runtime()?.block_on(async move {
        let mut client = connect(&args.server).await?;
        loop {
            let request = proto::ListHandlersRequest {
                    name_prefix: args.name_prefix.clone(),
                    plugin: args.plugin.clone().unwrap_or_default(),
                    include_revoked: args.include_revoked,
                    page_size: args.page_size,
                    page_token: token.clone(),
                    family: if plugins { proto::Family::Plugin as i32 } else { proto::Family::Handler as i32 },
            };
            let page = client.deadline.call("ListHandlers", client.rpc.list_handlers(request)).await?;
            for h in &page.handlers {
                if args.json {
                    println!("{}", json!({"did": h.did, "name": h.name, "plugin": h.plugin, "seq": h.seq, "revoked": h.revoked}));
                } else {
                    let revoked = if h.revoked { " (revoked)" } else { "" };
                    println!("{} {} seq {}{revoked}", escape(&h.name), escape(&h.did), h.seq);
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            if !args.all {
                eprintln!("next page: --page-token {}", hex::encode(&page.next_page_token));
                break;
            }
            token = page.next_page_token;
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub(crate) fn log(cmd: LogCmd) -> Result<ExitCode, CliError> {
    runtime()?.block_on(async move {
        match cmd {
            LogCmd::Info { server, json } => {
                let mut c = connect(&server).await?;
                let i = c.deadline.call("GetLogInfo", c.rpc.get_log_info(proto::GetLogInfoRequest {})).await?;
                if json {
                    println!("{}", json!({"log_did": i.log_did, "origin": i.origin, "size": i.size, "root": hex::encode(&i.root_hash), "verifier_key": i.verifier_key}));
                } else {
                    println!("origin        {}", escape(&i.origin));
                    println!("log key       {}", escape(&i.log_did));
                    println!("verifier key  {}", escape(&i.verifier_key));
                    println!("size          {}", i.size);
                    println!("root          {}", hex::encode(&i.root_hash));
                }
            }
            LogCmd::Checkpoint { server } => {
                let mut client = connect(&server).await?;
                let c = client.deadline.call("GetCheckpoint", client.rpc.get_checkpoint(proto::GetCheckpointRequest {})).await?;
                print!("{}", c.checkpoint.unwrap_or_default().note);
            }
            LogCmd::Entries { server, from, to, json } => {
                let mut client = connect(&server).await?;
                let end = to.unwrap_or(from.saturating_add(100));
                let mut next = from;
                while next < end {
                    let r = client.deadline.call("GetEntries", client.rpc.get_entries(proto::GetEntriesRequest { start: next, end })).await?;
                    if r.entries.is_empty() {
                        break;
                    }
                    for e in &r.entries {
                        print_entry(e, json);
                        next = e.index + 1;
                    }
                }
            }
            LogCmd::Watch { server, from, json } => {
                // Only the stream's opening has a deadline: a log that does
                // not grow sends nothing, and that is no fault.
                let mut c = connect(&server).await?;
                let mut stream = c.deadline.call("WatchEntries", c.rpc.watch_entries(proto::WatchEntriesRequest { start: from })).await?;
                while let Some(e) = stream.next().await {
                    print_entry(&e.map_err(|s| call_failed(&s))?, json);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn print_entry(e: &proto::Entry, json: bool) {
    let id = crate::AttestationId::of(&e.envelope);
    if json {
        println!(
            "{}",
            json!({"index": e.index, "id": id.to_string(), "envelope": hex::encode(&e.envelope)})
        );
        return;
    }
    match crate::verify_attestation(&e.envelope) {
        Ok(att) => {
            let st = att.statement();
            println!(
                "{} {id} {} {} seq {}",
                e.index,
                st.kind(),
                st.subject,
                st.seq
            );
        }
        Err(err) => println!("{} {id} INVALID {}", e.index, escape(&err.to_string())),
    }
}

/// Exit status for a server error.
pub(crate) fn server_exit(code: tonic::Code) -> u8 {
    if is_rejection(code) || code == tonic::Code::NotFound {
        EXIT_VERIFY_FAILED
    } else if code == tonic::Code::Unavailable {
        super::error::EXIT_UNREACHABLE
    } else {
        EXIT_USAGE
    }
}
