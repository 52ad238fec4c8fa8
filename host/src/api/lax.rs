//! Lax input typing as A1111's request models have it (pydantic v1, `spec §f.5/§f.6`):
//! integers from `3`, `3.7` (truncated), `"3"` and `true`; floats from numbers, numeric strings
//! and booleans; booleans from `0`/`1`, `"true"`/`"off"`/`"yes"` …; strings from numbers; null
//! means the default. Refusals carry pydantic's message and type for the 422 body.
//!
//! Two ways in: the value functions ([`int`], [`float`], [`boolean`], [`string`] …) for code
//! that walks a JSON object, and the `deserialize_with` adapters in [`de`] with the
//! [`LaxJson`] extractor for serde request structs, whose errors name the field path.

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::body::LimitedBody;
use super::error::{ApiError, ValidationItem};

/// A value of the wrong type: pydantic's message and error type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaxError {
    /// e.g. "value is not a valid integer".
    pub msg: &'static str,
    /// e.g. "type_error.integer".
    pub kind: &'static str,
}

const NOT_INT: LaxError = LaxError {
    msg: "value is not a valid integer",
    kind: "type_error.integer",
};
const NOT_FLOAT: LaxError = LaxError {
    msg: "value is not a valid float",
    kind: "type_error.float",
};
const NOT_BOOL: LaxError = LaxError {
    msg: "value could not be parsed to a boolean",
    kind: "type_error.bool",
};
const NOT_STR: LaxError = LaxError {
    msg: "str type expected",
    kind: "type_error.str",
};
const NOT_LIST: LaxError = LaxError {
    msg: "value is not a valid list",
    kind: "type_error.list",
};
const NOT_DICT: LaxError = LaxError {
    msg: "value is not a valid dict",
    kind: "type_error.dict",
};

impl LaxError {
    /// The 422 entry of body field `field`.
    pub fn at(&self, field: &str) -> ValidationItem {
        ValidationItem::body(field, self.msg, self.kind)
    }
}

/// pydantic v1's `int_validator`: `int(v)` of a number (truncating), a bool or an integer
/// string (Python's `int("3.0")` fails, so does this); None for null.
pub fn int(value: &Value) -> Result<Option<i64>, LaxError> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(i64::from(*b))),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(Some(i)),
            None => {
                let f = n.as_f64().ok_or(NOT_INT)?;
                // Seeds from BigInt clients may pass i64; beyond it is no seed anyone means.
                if f.is_finite() && f.abs() < 9.2e18 {
                    Ok(Some(f.trunc() as i64))
                } else {
                    Err(NOT_INT)
                }
            }
        },
        Value::String(s) => {
            let text = s.trim().replace('_', "");
            text.parse::<i64>().map(Some).map_err(|_| NOT_INT)
        }
        _ => Err(NOT_INT),
    }
}

/// pydantic v1's `float_validator`: `float(v)` of a number, bool or numeric string.
pub fn float(value: &Value) -> Result<Option<f64>, LaxError> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(if *b { 1.0 } else { 0.0 })),
        Value::Number(n) => n.as_f64().map(Some).ok_or(NOT_FLOAT),
        Value::String(s) => {
            let text = s.trim().to_ascii_lowercase();
            let parsed = match text.as_str() {
                "nan" | "+nan" | "-nan" => Some(f64::NAN),
                "inf" | "+inf" | "infinity" | "+infinity" => Some(f64::INFINITY),
                "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
                _ => text.replace('_', "").parse::<f64>().ok(),
            };
            parsed.map(Some).ok_or(NOT_FLOAT)
        }
        _ => Err(NOT_FLOAT),
    }
}

/// pydantic v1's `bool_validator`: booleans, 0/1 (as numbers too) and the words Python's
/// pydantic knows (`0 off f false n no`, `1 on t true y yes`, any case).
pub fn boolean(value: &Value) -> Result<Option<bool>, LaxError> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Number(n) => match n.as_f64() {
            Some(0.0) => Ok(Some(false)),
            Some(1.0) => Ok(Some(true)),
            _ => Err(NOT_BOOL),
        },
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Ok(Some(false)),
            "1" | "on" | "t" | "true" | "y" | "yes" => Ok(Some(true)),
            _ => Err(NOT_BOOL),
        },
        _ => Err(NOT_BOOL),
    }
}

