//! Given a target's catalog facts, when a migration is linted, then these
//! locks, rewrites, scans, estimates and findings.

use std::collections::BTreeMap;

use super::rules::*;
use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const ORDERS_ROWS: u64 = 2_000_000;
const ORDERS_BYTES: u64 = GIB;
const CUSTOMERS_ROWS: u64 = 50_000;
const CUSTOMERS_BYTES: u64 = 20 * MIB;

fn column(type_name: &str, not_null: bool, dependents: &[&str]) -> ColumnFacts {
    ColumnFacts {
        type_name: type_name.to_owned(),
        not_null,
        dependents: dependents.iter().map(|d| (*d).to_owned()).collect(),
    }
}

fn check(name: &str, column: &str, validated: bool) -> ConstraintFacts {
    ConstraintFacts {
        name: name.to_owned(),
        kind: ConstraintKind::Check,
        validated,
        not_null_column: Some(column.to_owned()),
        references: None,
    }
}

fn index(name: &str, table: &str, columns: &[&str], unique: bool, valid: bool) -> IndexFacts {
    IndexFacts {
        name: name.to_owned(),
        table: table.to_owned(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        unique,
        valid,
    }
}

/// Given: `public.orders` (2M rows, 1 GiB, used by a view) and
/// `public.customers` (50k rows, 20 MiB, referenced by a foreign key).
fn facts() -> CatalogFacts {
    let orders = TableFacts {
        estimated_rows: ORDERS_ROWS,
        total_bytes: ORDERS_BYTES,
        dependents: vec!["view public.order_report".to_owned()],
        columns: BTreeMap::from([
            (
                "id".to_owned(),
                column("bigint", true, &["index public.orders_pkey"]),
            ),
            ("customer_id".to_owned(), column("bigint", false, &[])),
            ("status".to_owned(), column("character varying(20)", false, &[])),
            ("amount".to_owned(), column("numeric(10,2)", false, &[])),
            ("note".to_owned(), column("text", false, &[])),
            (
                "created_at".to_owned(),
                column("timestamp without time zone", false, &[]),
            ),
            (
                "legacy_code".to_owned(),
                column(
                    "text",
                    false,
                    &["view public.order_report", "function public.order_code(bigint)"],
                ),
            ),
            ("unused".to_owned(), column("text", false, &[])),
        ]),
        constraints: vec![
            ConstraintFacts {
                name: "orders_pkey".to_owned(),
                kind: ConstraintKind::PrimaryKey,
                validated: true,
                not_null_column: None,
                references: None,
            },
            check("orders_note_not_null", "note", true),
            check("orders_amount_not_null", "amount", false),
        ],
    };
    let customers = TableFacts {
        estimated_rows: CUSTOMERS_ROWS,
        total_bytes: CUSTOMERS_BYTES,
        dependents: vec!["foreign key orders_customer_id_fkey of public.orders".to_owned()],
        columns: BTreeMap::from([
            ("id".to_owned(), column("bigint", true, &[])),
            ("email".to_owned(), column("text", false, &[])),
            ("nickname".to_owned(), column("text", false, &[])),
        ]),
        constraints: Vec::new(),
    };
    let archive = TableFacts {
        estimated_rows: 10,
        total_bytes: 8192,
        ..TableFacts::default()
    };
    CatalogFacts {
        default_schema: None,
        tables: BTreeMap::from([
            ("public.orders".to_owned(), orders),
            ("public.customers".to_owned(), customers),
            ("public.archive".to_owned(), archive),
        ]),
        indexes: vec![
            index("public.orders_pkey", "public.orders", &["id"], true, true),
            index(
                "public.orders_status_idx",
                "public.orders",
                &["status"],
                false,
                true,
            ),
            index(
                "public.customers_email_broken",
                "public.customers",
                &["email"],
                true,
                false,
            ),
            index(
                "public.customers_nickname_idx",
                "public.customers",
                &["nickname"],
                false,
                true,
            ),
        ],
    }
}

/// When: `sql` is linted against the facts.
fn when_linted(sql: &str) -> MigrationReport {
    lint(sql, &facts()).expect("lints")
}

/// The timeout prelude of a well-formed migration.
const TIMEOUT: &str = "SET lock_timeout = '2s';\n";

fn rules(statement: &StatementReport) -> Vec<&'static str> {
    statement.findings.iter().map(|f| f.rule).collect()
}

fn finding<'a>(statement: &'a StatementReport, rule: &str) -> &'a Finding {
    statement
        .findings
        .iter()
        .find(|f| f.rule == rule)
        .unwrap_or_else(|| panic!("no {rule} in {statement:#?}"))
}

fn lock_on(statement: &StatementReport, table: &str) -> Option<LockLevel> {
    statement.locks.iter().find(|l| l.table == table).map(|l| l.lock)
}

fn assert_clean(report: &MigrationReport) {
    let findings: Vec<_> = report.findings().collect();
    assert!(findings.is_empty(), "expected no finding, got {findings:#?}");
    assert!(report.is_safe());
    assert!(report.summary.lock_timeout_before_first_strong_lock);
}

// ---- CREATE INDEX ---------------------------------------------------------

#[test]
fn create_index_without_concurrently_blocks_writes_under_share() {
    let report = when_linted(&format!(
        "{TIMEOUT}CREATE INDEX orders_created_idx ON orders (created_at);"
    ));

    let create = &report.statements[1];
    assert_eq!(create.index, 2);
    assert_eq!(create.lock, Some(LockLevel::Share));
    assert_eq!(create.tables, ["public.orders"]);
    assert!(create.scans_table && !create.rewrites_table);
    assert_eq!(create.estimated_affected_rows, Some(ORDERS_ROWS));
    assert_eq!(create.estimated_affected_bytes, Some(ORDERS_BYTES));
    assert_eq!(rules(create), [REQUIRE_CONCURRENT_INDEX_CREATION]);
    let f = finding(create, REQUIRE_CONCURRENT_INDEX_CREATION);
    assert_eq!(f.severity, Severity::Blocking);
    assert!(f.message.contains("~2,000,000 rows, 1.0 GiB"), "{}", f.message);
    assert!(
        f.safe_alternative.starts_with(
            "SET lock_timeout = '2s'; CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_created_idx ON orders"
        ),
        "{}",
        f.safe_alternative
    );
    assert_eq!(report.summary.blocking_count, 1);
    assert!(!report.is_safe());
}

#[test]
fn create_index_concurrently_passes_clean_under_share_update_exclusive() {
    let report = when_linted(&format!(
        "{TIMEOUT}CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_created_idx ON orders (created_at);"
    ));

    let create = &report.statements[1];
    assert_eq!(create.lock, Some(LockLevel::ShareUpdateExclusive));
    assert!(create.scans_table);
    assert_eq!(create.estimated_affected_rows, Some(ORDERS_ROWS));
    assert_clean(&report);
}

#[test]
fn create_index_concurrently_inside_a_transaction_block_is_refused() {
    let report = when_linted(
        "BEGIN;\nSET LOCAL lock_timeout = '2s';\nCREATE INDEX CONCURRENTLY IF NOT EXISTS orders_created_idx ON orders (created_at);\nCOMMIT;",
    );

    assert_eq!(
        rules(&report.statements[2]),
        [BAN_CONCURRENT_INDEX_CREATION_IN_TRANSACTION]
    );
}

// ---- constraints ----------------------------------------------------------

