//! `pulse-ledger monitor`: follow a log, verify every new entry and every
//! new checkpoint against the last verified one, and report what concerns
//! the watched identities (spec/audit.md, "Monitoring").

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_stream::StreamExt;

use super::audit::log_key;
use super::client::{Registry, ServerArg, call_failed, connect, runtime};
use super::deadline::Deadline;
use super::error::{CliError, EXIT_VERIFY_FAILED};
use super::files;
use super::output::{bad, escape, good};
use super::remote::{extends, hashes, newest_checkpoint};
use crate::api::proto;
use crate::audit::{AuditCode, AuditError, available_threads, verify_parallel};
use crate::ledger::{Checkpoint, Frontier, Hash, leaf_hash, verify_checkpoint};
use crate::{Attestation, AttestationId, ChainHead, Did, Family};

/// The state file's format version.
const STATE_VERSION: u32 = 1;
/// Entries verified at a time while catching up.
const CHUNK: usize = 4_000;

/// `monitor`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    server: ServerArg,
    /// The log's key: a did:key, or a file holding one.
    #[arg(long, value_name = "DID|FILE")]
    log_key: String,
    /// An identity (handler or plugin did:key) to report statements about;
    /// repeat for more.
    #[arg(long, value_name = "DID")]
    watch: Vec<String>,
    /// Keep the last verified checkpoint here, and resume from it.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
    /// Exit with status 1 at the first report.
    #[arg(long)]
    exit_on_alert: bool,
    /// Catch up with the newest checkpoint once, then exit.
    #[arg(long)]
    once: bool,
    /// How often to ask for a new checkpoint when no entry arrives, ms.
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    poll_ms: u64,
}

impl Args {
    pub(crate) fn into_options(self) -> Options {
        Options {
            server: self.server,
            log_key: self.log_key,
            watch: self.watch,
            state: self.state,
            json: self.json,
            exit_on_alert: self.exit_on_alert,
            once: self.once,
            poll: Duration::from_millis(self.poll_ms.max(10)),
        }
    }
}

/// The `monitor` options.
pub(crate) struct Options {
    pub(crate) server: ServerArg,
    pub(crate) log_key: String,
    pub(crate) watch: Vec<String>,
    pub(crate) state: Option<PathBuf>,
    pub(crate) json: bool,
    pub(crate) exit_on_alert: bool,
    pub(crate) once: bool,
    pub(crate) poll: Duration,
}

/// What survives a restart (spec/audit.md, "Monitor state").
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    v: u32,
    /// The log key the state was verified with.
    log: String,
    /// The last verified checkpoint (signed note); empty before the first.
    checkpoint: String,
    /// The tree's right edge at that checkpoint's size (hex hashes).
    frontier: Vec<String>,
    /// Watched subjects' chain heads.
    watched: BTreeMap<String, Watched>,
    /// Equivocation evidence already reported, as "did#seq".
    equivocations: BTreeSet<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Watched {
    family: String,
    key: String,
    seq: u64,
    head: String,
    issued_at: u64,
    revoked: bool,
}

impl Watched {
    fn of(h: &ChainHead) -> Watched {
        Watched {
            family: h.family.as_str().to_owned(),
            key: h.key.to_string(),
            seq: h.seq,
            head: h.head.to_string(),
            issued_at: h.issued_at,
            revoked: h.revoked,
        }
    }

    fn head(&self, subject: &Did) -> Option<ChainHead> {
        Some(ChainHead {
            subject: subject.clone(),
            family: match self.family.as_str() {
                "handler" => Family::Handler,
                "plugin" => Family::Plugin,
                _ => return None,
            },
            key: Did::parse(&self.key).ok()?,
            seq: self.seq,
            head: self.head.parse().ok()?,
            issued_at: self.issued_at,
            revoked: self.revoked,
        })
    }
}

fn bad_state(path: &Path, why: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!(
        "{}: not a monitor state file: {why}",
        path.display()
    ))
}

/// A report line: a statement about a watched identity, or an alert.
enum Report {
    Statement { index: u64, att: Box<Attestation> },
    Alert(AuditError),
}

