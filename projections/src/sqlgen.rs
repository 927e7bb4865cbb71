//! SQL for read-model tables, generated from a validated [`Definition`].
//! Identifiers come only from validated names and are quoted anyway; every
//! value is bound (as text, cast to the column's type in SQL). Pure: the
//! runtime and the query layer execute what is built here.

use crate::definition::{Column, ColumnType, Definition};

/// Schema of read-model tables and views (see migrations/0005).
pub const SCHEMA: &str = "read_models";

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn table_name(projection: &str, generation: i32) -> String {
    format!("{projection}__g{generation}")
}

/// `read_models."<name>__g<n>"`: a generation's table.
pub fn qualified_table(projection: &str, generation: i32) -> String {
    format!("{SCHEMA}.{}", quote_ident(&table_name(projection, generation)))
}

/// `read_models."<name>"`: the view readers use.
pub fn qualified_view(projection: &str) -> String {
    format!("{SCHEMA}.{}", quote_ident(projection))
}

/// Statements that create a generation's table and indexes (idempotent:
/// a runner that restarts runs them again).
pub fn create_table(definition: &Definition, generation: i32) -> Vec<String> {
    let table = qualified_table(definition.name(), generation);
    let key = definition.key();
    let mut columns = vec![format!(
        "{} {} PRIMARY KEY",
        quote_ident(&key.name),
        key.column_type.sql()
    )];
    for column in definition.columns() {
        columns.push(format!(
            "{} {}",
            quote_ident(&column.name),
            column.column_type.sql()
        ));
    }
    let mut statements = vec![format!(
        "CREATE TABLE IF NOT EXISTS {table} ({})",
        columns.join(", ")
    )];
    for column in definition.indexed_columns() {
        let index = format!("{}__{}", table_name(definition.name(), generation), column.name);
        // Index names share the 63-byte limit: cut, never fail.
        let index: String = index.chars().take(63).collect();
        statements.push(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {table} ({}, {})",
            quote_ident(&index),
            quote_ident(&column.name),
            quote_ident(&key.name)
        ));
    }
    statements
}

pub fn drop_table(projection: &str, generation: i32) -> String {
    format!("DROP TABLE IF EXISTS {}", qualified_table(projection, generation))
}

/// Points the view at `generation`. DROP + CREATE (not CREATE OR REPLACE)
/// because a new definition may have other columns; run inside the switch
/// transaction, readers see the old view or the new one, never neither.
/// `replacing` is false for a projection's first view (nothing to drop).
pub fn replace_view(projection: &str, generation: i32, replacing: bool) -> Vec<String> {
    let view = qualified_view(projection);
    let mut statements = Vec::new();
    if replacing {
        statements.push(format!("DROP VIEW IF EXISTS {view}"));
    }
    statements.push(format!(
        "CREATE VIEW {view} AS SELECT * FROM {}",
        qualified_table(projection, generation)
    ));
    statements
}

pub fn truncate(projection: &str, generation: i32) -> String {
    format!("TRUNCATE {}", qualified_table(projection, generation))
}

fn cast(column: &Column, expression: &str) -> String {
    format!("{expression}::{}", column.column_type.sql())
}

/// `DELETE` of the keys in `$1::text[]`.
pub fn delete_rows(definition: &Definition, generation: i32) -> String {
    let key = definition.key();
    format!(
        "DELETE FROM {} WHERE {} = ANY($1::text[]::{}[])",
        qualified_table(definition.name(), generation),
        quote_ident(&key.name),
        key.column_type.sql()
    )
}

/// Column modes in the patch arrays.
pub const MODE_KEEP: i16 = 0;
pub const MODE_SET: i16 = 1;
pub const MODE_ADD: i16 = 2;
pub const MODE_INSERT_ONLY: i16 = 3;

/// One MERGE for a run's patches: `$1` keys (text[]), then per column of
/// the definition a mode array (int2[]) and a value array (text[]). A row
/// that exists is updated column by column per mode; one that does not is
/// inserted (an increment of a new row starts from 0).
pub fn merge_patches(definition: &Definition, generation: i32) -> String {
    let key = definition.key();
    let mut source_columns = vec!["k".to_owned()];
    let mut unnest_args = vec!["$1::text[]".to_owned()];
    let mut updates = Vec::new();
    let mut insert_columns = vec![quote_ident(&key.name)];
    let mut insert_values = vec![cast(key, "s.k")];
    for (i, column) in definition.columns().iter().enumerate() {
        let (mode, value) = (format!("m{i}"), format!("v{i}"));
        unnest_args.push(format!("${}::int2[]", 2 + 2 * i));
        unnest_args.push(format!("${}::text[]", 3 + 2 * i));
        let name = quote_ident(&column.name);
        let typed = cast(column, &format!("s.{value}"));
        let added = if column.column_type.is_numeric() {
            format!("WHEN {MODE_ADD} THEN coalesce(t.{name}, 0) + {typed} ")
        } else {
            String::new()
        };
        updates.push(format!(
            "{name} = CASE s.{mode} WHEN {MODE_SET} THEN {typed} {added}ELSE t.{name} END"
        ));
        insert_columns.push(name);
        insert_values.push(format!(
            "CASE WHEN s.{mode} IN ({MODE_SET}, {MODE_ADD}, {MODE_INSERT_ONLY}) THEN {typed} END"
        ));
        source_columns.push(mode);
        source_columns.push(value);
    }
    let matched = if updates.is_empty() {
        "WHEN MATCHED THEN DO NOTHING".to_owned()
    } else {
        format!("WHEN MATCHED THEN UPDATE SET {}", updates.join(", "))
    };
    format!(
        "MERGE INTO {table} AS t \
         USING (SELECT * FROM unnest({args}) AS u({source})) AS s \
         ON t.{key} = {key_value} \
         {matched} \
         WHEN NOT MATCHED THEN INSERT ({insert_columns}) VALUES ({insert_values})",
        table = qualified_table(definition.name(), generation),
        args = unnest_args.join(", "),
        source = source_columns.join(", "),
        key = quote_ident(&key.name),
        key_value = cast(key, "s.k"),
        insert_columns = insert_columns.join(", "),
        insert_values = insert_values.join(", "),
    )
}

