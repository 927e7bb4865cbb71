//! Leader election: the loops one server at a time runs (the relay, the
//! workflow driver, the scheduler) each hold a session advisory lock on a
//! connection of their own. When the leader dies its connection closes,
//! the lock is released, and the next server to poll takes over.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;

/// A held leader lock: leadership lasts as long as its connection.
pub struct Leadership {
    conn: PgConnection,
}

/// Waits until this server holds the session advisory lock `key`, trying
/// every `poll`; `waiting` runs after each try that found another leader.
/// `None`: `stop` turned true first.
pub async fn acquire(
    pool: &PgPool,
    key: i64,
    poll: Duration,
    stop: &mut watch::Receiver<bool>,
    mut waiting: impl FnMut(),
) -> Result<Option<Leadership>, sqlx::Error> {
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    loop {
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if acquired {
            return Ok(Some(Leadership { conn }));
        }
        waiting();
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stopping(stop) => return Ok(None),
        }
    }
}

impl Leadership {
    /// Fails when the lock's connection is gone (and with it the lock).
    pub async fn check(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&mut self.conn).await?;
        Ok(())
    }

    /// Gives the lock up now rather than when the connection times out.
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}

/// Runs terms of leadership until `stop` turns true: a `term` (given its
/// own receiver of `stop`) waits to lead and leads until it stops or
/// fails; then `after` is told how it ended and says how long to pause
/// before the next term.
pub async fn run_terms<E, Term: Future<Output = Result<(), E>>>(
    mut stop: watch::Receiver<bool>,
    mut term: impl FnMut(watch::Receiver<bool>) -> Term,
    mut after: impl FnMut(Result<(), E>) -> Duration,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let ended = term(stop.clone()).await;
        let pause = after(ended);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopping(&mut stop) => return,
        }
    }
}

/// Resolves when `stop` turns true (or its sender is gone).
pub async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
