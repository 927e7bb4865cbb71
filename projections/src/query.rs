//! Queries over read models: get by key, and lists with filters, ordering
//! and keyset paging, always through the view of the live generation, and
//! through the Redis cache (cache-aside) when it is up.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::AssertSqlSafe;

use crate::definition::{ColumnType, Definition, convert};
use crate::runtime::{PROJECTION_DEFINITION_LIVE, ProjectionError, Projections, tags};
use crate::sqlgen::{self, After, Filter, FilterOp};

pub const FILTERS_MAX: usize = 16;
pub const FILTER_VALUE_BYTES_MAX: usize = 1024;
pub const KEY_BYTES_MAX: usize = 1024;
pub const DEFAULT_PAGE_ROWS: usize = 100;

/// A filter as asked for: a column name, an operator, a value as text
/// (JSON text for jsonb columns).
#[derive(Debug, Clone)]
pub struct FilterRequest {
    pub column: String,
    pub op: FilterOp,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub filters: Vec<FilterRequest>,
    /// A column, or the key when empty.
    pub order_by: Option<String>,
    pub descending: bool,
    /// 0 = the default page size.
    pub page_size: usize,
    /// From the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowPage {
    /// Each row as a JSON object.
    pub rows: Vec<String>,
    /// Empty when this was the last page.
    pub next_cursor: Option<String>,
}

/// What a cursor holds (hex of this JSON): the last row's order value and
/// key, and the order it belongs to, so that a cursor from another order
/// is refused rather than misread.
#[derive(Serialize, Deserialize)]
struct CursorState {
    o: String,
    d: bool,
    v: Option<String>,
    k: String,
}

impl Projections {
    /// The row with `key` as a JSON object; `None` when there is none.
    pub async fn get_row(&self, name: &str, key: &str) -> Result<Option<String>, ProjectionError> {
        if key.len() > KEY_BYTES_MAX {
            return Err(ProjectionError::InvalidQuery(format!(
                "key is {} bytes; at most {KEY_BYTES_MAX}",
                key.len()
            )));
        }
        let definition = self.live_definition(name).await?;
        let key = convert(definition.key().column_type, &Value::String(key.to_owned()))
            .map_err(|why| ProjectionError::InvalidQuery(format!("key: {why}")))?
            .unwrap_or_default();
        let cache_key = format!("get:{name}:{key}");
        let cache_tags = [tags::model(name), tags::row(name, &key)];
        let answer = self
            .inner
            .cache
            .get_or_load(&cache_key, &cache_tags, || async {
                let row = self.load_row(name, &definition, &key).await?;
                Ok::<String, ProjectionError>(serde_json::to_string(&row).unwrap_or_default())
            })
            .await?;
        Ok(serde_json::from_str::<Option<String>>(&answer).unwrap_or_default())
    }

    async fn load_row(
        &self,
        name: &str,
        definition: &Definition,
        key: &str,
    ) -> Result<Option<String>, ProjectionError> {
        let result = sqlx::query_scalar::<_, String>(AssertSqlSafe(sqlgen::get_row(definition)))
            .bind(key)
            .fetch_optional(&self.inner.pool)
            .await;
        match result {
            Err(error) if is_shape_error(&error) => {
                // Switched to a definition of another shape meanwhile.
                self.forget_definition(name);
                let definition = self.live_definition(name).await?;
                Ok(
                    sqlx::query_scalar::<_, String>(AssertSqlSafe(sqlgen::get_row(&definition)))
                        .bind(key)
                        .fetch_optional(&self.inner.pool)
                        .await?,
                )
            }
            other => Ok(other?),
        }
    }

    /// A page of rows.
    pub async fn list_rows(&self, name: &str, request: ListRequest) -> Result<RowPage, ProjectionError> {
        let definition = self.live_definition(name).await?;
        let plan = ListPlan::new(&definition, &request, self.inner.config.page_rows_max)?;
        let cache_key = format!("list:{name}:{}", plan.fingerprint);
        let cache_tags = [tags::model(name), tags::rows(name)];
        let answer = self
            .inner
            .cache
            .get_or_load(&cache_key, &cache_tags, || async {
                let page = self.load_page(&definition, &plan).await?;
                Ok::<String, ProjectionError>(serde_json::to_string(&page).unwrap_or_default())
            })
            .await?;
        serde_json::from_str(&answer)
            .map_err(|e| ProjectionError::Database(format!("cached page does not parse: {e}")))
    }

