//! One LoRA/LyCORIS file loaded against a model (A1111's `networks.py: load_network`): its
//! tensors grouped per layer, each group turned into a module by the first module type that
//! accepts it, the keys that match no layer kept for the warning, and bundled embeddings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use super::convert::{match_layer, split_key, LayerIndex, Target};
use super::modules::{create_module, ModuleWeights, NetworkError, NetworkModule};
use crate::checkpoint::Checkpoint;
use crate::extra_networks::catalog::NetworkFile;
use crate::prompt::embeddings::Embedding;
use crate::weights::LayerTable;

/// Why a network file could not be used at all (A1111 reports these and goes on without it).
#[derive(Debug, thiserror::Error)]
pub enum LoadNetworkError {
    /// The file could not be read (`.safetensors`, or a pickle unreadable or refused).
    #[error(transparent)]
    Read(#[from] crate::weights::LoadError),
    /// A layer's tensors fit no module type, or a module could not be built (A1111 drops the
    /// whole file: `Could not find a module type … that would accept those keys`).
    #[error("{path}: layer `{key}`: {reason}")]
    Module {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// A network file's tensors by key, as stored (CPU).
pub type StateDict = BTreeMap<String, Tensor>;

/// Reads every tensor of a LoRA file, `.safetensors` or a `torch.save` pickle (through the
/// restricted unpickler, `state_dict` unwrapped as A1111's `sd_models.read_state_dict` does).
pub fn read_state_dict(path: &Path) -> Result<StateDict, LoadNetworkError> {
    Ok(Checkpoint::open(path)?.read_all()?)
}

/// A network file ready to patch a model: its modules by layer.
pub struct LoadedNetwork {
    /// The file.
    pub file: NetworkFile,
    /// The modules by A1111 layer name, each with the layer it patches.
    pub modules: BTreeMap<String, (Target, Box<dyn NetworkModule>)>,
    /// File keys that match no layer of the model (A1111 logs them at debug level).
    pub unmatched: Vec<String>,
    /// Embeddings bundled in the file (`bundle_emb.NAME.…`), as their vectors.
    pub bundle_embeddings: Vec<(String, Tensor)>,
}

/// Loads `file` against the layers of a model (A1111's `load_network`).
pub fn load_network(
    file: &NetworkFile,
    index: &LayerIndex,
    layers: &LayerTable,
) -> Result<LoadedNetwork, LoadNetworkError> {
    let state = read_state_dict(&file.path)?;
    let mut groups: BTreeMap<String, ModuleWeights> = BTreeMap::new();
    let mut unmatched = Vec::new();
    let mut bundled: BTreeMap<String, BTreeMap<String, Tensor>> = BTreeMap::new();
    let mut targets: BTreeMap<String, Target> = BTreeMap::new();
    for (key, tensor) in state {
        let (layer, part) = split_key(&key);
        if layer == "bundle_emb" {
            if let Some((name, vector)) = part.split_once('.') {
                bundled
                    .entry(name.to_string())
                    .or_default()
                    .insert(vector.to_string(), tensor);
            }
            continue;
        }
        let Some((sd_key, target)) = match_layer(&layer, index) else {
            unmatched.push(key);
            continue;
        };
        let Some(params) = index
            .get(&target.layer)
            .and_then(|l| layers.get(&l.checkpoint_key))
        else {
            unmatched.push(key);
            continue;
        };
        let mut weight_shape = params.weight.size();
        if target.chunk.is_some() {
            weight_shape[0] /= 3;
        }
        let group = groups
            .entry(sd_key.clone())
            .or_insert_with(|| ModuleWeights {
                network_key: key.clone(),
                sd_key: sd_key.clone(),
                w: BTreeMap::new(),
                layer: params.kind,
                weight_shape,
            });
        group.w.insert(part, tensor);
        targets.insert(sd_key, target);
    }
    drop_incomplete_attention(&mut groups, index, &mut unmatched);
    let mut modules = BTreeMap::new();
    for (sd_key, weights) in groups {
        // The layer as the file names it (its first key without the tensor suffix), and the
        // module's reason without the key it repeats.
        let module_error = |reason: String| LoadNetworkError::Module {
            path: file.path.clone(),
            key: split_key(&weights.network_key).0,
            reason,
        };
        let module = match create_module(&weights) {
            Some(Ok(module)) => module,
            Some(Err(NetworkError::BadModule { reason, .. })) => return Err(module_error(reason)),
            Some(Err(e)) => return Err(module_error(e.to_string())),
            None => {
                let keys: Vec<&str> = weights.w.keys().map(String::as_str).collect();
                return Err(module_error(format!(
                    "no module type accepts the keys {}",
                    keys.join(", ")
                )));
            }
        };
        let target = targets.remove(&sd_key).expect("every group has a target");
        modules.insert(sd_key, (target, module));
    }
    Ok(LoadedNetwork {
        file: file.clone(),
        modules,
        unmatched,
        bundle_embeddings: bundled
            .into_iter()
            .filter_map(|(name, data)| bundle_vectors(data).map(|v| (name, v)))
            .collect(),
    })
}

/// A1111 patches a merged-`in_proj` attention (SD2's and SDXL's OpenCLIP) only when the file has
/// its q, k, v and out projections all four (`network_apply_weights`'s `MultiheadAttention`
/// branch; the attention never runs `out_proj`'s own forward, so an `out_proj` alone is not
/// applied either); otherwise none of them is, so they are set aside here as unmatched.
fn drop_incomplete_attention(
    groups: &mut BTreeMap<String, ModuleWeights>,
    index: &LayerIndex,
    unmatched: &mut Vec<String>,
) {
    let attentions: std::collections::BTreeSet<String> = groups
        .keys()
        .filter_map(|k| {
            ["_q_proj", "_k_proj", "_v_proj", "_out_proj"]
                .iter()
                .find_map(|p| k.strip_suffix(p))
        })
        .filter(|a| index.get(a).is_some_and(|l| l.merged_qkv))
        .map(str::to_string)
        .collect();
    for attention in attentions {
        let names = ["q_proj", "k_proj", "v_proj", "out_proj"].map(|p| format!("{attention}_{p}"));
        if names.iter().all(|n| groups.contains_key(n)) {
            continue;
        }
        for name in names {
            if let Some(group) = groups.remove(&name) {
                unmatched.push(group.network_key);
            }
        }
    }
}

/// The vectors of a bundled embedding (A1111's `create_embedding_from_data`): the
/// `string_to_param.*` tensor, else the only tensor; one vector becomes a row.
fn bundle_vectors(data: BTreeMap<String, Tensor>) -> Option<Tensor> {
    let tensor = match data.get("string_to_param.*") {
        Some(t) => t.shallow_clone(),
        None if data.len() == 1 => data.into_values().next()?,
        None => return None,
    };
    let tensor = tensor.to_kind(Kind::Float);
    Some(if tensor.dim() == 1 {
        tensor.unsqueeze(0)
    } else {
        tensor
    })
}

/// The bundled embeddings of `network` usable by a text encoder `width` wide, as embeddings
/// whose infotext hash is the network's name as the prompt wrote it (A1111's
/// `BundledTIHash(name)`), and the names of those of another width (skipped).
pub fn bundled_embeddings(
    network: &LoadedNetwork,
    mentioned_name: &str,
    width: i64,
) -> (Vec<Embedding>, Vec<String>) {
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for (name, vectors) in &network.bundle_embeddings {
        if vectors.dim() != 2 || vectors.size()[1] != width {
            skipped.push(name.clone());
            continue;
        }
        let Ok(values) = Vec::<f32>::try_from(&vectors.flatten(0, -1)) else {
            skipped.push(name.clone());
            continue;
        };
        usable.push(Embedding {
            name: name.clone(),
            vectors: values,
            width,
            hash: mentioned_name.to_string(),
            path: network.file.path.join(name),
        });
    }
    (usable, skipped)
}
