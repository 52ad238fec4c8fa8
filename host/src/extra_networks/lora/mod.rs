//! LoRA and LyCORIS networks (A1111's `extensions-builtin/Lora/`): the `<lora:…>` tags of a
//! prompt resolved to files, each file loaded against the model's layers and the model's
//! weights patched in place with the set (A1111's default, non-functional method).
//!
//! [`LoraNetworks::activate`] is A1111's `ExtraNetworkLora.activate` with `networks.
//! load_networks` and, eagerly, the `network_apply_weights` each layer runs on its next
//! forward: [`convert`] maps file keys to layers, [`network`] loads files, [`modules`] holds
//! the math of each module type, [`apply`] patches and restores, [`hash`] gives infotext hashes.

pub mod apply;
pub mod convert;
pub mod hash;
pub mod modules;
pub mod network;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use apply::{ActiveNetwork, WeightPatcher};
use convert::LayerIndex;
use modules::Multipliers;
use network::{bundled_embeddings, load_network, LoadedNetwork};

use super::catalog::{NetworkCatalog, NetworkFile, NETWORK_EXTENSIONS};
use super::ExtraNetworkParams;
use crate::prompt::embeddings::Embedding;
use crate::weights::LayerTable;

/// How many unmatched keys a warning names.
const SHOWN_KEYS: usize = 3;

/// One `<lora:NAME:te:unet:dyn>` tag read as A1111's `ExtraNetworkLora.activate` reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraTag {
    /// The file name or alias.
    pub name: String,
    /// te, unet and dyn.
    pub multipliers: Multipliers,
}

impl LoraTag {
    /// The tag's name and multipliers: te is the second positional item or `te=` (default 1),
    /// unet the third or `unet=` (default te), dyn the fourth or `dyn=` (default none).
    pub fn parse(params: &ExtraNetworkParams) -> Result<Self, String> {
        let name = params
            .positional
            .first()
            .filter(|n| !n.is_empty())
            .ok_or("the tag names no network")?
            .clone();
        let number = |text: &str| -> Result<f64, String> {
            text.trim()
                .parse::<f64>()
                .map_err(|_| format!("`{text}` is not a number"))
        };
        let integer = |text: &str| -> Result<i64, String> {
            text.trim()
                .parse::<i64>()
                .map_err(|_| format!("`{text}` is not a whole number"))
        };
        let mut te = match params.positional.get(1) {
            Some(text) => number(text)?,
            None => 1.0,
        };
        if let Some(text) = params.named.get("te") {
            te = number(text)?;
        }
        let mut unet = match params.positional.get(2) {
            Some(text) => number(text)?,
            None => te,
        };
        if let Some(text) = params.named.get("unet") {
            unet = number(text)?;
        }
        let mut dyn_dim = params.positional.get(3).map(|t| integer(t)).transpose()?;
        if let Some(text) = params.named.get("dyn") {
            dyn_dim = Some(integer(text)?);
        }
        Ok(Self {
            name,
            multipliers: Multipliers { te, unet, dyn_dim },
        })
    }
}

/// What activating a prompt's LoRAs gives the job.
#[derive(Default)]
pub struct LoraActivation {
    /// For the user: missing names, unreadable files, unmatched keys, skipped layers.
    pub warnings: Vec<String>,
    /// Infotext `Lora hashes` (`name: 12hex, …`), when any network was applied.
    pub lora_hashes: Option<String>,
    /// Embeddings bundled in the active files, for the job's prompts.
    pub embeddings: Vec<Embedding>,
    /// The set now patched into the weights (load ids and multipliers; empty: the original
    /// weights), for caches of what the weights compute.
    pub set: apply::SetKey,
    /// Layers this activation restored or patched: 0 when the set was applied already.
    pub changed_layers: usize,
}

/// The model's LoRA state: files found, networks loaded, weights patched. One per loaded model.
#[derive(Default)]
pub struct LoraNetworks {
    /// The files of the folders last scanned.
    catalog: Option<NetworkCatalog>,
    /// The active networks' files: modification time read at, load id, network.
    loaded: BTreeMap<PathBuf, (Option<SystemTime>, u64, LoadedNetwork)>,
    /// The id the next loaded file gets.
    next_id: u64,
    /// File hashes, with the modification time they were computed at.
    hashes: BTreeMap<PathBuf, (Option<SystemTime>, String)>,
    /// The model's layers by A1111 name (built on first use).
    index: Option<LayerIndex>,
    /// Original weights and what is applied.
    patcher: WeightPatcher,
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The folders, for messages.
fn folder_list(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "no LoRA folder is configured (--lora-dir, or a models folder)".into();
    }
    let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    format!("searched {}", shown.join(", "))
}

