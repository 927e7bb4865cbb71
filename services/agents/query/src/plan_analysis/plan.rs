//! Reading the EXPLAIN JSON into typed plan nodes.

use serde_json::{Map, Value};

use super::*;

/// Real plans nest a few dozen levels (and serde_json's default recursion
/// limit stops parsing EXPLAIN text beyond about 60); the limit keeps the
/// recursion far from the stack's end on a `Value` built otherwise.
pub(super) const MAX_PLAN_DEPTH: usize = 200;

/// The fields of one plan node the detectors use, typed. Counts are as
/// PostgreSQL prints them: per loop.
#[derive(Debug, Default)]
pub(super) struct PlanNode {
    pub(super) node_type: String,
    pub(super) parent_relationship: Option<String>,
    pub(super) relation: Option<String>,
    pub(super) alias: Option<String>,
    pub(super) index_name: Option<String>,
    pub(super) filter: Option<String>,
    pub(super) index_cond: Option<String>,
    pub(super) recheck_cond: Option<String>,
    pub(super) join_filter: Option<String>,
    /// `"Hash Cond"` or `"Merge Cond"`.
    pub(super) join_cond: Option<String>,
    pub(super) join_type: Option<String>,
    pub(super) strategy: Option<String>,
    pub(super) parallel_aware: bool,
    pub(super) workers_planned: Option<f64>,
    pub(super) total_cost: Option<f64>,
    pub(super) plan_rows: Option<f64>,
    pub(super) actual_rows: Option<f64>,
    pub(super) actual_loops: Option<f64>,
    pub(super) rows_removed_by_filter: Option<f64>,
    pub(super) rows_removed_by_join_filter: Option<f64>,
    pub(super) rows_removed_by_index_recheck: Option<f64>,
    pub(super) sort_keys: Vec<String>,
    pub(super) sort_method: Option<String>,
    /// Set when the sort spilled: the most disk any process used, in kB.
    pub(super) sort_disk_kb: Option<f64>,
    pub(super) hash_batches: Option<f64>,
    pub(super) original_hash_batches: Option<f64>,
    pub(super) peak_memory_kb: Option<f64>,
    pub(super) hashagg_batches: Option<f64>,
    pub(super) disk_usage_kb: Option<f64>,
    pub(super) exact_heap_blocks: Option<f64>,
    pub(super) lossy_heap_blocks: Option<f64>,
    pub(super) children: Vec<PlanNode>,
}

/// Typed access to one JSON object of the plan; `owner` names it in errors.
pub(super) struct Fields<'a> {
    pub(super) object: &'a Map<String, Value>,
    pub(super) owner: String,
}

impl<'a> Fields<'a> {
    /// The value of `field`; JSON `null` counts as absent.
    pub(super) fn get(&self, field: &str) -> Option<&'a Value> {
        self.object.get(field).filter(|value| !value.is_null())
    }

    pub(super) fn wrong_type(&self, field: &str, expected: &'static str, found: &Value) -> PlanError {
        PlanError::WrongType {
            field: field.to_owned(),
            owner: self.owner.clone(),
            expected,
            found: json_kind(found),
        }
    }

    pub(super) fn number(&self, field: &str) -> Result<Option<f64>, PlanError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(number)) => Ok(number.as_f64()),
            Some(other) => Err(self.wrong_type(field, "a number", other)),
        }
    }

    pub(super) fn text(&self, field: &str) -> Result<Option<String>, PlanError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.wrong_type(field, "a string", other)),
        }
    }

    pub(super) fn flag(&self, field: &str) -> Result<bool, PlanError> {
        match self.get(field) {
            None => Ok(false),
            Some(Value::Bool(flag)) => Ok(*flag),
            Some(other) => Err(self.wrong_type(field, "a boolean", other)),
        }
    }

    /// A list of strings such as `"Sort Key"`.
    pub(super) fn texts(&self, field: &str) -> Result<Vec<String>, PlanError> {
        self.array(field)?
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(text.clone()),
                other => Err(self.wrong_type(field, "an array of strings", other)),
            })
            .collect()
    }

    pub(super) fn array(&self, field: &str) -> Result<&'a [Value], PlanError> {
        match self.get(field) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(self.wrong_type(field, "an array", other)),
        }
    }

    pub(super) fn object(&self, field: &str) -> Result<Option<Fields<'a>>, PlanError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(object)) => Ok(Some(Fields {
                object,
                owner: format!("\"{field}\" of {}", self.owner),
            })),
            Some(other) => Err(self.wrong_type(field, "an object", other)),
        }
    }

    /// A list of objects such as `"Workers"`.
    pub(super) fn objects(&self, field: &str) -> Result<Vec<Fields<'a>>, PlanError> {
        self.array(field)?
            .iter()
            .map(|item| match item {
                Value::Object(object) => Ok(Fields {
                    object,
                    owner: format!("an element of \"{field}\" of {}", self.owner),
                }),
                other => Err(self.wrong_type(field, "an array of objects", other)),
            })
            .collect()
    }
}

pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn parse_node(value: &Value, depth: usize) -> Result<Box<PlanNode>, PlanError> {
    if depth > MAX_PLAN_DEPTH {
        return Err(PlanError::TooDeep {
            max_depth: MAX_PLAN_DEPTH,
        });
    }
    // The fields are read in a function of their own, and the node is
    // boxed, so that the recursion's frames stay small even unoptimized; a
    // plain loop rather than iterator adapters for the same reason.
    let (mut node, children) = read_node(value)?;
    for child in children {
        node.children.push(*parse_node(child, depth + 1)?);
    }
    Ok(node)
}

