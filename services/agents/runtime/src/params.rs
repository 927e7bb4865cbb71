//! Parameter types shared by the operations' parameter structs (each
//! operation reads its parameters into a struct of its own, see
//! [`crate::Operation::Params`]).

use serde::{Deserialize, Serialize};

/// A non-blank string: a name where an empty one makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Text(String);

impl TryFrom<String> for Text {
    type Error = String;

    fn try_from(text: String) -> Result<Text, String> {
        if text.trim().is_empty() {
            return Err("must be a non-empty string".to_owned());
        }
        Ok(Text(text))
    }
}

impl From<Text> for String {
    fn from(text: Text) -> String {
        text.0
    }
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The parameters of an operation that takes only its target database
/// (optional when exactly one target is registered).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetParams {
    pub database: Option<Text>,
}

/// An operation's result as the task records it.
pub fn to_json<T: Serialize>(value: &T) -> Result<serde_json::Value, domain::OperationError> {
    serde_json::to_value(value).map_err(|e| domain::OperationError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params {
        table: Text,
        #[serde(default)]
        analyze: bool,
    }

    #[test]
    fn missing_blank_and_mistyped_parameters_are_refused() {
        let read = |v: serde_json::Value| serde_json::from_value::<Params>(v);
        let ok = read(json!({"table": "x"})).unwrap();
        assert_eq!(&*ok.table, "x");
        assert!(!ok.analyze);
        assert!(
            read(json!({}))
                .unwrap_err()
                .to_string()
                .contains("missing field `table`")
        );
        assert!(
            read(json!({"table": " "}))
                .unwrap_err()
                .to_string()
                .contains("non-empty string")
        );
        assert!(read(json!({"table": "x", "analyze": "yes"})).is_err());
        assert!(
            read(json!({"table": "x", "other": 1}))
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
    }
}