impl LoraNetworks {
    /// Makes the networks of `tags` (a prompt's `lora`/`lyco` tags, in order) the ones applied
    /// to `layers`, searching `dirs`; no tags restores the original weights. Problems with one
    /// network become warnings and the others still apply, as in A1111.
    pub fn activate(
        &mut self,
        tags: &[ExtraNetworkParams],
        dirs: &[PathBuf],
        layers: &LayerTable,
        clip_prefix: &str,
        clip_width: i64,
    ) -> LoraActivation {
        let mut out = LoraActivation::default();
        // Every job comes here, most without tags: with nothing loaded or patched there is
        // nothing to restore, so such a job costs nothing (not even the layer index).
        if tags.is_empty() && self.loaded.is_empty() && !self.patcher.is_patched() {
            return out;
        }
        // Taken out for the call and put back at the end, rather than cloned for every job.
        let index = self
            .index
            .take()
            .unwrap_or_else(|| LayerIndex::new(layers.keys().map(String::as_str), clip_prefix));
        let mut chosen: Vec<(PathBuf, LoraTag)> = Vec::new();
        let mut missing = Vec::new();
        for params in tags {
            let tag = match LoraTag::parse(params) {
                Ok(tag) => tag,
                Err(reason) => {
                    out.warnings.push(format!(
                        "<lora:{}> ignored: {reason}",
                        params.items.join(":")
                    ));
                    continue;
                }
            };
            let Some(file) = self.find(&tag.name, dirs) else {
                missing.push(tag.name.clone());
                continue;
            };
            // A1111 only hides such files from its picker; a prompt can still name them, and
            // then the layers whose names and shapes happen to fit are patched.
            let made_for = super::facts::sd_version(&file.metadata);
            if made_for != "Unknown" && made_for != index.sd_version() {
                out.warnings.push(format!(
                    "LoRA {} is for another architecture: its metadata says {made_for}, the \
                     model is {}; only layers that fit are patched",
                    tag.name,
                    index.sd_version()
                ));
            }
            match self.load(&file, &index, layers) {
                Ok(()) => chosen.push((file.path.clone(), tag)),
                Err(e) => out
                    .warnings
                    .push(format!("LoRA {}: not applied: {e}", tag.name)),
            }
        }
        if !missing.is_empty() {
            out.warnings.push(format!(
                "Lora not found: {} ({})",
                missing.join(", "),
                folder_list(dirs)
            ));
        }
        // Only the active files stay in memory (A1111's `lora_in_memory_limit` of 0).
        self.loaded
            .retain(|path, _| chosen.iter().any(|(p, _)| p == path));
        let set: Vec<ActiveNetwork<'_>> = chosen
            .iter()
            .map(|(path, tag)| {
                let (_, id, network) = &self.loaded[path];
                ActiveNetwork {
                    network,
                    id: *id,
                    multipliers: tag.multipliers,
                    mentioned_name: &tag.name,
                }
            })
            .collect();
        let failures = self.patcher.apply(&set, &index, layers);
        for active in &set {
            let network = active.network;
            if !network.unmatched.is_empty() {
                let shown: Vec<&str> = network
                    .unmatched
                    .iter()
                    .take(SHOWN_KEYS)
                    .map(String::as_str)
                    .collect();
                out.warnings.push(format!(
                    "LoRA {}: {} keys match no layer of this model and are ignored (first: {})",
                    active.mentioned_name,
                    network.unmatched.len(),
                    shown.join(", ")
                ));
            }
            let own: Vec<_> = failures
                .iter()
                .filter(|f| f.network == active.mentioned_name)
                .collect();
            if let Some(first) = own.first() {
                out.warnings.push(format!(
                    "Networks with errors: {} ({}): layer {}: {}",
                    active.mentioned_name,
                    own.len(),
                    first.layer,
                    first.reason
                ));
            }
            let (embeddings, skipped) =
                bundled_embeddings(network, active.mentioned_name, clip_width);
            out.embeddings.extend(embeddings);
            if !skipped.is_empty() {
                out.warnings.push(format!(
                    "LoRA {}: bundled embeddings {} are for another text encoder and are skipped",
                    active.mentioned_name,
                    skipped.join(", ")
                ));
            }
        }
        let files: Vec<(&str, NetworkFile)> = set
            .iter()
            .map(|a| (a.mentioned_name, a.network.file.clone()))
            .collect();
        out.lora_hashes = lora_hashes(&mut self.hashes, &files, &mut out.warnings);
        out.set = self.patcher.applied_set();
        out.changed_layers = self.patcher.changed_layers();
        self.index = Some(index);
        out
    }

