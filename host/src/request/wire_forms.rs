//! How the request's values look on the wire: A1111's forms (resize mode and masked content as
//! indices 0-3, schedules and RNG sources by name, `inpainting_mask_invert` as 0/1), accepting
//! the names and spellings people also send.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use sdhost_plugin_api::OptionValue;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{InitLatentMode, RngChoice};
use crate::prepare::inpaint::MaskedContent;
use crate::prepare::resize::ResizeMode;
use crate::sampling::schedule::Schedule;

/// Schema of a value sent as an index or a name (resize mode, masked content).
pub struct IndexOrName;

impl JsonSchema for IndexOrName {
    fn schema_name() -> Cow<'static, str> {
        "IndexOrName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["integer", "string"] })
    }
}

/// The text of a scalar JSON value (numbers and booleans as written).
fn scalar_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        other => Err(D::Error::custom(format!(
            "expected a name or a number, got {other}"
        ))),
    }
}

/// Implements serde for an enum written as `$write` and read by `$parse` from a name or index.
macro_rules! wire_enum {
    ($ty:ty, write: $write:expr, parse: $parse:expr, expected: $expected:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                #[allow(clippy::redundant_closure_call)]
                ($write)(*self).serialize(serializer)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = scalar_text(deserializer)?;
                #[allow(clippy::redundant_closure_call)]
                ($parse)(text.as_str()).ok_or_else(|| {
                    D::Error::custom(format!("unknown value \"{text}\" ({})", $expected))
                })
            }
        }
    };
}

wire_enum!(
    ResizeMode,
    write: |m: ResizeMode| m.index(),
    parse: ResizeMode::parse,
    expected: "0-3 or just-resize, crop-and-resize, resize-and-fill, latent-upscale"
);
wire_enum!(
    MaskedContent,
    write: |m: MaskedContent| m.index(),
    parse: MaskedContent::parse,
    expected: "0-3 or fill, original, latent noise, latent nothing"
);
wire_enum!(
    Schedule,
    write: |s: Schedule| s.label(),
    parse: |t: &str| Schedule::from_name(t).ok(),
    expected: "a schedule type such as Automatic, Karras, Exponential"
);
wire_enum!(
    RngChoice,
    write: |r: RngChoice| r.label(),
    parse: RngChoice::parse,
    expected: "CPU, NV or GPU"
);
wire_enum!(
    InitLatentMode,
    write: |m: InitLatentMode| m.label(),
    parse: InitLatentMode::parse,
    expected: "sample or mean"
);

/// `inpainting_mask_invert`: A1111 sends 0 or 1; booleans are accepted too.
pub fn flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    match scalar_text(deserializer)?.as_str() {
        "0" | "false" => Ok(false),
        "1" | "true" => Ok(true),
        other => Err(D::Error::custom(format!(
            "expected 0, 1, false or true, got {other}"
        ))),
    }
}

/// `inpaint_min_context`: `[width, height]` or null.
pub mod size_pair {
    use super::*;

    /// Writes `[w, h]` or null.
    pub fn serialize<S: Serializer>(
        value: &Option<(u32, u32)>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        value.map(|(w, h)| [w, h]).serialize(serializer)
    }

    /// Reads `[w, h]` or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<(u32, u32)>, D::Error> {
        Ok(Option::<[u32; 2]>::deserialize(deserializer)?.map(|[w, h]| (w, h)))
    }
}

/// `sampler_options`: `{"eta": 0.5, "solver": "bh2"}`, numbers and words.
pub mod sampler_options {
    use super::*;
    use serde::ser::SerializeMap;

    /// Writes the options as an object, in their order.
    pub fn serialize<S: Serializer>(
        options: &[(String, OptionValue)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(options.len()))?;
        for (name, value) in options {
            match value {
                OptionValue::Number(n) => map.serialize_entry(name, n)?,
                OptionValue::Text(t) => map.serialize_entry(name, t.as_str())?,
            }
        }
        map.end()
    }

    /// Reads an object of numbers and words.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(String, OptionValue)>, D::Error> {
        let map = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        map.into_iter()
            .map(|(name, value)| {
                let value = match value {
                    serde_json::Value::Number(n) => {
                        OptionValue::Number(n.as_f64().unwrap_or(f64::NAN))
                    }
                    serde_json::Value::String(s) => OptionValue::Text(s.into()),
                    other => {
                        return Err(D::Error::custom(format!(
                            "sampler option \"{name}\" must be a number or a word, got {other}"
                        )))
                    }
                };
                Ok((name, value))
            })
            .collect()
    }
}
