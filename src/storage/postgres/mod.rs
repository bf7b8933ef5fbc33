//! The PostgreSQL backend: every space's keys and values in one table
//! (`pulse_kv`, keyed by space and key), each commit (or group of
//! commits, `group_commit.rs`) one transaction with the server's
//! synchronous commit, snapshots as read-only
//! repeatable-read transactions.
//!
//! The stores above call storage from plain threads and from async tasks
//! alike, so the backend runs its own small tokio runtime: each call is a
//! task there, and the caller parks until it ends (as for a fjall read
//! that waits on the disk). Connections come from a bounded pool.

mod cache;
mod group_commit;
mod listener;
mod schema;
mod tls;

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

pub use schema::VERSION as SCHEMA_VERSION;

use super::{
    Backend, Entries, Entry, KeyRange, Notice, Order, ReadView, Snapshot, SpaceId, StorageError,
    WriteBatch, WriteOp, short_hex, wait,
};

/// Connections held at most.
const POOL_SIZE: usize = 16;
/// How long a call waits for a connection before answering `unavailable`.
const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// Entries a scan reads per query.
const PAGE: i64 = 256;
/// Run on each new connection: every statement reaches `pulse_kv` by its
/// primary key (a point, a range, or a join from a list of keys), so a
/// plan that reads the whole table is never what is meant. The planner
/// still picks one while the table is young (a few pages, no statistics
/// yet), and a prepared statement keeps that plan as its generic plan
/// for the connection's life, however large the table grows: reads of a
/// group's keys then scanned the whole table each time, and registrations
/// slowed from 4.3k/s to 1k/s over the first 32,000 entries
/// (BENCHMARKS.md, "Plans that stay on the key"). Scans, hash and merge
/// joins are only discouraged: a statement with no other plan still runs.
const KEY_ACCESS_ONLY: &str =
    "SET enable_seqscan = off; SET enable_hashjoin = off; SET enable_mergejoin = off";

/// A PostgreSQL database as a [`Backend`].
pub struct PostgresBackend {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Pool,
    spaces: RwLock<HashMap<String, SpaceId>>,
    shown: String,
    /// The connection that holds the single-server lock, while held.
    holder: std::sync::Mutex<Option<deadpool_postgres::ClientWrapper>>,
    /// Whether this process must hold that lock to write.
    locked: std::sync::atomic::AtomicBool,
    /// Whether it holds it alone (one server), not shared with other
    /// nodes: only then are values kept in memory.
    exclusive: std::sync::atomic::AtomicBool,
    /// Current values this server wrote or read, while it holds the
    /// server lock (nothing else writes then).
    cache: Arc<cache::ValueCache>,
    /// The queue of unconditional batches and their committing task,
    /// while this server holds the database alone.
    group: Arc<group_commit::GroupCommit>,
    /// How to open a connection of our own (the notice listener's).
    target: (tokio_postgres::Config, tls::Tls),
    /// Names this backend in the notices it commits.
    origin: String,
    /// Spaces whose values never change once written: cached (values
    /// present only) even while other processes share the database.
    write_once: RwLock<std::collections::HashSet<SpaceId>>,
    /// The other processes' notices, once [`PostgresBackend::share`]d.
    notices: std::sync::Mutex<Option<tokio::sync::broadcast::Sender<Notice>>>,
}

/// Whether `text` names a PostgreSQL database (`postgres://` or
/// `postgresql://`).
pub fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// `url` without its password, for messages and logs.
pub fn shown_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut shown = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_owned(),
            },
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    // A password can also be a query option.
    if let Some(query) = query {
        let options: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => pair.to_owned(),
            })
            .collect();
        shown.push('?');
        shown.push_str(&options.join("&"));
    }
    shown
}

fn pool_error(e: &PoolError) -> StorageError {
    StorageError::unavailable(format!("no connection to PostgreSQL: {}", with_causes(e)))
}

/// An error and its causes, each said once: the server's own words (a
/// refused login, a TLS failure, the option a URL got wrong) are in the
/// sources, while tokio-postgres says only "db error" or "invalid
/// connection string" at the top.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// A failed query. A connection that broke is `unavailable`; an error the
/// server returned names its SQLSTATE.
fn query_error(context: &str, e: &tokio_postgres::Error) -> StorageError {
    if e.is_closed() {
        return StorageError::unavailable(format!("{context}: the PostgreSQL connection closed"));
    }
    match e.as_db_error() {
        Some(db) => StorageError::new(format!(
            "{context}: PostgreSQL {}: {}",
            db.code().code(),
            db.message()
        )),
        None => StorageError::unavailable(format!("{context}: {e}")),
    }
}

