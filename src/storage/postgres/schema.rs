//! The PostgreSQL schema and its versioned migrations, embedded in the
//! binary. Applied in order, each in its own transaction, under an
//! advisory lock so that nodes starting together migrate once.

/// Migrations by version: `MIGRATIONS[i]` takes the schema from version
/// `i` to `i + 1`. Never edit one that has shipped: add the next.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: spaces and their keys and values (spec/storage.md).
    "CREATE TABLE pulse_spaces (
         id smallint PRIMARY KEY CHECK (id >= 0),
         name text NOT NULL UNIQUE
     );
     CREATE TABLE pulse_kv (
         space smallint NOT NULL REFERENCES pulse_spaces (id),
         key bytea NOT NULL,
         value bytea NOT NULL,
         PRIMARY KEY (space, key)
     );",
    // 2: no foreign key from pulse_kv to pulse_spaces. Its check share-
    // locked the space's row once per written row, and concurrent commits
    // sharing those locks cost milliseconds each; spaces are only ever
    // added, under the migration lock, so the key had nothing to guard.
    "ALTER TABLE pulse_kv DROP CONSTRAINT IF EXISTS pulse_kv_space_fkey;",
    // 3: no table changes. The job queues moved to memory (spec/pulse.md,
    // "Queues") and their spaces are emptied at open; an earlier binary
    // would read those empty spaces and see no live job, so the version
    // rises for it to refuse this database (schema_too_new).
    "SELECT 1;",
    // 4: conditional commits (WriteBatch::expect) and notices to the other
    // nodes sharing the database, in one statement: the expected keys are
    // locked in a fixed order (advisory locks in the two-key space, so no
    // clash with the single-key locks above; a hash clash only makes two
    // commits wait for each other), compared after the locks are held,
    // and only if every one holds are the writes made and the notices
    // sent. Answers 0, or the (1-based) number of the first expectation
    // that did not hold, having written nothing.
    "CREATE FUNCTION pulse_commit(
         exp_spaces int2[], exp_keys bytea[], exp_values bytea[],
         del_spaces int2[], del_keys bytea[],
         put_spaces int2[], put_keys bytea[], put_values bytea[],
         notes text[]
     ) RETURNS integer LANGUAGE plpgsql AS $$
     DECLARE
         h integer;
         i integer;
         held bytea;
     BEGIN
         FOR h IN SELECT DISTINCT hashtext(e.s::text || ':' || encode(e.k, 'hex')) AS x
                  FROM unnest(exp_spaces, exp_keys) AS e(s, k) ORDER BY x LOOP
             PERFORM pg_advisory_xact_lock(1886743667, h);
         END LOOP;
         FOR i IN 1 .. coalesce(array_length(exp_keys, 1), 0) LOOP
             held := NULL;
             SELECT value INTO held FROM pulse_kv
              WHERE space = exp_spaces[i] AND key = exp_keys[i];
             IF held IS DISTINCT FROM exp_values[i] THEN
                 RETURN i;
             END IF;
         END LOOP;
         DELETE FROM pulse_kv WHERE (space, key) IN
             (SELECT * FROM unnest(del_spaces, del_keys));
         INSERT INTO pulse_kv (space, key, value)
             SELECT * FROM unnest(put_spaces, put_keys, put_values)
             ON CONFLICT (space, key) DO UPDATE SET value = excluded.value;
         PERFORM pg_notify('pulse_ledger', n) FROM unnest(notes) AS n;
         RETURN 0;
     END
     $$;",
    // 5: no table changes. The job store's state index keeps every live
    // job under one byte (spec/pulse.md, "Storage"), moved at open; an
    // earlier binary would list held, running and retrying jobs as none
    // and leave stale index entries behind, so the version rises for it to
    // refuse this database (schema_too_new).
    "SELECT 1;",
    // 6: no table changes. A finished job's state entry carries the time
    // it finished and pruning reads those (spec/pulse.md, "Retention");
    // the finished index is emptied at open. An earlier binary would
    // prune from that empty index and keep every job finished since, so
    // the version rises for it to refuse this database (schema_too_new).
    "SELECT 1;",
    // 7: no table changes. Finished jobs' records moved to their own
    // space, keyed by state and ID, and the state index is emptied at
    // open (spec/pulse.md, "Storage"); an earlier binary would find no
    // finished job and list live jobs from the emptied index, so the
    // version rises for it to refuse this database (schema_too_new).
    "SELECT 1;",
];

/// The schema version this binary writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Key of the advisory lock held while migrating or adding a space.
pub(super) const LOCK_KEY: i64 = 0x7075_6c73_655f_6c67; // "pulse_lg"

/// Creates the version table if missing (it records the version in one
/// row).
pub(super) const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS pulse_schema (
         version integer NOT NULL
     )";

/// Key of the session advisory lock a server holds for its whole life.
pub(super) const SERVER_LOCK_KEY: i64 = 0x7075_6c73_655f_7376; // "pulse_sv"