/// An upsert for a run whose patches all touch the same columns in the same
/// modes (the common case: one event type, one handler): a plain
/// `INSERT .. ON CONFLICT` over only those columns, cheaper than the MERGE.
/// Binds `$1` keys, then one text[] per touched column in definition order.
pub fn upsert_uniform(definition: &Definition, generation: i32, modes: &[i16]) -> String {
    let key = definition.key();
    let mut source_columns = vec!["k".to_owned()];
    let mut unnest_args = vec!["$1::text[]".to_owned()];
    let mut insert_columns = vec![quote_ident(&key.name)];
    let mut insert_values = vec![cast(key, "s.k")];
    let mut updates = Vec::new();
    for (column, mode) in definition.columns().iter().zip(modes) {
        if *mode == MODE_KEEP {
            continue;
        }
        let value = format!("v{}", source_columns.len());
        unnest_args.push(format!("${}::text[]", unnest_args.len() + 1));
        let name = quote_ident(&column.name);
        insert_columns.push(name.clone());
        insert_values.push(cast(column, &format!("s.{value}")));
        source_columns.push(value);
        match *mode {
            MODE_SET => updates.push(format!("{name} = EXCLUDED.{name}")),
            MODE_ADD => updates.push(format!("{name} = coalesce(t.{name}, 0) + EXCLUDED.{name}")),
            _ => {}
        }
    }
    let on_conflict = if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {} AS t ({}) SELECT {} FROM unnest({}) AS s({}) ON CONFLICT ({}) {on_conflict}",
        qualified_table(definition.name(), generation),
        insert_columns.join(", "),
        insert_values.join(", "),
        unnest_args.join(", "),
        source_columns.join(", "),
        quote_ident(&key.name),
    )
}

/// The row with key `$1`, as JSON, from the view.
pub fn get_row(definition: &Definition) -> String {
    let key = definition.key();
    format!(
        "SELECT to_jsonb(t)::text FROM {} AS t WHERE t.{} = {}",
        qualified_view(definition.name()),
        quote_ident(&key.name),
        cast(key, "$1::text")
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Prefix,
    IsNull,
    IsNotNull,
}

/// A filter on one column; `value` is the column type's canonical text.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub column: Column,
    pub op: FilterOp,
    pub value: Option<String>,
}

/// Where a page starts: after the row with this order value and key.
#[derive(Debug, Clone, PartialEq)]
pub struct After {
    pub order_value: Option<String>,
    pub key: String,
}

