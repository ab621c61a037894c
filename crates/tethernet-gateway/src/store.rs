//! Message storage: SQLite (embedded default, WAL) or PostgreSQL, through sqlx.
//!
//! Each room has a monotonic sequence number (`rooms.last_seq`), taken in the same
//! transaction that stores the message, so sequence numbers have no gaps and a retry with
//! the same client id is stored once. The schema is embedded and migrated at start.
//!
//! Every call is bounded in time ([`StoreOptions::timeout`]): waiting for a pooled
//! connection and the queries together. A connection whose call timed out or whose socket
//! failed is detached from the pool and dropped at once (no I/O on it), so it can never
//! hold a pool permit (sqlx 0.8 pings a returned connection with no time limit:
//! transact-rs/sqlx#4349); a healthy one is pinged within the same bound before sqlx takes
//! it back. PostgreSQL sessions also get server-side limits: `statement_timeout` (3/4 of
//! the bound, so the server cancels a slow statement first and the connection stays
//! usable), `idle_in_transaction_session_timeout` (a stalled client's locks go) and TCP
//! keepalives (sqlx 0.8 cannot set them on its own socket). They travel as the startup
//! parameter `options`: behind PgBouncer, list `options` in its `ignore_startup_parameters`
//! and set them on the role instead (`ALTER ROLE ... SET statement_timeout = ...`).

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Row};

use crate::protocol::ChatMessage;

/// Storage errors (the gateway answers `unavailable` or `storage_full`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// From the database.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The call did not finish within the bound (no connection free, or no answer).
    #[error("the database did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Out of space: SQLite's `SQLITE_FULL` (disk, or `--sqlite-max-pages`), PostgreSQL's
    /// `disk_full`. Nothing was written.
    #[error("the database is out of space: {0}")]
    Full(sqlx::Error),
    /// A configuration problem.
    #[error("{0}")]
    Config(String),
}

impl StoreError {
    fn from_sqlx(error: sqlx::Error) -> StoreError {
        let full = match &error {
            // SQLITE_FULL is 13; PostgreSQL's disk_full is SQLSTATE 53100.
            sqlx::Error::Database(e) => matches!(e.code().as_deref(), Some("13" | "53100")),
            _ => false,
        };
        if full {
            StoreError::Full(error)
        } else {
            StoreError::Database(error)
        }
    }

    /// Whether the connection that produced this error must not be reused (its socket
    /// failed or the call was abandoned midway).
    fn breaks_connection(&self) -> bool {
        match self {
            // SQLite may have rolled the whole transaction back by itself after
            // SQLITE_FULL, leaving sqlx's idea of the transaction depth wrong: a fresh
            // connection is cheap.
            StoreError::Timeout(_) | StoreError::Full(_) => true,
            StoreError::Database(e) => matches!(
                e,
                sqlx::Error::Io(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            ),
            _ => false,
        }
    }
}

/// How the store connects and how long a call may take.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most pooled connections.
    pub max_connections: u32,
    /// Bound of every call: waiting for a connection plus the queries.
    pub timeout: Duration,
    /// SQLite only: cap the database at this many pages (`PRAGMA max_page_count`, a
    /// quota; writes past it fail with [`StoreError::Full`]). Can be changed while
    /// running with [`Store::set_sqlite_max_pages`].
    pub sqlite_max_pages: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            timeout: Duration::from_secs(5),
            sqlite_max_pages: None,
        }
    }
}

/// Bound of one history pruning pass (it runs every minute).
const PRUNE_TIMEOUT: Duration = Duration::from_secs(60);

/// The embedded schema, applied in order; the version is recorded in `gateway_schema`.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, last_seq BIGINT NOT NULL);
     CREATE TABLE IF NOT EXISTS messages (
         room TEXT NOT NULL, seq BIGINT NOT NULL, sender TEXT NOT NULL, body TEXT NOT NULL,
         client_id TEXT, time_ms BIGINT NOT NULL, PRIMARY KEY (room, seq));
     CREATE UNIQUE INDEX IF NOT EXISTS messages_client_id ON messages (room, sender, client_id)
         WHERE client_id IS NOT NULL;
     CREATE INDEX IF NOT EXISTS messages_time ON messages (time_ms)",
)];