    /// The file a tag names, rescanning the folders when it is not in the last scan (A1111
    /// rescans on a missing name too).
    fn find(&mut self, name: &str, dirs: &[PathBuf]) -> Option<NetworkFile> {
        let stale = self.catalog.as_ref().is_none_or(|c| c.dirs() != dirs);
        if stale || self.catalog.as_ref().and_then(|c| c.find(name)).is_none() {
            self.catalog = Some(NetworkCatalog::scan(dirs, NETWORK_EXTENSIONS));
        }
        self.catalog.as_ref()?.find(name).cloned()
    }

    /// Makes sure the network of `file` is in memory, reading it again if the file changed
    /// since it was read.
    fn load(
        &mut self,
        file: &NetworkFile,
        index: &LayerIndex,
        layers: &LayerTable,
    ) -> Result<(), network::LoadNetworkError> {
        let mtime = modified(&file.path);
        if let Some((when, _, _)) = self.loaded.get(&file.path) {
            if *when == mtime {
                return Ok(());
            }
        }
        let network = load_network(file, index, layers)?;
        self.next_id += 1;
        self.loaded
            .insert(file.path.clone(), (mtime, self.next_id, network));
        Ok(())
    }

    /// Whether any layer carries a network now.
    pub fn is_patched(&self) -> bool {
        self.patcher.is_patched()
    }
}

/// Infotext `Lora hashes` of the active `files`: `name: hash` with `:` and `,` taken out of
/// the name as the prompt wrote it (A1111's `remove_symbols`); hashes are kept in `cache` by
/// modification time.
fn lora_hashes(
    cache: &mut BTreeMap<PathBuf, (Option<SystemTime>, String)>,
    files: &[(&str, NetworkFile)],
    warnings: &mut Vec<String>,
) -> Option<String> {
    let mut parts = Vec::new();
    for (mentioned, file) in files {
        let mtime = modified(&file.path);
        let full = match cache.get(&file.path) {
            Some((when, hash)) if *when == mtime => hash.clone(),
            _ => match hash::network_hash(file) {
                Ok(hash) => {
                    cache.insert(file.path.clone(), (mtime, hash.clone()));
                    hash
                }
                Err(e) => {
                    warnings.push(format!("{}: cannot hash: {e}", file.path.display()));
                    continue;
                }
            },
        };
        let name = mentioned.replace([':', ','], "");
        parts.push(format!("{name}: {}", hash::short_hash(&full)));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(text: &str) -> Result<LoraTag, String> {
        LoraTag::parse(&ExtraNetworkParams::new(text))
    }

    #[test]
    fn tags_read_te_unet_and_dyn_positionally_and_by_name() {
        let t = tag("detail").unwrap();
        assert_eq!(
            (t.multipliers.te, t.multipliers.unet, t.multipliers.dyn_dim),
            (1.0, 1.0, None)
        );
        let t = tag("detail:0.5").unwrap();
        assert_eq!((t.multipliers.te, t.multipliers.unet), (0.5, 0.5));
        let t = tag("detail:0.5:-0.25:8").unwrap();
        assert_eq!(
            (t.multipliers.te, t.multipliers.unet, t.multipliers.dyn_dim),
            (0.5, -0.25, Some(8))
        );
        let t = tag("detail:unet=0.3:te=0.7:dyn=4").unwrap();
        assert_eq!(t.name, "detail");
        assert_eq!(
            (t.multipliers.te, t.multipliers.unet, t.multipliers.dyn_dim),
            (0.7, 0.3, Some(4))
        );
        // unet defaults to te, named or not.
        let t = tag("detail:te=0.2").unwrap();
        assert_eq!((t.multipliers.te, t.multipliers.unet), (0.2, 0.2));
        assert!(tag("detail:lots").is_err());
        assert!(tag("te=1").is_err());
    }
}