#[test]
fn foreign_key_without_not_valid_locks_both_tables_in_share_row_exclusive_during_the_scan() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id);"
    ));

    let add = &report.statements[1];
    assert_eq!(add.lock, Some(LockLevel::ShareRowExclusive));
    assert_eq!(lock_on(add, "public.orders"), Some(LockLevel::ShareRowExclusive));
    assert_eq!(
        lock_on(add, "public.customers"),
        Some(LockLevel::ShareRowExclusive)
    );
    assert_eq!(add.tables, ["public.orders", "public.customers"]);
    assert!(add.scans_table && !add.rewrites_table);
    assert_eq!(add.estimated_affected_rows, Some(ORDERS_ROWS));
    assert_eq!(rules(add), [ADDING_FOREIGN_KEY_CONSTRAINT]);
    let f = finding(add, ADDING_FOREIGN_KEY_CONSTRAINT);
    assert!(f.safe_alternative.contains("NOT VALID"), "{}", f.safe_alternative);
    assert!(
        f.safe_alternative
            .contains("VALIDATE CONSTRAINT orders_customer_fk"),
        "{}",
        f.safe_alternative
    );
}

#[test]
fn foreign_key_not_valid_then_validate_passes_clean() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id) NOT VALID;\n\
         ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_fk;"
    ));

    let add = &report.statements[1];
    assert_eq!(add.lock, Some(LockLevel::ShareRowExclusive));
    assert!(!add.scans_table);
    assert_eq!(add.estimated_affected_rows, Some(0));
    let validate = &report.statements[2];
    assert_eq!(
        lock_on(validate, "public.orders"),
        Some(LockLevel::ShareUpdateExclusive)
    );
    assert_eq!(lock_on(validate, "public.customers"), Some(LockLevel::RowShare));
    assert!(validate.scans_table);
    assert_eq!(validate.estimated_affected_rows, Some(ORDERS_ROWS));
    assert_clean(&report);
}

#[test]
fn validate_in_the_same_transaction_as_its_not_valid_add_keeps_the_strong_lock() {
    let report = when_linted(
        "BEGIN;\nSET LOCAL lock_timeout = '2s';\n\
         ALTER TABLE orders ADD CONSTRAINT amount_positive CHECK (amount > 0) NOT VALID;\n\
         ALTER TABLE orders VALIDATE CONSTRAINT amount_positive;\nCOMMIT;",
    );

    let validate = &report.statements[3];
    assert_eq!(rules(validate), [CONSTRAINT_MISSING_NOT_VALID]);
    let f = finding(validate, CONSTRAINT_MISSING_NOT_VALID);
    assert!(
        f.message.contains("statement 3") && f.message.contains("ACCESS EXCLUSIVE"),
        "{}",
        f.message
    );
}

#[test]
fn check_without_not_valid_scans_under_access_exclusive() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ADD CONSTRAINT amount_positive CHECK (amount > 0);"
    ));

    let add = &report.statements[1];
    assert_eq!(add.lock, Some(LockLevel::AccessExclusive));
    assert!(add.scans_table && !add.rewrites_table);
    assert_eq!(rules(add), [CONSTRAINT_MISSING_NOT_VALID]);
    assert!(
        finding(add, CONSTRAINT_MISSING_NOT_VALID).safe_alternative.starts_with(
            "SET lock_timeout = '2s'; ALTER TABLE orders ADD CONSTRAINT amount_positive CHECK (amount > 0) NOT VALID; ALTER TABLE orders VALIDATE CONSTRAINT amount_positive; -- each in its own transaction"
        )
    );
}

#[test]
fn unique_constraint_builds_its_index_under_access_exclusive() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE customers ADD CONSTRAINT customers_email_key UNIQUE (email);"
    ));

    let add = &report.statements[1];
    assert_eq!(add.lock, Some(LockLevel::AccessExclusive));
    assert!(add.scans_table);
    assert_eq!(add.estimated_affected_rows, Some(CUSTOMERS_ROWS));
    assert_eq!(rules(add), [DISALLOWED_UNIQUE_CONSTRAINT]);
    assert_eq!(
        finding(add, DISALLOWED_UNIQUE_CONSTRAINT).safe_alternative,
        "SET lock_timeout = '2s'; CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS customers_email_key ON customers (email); ALTER TABLE customers ADD CONSTRAINT customers_email_key UNIQUE USING INDEX customers_email_key; -- the index is built outside a transaction block, without blocking writes; the constraint then only takes it over"
    );
}

#[test]
fn unique_using_an_index_built_concurrently_passes_clean() {
    let report = when_linted(&format!(
        "{TIMEOUT}CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS customers_email_key ON customers (email);\n\
         ALTER TABLE customers ADD CONSTRAINT customers_email_key UNIQUE USING INDEX customers_email_key;"
    ));

    let add = &report.statements[2];
    assert_eq!(add.lock, Some(LockLevel::AccessExclusive));
    assert!(!add.scans_table);
    assert_eq!(add.estimated_affected_rows, Some(0));
    assert_clean(&report);
}

#[test]
fn unique_using_an_invalid_or_non_unique_or_missing_index_is_blocking() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE customers ADD CONSTRAINT a UNIQUE USING INDEX customers_email_broken;\n\
         ALTER TABLE customers ADD CONSTRAINT b UNIQUE USING INDEX customers_nickname_idx;\n\
         ALTER TABLE customers ADD CONSTRAINT c UNIQUE USING INDEX nowhere;"
    ));

    assert_eq!(rules(&report.statements[1]), [DISALLOWED_UNIQUE_CONSTRAINT]);
    assert!(
        finding(&report.statements[1], DISALLOWED_UNIQUE_CONSTRAINT)
            .message
            .contains("INVALID")
    );
    assert_eq!(rules(&report.statements[2]), [DISALLOWED_UNIQUE_CONSTRAINT]);
    assert!(
        finding(&report.statements[2], DISALLOWED_UNIQUE_CONSTRAINT)
            .message
            .contains("not unique")
    );
    assert_eq!(rules(&report.statements[3]), [INDEX_NOT_FOUND]);
}

#[test]
fn primary_key_constraint_is_blocking_and_using_an_index_needs_not_null_columns() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE customers ADD PRIMARY KEY (id);\n\
         CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS customers_email_key ON customers (email);\n\
         ALTER TABLE customers ADD CONSTRAINT customers_email_pk PRIMARY KEY USING INDEX customers_email_key;"
    ));

    assert_eq!(rules(&report.statements[1]), [ADDING_SERIAL_PRIMARY_KEY_FIELD]);
    let using = &report.statements[3];
    assert_eq!(rules(using), [ADDING_NOT_NULLABLE_FIELD]);
    assert!(using.scans_table);
}

// ---- NOT NULL -------------------------------------------------------------

#[test]
fn set_not_null_without_a_validated_check_scans_under_access_exclusive() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ALTER COLUMN customer_id SET NOT NULL;"
    ));

    let set = &report.statements[1];
    assert_eq!(set.lock, Some(LockLevel::AccessExclusive));
    assert!(set.scans_table && !set.rewrites_table);
    assert_eq!(set.estimated_affected_rows, Some(ORDERS_ROWS));
    assert_eq!(rules(set), [ADDING_NOT_NULLABLE_FIELD]);
    let f = finding(set, ADDING_NOT_NULLABLE_FIELD);
    assert!(
        f.safe_alternative
            .contains("CHECK (customer_id IS NOT NULL) NOT VALID"),
        "{}",
        f.safe_alternative
    );
}

