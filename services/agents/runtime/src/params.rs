//! Reading a task's parameters, with the errors every operation gives for
//! a missing or mistyped one (the task fails with that text).

use serde_json::{Map, Value};

/// A required non-blank string.
pub fn text<'a>(params: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match params.get(name) {
        Some(Value::String(text)) if !text.trim().is_empty() => Ok(text),
        Some(other) => Err(format!(
            "parameter '{name}' must be a non-empty string, not {other}"
        )),
        None => Err(format!("needs parameter '{name}'")),
    }
}

/// An optional non-blank string.
pub fn optional_text<'a>(params: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match params.get(name) {
        None => Ok(None),
        Some(_) => text(params, name).map(Some),
    }
}

/// An optional boolean, false when absent.
pub fn flag(params: &Map<String, Value>, name: &str) -> Result<bool, String> {
    match params.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("parameter '{name}' must be true or false, not {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn missing_blank_and_mistyped_parameters_are_named() {
        let params = json!({"a": "x", "blank": " ", "n": 1, "b": true})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(text(&params, "a"), Ok("x"));
        assert_eq!(text(&params, "z").unwrap_err(), "needs parameter 'z'");
        assert!(text(&params, "blank").unwrap_err().contains("non-empty string"));
        assert_eq!(optional_text(&params, "z"), Ok(None));
        assert!(optional_text(&params, "n").is_err());
        assert_eq!(flag(&params, "b"), Ok(true));
        assert_eq!(flag(&params, "z"), Ok(false));
        assert!(flag(&params, "a").unwrap_err().contains("true or false"));
    }
}
