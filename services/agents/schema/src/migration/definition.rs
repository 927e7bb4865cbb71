//! What a migration is: a name and a list of operations, written as JSON,
//! YAML or plain SQL, validated before anything looks at a database.
//!
//! Structured operations (`rename_column`, `alter_column`, `add_column`,
//! `drop_column`, `create_index`) are run as expand/contract; `sql` runs
//! as written (linted first) with its optional `down` for rollback.
//! Type names, defaults and the `up`/`down` expressions are SQL fragments
//! placed into generated DDL (DDL cannot bind values), so each is parsed
//! as exactly one type or one expression by PostgreSQL's parser first: a stray
//! `;` or an unbalanced quote is an error here, not a surprise there.

use pg_query::protobuf::{SelectStmt, Token};
use pg_query::{NodeEnum, ParserOptions};
use serde::{Deserialize, Serialize};

use crate::lint::parse::{error_position, line_column, parser_message};

/// Bytes of a migration's definition at most (512 KiB): the definition is
/// kept in its `MigrationStarted` event, within the store's event size.
pub const DEFINITION_BYTES_MAX: usize = 512 << 10;
/// Operations of one migration at most.
pub const OPERATIONS_MAX: usize = 100;
/// Characters of a migration's name at most (its version schema is
/// `<schema>_<name>`, within PostgreSQL's 63 bytes).
pub const NAME_CHARS_MAX: usize = 40;
/// Bytes of an identifier (PostgreSQL's NAMEDATALEN - 1).
pub const IDENTIFIER_BYTES_MAX: usize = 63;
/// Names starting with this are the migration engine's own.
pub const RESERVED_PREFIX: &str = "_dbswarm";
/// The dollar quote of generated function bodies.
pub const BODY_QUOTE: &str = "$dbswarm$";
/// In a `.sql` migration, the line that starts the rollback part.
pub const SQL_DOWN_MARKER: &str = "-- dbswarm:down";

/// A named migration of one schema of a target database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    /// `[a-z0-9_]`, at most [`NAME_CHARS_MAX`]; unique per target.
    pub name: String,
    /// The schema of the tables it names and of its version schema.
    #[serde(default = "public_schema")]
    pub schema: String,
    pub operations: Vec<Operation>,
}

fn public_schema() -> String {
    "public".to_owned()
}

/// One step of a migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// SQL run as written (after lint); `down` undoes it on rollback.
    /// `allow` lists lint rules whose blocking findings are accepted.
    Sql {
        up: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        down: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        allow: Vec<String>,
    },
    /// The new version sees `from` as `to`; the column is renamed on complete.
    RenameColumn { table: String, from: String, to: String },
    /// A new type and/or NOT NULL: a new column beside the old one, kept in
    /// sync both ways, backfilled, swapped in on complete.
    AlterColumn {
        table: String,
        column: String,
        /// The new type; absent: the type stays.
        #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
        type_name: Option<String>,
        /// Make the column NOT NULL (through a validated CHECK, no long lock).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        not_null: bool,
        /// The new value from the old row (old column names); default: the
        /// column, cast to the new type.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        up: Option<String>,
        /// The old value from the new row (new column names); default: the
        /// column, cast to the old type.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        down: Option<String>,
    },
    /// A column only the new version sees until complete; `up` fills it
    /// from the old row (for existing rows and old writers).
    AddColumn {
        table: String,
        column: String,
        #[serde(rename = "type")]
        type_name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        not_null: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        up: Option<String>,
    },
    /// The new version no longer sees the column; dropped on complete.
    /// `down` fills it from the new row for new writers.
    DropColumn {
        table: String,
        column: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        down: Option<String>,
    },
    /// CREATE INDEX CONCURRENTLY (an invalid leftover of a failed build is
    /// dropped and built again).
    CreateIndex {
        name: String,
        table: String,
        columns: Vec<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unique: bool,
    },
}