struct Monitor {
    key: Did,
    json: bool,
    watched: BTreeSet<Did>,
    heads: BTreeMap<Did, ChainHead>,
    frontier: Frontier,
    last: Option<Checkpoint>,
    state: State,
    alerts: u64,
    /// The last alert printed, so a condition that persists is reported once.
    last_alert: Option<String>,
}

pub(crate) fn run(o: Options) -> Result<ExitCode, CliError> {
    let key = log_key(&o.log_key)?;
    let watched = o
        .watch
        .iter()
        .map(|w| Did::parse(w).map_err(|e| CliError::Usage(format!("--watch {w}: {e}"))))
        .collect::<Result<BTreeSet<_>, _>>()?;
    let mut m = Monitor::load(key, watched, o.state.as_deref(), o.json)?;
    runtime()?.block_on(async move {
        let mut session = None;
        loop {
            let before = m.progress();
            let silent = match m.attempt(&o.server, &mut session).await {
                Ok(()) => None,
                // A server that does not answer is an alert, not the end
                // (spec/audit.md, "Deadlines"): the round is dropped and
                // the next one starts on a new connection.
                Err(CliError::Timeout { call, after }) => {
                    m.roll_back(before);
                    session = None;
                    m.report(Report::Alert(AuditError::new(
                        AuditCode::Unresponsive,
                        format!(
                            "the server did not answer {call} within {}",
                            Deadline::from(after)
                        ),
                    )));
                    Some(CliError::Timeout { call, after })
                }
                Err(e) => return Err(e),
            };
            if let Some(path) = &o.state {
                m.save(path)?;
            }
            if o.exit_on_alert && m.alerts > 0 {
                return Ok(ExitCode::from(EXIT_VERIFY_FAILED));
            }
            if o.once {
                if let Some(e) = silent {
                    return Err(e);
                }
                if m.json {
                    println!(
                        "{}",
                        json!({"type": "checkpoint", "size": m.frontier.size(), "root": hex::encode(m.frontier.root())})
                    );
                } else {
                    println!("up to date at size {}", m.frontier.size());
                }
                return Ok(ExitCode::SUCCESS);
            }
            match session.as_mut() {
                Some((_, stream)) => stream.wait(o.poll).await,
                None => tokio::time::sleep(o.poll).await,
            }
        }
    })
}

/// A connection and its entry stream.
type Session = (Registry, Stream);

/// What a round may change before it completes, to roll back to.
struct Progress {
    frontier: Frontier,
    heads: BTreeMap<Did, ChainHead>,
    last: Option<Checkpoint>,
    checkpoint: String,
}

/// The log's entries from some index on, as `WatchEntries` sends them,
/// buffered until a verified checkpoint covers them.
struct Stream {
    inner: tonic::Streaming<proto::Entry>,
    pending: VecDeque<proto::Entry>,
    deadline: Deadline,
}

impl Stream {
    async fn open(client: &mut Registry, start: u64) -> Result<Stream, CliError> {
        let inner = client
            .deadline
            .call(
                "WatchEntries",
                client
                    .rpc
                    .watch_entries(proto::WatchEntriesRequest { start }),
            )
            .await?;
        Ok(Stream {
            inner,
            pending: VecDeque::new(),
            deadline: client.deadline,
        })
    }

    /// Waits up to `poll` for the next entry (kept for the next round).
    async fn wait(&mut self, poll: Duration) {
        if let Ok(Some(Ok(e))) = tokio::time::timeout(poll, self.inner.next()).await {
            self.pending.push_back(e);
        }
    }

    /// The next `n` entries, in order.
    async fn take(&mut self, n: usize) -> Result<Vec<proto::Entry>, CliError> {
        while self.pending.len() < n {
            match self.deadline.next("WatchEntries", &mut self.inner).await? {
                Some(e) => self.pending.push_back(e),
                None => {
                    return Err(CliError::Unreachable(
                        "the server ended the entry stream".into(),
                    ));
                }
            }
        }
        Ok(self.pending.drain(..n).collect())
    }
}

