//! Splitting a migration into parsed statements with their original text.
//!
//! PostgreSQL's own parser (libpg_query, through the `pg_query` crate)
//! decides what is valid SQL: a migration is refused only when PostgreSQL
//! would refuse it at parse time, and every statement it accepts —
//! `DROP INDEX CONCURRENTLY`, `REINDEX`, `CLUSTER`, `DO` included — is
//! linted. It also splits the text into statements (dollar quoting,
//! comments and `BEGIN ATOMIC` bodies as PostgreSQL reads them) and names
//! the statement and the line and column of a parse error.
//!
//! Most lint rules are still written against `sqlparser`'s tree: each
//! statement PostgreSQL accepts is also given to sqlparser, and the
//! statements sqlparser cannot read (see [`ParsedStatement::statement`])
//! are analyzed on PostgreSQL's tree alone.

use pg_query::protobuf::{ScanToken, Token};
use pg_query::{NodeEnum, ParserOptions};
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::{LintError, SQL_BYTES_MAX, STATEMENTS_MAX};

/// At most this many operators (AND, OR, NOT, arithmetic, comparisons,
/// casts) in a statement given to sqlparser. Its trees chain binary
/// operators as deep as the chain is long and it recurses over them (to
/// drop them too) without a guard, so a long `a = 1 OR a = 2 OR ...`
/// overflows the stack (80,000 did in a test thread; 16,000 did not).
/// PostgreSQL's parser flattens AND/OR and checks its own stack depth:
/// longer statements are analyzed on its tree alone.
const SQLPARSER_OPERATORS_MAX: usize = 4096;

/// One statement of the migration.
#[derive(Debug)]
pub(crate) struct ParsedStatement {
    /// PostgreSQL's parse tree of the statement.
    pub node: NodeEnum,
    /// sqlparser's tree of the same statement, which the table-level rules
    /// read; `None` where sqlparser cannot parse what PostgreSQL accepts
    /// (`REINDEX`, `CLUSTER`, `DO`, ...): such statements are analyzed on
    /// [`ParsedStatement::node`].
    pub statement: Option<Statement>,
    /// The text as written, from its first to its last token.
    pub text: String,
    /// `DROP INDEX CONCURRENTLY` (sqlparser is given the statement
    /// without the keyword, which it does not parse; the text keeps it).
    pub drop_index_concurrently: bool,
}

impl ParsedStatement {
    /// A CONCURRENTLY form that PostgreSQL refuses inside a transaction
    /// block: CREATE INDEX, DROP INDEX, REINDEX and ALTER TABLE ... DETACH
    /// PARTITION.
    pub(crate) fn concurrently(&self) -> bool {
        match &self.node {
            NodeEnum::IndexStmt(s) => s.concurrent,
            NodeEnum::DropStmt(s) => s.concurrent,
            NodeEnum::ReindexStmt(s) => option_enabled(&s.params, "concurrently"),
            NodeEnum::AlterTableStmt(s) => s.cmds.iter().any(|cmd| match &cmd.node {
                Some(NodeEnum::AlterTableCmd(cmd)) => matches!(
                    cmd.def.as_deref().and_then(|d| d.node.as_ref()),
                    Some(NodeEnum::PartitionCmd(p)) if p.concurrent
                ),
                _ => false,
            }),
            _ => false,
        }
    }

    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT and the like.
    pub(crate) fn transaction_control(&self) -> bool {
        matches!(self.node, NodeEnum::TransactionStmt(_))
    }

    /// A statement that PostgreSQL refuses inside a transaction block:
    /// the CONCURRENTLY forms and VACUUM.
    pub(crate) fn outside_transaction(&self) -> bool {
        self.concurrently() || matches!(&self.node, NodeEnum::VacuumStmt(v) if v.is_vacuumcmd)
    }
}

/// Whether the utility option `name` (e.g. `CONCURRENTLY` of REINDEX,
/// written bare or as `(CONCURRENTLY true)`) is on.
pub(crate) fn option_enabled(options: &[pg_query::Node], name: &str) -> bool {
    options.iter().any(|option| match &option.node {
        Some(NodeEnum::DefElem(def)) if def.defname == name => {
            match def.arg.as_deref().and_then(|a| a.node.as_ref()) {
                None => true,
                Some(NodeEnum::Boolean(b)) => b.boolval,
                Some(NodeEnum::Integer(i)) => i.ival != 0,
                Some(NodeEnum::String(s)) => {
                    !matches!(s.sval.to_ascii_lowercase().as_str(), "false" | "off" | "0" | "no")
                }
                Some(_) => true,
            }
        }
        _ => false,
    })
}

