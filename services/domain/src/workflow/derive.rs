//! What an operation takes, derived from the type its parameters are read
//! into, so that the catalogue plans are validated against cannot disagree
//! with the operations: [`operation_spec`] runs the type's `Deserialize`
//! against a tracing deserializer that records the struct's fields, which
//! `deserialize_*` each field asks for (its JSON type) and which fields it
//! cannot do without (required: deserializing without it fails).
//!
//! The parameter type must be a plain struct (`#[derive(Deserialize)]`, no
//! `flatten`); a field that is `Option<_>` or `#[serde(default)]` is
//! optional.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

use super::plan::{OperationSpec, ParamSpec, ParamType};

/// The parameters `T` reads (see the module's documentation). Panics when
/// `T` is not a struct: that is a programming error found by any test that
/// builds the catalogue.
pub fn operation_spec<T: DeserializeOwned>() -> OperationSpec {
    let fields = RefCell::new(None);
    let types = RefCell::new(Vec::new());
    // Every field given: records the fields and their types.
    let complete = T::deserialize(Tracer {
        fields: &fields,
        types: &types,
        omit: None,
    });
    let names: &'static [&'static str] = fields
        .borrow()
        .unwrap_or_else(|| panic!("{} is not a struct", std::any::type_name::<T>()));
    if let Err(e) = complete {
        panic!(
            "{} cannot be read with every field given: {e}",
            std::any::type_name::<T>()
        );
    }
    let recorded = types.borrow().clone();
    let mut spec = OperationSpec::default();
    for (i, &name) in names.iter().enumerate() {
        let (optional, param_type) = recorded.get(i).copied().unwrap_or((true, ParamType::Any));
        // Required: the value cannot be read without it.
        let without = T::deserialize(Tracer {
            fields: &RefCell::new(None),
            types: &RefCell::new(Vec::new()),
            omit: Some(i),
        });
        let required = !optional && without.is_err();
        spec.params
            .insert(name.to_owned(), ParamSpec { param_type, required });
    }
    spec
}

#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<M: fmt::Display>(message: M) -> Self {
        TraceError(message.to_string())
    }
}

/// The top level: expects a struct and feeds it its fields.
struct Tracer<'r> {
    fields: &'r RefCell<Option<&'static [&'static str]>>,
    /// `(optional, type)` of each field, in order.
    types: &'r RefCell<Vec<(bool, ParamType)>>,
    /// The field left out.
    omit: Option<usize>,
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        *self.fields.borrow_mut() = Some(fields);
        visitor.visit_map(Fields {
            fields,
            next: 0,
            omit: self.omit,
            types: Some(self.types),
        })
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        Err(TraceError("not a struct".into()))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// A struct's fields, each with a made-up value of the type it asks for.
struct Fields<'r> {
    fields: &'static [&'static str],
    next: usize,
    omit: Option<usize>,
    /// Where the top level records its fields' types (none when nested).
    types: Option<&'r RefCell<Vec<(bool, ParamType)>>>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, TraceError> {
        if Some(self.next) == self.omit {
            self.next += 1;
        }
        match self.fields.get(self.next) {
            Some(name) => seed.deserialize((*name).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TraceError> {
        let mut asked = None;
        let value = seed.deserialize(Value { asked: &mut asked })?;
        if let Some(types) = self.types {
            let mut types = types.borrow_mut();
            while types.len() < self.next {
                types.push((true, ParamType::Any));
            }
            types.push(asked.unwrap_or((false, ParamType::Any)));
        }
        self.next += 1;
        Ok(value)
    }
}

/// A made-up value of whatever type is asked for (nothing for an option,
/// the first variant of an enum, a non-blank string); records what the
/// first ask was.
struct Value<'a> {
    asked: &'a mut Option<(bool, ParamType)>,
}

impl Value<'_> {
    fn record(&mut self, param_type: ParamType) {
        if self.asked.is_none() {
            *self.asked = Some((false, param_type));
        }
    }
}

