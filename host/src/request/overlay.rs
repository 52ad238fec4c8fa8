//! Laying a front end's partial input (a JSON object of A1111 API fields) over a complete
//! request, and the list of fields with their docs and defaults, read from the request's
//! schema so that a new field needs no code here.

use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::GenerationRequest;

/// Why a request cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRequest {
    /// A field this version does not know.
    #[error("unknown field \"{field}\"{}", suggestion(field))]
    UnknownField {
        /// The field as sent.
        field: String,
    },
    /// A setting in `override_settings` that sdhost does not apply.
    #[error("override_settings: \"{setting}\" is not supported (supported: the request's fields and CLIP_stop_at_last_layers)")]
    UnsupportedSetting {
        /// The setting as sent.
        setting: String,
    },
    /// A value of the wrong type or out of range.
    #[error("field \"{field}\": {message}")]
    Value {
        /// The field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// ", did you mean …?" for a near field name.
fn suggestion(field: &str) -> String {
    let wanted = field.to_ascii_lowercase().replace('-', "_");
    fields()
        .iter()
        .find(|f| {
            // Only names long enough to mean something are matched inside others.
            let long = wanted.len() >= 4 && f.name.len() >= 4;
            f.name == wanted || (long && (f.name.contains(&wanted) || wanted.contains(&f.name)))
        })
        .map(|f| format!(", did you mean \"{}\"?", f.name))
        .unwrap_or_default()
}

/// One field of the request, for front ends that list them (CLI flags, clients' dialogs).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldInfo {
    /// A1111's API name.
    pub name: String,
    /// What it means (the field's doc comment).
    pub description: String,
    /// Its value in A1111's UI defaults.
    pub default: Value,
}

/// A1111 setting names (`override_settings`) that are request fields under another name.
const SETTING_ALIASES: &[(&str, &str)] = &[("CLIP_stop_at_last_layers", "clip_skip")];

/// Serde aliases of fields, accepted as the field (older clients, A1111's `sampler_index`).
const FIELD_ALIASES: &[(&str, &str)] = &[
    ("rng", "randn_source"),
    ("color_correction", "img2img_color_correction"),
    ("sampler_index", "sampler_name"),
];

/// Every field of the request in schema order (docs from the doc comments, defaults from
/// [`GenerationRequest::ui_defaults`]).
pub fn fields() -> &'static [FieldInfo] {
    static FIELDS: OnceLock<Vec<FieldInfo>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        let schema = serde_json::to_value(schema()).expect("schema is JSON");
        let defaults = defaults_object();
        let properties = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        properties
            .into_iter()
            .map(|(name, property)| FieldInfo {
                description: property["description"]
                    .as_str()
                    .unwrap_or_default()
                    .replace('\n', " "),
                default: defaults.get(&name).cloned().unwrap_or(Value::Null),
                name,
            })
            .collect()
    })
}

/// The request's JSON schema (for clients and docs).
pub fn schema() -> &'static schemars::Schema {
    static SCHEMA: OnceLock<schemars::Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| schemars::schema_for!(GenerationRequest))
}

fn defaults_object() -> Map<String, Value> {
    to_object(&GenerationRequest::ui_defaults())
}

fn to_object(request: &GenerationRequest) -> Map<String, Value> {
    match serde_json::to_value(request).expect("requests serialize") {
        Value::Object(map) => map,
        _ => unreachable!("a struct serializes to an object"),
    }
}

fn is_field(name: &str) -> bool {
    fields().iter().any(|f| f.name == name)
}