/// Parses `sql` into statements, within [`SQL_BYTES_MAX`] and [`STATEMENTS_MAX`].
pub(crate) fn parse_migration(sql: &str) -> Result<Vec<ParsedStatement>, LintError> {
    if sql.len() > SQL_BYTES_MAX {
        return Err(LintError::TooLarge {
            size_bytes: sql.len(),
            sql_bytes_max: SQL_BYTES_MAX,
        });
    }
    let parsed = pg_query::parse(sql, 0).map_err(|e| invalid_sql(sql, &e))?;
    let raw = parsed.protobuf.stmts;
    if raw.len() > STATEMENTS_MAX {
        return Err(LintError::TooManyStatements {
            statements_max: STATEMENTS_MAX,
        });
    }
    if raw.is_empty() {
        return Err(LintError::Empty);
    }
    // The text parsed, so it scans.
    let tokens = pg_query::scan(sql).map(|s| s.tokens).unwrap_or_default();
    let mut statements = Vec::with_capacity(raw.len());
    for (number, raw) in raw.into_iter().enumerate() {
        let start = usize::try_from(raw.stmt_location).unwrap_or(0).min(sql.len());
        let end = match usize::try_from(raw.stmt_len) {
            Ok(0) | Err(_) => sql.len(),
            Ok(len) => (start + len).min(sql.len()),
        };
        let Some(node) = raw.stmt.and_then(|n| n.node) else {
            return Err(LintError::InvalidSql {
                statement: number + 1,
                message: "PostgreSQL's parser returned no tree for the statement".to_owned(),
            });
        };
        let own: Vec<&ScanToken> = tokens
            .iter()
            .filter(|t| offset(t.start) >= start && offset(t.end) <= end && !is_comment(t))
            .collect();
        let text = match (own.first(), own.last()) {
            (Some(first), Some(last)) => &sql[offset(first.start)..offset(last.end)],
            _ => &sql[start..end],
        };
        let drop_index_concurrently = matches!(&node, NodeEnum::DropStmt(d) if d.concurrent);
        let for_sqlparser = if drop_index_concurrently {
            without_concurrently(sql, &own)
        } else {
            text.to_owned()
        };
        let statement = if operators(&own) <= SQLPARSER_OPERATORS_MAX {
            sqlparser_tree(&for_sqlparser)
        } else {
            None
        };
        statements.push(ParsedStatement {
            node,
            statement,
            text: text.trim().to_owned(),
            drop_index_concurrently,
        });
    }
    Ok(statements)
}

/// sqlparser's tree of one statement, `None` when sqlparser refuses it or
/// reads it as more than one statement.
fn sqlparser_tree(text: &str) -> Option<Statement> {
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, text).ok()?;
    (statements.len() == 1).then(|| statements.remove(0))
}

/// The statement's text without its first `CONCURRENTLY` keyword.
fn without_concurrently(sql: &str, tokens: &[&ScanToken]) -> String {
    let (Some(first), Some(last)) = (tokens.first(), tokens.last()) else {
        return String::new();
    };
    let (from, to) = (offset(first.start), offset(last.end));
    match tokens.iter().find(|t| t.token == Token::Concurrently as i32) {
        Some(c) => format!("{}{}", &sql[from..offset(c.start)], &sql[offset(c.end)..to]),
        None => sql[from..to].to_owned(),
    }
}

/// How many operator tokens `tokens` has.
fn operators(tokens: &[&ScanToken]) -> usize {
    const OPERATORS: [Token; 17] = [
        Token::Ascii37,
        Token::Ascii42,
        Token::Ascii43,
        Token::Ascii45,
        Token::Ascii47,
        Token::Ascii60,
        Token::Ascii61,
        Token::Ascii62,
        Token::Ascii94,
        Token::Op,
        Token::Typecast,
        Token::LessEquals,
        Token::GreaterEquals,
        Token::NotEquals,
        Token::And,
        Token::Or,
        Token::Not,
    ];
    tokens
        .iter()
        .filter(|t| OPERATORS.iter().any(|o| *o as i32 == t.token))
        .count()
}