/// The queries, written once with `?` placeholders (PostgreSQL gets `$1, $2, ...`).
struct Sql {
    next_seq: String,
    find_client_id: String,
    insert: String,
    after: String,
    before: String,
    latest: String,
    prune_count: String,
    prune_age: String,
    insert_version: String,
}

impl Sql {
    fn new(postgres: bool) -> Sql {
        let p = |sql: &str| {
            if postgres {
                numbered(sql)
            } else {
                sql.to_owned()
            }
        };
        Sql {
            next_seq: p("INSERT INTO rooms (room, last_seq) VALUES (?, 1)
                 ON CONFLICT (room) DO UPDATE SET last_seq = rooms.last_seq + 1 RETURNING last_seq"),
            find_client_id: p("SELECT seq, time_ms FROM messages WHERE room = ? AND sender = ? AND client_id = ?"),
            insert: p("INSERT INTO messages (room, seq, sender, body, client_id, time_ms) VALUES (?, ?, ?, ?, ?, ?)"),
            after: p("SELECT seq, sender, body, time_ms FROM messages WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?"),
            before: p("SELECT seq, sender, body, time_ms FROM messages WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?"),
            latest: p("SELECT last_seq FROM rooms WHERE room = ?"),
            prune_count: p("DELETE FROM messages WHERE seq <= (SELECT last_seq FROM rooms WHERE rooms.room = messages.room) - ?"),
            prune_age: p("DELETE FROM messages WHERE time_ms < ?"),
            insert_version: p("INSERT INTO gateway_schema (version) VALUES (?)"),
        }
    }
}

/// `?` placeholders to `$1, $2, ...`.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The message store.
pub struct Store {
    pool: Pool,
    sql: Sql,
    timeout: Duration,
    /// The SQLite page cap applied to each connection before use (0: none).
    max_pages: Arc<AtomicU64>,
}

/// Runs `$body` with `$p` bound to the pool of either backend (the body is compiled once
/// per backend).
macro_rules! with_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` (a `Result<_, StoreError>` expression using `$conn`, a `&mut` connection
/// of either backend) within the store's time bound. A connection whose call timed out or
/// failed at the socket is detached and dropped without any I/O: its pool permit is
/// released at once and the pool opens a fresh one when needed.
macro_rules! with_connection {
    ($store:expr, $timeout:expr, $conn:ident => $body:expr) => {
        with_pool!($store, pool => {
            let timeout: Duration = $timeout;
            let deadline = tokio::time::Instant::now() + timeout;
            let mut pooled = match tokio::time::timeout_at(deadline, pool.acquire()).await {
                Ok(Ok(pooled)) => pooled,
                Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => return Err(StoreError::Timeout(timeout)),
                Ok(Err(error)) => return Err(StoreError::from_sqlx(error)),
            };
            let outcome = {
                let $conn = &mut *pooled;
                tokio::time::timeout_at(deadline, async { $body }).await
            };
            let outcome = outcome.unwrap_or(Err(StoreError::Timeout(timeout)));
            if outcome.as_ref().is_err_and(StoreError::breaks_connection) {
                drop(pooled.detach());
            }
            outcome
        })
    };
}

/// `?` for sqlx results inside [`with_connection!`] bodies.
trait OrStore<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> OrStore<T> for Result<T, sqlx::Error> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(StoreError::from_sqlx)
    }
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`) and migrates the schema.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        let timeout = options.timeout.max(Duration::from_millis(100));
        let max_pages = Arc::new(AtomicU64::new(options.sqlite_max_pages.unwrap_or(0)));
        let pool = if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(timeout);
            let mut pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(timeout);
            if options.sqlite_max_pages.is_some() {
                // A per-connection setting: applied to new connections and, so that a
                // change while running reaches every one, before each use.
                let (on_connect, on_acquire) = (max_pages.clone(), max_pages.clone());
                pool = pool
                    .after_connect(move |conn, _| {
                        let pages = on_connect.load(Ordering::Relaxed);
                        Box::pin(async move { apply_max_pages(conn, pages).await })
                    })
                    .before_acquire(move |conn, _| {
                        let pages = on_acquire.load(Ordering::Relaxed);
                        Box::pin(async move { apply_max_pages(conn, pages).await.map(|()| true) })
                    });
            }
            Pool::Sqlite(pool.connect_with(connect).await?)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let statement_ms = (timeout.as_millis() * 3 / 4).max(50);
            let connect = PgConnectOptions::from_str(url)?.options([
                ("statement_timeout", statement_ms.to_string()),
                (
                    "idle_in_transaction_session_timeout",
                    timeout.as_millis().to_string(),
                ),
                ("tcp_keepalives_idle", "30".to_owned()),
                ("tcp_keepalives_interval", "10".to_owned()),
                ("tcp_keepalives_count", "3".to_owned()),
            ]);
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(timeout)
                    // sqlx pings a returned connection with no time limit; ping it here
                    // first, within the bound: one that does not answer is closed hard.
                    .after_release(move |conn, _| {
                        Box::pin(async move {
                            match tokio::time::timeout(timeout, conn.ping()).await {
                                Ok(Ok(())) => Ok(true),
                                Ok(Err(error)) => Err(error),
                                Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "no answer to a ping on release",
                                ))),
                            }
                        })
                    })
                    .connect_with(connect)
                    .await?,
            )
        } else {
            return Err(StoreError::Config(format!(
                "unsupported database URL `{}`: use sqlite://PATH or postgres://...",
                redact(url)
            )));
        };
        let postgres = matches!(pool, Pool::Postgres(_));
        let store = Store {
            pool,
            sql: Sql::new(postgres),
            timeout,
            max_pages,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// SQLite: changes the page cap (see [`StoreOptions::sqlite_max_pages`]) for every
    /// connection from its next use on; 0 removes it. Only when the store was opened with
    /// a cap.
    pub fn set_sqlite_max_pages(&self, pages: u64) {
        self.max_pages.store(pages, Ordering::Relaxed);
    }

    /// SQLite: `PRAGMA integrity_check` (`"ok"` when the database is sound). PostgreSQL
    /// has no such check: always `"ok"`.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        match &self.pool {
            Pool::Sqlite(pool) => {
                let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
                    .fetch_all(pool)
                    .await?;
                Ok(rows.join("; "))
            }
            Pool::Postgres(_) => Ok("ok".to_owned()),
        }
    }

    /// The SQLite URL for a data directory (created if missing).
    pub fn sqlite_url(data_dir: &Path) -> Result<String, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Config(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        Ok(format!(
            "sqlite://{}",
            data_dir.join("gateway.db").display()
        ))
    }

    /// Applies the embedded migrations in one transaction. On PostgreSQL an advisory
    /// lock serialises nodes starting at once against a fresh database (concurrent
    /// `CREATE TABLE IF NOT EXISTS` is not safe there); SQLite's write lock does the same.
    async fn migrate(&self) -> Result<(), StoreError> {
        let postgres = matches!(self.pool, Pool::Postgres(_));
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if postgres {
                sqlx::query("SELECT pg_advisory_xact_lock(727100501)").execute(&mut *tx).await?;
            }
            sqlx::query("CREATE TABLE IF NOT EXISTS gateway_schema (version BIGINT NOT NULL)")
                .execute(&mut *tx)
                .await?;
            let current: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM gateway_schema")
                .fetch_one(&mut *tx)
                .await?;
            for (version, sql) in MIGRATIONS {
                if current.is_some_and(|c| c >= *version) {
                    continue;
                }
                for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::query(statement).execute(&mut *tx).await?;
                }
                sqlx::query(&self.sql.insert_version).bind(*version).execute(&mut *tx).await?;
                tracing::info!(version, "database schema migrated");
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Stores a message and returns it with its sequence number; with a `client_id`
    /// already stored for this room and sender, returns the stored one and `true`.
    pub async fn append(
        &self,
        room: &str,
        sender: &str,
        body: &str,
        client_id: Option<&str>,
        time_ms: i64,
    ) -> Result<(ChatMessage, bool), StoreError> {
        let sql = &self.sql;
        with_connection!(self, self.timeout, conn => {
            let mut tx = conn.begin().await.db()?;
            // Taking the sequence number first takes the write lock first (SQLite: no
            // read-to-write upgrade that could fail under contention).
            let seq: i64 = sqlx::query_scalar(&sql.next_seq).bind(room).fetch_one(&mut *tx).await.db()?;
            if let Some(client_id) = client_id {
                let existing = sqlx::query(&sql.find_client_id)
                    .bind(room)
                    .bind(sender)
                    .bind(client_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .db()?;
                if let Some(row) = existing {
                    // Undo the sequence number taken above.
                    tx.rollback().await.db()?;
                    let message = ChatMessage {
                        room: room.to_owned(),
                        seq: row.try_get(0).db()?,
                        sender: sender.to_owned(),
                        body: body.to_owned(),
                        time: row.try_get(1).db()?,
                    };
                    return Ok((message, true));
                }
            }
            sqlx::query(&sql.insert)
                .bind(room)
                .bind(seq)
                .bind(sender)
                .bind(body)
                .bind(client_id)
                .bind(time_ms)
                .execute(&mut *tx)
                .await
                .db()?;
            tx.commit().await.db()?;
            Ok::<_, StoreError>((
                ChatMessage {
                    room: room.to_owned(),
                    seq,
                    sender: sender.to_owned(),
                    body: body.to_owned(),
                    time: time_ms,
                },
                false,
            ))
        })
    }

    /// Messages with a sequence number above `after`, oldest first, at most `limit`.
    pub async fn after(
        &self,
        room: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let sql = &self.sql;
        with_connection!(self, self.timeout, conn => {
            let rows = sqlx::query(&sql.after)
                .bind(room)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await
                .db()?;
            rows.iter().map(|row| message(room, row)).collect::<Result<Vec<_>, _>>()
        })
    }

    /// Up to `limit` messages below `before` (default: the newest), oldest first, and
    /// whether older ones exist.
    pub async fn before(
        &self,
        room: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<(Vec<ChatMessage>, bool), StoreError> {
        let sql = &self.sql;
        let before = before.unwrap_or(i64::MAX);
        with_connection!(self, self.timeout, conn => {
            let rows = sqlx::query(&sql.before)
                .bind(room)
                .bind(before)
                .bind(i64::from(limit) + 1)
                .fetch_all(&mut *conn)
                .await
                .db()?;
            let more = rows.len() > limit as usize;
            let mut messages = rows
                .iter()
                .take(limit as usize)
                .map(|row| message(room, row))
                .collect::<Result<Vec<_>, _>>()?;
            messages.reverse();
            Ok::<_, StoreError>((messages, more))
        })
    }

    /// The newest sequence number of `room` (0 when it has none).
    pub async fn latest(&self, room: &str) -> Result<i64, StoreError> {
        let sql = &self.sql;
        with_connection!(self, self.timeout, conn => {
            let seq: Option<i64> = sqlx::query_scalar(&sql.latest).bind(room).fetch_optional(&mut *conn).await.db()?;
            Ok::<_, StoreError>(seq.unwrap_or(0))
        })
    }

    /// Deletes all but the newest `keep` messages of every room and those older than
    /// `max_age_ms` (0: no age limit); returns how many were deleted.
    pub async fn prune(&self, keep: i64, max_age_ms: i64, now_ms: i64) -> Result<u64, StoreError> {
        let sql = &self.sql;
        // A bigger bound than a client's call: after an outage there may be a lot to delete.
        let postgres = matches!(self.pool, Pool::Postgres(_));
        with_connection!(self, PRUNE_TIMEOUT, conn => {
            let mut tx = conn.begin().await.db()?;
            if postgres {
                let ms = PRUNE_TIMEOUT.as_millis() * 3 / 4;
                sqlx::query(&format!("SET LOCAL statement_timeout = {ms}")).execute(&mut *tx).await.db()?;
            }
            let mut deleted = sqlx::query(&sql.prune_count).bind(keep).execute(&mut *tx).await.db()?.rows_affected();
            if max_age_ms > 0 {
                deleted += sqlx::query(&sql.prune_age)
                    .bind(now_ms - max_age_ms)
                    .execute(&mut *tx)
                    .await
                    .db()?
                    .rows_affected();
            }
            tx.commit().await.db()?;
            Ok::<_, StoreError>(deleted)
        })
    }

    /// Connections in the pool, and how many of them are idle.
    pub fn pool_stats(&self) -> (u32, usize) {
        with_pool!(self, pool => (pool.size(), pool.num_idle()))
    }

    /// Which backend: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }
}

/// Sets SQLite's page cap on one connection (0: back to SQLite's own maximum).
async fn apply_max_pages(conn: &mut sqlx::SqliteConnection, pages: u64) -> Result<(), sqlx::Error> {
    let pages = if pages == 0 { 4_294_967_294 } else { pages };
    sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
        .execute(conn)
        .await
        .map(|_| ())
}

fn message<R: Row>(room: &str, row: &R) -> Result<ChatMessage, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ChatMessage {
        room: room.to_owned(),
        seq: row.try_get(0)?,
        sender: row.try_get(1)?,
        body: row.try_get(2)?,
        time: row.try_get(3)?,
    })
}

