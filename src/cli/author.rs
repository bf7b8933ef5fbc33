//! `pulse-ledger handler …` and `pulse-ledger plugin …`: sign statements.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ed25519_dalek::SigningKey;

use super::error::CliError;
use super::files;
use crate::{
    Action, Attestation, Did, Family, HandlerAccess, HandlerSchema, Member, PluginSchema, Right,
    Schema, Statement, sign_statement,
};

const HANDLER_EXAMPLES: &str = "\
Examples:
  pulse-ledger handler new --key h.key --name python.script --version 1.0.0 \\
      --plugin did:key:z6Mk... --timeout-ms 60000 --code job.py --out h0.att
  pulse-ledger handler update --key h.key --prev h0.att --version 1.1.0 --out h1.att
  pulse-ledger handler rotate --key h.key --new-key h2.key --prev h1.att --out h2.att
  pulse-ledger handler update --key h2.key --prev h2.att --schema-from h1.att \\
      --max-cost 500 --out h3.att
  pulse-ledger handler revoke --key h2.key --prev h3.att --reason retired --out h4.att
  pulse-ledger handler update --key h2.key --prev h2.att --enqueue-access owner,did:key:z6Mk... \\
      --read-access owner,did:key:z6Mk... --cancel-access owner --out h3.att

Access lists (--enqueue-access, --read-access, --cancel-access,
--budget-access) say who may act on the handler's jobs: owner (whoever holds
its key, with a DID token: pulse-ledger token did), tokens (the server's
operator tokens with that scope) and did:keys. Unset, a list is owner,tokens.";

const PLUGIN_EXAMPLES: &str = "\
Examples:
  pulse-ledger plugin new --key p.key --name py-runner --version 1.0.0 --out p0.att
  pulse-ledger plugin update --key p.key --prev p0.att --endpoint https://runner:7400 --out p1.att
  pulse-ledger plugin rotate --key p.key --new-key p2.key --prev p1.att --out p2.att
  pulse-ledger plugin revoke --key p2.key --prev p2.att --out p3.att";

/// Handler statements.
// Parsed once per process from the command line: the size of the largest
// variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
#[command(after_help = HANDLER_EXAMPLES)]
pub(crate) enum Verb {
    /// Register a new handler (genesis): its ID is the did:key of --key.
    #[command(after_help = HANDLER_EXAMPLES)]
    New {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fields: HandlerFields,
    },
    /// Replace the handler's schema. Unset fields are copied from the
    /// schema in --schema-from, or in --prev if it carries one.
    #[command(after_help = HANDLER_EXAMPLES)]
    Update {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        link: Link,
        #[command(flatten)]
        fields: HandlerFields,
        /// Attestation whose schema to start from (default: --prev).
        #[arg(long, value_name = "FILE")]
        schema_from: Option<PathBuf>,
        /// Remove an optional field from the schema (repeatable).
        #[arg(long, value_enum, value_name = "FIELD")]
        clear: Vec<HandlerOptional>,
    },
    /// Hand the handler to a new key; signed by the current and new key.
    #[command(after_help = HANDLER_EXAMPLES)]
    Rotate(RotateArgs),
    /// Revoke the handler for good.
    #[command(after_help = HANDLER_EXAMPLES)]
    Revoke(RevokeArgs),
    /// Show a handler's current state from a server.
    Show(super::client::ShowArgs),
    /// List handlers on a server.
    List(super::client::ListArgs),
}

