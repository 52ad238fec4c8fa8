//! Patching the model's weights in place with the active networks, A1111's default method
//! (`networks.py: network_apply_weights`, `network_restore_weights_from_backup`): a layer's
//! original weight is backed up on the CPU the first time a network touches it, restored
//! exactly when the set of networks on it changes, and the networks' changes are added in set
//! order. Each layer remembers what is on it, so re-running the same set costs nothing and a
//! new set touches only the layers the old or new set patches.

use std::collections::{BTreeMap, BTreeSet};

use tch::{Device, Tensor};

use super::convert::{LayerIndex, Target};
use super::modules::Multipliers;
use super::network::LoadedNetwork;
use crate::weights::{LayerParams, LayerTable};

/// One network of the active set, with its multipliers and the name the prompt used.
#[derive(Clone, Copy)]
pub struct ActiveNetwork<'a> {
    /// The loaded file.
    pub network: &'a LoadedNetwork,
    /// A number no other load of a file gets, so a reloaded file is a different network.
    pub id: u64,
    /// te, unet and dyn of the tag.
    pub multipliers: Multipliers,
    /// The name as written in the tag (A1111's `mentioned_name`).
    pub mentioned_name: &'a str,
}

/// What a layer has on it: per network, its load id, the multipliers and the module applied.
type LayerState = Vec<(u64, [u64; 3], String)>;

/// A set of networks as the patcher compares sets: load ids and multipliers.
pub type SetKey = Vec<(u64, [u64; 3])>;

/// A layer change that could not be applied (A1111 counts these per network:
/// `Networks with errors: name (count)`).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerFailure {
    /// The network's name as the prompt wrote it.
    pub network: String,
    /// The A1111 layer name.
    pub layer: String,
    /// Why.
    pub reason: String,
}

/// The original weights of the layers networks have touched and what is on each layer now.
#[derive(Default)]
pub struct WeightPatcher {
    /// Checkpoint layer key → original weight and bias, on the CPU.
    backups: BTreeMap<String, (Tensor, Option<Tensor>)>,
    /// Checkpoint layer key → what is applied to it now (absent: original weights).
    applied: BTreeMap<String, LayerState>,
    /// The set applied last and the failures it had, so a repeat costs nothing.
    last: Option<(SetKey, Vec<LayerFailure>)>,
    /// Layers the last [`WeightPatcher::apply`] restored or patched (0 for a repeated set).
    changed: usize,
}

fn multiplier_bits(m: &Multipliers) -> [u64; 3] {
    [
        m.te.to_bits(),
        m.unet.to_bits(),
        m.dyn_dim.map_or(u64::MAX, |d| d as u64),
    ]
}

/// A CPU copy of `t` that shares nothing with it.
fn backup(t: &Tensor) -> Tensor {
    if t.device() == Device::Cpu {
        t.copy()
    } else {
        t.to_device(Device::Cpu)
    }
}