impl Operation {
    /// The operation's name as written in a definition.
    pub fn kind(&self) -> &'static str {
        match self {
            Operation::Sql { .. } => "sql",
            Operation::RenameColumn { .. } => "rename_column",
            Operation::AlterColumn { .. } => "alter_column",
            Operation::AddColumn { .. } => "add_column",
            Operation::DropColumn { .. } => "drop_column",
            Operation::CreateIndex { .. } => "create_index",
        }
    }

    /// The table a structured operation changes.
    pub fn table(&self) -> Option<&str> {
        match self {
            Operation::Sql { .. } => None,
            Operation::RenameColumn { table, .. }
            | Operation::AlterColumn { table, .. }
            | Operation::AddColumn { table, .. }
            | Operation::DropColumn { table, .. }
            | Operation::CreateIndex { table, .. } => Some(table),
        }
    }

    /// The existing column a column operation works on (none for add).
    pub fn existing_column(&self) -> Option<&str> {
        match self {
            Operation::RenameColumn { from, .. } => Some(from),
            Operation::AlterColumn { column, .. } | Operation::DropColumn { column, .. } => Some(column),
            _ => None,
        }
    }
}

/// How a definition is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    /// Plain SQL: `up`, then optionally [`SQL_DOWN_MARKER`] and `down`.
    Sql,
}

impl Format {
    /// By file extension (`json`, `yaml`/`yml`, `sql`).
    pub fn from_extension(extension: &str) -> Option<Format> {
        match extension {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            "sql" => Some(Format::Sql),
            _ => None,
        }
    }
}

/// Why a definition is not a valid migration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("the migration's definition is {size_bytes} bytes; at most {DEFINITION_BYTES_MAX} are accepted")]
    TooLarge { size_bytes: usize },
    #[error("the migration's definition is not valid {format}: {message}")]
    Syntax { format: &'static str, message: String },
    #[error("migration '{name}': {message}")]
    Invalid { name: String, message: String },
}

impl Migration {
    /// Reads and validates a definition. `name` names a SQL migration (and
    /// must match the `name` a JSON/YAML one gives, when both are known).
    pub fn parse(text: &str, format: Format, name: Option<&str>) -> Result<Migration, DefinitionError> {
        if text.len() > DEFINITION_BYTES_MAX {
            return Err(DefinitionError::TooLarge {
                size_bytes: text.len(),
            });
        }
        let migration = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| DefinitionError::Syntax {
                format: "JSON",
                message: e.to_string(),
            })?,
            Format::Yaml => {
                // Through a JSON value: operations are written as maps
                // (`- rename_column: {...}`), which serde_norway reads
                // into enums only as YAML tags.
                let value: serde_json::Value =
                    serde_norway::from_str(text).map_err(|e| DefinitionError::Syntax {
                        format: "YAML",
                        message: e.to_string(),
                    })?;
                serde_json::from_value(value).map_err(|e| DefinitionError::Syntax {
                    format: "YAML",
                    message: e.to_string(),
                })?
            }
            Format::Sql => {
                let name = name.ok_or_else(|| DefinitionError::Syntax {
                    format: "SQL",
                    message: "a SQL migration needs a name (its file name)".into(),
                })?;
                from_sql(name, text)
            }
        };
        if let Some(expected) = name
            && migration.name != expected
        {
            return Err(DefinitionError::Invalid {
                name: migration.name,
                message: format!("is named '{expected}' by its file; the two must agree"),
            });
        }
        migration.validate()?;
        Ok(migration)
    }

    /// Reads a definition given as a JSON value (a workflow's parameter).
    pub fn from_value(value: serde_json::Value) -> Result<Migration, DefinitionError> {
        let migration: Migration = serde_json::from_value(value).map_err(|e| DefinitionError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?;
        migration.validate()?;
        Ok(migration)
    }

    /// The schema whose views show the migration's new version.
    pub fn version_schema(&self) -> String {
        version_schema(&self.schema, &self.name)
    }

    /// Whether every operation can be undone by rollback.
    pub fn reversible(&self) -> bool {
        self.operations
            .iter()
            .all(|op| !matches!(op, Operation::Sql { down: None, .. }))
    }

    fn invalid(&self, message: impl Into<String>) -> DefinitionError {
        DefinitionError::Invalid {
            name: self.name.clone(),
            message: message.into(),
        }
    }

    fn validate(&self) -> Result<(), DefinitionError> {
        validate_name(&self.name).map_err(|m| self.invalid(m))?;
        identifier(&self.schema, "schema").map_err(|m| self.invalid(m))?;
        if self.version_schema().len() > IDENTIFIER_BYTES_MAX {
            return Err(self.invalid(format!(
                "its version schema '{}' would be longer than {IDENTIFIER_BYTES_MAX} bytes; use a shorter name",
                self.version_schema()
            )));
        }
        if self.operations.is_empty() {
            return Err(self.invalid("has no operations"));
        }
        if self.operations.len() > OPERATIONS_MAX {
            return Err(self.invalid(format!(
                "has {} operations; at most {OPERATIONS_MAX} are allowed",
                self.operations.len()
            )));
        }
        let mut columns_touched: Vec<(&str, &str)> = Vec::new();
        for (index, op) in self.operations.iter().enumerate() {
            let at = |m: String| self.invalid(format!("operation {} ({}): {m}", index + 1, op.kind()));
            validate_operation(op).map_err(at)?;
            for column in columns_of(op) {
                let key = (op.table().unwrap_or_default(), column);
                if columns_touched.contains(&key) {
                    return Err(at(format!(
                        "column '{}' of '{}' is changed by an earlier operation too; one operation per column per migration",
                        key.1, key.0
                    )));
                }
                columns_touched.push(key);
            }
        }
        Ok(())
    }
}