/// One node's own fields, and the JSON of its children.
pub(super) fn read_node(value: &Value) -> Result<(Box<PlanNode>, &[Value]), PlanError> {
    let Value::Object(object) = value else {
        return Err(PlanError::NodeNotAnObject {
            found: json_kind(value),
        });
    };
    let node_type = match object.get("Node Type") {
        None | Some(Value::Null) => return Err(PlanError::MissingNodeType),
        Some(Value::String(node_type)) => node_type.clone(),
        Some(other) => {
            return Err(PlanError::WrongType {
                field: "Node Type".to_owned(),
                owner: "a plan node".to_owned(),
                expected: "a string",
                found: json_kind(other),
            });
        }
    };
    let fields = Fields {
        object,
        owner: format!("the {node_type} node"),
    };
    let node = Box::new(PlanNode {
        parent_relationship: fields.text("Parent Relationship")?,
        relation: qualified_relation(&fields)?,
        alias: fields.text("Alias")?,
        index_name: fields.text("Index Name")?,
        filter: fields.text("Filter")?,
        index_cond: fields.text("Index Cond")?,
        recheck_cond: fields.text("Recheck Cond")?,
        join_filter: fields.text("Join Filter")?,
        join_cond: fields.text("Hash Cond")?.or(fields.text("Merge Cond")?),
        join_type: fields.text("Join Type")?,
        strategy: fields.text("Strategy")?,
        parallel_aware: fields.flag("Parallel Aware")?,
        workers_planned: fields.number("Workers Planned")?,
        total_cost: fields.number("Total Cost")?,
        plan_rows: fields.number("Plan Rows")?,
        actual_rows: fields.number("Actual Rows")?,
        actual_loops: fields.number("Actual Loops")?,
        rows_removed_by_filter: fields.number("Rows Removed by Filter")?,
        rows_removed_by_join_filter: fields.number("Rows Removed by Join Filter")?,
        rows_removed_by_index_recheck: fields.number("Rows Removed by Index Recheck")?,
        sort_keys: fields.texts("Sort Key")?,
        sort_method: sort_method(&fields)?,
        sort_disk_kb: sort_disk_kb(&fields)?,
        hash_batches: fields.number("Hash Batches")?,
        original_hash_batches: fields.number("Original Hash Batches")?,
        peak_memory_kb: fields.number("Peak Memory Usage")?,
        hashagg_batches: fields.number("HashAgg Batches")?,
        disk_usage_kb: fields.number("Disk Usage")?,
        exact_heap_blocks: fields.number("Exact Heap Blocks")?,
        lossy_heap_blocks: fields.number("Lossy Heap Blocks")?,
        node_type,
        children: Vec::new(),
    });
    Ok((node, fields.array("Plans")?))
}

/// `schema.table` when VERBOSE printed the schema, else `table`.
pub(super) fn qualified_relation(fields: &Fields<'_>) -> Result<Option<String>, PlanError> {
    let Some(table) = fields.text("Relation Name")? else {
        return Ok(None);
    };
    Ok(Some(match fields.text("Schema")? {
        Some(schema) => format!("{schema}.{table}"),
        None => table,
    }))
}

/// The sort method of the leader, else of the first worker that reports one.
pub(super) fn sort_method(fields: &Fields<'_>) -> Result<Option<String>, PlanError> {
    if let Some(method) = fields.text("Sort Method")? {
        return Ok(Some(method));
    }
    for worker in fields.objects("Workers")? {
        if let Some(method) = worker.text("Sort Method")? {
            return Ok(Some(method));
        }
    }
    Ok(None)
}

/// The most disk (kB) a sort used in any process, when it spilled: parallel
/// workers report their own sorts under `"Workers"`, and an Incremental Sort
/// reports per group kind (`"Full-sort Groups"`, `"Pre-sorted Groups"`).
pub(super) fn sort_disk_kb(fields: &Fields<'_>) -> Result<Option<f64>, PlanError> {
    let mut most_kb = sort_disk_kb_of_process(fields)?;
    for worker in fields.objects("Workers")? {
        most_kb = larger(most_kb, sort_disk_kb_of_process(&worker)?);
    }
    Ok(most_kb)
}

pub(super) fn sort_disk_kb_of_process(fields: &Fields<'_>) -> Result<Option<f64>, PlanError> {
    let mut most_kb = None;
    if fields.text("Sort Space Type")?.as_deref() == Some("Disk") {
        most_kb = Some(fields.number("Sort Space Used")?.unwrap_or(0.0));
    }
    for group_kind in ["Full-sort Groups", "Pre-sorted Groups"] {
        let Some(groups) = fields.object(group_kind)? else {
            continue;
        };
        if let Some(disk) = groups.object("Sort Space Disk")? {
            most_kb = larger(most_kb, Some(disk.number("Peak Sort Space Used")?.unwrap_or(0.0)));
        }
    }
    Ok(most_kb)
}

pub(super) fn larger(first: Option<f64>, second: Option<f64>) -> Option<f64> {
    match (first, second) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}