impl GenerationRequest {
    /// The request field an A1111 setting (`override_settings`, `/options`) sets, if it
    /// sets one: the field of the same name or of its alias (`CLIP_stop_at_last_layers`).
    pub fn setting_field(setting: &str) -> Option<&'static str> {
        let field = SETTING_ALIASES
            .iter()
            .find(|(alias, _)| *alias == setting)
            .map_or(setting, |(_, field)| field);
        fields()
            .iter()
            .find(|f| f.name == field)
            .map(|f| f.name.as_str())
    }

    /// Whether `name` is a field of the request (under its A1111 API name).
    pub fn is_field(name: &str) -> bool {
        is_field(name)
    }

    /// The fields of the request, with docs and defaults.
    pub fn fields() -> &'static [FieldInfo] {
        fields()
    }

    /// This request as a JSON object of A1111 API fields.
    pub fn to_object(&self) -> Map<String, Value> {
        to_object(self)
    }

    /// This request with the fields of `changes` set: A1111 API names (and the aliases older
    /// clients send), `mask_blur` for both blurs, `override_settings` for settings that are
    /// fields here. Unknown fields and bad values are refused, naming the field.
    pub fn overlay(&self, changes: &Map<String, Value>) -> Result<Self, InvalidRequest> {
        let mut merged = self.to_object();
        let mut set = |name: &str, value: &Value| -> Result<(), InvalidRequest> {
            let name = FIELD_ALIASES
                .iter()
                .find(|(alias, _)| *alias == name)
                .map_or(name, |(_, field)| field);
            if !is_field(name) {
                return Err(InvalidRequest::UnknownField { field: name.into() });
            }
            merged.insert(name.to_string(), value.clone());
            // Deserialized alone so that an error names this field.
            check_field(self, name, value)
        };
        // Settings first: the request's own fields win over them, as in A1111, where an
        // explicit field beats the option it defaults to.
        if let Some(settings) = changes.get("override_settings").filter(|v| !v.is_null()) {
            let settings = settings.as_object().ok_or_else(|| InvalidRequest::Value {
                field: "override_settings".into(),
                message: "must be an object of setting names and values".into(),
            })?;
            for (setting, value) in settings {
                let field = SETTING_ALIASES
                    .iter()
                    .find(|(alias, _)| alias == setting)
                    .map_or(setting.as_str(), |(_, field)| field);
                if !is_field(field) {
                    return Err(InvalidRequest::UnsupportedSetting {
                        setting: setting.clone(),
                    });
                }
                set(field, value)?;
            }
        }
        for (name, value) in changes {
            if !matches!(name.as_str(), "override_settings" | "mask_blur") {
                set(name, value)?;
            }
        }
        // A1111's `mask_blur` sets both directions and wins over them.
        if let Some(blur) = changes.get("mask_blur").filter(|v| !v.is_null()) {
            set("mask_blur_x", blur)?;
            set("mask_blur_y", blur)?;
        }
        if overrides_img2img_ratio(changes) {
            set("token_merging_ratio_img2img", &Value::from(0.0))?;
        }
        serde_json::from_value(Value::Object(merged)).map_err(|e| InvalidRequest::Value {
            field: "request".into(),
            message: e.to_string(),
        })
    }
}

/// Whether `changes` set a non-zero `token_merging_ratio` and no img2img ratio: A1111's img2img
/// takes a ratio the request overrides before its `token_merging_ratio_img2img` option
/// (`StableDiffusionProcessingImg2Img.get_token_merging_ratio`), so that option is cleared.
fn overrides_img2img_ratio(changes: &Map<String, Value>) -> bool {
    let settings = changes.get("override_settings").and_then(Value::as_object);
    let value = |name: &str| {
        changes
            .get(name)
            .or_else(|| settings.and_then(|s| s.get(name)))
    };
    // The request's own field wins over its `override_settings`, as in `overlay`.
    let ratio = value("token_merging_ratio").and_then(Value::as_f64);
    ratio.is_some_and(|r| r != 0.0) && value("token_merging_ratio_img2img").is_none()
}

/// Checks that `value` is a valid `name` by deserializing `base` with only it changed.
fn check_field(base: &GenerationRequest, name: &str, value: &Value) -> Result<(), InvalidRequest> {
    let mut object = base.to_object();
    object.insert(name.to_string(), value.clone());
    serde_json::from_value::<GenerationRequest>(Value::Object(object))
        .map(|_| ())
        .map_err(|e| InvalidRequest::Value {
            field: name.to_string(),
            message: e.to_string(),
        })
}