/// `<schema>_<migration>`.
pub fn version_schema(schema: &str, migration: &str) -> String {
    format!("{schema}_{migration}")
}

/// The columns an operation names (old and new names of a rename).
fn columns_of(op: &Operation) -> Vec<&str> {
    match op {
        Operation::RenameColumn { from, to, .. } => vec![from, to],
        Operation::AlterColumn { column, .. }
        | Operation::AddColumn { column, .. }
        | Operation::DropColumn { column, .. } => vec![column],
        Operation::Sql { .. } | Operation::CreateIndex { .. } => Vec::new(),
    }
}

fn from_sql(name: &str, text: &str) -> Migration {
    let (up, down) = match text.find(SQL_DOWN_MARKER) {
        Some(at) => (
            &text[..at],
            Some(text[at + SQL_DOWN_MARKER.len()..].trim().to_owned()),
        ),
        None => (text, None),
    };
    Migration {
        name: name.to_owned(),
        schema: public_schema(),
        operations: vec![Operation::Sql {
            up: up.trim().to_owned(),
            down: down.filter(|d| !d.is_empty()),
            allow: Vec::new(),
        }],
    }
}

fn validate_name(name: &str) -> Result<(), String> {
    let well_formed = !name.is_empty()
        && name.len() <= NAME_CHARS_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "the name must be 1 to {NAME_CHARS_MAX} characters of a-z, 0-9 and _ (e.g. 0002_rename_email)"
        ))
    }
}

/// A table, column or index name as stored in the catalog.
fn identifier(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > IDENTIFIER_BYTES_MAX {
        return Err(format!(
            "the {what} name '{name}' must be 1 to {IDENTIFIER_BYTES_MAX} bytes"
        ));
    }
    if name.contains('\0') {
        return Err(format!("the {what} name '{name}' contains a NUL byte"));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "the {what} name '{name}' starts with '{RESERVED_PREFIX}', which the migration engine reserves"
        ));
    }
    Ok(())
}