/// Plugin statements.
#[derive(Debug, clap::Subcommand)]
#[command(after_help = PLUGIN_EXAMPLES)]
pub(crate) enum PluginVerb {
    /// Register a new plugin (genesis): its ID is the did:key of --key.
    #[command(after_help = PLUGIN_EXAMPLES)]
    New {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fields: PluginFields,
    },
    /// Replace the plugin's schema. Unset fields are copied from the schema
    /// in --schema-from, or in --prev if it carries one.
    #[command(after_help = PLUGIN_EXAMPLES)]
    Update {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        link: Link,
        #[command(flatten)]
        fields: PluginFields,
        /// Attestation whose schema to start from (default: --prev).
        #[arg(long, value_name = "FILE")]
        schema_from: Option<PathBuf>,
        /// Remove an optional field from the schema (repeatable).
        #[arg(long, value_enum, value_name = "FIELD")]
        clear: Vec<PluginOptional>,
    },
    /// Hand the plugin to a new key; signed by the current and new key.
    #[command(after_help = PLUGIN_EXAMPLES)]
    Rotate(RotateArgs),
    /// Revoke the plugin for good.
    #[command(after_help = PLUGIN_EXAMPLES)]
    Revoke(RevokeArgs),
    /// Show a plugin's current state from a server.
    #[command(after_help = "\
Examples:
  pulse-ledger plugin show did:key:z6Mk...
  pulse-ledger plugin show --json did:key:z6Mk... | jq .schema

In --json, byte fields (IDs) are lowercase hex.")]
    Show(super::client::ShowArgs),
    /// List plugins on a server.
    #[command(after_help = "\
Examples:
  pulse-ledger plugin list
  pulse-ledger plugin list --name-prefix py- --all
  pulse-ledger plugin list --page-size 50 --page-token <token from the last page>")]
    List(super::client::ListArgs),
    /// The plugin processes a server has live sessions with, and the
    /// proofs it refused last.
    Sessions(super::sessions::SessionsArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// Secret key file of the signer (for new: the subject's own key; later:
    /// the current key).
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
    /// Where to write the attestation (must not exist).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// issued_at in Unix milliseconds (default: now, and never earlier than
    /// the previous statement).
    #[arg(long, value_name = "MS")]
    issued_at: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

use super::head::Link;

#[derive(Debug, clap::Args)]
pub(crate) struct RotateArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    link: Link,
    /// Secret key file of the new key (it co-signs: proof of possession).
    #[arg(long, value_name = "KEYFILE")]
    new_key: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    link: Link,
    /// Why, for people (at most 256 bytes).
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Debug, Default, clap::Args)]
pub(crate) struct HandlerFields {
    /// Handler name, [a-z0-9][a-z0-9._-]{0,63} (required for new).
    #[arg(long)]
    name: Option<String>,
    /// Semantic version, e.g. 1.2.0 (required for new).
    #[arg(long)]
    version: Option<String>,
    /// did:key of the only plugin allowed to run it (required for new).
    #[arg(long, value_name = "DID")]
    plugin: Option<String>,
    /// File with a JSON Schema for job payloads.
    #[arg(long, value_name = "FILE")]
    input_schema: Option<PathBuf>,
    /// File with a JSON Schema for job results.
    #[arg(long, value_name = "FILE")]
    output_schema: Option<PathBuf>,
    /// Per-attempt timeout, ms (1..=86400000; default 300000).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Attempts per job (1..=100; default 3).
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Cost budget per job, in the plugin's cost units (default: none).
    #[arg(long, value_name = "UNITS")]
    max_cost: Option<u64>,
    /// Most attempts running at once (default: no limit).
    #[arg(long, value_name = "N")]
    max_concurrency: Option<u32>,
    /// Free text for people (at most 1024 bytes).
    #[arg(long)]
    description: Option<String>,
    /// File with the inline script (at most 48 KiB).
    #[arg(long, value_name = "FILE")]
    code: Option<PathBuf>,
    /// Who may enqueue jobs: a comma-separated list of owner (whoever
    /// holds the handler's key), tokens (the server's operator tokens
    /// with the scope) and did:keys; "" for nobody but admin tokens;
    /// default for owner,tokens.
    #[arg(long, value_name = "MEMBERS")]
    enqueue_access: Option<String>,
    /// Who may read its jobs, their logs and its budget (as --enqueue-access).
    #[arg(long, value_name = "MEMBERS")]
    read_access: Option<String>,
    /// Who may cancel its jobs (as --enqueue-access).
    #[arg(long, value_name = "MEMBERS")]
    cancel_access: Option<String>,
    /// Who may set its budget (as --enqueue-access).
    #[arg(long, value_name = "MEMBERS")]
    budget_access: Option<String>,
    /// Ask the plugin for network: "outbound" (connect out, never listen);
    /// the plugin grants it only if its operator allows it.
    #[arg(long, value_name = "NETWORK", value_parser = ["outbound"])]
    network: Option<String>,
}

#[derive(Debug, Default, clap::Args)]
pub(crate) struct PluginFields {
    /// Plugin name, [a-z0-9][a-z0-9._-]{0,63} (required for new).
    #[arg(long)]
    name: Option<String>,
    /// Semantic version, e.g. 1.0.0 (required for new).
    #[arg(long)]
    version: Option<String>,
    /// Plugin protocol version (default 1).
    #[arg(long, value_name = "N")]
    protocol: Option<u64>,
    /// http:// or https:// URL where the plugin listens (omit for plugins
    /// that are only spawned locally).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Free text for people (at most 1024 bytes).
    #[arg(long)]
    description: Option<String>,
}