#[test]
fn the_not_null_check_pattern_passes_clean() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ADD CONSTRAINT customer_id_not_null CHECK (customer_id IS NOT NULL) NOT VALID;\n\
         ALTER TABLE orders VALIDATE CONSTRAINT customer_id_not_null;\n\
         ALTER TABLE orders ALTER COLUMN customer_id SET NOT NULL;\n\
         ALTER TABLE orders DROP CONSTRAINT customer_id_not_null;"
    ));

    assert!(report.statements[2].scans_table);
    let set = &report.statements[3];
    assert_eq!(set.lock, Some(LockLevel::AccessExclusive));
    assert!(!set.scans_table);
    assert_eq!(set.estimated_affected_rows, Some(0));
    assert_clean(&report);
}

#[test]
fn set_not_null_is_scan_free_with_a_validated_check_in_the_facts() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ALTER COLUMN note SET NOT NULL;"
    ));

    assert!(!report.statements[1].scans_table);
    assert_clean(&report);
}

#[test]
fn set_not_null_with_only_an_unvalidated_check_says_to_validate_it_first() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ALTER COLUMN amount SET NOT NULL;"
    ));

    let f = finding(&report.statements[1], ADDING_NOT_NULLABLE_FIELD);
    assert!(
        f.message
            .contains("orders_amount_not_null exists but is NOT VALID"),
        "{}",
        f.message
    );
}

#[test]
fn a_check_added_not_valid_but_never_validated_does_not_make_set_not_null_safe() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ADD CONSTRAINT c CHECK (customer_id IS NOT NULL) NOT VALID;\n\
         ALTER TABLE orders ALTER COLUMN customer_id SET NOT NULL;"
    ));

    assert_eq!(rules(&report.statements[2]), [ADDING_NOT_NULLABLE_FIELD]);
}

#[test]
fn adding_a_not_null_column_without_a_default_fails_on_a_table_with_rows() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ADD COLUMN region text NOT NULL;"
    ));

    assert_eq!(rules(&report.statements[1]), [ADDING_REQUIRED_FIELD]);
    assert!(!report.statements[1].rewrites_table);
}

// ---- column types ---------------------------------------------------------

#[test]
fn column_type_changes_that_rewrite_are_blocking_with_the_size() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ALTER COLUMN status TYPE integer USING status::integer;\n\
         ALTER TABLE orders ALTER COLUMN amount TYPE numeric(8,2);\n\
         ALTER TABLE orders ALTER COLUMN legacy_code TYPE bigint USING legacy_code::bigint;\n\
         ALTER TABLE orders ALTER COLUMN created_at TYPE timestamptz;"
    ));

    for statement in &report.statements[1..] {
        assert_eq!(statement.lock, Some(LockLevel::AccessExclusive));
        assert!(
            statement.rewrites_table && statement.scans_table,
            "{statement:#?}"
        );
        assert_eq!(statement.estimated_affected_rows, Some(ORDERS_ROWS));
        assert_eq!(statement.estimated_affected_bytes, Some(ORDERS_BYTES));
        assert_eq!(rules(statement), [CHANGING_COLUMN_TYPE]);
    }
    assert!(
        finding(&report.statements[3], CHANGING_COLUMN_TYPE)
            .message
            .contains("view public.order_report")
    );
    assert!(
        finding(&report.statements[4], CHANGING_COLUMN_TYPE)
            .message
            .contains("TimeZone is UTC")
    );
    assert_eq!(report.summary.rewritten_tables, ["public.orders"]);
}

#[test]
fn column_type_changes_postgres_does_without_a_rewrite_pass_clean() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ALTER COLUMN status TYPE varchar(50);\n\
         ALTER TABLE orders ALTER COLUMN status TYPE text;\n\
         ALTER TABLE orders ALTER COLUMN note TYPE varchar;\n\
         ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12,2);\n\
         ALTER TABLE orders ALTER COLUMN amount TYPE decimal;\n\
         ALTER TABLE orders ALTER COLUMN customer_id TYPE int8 USING customer_id;"
    ));

    for statement in &report.statements[1..] {
        assert_eq!(statement.lock, Some(LockLevel::AccessExclusive));
        assert!(
            !statement.rewrites_table && !statement.scans_table,
            "{statement:#?}"
        );
        assert_eq!(statement.estimated_affected_rows, Some(0));
    }
    assert_clean(&report);
    assert!(report.summary.rewritten_tables.is_empty());
}

#[test]
fn a_type_change_is_compared_with_the_type_set_earlier_in_the_migration() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ALTER COLUMN status TYPE varchar(50);\n\
         ALTER TABLE orders ALTER COLUMN status TYPE varchar(30);"
    ));

    assert!(!report.statements[1].rewrites_table);
    assert_eq!(rules(&report.statements[2]), [CHANGING_COLUMN_TYPE]);
}

// ---- defaults -------------------------------------------------------------

#[test]
fn volatile_defaults_rewrite_the_table_and_constant_or_stable_ones_do_not() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ADD COLUMN token uuid DEFAULT gen_random_uuid();\n\
         ALTER TABLE orders ADD COLUMN touched_at timestamptz DEFAULT clock_timestamp();\n\
         ALTER TABLE orders ADD COLUMN bucket int DEFAULT (random() * 10)::int;\n\
         ALTER TABLE orders ADD COLUMN seq bigint DEFAULT nextval('orders_seq');\n\
         ALTER TABLE orders ADD COLUMN number bigserial;\n\
         ALTER TABLE orders ADD COLUMN flag boolean NOT NULL DEFAULT false;\n\
         ALTER TABLE orders ADD COLUMN seen_at timestamptz DEFAULT now();\n\
         ALTER TABLE orders ADD COLUMN since timestamptz DEFAULT CURRENT_TIMESTAMP;\n\
         ALTER TABLE orders ADD COLUMN meta jsonb NOT NULL DEFAULT '{{}}'::jsonb;\n\
         ALTER TABLE orders ADD COLUMN score int DEFAULT -1 + 2;"
    ));

    for statement in &report.statements[1..6] {
        assert!(statement.rewrites_table, "{statement:#?}");
        assert_eq!(statement.lock, Some(LockLevel::AccessExclusive));
        assert_eq!(statement.estimated_affected_rows, Some(ORDERS_ROWS));
        assert_eq!(rules(statement), [ADDING_FIELD_WITH_DEFAULT]);
    }
    let f = finding(&report.statements[1], ADDING_FIELD_WITH_DEFAULT);
    assert!(
        f.message.contains("gen_random_uuid(), a volatile function"),
        "{}",
        f.message
    );
    assert!(
        f.safe_alternative.contains("SET DEFAULT gen_random_uuid()"),
        "{}",
        f.safe_alternative
    );
    for statement in &report.statements[6..] {
        assert!(
            !statement.rewrites_table && !statement.scans_table,
            "{statement:#?}"
        );
        assert_eq!(statement.estimated_affected_rows, Some(0));
        assert!(statement.findings.is_empty(), "{statement:#?}");
    }
}

#[test]
fn an_unknown_function_in_a_default_is_taken_as_volatile() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ADD COLUMN code text DEFAULT make_code();"
    ));

    let f = finding(&report.statements[1], ADDING_FIELD_WITH_DEFAULT);
    assert!(
        f.message
            .contains("make_code(), not known to be immutable or stable"),
        "{}",
        f.message
    );
}