fn validate_operation(op: &Operation) -> Result<(), String> {
    if let Some(table) = op.table() {
        identifier(table, "table")?;
    }
    match op {
        Operation::Sql { up, down, .. } => {
            if up.trim().is_empty() {
                return Err("'up' is empty".into());
            }
            if down.as_deref().is_some_and(|d| d.trim().is_empty()) {
                return Err("'down' is empty; leave it out when there is none".into());
            }
        }
        Operation::RenameColumn { from, to, .. } => {
            identifier(from, "column")?;
            identifier(to, "column")?;
            if from == to {
                return Err(format!("renames '{from}' to itself"));
            }
        }
        Operation::AlterColumn {
            column,
            type_name,
            not_null,
            up,
            down,
            ..
        } => {
            identifier(column, "column")?;
            if type_name.is_none() && !not_null {
                return Err("changes nothing: give 'type' and/or 'not_null: true'".into());
            }
            if let Some(type_name) = type_name {
                sql_type(type_name)?;
            }
            optional_expression(up.as_deref(), "up")?;
            optional_expression(down.as_deref(), "down")?;
        }
        Operation::AddColumn {
            column,
            type_name,
            default,
            up,
            ..
        } => {
            identifier(column, "column")?;
            sql_type(type_name)?;
            optional_expression(default.as_deref(), "default")?;
            optional_expression(up.as_deref(), "up")?;
        }
        Operation::DropColumn { column, down, .. } => {
            identifier(column, "column")?;
            optional_expression(down.as_deref(), "down")?;
        }
        Operation::CreateIndex { name, columns, .. } => {
            identifier(name, "index")?;
            if columns.is_empty() {
                return Err("'columns' is empty".into());
            }
            for column in columns {
                identifier(column, "column")?;
            }
        }
    }
    Ok(())
}

fn optional_expression(text: Option<&str>, what: &str) -> Result<(), String> {
    match text {
        Some(text) => sql_expression(text, what),
        None => Ok(()),
    }
}

/// `text` is exactly one SQL expression: PostgreSQL's parser reads
/// `SELECT <text>` as one statement with one output expression and no
/// other clause.
pub fn sql_expression(text: &str, what: &str) -> Result<(), String> {
    if text.contains(BODY_QUOTE) {
        return Err(format!(
            "'{what}' must not contain {BODY_QUOTE}, which quotes the sync trigger's body"
        ));
    }
    const SELECT: &str = "SELECT ";
    let query = format!("{SELECT}{text}");
    let parsed = pg_query::parse(&query, ParserOptions::DEFAULT).map_err(|error| {
        let message = parser_message(&error);
        let at = error_position(&query, &message, ParserOptions::DEFAULT).saturating_sub(SELECT.len());
        let (line, column) = line_column(text, at);
        format!("'{what}' is not a SQL expression: {message} (line {line}, column {column})")
    })?;
    // A `;` ends the statement (and may start another): the fragment
    // would end the generated one.
    let semicolon = pg_query::scan(&query).ok().and_then(|scanned| {
        scanned
            .tokens
            .into_iter()
            .find(|t| t.token == Token::Ascii59 as i32)
    });
    if let Some(semicolon) = semicolon {
        let at = usize::try_from(semicolon.start)
            .unwrap_or(0)
            .saturating_sub(SELECT.len());
        let (line, column) = line_column(text, at);
        return Err(format!(
            "'{what}' must be one SQL expression, but goes on at ';' (line {line}, column {column})"
        ));
    }
    let statements = &parsed.protobuf.stmts;
    match statements
        .first()
        .and_then(|s| s.stmt.as_ref())
        .and_then(|s| s.node.as_ref())
    {
        Some(NodeEnum::SelectStmt(select)) if lone_expression(select) => Ok(()),
        Some(NodeEnum::SelectStmt(select)) if select.target_list.is_empty() => {
            Err(format!("'{what}' is not a SQL expression: it is empty"))
        }
        _ => Err(format!(
            "'{what}' must be one SQL expression, but reads as more (a list, an alias or a clause such as FROM or WHERE)"
        )),
    }
}

