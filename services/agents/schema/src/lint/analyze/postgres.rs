//! Statements analyzed on PostgreSQL's parse tree: those that PostgreSQL
//! accepts and sqlparser cannot parse (`REINDEX`, `CLUSTER`, `DO`, ...),
//! and DML too long to give to sqlparser.
//!
//! REINDEX takes SHARE on the table (ACCESS EXCLUSIVE on each index it
//! rebuilds), or SHARE UPDATE EXCLUSIVE with CONCURRENTLY; CLUSTER rewrites
//! the table under ACCESS EXCLUSIVE (PostgreSQL 15 docs of both).

use std::collections::BTreeMap;

use pg_query::NodeEnum;
use pg_query::protobuf::{
    AlterTableCmd, AlterTableStmt, AlterTableType, ClusterStmt, ConstrType, CreateStmt, ObjectType, RangeVar,
    ReindexObjectType, ReindexStmt, TransactionStmt, TransactionStmtKind,
};

use super::super::advice::{ident, script};
use super::super::parse::ParsedStatement;
use super::super::rules::{
    BAN_CONCURRENT_INDEX_CREATION_IN_TRANSACTION, INDEX_NOT_FOUND, REQUIRE_CONCURRENT_INDEX_CREATION,
    TABLE_REWRITE, UNANALYZED_STATEMENT,
};
use super::{Ctx, Linter, Presence, TableState};
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
            NodeEnum::TransactionStmt(transaction) => self.transaction_statement(transaction),
            NodeEnum::AlterTableStmt(alter) if alter.objtype == ObjectType::ObjectTable as i32 => {
                self.unread_alter_table(ctx, alter);
            }
            NodeEnum::CreateStmt(create) => self.unread_create_table(ctx, create),
            // Statements that take no lock on a table's rows (or only on
            // objects the facts do not describe), as in the sqlparser walk.
            NodeEnum::VariableShowStmt(_)
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

    /// BEGIN / START TRANSACTION opens a block; COMMIT, ROLLBACK and
    /// PREPARE TRANSACTION close it.
    fn transaction_statement(&mut self, transaction: &TransactionStmt) {
        use TransactionStmtKind as Kind;
        match Kind::try_from(transaction.kind) {
            Ok(Kind::TransStmtBegin | Kind::TransStmtStart) if self.transaction.is_none() => {
                self.transactions_started += 1;
                self.transaction = Some(self.transactions_started);
            }
            Ok(Kind::TransStmtCommit | Kind::TransStmtRollback | Kind::TransStmtPrepare) => {
                self.transaction = None;
                self.lock_timeout_local = None;
            }
            _ => {}
        }
    }

    /// An ALTER TABLE that sqlparser cannot read (SET STATISTICS, SET
    /// STORAGE, SET COMPRESSION, CLUSTER ON, SET ACCESS METHOD, ...): the
    /// strongest lock of its subcommands (PostgreSQL 15's
    /// AlterTableGetLockLevel), a rewrite where one rewrites, and a warning
    /// for the subcommands whose rules only the sqlparser walk has.
    fn unread_alter_table(&mut self, ctx: &mut Ctx, alter: &AlterTableStmt) {
        let Some(relation) = &alter.relation else { return };
        let key = self.range_var_key(relation);
        let presence = self.presence(&key);
        if presence == Presence::Missing {
            ctx.touch(&key);
            if alter.missing_ok {
                return; // a no-op in PostgreSQL
            }
            ctx.findings.push(Self::table_not_found(&key));
        }
        for cmd in &alter.cmds {
            let Some(NodeEnum::AlterTableCmd(cmd)) = &cmd.node else {
                continue;
            };
            let (lock, effect) = subcommand_lock(cmd);
            self.lock(ctx, &key, lock);
            match effect {
                Effect::LockOnly => {}
                Effect::Rewrite(what) => {
                    self.rewrite(ctx, &key);
                    if presence.hazard() {
                        let table = self.describe(&key);
                        ctx.findings.push(Finding::blocking(
                            TABLE_REWRITE,
                            format!("{what} rewrites {table} under ACCESS EXCLUSIVE, blocking reads and writes for the whole rewrite"),
                            "create a new table as wanted, copy in batches and swap, or run it in a maintenance window".to_owned(),
                        ));
                    }
                }
                Effect::Unmodelled => ctx.findings.push(Finding::warning(
                    UNANALYZED_STATEMENT,
                    format!(
                        "the linter's rules for ALTER TABLE ... {} do not apply: sqlparser cannot read this statement; assuming {} without a rewrite",
                        subcommand_name(cmd),
                        lock.as_str()
                    ),
                    "review its locking and rewrite behaviour by hand (PostgreSQL docs, ALTER TABLE notes), or write it as separate ALTER TABLE statements".to_owned(),
                )),
            }
        }
    }

    /// A CREATE TABLE that sqlparser cannot read (LIKE, OF, USING ...): the
    /// table is new and empty, its columns unknown; LIKE reads the source
    /// table's definition.
    fn unread_create_table(&mut self, ctx: &mut Ctx, create: &CreateStmt) {
        let Some(relation) = &create.relation else { return };
        let key = self.range_var_key(relation);
        ctx.touch(&key);
        if self.presence(&key) != Presence::Missing {
            if !create.if_not_exists {
                ctx.findings.push(Self::table_already_exists(&key));
            }
            return;
        }
        self.robust(ctx, create.if_not_exists, "CREATE TABLE", "IF NOT EXISTS");
        let state = TableState {
            created: true,
            estimated_rows: 0,
            total_bytes: 0,
            dependents: Vec::new(),
            columns_known: false,
            columns: BTreeMap::new(),
            constraints: BTreeMap::new(),
        };
        self.tables.insert(key, Some(state));
        for element in &create.table_elts {
            if let Some(NodeEnum::TableLikeClause(like)) = &element.node
                && let Some(source) = &like.relation
            {
                let source = self.range_var_key(source);
                if self.presence(&source) == Presence::Missing {
                    ctx.findings.push(Self::table_not_found(&source));
                }
                self.lock(ctx, &source, LockLevel::AccessShare);
            }
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

/// What an ALTER TABLE subcommand does beyond its lock, as far as the
/// fallback on PostgreSQL's tree models it.
enum Effect {
    LockOnly,
    Rewrite(&'static str),
    /// A subcommand with rules in the sqlparser walk.
    Unmodelled,
}

/// The lock of one ALTER TABLE subcommand and what else it does.
fn subcommand_lock(cmd: &AlterTableCmd) -> (LockLevel, Effect) {
    use AlterTableType as At;
    let subtype = At::try_from(cmd.subtype).unwrap_or(At::Undefined);
    let def = cmd.def.as_deref().and_then(|d| d.node.as_ref());
    match subtype {
        At::AtSetStatistics
        | At::AtSetOptions
        | At::AtResetOptions
        | At::AtClusterOn
        | At::AtDropCluster
        | At::AtSetRelOptions
        | At::AtResetRelOptions
        | At::AtReplaceRelOptions
        | At::AtDetachPartitionFinalize => (LockLevel::ShareUpdateExclusive, Effect::LockOnly),
        At::AtEnableTrig
        | At::AtEnableAlwaysTrig
        | At::AtEnableReplicaTrig
        | At::AtDisableTrig
        | At::AtEnableTrigAll
        | At::AtDisableTrigAll
        | At::AtEnableTrigUser
        | At::AtDisableTrigUser => (LockLevel::ShareRowExclusive, Effect::LockOnly),
        At::AtSetAccessMethod => (LockLevel::AccessExclusive, Effect::Rewrite("SET ACCESS METHOD")),
        At::AtSetTableSpace => (LockLevel::AccessExclusive, Effect::Rewrite("SET TABLESPACE")),
        At::AtSetLogged | At::AtSetUnLogged => (
            LockLevel::AccessExclusive,
            Effect::Rewrite("SET LOGGED / UNLOGGED"),
        ),
        At::AtValidateConstraint | At::AtAttachPartition => {
            (LockLevel::ShareUpdateExclusive, Effect::Unmodelled)
        }
        At::AtDetachPartition => match def {
            Some(NodeEnum::PartitionCmd(p)) if p.concurrent => {
                (LockLevel::ShareUpdateExclusive, Effect::Unmodelled)
            }
            _ => (LockLevel::AccessExclusive, Effect::Unmodelled),
        },
        At::AtAddConstraint => match def {
            Some(NodeEnum::Constraint(c)) if c.contype == ConstrType::ConstrForeign as i32 => {
                (LockLevel::ShareRowExclusive, Effect::Unmodelled)
            }
            _ => (LockLevel::AccessExclusive, Effect::Unmodelled),
        },
        At::AtAddColumn
        | At::AtDropColumn
        | At::AtAddIndexConstraint
        | At::AtAlterColumnType
        | At::AtSetNotNull
        | At::AtDropConstraint
        | At::AtSetExpression
        | At::AtAddIdentity
        | At::Undefined => (LockLevel::AccessExclusive, Effect::Unmodelled),
        _ => (LockLevel::AccessExclusive, Effect::LockOnly),
    }
}

/// The subcommand as PostgreSQL's tree names it, e.g. `AlterColumnType`.
fn subcommand_name(cmd: &AlterTableCmd) -> String {
    let name = AlterTableType::try_from(cmd.subtype).map_or("an unknown subcommand", |t| t.as_str_name());
    name.trim_start_matches("AT_").to_owned()
}
