//! The extra networks and VAEs the daemon lists in `welcome` and `list`: every file of the
//! model folders with what a picker shows of it (`extra_networks::facts`). The folders are
//! read again after each `list` on a thread of their own, so a file added while the daemon
//! runs appears, and hashes (seconds for large files) are computed there and cached on disk:
//! until one is known, its network is listed with `hash` null, as A1111 shows only cached
//! hashes on its cards.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use crate::checkpoint::{cached_file_hash, default_cache_dir, FileHashKind};
use crate::extra_networks::catalog::NetworkFile;
use crate::extra_networks::dirs::NetworkDirs;
use crate::extra_networks::facts::{list_networks, HashSource, NetworkFacts, NetworkKind};
use crate::sd_vae::VaeList;

/// Hashes from the on-disk cache, computed when `compute` (the background pass).
struct CachedHashes {
    cache_dir: Option<PathBuf>,
    compute: bool,
}

impl HashSource for CachedHashes {
    fn hash(&self, path: &Path, kind: FileHashKind) -> Option<String> {
        cached_file_hash(path, kind, self.cache_dir.as_deref(), self.compute)
            .ok()
            .flatten()
    }
}

/// Every LoRA, LyCORIS, hypernetwork and VAE file of `dirs` (and the `*.vae.*` files in
/// `checkpoint_dir`), in that order, with its facts.
pub fn scan_networks(
    dirs: &NetworkDirs,
    checkpoint_dir: Option<&Path>,
    hashes: &dyn HashSource,
) -> Vec<NetworkFacts> {
    let mut networks = list_networks(dirs, hashes);
    let roots: Vec<PathBuf> = dirs
        .vae
        .iter()
        .chain(&dirs.checkpoints)
        .cloned()
        .chain(checkpoint_dir.map(Path::to_path_buf))
        .collect();
    for (_, path) in VaeList::scan(dirs, checkpoint_dir).entries() {
        if let Ok(file) = NetworkFile::open(path) {
            networks.push(NetworkFacts::of(&file, NetworkKind::Vae, &roots, hashes));
        }
    }
    networks
}

/// The current list, and the thread that keeps it current.
pub struct NetworkListing {
    dirs: NetworkDirs,
    current: Arc<Mutex<Vec<NetworkFacts>>>,
    refresh: Sender<()>,
}

impl NetworkListing {
    /// Lists the networks of `dirs` now (hashes from the cache only) and starts the thread
    /// that computes the missing hashes and rescans on [`Self::refresh`].
    pub fn start(dirs: NetworkDirs, checkpoint_dir: Option<PathBuf>) -> Self {
        let cache_dir = default_cache_dir();
        let quick = CachedHashes {
            cache_dir: cache_dir.clone(),
            compute: false,
        };
        let kept = dirs.clone();
        let current = Arc::new(Mutex::new(scan_networks(
            &dirs,
            checkpoint_dir.as_deref(),
            &quick,
        )));
        // One pending refresh is enough however many `list`s ask meanwhile.
        let (refresh, requests) = crossbeam_channel::bounded::<()>(1);
        {
            let current = current.clone();
            std::thread::spawn(move || {
                let full = CachedHashes {
                    cache_dir,
                    compute: true,
                };
                while requests.recv().is_ok() {
                    let networks = scan_networks(&dirs, checkpoint_dir.as_deref(), &full);
                    *current.lock().unwrap_or_else(|p| p.into_inner()) = networks;
                }
            });
        }
        let _ = refresh.try_send(());
        NetworkListing {
            dirs: kept,
            current,
            refresh,
        }
    }

    /// The folders it lists (the upscaler folders among them, which front ends scan
    /// themselves).
    pub fn dirs(&self) -> &NetworkDirs {
        &self.dirs
    }

    /// The networks as last scanned.
    pub fn current(&self) -> Vec<NetworkFacts> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the last scan found a file of `kind` named `name` (looked up in place: the list
    /// with every file's metadata is not copied for one question).
    pub fn lists(&self, kind: NetworkKind, name: &str) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|n| n.kind == kind && n.name == name)
    }

    /// Asks for a rescan (files added or removed, hashes computed) without waiting for it.
    pub fn refresh(&self) {
        let _ = self.refresh.try_send(());
    }
}