    async fn load_page(&self, definition: &Definition, plan: &ListPlan) -> Result<RowPage, ProjectionError> {
        let (sql, binds) = sqlgen::list_rows(
            definition,
            &plan.filters,
            &plan.order_by,
            plan.descending,
            plan.after.as_ref(),
            plan.page_size + 1,
        );
        let mut query = sqlx::query_as::<_, (String, Option<String>, String)>(AssertSqlSafe(sql));
        for value in binds {
            query = query.bind(value);
        }
        let mut rows = match query.fetch_all(&self.inner.pool).await {
            Err(error) if is_shape_error(&error) => {
                self.forget_definition(definition.name());
                return Err(ProjectionError::Conflict(format!(
                    "read model '{}' was switched to a new definition during the query; ask again",
                    definition.name()
                )));
            }
            other => other?,
        };
        let more = rows.len() > plan.page_size;
        rows.truncate(plan.page_size);
        let next_cursor = match rows.last() {
            Some((_, order_value, key)) if more => Some(encode_cursor(&CursorState {
                o: plan.order_by.name.clone(),
                d: plan.descending,
                v: order_value.clone(),
                k: key.clone(),
            })),
            _ => None,
        };
        Ok(RowPage {
            rows: rows.into_iter().map(|(json, _, _)| json).collect(),
            next_cursor,
        })
    }

    /// The live generation's definition: from memory, else the registry.
    async fn live_definition(&self, name: &str) -> Result<Arc<Definition>, ProjectionError> {
        if let Some((_, definition)) = self.live_map().get(name) {
            return Ok(definition.clone());
        }
        let row: Option<(i32, String)> = sqlx::query_as(PROJECTION_DEFINITION_LIVE)
            .bind(name)
            .fetch_optional(&self.inner.pool)
            .await?;
        let Some((generation, text)) = row else {
            return Err(ProjectionError::NotFound(name.to_owned()));
        };
        let definition = Arc::new(Definition::from_json(&text)?);
        self.live_map()
            .insert(name.to_owned(), (generation, definition.clone()));
        Ok(definition)
    }

    fn forget_definition(&self, name: &str) {
        self.live_map().remove(name);
    }

    fn live_map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (i32, Arc<Definition>)>> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A validated list request.
struct ListPlan {
    filters: Vec<Filter>,
    order_by: crate::definition::Column,
    descending: bool,
    page_size: usize,
    after: Option<After>,
    /// Everything that determines the answer, as a cache key.
    fingerprint: String,
}

impl ListPlan {
    fn new(
        definition: &Definition,
        request: &ListRequest,
        page_rows_max: usize,
    ) -> Result<ListPlan, ProjectionError> {
        let invalid = |message: String| ProjectionError::InvalidQuery(message);
        if request.filters.len() > FILTERS_MAX {
            return Err(invalid(format!(
                "{} filters; at most {FILTERS_MAX}",
                request.filters.len()
            )));
        }
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_ROWS.min(page_rows_max),
            n if n > page_rows_max => {
                return Err(invalid(format!(
                    "page_size {n} is over the limit of {page_rows_max}"
                )));
            }
            n => n,
        };
        let mut filters = Vec::new();
        for filter in &request.filters {
            filters.push(plan_filter(definition, filter)?);
        }
        let order_by = match request.order_by.as_deref() {
            None | Some("") => definition.key().clone(),
            Some(name) => definition
                .column(name)
                .ok_or_else(|| {
                    invalid(format!(
                        "order_by '{name}': read model '{}' has no such column",
                        definition.name()
                    ))
                })?
                .clone(),
        };
        if order_by.column_type == ColumnType::Jsonb {
            return Err(invalid(format!(
                "order_by '{}': jsonb columns have no order",
                order_by.name
            )));
        }
        let after = match &request.cursor {
            None => None,
            Some(c) if c.is_empty() => None,
            Some(cursor) => {
                let state = decode_cursor(cursor)
                    .ok_or_else(|| invalid("cursor is not one this server gave out".to_owned()))?;
                if state.o != order_by.name || state.d != request.descending {
                    return Err(invalid(
                        "cursor belongs to another ordering; start again without a cursor".to_owned(),
                    ));
                }
                Some(After {
                    order_value: state.v,
                    key: state.k,
                })
            }
        };
        let fingerprint = format!(
            "{}|{}|{}|{}|{}",
            serde_json::to_string(
                &filters
                    .iter()
                    .map(|f| (f.column.name.as_str(), format!("{:?}", f.op), f.value.as_deref()))
                    .collect::<Vec<_>>()
            )
            .unwrap_or_default(),
            order_by.name,
            request.descending,
            page_size,
            request.cursor.as_deref().unwrap_or_default()
        );
        Ok(ListPlan {
            filters,
            order_by,
            descending: request.descending,
            page_size,
            after,
            fingerprint,
        })
    }
}