#[test]
fn stored_generated_and_identity_columns_rewrite_the_table() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ADD COLUMN total numeric GENERATED ALWAYS AS (amount * 2) STORED;\n\
         ALTER TABLE orders ADD COLUMN n bigint GENERATED BY DEFAULT AS IDENTITY;"
    ));

    assert_eq!(rules(&report.statements[1]), [ADDING_FIELD_WITH_DEFAULT]);
    assert_eq!(rules(&report.statements[2]), [ADDING_FIELD_WITH_DEFAULT]);
}

// ---- DROP / RENAME --------------------------------------------------------

#[test]
fn dropping_a_column_still_used_is_blocking_and_an_unused_one_a_warning() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders DROP COLUMN legacy_code;\nALTER TABLE orders DROP COLUMN unused;"
    ));

    let used = finding(&report.statements[1], BAN_DROP_COLUMN);
    assert_eq!(used.severity, Severity::Blocking);
    assert!(
        used.message
            .contains("still used by view public.order_report, function public.order_code(bigint)"),
        "{}",
        used.message
    );
    assert_eq!(
        finding(&report.statements[2], BAN_DROP_COLUMN).severity,
        Severity::Warning
    );
    assert_eq!(report.statements[1].lock, Some(LockLevel::AccessExclusive));
    assert!(!report.statements[1].scans_table);
}

#[test]
fn dropping_or_renaming_a_table_still_used_is_blocking() {
    let report = when_linted(&format!(
        "{TIMEOUT}DROP TABLE customers;\nALTER TABLE orders RENAME TO purchases;\nDROP TABLE archive;"
    ));

    assert_eq!(
        finding(&report.statements[1], BAN_DROP_TABLE).severity,
        Severity::Blocking
    );
    assert!(
        finding(&report.statements[1], BAN_DROP_TABLE)
            .message
            .contains("foreign key orders_customer_id_fkey")
    );
    let rename = &report.statements[2];
    assert_eq!(finding(rename, RENAMING_TABLE).severity, Severity::Blocking);
    assert_eq!(rename.tables, ["public.orders", "public.purchases"]);
    assert_eq!(
        finding(&report.statements[3], BAN_DROP_TABLE).severity,
        Severity::Warning
    );
}

#[test]
fn renaming_a_column_still_used_is_blocking_and_the_new_name_is_tracked() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders RENAME COLUMN legacy_code TO code;\n\
         ALTER TABLE orders RENAME COLUMN unused TO spare;\n\
         ALTER TABLE orders ALTER COLUMN code SET DEFAULT 'x';\n\
         ALTER TABLE orders ALTER COLUMN legacy_code DROP DEFAULT;"
    ));

    assert_eq!(
        finding(&report.statements[1], RENAMING_COLUMN).severity,
        Severity::Blocking
    );
    assert_eq!(
        finding(&report.statements[2], RENAMING_COLUMN).severity,
        Severity::Warning
    );
    assert!(report.statements[3].findings.is_empty());
    assert_eq!(rules(&report.statements[4]), [COLUMN_NOT_FOUND]);
}

#[test]
fn dropped_and_renamed_tables_are_tracked_through_the_migration() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders RENAME TO purchases;\n\
         CREATE INDEX CONCURRENTLY IF NOT EXISTS purchases_note_idx ON purchases (note);\n\
         ALTER TABLE orders ADD COLUMN x int;\n\
         DROP TABLE IF EXISTS archive;\n\
         ALTER TABLE archive ADD COLUMN y int;"
    ));

    let index = &report.statements[2];
    assert!(index.findings.is_empty(), "{index:#?}");
    assert_eq!(index.estimated_affected_rows, Some(ORDERS_ROWS));
    assert_eq!(
        rules(&report.statements[3]),
        [TABLE_NOT_FOUND, PREFER_ROBUST_STMTS]
    );
    assert_eq!(
        rules(&report.statements[5]),
        [TABLE_NOT_FOUND, PREFER_ROBUST_STMTS]
    );
}

// ---- lock_timeout ---------------------------------------------------------

#[test]
fn a_missing_lock_timeout_is_reported_once_at_the_first_strong_lock() {
    let report = lint(
        "CREATE TABLE notes (id bigint PRIMARY KEY);\n\
         ALTER TABLE orders ADD COLUMN a int;\n\
         ALTER TABLE orders ADD COLUMN b int;",
        &facts(),
    )
    .unwrap();

    assert!(report.statements[0].findings.is_empty());
    let first = finding(&report.statements[1], REQUIRE_TIMEOUT_SETTINGS);
    assert_eq!(first.severity, Severity::Blocking);
    assert!(
        first.message.contains("ACCESS EXCLUSIVE on public.orders"),
        "{}",
        first.message
    );
    assert!(report.statements[2].findings.is_empty());
    assert!(!report.summary.lock_timeout_before_first_strong_lock);
    assert_eq!(report.summary.first_strong_lock_statement, Some(2));
    assert_eq!(report.summary.strongest_lock, Some(LockLevel::AccessExclusive));
    assert_eq!(report.summary.blocking_count, 1);
}

#[test]
fn lock_timeout_set_first_in_any_form_satisfies_the_timeout_rule() {
    for prelude in [
        "SET lock_timeout = '2s';",
        "SET lock_timeout TO 2000;",
        "SET SESSION lock_timeout = '500ms';",
        "SELECT set_config('lock_timeout', '2s', false);",
        "BEGIN; SET LOCAL lock_timeout = '2s';",
        "BEGIN; SELECT set_config('lock_timeout', '2s', true);",
    ] {
        let report = when_linted(&format!("{prelude}\nALTER TABLE orders ADD COLUMN a int;"));
        assert_clean(&report);
        assert_eq!(
            report.summary.first_strong_lock_statement,
            Some(report.statements.len()),
            "{prelude}"
        );
    }
}

#[test]
fn a_zero_reset_or_out_of_transaction_local_lock_timeout_does_not_count() {
    for (prelude, extra) in [
        ("SET lock_timeout = 0;", None),
        ("SET lock_timeout = '0';", None),
        ("SET lock_timeout TO DEFAULT;", None),
        ("SET lock_timeout = '2s'; RESET lock_timeout;", None),
        (
            "SET LOCAL lock_timeout = '2s';",
            Some(SET_LOCAL_OUTSIDE_TRANSACTION),
        ),
        ("BEGIN; SET LOCAL lock_timeout = '2s'; COMMIT;", None),
    ] {
        let report = when_linted(&format!("{prelude}\nALTER TABLE orders ADD COLUMN a int;"));
        let last = report.statements.last().unwrap();
        assert_eq!(rules(last), [REQUIRE_TIMEOUT_SETTINGS], "{prelude}");
        assert!(!report.summary.lock_timeout_before_first_strong_lock, "{prelude}");
        if let Some(rule) = extra {
            assert!(report.findings().any(|(_, f)| f.rule == rule), "{prelude}");
        }
    }
}

#[test]
fn row_exclusive_and_locks_on_new_tables_need_no_lock_timeout() {
    let report = when_linted(
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text);\n\
         CREATE INDEX notes_body_idx ON notes (body);\n\
         INSERT INTO orders (id) VALUES (1);\n\
         UPDATE orders SET note = 'x' WHERE id = 1;",
    );

    assert_clean(&report);
    assert_eq!(report.summary.first_strong_lock_statement, None);
    assert_eq!(report.summary.strongest_lock, Some(LockLevel::RowExclusive));
    assert_eq!(report.statements[3].estimated_affected_rows, None);
}

