//! The backend's error type and conversions between PostgreSQL column values and relay
//! types, shared by every table module, plus [`Tx`], the transaction every table module
//! runs its SQL in (with the connection's prepared-statement cache). Uses nothing else of
//! the backend.

use std::collections::HashMap;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Row, Statement, Transaction};

use crate::store::StoreError;

/// A failure inside a transaction: a store outcome (an answer to the caller, e.g.
/// `UnknownUser`), or a database error, which may be a conflict with another node's
/// transaction that a retry resolves.
#[derive(Debug)]
pub(super) enum PgError {
    /// A store outcome; the transaction is rolled back and this is returned.
    Store(StoreError),
    /// PostgreSQL failed (or refused the transaction: see [`PgError::is_conflict`]).
    Db(postgres::Error),
}

impl From<StoreError> for PgError {
    fn from(e: StoreError) -> Self {
        PgError::Store(e)
    }
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> Self {
        PgError::Db(e)
    }
}

impl PgError {
    /// Whether the transaction lost a race with a concurrent one (serialization failure,
    /// deadlock, or a unique key another transaction took meanwhile): run it again.
    pub(super) fn is_conflict(&self) -> bool {
        match self {
            PgError::Db(e) => e.code().is_some_and(|c| {
                *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::UNIQUE_VIOLATION
            }),
            PgError::Store(_) => false,
        }
    }

    /// The [`StoreError`] to hand the caller (a database error becomes `Backend`, logged).
    pub(super) fn into_store(self) -> StoreError {
        match self {
            PgError::Store(e) => e,
            PgError::Db(e) => {
                tracing::error!(error = %e, "relay store: PostgreSQL failed");
                StoreError::Backend(e.to_string())
            }
        }
    }
}

/// A result inside a transaction.
pub(super) type R<T> = Result<T, PgError>;

/// Parameters of a statement.
pub(super) type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

/// An open transaction and its connection's prepared statements (each SQL text is prepared
/// once per connection, then reused).
pub(super) struct Tx<'a> {
    tx: Transaction<'a>,
    stmts: &'a mut HashMap<&'static str, Statement>,
}

impl<'a> Tx<'a> {
    /// Wraps `tx`.
    pub(super) fn new(
        tx: Transaction<'a>,
        stmts: &'a mut HashMap<&'static str, Statement>,
    ) -> Self {
        Tx { tx, stmts }
    }

    /// Commits.
    pub(super) fn commit(self) -> R<()> {
        Ok(self.tx.commit()?)
    }

    fn prepared(&mut self, sql: &'static str) -> R<Statement> {
        if let Some(stmt) = self.stmts.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self.tx.prepare(sql)?;
        self.stmts.insert(sql, stmt.clone());
        Ok(stmt)
    }

    /// Every row of a query.
    pub(super) fn rows(&mut self, sql: &'static str, params: Params<'_>) -> R<Vec<Row>> {
        let stmt = self.prepared(sql)?;
        Ok(self.tx.query(&stmt, params)?)
    }

    /// The row of a query that returns at most one.
    pub(super) fn opt(&mut self, sql: &'static str, params: Params<'_>) -> R<Option<Row>> {
        let stmt = self.prepared(sql)?;
        Ok(self.tx.query_opt(&stmt, params)?)
    }

    /// The row of a query that returns exactly one.
    pub(super) fn one(&mut self, sql: &'static str, params: Params<'_>) -> R<Row> {
        let stmt = self.prepared(sql)?;
        Ok(self.tx.query_one(&stmt, params)?)
    }

    /// Runs a statement; the rows it changed.
    pub(super) fn exec(&mut self, sql: &'static str, params: Params<'_>) -> R<u64> {
        let stmt = self.prepared(sql)?;
        Ok(self.tx.execute(&stmt, params)?)
    }

    /// Runs SQL text without parameters (migrations).
    pub(super) fn batch(&mut self, sql: &str) -> R<()> {
        Ok(self.tx.batch_execute(sql)?)
    }
}

pub(super) use crate::store::columns::{
    clamp_i64, corrupt, device_id, device_key, group_id, id_list_from_blob, id_list_to_blob,
    to_i64, to_u64,
};