/// Optional handler schema fields that `update --clear` can remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum HandlerOptional {
    InputSchema,
    OutputSchema,
    TimeoutMs,
    MaxAttempts,
    MaxCost,
    MaxConcurrency,
    Description,
    Code,
    Access,
    Network,
}

/// Optional plugin schema fields that `update --clear` can remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PluginOptional {
    Endpoint,
    Description,
}

pub(crate) fn run_handler(verb: Verb) -> Result<ExitCode, CliError> {
    match verb {
        Verb::New { common, fields } => {
            let schema = fields.apply(None)?;
            genesis(common, Family::Handler, Schema::Handler(schema))
        }
        Verb::Update {
            common,
            link,
            fields,
            schema_from,
            clear,
        } => {
            let prev = Prev::resolve(&link, &common.key, Family::Handler)?;
            let base = base_schema(&prev, schema_from.as_deref())?.and_then(|s| match s {
                Schema::Handler(h) => Some(h),
                Schema::Plugin(_) => None,
            });
            let mut schema = fields.apply(base)?;
            for field in clear {
                schema.clear(field);
            }
            follow(common, prev, Action::Update(Schema::Handler(schema)), None)
        }
        Verb::Rotate(a) => rotate(a, Family::Handler),
        Verb::Revoke(a) => revoke(a, Family::Handler),
        Verb::Show(a) => super::client::show(a),
        Verb::List(a) => super::client::list(a, false),
    }
}

pub(crate) fn run_plugin(verb: PluginVerb) -> Result<ExitCode, CliError> {
    match verb {
        PluginVerb::New { common, fields } => {
            let schema = fields.apply(None)?;
            genesis(common, Family::Plugin, Schema::Plugin(schema))
        }
        PluginVerb::Update {
            common,
            link,
            fields,
            schema_from,
            clear,
        } => {
            let prev = Prev::resolve(&link, &common.key, Family::Plugin)?;
            let base = base_schema(&prev, schema_from.as_deref())?.and_then(|s| match s {
                Schema::Plugin(p) => Some(p),
                Schema::Handler(_) => None,
            });
            let mut schema = fields.apply(base)?;
            for field in clear {
                match field {
                    PluginOptional::Endpoint => schema.endpoint = None,
                    PluginOptional::Description => schema.description = None,
                }
            }
            follow(common, prev, Action::Update(Schema::Plugin(schema)), None)
        }
        PluginVerb::Rotate(a) => rotate(a, Family::Plugin),
        PluginVerb::Revoke(a) => revoke(a, Family::Plugin),
        PluginVerb::Show(a) => super::client::show(a),
        PluginVerb::List(a) => super::client::list(a, true),
        PluginVerb::Sessions(a) => super::sessions::run(a),
    }
}

impl HandlerFields {
    /// Overlays the flags on `base` (or builds from the flags alone).
    fn apply(self, base: Option<HandlerSchema>) -> Result<HandlerSchema, CliError> {
        let mut s = match base {
            Some(b) => b,
            None => {
                let need = |v: Option<&String>, flag: &str| v.cloned().ok_or_else(|| no_base(flag));
                HandlerSchema::new(
                    need(self.name.as_ref(), "--name")?,
                    need(self.version.as_ref(), "--version")?,
                    parse_did(&need(self.plugin.as_ref(), "--plugin")?, "--plugin")?,
                )
            }
        };
        if let Some(v) = self.name {
            s.name = v;
        }
        if let Some(v) = self.version {
            s.version = v;
        }
        if let Some(v) = self.plugin {
            s.plugin = parse_did(&v, "--plugin")?;
        }
        if let Some(p) = self.input_schema {
            s.input_schema = Some(read_text(&p)?);
        }
        if let Some(p) = self.output_schema {
            s.output_schema = Some(read_text(&p)?);
        }
        s.timeout_ms = self.timeout_ms.or(s.timeout_ms);
        s.max_attempts = self.max_attempts.or(s.max_attempts);
        s.max_cost = self.max_cost.or(s.max_cost);
        s.max_concurrency = self.max_concurrency.or(s.max_concurrency);
        s.description = self.description.or(s.description);
        if let Some(p) = self.code {
            s.code = Some(read_limited(&p, crate::limits::MAX_CODE_BYTES)?);
        }
        if self.network.is_some() {
            s.network = Some(crate::NetworkAccess::Outbound);
        }
        for (right, text) in [
            (Right::Enqueue, self.enqueue_access),
            (Right::Read, self.read_access),
            (Right::Cancel, self.cancel_access),
            (Right::Budget, self.budget_access),
        ] {
            if let Some(text) = text {
                s.access = set_access(s.access.take(), right, &text)?;
            }
        }
        Ok(s)
    }
}

