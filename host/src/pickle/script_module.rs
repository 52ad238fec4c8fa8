//! A TorchScript module tree as a state dict: what `torch.jit.load(f).state_dict()` gives,
//! read from the inert objects of the archive's `data.pkl` (OpenAI's `clip.load` builds its
//! model from exactly that, `clip/clip.py: load` → `build_model(model.state_dict())`).
//!
//! Each module is an object whose attributes are its `training` flag, parameters, buffers,
//! submodules and plain values; a key is the dotted path of attribute names from the root
//! (`visual.transformer.resblocks.0.attn.in_proj_weight`). Every tensor-valued attribute is
//! kept: tensor attributes that are neither parameters nor buffers would be extra keys, which
//! loaders that ask for their own keys never see.

use super::value::{TensorRef, Value};
use super::PickleError;
use std::path::Path;

/// The most tensors and objects one flattening visits: far above any model (ViT-L/14 has about
/// 400 tensors), and a bound on trees whose shared submodules would multiply the paths.
const MAX_VISITS: usize = 1 << 20;

/// The tensors under the module object `root`, by dotted attribute path, in attribute order.
pub(super) fn flatten(path: &Path, root: &Value) -> Result<Vec<(String, TensorRef)>, PickleError> {
    let mut out = Vec::new();
    let mut visits = 0;
    walk(path, root, "", &mut out, &mut visits)?;
    Ok(out)
}

/// Whether `value` is a TorchScript module object (a `__torch__.` class instance).
pub(super) fn is_script_object(value: &Value) -> bool {
    matches!(value, Value::Object(class, _) if class.starts_with("__torch__."))
}

fn walk(
    path: &Path,
    object: &Value,
    prefix: &str,
    out: &mut Vec<(String, TensorRef)>,
    visits: &mut usize,
) -> Result<(), PickleError> {
    let Value::Object(_, state) = object else {
        return Ok(());
    };
    // Containers are sealed once nested, so the tree has no cycles; sharing is bounded here.
    let state = state.borrow();
    let Value::Dict(items) = &*state else {
        return Ok(());
    };
    for (name, value) in items.borrow().iter() {
        let Value::Str(name) = name else { continue };
        *visits += 1;
        if *visits > MAX_VISITS {
            return Err(PickleError::ModuleTreeTooLarge {
                path: path.to_path_buf(),
                limit: MAX_VISITS,
            });
        }
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            Value::Tensor(t) => out.push((key, t.clone())),
            v if is_script_object(v) => walk(path, v, &key, out, visits)?,
            _ => {}
        }
    }
    Ok(())
}
