//! Reading an A1111 hypernetwork `.pt` (`modules/hypernetworks/hypernetwork.py:
//! Hypernetwork.load`) through the restricted unpickler: a dict whose integer keys are context
//! widths, each mapping to a `(key state dict, value state dict)` pair, beside metadata keys
//! that say how the modules are laid out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Device, Kind};

use crate::models::hypernetwork::{
    Hypernetwork, HypernetworkBuildError, HypernetworkModule, HypernetworkStructure,
};
use crate::pickle::{PickleError, TorchFile, Value};
use crate::weights::{LoadError, TensorMap, VarBuilder};

/// Why a hypernetwork file could not be used (A1111 prints the error and runs without it).
#[derive(Debug, thiserror::Error)]
pub enum HypernetworkError {
    /// Not a readable torch archive, or a pickle that calls something other than tensor
    /// constructors (refused before anything runs).
    #[error(transparent)]
    Pickle(#[from] PickleError),
    /// The pickle is not the dict A1111 saves.
    #[error("{path}: not an A1111 hypernetwork: {reason}")]
    NotAHypernetwork { path: PathBuf, reason: String },
    /// A metadata key has a value A1111 could not use.
    #[error("{path}: `{key}`: {reason}")]
    Metadata {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    /// A module could not be built: unknown activation, bad structure, missing or misshapen
    /// weight.
    #[error("{path}: the {which} module for context width {width}: {reason}")]
    Module {
        path: PathBuf,
        width: i64,
        which: &'static str,
        reason: String,
    },
    /// A state dict has weights the module has no place for (A1111 loads strictly).
    #[error(
        "{path}: the {which} module for context width {width} has unexpected weights {keys:?}"
    )]
    UnexpectedWeights {
        path: PathBuf,
        width: i64,
        which: &'static str,
        keys: Vec<String>,
    },
}

/// Python truthiness of a pickled value, as A1111's `if add_layer_norm:` tests it.
fn truthy(value: &Value) -> bool {
    match value {
        Value::None => false,
        Value::Bool(b) => *b,
        Value::Int(n) => *n != 0,
        Value::Float(x) => *x != 0.0,
        Value::Str(s) => !s.is_empty(),
        Value::Bytes(b) => !b.is_empty(),
        Value::Tuple(items) => !items.is_empty(),
        Value::List(items) => !items.borrow().is_empty(),
        Value::Dict(items) => !items.borrow().is_empty(),
        _ => true,
    }
}

/// A list or tuple of numbers (bools count as 0 and 1, as in Python arithmetic).
fn numbers(value: &Value) -> Option<Vec<f64>> {
    let items = match value {
        Value::List(items) => items.borrow().clone(),
        Value::Tuple(items) => items.to_vec(),
        _ => return None,
    };
    items
        .iter()
        .map(|item| match item {
            Value::Int(n) => Some(*n as f64),
            Value::Float(x) => Some(*x),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            _ => None,
        })
        .collect()
}

/// A1111's `parse_dropout_structure`: no dropout, or 0.3 after every hidden layer but the
/// last, which has one only with `last_layer_dropout`. It has `len + 1` entries for a
/// two-entry layer structure, which is harmless: only indices 1 … len−1 are read.
pub fn parse_dropout_structure(
    layer_structure: &[f64],
    use_dropout: bool,
    last_layer_dropout: bool,
) -> Vec<f64> {
    if !use_dropout {
        return vec![0.0; layer_structure.len()];
    }
    let mut values = vec![0.0];
    values.extend(std::iter::repeat_n(
        0.3,
        layer_structure.len().saturating_sub(3),
    ));
    values.push(if last_layer_dropout { 0.3 } else { 0.0 });
    values.push(0.0);
    values
}

/// The module layout from the file's metadata, with `Hypernetwork.load`'s defaults.
fn structure(path: &Path, root: &Value) -> Result<HypernetworkStructure, HypernetworkError> {
    let metadata = |key: &'static str, reason: String| HypernetworkError::Metadata {
        path: path.to_path_buf(),
        key,
        reason,
    };
    let layer_structure = match root.get("layer_structure") {
        None => vec![1.0, 2.0, 1.0],
        Some(value) => numbers(&value).filter(|ls| !ls.is_empty()).ok_or_else(|| {
            metadata(
                "layer_structure",
                format!("not a list of numbers: {value:?}"),
            )
        })?,
    };
    let activation = match root.get("activation_func") {
        None | Some(Value::None) => None,
        Some(Value::Str(name)) => Some(name),
        Some(other) => {
            return Err(metadata(
                "activation_func",
                format!("not a name: {other:?}"),
            ))
        }
    };
    let flag = |key: &str, default: bool| root.get(key).map_or(default, |v| truthy(&v));
    let dropout_structure = match root.get("dropout_structure") {
        None | Some(Value::None) => {
            // `use_dropout` only counts when the file has no explicit structure.
            parse_dropout_structure(
                &layer_structure,
                flag("use_dropout", false),
                flag("last_layer_dropout", false),
            )
        }
        Some(value) => numbers(&value).ok_or_else(|| {
            metadata(
                "dropout_structure",
                format!("not a list of numbers: {value:?}"),
            )
        })?,
    };
    Ok(HypernetworkStructure {
        layer_structure,
        activation,
        layer_norm: flag("is_layer_norm", false),
        activate_output: flag("activate_output", true),
        dropout_structure,
    })
}

/// The items of a pickled dict.
fn dict_items(value: &Value) -> Option<Vec<(Value, Value)>> {
    match value {
        Value::Dict(items) => Some(items.borrow().clone()),
        _ => None,
    }
}