/// `access` with the list for `right` set from `--<right>-access TEXT`.
fn set_access(
    access: Option<HandlerAccess>,
    right: Right,
    text: &str,
) -> Result<Option<HandlerAccess>, CliError> {
    let flag = format!("--{right}-access");
    let a = access.unwrap_or_default();
    let mut lists: Vec<(Right, Vec<Member>)> = Right::ALL
        .into_iter()
        .filter(|r| *r != right)
        .filter_map(|r| a.written(r).map(|l| (r, l.to_vec())))
        .collect();
    if text.trim() != "default" {
        let mut members = Vec::new();
        for item in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let m = Member::parse(item).map_err(|e| CliError::Usage(format!("{flag}: {e}")))?;
            if members.contains(&m) {
                return Err(CliError::Usage(format!("{flag}: {m} is named twice")));
            }
            members.push(m);
        }
        if members.len() > crate::limits::MAX_ACCESS_MEMBERS {
            return Err(CliError::Usage(format!(
                "{flag}: at most {} members",
                crate::limits::MAX_ACCESS_MEMBERS
            )));
        }
        lists.push((right, members));
    }
    let mut out = HandlerAccess::default();
    for (r, l) in lists {
        out.set(r, l);
    }
    Ok(Some(out).filter(|a| Right::ALL.iter().any(|r| a.written(*r).is_some())))
}

impl HandlerSchema {
    fn clear(&mut self, field: HandlerOptional) {
        match field {
            HandlerOptional::InputSchema => self.input_schema = None,
            HandlerOptional::OutputSchema => self.output_schema = None,
            HandlerOptional::TimeoutMs => self.timeout_ms = None,
            HandlerOptional::MaxAttempts => self.max_attempts = None,
            HandlerOptional::MaxCost => self.max_cost = None,
            HandlerOptional::MaxConcurrency => self.max_concurrency = None,
            HandlerOptional::Description => self.description = None,
            HandlerOptional::Code => self.code = None,
            HandlerOptional::Access => self.access = None,
            HandlerOptional::Network => self.network = None,
        }
    }
}

impl PluginFields {
    fn apply(self, base: Option<PluginSchema>) -> Result<PluginSchema, CliError> {
        let mut s = match base {
            Some(b) => b,
            None => {
                let need = |v: Option<&String>, flag: &str| v.cloned().ok_or_else(|| no_base(flag));
                PluginSchema::new(
                    need(self.name.as_ref(), "--name")?,
                    need(self.version.as_ref(), "--version")?,
                )
            }
        };
        if let Some(v) = self.name {
            s.name = v;
        }
        if let Some(v) = self.version {
            s.version = v;
        }
        s.protocol = self.protocol.unwrap_or(s.protocol);
        s.endpoint = self.endpoint.or(s.endpoint);
        s.description = self.description.or(s.description);
        Ok(s)
    }
}

/// The statement a new one follows, and what it implies for the new one.
struct Prev {
    att: Attestation,
    /// The key that must sign next.
    signer: Did,
}

impl Prev {
    /// The statement to follow (--prev checked against the server's head,
    /// or the server's head), for the key in `key_file`.
    fn resolve(link: &Link, key_file: &Path, family: Family) -> Result<Prev, CliError> {
        let signer = key_did(&load_key(key_file)?)?;
        let head = link.resolve(&signer)?;
        let shown = head.shown();
        let att = head.into_attestation();
        let st = att.statement();
        if st.family != family {
            return Err(CliError::Usage(format!(
                "{shown}: is a {} statement; this command continues a {} chain",
                st.kind(),
                family.as_str()
            )));
        }
        if let Action::Revoke { .. } = st.action {
            return Err(CliError::Usage(format!(
                "{shown}: the subject is revoked; nothing may follow a revocation"
            )));
        }
        let signer = match &st.action {
            Action::Rotate { new_key } => new_key.clone(),
            _ => st.signer.clone(),
        };
        Ok(Prev { att, signer })
    }
}

fn base_schema(prev: &Prev, schema_from: Option<&Path>) -> Result<Option<Schema>, CliError> {
    match schema_from {
        Some(path) => {
            let att = files::read_attestation(path)?;
            if att.statement().subject != prev.att.statement().subject {
                return Err(CliError::Usage(format!(
                    "{}: is about {}, not {}",
                    path.display(),
                    att.statement().subject,
                    prev.att.statement().subject
                )));
            }
            match att.statement().schema() {
                Some(s) => Ok(Some(s.clone())),
                None => Err(CliError::Usage(format!(
                    "{}: a {} statement carries no schema",
                    path.display(),
                    att.statement().kind()
                ))),
            }
        }
        None => Ok(prev.att.statement().schema().cloned()),
    }
}