impl Monitor {
    fn load(
        key: Did,
        watched: BTreeSet<Did>,
        path: Option<&Path>,
        json: bool,
    ) -> Result<Monitor, CliError> {
        let state = match path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p).map_err(files::io(p))?;
                serde_json::from_str::<State>(&text).map_err(|e| bad_state(p, e))?
            }
            _ => State {
                v: STATE_VERSION,
                log: key.to_string(),
                ..State::default()
            },
        };
        let shown = path.map_or_else(String::new, |p| p.display().to_string());
        if state.v != STATE_VERSION {
            return Err(bad_state(Path::new(&shown), format!("version {}", state.v)));
        }
        if state.log != key.to_string() {
            return Err(CliError::Usage(format!(
                "{shown}: the state is for the log key {}, not {key}",
                state.log
            )));
        }
        let (last, frontier) = if state.checkpoint.is_empty() {
            (None, Frontier::default())
        } else {
            let cp = verify_checkpoint(&state.checkpoint, &key)
                .map_err(|e| bad_state(Path::new(&shown), e))?;
            let roots = state
                .frontier
                .iter()
                .map(|h| {
                    hex::decode(h)
                        .ok()
                        .and_then(|b| Hash::try_from(b.as_slice()).ok())
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    bad_state(Path::new(&shown), "a frontier hash is not 64 hex digits")
                })?;
            let f = Frontier::from_parts(cp.size, roots)
                .filter(|f| f.root() == cp.root)
                .ok_or_else(|| {
                    bad_state(
                        Path::new(&shown),
                        "the frontier does not match the checkpoint",
                    )
                })?;
            (Some(cp), f)
        };
        let mut heads = BTreeMap::new();
        for (did, w) in &state.watched {
            let subject = Did::parse(did).map_err(|e| bad_state(Path::new(&shown), e))?;
            // An identity no longer watched is forgotten: if it is watched
            // again, its chain is read afresh.
            if !watched.contains(&subject) {
                continue;
            }
            let head = w
                .head(&subject)
                .ok_or_else(|| bad_state(Path::new(&shown), format!("the head of {did}")))?;
            heads.insert(subject, head);
        }
        Ok(Monitor {
            key,
            json,
            watched,
            heads,
            frontier,
            last,
            state,
            alerts: 0,
            last_alert: None,
        })
    }

    fn save(&mut self, path: &Path) -> Result<(), CliError> {
        self.state.frontier = self.frontier.roots().iter().map(hex::encode).collect();
        self.state.watched = self
            .heads
            .iter()
            .map(|(d, h)| (d.to_string(), Watched::of(h)))
            .collect();
        let text = serde_json::to_string_pretty(&self.state)
            .map_err(|e| CliError::Usage(format!("monitor state: {e}")))?;
        super::audit::save_atomically(path, &text)
    }

    /// An identity watched now but not when the state was saved: read its
    /// chain up to the state's size (later statements come as entries).
    async fn adopt_new_watches(&mut self, client: &mut Registry) -> Result<(), CliError> {
        let size = self.frontier.size();
        let new: Vec<Did> = self
            .watched
            .iter()
            .filter(|d| !self.heads.contains_key(*d))
            .cloned()
            .collect();
        for did in new {
            if size == 0 {
                continue;
            }
            let mut envelopes = Vec::new();
            let mut from_seq = 0;
            loop {
                let request = proto::GetChainRequest {
                    did: did.to_string(),
                    from_seq,
                    page_size: 0,
                };
                let page = match client
                    .deadline
                    .status("GetChain", client.rpc.get_chain(request))
                    .await?
                {
                    Ok(p) => p,
                    Err(s) if s.code() == tonic::Code::NotFound => break,
                    Err(s) => return Err(call_failed(&s)),
                };
                // Each statement must be proven in a checkpoint that extends
                // the last one verified, or it is not adopted.
                let proven = self.prove_page(client, &page).await?;
                if let Err(e) = proven {
                    self.report(Report::Alert(e));
                    envelopes.clear();
                    break;
                }
                envelopes.extend(
                    page.entries
                        .into_iter()
                        .filter(|e| e.index < size)
                        .map(|e| e.envelope),
                );
                from_seq = page.next_seq;
                if !page.more {
                    break;
                }
            }
            if envelopes.is_empty() {
                continue;
            }
            match crate::verify_chain(&envelopes) {
                Ok(state) => {
                    self.heads.insert(did, state.chain_head());
                }
                Err(e) => self.report(Report::Alert(AuditError::new(
                    AuditCode::Attestation(e.error.code()),
                    format!("the chain of {did} as the server sends it: {e}"),
                ))),
            }
        }
        Ok(())
    }

    /// Checks a GetChain page against the last verified checkpoint L: the
    /// page's checkpoint is signed by the log key and extends L
    /// (consistency proof), and every entry's inclusion proof holds in it.
    async fn prove_page(
        &self,
        client: &mut Registry,
        page: &proto::GetChainResponse,
    ) -> Result<Result<(), AuditError>, CliError> {
        let note = page.checkpoint.as_ref().map_or("", |c| c.note.as_str());
        let cp = match verify_checkpoint(note, &self.key) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(AuditError::new(
                    AuditCode::BadCheckpoint,
                    e.to_string(),
                )));
            }
        };
        if let Some(last) = &self.last {
            if let Err(e) = extends(client, last, &cp).await? {
                return Ok(Err(e));
            }
        }
        for e in &page.entries {
            let path = hashes(&e.inclusion_proof);
            if let Err(err) = crate::ledger::verify_inclusion(
                &leaf_hash(&e.envelope),
                e.index,
                cp.size,
                &path,
                &cp.root,
            ) {
                return Ok(Err(AuditError::at(
                    e.index,
                    AuditCode::BadInclusionProof,
                    err.to_string(),
                )));
            }
        }
        Ok(Ok(()))
    }

    fn report(&mut self, r: Report) {
        match r {
            Report::Statement { index, att } => {
                let st = att.statement();
                if self.json {
                    println!(
                        "{}",
                        json!({
                            "type": "statement", "index": index, "subject": st.subject.to_string(),
                            "seq": st.seq, "kind": st.kind().to_string(), "id": att.id().to_string(),
                            "signer": st.signer.to_string(), "issued_at_ms": st.issued_at,
                        })
                    );
                } else {
                    println!(
                        "{} {} seq {} {} at index {index} (id {})",
                        good("statement"),
                        st.subject,
                        st.seq,
                        st.kind(),
                        att.id()
                    );
                }
                self.alerts += 1;
            }
            Report::Alert(e) => {
                let key = e.to_string();
                if self.last_alert.as_deref() == Some(key.as_str()) {
                    return;
                }
                self.last_alert = Some(key);
                if self.json {
                    println!(
                        "{}",
                        json!({"type": "alert", "code": e.code.as_str(), "index": e.index, "message": e.message})
                    );
                } else {
                    println!("{} {}", bad("ALERT"), escape(&e.to_string()));
                }
                self.alerts += 1;
            }
        }
    }

    /// One round, connecting first if there is no session (adopting new
    /// watched identities and opening the entry stream).
    async fn attempt(
        &mut self,
        server: &ServerArg,
        session: &mut Option<Session>,
    ) -> Result<(), CliError> {
        if session.is_none() {
            let mut client = connect(server).await?;
            self.adopt_new_watches(&mut client).await?;
            let stream = Stream::open(&mut client, self.frontier.size()).await?;
            *session = Some((client, stream));
        }
        match session.as_mut() {
            Some((client, stream)) => self.round(client, stream).await,
            None => Ok(()),
        }
    }

    fn progress(&self) -> Progress {
        Progress {
            frontier: self.frontier.clone(),
            heads: self.heads.clone(),
            last: self.last.clone(),
            checkpoint: self.state.checkpoint.clone(),
        }
    }

    /// Undoes a round that did not complete. Once a round's checkpoint is
    /// verified and its reports printed, only the equivocation check
    /// remains, and the round is kept.
    fn roll_back(&mut self, before: Progress) {
        if self.state.checkpoint != before.checkpoint {
            return;
        }
        self.frontier = before.frontier;
        self.heads = before.heads;
        self.last = before.last;
    }

    /// One round: the newest checkpoint, checked against the last verified
    /// one, and the entries up to it.
    async fn round(&mut self, client: &mut Registry, stream: &mut Stream) -> Result<(), CliError> {
        let (note, cp) = newest_checkpoint(client, &self.key).await?;
        let cp = match cp {
            Ok(c) => c,
            Err(e) => {
                self.report(Report::Alert(e));
                return Ok(());
            }
        };
        if let Some(last) = &self.last {
            if let Err(e) = extends(client, last, &cp).await? {
                self.report(Report::Alert(e));
                return Ok(());
            }
        }
        if cp.size > self.frontier.size() {
            // Kept to roll back to if the entries are not the checkpoint's.
            let (frontier, heads) = (self.frontier.clone(), self.heads.clone());
            let mut reports = Vec::new();
            let mut broken = None;
            while self.frontier.size() < cp.size && broken.is_none() {
                let n = (cp.size - self.frontier.size()).min(CHUNK as u64) as usize;
                let chunk = stream.take(n).await?;
                let envelopes: Vec<Vec<u8>> = chunk.iter().map(|e| e.envelope.clone()).collect();
                let verdicts = verify_parallel(&envelopes, available_threads());
                for (e, verdict) in chunk.iter().zip(verdicts) {
                    let index = self.frontier.size();
                    if e.index != index {
                        broken = Some(AuditError::at(
                            index,
                            AuditCode::SizeMismatch,
                            format!(
                                "the server's entry stream sent index {} in its place",
                                e.index
                            ),
                        ));
                        break;
                    }
                    match verdict {
                        Err(err) => reports.push(Report::Alert(AuditError::entry(index, &err))),
                        Ok(att) => self.watch_entry(index, att, &mut reports),
                    }
                    self.frontier.push(leaf_hash(&e.envelope));
                }
            }
            let broken = broken.or_else(|| {
                (self.frontier.root() != cp.root).then(|| {
                    AuditError::new(
                        AuditCode::RootMismatch,
                        format!(
                            "the entries the server sent up to size {} do not have its checkpoint's root",
                            cp.size
                        ),
                    )
                })
            });
            if let Some(e) = broken {
                // The entries are not the checkpoint's: keep nothing of
                // this round, and read them again next time.
                self.frontier = frontier;
                self.heads = heads;
                *stream = Stream::open(client, self.frontier.size()).await?;
                self.report(Report::Alert(e));
                return Ok(());
            }
            for r in reports {
                self.report(r);
            }
        }
        self.last = Some(cp);
        self.state.checkpoint = note;
        self.check_equivocations(client).await
    }

    /// Chain rules and reports for a watched subject's statement.
    fn watch_entry(&mut self, index: u64, att: Attestation, reports: &mut Vec<Report>) {
        let subject = att.statement().subject.clone();
        if !self.watched.contains(&subject) {
            return;
        }
        let seq = att.statement().seq;
        let verdict = match self.heads.get_mut(&subject) {
            None => ChainHead::genesis(&att).map(|h| {
                self.heads.insert(subject.clone(), h);
            }),
            Some(h) if seq <= h.seq => Err(crate::Error::new(
                crate::ErrorCode::Equivocation,
                format!("a second statement for seq {seq} of {subject} is in the log"),
            )),
            Some(h) => h.apply(&att),
        };
        if let Err(e) = verdict {
            reports.push(Report::Alert(AuditError::entry(index, &e)));
        }
        reports.push(Report::Statement {
            index,
            att: Box::new(att),
        });
    }

    async fn check_equivocations(&mut self, client: &mut Registry) -> Result<(), CliError> {
        let mut token = Vec::new();
        loop {
            let request = proto::ListEquivocationsRequest {
                page_size: 0,
                page_token: token,
            };
            let page = client
                .deadline
                .call("ListEquivocations", client.rpc.list_equivocations(request))
                .await?;
            for ev in page.evidence {
                let id = format!("{}#{}", ev.subject, ev.seq);
                if self.state.equivocations.insert(id) {
                    let watched = Did::parse(&ev.subject).is_ok_and(|d| self.watched.contains(&d));
                    self.report(Report::Alert(AuditError::at(
                        ev.logged_index,
                        AuditCode::Attestation(crate::ErrorCode::Equivocation),
                        format!(
                            "{}'s key signed two statements for seq {} ({}); the log holds {}",
                            ev.subject,
                            ev.seq,
                            if watched {
                                "a watched identity"
                            } else {
                                "not watched"
                            },
                            AttestationId::of(&ev.logged_envelope)
                        ),
                    )));
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(());
            }
            token = page.next_page_token;
        }
    }
}