impl WeightPatcher {
    /// Makes `set` the networks applied to `layers` (an empty set restores every original
    /// weight). Returns the layer changes that failed and were skipped.
    pub fn apply(
        &mut self,
        set: &[ActiveNetwork<'_>],
        index: &LayerIndex,
        layers: &LayerTable,
    ) -> Vec<LayerFailure> {
        let set_key: SetKey = set
            .iter()
            .map(|a| (a.id, multiplier_bits(&a.multipliers)))
            .collect();
        self.changed = 0;
        if let Some((key, failures)) = &self.last {
            if *key == set_key {
                return failures.clone();
            }
        }
        // Per layer, in set order: which network's which module goes on it.
        let mut wanted: BTreeMap<String, Vec<(usize, &str, &Target)>> = BTreeMap::new();
        for (n, active) in set.iter().enumerate() {
            for (sd_key, (target, _)) in &active.network.modules {
                if let Some(layer) = index.get(&target.layer) {
                    wanted
                        .entry(layer.checkpoint_key.clone())
                        .or_default()
                        .push((n, sd_key, target));
                }
            }
        }
        let touched: BTreeSet<String> = wanted.keys().chain(self.applied.keys()).cloned().collect();
        let mut failures = Vec::new();
        for key in touched {
            let Some(params) = layers.get(&key) else {
                continue;
            };
            let plan = wanted.get(&key).map(Vec::as_slice).unwrap_or_default();
            let state: LayerState = plan
                .iter()
                .map(|&(n, sd_key, _)| {
                    let (id, bits) = set_key[n];
                    (id, bits, sd_key.to_string())
                })
                .collect();
            if self
                .applied
                .get(&key)
                .map_or(state.is_empty(), |s| *s == state)
            {
                continue;
            }
            self.changed += 1;
            self.restore(&key, params);
            if plan.is_empty() {
                self.applied.remove(&key);
                continue;
            }
            self.backups
                .entry(key.clone())
                .or_insert_with(|| (backup(&params.weight), params.bias.as_ref().map(backup)));
            for &(n, sd_key, target) in plan {
                let active = &set[n];
                let (_, module) = &active.network.modules[sd_key];
                if let Err(reason) =
                    patch_layer(params, target, module.as_ref(), &active.multipliers)
                {
                    failures.push(LayerFailure {
                        network: active.mentioned_name.to_string(),
                        layer: sd_key.to_string(),
                        reason,
                    });
                }
            }
            self.applied.insert(key, state);
        }
        self.last = Some((set_key, failures.clone()));
        failures
    }

    /// Puts the original weights of layer `key` back, bit for bit.
    fn restore(&self, key: &str, params: &LayerParams) {
        if let Some((weight, bias)) = self.backups.get(key) {
            params.weight.shallow_clone().copy_(weight);
            if let (Some(mut live), Some(original)) =
                (params.bias.as_ref().map(Tensor::shallow_clone), bias)
            {
                live.copy_(original);
            }
        }
    }

    /// Whether any layer is patched now.
    pub fn is_patched(&self) -> bool {
        !self.applied.is_empty()
    }

    /// How many layers the last [`WeightPatcher::apply`] restored or patched: 0 when it
    /// found the set already applied.
    pub fn changed_layers(&self) -> usize {
        self.changed
    }

    /// The set applied now (empty: the original weights).
    pub fn applied_set(&self) -> SetKey {
        match &self.last {
            Some((key, _)) if self.is_patched() => key.clone(),
            _ => SetKey::new(),
        }
    }
}

/// Adds one module's change to a layer (A1111's body of `network_apply_weights`): the weight
/// (or its q/k/v third) gets `updown`, zero-padded from 4 to 9 input channels for an
/// inpainting model's first convolution; the bias gets `ex_bias`.
fn patch_layer(
    params: &LayerParams,
    target: &Target,
    module: &dyn super::modules::NetworkModule,
    multipliers: &Multipliers,
) -> Result<(), String> {
    let mut weight = match target.chunk {
        Some(chunk) => {
            let rows = params.weight.size()[0] / 3;
            params.weight.narrow(0, chunk * rows, rows)
        }
        None => params.weight.shallow_clone(),
    };
    let change = module
        .calc_updown(&weight, multipliers)
        .map_err(|e| match e {
            // The failure is reported with its layer already; the key need not be repeated.
            super::modules::NetworkError::BadModule { reason, .. } => reason,
            other => other.to_string(),
        })?;
    let mut updown = change.updown;
    let shape = weight.size();
    if shape.len() == 4 && shape[1] == 9 {
        // A1111 pads whatever the module made by five input channels: a LoRA for the
        // 4-channel layer then fits the 9-channel inpainting layer, with no change to the
        // mask and masked-image channels.
        updown = updown
            .f_constant_pad_nd([0, 0, 0, 0, 0, 5])
            .map_err(|e| e.to_string())?;
    }
    if updown.size() != shape {
        return Err(format!(
            "its change has shape {:?}, the layer's weight {:?} (a network for another model?)",
            updown.size(),
            shape
        ));
    }
    let patched = (&weight + updown.to_kind(weight.kind())).to_kind(weight.kind());
    weight.copy_(&patched);
    if let Some(ex_bias) = change.ex_bias {
        let Some(bias) = &params.bias else {
            return Err("it changes the bias of a layer that has none".into());
        };
        let mut bias = bias.shallow_clone();
        if ex_bias.size() != bias.size() {
            return Err(format!(
                "its bias change has shape {:?}, the layer's bias {:?}",
                ex_bias.size(),
                bias.size()
            ));
        }
        let patched =
            (&bias + ex_bias.to_device(bias.device()).to_kind(bias.kind())).to_kind(bias.kind());
        bias.copy_(&patched);
    }
    Ok(())
}