fn offset(position: i32) -> usize {
    usize::try_from(position).unwrap_or(0)
}

fn is_comment(token: &ScanToken) -> bool {
    token.token == Token::SqlComment as i32 || token.token == Token::CComment as i32
}

/// The error for a migration PostgreSQL's parser refused: the statement it
/// is in and the line and column where the parser stopped (the crate
/// reports only the message, so the place is found again by parsing
/// prefixes of the text).
fn invalid_sql(sql: &str, error: &pg_query::Error) -> LintError {
    let message = parser_message(error);
    let at = match error {
        // The text cannot be handed to the C parser at all.
        pg_query::Error::Conversion(_) => sql.find('\0').unwrap_or(0),
        _ => error_position(sql, &message, ParserOptions::DEFAULT),
    };
    let (line, column) = line_column(sql, at);
    let message = if message.starts_with("memory exhausted") {
        format!("the statement nests deeper than the parser's recursion limit allows ({message})")
    } else {
        message
    };
    LintError::InvalidSql {
        statement: statement_number(sql, at),
        message: format!("{message} at Line: {line}, Column: {column}"),
    }
}

/// The parser's own message, without the crate's prefix.
pub(crate) fn parser_message(error: &pg_query::Error) -> String {
    match error {
        pg_query::Error::Parse(message) | pg_query::Error::Scan(message) => message.clone(),
        other => other.to_string(),
    }
}

/// Byte offset of the token the parser (in the mode `options`) stopped at.
pub(crate) fn error_position(sql: &str, message: &str, options: ParserOptions) -> usize {
    if message.contains("at end of input") {
        return sql.trim_end().len();
    }
    match pg_query::scan(sql) {
        // A syntax error: the first token whose prefix of the text fails
        // other than "at end of input" (prefixes that stop before it parse,
        // or are only incomplete).
        Ok(scanned) => {
            let tokens = scanned.tokens;
            let fails_at = |t: &ScanToken| match pg_query::parse(&sql[..offset(t.end)], options) {
                Ok(_) => false,
                Err(e) => !e.to_string().contains("at end of input"),
            };
            let first = tokens.partition_point(|t| !fails_at(t));
            tokens.get(first).map_or(sql.len(), |t| offset(t.start))
        }
        // A lexical error (an unterminated string, a bad escape): the first
        // place the message's text starts at where what comes before scans.
        Err(_) => near_text(message)
            .and_then(|near| {
                sql.match_indices(near)
                    .map(|(i, _)| i)
                    .find(|&i| pg_query::scan(&sql[..i]).is_ok())
            })
            .unwrap_or(0),
    }
}

/// The text of `... at or near "<text>"`.
fn near_text(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("at or near \"")?;
    let end = rest.rfind('"')?;
    Some(&rest[..end]).filter(|near| !near.is_empty())
}

/// The 1-based number of the statement that byte `at` is in: one more than
/// the statements that end (with `;`) before it.
fn statement_number(sql: &str, at: usize) -> usize {
    let before = &sql[..at.min(sql.len())];
    let tokens = match pg_query::scan(before) {
        Ok(scanned) => scanned.tokens,
        // `at` is inside a token (a NUL byte in a string): the tokens of
        // the whole text, NULs blanked, that end before it.
        Err(_) => match pg_query::scan(&sql.replace('\0', " ")) {
            Ok(scanned) => scanned
                .tokens
                .into_iter()
                .filter(|t| offset(t.end) <= at)
                .collect(),
            Err(_) => return 1,
        },
    };
    let Some(last_end) = tokens
        .iter()
        .rev()
        .find(|t| t.token == Token::Ascii59 as i32)
        .map(|t| offset(t.end))
    else {
        return 1;
    };
    match pg_query::parse(&sql[..last_end], 0) {
        Ok(done) => done.protobuf.stmts.len() + 1,
        // A `;` inside a statement (BEGIN ATOMIC): count the separators.
        Err(_) => tokens.iter().filter(|t| t.token == Token::Ascii59 as i32).count() + 1,
    }
}

/// 1-based line and column (in characters) of byte `at`.
pub(crate) fn line_column(sql: &str, at: usize) -> (usize, usize) {
    let before = &sql[..at.min(sql.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}
