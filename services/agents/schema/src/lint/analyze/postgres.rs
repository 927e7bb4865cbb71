//! Statements analyzed on PostgreSQL's parse tree: those that PostgreSQL
//! accepts and sqlparser cannot parse (`REINDEX`, `CLUSTER`, `DO`, ...),
//! and DML too long to give to sqlparser.
//!
//! REINDEX takes SHARE on the table (ACCESS EXCLUSIVE on each index it
//! rebuilds), or SHARE UPDATE EXCLUSIVE with CONCURRENTLY; CLUSTER rewrites
//! the table under ACCESS EXCLUSIVE (PostgreSQL 15 docs of both).

use pg_query::NodeEnum;
use pg_query::protobuf::{ClusterStmt, RangeVar, ReindexObjectType, ReindexStmt};

use super::super::advice::{ident, script};
use super::super::parse::ParsedStatement;
use super::super::rules::{
    BAN_CONCURRENT_INDEX_CREATION_IN_TRANSACTION, INDEX_NOT_FOUND, REQUIRE_CONCURRENT_INDEX_CREATION,
    TABLE_REWRITE, UNANALYZED_STATEMENT,
};
use super::{Ctx, Linter, Presence};
use crate::lint::{Finding, LockLevel};

impl Linter<'_> {
    /// A statement that only PostgreSQL's parser reads.
    pub(super) fn postgres_statement(&mut self, ctx: &mut Ctx, parsed: &ParsedStatement) {
        match &parsed.node {
            NodeEnum::ReindexStmt(reindex) => self.reindex(ctx, reindex, parsed.concurrently()),
            NodeEnum::ClusterStmt(cluster) => self.cluster(ctx, cluster),
            // DML too long for sqlparser (see parse.rs).
            NodeEnum::InsertStmt(insert) => {
                if let Some(relation) = &insert.relation {
                    let key = self.range_var_key(relation);
                    self.dml_on(ctx, key, false, "INSERT");
                }
            }
            NodeEnum::UpdateStmt(update) => {
                if let Some(relation) = &update.relation {
                    let key = self.range_var_key(relation);
                    self.dml_on(ctx, key, update.where_clause.is_none(), "UPDATE");
                }
            }
            NodeEnum::DeleteStmt(delete) => {
                if let Some(relation) = &delete.relation {
                    let key = self.range_var_key(relation);
                    self.dml_on(ctx, key, delete.where_clause.is_none(), "DELETE");
                }
            }
            NodeEnum::DoStmt(_) => ctx.findings.push(Finding::warning(
                UNANALYZED_STATEMENT,
                "the linter does not see what the code of a DO block does: the locks and effects of the statements it runs are not modelled".to_owned(),
                "write the statements as plain SQL in the migration, or review their locking by hand (PostgreSQL docs, Explicit Locking)".to_owned(),
            )),
            // Statements that take no lock on a table's rows (or only on
            // objects the facts do not describe), as in the sqlparser walk.
            NodeEnum::TransactionStmt(_)
            | NodeEnum::VariableShowStmt(_)
            | NodeEnum::DiscardStmt(_)
            | NodeEnum::ViewStmt(_)
            | NodeEnum::CreateFunctionStmt(_)
            | NodeEnum::AlterFunctionStmt(_)
            | NodeEnum::CreateSchemaStmt(_)
            | NodeEnum::CreateExtensionStmt(_)
            | NodeEnum::CreateSeqStmt(_)
            | NodeEnum::DefineStmt(_)
            | NodeEnum::CompositeTypeStmt(_)
            | NodeEnum::CreateEnumStmt(_)
            | NodeEnum::CreateRangeStmt(_)
            | NodeEnum::AlterEnumStmt(_)
            | NodeEnum::CreateDomainStmt(_)
            | NodeEnum::CreateRoleStmt(_)
            | NodeEnum::AlterRoleStmt(_)
            | NodeEnum::CreatePolicyStmt(_)
            | NodeEnum::CommentStmt(_)
            | NodeEnum::GrantStmt(_)
            | NodeEnum::GrantRoleStmt(_)
            | NodeEnum::AlterDefaultPrivilegesStmt(_) => {}
            _ => ctx.findings.push(Finding::warning(
                UNANALYZED_STATEMENT,
                format!(
                    "the linter does not model the locks and effects of this {} statement",
                    leading_words(&parsed.text)
                ),
                "review its locking by hand (PostgreSQL docs, Explicit Locking)".to_owned(),
            )),
        }
    }

    /// REINDEX TABLE or INDEX: rebuilds the indexes from a read of the
    /// table, under SHARE (writes blocked) or, CONCURRENTLY, SHARE UPDATE
    /// EXCLUSIVE.
    fn reindex(&mut self, ctx: &mut Ctx, reindex: &ReindexStmt, concurrently: bool) {
        let kind = ReindexObjectType::try_from(reindex.kind).unwrap_or(ReindexObjectType::Undefined);
        let (Some(relation), ReindexObjectType::ReindexObjectTable | ReindexObjectType::ReindexObjectIndex) =
            (&reindex.relation, kind)
        else {
            ctx.findings.push(Finding::warning(
                UNANALYZED_STATEMENT,
                "REINDEX of a whole schema, database or the system catalogs rebuilds every index there, each table under SHARE in turn; the linter does not model it".to_owned(),
                "REINDEX each table CONCURRENTLY instead, outside a transaction block".to_owned(),
            ));
            return;
        };
        let (key, what) = if kind == ReindexObjectType::ReindexObjectTable {
            let key = self.range_var_key(relation);
            if self.presence(&key) == Presence::Missing {
                ctx.findings.push(Self::table_not_found(&key));
            }
            (key, "TABLE")
        } else {
            let index_key = self.range_var_key(relation);
            let Some(index) = self.index(&index_key) else {
                ctx.findings.push(Finding::blocking(
                    INDEX_NOT_FOUND,
                    format!("index {index_key} does not exist; the statement fails"),
                    "fix the index name".to_owned(),
                ));
                return;
            };
            (index.table, "INDEX")
        };
        let level = if concurrently {
            LockLevel::ShareUpdateExclusive
        } else {
            LockLevel::Share
        };
        self.lock(ctx, &key, level);
        self.scan(ctx, &key);
        let safe = format!("REINDEX {what} CONCURRENTLY {}", written(relation));
        if concurrently && self.transaction.is_some() {
            ctx.findings.push(Finding::blocking(
                BAN_CONCURRENT_INDEX_CREATION_IN_TRANSACTION,
                "REINDEX CONCURRENTLY cannot run inside a transaction block; PostgreSQL refuses it"
                    .to_owned(),
                script(&[safe], "after the COMMIT of the transaction block, on its own"),
            ));
        } else if !concurrently && self.presence(&key).hazard() {
            let table = self.describe(&key);
            ctx.findings.push(Finding::blocking(
                REQUIRE_CONCURRENT_INDEX_CREATION,
                format!(
                    "REINDEX without CONCURRENTLY holds SHARE on {table} while it rebuilds, blocking writes (INSERT, UPDATE, DELETE), and ACCESS EXCLUSIVE on each index, blocking the reads that use it"
                ),
                script(
                    &[safe],
                    "outside a transaction block; a rebuild that fails leaves an INVALID index (its name ends in _ccnew): DROP INDEX CONCURRENTLY it before retrying",
                ),
            ));
        }
    }

    /// CLUSTER: rewrites the table in index order under ACCESS EXCLUSIVE.
    fn cluster(&mut self, ctx: &mut Ctx, cluster: &ClusterStmt) {
        let Some(relation) = &cluster.relation else {
            ctx.findings.push(Finding::warning(
                UNANALYZED_STATEMENT,
                "CLUSTER without a table rewrites every table clustered before, each under ACCESS EXCLUSIVE; the linter does not model it".to_owned(),
                "name the table, or reorder tables online with pg_repack".to_owned(),
            ));
            return;
        };
        let key = self.range_var_key(relation);
        let presence = self.presence(&key);
        if presence == Presence::Missing {
            ctx.findings.push(Self::table_not_found(&key));
        }
        self.lock(ctx, &key, LockLevel::AccessExclusive);
        self.rewrite(ctx, &key);
        if presence.hazard() {
            let table = self.describe(&key);
            ctx.findings.push(Finding::blocking(
                TABLE_REWRITE,
                format!("CLUSTER rewrites {table} in index order under ACCESS EXCLUSIVE, blocking reads and writes for the whole rewrite"),
                "reorder the table online with pg_repack (--order-by), or run CLUSTER in a maintenance window".to_owned(),
            ));
        }
    }

    /// `schema.name` of a table or index named in PostgreSQL's tree (its
    /// parser has already folded unquoted names).
    fn range_var_key(&self, relation: &RangeVar) -> String {
        let schema = if relation.schemaname.is_empty() {
            &self.default_schema
        } else {
            &relation.schemaname
        };
        format!("{schema}.{}", relation.relname)
    }
}

/// The relation as SQL, quoted where it must be.
fn written(relation: &RangeVar) -> String {
    if relation.schemaname.is_empty() {
        ident(&relation.relname)
    } else {
        format!("{}.{}", ident(&relation.schemaname), ident(&relation.relname))
    }
}

/// The statement's first two words, upper case (e.g. `ALTER SYSTEM`).
fn leading_words(text: &str) -> String {
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}