/// `SELECT <one expression>`, nothing else.
fn lone_expression(select: &SelectStmt) -> bool {
    let [target] = select.target_list.as_slice() else {
        return false;
    };
    let unnamed = matches!(&target.node, Some(NodeEnum::ResTarget(t)) if t.name.is_empty());
    unnamed
        && select.distinct_clause.is_empty()
        && select.into_clause.is_none()
        && select.from_clause.is_empty()
        && select.where_clause.is_none()
        && select.group_clause.is_empty()
        && select.having_clause.is_none()
        && select.window_clause.is_empty()
        && select.values_lists.is_empty()
        && select.sort_clause.is_empty()
        && select.limit_offset.is_none()
        && select.limit_count.is_none()
        && select.locking_clause.is_empty()
        && select.with_clause.is_none()
        && select.larg.is_none()
        && select.rarg.is_none()
}

/// `text` is exactly one SQL type name, as PostgreSQL's parser reads one.
pub fn sql_type(text: &str) -> Result<(), String> {
    let Err(error) = pg_query::parse(text, ParserOptions::TYPE_NAME) else {
        return Ok(());
    };
    let message = parser_message(&error);
    let at = error_position(text, &message, ParserOptions::TYPE_NAME);
    let (line, column) = line_column(text, at);
    let before = text[..at].trim_end();
    if !before.is_empty() && pg_query::parse(before, ParserOptions::TYPE_NAME).is_ok() {
        let rest = text[at..].split_whitespace().next().unwrap_or_default();
        return Err(format!(
            "'type' must be one SQL type, but goes on at '{rest}' (line {line}, column {column})"
        ));
    }
    Err(format!(
        "'type' is not a SQL type: {message} (line {line}, column {column})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENAME_AND_RETYPE: &str = r#"
name: 0002_accounts
operations:
  - rename_column: {table: pgbench_accounts, from: filler, to: note}
  - alter_column: {table: pgbench_accounts, column: abalance, type: bigint}
"#;

    #[test]
    fn yaml_and_json_read_the_same() {
        let yaml = Migration::parse(RENAME_AND_RETYPE, Format::Yaml, None).unwrap();
        let json = serde_json::to_string(&yaml).unwrap();
        let again = Migration::parse(&json, Format::Json, Some("0002_accounts")).unwrap();
        assert_eq!(yaml, again);
        assert_eq!(yaml.schema, "public");
        assert_eq!(yaml.version_schema(), "public_0002_accounts");
        assert_eq!(
            yaml.operations[1],
            Operation::AlterColumn {
                table: "pgbench_accounts".into(),
                column: "abalance".into(),
                type_name: Some("bigint".into()),
                not_null: false,
                up: None,
                down: None,
            }
        );
        assert!(yaml.reversible());
    }

    #[test]
    fn sql_migrations_split_at_the_down_marker() {
        let text = "CREATE TABLE roles (id int);\n-- dbswarm:down\nDROP TABLE roles;\n";
        let m = Migration::parse(text, Format::Sql, Some("0003_roles")).unwrap();
        assert_eq!(
            m.operations,
            vec![Operation::Sql {
                up: "CREATE TABLE roles (id int);".into(),
                down: Some("DROP TABLE roles;".into()),
                allow: Vec::new(),
            }]
        );
        let without = Migration::parse("CREATE TABLE x (id int)", Format::Sql, Some("x")).unwrap();
        assert!(!without.reversible());
        let unnamed = Migration::parse(text, Format::Sql, None).unwrap_err();
        assert!(unnamed.to_string().contains("needs a name"), "{unnamed}");
    }

    /// The migration shown in the README, as written there.
    #[test]
    fn the_readme_migration_is_valid() {
        let readme = include_str!("../../../../../README.md");
        let yaml = readme
            .split("```yaml\n")
            .find(|block| block.starts_with("name: 0002_accounts"))
            .and_then(|rest| rest.split("```").next())
            .expect("the migration example in the README");
        let migration = Migration::parse(yaml, Format::Yaml, None).unwrap();
        assert_eq!(migration.operations.len(), 7);
    }

    fn invalid(text: &str) -> String {
        Migration::parse(text, Format::Yaml, None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_definitions_are_named_precisely() {
        assert!(invalid("name: Bad-Name\noperations: [{sql: {up: 'select 1'}}]").contains("a-z, 0-9"));
        assert!(invalid("name: x\noperations: []").contains("has no operations"));
        assert!(invalid("name: x\noperations: [{frobnicate: {}}]").contains("unknown variant"));
        assert!(invalid("name: x\nops: []").contains("unknown field"));
        let semicolon = invalid(
            "name: x\noperations: [{alter_column: {table: t, column: c, type: int, up: 'c; drop table t'}}]",
        );
        assert!(
            semicolon.contains("'up' must be one SQL expression"),
            "{semicolon}"
        );
        let bad_type =
            invalid("name: x\noperations: [{alter_column: {table: t, column: c, type: 'int int'}}]");
        assert!(bad_type.contains("'type' must be one SQL type"), "{bad_type}");
        let nothing = invalid("name: x\noperations: [{alter_column: {table: t, column: c}}]");
        assert!(
            nothing.contains("operation 1 (alter_column): changes nothing"),
            "{nothing}"
        );
        let twice = invalid(
            "name: x\noperations:\n- rename_column: {table: t, from: a, to: b}\n- drop_column: {table: t, column: a}",
        );
        assert!(
            twice.contains("operation 2 (drop_column): column 'a' of 't'"),
            "{twice}"
        );
        let reserved = invalid("name: x\noperations: [{drop_column: {table: t, column: _dbswarm_new_a}}]");
        assert!(reserved.contains("reserves"), "{reserved}");
        let long = format!(
            "name: {}\noperations: [{{sql: {{up: 'select 1'}}}}]",
            "a".repeat(41)
        );
        assert!(invalid(&long).contains("1 to 40 characters"));
        let mismatch = Migration::parse(RENAME_AND_RETYPE, Format::Yaml, Some("0003_other")).unwrap_err();
        assert!(mismatch.to_string().contains("must agree"), "{mismatch}");
    }

    #[test]
    fn fragments_are_read_by_postgres_own_parser() {
        assert_eq!(sql_expression("lower(c) || 'x;y'", "up"), Ok(()));
        assert_eq!(sql_expression("CASE WHEN c > 0 THEN c END", "up"), Ok(()));
        let trailing = sql_expression("c;", "up").unwrap_err();
        assert!(
            trailing.contains("goes on at ';' (line 1, column 2)"),
            "{trailing}"
        );
        let clause = sql_expression("1 FROM t WHERE (1", "up").unwrap_err();
        assert!(
            clause.contains("is not a SQL expression: syntax error"),
            "{clause}"
        );
        let query = sql_expression("1 FROM t", "up").unwrap_err();
        assert!(query.contains("must be one SQL expression"), "{query}");
        let alias = sql_expression("c AS d", "up").unwrap_err();
        assert!(alias.contains("must be one SQL expression"), "{alias}");
        assert!(sql_expression("  ", "up").unwrap_err().contains("empty"));

        assert_eq!(sql_type("timestamp with time zone"), Ok(()));
        assert_eq!(sql_type("numeric(10, 2)[]"), Ok(()));
        let two = sql_type("int int").unwrap_err();
        assert!(two.contains("goes on at 'int' (line 1, column 5)"), "{two}");
        let bad = sql_type("(int").unwrap_err();
        assert!(bad.starts_with("'type' is not a SQL type: syntax error"), "{bad}");
    }
}