fn genesis(common: Common, family: Family, schema: Schema) -> Result<ExitCode, CliError> {
    let key = load_key(&common.key)?;
    let did = key_did(&key)?;
    let statement = Statement {
        family,
        subject: did.clone(),
        signer: did,
        seq: 0,
        prev: None,
        issued_at: common.issued_at.unwrap_or_else(crate::clock::unix_ms),
        action: Action::Register(schema),
    };
    emit(&common, &statement, &key, None)
}

fn rotate(args: RotateArgs, family: Family) -> Result<ExitCode, CliError> {
    let prev = Prev::resolve(&args.link, &args.common.key, family)?;
    let new_key = load_key(&args.new_key)?;
    let new_did = key_did(&new_key)?;
    follow(
        args.common,
        prev,
        Action::Rotate { new_key: new_did },
        Some(&new_key),
    )
}

fn revoke(args: RevokeArgs, family: Family) -> Result<ExitCode, CliError> {
    let prev = Prev::resolve(&args.link, &args.common.key, family)?;
    follow(
        args.common,
        prev,
        Action::Revoke {
            reason: args.reason,
        },
        None,
    )
}

/// Signs a non-genesis statement after `prev`.
fn follow(
    common: Common,
    prev: Prev,
    action: Action,
    new_key: Option<&SigningKey>,
) -> Result<ExitCode, CliError> {
    let key = load_key(&common.key)?;
    let did = key_did(&key)?;
    if did != prev.signer {
        return Err(CliError::Usage(format!(
            "{} holds {did}, but the current key of {} is {}",
            common.key.display(),
            prev.att.statement().subject,
            prev.signer
        )));
    }
    let p = prev.att.statement();
    let statement = Statement {
        family: p.family,
        subject: p.subject.clone(),
        signer: did,
        seq: p.seq + 1,
        prev: Some(prev.att.id()),
        issued_at: common
            .issued_at
            .unwrap_or_else(|| crate::clock::unix_ms().max(p.issued_at)),
        action,
    };
    emit(&common, &statement, &key, new_key)
}

fn emit(
    common: &Common,
    statement: &Statement,
    key: &SigningKey,
    new_key: Option<&SigningKey>,
) -> Result<ExitCode, CliError> {
    let att = sign_statement(statement, key, new_key).map_err(|source| CliError::Invalid {
        path: common.out.clone(),
        source,
    })?;
    files::write_new(&common.out, att.envelope(), 0o644)?;
    let st = att.statement();
    if common.json {
        println!(
            "{}",
            serde_json::json!({
                "file": common.out.display().to_string(),
                "id": att.id().to_string(),
                "statement": st.to_json(),
            })
        );
    } else {
        println!(
            "wrote {} seq {} to {}\nsubject {}\nid      {}",
            st.kind(),
            st.seq,
            common.out.display(),
            st.subject,
            att.id()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn load_key(path: &Path) -> Result<SigningKey, CliError> {
    crate::keyfile::load(path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

fn no_base(flag: &str) -> CliError {
    CliError::Usage(format!(
        "{flag} is required: there is no schema to copy it from (for update after a rotate, \
         give --schema-from FILE with the latest register or update)"
    ))
}

fn key_did(key: &SigningKey) -> Result<Did, CliError> {
    Did::from_verifying_key(&key.verifying_key())
        .map_err(|e| CliError::Usage(format!("the key file holds an unusable key: {e}")))
}

fn parse_did(text: &str, flag: &str) -> Result<Did, CliError> {
    Did::parse(text).map_err(|e| CliError::Usage(format!("{flag}: {e}")))
}

fn read_text(path: &Path) -> Result<String, CliError> {
    let bytes = read_limited(path, crate::limits::MAX_JSON_SCHEMA_BYTES)?;
    String::from_utf8(bytes)
        .map_err(|_| CliError::Usage(format!("{}: is not UTF-8 text", path.display())))
}

fn read_limited(path: &Path, limit: usize) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)
        .map_err(files::io(path))?
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(files::io(path))?;
    if out.len() > limit {
        return Err(CliError::Usage(format!(
            "{}: is larger than the {limit}-byte limit",
            path.display()
        )));
    }
    Ok(out)
}