// ---- tables created in the migration, unknown tables ------------------------

#[test]
fn a_table_created_in_the_migration_is_not_reported_missing_nor_hazardous() {
    let report = when_linted(&format!(
        "{TIMEOUT}CREATE TABLE shipments (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, order_id bigint, carrier text);\n\
         CREATE INDEX shipments_order_idx ON shipments (order_id);\n\
         ALTER TABLE shipments ADD COLUMN created_at timestamptz NOT NULL DEFAULT clock_timestamp();\n\
         ALTER TABLE shipments ADD CONSTRAINT shipments_order_fk FOREIGN KEY (order_id) REFERENCES orders (id);\n\
         ALTER TABLE shipments ALTER COLUMN carrier SET NOT NULL;\n\
         ALTER TABLE shipments ALTER COLUMN carrier TYPE integer USING 0;"
    ));

    assert_clean(&report);
    let create = &report.statements[1];
    assert_eq!(create.tables, ["public.shipments"]);
    assert_eq!(create.lock, None);
    let index = &report.statements[2];
    assert_eq!(
        index.locks,
        [TableLock {
            table: "public.shipments".into(),
            lock: LockLevel::Share,
            pre_existing: false
        }]
    );
    assert_eq!(index.estimated_affected_rows, Some(0));
    let fk = &report.statements[4];
    assert_eq!(lock_on(fk, "public.orders"), Some(LockLevel::ShareRowExclusive));
    assert_eq!(report.summary.first_strong_lock_statement, Some(5));
    assert!(report.summary.rewritten_tables.is_empty());
}

#[test]
fn a_create_table_referencing_an_existing_table_locks_it_share_row_exclusive() {
    let report = lint(
        "CREATE TABLE refunds (id bigint, order_id bigint REFERENCES orders (id));",
        &facts(),
    )
    .unwrap();

    let create = &report.statements[0];
    assert_eq!(create.tables, ["public.refunds", "public.orders"]);
    assert_eq!(
        lock_on(create, "public.orders"),
        Some(LockLevel::ShareRowExclusive)
    );
    assert_eq!(rules(create), [REQUIRE_TIMEOUT_SETTINGS]);
}

#[test]
fn an_unknown_table_is_linted_with_a_table_not_found_finding() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE ghosts ALTER COLUMN name SET NOT NULL;\n\
         CREATE INDEX ghosts_name_idx ON ghosts (name);\n\
         ALTER TABLE IF EXISTS ghosts ADD COLUMN x int;\n\
         CREATE TABLE orders (id bigint);"
    ));

    let set = &report.statements[1];
    assert_eq!(rules(set), [TABLE_NOT_FOUND, ADDING_NOT_NULLABLE_FIELD]);
    assert_eq!(set.lock, Some(LockLevel::AccessExclusive));
    assert_eq!(set.estimated_affected_rows, None);
    assert_eq!(set.estimated_affected_bytes, None);
    assert!(
        finding(set, ADDING_NOT_NULLABLE_FIELD)
            .message
            .contains("public.ghosts (size unknown)")
    );
    assert_eq!(
        rules(&report.statements[2]),
        [TABLE_NOT_FOUND, REQUIRE_CONCURRENT_INDEX_CREATION]
    );
    assert!(report.statements[3].findings.is_empty());
    assert_eq!(rules(&report.statements[4]), [TABLE_ALREADY_EXISTS]);
}

#[test]
fn identifiers_fold_like_postgres_and_schemas_resolve() {
    let mut facts = facts();
    facts.default_schema = Some("app".to_owned());
    let orders = facts.tables.remove("public.orders").unwrap();
    facts.tables.insert("app.Orders".to_owned(), orders.clone());
    facts.tables.insert("sales.orders".to_owned(), orders);

    let report = lint(
        "SET lock_timeout = '1s';\n\
         ALTER TABLE \"Orders\" ADD COLUMN a int;\n\
         ALTER TABLE ORDERS ADD COLUMN b int;\n\
         ALTER TABLE Sales.Orders ADD COLUMN c int;",
        &facts,
    )
    .unwrap();

    assert_eq!(report.statements[1].tables, ["app.Orders"]);
    assert!(report.statements[1].findings.is_empty());
    assert_eq!(rules(&report.statements[2]), [TABLE_NOT_FOUND]);
    assert_eq!(report.statements[3].tables, ["sales.orders"]);
    assert!(report.statements[3].findings.is_empty());
}

// ---- other statements -----------------------------------------------------

#[test]
fn lock_levels_follow_the_postgres_docs() {
    let cases = [
        (
            "ALTER TABLE orders SET (fillfactor = 70)",
            LockLevel::ShareUpdateExclusive,
        ),
        (
            "ALTER TABLE orders DISABLE TRIGGER audit",
            LockLevel::ShareRowExclusive,
        ),
        (
            "CREATE TRIGGER audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION audit()",
            LockLevel::ShareRowExclusive,
        ),
        (
            "ALTER TABLE orders ALTER COLUMN note SET DEFAULT 'n/a'",
            LockLevel::AccessExclusive,
        ),
        (
            "ALTER TABLE orders ALTER COLUMN note DROP NOT NULL",
            LockLevel::AccessExclusive,
        ),
        (
            "ALTER TABLE orders DROP CONSTRAINT orders_note_not_null",
            LockLevel::AccessExclusive,
        ),
        ("LOCK TABLE orders IN SHARE MODE", LockLevel::Share),
        ("LOCK TABLE orders", LockLevel::AccessExclusive),
        ("TRUNCATE orders", LockLevel::AccessExclusive),
        ("VACUUM orders", LockLevel::ShareUpdateExclusive),
        ("ANALYZE orders", LockLevel::ShareUpdateExclusive),
        ("INSERT INTO orders (id) VALUES (1)", LockLevel::RowExclusive),
        ("DELETE FROM orders WHERE id = 1", LockLevel::RowExclusive),
        ("DROP INDEX orders_status_idx", LockLevel::AccessExclusive),
    ];
    for (sql, lock) in cases {
        let report = when_linted(&format!("{TIMEOUT}{sql};"));
        let statement = &report.statements[1];
        assert_eq!(statement.lock, Some(lock), "{sql}");
        assert_eq!(statement.tables, ["public.orders"], "{sql}");
        assert_eq!(statement.sql, sql);
    }
}

#[test]
fn drop_index_without_concurrently_is_a_warning_and_unknown_indexes_fail() {
    let report = when_linted(&format!(
        "{TIMEOUT}DROP INDEX orders_status_idx;\nDROP INDEX IF EXISTS nowhere;\nDROP INDEX nowhere;"
    ));

    let drop = finding(&report.statements[1], REQUIRE_CONCURRENT_INDEX_DELETION);
    assert_eq!(drop.severity, Severity::Warning);
    assert!(report.statements[2].findings.is_empty());
    assert_eq!(rules(&report.statements[3]), [INDEX_NOT_FOUND]);
}

