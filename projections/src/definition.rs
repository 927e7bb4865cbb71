//! Declarative projections: a read model described as data (which event
//! types, the key, and per event type an upsert / delete / increment of
//! named columns taken from the event by path), validated before anything
//! runs. No IO here: parsing, validation, evaluating paths against an event
//! and folding a batch's effects are pure, so they are unit-tested without a
//! database.
//!
//! A definition, as JSON:
//! ```json
//! { "name": "user_list",
//!   "key": { "column": "user_id", "type": "uuid", "path": "$.user_id" },
//!   "columns": { "email": "text", "name": "text", "logins": "integer" },
//!   "indexes": ["email"],
//!   "handlers": {
//!     "UserCreated": { "op": "upsert", "set": { "email": "$.email", "name": "$.name" } },
//!     "UserLoggedIn": { "op": "increment", "increment": { "logins": { "const": 1 } } },
//!     "UserDeleted": { "op": "delete" } } }
//! ```
//! Paths: `$.a.b[0]` reads the event's JSON data, `$meta.a` its metadata,
//! `$event.<field>` its envelope (see [`EnvelopeField`]). A path that is
//! absent from an event leaves its column as it was (a patch); an explicit
//! JSON `null` stores NULL. The key must be present in every handled event.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use domain::EventData;
use event_store::RecordedEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest projection name: `<name>__g<generation>` must fit PostgreSQL's
/// 63-byte identifiers.
pub const NAME_BYTES_MAX: usize = 48;
pub const COLUMN_NAME_BYTES_MAX: usize = 63;
pub const COLUMNS_MAX: usize = 64;
pub const HANDLERS_MAX: usize = 64;
pub const INDEXES_MAX: usize = 8;
pub const PATH_SEGMENTS_MAX: usize = 16;
pub const DEFINITION_BYTES_MAX: usize = 64 * 1024;
/// The handler key that matches every event type.
pub const ANY_EVENT_TYPE: &str = "*";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Text,
    Integer,
    Numeric,
    Double,
    Boolean,
    Timestamptz,
    Uuid,
    Jsonb,
}

impl ColumnType {
    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Integer => "bigint",
            ColumnType::Numeric => "numeric",
            ColumnType::Double => "double precision",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::Uuid => "uuid",
            ColumnType::Jsonb => "jsonb",
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            ColumnType::Integer | ColumnType::Numeric | ColumnType::Double
        )
    }

    fn name(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Integer => "integer",
            ColumnType::Numeric => "numeric",
            ColumnType::Double => "double",
            ColumnType::Boolean => "boolean",
            ColumnType::Timestamptz => "timestamptz",
            ColumnType::Uuid => "uuid",
            ColumnType::Jsonb => "jsonb",
        }
    }

    /// Whether a value of type `from` (known at definition time) can be
    /// stored in a column of this type.
    fn accepts(self, from: ColumnType) -> bool {
        self == from
            || matches!(self, ColumnType::Text | ColumnType::Jsonb)
            || (self.is_numeric() && from.is_numeric())
    }
}

// ---------------------------------------------------------------- wire form

/// A definition as written by a person (JSON), before validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionSpec {
    pub name: String,
    pub key: KeySpec,
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnType>,
    pub handlers: BTreeMap<String, HandlerSpec>,
    #[serde(default)]
    pub indexes: Vec<String>,
    /// What an event of a handled type without its key does: stop the
    /// projection there (`fail`, the default), or pass (`skip`, for read
    /// models over event types other writers may use too).
    #[serde(default, skip_serializing_if = "MissingKey::is_fail")]
    pub missing_key: MissingKey,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingKey {
    #[default]
    Fail,
    Skip,
}

impl MissingKey {
    fn is_fail(&self) -> bool {
        *self == MissingKey::Fail
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub column: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    /// The key's path in events whose handler does not name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Upsert,
    Increment,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerSpec {
    pub op: OpKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, ValueSpec>,
    /// Set only when the event creates the row.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set_on_insert: BTreeMap<String, ValueSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub increment: BTreeMap<String, ValueSpec>,
}

/// A path string (`$.x`, `$meta.x`, `$event.x`) or `{"const": value}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ValueSpec {
    Path(String),
    Const(ConstSpec),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstSpec {
    #[serde(rename = "const")]
    pub value: Value,
}

// ------------------------------------------------------------ validated form

/// Every problem found in a definition, so that one round fixes them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefinitionError {
    pub problems: Vec<String>,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid projection definition: {}", self.problems.join("; "))
    }
}