/// pydantic v1's `str_validator`: strings, and numbers written as Python writes them
/// (`True` for true, `1.0` for a float).
pub fn string(value: &Value) -> Result<Option<String>, LaxError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Bool(b) => Ok(Some(if *b { "True" } else { "False" }.into())),
        Value::Number(n) => Ok(Some(python_number(n))),
        _ => Err(NOT_STR),
    }
}

/// A JSON number as Python's `str()` writes it (floats keep a `.0`).
fn python_number(n: &serde_json::Number) -> String {
    if n.is_f64() {
        let f = n.as_f64().unwrap_or_default();
        if f.fract() == 0.0 && f.abs() < 1e16 {
            return format!("{f:.1}");
        }
    }
    n.to_string()
}

/// A list of strings (pydantic's `List[str]`), each item as [`string`]; a null item is an
/// error as in pydantic.
pub fn string_list(value: &Value) -> Result<Option<Vec<String>>, LaxError> {
    match value {
        Value::Null => Ok(None),
        Value::Array(items) => items
            .iter()
            .map(|item| string(item)?.ok_or(NOT_STR))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Err(NOT_LIST),
    }
}

/// An object (pydantic's `dict`).
pub fn object(value: &Value) -> Result<Option<&Map<String, Value>>, LaxError> {
    match value {
        Value::Null => Ok(None),
        Value::Object(map) => Ok(Some(map)),
        _ => Err(NOT_DICT),
    }
}

/// Reads the fields of a request body one by one, collecting every type error (pydantic
/// reports them all in one 422).
pub struct Fields<'a> {
    body: &'a Map<String, Value>,
    errors: Vec<ValidationItem>,
}

impl<'a> Fields<'a> {
    /// A reader over `body`.
    pub fn new(body: &'a Map<String, Value>) -> Self {
        Fields {
            body,
            errors: Vec::new(),
        }
    }

    /// The raw value of `name` (absent and null are the same: the default).
    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.body.get(name).filter(|v| !v.is_null())
    }

    /// `name` read with `read`, or None when absent, null or wrong (the error is kept).
    pub fn get<T>(
        &mut self,
        name: &str,
        read: impl Fn(&'a Value) -> Result<Option<T>, LaxError>,
    ) -> Option<T> {
        let value = self.body.get(name)?;
        match read(value) {
            Ok(value) => value,
            Err(error) => {
                self.errors.push(error.at(name));
                None
            }
        }
    }

    /// Records a refusal of `name` found elsewhere.
    pub fn refuse(&mut self, name: &str, error: LaxError) {
        self.errors.push(error.at(name));
    }

    /// The errors so far as one 422, if any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// Parses a request body as a JSON object: 422 `value_error.jsondecode` when it is not
/// JSON, `type_error.dict` when it is JSON but no object. An empty body is `{}` (clients post
/// `/interrupt` with none).
pub fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match json_value(bytes)? {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        _ => Err(ApiError::Validation(vec![ValidationItem {
            loc: vec![Value::from("body")],
            msg: NOT_DICT.msg.into(),
            kind: NOT_DICT.kind.into(),
        }])),
    }
}

/// Parses a request body as JSON (empty: null), or FastAPI's 422 for malformed JSON.
pub fn json_value(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let position = e.column().saturating_sub(1);
        ApiError::Validation(vec![ValidationItem {
            loc: vec![Value::from("body"), Value::from(position)],
            msg: e.to_string(),
            kind: "value_error.jsondecode".into(),
        }])
    })
}

/// A JSON body read into `T` with serde, laxly where `T`'s fields use the [`de`] adapters:
/// errors become one 422 entry naming the field path (`["body", "image"]`).
pub struct LaxJson<T>(pub T);

/// The prefix [`de`] adapters put before pydantic's type so [`LaxJson`] can split it out.
const TAG: &str = "lax:";

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for LaxJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let LimitedBody(bytes) = LimitedBody::from_request(request, state).await?;
        from_bytes(&bytes).map(LaxJson)
    }
}

/// Reads `T` from a JSON body (empty: from `{}`), with [`LaxJson`]'s errors.
pub fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = match json_value(bytes)? {
        Value::Null => Value::Object(Map::new()),
        other => other,
    };
    serde_path_to_error::deserialize(value).map_err(|error| {
        let mut loc = vec![Value::from("body")];
        loc.extend(
            error
                .path()
                .iter()
                .map(|segment| match segment {
                    serde_path_to_error::Segment::Seq { index } => Value::from(*index),
                    other => Value::from(other.to_string()),
                })
                .filter(|v| v != "?"),
        );
        let message = error.inner().to_string();
        let (kind, msg) = match message.strip_prefix(TAG).and_then(|m| m.split_once(' ')) {
            Some((kind, msg)) => (kind.to_string(), msg.to_string()),
            None if message.starts_with("missing field") => {
                ("value_error.missing".into(), "field required".to_string())
            }
            None => ("type_error".into(), message),
        };
        ApiError::Validation(vec![ValidationItem { loc, msg, kind }])
    })
}