macro_rules! made_up {
    ($($method:ident => $param_type:ident, $visit:ident($($value:expr)?);)*) => {
        $(fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
            self.record(ParamType::$param_type);
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Value<'_> {
    type Error = TraceError;

    made_up! {
        deserialize_bool => Boolean, visit_bool(false);
        deserialize_i8 => Integer, visit_i8(0);
        deserialize_i16 => Integer, visit_i16(0);
        deserialize_i32 => Integer, visit_i32(0);
        deserialize_i64 => Integer, visit_i64(0);
        deserialize_u8 => Integer, visit_u8(0);
        deserialize_u16 => Integer, visit_u16(0);
        deserialize_u32 => Integer, visit_u32(0);
        deserialize_u64 => Integer, visit_u64(0);
        deserialize_f32 => Number, visit_f32(0.0);
        deserialize_f64 => Number, visit_f64(0.0);
        deserialize_char => String, visit_char('x');
        deserialize_str => String, visit_str("x");
        deserialize_string => String, visit_str("x");
        deserialize_identifier => String, visit_str("x");
        deserialize_bytes => Array, visit_bytes(&[]);
        deserialize_byte_buf => Array, visit_bytes(&[]);
        deserialize_unit => Any, visit_unit();
        deserialize_any => Any, visit_unit();
        deserialize_ignored_any => Any, visit_unit();
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        // Optional: its type is what the inner value asks for.
        let mut inner = None;
        let value = visitor.visit_some(Value { asked: &mut inner })?;
        if self.asked.is_none() {
            *self.asked = Some((true, inner.map_or(ParamType::Any, |(_, t)| t)));
        }
        Ok(value)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        mut self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.record(ParamType::Any);
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(ParamType::Array);
        visitor.visit_seq(
            de::value::SeqDeserializer::<std::iter::Empty<()>, TraceError>::new(std::iter::empty()),
        )
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(ParamType::Object);
        visitor.visit_map(
            de::value::MapDeserializer::<std::iter::Empty<((), ())>, TraceError>::new(std::iter::empty()),
        )
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.record(ParamType::Object);
        visitor.visit_map(Fields {
            fields,
            next: 0,
            omit: None,
            types: None,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        // A unit variant is written as its name.
        self.record(ParamType::String);
        let first = variants.first().copied().unwrap_or_default();
        visitor.visit_enum(first.into_deserializer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Kind {
        Full,
        Incremental,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Nested {
        delay_ms: u64,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Params {
        database: Option<String>,
        table: String,
        columns: Vec<String>,
        #[serde(default)]
        analyze: bool,
        measure_ms: Option<u32>,
        ratio: f64,
        kind: Option<Kind>,
        simulate: Option<Nested>,
        definition: Option<serde_json::Value>,
        #[serde(rename = "where")]
        filter: serde_json::Map<String, serde_json::Value>,
    }

    #[test]
    fn the_spec_names_each_field_its_json_type_and_whether_it_is_required() {
        // Given: a parameter struct; When: its spec is derived
        let spec = operation_spec::<Params>();
        let of = |name: &str| spec.params.get(name).cloned().unwrap_or_else(|| panic!("{name}"));
        // Then: each field with its type, required unless optional or defaulted
        let expect = |name: &str, param_type: ParamType, required: bool| {
            assert_eq!(of(name), ParamSpec { param_type, required }, "{name}");
        };
        expect("database", ParamType::String, false);
        expect("table", ParamType::String, true);
        expect("columns", ParamType::Array, true);
        expect("analyze", ParamType::Boolean, false);
        expect("measure_ms", ParamType::Integer, false);
        expect("ratio", ParamType::Number, true);
        expect("kind", ParamType::String, false);
        expect("simulate", ParamType::Object, false);
        expect("definition", ParamType::Any, false);
        expect("where", ParamType::Object, true);
        assert_eq!(spec.params.len(), 10);
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}

    #[test]
    fn an_operation_without_parameters_takes_none() {
        assert!(operation_spec::<Empty>().params.is_empty());
    }
}
