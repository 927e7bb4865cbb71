//! Splitting a migration into parsed statements with their original text.
//!
//! The whole text is tokenized once by sqlparser's tokenizer (which knows
//! PostgreSQL's strings, dollar quoting and comments), then statements are
//! parsed one by one from the token stream, so a parse error names the
//! statement it is in and every statement keeps its text as written.

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use super::{LintError, SQL_BYTES_MAX, STATEMENTS_MAX};

/// One statement of the migration.
#[derive(Debug)]
pub(crate) struct ParsedStatement {
    /// The parser's tree.
    pub statement: Statement,
    /// The text as written, from its first to its last token.
    pub text: String,
    /// `DROP INDEX CONCURRENTLY`, which sqlparser does not parse: the
    /// keyword is taken out before parsing (the text keeps it).
    pub drop_index_concurrently: bool,
}

/// Parses `sql` into statements, within [`SQL_BYTES_MAX`] and [`STATEMENTS_MAX`].
pub(crate) fn parse_migration(sql: &str) -> Result<Vec<ParsedStatement>, LintError> {
    if sql.len() > SQL_BYTES_MAX {
        return Err(LintError::TooLarge {
            size_bytes: sql.len(),
            sql_bytes_max: SQL_BYTES_MAX,
        });
    }
    let dialect = PostgreSqlDialect {};
    let mut tokens = Vec::new();
    if let Err(e) = Tokenizer::new(&dialect, sql).tokenize_with_location_into_buf(&mut tokens) {
        // The buffer holds the tokens before the error: the error is in the
        // statement after the complete ones among them.
        return Err(LintError::InvalidSql {
            statement: complete_statements(&tokens) + 1,
            message: e.to_string(),
        });
    }
    let concurrently_at = take_drop_index_concurrently(&mut tokens);
    let offsets = LineOffsets::new(sql);
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let mut statements = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        if parser.peek_token_ref().token == Token::EOF {
            break;
        }
        let number = statements.len() + 1;
        if number > STATEMENTS_MAX {
            return Err(LintError::TooManyStatements {
                statements_max: STATEMENTS_MAX,
            });
        }
        let start = parser.peek_token_ref().span.start;
        let statement = parser.parse_statement().map_err(|e| LintError::InvalidSql {
            statement: number,
            message: e.to_string(),
        })?;
        let end = parser.get_current_token().span.end;
        let next = parser.peek_token_ref();
        if next.token != Token::SemiColon && next.token != Token::EOF {
            return Err(LintError::InvalidSql {
                statement: number,
                message: format!(
                    "expected `;` or the end of the migration after the statement, found `{}` at line {}, column {}",
                    next.token, next.span.start.line, next.span.start.column
                ),
            });
        }
        let text = sql[offsets.byte(sql, start)..offsets.byte(sql, end)]
            .trim()
            .to_owned();
        let within = |at: &Location| {
            (start.line, start.column) <= (at.line, at.column)
                && (at.line, at.column) <= (end.line, end.column)
        };
        statements.push(ParsedStatement {
            statement,
            text,
            drop_index_concurrently: concurrently_at.iter().any(within),
        });
    }
    if statements.is_empty() {
        return Err(LintError::Empty);
    }
    Ok(statements)
}

/// Takes `CONCURRENTLY` out of every `DROP INDEX CONCURRENTLY` (sqlparser
/// parses the rest as DROP INDEX) and returns where each one was. The
/// sequence only occurs at a statement's start: function bodies are
/// single string tokens.
fn take_drop_index_concurrently(tokens: &mut Vec<TokenWithSpan>) -> Vec<Location> {
    let mut taken = Vec::new();
    for at in 0..tokens.len() {
        if !is_keyword(tokens.get(at), Keyword::DROP) {
            continue;
        }
        let index = next_significant(tokens, at + 1);
        if !is_keyword(index.and_then(|i| tokens.get(i)), Keyword::INDEX) {
            continue;
        }
        if let Some(concurrently) = index.and_then(|i| next_significant(tokens, i + 1))
            && is_keyword(tokens.get(concurrently), Keyword::CONCURRENTLY)
        {
            taken.push(tokens.remove(concurrently).span.start);
        }
    }
    taken
}

fn is_keyword(token: Option<&TokenWithSpan>, keyword: Keyword) -> bool {
    matches!(token, Some(TokenWithSpan { token: Token::Word(w), .. }) if w.keyword == keyword)
}

/// The first token from `from` on that is not whitespace or a comment.
fn next_significant(tokens: &[TokenWithSpan], from: usize) -> Option<usize> {
    (from..tokens.len()).find(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
}

/// Statements ended by a `;` among `tokens` (empty ones not counted).
fn complete_statements(tokens: &[TokenWithSpan]) -> usize {
    let mut count = 0;
    let mut open = false;
    for t in tokens {
        match t.token {
            Token::SemiColon => {
                if open {
                    count += 1;
                }
                open = false;
            }
            Token::Whitespace(_) => {}
            _ => open = true,
        }
    }
    count
}

/// Byte offsets of line starts, to turn the tokenizer's 1-based
/// line/column (in characters) into byte offsets.
struct LineOffsets {
    starts: Vec<usize>,
}

impl LineOffsets {
    fn new(sql: &str) -> LineOffsets {
        let mut starts = vec![0];
        starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        LineOffsets { starts }
    }

    fn byte(&self, sql: &str, location: Location) -> usize {
        let Some(line_index) = usize::try_from(location.line).ok().and_then(|l| l.checked_sub(1)) else {
            return 0;
        };
        let Some(&line_start) = self.starts.get(line_index) else {
            return sql.len();
        };
        let column = usize::try_from(location.column)
            .unwrap_or(usize::MAX)
            .saturating_sub(1);
        sql[line_start..]
            .char_indices()
            .nth(column)
            .map_or(sql.len(), |(i, _)| line_start + i)
    }
}
