//! An upscaler file's state dict as spandrel 0.4 reads it (`__helpers/loader.py:
//! load_state_dict_from_file`, `canonicalize.py: canonicalize_state_dict`): `.pth`/`.pt`/
//! `.ckpt` through the restricted unpickler, `.safetensors` mapped; then the known wrapper
//! keys unwrapped (`params_ema`, `params`, `state_dict`, …), a single-entry dict unwrapped,
//! and a `module.`/`netG.` prefix common to every key removed.

use std::collections::BTreeMap;
use std::path::Path;

use tch::Tensor;

use super::UpscalerError;
use crate::checkpoint::Checkpoint;
use crate::pickle::{TorchFile, Value};

/// spandrel's wrapper keys, in the order it tries them.
const UNWRAP_KEYS: [&str; 7] = [
    "model_state_dict",
    "state_dict",
    "params_ema",
    "params-ema",
    "params",
    "model",
    "net",
];

/// Prefixes spandrel removes when every key has them.
const COMMON_PREFIXES: [&str; 2] = ["module.", "netG."];

/// The tensors of an upscaler file by key (CPU, stored dtype), canonicalized as spandrel does.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, Tensor>, UpscalerError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let tensors = match extension.as_str() {
        "safetensors" => Checkpoint::open(path)?.read_all()?,
        "pth" | "pt" | "ckpt" => read_pickle(path)?,
        _ => {
            return Err(UpscalerError::Extension {
                path: path.to_path_buf(),
            })
        }
    };
    Ok(remove_common_prefixes(tensors))
}

fn read_pickle(path: &Path) -> Result<BTreeMap<String, Tensor>, UpscalerError> {
    let file = TorchFile::open(path)?;
    let not_state_dict = |reason: String| UpscalerError::NotStateDict {
        path: path.to_path_buf(),
        reason,
    };
    let mut dict = file.root.clone();
    if !matches!(dict, Value::Dict(_)) {
        return Err(not_state_dict(format!(
            "the file holds a {}, not a dict",
            dict.type_name()
        )));
    }
    if let Some(inner) = UNWRAP_KEYS
        .iter()
        .find_map(|key| dict.get(key).filter(|v| matches!(v, Value::Dict(_))))
    {
        dict = inner;
    }
    let values = dict.dict_values();
    if let [single @ Value::Dict(_)] = values.as_slice() {
        dict = single.clone();
    }
    let Value::Dict(items) = &dict else {
        unreachable!("only dicts are kept above")
    };
    let mut tensors = BTreeMap::new();
    for (key, value) in items.borrow().iter() {
        if let (Value::Str(key), Value::Tensor(t)) = (key, value) {
            tensors.insert(key.clone(), file.tensor(t)?);
        }
    }
    if tensors.is_empty() {
        return Err(not_state_dict("it holds no tensors".into()));
    }
    Ok(tensors)
}

/// `remove_common_prefix`: each prefix in turn, when every key starts with it.
fn remove_common_prefixes(mut tensors: BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    for prefix in COMMON_PREFIXES {
        if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with(prefix)) {
            tensors = tensors
                .into_iter()
                .map(|(k, v)| (k[prefix.len()..].to_string(), v))
                .collect();
        }
    }
    tensors
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn a_prefix_common_to_every_key_goes() {
        let t = || Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let map: BTreeMap<String, Tensor> =
            [("module.a".to_string(), t()), ("module.b".into(), t())]
                .into_iter()
                .collect();
        let keys: Vec<String> = remove_common_prefixes(map).into_keys().collect();
        assert_eq!(keys, ["a", "b"]);
        let map: BTreeMap<String, Tensor> = [("module.a".to_string(), t()), ("b".into(), t())]
            .into_iter()
            .collect();
        let keys: Vec<String> = remove_common_prefixes(map).into_keys().collect();
        assert_eq!(keys, ["b", "module.a"]);
    }
}
