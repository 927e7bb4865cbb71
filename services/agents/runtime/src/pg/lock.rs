//! PostgreSQL's table-level lock modes: what the schema linter reports a
//! statement takes and what a step of a migration or an index build holds.

use serde::Serialize;

/// A PostgreSQL table-level lock mode, weakest first (the order of the
/// table in "Explicit Locking" of the PostgreSQL docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LockLevel {
    /// `ACCESS SHARE`: SELECT.
    AccessShare,
    /// `ROW SHARE`: SELECT FOR UPDATE, the referenced table of VALIDATE of a foreign key.
    RowShare,
    /// `ROW EXCLUSIVE`: INSERT, UPDATE, DELETE.
    RowExclusive,
    /// `SHARE UPDATE EXCLUSIVE`: CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT, VACUUM, SET (storage parameter).
    ShareUpdateExclusive,
    /// `SHARE`: CREATE INDEX; blocks writes.
    Share,
    /// `SHARE ROW EXCLUSIVE`: ADD FOREIGN KEY (both tables), CREATE TRIGGER; blocks writes.
    ShareRowExclusive,
    /// `EXCLUSIVE`: REFRESH MATERIALIZED VIEW CONCURRENTLY; blocks writes.
    Exclusive,
    /// `ACCESS EXCLUSIVE`: most ALTER TABLE forms, DROP, TRUNCATE; blocks reads and writes.
    AccessExclusive,
}

impl LockLevel {
    /// The mode's name as PostgreSQL spells it, e.g. `SHARE UPDATE EXCLUSIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockLevel::AccessShare => "ACCESS SHARE",
            LockLevel::RowShare => "ROW SHARE",
            LockLevel::RowExclusive => "ROW EXCLUSIVE",
            LockLevel::ShareUpdateExclusive => "SHARE UPDATE EXCLUSIVE",
            LockLevel::Share => "SHARE",
            LockLevel::ShareRowExclusive => "SHARE ROW EXCLUSIVE",
            LockLevel::Exclusive => "EXCLUSIVE",
            LockLevel::AccessExclusive => "ACCESS EXCLUSIVE",
        }
    }

    /// Whether the mode conflicts with ROW EXCLUSIVE, i.e. blocks INSERT, UPDATE and DELETE.
    pub fn blocks_writes(self) -> bool {
        self >= LockLevel::Share
    }

    /// Whether the mode conflicts with ACCESS SHARE, i.e. blocks SELECT too.
    pub fn blocks_reads(self) -> bool {
        self == LockLevel::AccessExclusive
    }

    /// What the mode blocks, for messages.
    pub fn blocks(self) -> &'static str {
        if self.blocks_reads() {
            "blocking reads and writes"
        } else if self.blocks_writes() {
            "blocking writes (INSERT, UPDATE, DELETE)"
        } else {
            "blocking other schema changes and VACUUM, not reads or writes"
        }
    }
}

impl std::fmt::Display for LockLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
