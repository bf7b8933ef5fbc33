//! Signing on the log's head: `update`, `rotate` and `revoke` follow the
//! subject's newest statement. Without `--prev` it is fetched from the
//! server; with `--prev` the server is asked whether it is still the head,
//! because a statement signed on a stale one is a second statement at the
//! same seq — an equivocation the log keeps as evidence against the key
//! for ever.

use std::path::{Path, PathBuf};

use super::client::{ServerArg, connect};
use super::error::CliError;
use crate::api::proto;
use crate::{Attestation, Did, verify_attestation};

/// Where the previous statement comes from, and how it is checked.
#[derive(Debug, clap::Args)]
pub(crate) struct Link {
    /// The subject's latest attestation, which this one follows. Without
    /// it, the log's head for the subject is fetched from --server.
    #[arg(long, value_name = "FILE")]
    prev: Option<PathBuf>,
    /// The subject's did:key, to fetch its head (default: the did:key of
    /// --key, which is the subject until its first rotation).
    #[arg(long, value_name = "DID")]
    subject: Option<String>,
    /// Sign on --prev without asking the server whether it is the head
    /// (for keys kept offline; check with `verify chain` before submitting).
    #[arg(long, requires = "prev", conflicts_with = "force_equivocate")]
    offline: bool,
    /// Sign on a --prev that the log's head has moved past: this makes a
    /// second statement at a seq that already exists, which the server
    /// refuses and keeps as equivocation evidence against the key, reported
    /// by every `monitor` for ever. Only for testing monitors.
    #[arg(long, requires = "prev")]
    force_equivocate: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// The statement to follow.
pub(crate) enum Head {
    /// Read from a file the server confirmed (or could not be asked about).
    File(PathBuf, Attestation),
    /// Fetched from the server.
    Fetched(Attestation),
}

impl Head {
    /// The attestation.
    pub(crate) fn into_attestation(self) -> Attestation {
        match self {
            Head::File(_, a) | Head::Fetched(a) => a,
        }
    }

    /// How to name it in messages.
    pub(crate) fn shown(&self) -> String {
        match self {
            Head::File(p, _) => p.display().to_string(),
            Head::Fetched(a) => format!("the log's head for {}", a.statement().subject),
        }
    }
}

impl Link {
    /// The previous statement: --prev checked against the server, or the
    /// server's head for the subject (`signer` is --key's did:key).
    ///
    /// # Errors
    /// `stale_prev` (the log has moved past --prev), no --prev and no
    /// server, or a file that is not an attestation.
    pub(crate) fn resolve(&self, signer: &Did) -> Result<Head, CliError> {
        match &self.prev {
            Some(path) => {
                let att = super::files::read_attestation(path)?;
                if !self.offline {
                    self.check_head(path, &att)?;
                }
                Ok(Head::File(path.clone(), att))
            }
            None => self.fetch(signer).map(Head::Fetched),
        }
    }

    fn subject(&self, signer: &Did) -> Result<Did, CliError> {
        match &self.subject {
            Some(s) => Did::parse(s).map_err(|e| CliError::Usage(format!("--subject: {e}"))),
            None => Ok(signer.clone()),
        }
    }

    /// The subject's state in the log, or `None` if it has no chain there;
    /// `Err` if the server cannot be reached.
    fn subject_state(&self, did: &Did) -> Result<Option<proto::Subject>, CliError> {
        super::client::runtime()?.block_on(async {
            let mut c = connect(&self.server).await?;
            let r = c
                .deadline
                .call(
                    "GetSubject",
                    c.rpc.get_subject(proto::GetSubjectRequest {
                        did: did.to_string(),
                    }),
                )
                .await;
            match r {
                Ok(r) => Ok(r.subject),
                Err(CliError::Server {
                    code: tonic::Code::NotFound,
                    ..
                }) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn check_head(&self, path: &Path, att: &Attestation) -> Result<(), CliError> {
        let st = att.statement();
        let state = match self.subject_state(&st.subject) {
            Ok(s) => s,
            // No server to ask: sign as before, and say so.
            Err(e @ (CliError::Unreachable(_) | CliError::Timeout { .. })) => {
                eprintln!(
                    "note: signed on {} without checking that it is the log's head ({e}); give --offline to skip the check",
                    path.display()
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        // Not in the log yet (a genesis not submitted): nothing to compare.
        let Some(head) = state else { return Ok(()) };
        // The log holds --prev as its head, or has not reached it yet (a
        // chain signed ahead, to be submitted in order): the log has no
        // statement at the seq about to be signed, so nothing can clash.
        if head.seq < st.seq || (head.seq == st.seq && head.head_id == att.id().as_bytes()) {
            return Ok(());
        }
        if self.force_equivocate {
            eprintln!(
                "warning: --force-equivocate: {} is seq {}, the log's head is seq {}; the statement signed now will be refused and kept as equivocation evidence against the key",
                path.display(),
                st.seq,
                head.seq
            );
            return Ok(());
        }
        Err(CliError::Usage(format!(
            "stale_prev: {} is seq {} of {}, but the log's head is seq {} ({}): a statement signed on it would be a second seq {} — an equivocation, kept as evidence against your key and reported by every monitor, for ever. Leave out --prev to sign on the log's head{}",
            path.display(),
            st.seq,
            st.subject,
            head.seq,
            hex::encode(&head.head_id),
            st.seq + 1,
            if head.seq == st.seq {
                " (the log's statement at that seq is another one than --prev)"
            } else {
                ""
            }
        )))
    }

    fn fetch(&self, signer: &Did) -> Result<Attestation, CliError> {
        let did = self.subject(signer)?;
        let no_server = |e: CliError| {
            CliError::Usage(format!(
                "no --prev, so the previous statement comes from the server, and {e}; give --prev FILE (the subject's latest attestation)"
            ))
        };
        let head = match self.subject_state(&did) {
            Ok(Some(h)) => h,
            Ok(None) => {
                return Err(CliError::Usage(format!(
                    "{did} has no chain in the log at {}: give --prev FILE, or --subject with the subject's did:key (after a rotation --key is not the subject)",
                    self.server.url()
                )));
            }
            Err(e @ (CliError::Unreachable(_) | CliError::Timeout { .. })) => {
                return Err(no_server(e));
            }
            Err(e) => return Err(e),
        };
        let envelope = super::client::runtime()?.block_on(async {
            let mut c = connect(&self.server).await?;
            let chain = c
                .deadline
                .call(
                    "GetChain",
                    c.rpc.get_chain(proto::GetChainRequest {
                        did: did.to_string(),
                        from_seq: head.seq,
                        page_size: 1,
                    }),
                )
                .await?;
            chain
                .entries
                .into_iter()
                .next()
                .map(|e| e.envelope)
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "the server sent no statement {} for {did}",
                        head.seq
                    ))
                })
        })?;
        let att = verify_attestation(&envelope).map_err(|source| CliError::Invalid {
            path: PathBuf::from(format!("{did}@{}", head.seq)),
            source,
        })?;
        // The server's word is checked, not trusted: the statement must be
        // the head it named.
        if att.id().as_bytes() != head.head_id.as_slice() || att.statement().subject != did {
            return Err(CliError::Usage(format!(
                "the server's head for {did} does not match its own GetSubject answer"
            )));
        }
        eprintln!(
            "signing on {did}'s head in the log: seq {} ({})",
            head.seq,
            att.id()
        );
        Ok(att)
    }
}