#[test]
fn an_update_of_every_row_is_an_unbatched_backfill() {
    let report = when_linted("UPDATE orders SET note = '';\nDELETE FROM customers;");

    for statement in &report.statements {
        assert_eq!(rules(statement), [UNBATCHED_UPDATE]);
        assert_eq!(statement.lock, Some(LockLevel::RowExclusive));
    }
    assert_eq!(report.statements[0].estimated_affected_rows, Some(ORDERS_ROWS));
    assert_eq!(report.statements[1].estimated_affected_rows, Some(CUSTOMERS_ROWS));
}

#[test]
fn vacuum_full_and_set_logged_rewrite_the_table() {
    let report = when_linted(&format!(
        "{TIMEOUT}VACUUM FULL orders;\nALTER TABLE orders SET UNLOGGED;"
    ));

    for statement in &report.statements[1..] {
        assert!(statement.rewrites_table);
        assert_eq!(rules(statement), [TABLE_REWRITE]);
    }
}

#[test]
fn a_migration_that_cannot_be_one_transaction_should_use_robust_statements() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ADD COLUMN region text;\n\
         ALTER TABLE orders ADD COLUMN IF NOT EXISTS zone text;\n\
         CREATE INDEX CONCURRENTLY orders_region_idx ON orders (region);"
    ));

    assert_eq!(rules(&report.statements[1]), [PREFER_ROBUST_STMTS]);
    assert!(report.statements[2].findings.is_empty());
    assert_eq!(rules(&report.statements[3]), [PREFER_ROBUST_STMTS]);
    assert_eq!(report.summary.warning_count, 2);
    assert!(report.is_safe());
}

#[test]
fn statements_without_table_locks_are_clean_and_unmodelled_ones_warn() {
    let report = when_linted(
        "CREATE EXTENSION IF NOT EXISTS pgcrypto;\n\
         CREATE FUNCTION one() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;\n\
         COMMENT ON TABLE orders IS 'orders; one per checkout';\n\
         CREATE OR REPLACE VIEW open_orders AS SELECT id FROM orders WHERE status = 'open';\n\
         DROP VIEW open_orders;",
    );

    for statement in &report.statements[..4] {
        assert_eq!(statement.lock, None);
        assert!(statement.findings.is_empty(), "{statement:#?}");
    }
    assert_eq!(rules(&report.statements[4]), [UNANALYZED_STATEMENT]);
}

// ---- parsing, text, limits, errors ------------------------------------------

#[test]
fn each_statement_keeps_its_text_as_written() {
    let sql = "-- add a column\nSET lock_timeout = '2s' ;\n\n\
               CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $body$ SELECT 'a;b' $body$;\n\
               ALTER TABLE orders\n    ADD COLUMN \"Région\" text; -- trailing\n;;";
    let report = when_linted(sql);

    let texts: Vec<&str> = report.statements.iter().map(|s| s.sql.as_str()).collect();
    assert_eq!(
        texts,
        [
            "SET lock_timeout = '2s'",
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $body$ SELECT 'a;b' $body$",
            "ALTER TABLE orders\n    ADD COLUMN \"Région\" text",
        ]
    );
    assert_eq!(report.summary.statement_count, 3);
}

#[test]
fn invalid_sql_is_an_error_naming_the_statement_and_the_parser_message() {
    let error = lint(
        "SET lock_timeout = '2s';\nALTER TABLE orders ADD COLUMN;",
        &facts(),
    )
    .unwrap_err();
    let LintError::InvalidSql { statement, message } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(*statement, 2);
    assert!(message.contains("Line: 2"), "{message}");
    assert!(
        error.to_string().starts_with("statement 2 is not valid SQL: "),
        "{error}"
    );

    let unterminated = lint("SELECT 1;\nSELECT 2;\nSELECT 'open", &facts()).unwrap_err();
    assert!(
        matches!(unterminated, LintError::InvalidSql { statement: 3, .. }),
        "{unterminated:?}"
    );

    let missing_separator = lint("SELECT 1 SELECT 2", &facts()).unwrap_err();
    assert!(
        matches!(missing_separator, LintError::InvalidSql { statement: 1, .. }),
        "{missing_separator:?}"
    );

    // Deep nesting hits the parser's recursion limit instead of the stack.
    let deep = format!("SELECT {}1{};", "(".repeat(100_000), ")".repeat(100_000));
    let too_deep = lint(&deep, &facts()).unwrap_err();
    assert!(
        matches!(&too_deep, LintError::InvalidSql { statement: 1, message } if message.contains("recursion")),
        "{too_deep:?}"
    );
}

#[test]
fn limits_and_empty_migrations_are_precise_errors() {
    let large = "-".repeat(SQL_BYTES_MAX + 1);
    assert_eq!(
        lint(&large, &facts()),
        Err(LintError::TooLarge {
            size_bytes: SQL_BYTES_MAX + 1,
            sql_bytes_max: SQL_BYTES_MAX
        })
    );

    let at_limit = "SELECT 1;".repeat(STATEMENTS_MAX);
    assert_eq!(
        lint(&at_limit, &facts()).map(|r| r.summary.statement_count),
        Ok(STATEMENTS_MAX)
    );
    let over = "SELECT 1;".repeat(STATEMENTS_MAX + 1);
    assert_eq!(
        lint(&over, &facts()),
        Err(LintError::TooManyStatements {
            statements_max: STATEMENTS_MAX
        })
    );

    assert_eq!(lint(" -- nothing\n ; ;", &facts()), Err(LintError::Empty));
}

#[test]
fn type_change_classification_follows_postgres_15() {
    use super::types::{TypeChange, classify, parse_type_name};
    let cases = [
        ("character varying(20)", "varchar(20)", None, false),
        ("character varying(20)", "character varying(255)", None, false),
        ("character varying(20)", "varchar(10)", None, true),
        ("character varying", "text", None, false),
        ("text", "varchar", None, false),
        ("text", "varchar(10)", None, true),
        ("numeric(10,2)", "numeric(12,2)", None, false),
        ("numeric(10,2)", "numeric(12,3)", None, true),
        ("numeric(10,2)", "numeric", None, false),
        ("numeric", "numeric(10,2)", None, true),
        ("bit varying(8)", "varbit(16)", None, false),
        ("timestamp(3) without time zone", "timestamp", None, false),
        ("timestamp without time zone", "timestamp(3)", None, true),
        (
            "timestamp without time zone",
            "timestamp with time zone",
            None,
            true,
        ),
        ("cidr", "inet", None, false),
        ("integer", "bigint", None, true),
        ("integer", "int4", None, false),
        ("character(5)", "text", None, true),
        ("text", "text", Some("lower(c)"), true),
        ("text", "text", Some("c::text"), false),
    ];
    for (old, new, using, rewrites) in cases {
        let old_type = parse_type_name(old).unwrap_or_else(|| panic!("{old} parses"));
        let new_type = parse_type_name(new).unwrap_or_else(|| panic!("{new} parses"));
        let using = using.map(|u| {
            sqlparser::parser::Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
                .try_with_sql(u)
                .and_then(|mut p| p.parse_expr())
                .unwrap()
        });
        let change = classify(Some(&old_type), &new_type, using.as_ref(), "c");
        assert_eq!(
            matches!(change, TypeChange::Rewrite(_)),
            rewrites,
            "{old} -> {new} using {using:?}: {change:?}"
        );
    }
    assert!(matches!(
        classify(None, &parse_type_name("text").unwrap(), None, "c"),
        TypeChange::Rewrite(reason) if reason.contains("not in the catalog facts")
    ));
    assert_eq!(parse_type_name("not a type at all"), None);
}