/// A database URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_redaction() {
        assert_eq!(numbered("a = ? AND b = ?"), "a = $1 AND b = $2");
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[tokio::test]
    async fn sqlite_sequences_history_and_idempotency() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            max_connections: 4,
            ..StoreOptions::default()
        };
        let store = Store::connect(&Store::sqlite_url(dir.path()).unwrap(), &options)
            .await
            .unwrap();
        let (m1, dup) = store
            .append("lobby", "ada", "one", Some("c1"), 10)
            .await
            .unwrap();
        assert_eq!((m1.seq, dup), (1, false));
        let (m2, _) = store.append("lobby", "bob", "two", None, 11).await.unwrap();
        assert_eq!(m2.seq, 2);
        let (again, dup) = store
            .append("lobby", "ada", "one", Some("c1"), 12)
            .await
            .unwrap();
        assert_eq!((again.seq, dup, again.time), (1, true, 10));
        let (m3, _) = store
            .append("lobby", "ada", "three", Some("c2"), 13)
            .await
            .unwrap();
        assert_eq!(m3.seq, 3, "a duplicate does not use up a sequence number");
        assert_eq!(
            store
                .append("dev", "ada", "x", None, 1)
                .await
                .unwrap()
                .0
                .seq,
            1
        );
        assert_eq!(store.latest("lobby").await.unwrap(), 3);
        assert_eq!(store.latest("nowhere").await.unwrap(), 0);
        let after = store.after("lobby", 1, 10).await.unwrap();
        assert_eq!(after.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3]);
        let (page, more) = store.before("lobby", None, 2).await.unwrap();
        assert_eq!(
            (page.iter().map(|m| m.seq).collect::<Vec<_>>(), more),
            (vec![2, 3], true)
        );
        let (page, more) = store.before("lobby", Some(2), 2).await.unwrap();
        assert_eq!(
            (page.iter().map(|m| m.seq).collect::<Vec<_>>(), more),
            (vec![1], false)
        );
        assert_eq!(store.prune(2, 0, 0).await.unwrap(), 1);
        assert_eq!(store.after("lobby", 0, 10).await.unwrap()[0].seq, 2);
        // Reopening migrates nothing twice.
        store.close().await;
        let store = Store::connect(&Store::sqlite_url(dir.path()).unwrap(), &options)
            .await
            .unwrap();
        assert_eq!(store.latest("lobby").await.unwrap(), 3);
    }
}