/// Fields of the event envelope a path can name (`$event.<field>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeField {
    EventId,
    StreamId,
    EventType,
    Version,
    GlobalPosition,
    CreatedAt,
    AggregateType,
    AggregateId,
    CorrelationId,
    CausationId,
    SchemaVersion,
    SizeBytes,
}

impl EnvelopeField {
    const ALL: [(&'static str, EnvelopeField); 12] = [
        ("event_id", EnvelopeField::EventId),
        ("stream_id", EnvelopeField::StreamId),
        ("event_type", EnvelopeField::EventType),
        ("version", EnvelopeField::Version),
        ("global_position", EnvelopeField::GlobalPosition),
        ("created_at", EnvelopeField::CreatedAt),
        ("aggregate_type", EnvelopeField::AggregateType),
        ("aggregate_id", EnvelopeField::AggregateId),
        ("correlation_id", EnvelopeField::CorrelationId),
        ("causation_id", EnvelopeField::CausationId),
        ("schema_version", EnvelopeField::SchemaVersion),
        ("size_bytes", EnvelopeField::SizeBytes),
    ];

    fn parse(name: &str) -> Option<EnvelopeField> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    fn value_type(self) -> ColumnType {
        match self {
            EnvelopeField::EventId
            | EnvelopeField::AggregateId
            | EnvelopeField::CorrelationId
            | EnvelopeField::CausationId => ColumnType::Uuid,
            EnvelopeField::StreamId | EnvelopeField::EventType | EnvelopeField::AggregateType => {
                ColumnType::Text
            }
            EnvelopeField::Version
            | EnvelopeField::GlobalPosition
            | EnvelopeField::SchemaVersion
            | EnvelopeField::SizeBytes => ColumnType::Integer,
            EnvelopeField::CreatedAt => ColumnType::Timestamptz,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Field(String),
    Index(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum PathRoot {
    Data,
    Meta,
    Envelope(EnvelopeField),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    text: String,
    root: PathRoot,
    segments: Vec<Segment>,
}

impl Path {
    pub fn parse(text: &str) -> Result<Path, String> {
        let (root, rest) = if let Some(rest) = text.strip_prefix("$event.") {
            let (field, tail) = split_first_segment(rest);
            let field = EnvelopeField::parse(field).ok_or_else(|| {
                let known: Vec<&str> = EnvelopeField::ALL.iter().map(|(n, _)| *n).collect();
                format!(
                    "path '{text}': unknown envelope field '{field}' (known: {})",
                    known.join(", ")
                )
            })?;
            if !tail.is_empty() {
                return Err(format!("path '{text}': envelope fields have no sub-fields"));
            }
            return Ok(Path {
                text: text.to_owned(),
                root: PathRoot::Envelope(field),
                segments: Vec::new(),
            });
        } else if let Some(rest) = text.strip_prefix("$meta") {
            (PathRoot::Meta, rest)
        } else if let Some(rest) = text.strip_prefix('$') {
            (PathRoot::Data, rest)
        } else {
            return Err(format!(
                "path '{text}' must start with '$.' (event data), '$meta.' (metadata) or '$event.' (envelope)"
            ));
        };
        let segments = parse_segments(rest).map_err(|why| format!("path '{text}': {why}"))?;
        if segments.is_empty() {
            return Err(format!("path '{text}' names no field"));
        }
        Ok(Path {
            text: text.to_owned(),
            root,
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The type a value at this path has, when the definition can know it.
    fn static_type(&self) -> Option<ColumnType> {
        match self.root {
            PathRoot::Envelope(field) => Some(field.value_type()),
            _ => None,
        }
    }

    /// The value at this path in `event`, `None` when absent.
    fn eval(&self, event: &EventView<'_>) -> Option<Value> {
        let mut node = match &self.root {
            PathRoot::Envelope(field) => return Some(event.envelope(*field)),
            PathRoot::Data => event.data.as_ref()?,
            PathRoot::Meta => &event.meta,
        };
        for segment in &self.segments {
            node = match segment {
                Segment::Field(name) => node.as_object()?.get(name)?,
                Segment::Index(i) => node.as_array()?.get(*i)?,
            };
        }
        Some(node.clone())
    }
}

fn split_first_segment(rest: &str) -> (&str, &str) {
    match rest.find(['.', '[']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}

/// `.field` and `[index]` segments.
fn parse_segments(mut rest: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    while !rest.is_empty() {
        if segments.len() == PATH_SEGMENTS_MAX {
            return Err(format!("more than {PATH_SEGMENTS_MAX} segments"));
        }
        if let Some(after_dot) = rest.strip_prefix('.') {
            let end = after_dot.find(['.', '[']).unwrap_or(after_dot.len());
            let field = &after_dot[..end];
            let valid = !field.is_empty()
                && field
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(format!(
                    "field '{field}' must be non-empty and use only letters, digits, '_' and '-'"
                ));
            }
            segments.push(Segment::Field(field.to_owned()));
            rest = &after_dot[end..];
        } else if let Some(after_bracket) = rest.strip_prefix('[') {
            let end = after_bracket
                .find(']')
                .ok_or_else(|| "'[' without ']'".to_owned())?;
            let index: usize = after_bracket[..end]
                .parse()
                .map_err(|_| format!("'[{}]' is not an array index", &after_bracket[..end]))?;
            segments.push(Segment::Index(index));
            rest = &after_bracket[end + 1..];
        } else {
            return Err(format!("unexpected '{rest}': segments are '.field' or '[index]'"));
        }
    }
    Ok(segments)
}

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Path(Path),
    /// Already converted to the column's canonical text (NULL = None).
    Const(Option<String>),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Path(p) => p.as_str().to_owned(),
            Source::Const(_) => "a constant".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub column_type: ColumnType,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Delete,
    Patch {
        set: Vec<(usize, Source)>,
        set_on_insert: Vec<(usize, Source)>,
        increment: Vec<(usize, Source)>,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct Handler {
    key: Path,
    action: Action,
}

/// A validated definition: names are safe identifiers, paths parse,
/// columns exist and types fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    spec: DefinitionSpec,
    key: Column,
    columns: Vec<Column>,
    handlers: HashMap<String, Handler>,
    any_type: Option<Handler>,
    indexes: Vec<usize>,
}

impl Definition {
    pub fn from_json(text: &str) -> Result<Definition, DefinitionError> {
        if text.len() > DEFINITION_BYTES_MAX {
            return Err(problem(format!(
                "the definition is {} bytes; at most {DEFINITION_BYTES_MAX}",
                text.len()
            )));
        }
        let spec: DefinitionSpec =
            serde_json::from_str(text).map_err(|e| problem(format!("not a definition: {e}")))?;
        Definition::try_from(spec)
    }

    pub fn spec(&self) -> &DefinitionSpec {
        &self.spec
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.spec).unwrap_or(Value::Null)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn key(&self) -> &Column {
        &self.key
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        if name == self.key.name {
            return Some(&self.key);
        }
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn indexed_columns(&self) -> impl Iterator<Item = &Column> {
        self.indexes.iter().map(|&i| &self.columns[i])
    }

    /// The event types the projection reads; empty when it reads every type.
    pub fn event_types(&self) -> Vec<String> {
        if self.any_type.is_some() {
            return Vec::new();
        }
        let mut types: Vec<String> = self.handlers.keys().cloned().collect();
        types.sort();
        types
    }

    /// What `event` does to the read model: `None` when no handler takes it,
    /// an error (naming the event and the reason) when it cannot be applied.
    pub fn plan(&self, event: &RecordedEvent) -> Result<Option<(String, RowOp)>, String> {
        let Some(handler) = self.handlers.get(&event.event_type).or(self.any_type.as_ref()) else {
            return Ok(None);
        };
        let view = EventView::new(event)?;
        let key = match handler.key.eval(&view) {
            None | Some(Value::Null) if self.spec.missing_key == MissingKey::Skip => return Ok(None),
            None | Some(Value::Null) => {
                return Err(format!(
                    "the key path {} is missing or null",
                    handler.key.as_str()
                ));
            }
            Some(value) => convert(self.key.column_type, &value)
                .map_err(|why| format!("key {}: {why}", handler.key.as_str()))?
                .ok_or_else(|| format!("the key path {} is null", handler.key.as_str()))?,
        };
        let op = match &handler.action {
            Action::Delete => RowOp::Delete,
            Action::Patch {
                set,
                set_on_insert,
                increment,
            } => {
                let mut ops: Vec<Option<ColumnOp>> = vec![None; self.columns.len()];
                for (column, source) in set_on_insert {
                    if let Some(value) = self.evaluate(*column, source, &view)? {
                        ops[*column] = Some(ColumnOp::InsertOnly(value));
                    }
                }
                for (column, source) in set {
                    if let Some(value) = self.evaluate(*column, source, &view)? {
                        ops[*column] = Some(ColumnOp::Set(value));
                    }
                }
                for (column, source) in increment {
                    if let Some(value) = self.evaluate(*column, source, &view)? {
                        let Some(delta) = value else {
                            return Err(format!(
                                "column '{}': the increment {} is null",
                                self.columns[*column].name,
                                source.describe()
                            ));
                        };
                        let int = delta.parse::<i64>().ok();
                        ops[*column] = Some(ColumnOp::Add { delta, int });
                    }
                }
                RowOp::Patch(ops)
            }
        };
        Ok(Some((key, op)))
    }

    /// `None`: the path is absent (column untouched); `Some(None)`: NULL.
    fn evaluate(
        &self,
        column: usize,
        source: &Source,
        view: &EventView<'_>,
    ) -> Result<Option<Option<String>>, String> {
        let column = &self.columns[column];
        match source {
            Source::Const(value) => Ok(Some(value.clone())),
            Source::Path(path) => match path.eval(view) {
                None => Ok(None),
                Some(value) => convert(column.column_type, &value)
                    .map(Some)
                    .map_err(|why| format!("column '{}' from {}: {why}", column.name, path.as_str())),
            },
        }
    }
}

fn problem(text: String) -> DefinitionError {
    DefinitionError { problems: vec![text] }
}

/// A safe SQL identifier: lower-case ASCII letters, digits and '_', not
/// starting with a digit, not `pg_`-prefixed (reserved by PostgreSQL).
fn check_identifier(what: &str, name: &str, bytes_max: usize, problems: &mut Vec<String>) -> bool {
    let well_formed = !name.is_empty()
        && name.len() <= bytes_max
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_")
        && !name.contains("__");
    if !well_formed {
        problems.push(format!(
            "{what} '{name}' is not a valid name: use 1 to {bytes_max} lower-case letters, digits and single '_', starting with a letter or '_', not 'pg_'"
        ));
    }
    well_formed
}

impl TryFrom<DefinitionSpec> for Definition {
    type Error = DefinitionError;

    fn try_from(spec: DefinitionSpec) -> Result<Definition, DefinitionError> {
        let mut problems = Vec::new();
        check_identifier("projection name", &spec.name, NAME_BYTES_MAX, &mut problems);
        check_identifier(
            "key column",
            &spec.key.column,
            COLUMN_NAME_BYTES_MAX,
            &mut problems,
        );
        if !matches!(
            spec.key.column_type,
            ColumnType::Text | ColumnType::Integer | ColumnType::Uuid
        ) {
            problems.push(format!(
                "key column '{}' has type {}; a key is text, integer or uuid",
                spec.key.column,
                spec.key.column_type.name()
            ));
        }
        let key = Column {
            name: spec.key.column.clone(),
            column_type: spec.key.column_type,
        };
        if spec.columns.len() > COLUMNS_MAX {
            problems.push(format!("{} columns; at most {COLUMNS_MAX}", spec.columns.len()));
        }
        let mut columns = Vec::new();
        for (name, column_type) in &spec.columns {
            check_identifier("column", name, COLUMN_NAME_BYTES_MAX, &mut problems);
            if *name == spec.key.column {
                problems.push(format!("column '{name}' is also the key column"));
            }
            columns.push(Column {
                name: name.clone(),
                column_type: *column_type,
            });
        }
        let default_key = spec
            .key
            .path
            .as_deref()
            .map(Path::parse)
            .transpose()
            .unwrap_or_else(|why| {
                problems.push(format!("key: {why}"));
                None
            });
        if key.column_type != ColumnType::Text
            && let Some(t) = default_key.as_ref().and_then(Path::static_type)
            && t != key.column_type
        {
            problems.push(format!(
                "key path {} gives {} but the key column is {}",
                spec.key.path.as_deref().unwrap_or_default(),
                t.name(),
                key.column_type.name()
            ));
        }
        let (handlers, any_type) = validate_handlers(&spec, &key, &columns, &default_key, &mut problems);
        if spec.indexes.len() > INDEXES_MAX {
            problems.push(format!("{} indexes; at most {INDEXES_MAX}", spec.indexes.len()));
        }
        let mut indexes = Vec::new();
        for name in &spec.indexes {
            match columns.iter().position(|c| c.name == *name) {
                Some(i) if !indexes.contains(&i) => indexes.push(i),
                Some(_) => problems.push(format!("index on '{name}' is listed twice")),
                None => problems.push(format!("index on '{name}': no such column")),
            }
        }
        if !problems.is_empty() {
            return Err(DefinitionError { problems });
        }
        Ok(Definition {
            spec,
            key,
            columns,
            handlers,
            any_type,
            indexes,
        })
    }
}

/// Every handler of `spec`, by event type, and the `*` handler if any.
fn validate_handlers(
    spec: &DefinitionSpec,
    key: &Column,
    columns: &[Column],
    default_key: &Option<Path>,
    problems: &mut Vec<String>,
) -> (HashMap<String, Handler>, Option<Handler>) {
    if spec.handlers.is_empty() {
        problems.push("no handlers: name at least one event type".to_owned());
    }
    if spec.handlers.len() > HANDLERS_MAX {
        problems.push(format!(
            "{} handlers; at most {HANDLERS_MAX}",
            spec.handlers.len()
        ));
    }
    let mut handlers = HashMap::new();
    let mut any_type = None;
    for (event_type, handler_spec) in &spec.handlers {
        if event_type.is_empty() || event_type.len() > 200 || event_type.chars().any(char::is_control) {
            problems.push(format!(
                "handler for event type '{event_type}': not a valid event type"
            ));
            continue;
        }
        let context = format!("handler '{event_type}'");
        if let Some(handler) = validate_handler(&context, handler_spec, key, columns, default_key, problems) {
            if event_type == ANY_EVENT_TYPE {
                any_type = Some(handler);
            } else {
                handlers.insert(event_type.clone(), handler);
            }
        }
    }
    if any_type.is_some() && !handlers.is_empty() {
        problems.push(
            "a '*' handler takes every event type; it cannot be combined with other handlers".to_owned(),
        );
    }
    (handlers, any_type)
}

fn validate_handler(
    context: &str,
    spec: &HandlerSpec,
    key: &Column,
    columns: &[Column],
    default_key: &Option<Path>,
    problems: &mut Vec<String>,
) -> Option<Handler> {
    let before = problems.len();
    let key_path = match spec.key.as_deref().map(Path::parse) {
        Some(Ok(path)) => Some(path),
        Some(Err(why)) => {
            problems.push(format!("{context}: key: {why}"));
            None
        }
        None => {
            if default_key.is_none() {
                problems.push(format!("{context}: no key path (give one here or in key.path)"));
            }
            default_key.clone()
        }
    };
    if let Some(t) = key_path.as_ref().and_then(Path::static_type)
        && !key.column_type.accepts(t)
    {
        problems.push(format!(
            "{context}: key path gives {} but the key column is {}",
            t.name(),
            key.column_type.name()
        ));
    }
    let mut resolve = |what: &str, entries: &BTreeMap<String, ValueSpec>, numeric_only: bool| {
        resolve_values(context, what, entries, numeric_only, key, columns, problems)
    };
    let set = resolve("set", &spec.set, false);
    let set_on_insert = resolve("set_on_insert", &spec.set_on_insert, false);
    let increment = resolve("increment", &spec.increment, true);
    for (index, _) in &set {
        if set_on_insert.iter().any(|(i, _)| i == index) || increment.iter().any(|(i, _)| i == index) {
            problems.push(format!(
                "{context}: column '{}' is written twice by one handler",
                columns[*index].name
            ));
        }
    }
    for (index, _) in &increment {
        if set_on_insert.iter().any(|(i, _)| i == index) {
            problems.push(format!(
                "{context}: column '{}' is written twice by one handler",
                columns[*index].name
            ));
        }
    }
    let action = match spec.op {
        OpKind::Delete => {
            if !(spec.set.is_empty() && spec.set_on_insert.is_empty() && spec.increment.is_empty()) {
                problems.push(format!(
                    "{context}: op delete takes no set, set_on_insert or increment"
                ));
            }
            Action::Delete
        }
        OpKind::Upsert => {
            if spec.set.is_empty() && spec.set_on_insert.is_empty() && spec.increment.is_empty() {
                problems.push(format!(
                    "{context}: op upsert needs set, set_on_insert or increment"
                ));
            }
            Action::Patch {
                set,
                set_on_insert,
                increment,
            }
        }
        OpKind::Increment => {
            if spec.increment.is_empty() {
                problems.push(format!("{context}: op increment needs increment"));
            }
            if !(spec.set.is_empty() && spec.set_on_insert.is_empty()) {
                problems.push(format!(
                    "{context}: op increment takes only increment (use op upsert to also set columns)"
                ));
            }
            Action::Patch {
                set,
                set_on_insert,
                increment,
            }
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(Handler {
        key: key_path?,
        action,
    })
}

/// The columns a handler's `set`, `set_on_insert` or `increment` writes,
/// and what from.
fn resolve_values(
    context: &str,
    what: &str,
    entries: &BTreeMap<String, ValueSpec>,
    numeric_only: bool,
    key: &Column,
    columns: &[Column],
    problems: &mut Vec<String>,
) -> Vec<(usize, Source)> {
    let mut resolved = Vec::new();
    for (name, value) in entries {
        if *name == key.name {
            problems.push(format!(
                "{context}: {what} '{name}': the key column is set from the key path only"
            ));
            continue;
        }
        let Some(index) = columns.iter().position(|c| c.name == *name) else {
            problems.push(format!("{context}: {what} '{name}': no such column"));
            continue;
        };
        let column = &columns[index];
        if numeric_only && !column.column_type.is_numeric() {
            problems.push(format!(
                "{context}: increment '{name}': column is {}, increments need integer, numeric or double",
                column.column_type.name()
            ));
            continue;
        }
        let source = match value {
            ValueSpec::Path(text) => match Path::parse(text) {
                Ok(path) => {
                    if let Some(t) = path.static_type()
                        && !column.column_type.accepts(t)
                    {
                        problems.push(format!(
                            "{context}: {what} '{name}': {text} gives {} but the column is {}",
                            t.name(),
                            column.column_type.name()
                        ));
                        continue;
                    }
                    Source::Path(path)
                }
                Err(why) => {
                    problems.push(format!("{context}: {what} '{name}': {why}"));
                    continue;
                }
            },
            ValueSpec::Const(c) => match convert(column.column_type, &c.value) {
                Ok(value) => {
                    if numeric_only && value.is_none() {
                        problems.push(format!("{context}: increment '{name}': the constant is null"));
                        continue;
                    }
                    Source::Const(value)
                }
                Err(why) => {
                    problems.push(format!("{context}: {what} '{name}': constant {}: {why}", c.value));
                    continue;
                }
            },
        };
        resolved.push((index, source));
    }
    resolved
}

// ------------------------------------------------------------ values

/// A JSON value as the canonical text PostgreSQL casts into `column_type`;
/// `None` is NULL. Refuses what the cast would refuse, so that a bad event
/// is caught (and named) before any SQL runs.
pub fn convert(column_type: ColumnType, value: &Value) -> Result<Option<String>, String> {
    if value.is_null() {
        return Ok(None);
    }
    let text = match (column_type, value) {
        (ColumnType::Jsonb, v) => v.to_string(),
        (ColumnType::Text, Value::String(s)) => s.clone(),
        (ColumnType::Text, v) => v.to_string(),
        (ColumnType::Integer, Value::Number(n)) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => return Err(format!("{n} is not a 64-bit integer")),
        },
        (ColumnType::Integer, Value::String(s)) => match s.trim().parse::<i64>() {
            Ok(i) => i.to_string(),
            Err(_) => return Err(format!("\"{s}\" is not an integer")),
        },
        (ColumnType::Numeric | ColumnType::Double, Value::Number(n)) => n.to_string(),
        (ColumnType::Numeric | ColumnType::Double, Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => s.trim().to_owned(),
            _ => return Err(format!("\"{s}\" is not a number")),
        },
        (ColumnType::Boolean, Value::Bool(b)) => b.to_string(),
        (ColumnType::Boolean, Value::String(s)) if s == "true" || s == "false" => s.clone(),
        (ColumnType::Timestamptz, Value::String(s)) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.to_rfc3339(),
            Err(e) => return Err(format!("\"{s}\" is not an RFC 3339 timestamp ({e})")),
        },
        (ColumnType::Uuid, Value::String(s)) => match uuid::Uuid::parse_str(s) {
            Ok(u) => u.to_string(),
            Err(_) => return Err(format!("\"{s}\" is not a UUID")),
        },
        (t, v) => return Err(format!("{} cannot be stored as {}", json_kind(v), t.name())),
    };
    Ok(Some(text))
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An event with its JSON parsed once for all paths.
struct EventView<'a> {
    event: &'a RecordedEvent,
    data: Option<Value>,
    meta: Value,
}

impl<'a> EventView<'a> {
    fn new(event: &'a RecordedEvent) -> Result<EventView<'a>, String> {
        let data = match &event.data {
            EventData::Json(text) => {
                Some(serde_json::from_str(text).map_err(|e| format!("event data is not JSON: {e}"))?)
            }
            EventData::Binary(_) => None,
        };
        let meta = serde_json::from_str(&event.metadata).unwrap_or(Value::Null);
        Ok(EventView { event, data, meta })
    }

    fn envelope(&self, field: EnvelopeField) -> Value {
        let e = self.event;
        let uuid = |u: Option<uuid::Uuid>| u.map_or(Value::Null, |u| Value::String(u.to_string()));
        match field {
            EnvelopeField::EventId => Value::String(e.event_id.to_string()),
            EnvelopeField::StreamId => Value::String(e.stream_id.clone()),
            EnvelopeField::EventType => Value::String(e.event_type.clone()),
            EnvelopeField::Version => Value::from(e.event_version),
            EnvelopeField::GlobalPosition => Value::from(e.global_position),
            EnvelopeField::CreatedAt => Value::String(e.created_at.to_rfc3339()),
            EnvelopeField::AggregateType => Value::String(e.aggregate_type.clone()),
            EnvelopeField::AggregateId => uuid(e.aggregate_id),
            EnvelopeField::CorrelationId => uuid(e.correlation_id),
            EnvelopeField::CausationId => uuid(e.causation_id),
            EnvelopeField::SchemaVersion => Value::from(e.schema_version),
            EnvelopeField::SizeBytes => {
                let payload = match &e.data {
                    EventData::Json(t) => t.len(),
                    EventData::Binary(b) => b.len(),
                };
                Value::from((payload + e.metadata.len()) as u64)
            }
        }
    }
}

// ------------------------------------------------------------ batch folding

/// What one column of a row becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnOp {
    Set(Option<String>),
    /// Added to the stored value (NULL counts as 0). `int` when the delta is
    /// an integer, so that two increments of one row can be summed here.
    Add {
        delta: String,
        int: Option<i64>,
    },
    /// Written only when the row is created.
    InsertOnly(Option<String>),
}

/// What an event (or several, folded) does to one row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOp {
    Delete,
    /// Per column of the definition, in order; `None` leaves it as it is.
    /// A patch creates the row when it does not exist.
    Patch(Vec<Option<ColumnOp>>),
}

impl RowOp {
    /// `self` followed by `next` as one operation, when that is exactly
    /// equivalent; `None` when the two must run one after the other.
    fn then(&self, next: &RowOp) -> Option<RowOp> {
        match (self, next) {
            (_, RowOp::Delete) => Some(RowOp::Delete),
            // Delete then create: the row's old columns must go first.
            (RowOp::Delete, RowOp::Patch(_)) => None,
            (RowOp::Patch(first), RowOp::Patch(second)) => {
                let mut merged = first.clone();
                for (slot, op) in merged.iter_mut().zip(second) {
                    let Some(op) = op else { continue };
                    *slot = match (slot.take(), op) {
                        (_, ColumnOp::Set(v)) => Some(ColumnOp::Set(v.clone())),
                        (None, ColumnOp::Add { delta, int }) => Some(ColumnOp::Add {
                            delta: delta.clone(),
                            int: *int,
                        }),
                        (Some(ColumnOp::Add { int: Some(a), .. }), ColumnOp::Add { int: Some(b), .. }) => {
                            let sum = a.checked_add(*b)?;
                            Some(ColumnOp::Add {
                                delta: sum.to_string(),
                                int: Some(sum),
                            })
                        }
                        (Some(ColumnOp::Set(Some(v))), ColumnOp::Add { int: Some(b), .. }) => {
                            let sum = v.parse::<i64>().ok()?.checked_add(*b)?;
                            Some(ColumnOp::Set(Some(sum.to_string())))
                        }
                        (Some(ColumnOp::Set(None)), ColumnOp::Add { delta, .. }) => {
                            Some(ColumnOp::Set(Some(delta.clone())))
                        }
                        (Some(_), ColumnOp::Add { .. }) => return None,
                        // The row exists once the first patch ran: a later
                        // insert-only value never applies.
                        (existing, ColumnOp::InsertOnly(_)) => existing,
                    };
                }
                Some(RowOp::Patch(merged))
            }
        }
    }
}

/// A run of a batch: at most one operation per key, so its rows can be
/// written by set-based statements in any order. Consecutive events for one
/// key are folded into one operation when that is exact; otherwise the run
/// ends there.
#[derive(Debug, Default)]
pub struct Run {
    ops: Vec<(String, RowOp)>,
    index: HashMap<String, usize>,
    events: usize,
}

impl Run {
    /// Adds the operation; false (nothing added) when it cannot join this run.
    pub fn try_push(&mut self, key: String, op: RowOp) -> bool {
        if let Some(&i) = self.index.get(&key) {
            let Some(merged) = self.ops[i].1.then(&op) else {
                return false;
            };
            self.ops[i].1 = merged;
        } else {
            self.index.insert(key.clone(), self.ops.len());
            self.ops.push((key, op));
        }
        self.events += 1;
        true
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn events(&self) -> usize {
        self.events
    }

    pub fn ops(&self) -> &[(String, RowOp)] {
        &self.ops
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().map(|(k, _)| k.as_str())
    }
}

/// A page's events planned into runs, up to the first event that cannot be
/// applied (if any). Pure, so that it can be done while the previous page
/// is written.
#[derive(Debug, Default)]
pub struct PagePlan {
    pub runs: Vec<Run>,
    /// The index of the first event that cannot be applied, and why.
    pub failure: Option<(usize, String)>,
}

impl PagePlan {
    /// Events a handler took (up to the failure).
    pub fn handled(&self) -> u64 {
        self.runs.iter().map(|r| r.events() as u64).sum()
    }
}

impl Definition {
    pub fn plan_page(&self, events: &[RecordedEvent]) -> PagePlan {
        let mut plan = PagePlan::default();
        let mut run = Run::default();
        for (i, event) in events.iter().enumerate() {
            match self.plan(event) {
                Ok(None) => {}
                Ok(Some((key, op))) => {
                    if !run.try_push(key.clone(), op.clone()) {
                        plan.runs.push(std::mem::take(&mut run));
                        run.try_push(key, op);
                    }
                }
                Err(why) => {
                    plan.failure = Some((i, why));
                    break;
                }
            }
        }
        if !run.is_empty() {
            plan.runs.push(run);
        }
        plan
    }
}

#[cfg(test)]
mod tests;