/// Reads one module's state dict, renaming the first format's `linear1`/`linear2` keys
/// (A1111's `fix_old_state_dict`).
fn state_dict(
    (file, path): (&mut TorchFile, &Path),
    value: &Value,
    (width, which): (i64, &'static str),
) -> Result<TensorMap, HypernetworkError> {
    let not_hypernetwork = |reason: String| HypernetworkError::NotAHypernetwork {
        path: path.to_path_buf(),
        reason,
    };
    let items = dict_items(value).ok_or_else(|| {
        not_hypernetwork(format!(
            "the {which} state dict for width {width} is not a dict"
        ))
    })?;
    let mut tensors = BTreeMap::new();
    for (key, tensor) in items {
        let (Value::Str(key), Value::Tensor(tensor)) = (key, tensor) else {
            return Err(not_hypernetwork(format!(
                "the {which} state dict for width {width} holds something other than named tensors"
            )));
        };
        let key = match key.as_str() {
            "linear1.weight" => "linear.0.weight".to_string(),
            "linear1.bias" => "linear.0.bias".to_string(),
            "linear2.weight" => "linear.1.weight".to_string(),
            "linear2.bias" => "linear.1.bias".to_string(),
            _ => key,
        };
        tensors.insert(key, file.tensor(&tensor)?);
    }
    Ok(TensorMap::new(path, tensors))
}

/// Builds one module from its state dict, strictly: every weight must find its place.
fn module(
    path: &Path,
    dict: &TensorMap,
    (width, which): (i64, &'static str),
    layout: &HypernetworkStructure,
    (kind, device): (Kind, Device),
) -> Result<HypernetworkModule, HypernetworkError> {
    let vb = VarBuilder::new(dict, kind, device);
    let module = HypernetworkModule::new(&vb, width, layout).map_err(|error| {
        let reason = match error {
            // Name the weight without repeating the path the error starts with.
            HypernetworkBuildError::Load(LoadError::MissingTensor { key, .. }) => {
                format!("missing weight `{key}`")
            }
            HypernetworkBuildError::Load(LoadError::ShapeMismatch {
                key,
                expected,
                found,
                ..
            }) => format!("weight `{key}` has shape {found:?}, the layout needs {expected:?}"),
            other => other.to_string(),
        };
        HypernetworkError::Module {
            path: path.to_path_buf(),
            width,
            which,
            reason,
        }
    })?;
    let unexpected = dict.unused();
    if !unexpected.is_empty() {
        return Err(HypernetworkError::UnexpectedWeights {
            path: path.to_path_buf(),
            width,
            which,
            keys: unexpected,
        });
    }
    Ok(module)
}

/// Loads the hypernetwork at `path` with its weights in `kind` on `device`.
pub fn load_hypernetwork(
    path: &Path,
    kind: Kind,
    device: Device,
) -> Result<Hypernetwork, HypernetworkError> {
    let mut file = TorchFile::open(path)?;
    let root = file.root.clone();
    let items = dict_items(&root).ok_or_else(|| HypernetworkError::NotAHypernetwork {
        path: path.to_path_buf(),
        reason: "the pickle is not a dict".into(),
    })?;
    let layout = structure(path, &root)?;
    let mut modules = BTreeMap::new();
    for (key, value) in items {
        // Only `int` keys are widths (A1111: `type(size) == int`); the rest is metadata.
        let Value::Int(width) = key else { continue };
        let pair = match &value {
            Value::Tuple(items) => items.to_vec(),
            Value::List(items) => items.borrow().clone(),
            _ => Vec::new(),
        };
        if width <= 0 || pair.len() < 2 {
            return Err(HypernetworkError::NotAHypernetwork {
                path: path.to_path_buf(),
                reason: format!(
                    "width {width} must be positive and map to a (key, value) pair of state dicts"
                ),
            });
        }
        let mut built = Vec::with_capacity(2);
        for (dict, which) in [(&pair[0], "key"), (&pair[1], "value")] {
            let dict = state_dict((&mut file, path), dict, (width, which))?;
            built.push(module(
                path,
                &dict,
                (width, which),
                &layout,
                (kind, device),
            )?);
        }
        let value_module = built.pop().expect("two modules");
        let key_module = built.pop().expect("two modules");
        modules.insert(width, (key_module, value_module));
    }
    Ok(Hypernetwork::new(modules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_structures_follow_a1111s_parse_dropout_structure() {
        assert_eq!(
            parse_dropout_structure(&[1.0, 2.0, 1.0], false, true),
            [0.0; 3]
        );
        assert_eq!(
            parse_dropout_structure(&[1.0, 2.0, 1.0], true, false),
            [0.0; 3]
        );
        assert_eq!(
            parse_dropout_structure(&[1.0, 2.0, 1.0], true, true),
            [0.0, 0.3, 0.0]
        );
        assert_eq!(
            parse_dropout_structure(&[1.0, 2.0, 2.0, 2.0, 1.0], true, false),
            [0.0, 0.3, 0.3, 0.0, 0.0]
        );
        // Two entries give three, as in A1111.
        assert_eq!(
            parse_dropout_structure(&[1.0, 1.0], true, true),
            [0.0, 0.3, 0.0]
        );
    }

    #[test]
    fn python_truthiness_decides_flags() {
        assert!(!truthy(&Value::None));
        assert!(!truthy(&Value::Int(0)));
        assert!(truthy(&Value::Bool(true)));
        assert!(truthy(&Value::Str("x".into())));
        assert_eq!(
            numbers(&Value::Tuple(vec![Value::Int(1), Value::Float(1.5)].into())),
            Some(vec![1.0, 1.5])
        );
        assert_eq!(
            numbers(&Value::Tuple(vec![Value::Str("1".into())].into())),
            None
        );
    }
}