// ---- advice ---------------------------------------------------------------

/// Migrations that, together, make every rule fire (some in several
/// forms), each linted on its own against the facts.
const ADVICE_CASES: [&str; 39] = [
    "CREATE INDEX orders_created_idx ON orders (created_at);",
    "CREATE INDEX ON orders (note);",
    "BEGIN; CREATE INDEX CONCURRENTLY orders_note_idx ON orders (note); COMMIT;",
    "DROP INDEX orders_status_idx;",
    "BEGIN; DROP INDEX CONCURRENTLY orders_status_idx; COMMIT;",
    "ALTER TABLE orders ADD CONSTRAINT amount_positive CHECK (amount > 0);",
    "ALTER TABLE orders ADD CHECK (amount > 0);",
    "ALTER TABLE orders ADD COLUMN qty int CHECK (qty > 0);",
    "BEGIN; ALTER TABLE orders ADD CONSTRAINT c1 CHECK (amount > 0) NOT VALID; ALTER TABLE orders VALIDATE CONSTRAINT c1; COMMIT;",
    "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id);",
    "ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE;",
    "ALTER TABLE orders ADD COLUMN buyer_id bigint REFERENCES customers (id);",
    "ALTER TABLE orders ALTER COLUMN customer_id SET NOT NULL;",
    "ALTER TABLE orders ALTER COLUMN amount SET NOT NULL;",
    "ALTER TABLE \"orders\" ALTER COLUMN \"status\" SET NOT NULL;",
    "ALTER TABLE orders ADD COLUMN region text NOT NULL;",
    "ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12,3);",
    "ALTER TABLE orders ADD COLUMN token uuid DEFAULT gen_random_uuid();",
    "ALTER TABLE orders ADD COLUMN seq bigserial;",
    "ALTER TABLE orders ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY;",
    "ALTER TABLE customers ADD CONSTRAINT customers_email_key UNIQUE (email);",
    "ALTER TABLE customers ADD COLUMN handle text UNIQUE;",
    "ALTER TABLE customers ADD CONSTRAINT email_unique UNIQUE USING INDEX customers_email_broken;",
    "ALTER TABLE customers ADD CONSTRAINT nickname_unique UNIQUE USING INDEX customers_nickname_idx;",
    "ALTER TABLE customers ADD PRIMARY KEY (id);",
    "ALTER TABLE customers ADD CONSTRAINT customers_pk PRIMARY KEY (email);",
    "ALTER TABLE customers ADD COLUMN key bigint PRIMARY KEY;",
    "ALTER TABLE orders ADD CONSTRAINT no_overlap EXCLUDE USING gist (customer_id WITH =);",
    "ALTER TABLE orders RENAME COLUMN note TO remark;",
    "ALTER TABLE archive RENAME TO old_archive;",
    "ALTER TABLE orders DROP COLUMN unused;",
    "DROP TABLE archive;",
    "CREATE INDEX CONCURRENTLY orders_note_idx ON orders (note); CREATE TABLE t2 (id int);",
    "VACUUM FULL orders;",
    "UPDATE orders SET note = 'x';",
    "ALTER TABLE ghosts ADD COLUMN x int; CREATE TABLE orders (id int); ALTER TABLE orders ALTER COLUMN ghost SET NOT NULL;",
    "DROP INDEX ghost_idx; ALTER TABLE orders VALIDATE CONSTRAINT ghost;",
    "SET LOCAL lock_timeout = '2s';",
    "DROP VIEW order_report;",
];

/// Rules whose safe way is a fixed statement sequence: their advice is SQL.
const SQL_ADVICE_RULES: [&str; 11] = [
    REQUIRE_CONCURRENT_INDEX_CREATION,
    BAN_CONCURRENT_INDEX_CREATION_IN_TRANSACTION,
    REQUIRE_CONCURRENT_INDEX_DELETION,
    BAN_CONCURRENT_INDEX_DELETION_IN_TRANSACTION,
    CONSTRAINT_MISSING_NOT_VALID,
    ADDING_FOREIGN_KEY_CONSTRAINT,
    ADDING_NOT_NULLABLE_FIELD,
    ADDING_FIELD_WITH_DEFAULT,
    DISALLOWED_UNIQUE_CONSTRAINT,
    ADDING_SERIAL_PRIMARY_KEY_FIELD,
    REQUIRE_TIMEOUT_SETTINGS,
];

#[test]
fn advice_written_as_sql_lints_without_a_blocking_finding_for_every_rule() {
    let mut fired = std::collections::BTreeSet::new();
    let mut sql_advice = std::collections::BTreeSet::new();
    for case in ADVICE_CASES {
        for (_, f) in when_linted(case).findings() {
            fired.insert(f.rule);
            // SQL advice starts with the timeout its steps need; the rest is words.
            if !f.safe_alternative.starts_with("SET lock_timeout = '2s';") {
                continue;
            }
            sql_advice.insert(f.rule);
            let advice = lint(&f.safe_alternative, &facts()).unwrap_or_else(|e| {
                panic!(
                    "advice of {} for `{case}` does not lint: {e}\n{}",
                    f.rule, f.safe_alternative
                )
            });
            let blocking: Vec<_> = advice
                .findings()
                .filter(|(_, g)| g.severity == Severity::Blocking)
                .collect();
            assert!(
                blocking.is_empty(),
                "advice of {} for `{case}`:\n{}\nis itself blocked: {blocking:#?}",
                f.rule,
                f.safe_alternative
            );
        }
    }
    let silent: Vec<_> = rules::ALL.iter().filter(|r| !fired.contains(*r)).collect();
    assert!(silent.is_empty(), "rules no case makes fire: {silent:?}");
    let in_words: Vec<_> = SQL_ADVICE_RULES
        .iter()
        .filter(|r| !sql_advice.contains(*r))
        .collect();
    assert!(in_words.is_empty(), "rules whose advice is not SQL: {in_words:?}");
}

#[test]
fn drop_index_concurrently_parses_runs_outside_a_transaction_and_passes_clean() {
    let report = when_linted(&format!(
        "{TIMEOUT}DROP INDEX CONCURRENTLY IF EXISTS orders_status_idx;"
    ));
    let drop = &report.statements[1];
    assert_eq!(drop.sql, "DROP INDEX CONCURRENTLY IF EXISTS orders_status_idx");
    assert_eq!(
        lock_on(drop, "public.orders"),
        Some(LockLevel::ShareUpdateExclusive)
    );
    assert_clean(&report);

    let split = split_script("DROP INDEX CONCURRENTLY orders_status_idx; DROP INDEX orders_pkey").unwrap();
    assert!(split[0].outside_transaction && !split[1].outside_transaction);
    assert_eq!(split[0].sql, "DROP INDEX CONCURRENTLY orders_status_idx");
}

// ---- statements only PostgreSQL's parser reads ------------------------------

#[test]
fn reindex_parses_and_without_concurrently_blocks_writes() {
    let report = when_linted(&format!(
        "{TIMEOUT}REINDEX TABLE orders;\nREINDEX INDEX orders_status_idx;\nREINDEX INDEX missing_idx;"
    ));

    for statement in &report.statements[1..3] {
        assert_eq!(lock_on(statement, "public.orders"), Some(LockLevel::Share));
        assert_eq!(rules(statement), [REQUIRE_CONCURRENT_INDEX_CREATION]);
        let advice = &finding(statement, REQUIRE_CONCURRENT_INDEX_CREATION).safe_alternative;
        assert!(advice.contains("CONCURRENTLY"), "{advice}");
    }
    assert_eq!(rules(&report.statements[3]), [INDEX_NOT_FOUND]);
}