/// A requested filter checked against the read model's columns.
fn plan_filter(definition: &Definition, filter: &FilterRequest) -> Result<Filter, ProjectionError> {
    let invalid = |message: String| ProjectionError::InvalidQuery(message);
    let column = definition.column(&filter.column).ok_or_else(|| {
        invalid(format!(
            "filter on '{}': read model '{}' has no such column",
            filter.column,
            definition.name()
        ))
    })?;
    if !sqlgen::filter_allowed(filter.op, column.column_type) {
        return Err(invalid(format!(
            "filter on '{}': {:?} does not apply to a {} column",
            filter.column,
            filter.op,
            column.column_type.sql()
        )));
    }
    let value = match filter.op {
        FilterOp::IsNull | FilterOp::IsNotNull => None,
        _ => {
            let Some(text) = &filter.value else {
                return Err(invalid(format!(
                    "filter on '{}': a value is required",
                    filter.column
                )));
            };
            if text.len() > FILTER_VALUE_BYTES_MAX {
                return Err(invalid(format!(
                    "filter on '{}': value over {FILTER_VALUE_BYTES_MAX} bytes",
                    filter.column
                )));
            }
            Some(
                typed_value(column.column_type, text, filter.op)
                    .map_err(|why| invalid(format!("filter on '{}': {why}", filter.column)))?,
            )
        }
    };
    Ok(Filter {
        column: column.clone(),
        op: filter.op,
        value,
    })
}

/// A filter value as the column type's canonical text.
fn typed_value(column_type: ColumnType, text: &str, op: FilterOp) -> Result<String, String> {
    if op == FilterOp::Prefix {
        return Ok(text.to_owned());
    }
    let value = if column_type == ColumnType::Jsonb {
        serde_json::from_str(text).map_err(|e| format!("value is not JSON: {e}"))?
    } else {
        Value::String(text.to_owned())
    };
    convert(column_type, &value)?.ok_or_else(|| "value is null: use is_null".to_owned())
}

fn encode_cursor(state: &CursorState) -> String {
    let json = serde_json::to_string(state).unwrap_or_default();
    json.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(text: &str) -> Option<CursorState> {
    if !text.len().is_multiple_of(2) || text.len() > 8 * KEY_BYTES_MAX {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect();
    serde_json::from_slice(&bytes?).ok()
}

/// The view no longer has the columns the definition in memory expects.
fn is_shape_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("42703") | Some("42P01")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let state = CursorState {
            o: "email".into(),
            d: false,
            v: Some("a@b".into()),
            k: "k1".into(),
        };
        let back = decode_cursor(&encode_cursor(&state)).unwrap();
        assert_eq!(
            (back.o, back.v, back.k),
            ("email".into(), Some("a@b".into()), "k1".into())
        );
        assert!(decode_cursor("zz").is_none());
        assert!(decode_cursor("abc").is_none());
    }

    #[test]
    fn filter_values_are_typed_before_they_reach_sql() {
        assert_eq!(
            typed_value(ColumnType::Integer, "42", FilterOp::Eq).unwrap(),
            "42"
        );
        assert!(
            typed_value(ColumnType::Integer, "4x", FilterOp::Eq)
                .unwrap_err()
                .contains("not an integer")
        );
        assert!(
            typed_value(ColumnType::Jsonb, "{", FilterOp::Eq)
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