impl PostgresBackend {
    /// Connects to `url`, creates or migrates the schema to this binary's
    /// version, and refuses a schema newer than it.
    ///
    /// # Errors
    /// A bad URL, an unreachable server (`unavailable`), or a schema this
    /// binary does not know.
    pub fn open(url: &str) -> Result<PostgresBackend, StorageError> {
        let backend = PostgresBackend::connect(url)?;
        backend.migrate()?;
        Ok(backend)
    }

    /// Connects to `url` without touching the schema.
    ///
    /// # Errors
    /// A bad URL or a runtime that cannot start.
    pub fn connect(url: &str) -> Result<PostgresBackend, StorageError> {
        let shown = shown_url(url);
        let target = tls::target(url, &shown)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(|e| StorageError::new(format!("starting the PostgreSQL runtime: {e}")))?;
        let manager_config = ManagerConfig {
            // A connection is checked when it fails, not before each use:
            // a round trip per call would halve the throughput. (`Clean`
            // would also `RESET ALL`, dropping KEY_ACCESS_ONLY.)
            recycling_method: RecyclingMethod::Fast,
        };
        let own = (target.config.clone(), target.tls.clone());
        let manager = match target.tls {
            tls::Tls::Plain => Manager::from_config(target.config, NoTls, manager_config),
            tls::Tls::Verified(tls) => Manager::from_config(target.config, tls, manager_config),
        };
        let mut origin = [0u8; 8];
        getrandom::fill(&mut origin)
            .map_err(|e| StorageError::new(format!("no randomness for a notice origin: {e}")))?;
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_WAIT))
            .create_timeout(Some(CONNECT_WAIT))
            .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
                Box::pin(async move {
                    client
                        .batch_execute(KEY_ACCESS_ONLY)
                        .await
                        .map_err(deadpool_postgres::HookError::Backend)
                })
            }))
            .build()
            .map_err(|e| StorageError::new(format!("{shown}: {e}")))?;
        Ok(PostgresBackend {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            pool,
            spaces: RwLock::default(),
            shown,
            holder: std::sync::Mutex::new(None),
            locked: std::sync::atomic::AtomicBool::new(false),
            exclusive: std::sync::atomic::AtomicBool::new(false),
            cache: Arc::default(),
            group: Arc::default(),
            target: own,
            origin: hex::encode(origin),
            notices: std::sync::Mutex::new(None),
            write_once: RwLock::default(),
        })
    }

    /// Opens the database to other processes writing it at the same time
    /// (several server nodes): this backend keeps no values in memory, and
    /// hears what the others announce ([`Backend::notices`]) from the
    /// moment this returns. The stores above must then make every write
    /// that could race another process's conditional
    /// ([`WriteBatch::expect`]).
    ///
    /// # Errors
    /// `unavailable` when the listening connection cannot be opened.
    pub fn share(&self) -> Result<(), StorageError> {
        let mut notices = self.notices.lock().unwrap_or_else(|p| p.into_inner());
        if notices.is_none() {
            let (config, tls) = self.target.clone();
            *notices = Some(listener::start(
                &self.handle,
                config,
                tls,
                self.origin.clone(),
            )?);
        }
        Ok(())
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Runs `f` with a pooled connection on the backend's runtime and
    /// waits for it.
    fn run<T, F, Fut>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StorageError>> + Send,
    {
        let pool = self.pool.clone();
        run_on(&self.handle, async move {
            let conn = pool.get().await.map_err(|e| pool_error(&e))?;
            f(conn).await
        })
    }

    /// Brings the schema to this binary's version: creates it in an empty
    /// database, applies the migrations it lacks, and refuses a newer one.
    /// Returns the versions before and after.
    ///
    /// # Errors
    /// `unavailable`; a schema newer than this binary; a failed migration
    /// (nothing of it applied).
    pub fn migrate(&self) -> Result<(i32, i32), StorageError> {
        let shown = self.shown.clone();
        self.run(move |mut conn| async move {
            let tx = conn
                .transaction()
                .await
                .map_err(|e| query_error("migrate", &e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::LOCK_KEY])
                .await
                .map_err(|e| query_error("migrate", &e))?;
            tx.batch_execute(schema::VERSION_TABLE)
                .await
                .map_err(|e| query_error("migrate", &e))?;
            let rows = tx
                .query("SELECT version FROM pulse_schema", &[])
                .await
                .map_err(|e| query_error("migrate", &e))?;
            let before: i32 = match rows.as_slice() {
                [] => 0,
                [row] => row.get(0),
                _ => {
                    return Err(StorageError::new(format!(
                        "{shown}: pulse_schema holds {} rows; it must hold one",
                        rows.len()
                    )));
                }
            };
            if before > schema::VERSION {
                return Err(StorageError::new(format!(
                    "{shown}: schema_too_new: the database's schema is version {before}; this pulse-ledger knows versions up to {}: run a newer pulse-ledger",
                    schema::VERSION
                )));
            }
            for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(before as usize) {
                tx.batch_execute(sql)
                    .await
                    .map_err(|e| query_error(&format!("migration {}", i + 1), &e))?;
            }
            if before == 0 {
                tx.execute("INSERT INTO pulse_schema (version) VALUES ($1)", &[&schema::VERSION])
                    .await
            } else {
                tx.execute("UPDATE pulse_schema SET version = $1", &[&schema::VERSION])
                    .await
            }
            .map_err(|e| query_error("migrate", &e))?;
            tx.commit().await.map_err(|e| query_error("migrate", &e))?;
            Ok((before, schema::VERSION))
        })
    }

    /// Takes the database for this process alone, for as long as the
    /// backend lives: one server writes a log at a time (its writer keeps
    /// the tree's frontier in memory). A session advisory lock on its own
    /// connection; a second server is refused with `store_in_use`.
    ///
    /// # Errors
    /// `store_in_use`, or `unavailable`.
    pub fn lock_single_server(&self) -> Result<(), StorageError> {
        self.locked
            .store(true, std::sync::atomic::Ordering::Release);
        self.exclusive
            .store(true, std::sync::atomic::Ordering::Release);
        self.take_server_lock(LOCK_WAIT_AT_START)
    }

    /// Takes the database as one node of several (`serve --node`): the
    /// server lock in shared mode, so nodes exclude a single server (and it
    /// them) but not each other, and the notices of the other nodes
    /// ([`PostgresBackend::share`]).
    ///
    /// # Errors
    /// `store_in_use` while a single server holds it, or `unavailable`.
    pub fn join_nodes(&self) -> Result<(), StorageError> {
        self.locked
            .store(true, std::sync::atomic::Ordering::Release);
        self.take_server_lock(LOCK_WAIT_AT_START)?;
        self.share()
    }

    /// Takes the server lock on a connection of its own, kept out of the
    /// pool, trying for up to `wait` while another session holds it.
    ///
    /// Why wait at all: a server killed a moment ago leaves its backend
    /// (and so its lock) behind until PostgreSQL reads the closed socket,
    /// which takes a moment on a busy machine; a restart right after a
    /// crash must not be refused for it. The lock's session sets short TCP
    /// keepalives so that a server whose machine vanished (no FIN ever
    /// sent) loses the lock in about 25 s, not the kernel's two hours.
    fn take_server_lock(&self, wait: std::time::Duration) -> Result<(), StorageError> {
        let shown = self.shown.clone();
        let exclusive = self.exclusive.load(std::sync::atomic::Ordering::Acquire);
        let conn = self.run(move |conn| async move {
            conn.batch_execute(
                "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3",
            )
            .await
            .map_err(|e| query_error("locking the database", &e))?;
            let until = tokio::time::Instant::now() + wait;
            loop {
                let sql = if exclusive {
                    "SELECT pg_try_advisory_lock($1)"
                } else {
                    "SELECT pg_try_advisory_lock_shared($1)"
                };
                let got: bool = conn
                    .query_one(sql, &[&schema::SERVER_LOCK_KEY])
                    .await
                    .map_err(|e| query_error("locking the database", &e))?
                    .get(0);
                if got {
                    break;
                }
                if tokio::time::Instant::now() >= until {
                    return Err(StorageError::new(if exclusive {
                        format!(
                            "store_in_use: another pulse-ledger serve holds {shown}: stop it, or give another database (one server per database, unless every server runs as a node with --node)"
                        )
                    } else {
                        format!(
                            "store_in_use: a pulse-ledger serve without --node holds {shown} alone: stop it, or run every server as a node"
                        )
                    }));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            // Out of the pool for good: the lock lives with this connection.
            Ok(Object::take(conn))
        })?;
        *self.holder.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
        Ok(())
    }

    /// Before a write: if the lock's connection broke (the database
    /// restarted, the network failed), the lock went with it; take it
    /// again, or refuse the write (`store_in_use` if another server took
    /// it meanwhile, `unavailable` if the database is still away).
    fn hold_server_lock(&self) -> Result<(), StorageError> {
        if !self.locked.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let lost = self
            .holder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|c| c.is_closed());
        if lost {
            tracing::warn!(store = %self.shown, "the server lock's connection closed: taking the lock again");
            drop(self.holder.lock().unwrap_or_else(|p| p.into_inner()).take());
            self.take_server_lock(std::time::Duration::ZERO)?;
        }
        Ok(())
    }

    fn is_write_once(&self, space: SpaceId) -> bool {
        self.write_once
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&space)
    }

    /// A commit with expectations or notices: one call of the
    /// `pulse_commit` function (spec/storage.md), so still one statement
    /// and one round trip. It locks the expected keys, compares them, and
    /// writes and notifies only if all hold.
    fn commit_conditional(
        &self,
        expected: &[super::Expectation],
        notes: Vec<String>,
        [del_spaces, put_spaces]: [Vec<i16>; 2],
        [del_keys, put_keys]: [Vec<Vec<u8>>; 2],
        put_values: Vec<Vec<u8>>,
    ) -> Result<(), StorageError> {
        let exp_spaces: Vec<i16> = expected.iter().map(|e| space_param(e.space)).collect();
        let exp_keys: Vec<Vec<u8>> = expected.iter().map(|e| e.key.clone()).collect();
        let exp_values: Vec<Option<Vec<u8>>> = expected.iter().map(|e| e.value.clone()).collect();
        let broken: i32 = self.run(move |conn| async move {
            let stmt = conn
                .prepare_cached(
                    "SELECT pulse_commit($1::int2[], $2::bytea[], $3::bytea[], $4::int2[], $5::bytea[],
                                         $6::int2[], $7::bytea[], $8::bytea[], $9::text[])",
                )
                .await
                .map_err(|e| query_error("commit", &e))?;
            let row = conn
                .query_one(
                    &stmt,
                    &[
                        &exp_spaces,
                        &exp_keys,
                        &exp_values,
                        &del_spaces,
                        &del_keys,
                        &put_spaces,
                        &put_keys,
                        &put_values,
                        &notes,
                    ],
                )
                .await
                .map_err(|e| query_error("commit", &e))?;
            Ok(row.get(0))
        })?;
        if broken == 0 {
            return Ok(());
        }
        let e = usize::try_from(broken - 1)
            .ok()
            .and_then(|i| expected.get(i))
            .ok_or_else(|| {
                StorageError::new(format!(
                    "pulse_commit answered {broken}, not an expectation"
                ))
            })?;
        let space = self
            .spaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, id)| **id == e.space)
            .map_or_else(|| e.space.0.to_string(), |(name, _)| name.clone());
        Err(StorageError::conflict(format!(
            "expectation {broken} of the batch (space {space}, key {}) no longer holds; nothing of the batch was written",
            short_hex(&e.key)
        )))
    }

    /// The schema version stored in the database (0: none yet).
    ///
    /// # Errors
    /// `unavailable`.
    pub fn stored_version(&self) -> Result<i32, StorageError> {
        self.run(|conn| async move {
            let exists: bool = conn
                .query_one("SELECT to_regclass('pulse_schema') IS NOT NULL", &[])
                .await
                .map_err(|e| query_error("schema version", &e))?
                .get(0);
            if !exists {
                return Ok(0);
            }
            let row = conn
                .query_opt("SELECT version FROM pulse_schema", &[])
                .await
                .map_err(|e| query_error("schema version", &e))?;
            Ok(row.map_or(0, |r| r.get(0)))
        })
    }

    /// Deletes every key of every space: for a database that holds only
    /// what a bench wrote (`bench --store` checks it is empty first).
    ///
    /// # Errors
    /// `unavailable`.
    pub fn delete_all(&self) -> Result<(), StorageError> {
        self.run(|conn| async move {
            conn.batch_execute("TRUNCATE pulse_kv")
                .await
                .map_err(|e| query_error("delete", &e))
        })
    }

    /// Whether no space holds any key: a `store copy` target must be.
    ///
    /// # Errors
    /// `unavailable`.
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        self.run(|conn| async move {
            let row = conn
                .query_opt("SELECT 1 FROM pulse_kv LIMIT 1", &[])
                .await
                .map_err(|e| query_error("read", &e))?;
            Ok(row.is_none())
        })
    }
}