/// A page of rows: filters, keyset order (NULLs last, the key breaks
/// ties), `limit` rows. Returns the SQL and its bound values in order.
/// Each row comes as (json, order value as text, key as text).
pub fn list_rows(
    definition: &Definition,
    filters: &[Filter],
    order_by: &Column,
    descending: bool,
    after: Option<&After>,
    limit: usize,
) -> (String, Vec<Option<String>>) {
    let key = definition.key();
    let mut binds: Vec<Option<String>> = Vec::new();
    let mut bind = |value: Option<String>| {
        binds.push(value);
        format!("${}::text", binds.len())
    };
    let mut conditions = Vec::new();
    for filter in filters {
        let column = format!("t.{}", quote_ident(&filter.column.name));
        let condition = match filter.op {
            FilterOp::IsNull => format!("{column} IS NULL"),
            FilterOp::IsNotNull => format!("{column} IS NOT NULL"),
            FilterOp::Prefix => format!("starts_with({column}::text, {})", bind(filter.value.clone())),
            op => {
                let symbol = match op {
                    FilterOp::Eq => "=",
                    FilterOp::Ne => "<>",
                    FilterOp::Lt => "<",
                    FilterOp::Le => "<=",
                    FilterOp::Gt => ">",
                    _ => ">=",
                };
                let value = bind(filter.value.clone());
                format!("{column} {symbol} {}", cast(&filter.column, &value))
            }
        };
        conditions.push(condition);
    }
    let key_column = format!("t.{}", quote_ident(&key.name));
    let order_column = format!("t.{}", quote_ident(&order_by.name));
    let (beyond, direction) = if descending { ("<", "DESC") } else { (">", "ASC") };
    if let Some(after) = after {
        let after_key = cast(key, &bind(Some(after.key.clone())));
        if order_by.name == key.name {
            conditions.push(format!("{key_column} {beyond} {after_key}"));
        } else {
            match &after.order_value {
                Some(value) => {
                    let after_value = cast(order_by, &bind(Some(value.clone())));
                    conditions.push(format!(
                        "({order_column} {beyond} {after_value} OR ({order_column} = {after_value} AND {key_column} {beyond} {after_key}) OR {order_column} IS NULL)"
                    ));
                }
                None => conditions.push(format!(
                    "({order_column} IS NULL AND {key_column} {beyond} {after_key})"
                )),
            }
        }
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let order = if order_by.name == key.name {
        format!("{key_column} {direction}")
    } else {
        format!("{order_column} {direction} NULLS LAST, {key_column} {direction}")
    };
    let sql = format!(
        "SELECT to_jsonb(t)::text, {order_column}::text, {key_column}::text FROM {} AS t{filter} ORDER BY {order} LIMIT {limit}",
        qualified_view(definition.name())
    );
    (sql, binds)
}

/// Whether `op` makes sense for a column of this type.
pub fn filter_allowed(op: FilterOp, column_type: ColumnType) -> bool {
    match op {
        FilterOp::Prefix => column_type == ColumnType::Text,
        FilterOp::Lt | FilterOp::Le | FilterOp::Gt | FilterOp::Ge => {
            !matches!(column_type, ColumnType::Jsonb | ColumnType::Boolean)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn definition() -> Definition {
        Definition::from_json(
            &json!({"name": "user_list", "key": {"column": "user_id", "type": "uuid", "path": "$.id"},
                    "columns": {"email": "text", "logins": "integer"},
                    "handlers": {"UserCreated": {"op": "upsert", "set": {"email": "$.email"}}}})
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn merge_quotes_names_and_binds_every_value() {
        let sql = merge_patches(&definition(), 3);
        assert!(
            sql.starts_with("MERGE INTO read_models.\"user_list__g3\" AS t"),
            "{sql}"
        );
        assert!(
            sql.contains("unnest($1::text[], $2::int2[], $3::text[], $4::int2[], $5::text[])"),
            "{sql}"
        );
        assert!(sql.contains("\"logins\" = CASE s.m1 WHEN 1 THEN s.v1::bigint WHEN 2 THEN coalesce(t.\"logins\", 0) + s.v1::bigint ELSE t.\"logins\" END"), "{sql}");
    }

    #[test]
    fn a_uniform_run_is_a_plain_upsert_of_its_columns() {
        let sql = upsert_uniform(&definition(), 1, &[MODE_SET, MODE_ADD]);
        assert_eq!(
            sql,
            "INSERT INTO read_models.\"user_list__g1\" AS t (\"user_id\", \"email\", \"logins\") \
             SELECT s.k::uuid, s.v1::text, s.v2::bigint FROM unnest($1::text[], $2::text[], $3::text[]) AS s(k, v1, v2) \
             ON CONFLICT (\"user_id\") DO UPDATE SET \"email\" = EXCLUDED.\"email\", \"logins\" = coalesce(t.\"logins\", 0) + EXCLUDED.\"logins\""
        );
        let insert_only = upsert_uniform(&definition(), 1, &[MODE_INSERT_ONLY, MODE_KEEP]);
        assert!(
            insert_only.ends_with("ON CONFLICT (\"user_id\") DO NOTHING"),
            "{insert_only}"
        );
    }

    #[test]
    fn a_page_after_a_cursor_puts_nulls_last() {
        let d = definition();
        let email = d.column("email").unwrap().clone();
        let filters = [Filter {
            column: email.clone(),
            op: FilterOp::Prefix,
            value: Some("a".into()),
        }];
        let after = After {
            order_value: Some("a@x".into()),
            key: "k".into(),
        };
        let (sql, binds) = list_rows(&d, &filters, &email, false, Some(&after), 11);
        assert_eq!(
            sql,
            "SELECT to_jsonb(t)::text, t.\"email\"::text, t.\"user_id\"::text FROM read_models.\"user_list\" AS t \
             WHERE starts_with(t.\"email\"::text, $1::text) AND (t.\"email\" > $3::text::text OR (t.\"email\" = $3::text::text AND t.\"user_id\" > $2::text::uuid) OR t.\"email\" IS NULL) \
             ORDER BY t.\"email\" ASC NULLS LAST, t.\"user_id\" ASC LIMIT 11"
        );
        assert_eq!(binds, [Some("a".into()), Some("k".into()), Some("a@x".into())]);
    }

    #[test]
    fn identifiers_are_quoted_even_when_validated() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(qualified_view("x"), "read_models.\"x\"");
    }
}
