//! `<hypernet:NAME[:multiplier]>`: A1111's hypernetworks (`modules/extra_networks_hypernet.py`,
//! `modules/hypernetworks/hypernetwork.py: load_hypernetworks`), found in
//! `models/hypernetworks/**/*.pt`, loaded through the restricted unpickler ([`file`]) and set
//! on the UNet for one job ([`HypernetworkCache::activate`]).
//!
//! As in A1111, a hypernetwork that cannot be found or loaded is reported and the job runs
//! without it; a multiplier that is not a number makes A1111's activation fail as a whole, so
//! then no hypernetwork of the prompt applies. The networks themselves are
//! `models::hypernetwork`'s.

pub mod file;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use tch::{Device, Kind};

use crate::extra_networks::catalog::NetworkCatalog;
use crate::extra_networks::{ExtraNetworkData, ExtraNetworkParams};
use crate::models::hypernetwork::{ActiveHypernetwork, Hypernetwork, HypernetworkSlot};

pub use file::{load_hypernetwork, HypernetworkError};

/// The tag name A1111 registers hypernetworks under.
pub const TAG: &str = "hypernet";

/// A1111 lists only `.pt` files as hypernetworks.
const EXTENSIONS: &[&str] = &["pt"];

/// What identifies a loaded file: a changed file is loaded again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Self {
        let meta = std::fs::metadata(path).ok();
        Self {
            path: path.to_path_buf(),
            modified: meta.as_ref().and_then(|m| m.modified().ok()),
            len: meta.map_or(0, |m| m.len()),
        }
    }
}

/// The hypernetworks of the last job, kept loaded for the next (A1111 keeps
/// `shared.loaded_hypernetworks` and reuses those named again), in the model's dtype and on
/// its device.
#[derive(Debug)]
pub struct HypernetworkCache {
    kind: Kind,
    device: Device,
    loaded: Mutex<Vec<(FileStamp, Hypernetwork)>>,
}

/// The hypernetworks set on the UNet for one job, and what went wrong finding them. Dropping
/// it clears the set, so a job that fails or is cancelled leaves the UNet without them.
#[derive(Debug)]
pub struct ActiveHypernetworks {
    slot: HypernetworkSlot,
    warnings: Vec<String>,
}

impl ActiveHypernetworks {
    /// Hypernetworks that were asked for and are not applied, each with why.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// How many hypernetworks the job runs with.
    pub fn len(&self) -> usize {
        self.slot.len()
    }

    /// Whether the job runs without hypernetworks.
    pub fn is_empty(&self) -> bool {
        self.slot.is_empty()
    }
}

impl Drop for ActiveHypernetworks {
    fn drop(&mut self) {
        self.slot.clear();
    }
}

/// Python's `float()` of a tag item, which allows surrounding spaces.
fn parse_multiplier(text: &str) -> Option<f64> {
    text.trim().parse().ok()
}

/// `folder, folder` for messages, or a hint that none is configured.
fn searched(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        "no hypernetwork folder is configured (--hypernetwork-dir)".into()
    } else {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!("searched {}", list.join(", "))
    }
}

impl HypernetworkCache {
    /// An empty cache loading weights in `kind` on `device`.
    pub fn new(kind: Kind, device: Device) -> Self {
        Self {
            kind,
            device,
            loaded: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(FileStamp, Hypernetwork)>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many hypernetworks are kept loaded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is kept loaded.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Sets on `slot` the hypernetworks the prompt's `<hypernet:…>` tags in `data` name, in
    /// tag order, found under `dirs` (A1111's `ExtraNetworkHypernet.activate`). Every job
    /// calls it, tags or not, as A1111 activates every extra network type for every batch:
    /// networks no longer named are unloaded.
    pub fn activate(
        &self,
        slot: &HypernetworkSlot,
        dirs: &[PathBuf],
        data: &ExtraNetworkData,
    ) -> ActiveHypernetworks {
        let tags: &[ExtraNetworkParams] = data.get(TAG).map_or(&[], Vec::as_slice);
        let mut warnings = Vec::new();
        let mut requested = Vec::with_capacity(tags.len());
        for tag in tags {
            let name = tag.items[0].clone();
            let multiplier = match tag.items.get(1) {
                None => Some(1.0),
                Some(text) => parse_multiplier(text),
            };
            match multiplier {
                Some(m) => requested.push((name, m)),
                None => {
                    warnings.push(format!(
                        "<{TAG}:{}>: the multiplier `{}` is not a number; no hypernetwork is applied",
                        tag.items.join(":"),
                        tag.items[1]
                    ));
                    requested.clear();
                    break;
                }
            }
        }
        let catalog = if requested.is_empty() {
            NetworkCatalog::default()
        } else {
            NetworkCatalog::scan(dirs, EXTENSIONS)
        };

        let mut loaded = self.lock();
        let mut kept: Vec<(FileStamp, Hypernetwork)> = Vec::new();
        let mut active = Vec::with_capacity(requested.len());
        for (name, multiplier) in requested {
            // A1111 never lists a file named `None.pt` (it is the "no hypernetwork" option).
            let found = catalog.find(&name).filter(|_| name != "None");
            let Some(found) = found else {
                warnings.push(format!(
                    "hypernetwork `{name}` not found ({})",
                    searched(catalog.dirs())
                ));
                continue;
            };
            let stamp = FileStamp::of(&found.path);
            let cached = kept
                .iter()
                .chain(loaded.iter())
                .find(|(s, _)| *s == stamp)
                .map(|(_, network)| network.shallow_clone());
            let network = match cached {
                Some(network) => network,
                None => match load_hypernetwork(&found.path, self.kind, self.device) {
                    Ok(network) => network,
                    Err(error) => {
                        warnings.push(format!("hypernetwork `{name}` not applied: {error}"));
                        continue;
                    }
                },
            };
            if !kept.iter().any(|(s, _)| *s == stamp) {
                kept.push((stamp, network.shallow_clone()));
            }
            active.push(ActiveHypernetwork {
                network,
                multiplier,
            });
        }
        *loaded = kept;
        slot.set(active);
        ActiveHypernetworks {
            slot: slot.clone(),
            warnings,
        }
    }
}
