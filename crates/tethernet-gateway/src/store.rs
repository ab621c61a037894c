//! Message storage: SQLite (embedded default, WAL) or PostgreSQL, through sqlx.
//!
//! Each room has a monotonic sequence number (`rooms.last_seq`), taken in the same
//! transaction that stores the message, so sequence numbers have no gaps and a retry with
//! the same client id is stored once. The schema is embedded and migrated at start.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use crate::protocol::ChatMessage;

/// Storage errors (the gateway answers `unavailable`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// From the database.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A configuration problem.
    #[error("{0}")]
    Config(String),
}

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

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`), with a pool of at most
    /// `max_connections`, and migrates the schema.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let pool = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await?,
            )
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
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
        };
        store.migrate().await?;
        Ok(store)
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
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // Taking the sequence number first takes the write lock first (SQLite: no
            // read-to-write upgrade that could fail under contention).
            let seq: i64 = sqlx::query_scalar(&sql.next_seq).bind(room).fetch_one(&mut *tx).await?;
            if let Some(client_id) = client_id {
                let existing = sqlx::query(&sql.find_client_id)
                    .bind(room)
                    .bind(sender)
                    .bind(client_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(row) = existing {
                    // Undo the sequence number taken above.
                    tx.rollback().await?;
                    let message = ChatMessage {
                        room: room.to_owned(),
                        seq: row.try_get(0)?,
                        sender: sender.to_owned(),
                        body: body.to_owned(),
                        time: row.try_get(1)?,
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
                .await?;
            tx.commit().await?;
            Ok((
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
        with_pool!(self, pool => {
            let rows = sqlx::query(&sql.after)
                .bind(room)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(|row| message(room, row)).collect()
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
        with_pool!(self, pool => {
            let rows = sqlx::query(&sql.before)
                .bind(room)
                .bind(before)
                .bind(i64::from(limit) + 1)
                .fetch_all(pool)
                .await?;
            let more = rows.len() > limit as usize;
            let mut messages = rows
                .iter()
                .take(limit as usize)
                .map(|row| message(room, row))
                .collect::<Result<Vec<_>, _>>()?;
            messages.reverse();
            Ok((messages, more))
        })
    }

    /// The newest sequence number of `room` (0 when it has none).
    pub async fn latest(&self, room: &str) -> Result<i64, StoreError> {
        let sql = &self.sql;
        with_pool!(self, pool => {
            let seq: Option<i64> = sqlx::query_scalar(&sql.latest).bind(room).fetch_optional(pool).await?;
            Ok(seq.unwrap_or(0))
        })
    }

    /// Deletes all but the newest `keep` messages of every room and those older than
    /// `max_age_ms` (0: no age limit); returns how many were deleted.
    pub async fn prune(&self, keep: i64, max_age_ms: i64, now_ms: i64) -> Result<u64, StoreError> {
        let sql = &self.sql;
        with_pool!(self, pool => {
            let mut deleted = sqlx::query(&sql.prune_count).bind(keep).execute(pool).await?.rows_affected();
            if max_age_ms > 0 {
                deleted += sqlx::query(&sql.prune_age)
                    .bind(now_ms - max_age_ms)
                    .execute(pool)
                    .await?
                    .rows_affected();
            }
            Ok(deleted)
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
        let store = Store::connect(&Store::sqlite_url(dir.path()).unwrap(), 4)
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
        let store = Store::connect(&Store::sqlite_url(dir.path()).unwrap(), 2)
            .await
            .unwrap();
        assert_eq!(store.latest("lobby").await.unwrap(), 3);
    }
}
