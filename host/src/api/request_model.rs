//! A1111's generation request models (`modules/api/models.py:
//! StableDiffusionImg2ImgProcessingAPI`, `…Txt2Img…`, v1.10.1): every field with its pydantic
//! type and default, read laxly from a JSON body. The result is the request as A1111 sees it
//! after validation: the `parameters` of the response, and what the job is built from.
//! Unknown keys are dropped, null means the default (spec §f.5, §f.6).

use serde_json::{json, Map, Value};

use super::error::{ApiError, ValidationItem};
use super::lax::{self, LaxError};

/// A field's pydantic type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// `str`
    Str,
    /// `int`
    Int,
    /// `float`
    Float,
    /// `bool`
    Bool,
    /// `List[str]`
    StrList,
    /// `dict`
    Dict,
    /// `list` of anything
    List,
}

/// Which request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/sdapi/v1/txt2img`
    Txt2img,
    /// `/sdapi/v1/img2img`
    Img2img,
}

impl Endpoint {
    /// A1111's `state.job` while it runs.
    pub fn job_label(self) -> &'static str {
        match self {
            Endpoint::Txt2img => "scripts_txt2img",
            Endpoint::Img2img => "scripts_img2img",
        }
    }
}

use FieldType::*;

/// The fields both requests have (`StableDiffusionProcessing`'s constructor), in order.
const COMMON: &[(&str, FieldType, &str)] = &[
    ("prompt", Str, r#""""#),
    ("negative_prompt", Str, r#""""#),
    ("styles", StrList, "null"),
    ("seed", Int, "-1"),
    ("subseed", Int, "-1"),
    ("subseed_strength", Float, "0"),
    ("seed_resize_from_h", Int, "-1"),
    ("seed_resize_from_w", Int, "-1"),
    ("sampler_name", Str, "null"),
    ("scheduler", Str, "null"),
    ("batch_size", Int, "1"),
    ("n_iter", Int, "1"),
    ("steps", Int, "50"),
    ("cfg_scale", Float, "7.0"),
    ("width", Int, "512"),
    ("height", Int, "512"),
    ("restore_faces", Bool, "null"),
    ("tiling", Bool, "null"),
    ("do_not_save_samples", Bool, "false"),
    ("do_not_save_grid", Bool, "false"),
    ("eta", Float, "null"),
    ("denoising_strength", Float, "0.75"),
    ("s_min_uncond", Float, "null"),
    ("s_churn", Float, "null"),
    ("s_tmax", Float, "null"),
    ("s_tmin", Float, "null"),
    ("s_noise", Float, "null"),
    ("override_settings", Dict, "null"),
    ("override_settings_restore_afterwards", Bool, "true"),
    ("refiner_checkpoint", Str, "null"),
    ("refiner_switch_at", Float, "null"),
    ("disable_extra_networks", Bool, "false"),
    ("firstpass_image", Str, "null"),
    ("comments", Dict, "null"),
];

/// img2img's own fields (`StableDiffusionProcessingImg2Img`), in order.
const IMG2IMG: &[(&str, FieldType, &str)] = &[
    ("init_images", List, "null"),
    ("resize_mode", Int, "0"),
    ("image_cfg_scale", Float, "null"),
    ("mask", Str, "null"),
    ("mask_blur_x", Int, "4"),
    ("mask_blur_y", Int, "4"),
    ("mask_blur", Int, "null"),
    ("mask_round", Bool, "true"),
    ("inpainting_fill", Int, "0"),
    ("inpaint_full_res", Bool, "true"),
    ("inpaint_full_res_padding", Int, "0"),
    ("inpainting_mask_invert", Int, "0"),
    ("initial_noise_multiplier", Float, "null"),
    ("latent_mask", Str, "null"),
    ("force_task_id", Str, "null"),
];

/// txt2img's own fields (`StableDiffusionProcessingTxt2Img`), in order.
const TXT2IMG: &[(&str, FieldType, &str)] = &[
    ("enable_hr", Bool, "false"),
    ("firstphase_width", Int, "0"),
    ("firstphase_height", Int, "0"),
    ("hr_scale", Float, "2.0"),
    ("hr_upscaler", Str, "null"),
    ("hr_second_pass_steps", Int, "0"),
    ("hr_resize_x", Int, "0"),
    ("hr_resize_y", Int, "0"),
    ("hr_checkpoint_name", Str, "null"),
    ("hr_sampler_name", Str, "null"),
    ("hr_scheduler", Str, "null"),
    ("hr_prompt", Str, r#""""#),
    ("hr_negative_prompt", Str, r#""""#),
    ("force_task_id", Str, "null"),
];

/// The API's additions to both models, in order.
const API_EXTRAS: &[(&str, FieldType, &str)] = &[
    ("sampler_index", Str, r#""Euler""#),
    ("script_name", Str, "null"),
    ("script_args", List, "[]"),
    ("send_images", Bool, "true"),
    ("save_images", Bool, "false"),
    ("alwayson_scripts", Dict, "{}"),
    ("infotext", Str, "null"),
];

/// img2img's extra API field.
const IMG2IMG_EXTRAS: &[(&str, FieldType, &str)] = &[("include_init_images", Bool, "false")];

/// Every field of the endpoint's request model, in order.
pub fn model_fields(endpoint: Endpoint) -> Vec<(&'static str, FieldType, &'static str)> {
    let own = match endpoint {
        Endpoint::Txt2img => TXT2IMG,
        Endpoint::Img2img => IMG2IMG,
    };
    let mut fields: Vec<_> = COMMON.iter().chain(own).copied().collect();
    if endpoint == Endpoint::Img2img {
        fields.extend(IMG2IMG_EXTRAS);
    }
    fields.extend(API_EXTRAS);
    fields
}

/// Whether `name` is a field of the endpoint's model.
pub fn is_model_field(endpoint: Endpoint, name: &str) -> bool {
    model_fields(endpoint).iter().any(|(n, _, _)| *n == name)
}

/// A JSON object that keeps its keys in order (A1111's dicts keep insertion order; this
/// crate's `serde_json::Map` sorts them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ordered(pub Vec<(String, Value)>);

impl Ordered {
    /// The value of `name` (null when absent).
    pub fn get(&self, name: &str) -> &Value {
        const NULL: &Value = &Value::Null;
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map_or(NULL, |(_, value)| value)
    }

    /// Sets `name` (in place when present, else at the end).
    pub fn set(&mut self, name: &str, value: Value) {
        match self.0.iter_mut().find(|(key, _)| key == name) {
            Some((_, slot)) => *slot = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(key, _)| key.as_str())
    }
}

impl serde::Serialize for Ordered {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Reads one value as `kind` (null: None), with the 422 entry's location on failure.
fn read(name: &str, kind: FieldType, value: &Value) -> Result<Value, ValidationItem> {
    let at = |error: LaxError| error.at(name);
    let out = match kind {
        Str => lax::string(value).map_err(at)?.map(Value::from),
        Int => lax::int(value).map_err(at)?.map(Value::from),
        Float => lax::float(value).map_err(at)?.map(Value::from),
        Bool => lax::boolean(value).map_err(at)?.map(Value::from),
        StrList => match value {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match lax::string(item) {
                        Ok(Some(text)) => out.push(Value::from(text)),
                        Ok(None) | Err(_) => {
                            return Err(ValidationItem {
                                loc: vec![json!("body"), json!(name), json!(i)],
                                msg: "str type expected".into(),
                                kind: "type_error.str".into(),
                            })
                        }
                    }
                }
                Some(Value::Array(out))
            }
            Value::Null => None,
            _ => return Err(lax::string_list(value).map(|_| ()).unwrap_err().at(name)),
        },
        Dict => lax::object(value).map_err(at)?.cloned().map(Value::Object),
        List => match value {
            Value::Array(_) => Some(value.clone()),
            Value::Null => None,
            _ => {
                return Err(ValidationItem::body(
                    name,
                    "value is not a valid list",
                    "type_error.list",
                ))
            }
        },
    };
    Ok(out.unwrap_or(Value::Null))
}

/// The request as A1111's model reads `body`: every field of the model in order, with the
/// body's value coerced to the field's type, or the default when absent or null. Every
/// type error is reported in one 422.
pub fn read_model(endpoint: Endpoint, body: &Map<String, Value>) -> Result<Ordered, ApiError> {
    let mut out = Ordered::default();
    let mut errors = Vec::new();
    for (name, kind, default) in model_fields(endpoint) {
        let default = || serde_json::from_str::<Value>(default).unwrap_or(Value::Null);
        let value = match body.get(name) {
            None | Some(Value::Null) => default(),
            Some(value) => match read(name, kind, value) {
                Ok(Value::Null) => default(),
                Ok(value) => value,
                Err(error) => {
                    errors.push(error);
                    continue;
                }
            },
        };
        out.0.push((name.to_string(), value));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::Validation(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_reads_clients_forms_and_fills_defaults() {
        let body = json!({
            "seed": "-1", "steps": 25.0, "inpainting_fill": "0", "inpaint_full_res_padding": 32.0,
            "inpainting_mask_invert": false, "hr_checkpoint_name": null, "uniqueDocumentId": 3,
            "styles": ["a"], "init_images": ["abc"]
        });
        let model = read_model(Endpoint::Img2img, body.as_object().unwrap()).unwrap();
        assert_eq!(model.get("seed"), -1);
        assert_eq!(model.get("steps"), 25);
        assert_eq!(model.get("inpainting_fill"), 0);
        assert_eq!(model.get("inpaint_full_res_padding"), 32);
        assert_eq!(model.get("inpainting_mask_invert"), 0);
        assert_eq!(model.get("sampler_index"), "Euler");
        assert_eq!(model.get("cfg_scale"), 7.0);
        assert_eq!(model.get("alwayson_scripts"), &json!({}));
        assert!(!model.keys().any(|k| k == "uniqueDocumentId"));
        assert!(!model.keys().any(|k| k == "enable_hr"), "a txt2img field");
        assert_eq!(model.keys().next(), Some("prompt"));
        let text = serde_json::to_string(&model).unwrap();
        assert!(
            text.starts_with(r#"{"prompt":"","negative_prompt":"#),
            "{text}"
        );

        let bad = json!({"steps": "many", "styles": [{}], "mask": []});
        let error = read_model(Endpoint::Img2img, bad.as_object().unwrap()).unwrap_err();
        let ApiError::Validation(items) = error else {
            panic!("a 422")
        };
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].loc, vec![json!("body"), json!("styles"), json!(0)]);
        assert_eq!(items[1].msg, "value is not a valid integer");
    }
}