#[test]
fn reindex_concurrently_runs_outside_a_transaction_and_passes_clean() {
    let report = when_linted(&format!(
        "{TIMEOUT}REINDEX TABLE CONCURRENTLY orders;\nREINDEX (CONCURRENTLY) INDEX orders_status_idx;"
    ));
    for statement in &report.statements[1..] {
        assert_eq!(
            lock_on(statement, "public.orders"),
            Some(LockLevel::ShareUpdateExclusive)
        );
    }
    assert_clean(&report);

    let in_transaction = when_linted(&format!(
        "{TIMEOUT}BEGIN;\nREINDEX TABLE CONCURRENTLY orders;\nCOMMIT;"
    ));
    assert_eq!(
        rules(&in_transaction.statements[2]),
        [BAN_CONCURRENT_INDEX_CREATION_IN_TRANSACTION]
    );

    let split = split_script("REINDEX TABLE CONCURRENTLY orders; REINDEX TABLE orders").unwrap();
    assert!(split[0].outside_transaction && !split[1].outside_transaction);
}

#[test]
fn cluster_parses_and_rewrites_the_table_under_access_exclusive() {
    let report = when_linted(&format!("{TIMEOUT}CLUSTER orders USING orders_pkey;"));
    let cluster = &report.statements[1];
    assert_eq!(
        lock_on(cluster, "public.orders"),
        Some(LockLevel::AccessExclusive)
    );
    assert!(cluster.rewrites_table);
    assert_eq!(rules(cluster), [TABLE_REWRITE]);
}

#[test]
fn a_do_block_parses_and_is_reported_as_unanalyzed() {
    let report = when_linted(
        "DO $$\nBEGIN\n  PERFORM 1; -- a ; inside the body\nEND\n$$;\nCOMMENT ON TABLE orders IS 'x';",
    );
    assert_eq!(report.statements.len(), 2);
    assert!(report.statements[0].sql.starts_with("DO $$"));
    assert!(report.statements[0].sql.ends_with("$$"));
    assert_eq!(rules(&report.statements[0]), [UNANALYZED_STATEMENT]);
    assert_eq!(report.statements[0].lock, None);
}

#[test]
fn create_index_concurrently_parses_and_is_linted_on_the_same_rules() {
    let report = when_linted(&format!(
        "{TIMEOUT}CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_amount_idx ON orders (amount);"
    ));
    assert_eq!(
        lock_on(&report.statements[1], "public.orders"),
        Some(LockLevel::ShareUpdateExclusive)
    );
    assert_clean(&report);
    let split = split_script("CREATE INDEX CONCURRENTLY i ON orders (amount)").unwrap();
    assert!(split[0].outside_transaction);
}

#[test]
fn invalid_sql_is_refused_by_postgres_own_parser_with_the_place() {
    let error = lint(
        "SET lock_timeout = '2s';\nCREATE INDEX CONCURRENTLY ON;\nSELECT 1;",
        &facts(),
    )
    .unwrap_err();
    let LintError::InvalidSql { statement, message } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(*statement, 2);
    assert!(
        message.starts_with("syntax error at or near \";\" at Line: 2, Column: 29"),
        "{message}"
    );

    let nul = lint("SELECT 1;\nSELECT '\0';", &facts()).unwrap_err();
    assert!(
        matches!(&nul, LintError::InvalidSql { statement: 2, message } if message.contains("Line: 2, Column: 9")),
        "{nul:?}"
    );

    let unterminated = lint("SELECT 1;\nSELECT $$open", &facts()).unwrap_err();
    let LintError::InvalidSql { statement, message } = &unterminated else {
        panic!("{unterminated:?}")
    };
    assert_eq!(*statement, 2);
    assert!(message.contains("Line: 2, Column: 8"), "{message}");
}

#[test]
fn a_predicate_too_long_for_sqlparser_is_linted_on_postgres_tree() {
    // Over the operators given to sqlparser (80,000 ORs overflowed its
    // stack); PostgreSQL flattens them.
    let sql = format!(
        "UPDATE orders SET note = 'x' WHERE {}true;\nDELETE FROM orders;",
        "id = 1 OR ".repeat(20_000)
    );
    let report = lint(&sql, &facts()).unwrap();
    let update = &report.statements[0];
    assert_eq!(lock_on(update, "public.orders"), Some(LockLevel::RowExclusive));
    assert!(update.findings.is_empty(), "{update:#?}");
    assert_eq!(rules(&report.statements[1]), [UNBATCHED_UPDATE]);
}

#[test]
fn alter_table_forms_sqlparser_cannot_read_get_postgres_lock_levels() {
    let report = when_linted(&format!(
        "{TIMEOUT}ALTER TABLE orders ALTER COLUMN note SET STATISTICS 500;\n\
         ALTER TABLE orders CLUSTER ON orders_pkey;\n\
         ALTER TABLE orders ALTER COLUMN note SET STORAGE EXTERNAL, ALTER COLUMN note SET COMPRESSION lz4;\n\
         ALTER TABLE orders SET ACCESS METHOD heap;"
    ));
    let locks: Vec<Option<LockLevel>> = report.statements[1..]
        .iter()
        .map(|s| lock_on(s, "public.orders"))
        .collect();
    assert_eq!(
        locks,
        [
            Some(LockLevel::ShareUpdateExclusive),
            Some(LockLevel::ShareUpdateExclusive),
            Some(LockLevel::AccessExclusive),
            Some(LockLevel::AccessExclusive),
        ]
    );
    for statement in &report.statements[1..4] {
        assert!(statement.findings.is_empty(), "{statement:#?}");
    }
    assert!(report.statements[4].rewrites_table);
    assert_eq!(rules(&report.statements[4]), [TABLE_REWRITE]);
}

#[test]
fn create_table_like_is_a_new_table_for_the_statements_after_it() {
    let report = when_linted(
        "CREATE TABLE orders_copy (LIKE orders INCLUDING ALL);\n\
         ALTER TABLE orders_copy ADD COLUMN region text NOT NULL;",
    );
    assert_eq!(
        lock_on(&report.statements[0], "public.orders"),
        Some(LockLevel::AccessShare)
    );
    assert_clean(&report);
    let again = when_linted("CREATE TABLE orders (LIKE customers);");
    assert_eq!(rules(&again.statements[0]), [TABLE_ALREADY_EXISTS]);
}

#[test]
fn transaction_blocks_sqlparser_cannot_read_are_tracked() {
    let report = when_linted(&format!(
        "{TIMEOUT}START TRANSACTION DEFERRABLE;\n\
         CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_amount_idx ON orders (amount);\n\
         COMMIT;\n\
         BEGIN TRANSACTION NOT DEFERRABLE;\n\
         SET LOCAL lock_timeout = '1s';\n\
         COMMIT;"
    ));
    assert_eq!(
        rules(&report.statements[2]),
        [BAN_CONCURRENT_INDEX_CREATION_IN_TRANSACTION]
    );
    assert!(
        report.statements[5].findings.is_empty(),
        "{:#?}",
        report.statements[5]
    );
}