/// A batch's last write to each key, as the batch's order says.
fn last_writes(ops: Vec<WriteOp>) -> Vec<cache::Known> {
    let mut last: HashMap<(SpaceId, Vec<u8>), Option<Vec<u8>>> = HashMap::new();
    for op in ops {
        match op {
            WriteOp::Put { space, key, value } => last.insert((space, key), Some(value)),
            WriteOp::Delete { space, key } => last.insert((space, key), None),
        };
    }
    last.into_iter().collect()
}

/// Runs `fut` on `handle` and parks this thread until it ends.
/// How long a starting server waits for a stopped server's session to
/// release the server lock before refusing with `store_in_use`.
const LOCK_WAIT_AT_START: std::time::Duration = std::time::Duration::from_secs(5);

fn run_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl Future<Output = Result<T, StorageError>> + Send + 'static,
) -> Result<T, StorageError> {
    wait(handle.spawn(fut)).map_err(|e| StorageError::new(format!("a storage task failed: {e}")))?
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        // The lock's connection closes with the runtime that drives it.
        drop(self.holder.lock().unwrap_or_else(|p| p.into_inner()).take());
        // Dropping a runtime blocks, which an async caller must not do.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The SQL of a page of a scan, and its parameters after the space.
fn scan_sql(range: &KeyRange, order: Order) -> (String, Vec<Vec<u8>>) {
    let mut sql = String::from("SELECT key, value FROM pulse_kv WHERE space = $1");
    let mut params = Vec::new();
    let mut bound = |b: &Bound<Vec<u8>>, incl: &str, excl: &str, sql: &mut String| match b {
        Bound::Included(k) => {
            params.push(k.clone());
            sql.push_str(&format!(" AND key {incl} ${}", params.len() + 1));
        }
        Bound::Excluded(k) => {
            params.push(k.clone());
            sql.push_str(&format!(" AND key {excl} ${}", params.len() + 1));
        }
        Bound::Unbounded => {}
    };
    bound(&range.start, ">=", ">", &mut sql);
    bound(&range.end, "<=", "<", &mut sql);
    sql.push_str(match order {
        Order::Ascending => " ORDER BY key ASC",
        Order::Descending => " ORDER BY key DESC",
    });
    sql.push_str(&format!(" LIMIT {PAGE}"));
    (sql, params)
}

/// Where a scan reads: any pooled connection, or one snapshot's.
#[derive(Clone)]
enum Source {
    Pool(Pool),
    Snapshot(Arc<SnapshotConn>),
}

/// Reads one page of a scan.
async fn read_page(
    source: Source,
    space: SpaceId,
    range: KeyRange,
    order: Order,
) -> Result<Vec<Entry>, StorageError> {
    let (sql, keys) = scan_sql(&range, order);
    let space = space_param(space);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&space];
    params.extend(keys.iter().map(|k| k as &(dyn ToSql + Sync)));
    let rows = match &source {
        Source::Pool(pool) => {
            let conn = pool.get().await.map_err(|e| pool_error(&e))?;
            let stmt = conn
                .prepare_cached(&sql)
                .await
                .map_err(|e| query_error("read", &e))?;
            conn.query(&stmt, &params).await
        }
        Source::Snapshot(s) => {
            let conn = s.conn()?;
            let stmt = conn
                .prepare_cached(&sql)
                .await
                .map_err(|e| query_error("read", &e))?;
            conn.query(&stmt, &params).await
        }
    }
    .map_err(|e| query_error("read", &e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn space_param(space: SpaceId) -> i16 {
    // Spaces are numbered from 0 by open_space, far below i16::MAX.
    i16::try_from(space.0).unwrap_or(i16::MAX)
}

/// A scan read a page at a time.
struct Scan {
    handle: tokio::runtime::Handle,
    source: Source,
    space: SpaceId,
    range: KeyRange,
    order: Order,
    buffer: VecDeque<Entry>,
    done: bool,
}

impl Iterator for Scan {
    type Item = Result<Entry, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty() && !self.done {
            if self.range.is_empty() {
                self.done = true;
                return None;
            }
            let page = run_on(
                &self.handle,
                read_page(
                    self.source.clone(),
                    self.space,
                    self.range.clone(),
                    self.order,
                ),
            );
            match page {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(page) => {
                    self.done = (page.len() as i64) < PAGE;
                    if let Some((last, _)) = page.last() {
                        // The next page starts after the last key read.
                        match self.order {
                            Order::Ascending => self.range.start = Bound::Excluded(last.clone()),
                            Order::Descending => self.range.end = Bound::Excluded(last.clone()),
                        }
                    }
                    self.buffer = page.into();
                }
            }
        }
        self.buffer.pop_front().map(Ok)
    }
}

async fn get_with(
    source: Source,
    space: SpaceId,
    key: Vec<u8>,
) -> Result<Option<Vec<u8>>, StorageError> {
    const SQL: &str = "SELECT value FROM pulse_kv WHERE space = $1 AND key = $2";
    let space = space_param(space);
    let row = match &source {
        Source::Pool(pool) => {
            let conn = pool.get().await.map_err(|e| pool_error(&e))?;
            let stmt = conn
                .prepare_cached(SQL)
                .await
                .map_err(|e| query_error("read", &e))?;
            conn.query_opt(&stmt, &[&space, &key]).await
        }
        Source::Snapshot(s) => {
            let conn = s.conn()?;
            let stmt = conn
                .prepare_cached(SQL)
                .await
                .map_err(|e| query_error("read", &e))?;
            conn.query_opt(&stmt, &[&space, &key]).await
        }
    }
    .map_err(|e| query_error("read", &e))?;
    Ok(row.map(|r| r.get(0)))
}

impl ReadView for PostgresBackend {
    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        // Only while this server holds the database: then nothing else
        // writes it. Shared, only values of write-once spaces are kept.
        if !self.exclusive.load(std::sync::atomic::Ordering::Acquire) {
            let final_value = self.is_write_once(space);
            if final_value {
                if let Ok(Some(v)) = self.cache.get(space, key) {
                    return Ok(Some(v));
                }
            }
            let v = run_on(
                &self.handle,
                get_with(Source::Pool(self.pool.clone()), space, key.to_vec()),
            )?;
            if let (true, Some(v)) = (final_value, &v) {
                self.cache.keep_final(space, key.to_vec(), v.clone());
            }
            return Ok(v);
        }
        // A key that batches queued for a group commit write is pinned
        // in the cache; any other is current in the database.
        let ticket = match self.cache.get(space, key) {
            Ok(v) => return Ok(v),
            Err(t) => t,
        };
        let v = run_on(
            &self.handle,
            get_with(Source::Pool(self.pool.clone()), space, key.to_vec()),
        )?;
        self.cache.keep(ticket, space, key.to_vec(), v.clone());
        Ok(v)
    }

    fn get_many(&self, keys: &[(SpaceId, Vec<u8>)]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let cached = self.exclusive.load(std::sync::atomic::Ordering::Acquire);
        let mut out: Vec<Option<Option<Vec<u8>>>> = vec![None; keys.len()];
        let mut tickets = Vec::new();
        let mut missing: Vec<usize> = Vec::new();
        for (i, (space, key)) in keys.iter().enumerate() {
            if cached {
                match self.cache.get(*space, key) {
                    Ok(v) => {
                        out[i] = Some(v);
                        continue;
                    }
                    Err(t) => tickets.push(t),
                }
            }
            missing.push(i);
        }
        if !missing.is_empty() {
            let spaces: Vec<i16> = missing.iter().map(|&i| space_param(keys[i].0)).collect();
            let wanted: Vec<Vec<u8>> = missing.iter().map(|&i| keys[i].1.clone()).collect();
            let found: Vec<(i64, Vec<u8>)> = self.run(move |conn| async move {
                let stmt = conn
                    .prepare_cached(
                        "SELECT k.i, p.value
                         FROM unnest($1::int2[], $2::bytea[]) WITH ORDINALITY AS k(space, key, i)
                         JOIN pulse_kv p ON p.space = k.space AND p.key = k.key",
                    )
                    .await
                    .map_err(|e| query_error("read", &e))?;
                let rows = conn
                    .query(&stmt, &[&spaces, &wanted])
                    .await
                    .map_err(|e| query_error("read", &e))?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })?;
            for &i in &missing {
                out[i] = Some(None);
            }
            for (ordinal, value) in found {
                // Ordinals count from 1 over the missing keys.
                if let Some(&i) = usize::try_from(ordinal - 1)
                    .ok()
                    .and_then(|o| missing.get(o))
                {
                    out[i] = Some(Some(value));
                }
            }
            // One ticket covers the read: taken before it, as for get.
            if let Some(ticket) = tickets.into_iter().next() {
                let kept: Vec<_> = missing
                    .iter()
                    .map(|&i| ((keys[i].0, keys[i].1.clone()), out[i].clone().flatten()))
                    .collect();
                self.cache.keep_all(ticket, kept);
            }
        }
        Ok(out.into_iter().map(Option::flatten).collect())
    }

    fn scan(&self, space: SpaceId, range: KeyRange, order: Order) -> Entries {
        self.group.drain();
        Box::new(Scan {
            handle: self.handle.clone(),
            source: Source::Pool(self.pool.clone()),
            space,
            range,
            order,
            buffer: VecDeque::new(),
            done: false,
        })
    }
}

impl Backend for PostgresBackend {
    fn open_space(&self, name: &str) -> Result<SpaceId, StorageError> {
        if let Some(id) = self
            .spaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(*id);
        }
        let owned = name.to_owned();
        let id: i16 = self.run(move |mut conn| async move {
            let tx = conn
                .transaction()
                .await
                .map_err(|e| query_error("opening a space", &e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::LOCK_KEY])
                .await
                .map_err(|e| query_error("opening a space", &e))?;
            let found = tx
                .query_opt("SELECT id FROM pulse_spaces WHERE name = $1", &[&owned])
                .await
                .map_err(|e| query_error("opening a space", &e))?;
            let id: i16 = match found {
                Some(row) => row.get(0),
                None => tx
                    .query_one(
                        "INSERT INTO pulse_spaces (id, name)
                         SELECT coalesce(max(id) + 1, 0), $1 FROM pulse_spaces
                         RETURNING id",
                        &[&owned],
                    )
                    .await
                    .map_err(|e| query_error("opening a space", &e))?
                    .get(0),
            };
            tx.commit()
                .await
                .map_err(|e| query_error("opening a space", &e))?;
            Ok(id)
        })?;
        let id = SpaceId(u16::try_from(id).map_err(|_| {
            StorageError::new(format!("pulse_spaces: space {name} has the id {id}"))
        })?);
        self.spaces
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), id);
        Ok(id)
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        self.group.drain();
        let conn = self.run(|conn| async move {
            // The snapshot is taken at the first statement after BEGIN.
            conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1")
                .await
                .map_err(|e| query_error("snapshot", &e))?;
            Ok(conn)
        })?;
        Ok(Snapshot::new(PgSnapshot {
            handle: self.handle.clone(),
            conn: Arc::new(SnapshotConn {
                conn: Some(conn),
                handle: self.handle.clone(),
            }),
        }))
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), StorageError> {
        // A database this process holds alone has nobody to tell.
        let exclusive = self.exclusive.load(std::sync::atomic::Ordering::Acquire);
        if batch.is_empty() && !exclusive {
            return Ok(());
        }
        self.hold_server_lock()?;
        // Even an empty batch joins the queue: its writer may answer from
        // values of batches queued before it (a repeated idempotency key),
        // which must be committed first.
        if exclusive && !batch.has_expectations() {
            let (ops, _, _) = batch.into_parts();
            return self
                .group
                .queue(
                    &self.handle,
                    &self.pool,
                    &self.cache,
                    last_writes(ops),
                    group_commit::Writer::Waits,
                )?
                .durable();
        }
        // A batch queued before this one commits before it.
        self.group.drain_all();
        let (ops, expected, notes) = batch.into_parts();
        let notes: Vec<String> = if exclusive {
            Vec::new()
        } else {
            notes
                .iter()
                .map(|(topic, text)| listener::encode(&self.origin, topic, text))
                .collect()
        };
        let writes = last_writes(ops);
        let group_commit::Columns {
            del_spaces,
            del_keys,
            put_spaces,
            put_keys,
            put_values,
        } = group_commit::Columns::of(writes.iter());
        // Shared with other nodes, only write-once values are read from
        // memory: keep no others.
        let cached: Vec<cache::Known> = writes
            .into_iter()
            .filter(|((space, _), _)| exclusive || self.is_write_once(*space))
            .collect();
        self.cache.begin();
        if !expected.is_empty() || !notes.is_empty() {
            let result = self.commit_conditional(
                &expected,
                notes,
                [del_spaces, put_spaces],
                [del_keys, put_keys],
                put_values,
            );
            self.cache.end(result.is_ok().then_some(cached));
            return result;
        }
        let result = self.run(move |conn| async move {
            let stmt = conn
                .prepare_cached(group_commit::COMMIT)
                .await
                .map_err(|e| query_error("commit", &e))?;
            conn.execute(
                &stmt,
                &[&del_spaces, &del_keys, &put_spaces, &put_keys, &put_values],
            )
            .await
            .map_err(|e| query_error("commit", &e))?;
            Ok(())
        });
        self.cache.end(result.is_ok().then_some(cached));
        result
    }

    /// Queues `batch` for the next group commit and returns at once when
    /// this server holds the database alone (see `group_commit.rs`): the
    /// first write after a failed commit is refused, so that a writer who
    /// has not heard of the failure reads its state again. A conditional
    /// batch, or one on a shared database, commits before this returns.
    fn write(&self, batch: WriteBatch) -> Result<super::Written, StorageError> {
        let exclusive = self.exclusive.load(std::sync::atomic::Ordering::Acquire);
        if !exclusive || batch.has_expectations() {
            self.commit(batch)?;
            return Ok(super::Written::durable_now());
        }
        // Even an empty batch is queued (see `commit`).
        self.hold_server_lock()?;
        let (ops, _, _) = batch.into_parts();
        self.group.queue(
            &self.handle,
            &self.pool,
            &self.cache,
            last_writes(ops),
            group_commit::Writer::GoesOn,
        )
    }

    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn declare_write_once(&self, space: SpaceId) {
        self.write_once
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(space);
    }

    fn is_shared(&self) -> bool {
        self.notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn notices(&self) -> Option<tokio::sync::broadcast::Receiver<Notice>> {
        self.notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(tokio::sync::broadcast::Sender::subscribe)
    }

    fn survives_failed_commit(&self) -> bool {
        true
    }
}