/// `deserialize_with` adapters for serde request structs: each reads its type as pydantic
/// v1 does (see the module's value functions). Use with `#[serde(default)]` so that absent
/// fields take their default; the `opt_` forms also keep null as None.
pub mod de {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    use super::{LaxError, TAG};

    fn fail<E: serde::de::Error>(error: LaxError) -> E {
        E::custom(format!("{TAG}{} {}", error.kind, error.msg))
    }

    fn read<'de, D: Deserializer<'de>, T>(
        d: D,
        f: impl Fn(&Value) -> Result<Option<T>, LaxError>,
    ) -> Result<Option<T>, D::Error> {
        let value = Value::deserialize(d)?;
        f(&value).map_err(fail)
    }

    macro_rules! adapters {
        ($($plain:ident, $opt:ident, $ty:ty, $f:path;)*) => {$(
            /// The type read laxly; null gives the type's default.
            pub fn $plain<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                Ok(read(d, $f)?.unwrap_or_default())
            }
            /// The type read laxly; null is None.
            pub fn $opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
                read(d, $f)
            }
        )*};
    }

    adapters! {
        int, opt_int, i64, super::int;
        float, opt_float, f64, super::float;
        boolean, opt_boolean, bool, super::boolean;
        string, opt_string, String, super::string;
        string_list, opt_string_list, Vec<String>, super::string_list;
    }

    /// A non-negative integer (pydantic `int` with a `ge=0`-like use), laxly.
    pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let value = read(d, super::int)?.unwrap_or_default();
        usize::try_from(value).map_err(|_| D::Error::custom(format!("{value} is negative")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_and_bools_read_as_pydantic_v1() {
        assert_eq!(int(&json!("-1")), Ok(Some(-1)));
        assert_eq!(int(&json!(25.7)), Ok(Some(25)));
        assert_eq!(int(&json!(true)), Ok(Some(1)));
        assert_eq!(int(&json!(null)), Ok(None));
        assert_eq!(int(&json!("3.0")), Err(NOT_INT));
        assert_eq!(int(&json!("many")), Err(NOT_INT));
        assert_eq!(int(&json!("12345678901234")), Ok(Some(12_345_678_901_234)));
        assert_eq!(float(&json!("7.5")), Ok(Some(7.5)));
        assert_eq!(float(&json!(7)), Ok(Some(7.0)));
        assert_eq!(float(&json!([1])), Err(NOT_FLOAT));
        assert_eq!(boolean(&json!(0)), Ok(Some(false)));
        assert_eq!(boolean(&json!("Yes")), Ok(Some(true)));
        assert_eq!(boolean(&json!(2)), Err(NOT_BOOL));
        assert_eq!(string(&json!(3)), Ok(Some("3".into())));
        assert_eq!(string(&json!(1.0)), Ok(Some("1.0".into())));
        assert_eq!(string(&json!({})), Err(NOT_STR));
        assert_eq!(
            string_list(&json!(["a", 1])),
            Ok(Some(vec!["a".into(), "1".into()]))
        );
    }

    #[derive(serde::Deserialize, Debug)]
    struct Probe {
        #[serde(default, deserialize_with = "de::int")]
        steps: i64,
        #[serde(default, deserialize_with = "de::opt_boolean")]
        flag: Option<bool>,
    }

    #[test]
    fn structs_read_laxly_and_errors_name_the_field() {
        let probe: Probe = from_bytes(br#"{"steps": "20", "flag": 1, "other": []}"#).unwrap();
        assert_eq!((probe.steps, probe.flag), (20, Some(true)));
        let probe: Probe = from_bytes(b"").unwrap();
        assert_eq!((probe.steps, probe.flag), (0, None));
        let error = from_bytes::<Probe>(br#"{"steps": "many"}"#).unwrap_err();
        assert_eq!(
            error.body(),
            json!({"detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}]})
        );
        let error = from_bytes::<Probe>(b"{bad").unwrap_err();
        assert_eq!(error.body()["detail"][0]["type"], "value_error.jsondecode");
        assert_eq!(error.status(), 422);
    }
}