/// The connection a snapshot's transaction runs on. Dropped with the last
/// clone of the snapshot: the transaction is rolled back before the
/// connection goes back to the pool, or the connection is closed.
struct SnapshotConn {
    conn: Option<Object>,
    handle: tokio::runtime::Handle,
}

impl SnapshotConn {
    fn conn(&self) -> Result<&Object, StorageError> {
        self.conn
            .as_ref()
            .ok_or_else(|| StorageError::new("the snapshot is closed"))
    }
}

impl Drop for SnapshotConn {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.handle.spawn(async move {
                if conn.batch_execute("ROLLBACK").await.is_err() {
                    // Never hand a connection in a transaction to the pool.
                    drop(Object::take(conn));
                }
            });
        }
    }
}

/// A snapshot: reads on its own transaction's connection.
struct PgSnapshot {
    handle: tokio::runtime::Handle,
    conn: Arc<SnapshotConn>,
}

impl ReadView for PgSnapshot {
    fn get(&self, space: SpaceId, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        run_on(
            &self.handle,
            get_with(
                Source::Snapshot(Arc::clone(&self.conn)),
                space,
                key.to_vec(),
            ),
        )
    }

    fn scan(&self, space: SpaceId, range: KeyRange, order: Order) -> Entries {
        Box::new(Scan {
            handle: self.handle.clone(),
            source: Source::Snapshot(Arc::clone(&self.conn)),
            space,
            range,
            order,
            buffer: VecDeque::new(),
            done: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            shown_url("postgres://ops:s3cret@db:5432/pulse"),
            "postgres://ops:***@db:5432/pulse"
        );
        assert_eq!(
            shown_url("postgres://ops@db/pulse"),
            "postgres://ops@db/pulse"
        );
        assert_eq!(
            shown_url("postgres://ops:pw@db/pulse?sslmode=require&password=s3cret"),
            "postgres://ops:***@db/pulse?sslmode=require&password=***"
        );
    }

    #[test]
    fn scans_bind_their_bounds_in_order() {
        let (sql, params) = scan_sql(
            &KeyRange {
                start: Bound::Excluded(vec![1]),
                end: Bound::Included(vec![9]),
            },
            Order::Descending,
        );
        assert_eq!(
            sql,
            format!(
                "SELECT key, value FROM pulse_kv WHERE space = $1 AND key > $2 AND key <= $3 ORDER BY key DESC LIMIT {PAGE}"
            )
        );
        assert_eq!(params, vec![vec![1], vec![9]]);
        let (sql, params) = scan_sql(&KeyRange::all(), Order::Ascending);
        assert!(!sql.contains("AND"), "{sql}");
        assert!(params.is_empty());
    }
}
