//! Checkpoints kept loaded besides the one in use (A1111's `sd_checkpoints_limit`: up to that
//! many models in memory, the least recently used dropped first), so that switching back to
//! one is a swap of the worker's model, not a load. Each keeps its own state (embeddings,
//! external VAE, refiner, LoRA patches, caches) as it had it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::model_status::ModelStatus;
use crate::pipeline::model::GenerationModel;

/// A1111's default `sd_checkpoints_limit`: only the model in use is kept.
pub const DEFAULT_CHECKPOINTS_LIMIT: usize = 1;

/// A1111's largest `sd_checkpoints_limit` (its settings slider).
pub const MAX_CHECKPOINTS_LIMIT: usize = 10;

/// The file's size and modification time: a resident model of a file that changed since it
/// was loaded is stale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamp(Option<(u64, SystemTime)>);

impl FileStamp {
    /// The stamp of `path` now (none when it cannot be read).
    pub fn of(path: &Path) -> Self {
        Self(
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?))),
        )
    }
}

/// A model that is not in use, with what clients see of it and its file's stamp at load.
pub struct ResidentModel {
    /// The model.
    pub model: GenerationModel,
    /// Its status, as it was published while in use.
    pub status: ModelStatus,
    /// Its file's stamp when it was loaded.
    pub stamp: FileStamp,
}

/// The models kept loaded besides the one in use, most recently used first.
pub struct ResidentModels {
    models: Vec<ResidentModel>,
    /// The stamp of the file of the model in use, when it was loaded.
    current: FileStamp,
}

impl ResidentModels {
    /// None yet; the model in use was loaded from a file stamped `current`.
    pub fn new(current: FileStamp) -> Self {
        Self {
            models: Vec::new(),
            current,
        }
    }

    /// Records the stamp of the model now in use; returns the previous one's.
    pub fn replace_current_stamp(&mut self, stamp: FileStamp) -> FileStamp {
        std::mem::replace(&mut self.current, stamp)
    }

    /// Takes out the resident model of `path`, when there is one and its file is unchanged
    /// (a changed file's model is dropped: it must be loaded again).
    pub fn take(&mut self, path: &Path) -> Option<ResidentModel> {
        let at = self.models.iter().position(|r| r.status.path == path)?;
        let resident = self.models.remove(at);
        (resident.stamp == FileStamp::of(path)).then_some(resident)
    }

    /// Keeps `model` (no longer in use) as the most recent, then drops the least recently
    /// used beyond `limit` models in memory, the one in use counted.
    pub fn keep(&mut self, model: ResidentModel, limit: usize) {
        self.models.retain(|r| r.status.path != model.status.path);
        self.models.insert(0, model);
        self.trim(limit);
    }

    /// Drops the least recently used beyond `limit` models in memory, the one in use counted.
    pub fn trim(&mut self, limit: usize) {
        self.models.truncate(limit.saturating_sub(1));
    }

    /// The files of the resident models, most recently used first.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.models.iter().map(|r| r.status.path.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::worker::Worker;
    use crate::pipeline::img2img::tests::registry;
    use crate::prompt::cache::{CachedConditioning, CondKey};
    use crate::tiny_model::{write_tiny_model, Preset, TinyModelSpec};
    use std::time::{Duration, Instant};
    use tch::Kind;

    fn write_model(dir: &Path, name: &str, seed: i64) -> PathBuf {
        let path = dir.join(format!("{name}.safetensors"));
        let spec = TinyModelSpec {
            preset: Preset::Tiny,
            inpainting: false,
            seed,
            storage: Kind::Float,
        };
        write_tiny_model(&spec, &path).unwrap();
        path
    }

    /// A worker over the models of `dir` with `first` loaded, keeping `limit` loaded.
    fn worker(dir: &Path, first: &Path, limit: usize) -> Worker {
        Worker::over_models(dir, first, limit, registry()).unwrap()
    }

    fn marker() -> CondKey {
        CondKey {
            prompt: "marker".into(),
            negative_prompt: String::new(),
            clip_skip: 1,
            schedule_calls: 1,
            size: None,
            embeddings: 0,
            networks: Vec::new(),
        }
    }

    /// Marks the model in use: a model that comes back with the mark was kept, not loaded.
    fn mark(worker: &Worker) {
        let value = CachedConditioning {
            cond: Vec::new(),
            uncond: Vec::new(),
            ti_hashes: None,
        };
        worker
            .model
            .conditionings
            .lock()
            .unwrap()
            .insert(marker(), value);
    }

    fn marked(worker: &Worker) -> bool {
        worker
            .model
            .conditionings
            .lock()
            .unwrap()
            .get(&marker())
            .is_some()
    }

    /// Selects `name`, returning how long it took.
    fn select(worker: &mut Worker, name: &str, reload: bool) -> Duration {
        let start = Instant::now();
        worker.load_checkpoint(name, reload).unwrap();
        let took = start.elapsed();
        let status = worker.status.lock().unwrap().clone();
        assert_eq!(crate::pipeline::model::model_name(&status.path), name);
        assert_eq!(worker.model.name, name);
        took
    }

    #[test]
    fn resident_models_come_back_without_a_load_and_the_least_recent_goes_first() {
        let _guard = tch::no_grad_guard();
        let dir = tempfile::tempdir().unwrap();
        let a = write_model(dir.path(), "a", 1);
        write_model(dir.path(), "b", 2);
        write_model(dir.path(), "c", 3);
        let mut worker = worker(dir.path(), &a, 2);
        mark(&worker);
        select(&mut worker, "b", true);
        assert!(!marked(&worker));
        mark(&worker);
        assert_eq!(worker.resident.paths(), std::slice::from_ref(&a));
        // A swap: the same model object, its state kept, well within half a second.
        let took = select(&mut worker, "a", true);
        assert!(marked(&worker), "a was loaded again");
        assert!(took < Duration::from_millis(500), "{took:?}");
        assert_eq!(worker.resident.paths(), [dir.path().join("b.safetensors")]);
        // A third model with a limit of two: b, the least recently used, is dropped before
        // the load (at most two models in memory at any time) and a stays.
        select(&mut worker, "c", false);
        assert_eq!(worker.resident.paths(), std::slice::from_ref(&a));
        select(&mut worker, "b", false);
        assert!(!marked(&worker), "b was dropped, so it is loaded again");
        assert_eq!(worker.resident.paths(), [dir.path().join("c.safetensors")]);
        // Selecting the model in use does nothing; reloading it reads its file again.
        mark(&worker);
        select(&mut worker, "b", false);
        assert!(marked(&worker));
        select(&mut worker, "b", true);
        assert!(!marked(&worker));
        // The reload needed room for a second b beside the first: c went.
        assert!(worker.resident.paths().is_empty());
    }

    #[test]
    fn a_limit_outside_1_to_10_stops_the_start_before_any_load() {
        for limit in [0, 11] {
            let config = crate::daemon::config::ServeConfig {
                checkpoints_limit: Some(limit),
                model: Some("/nonexistent/model.safetensors".into()),
                ..Default::default()
            };
            let (_stop, stopped) = crossbeam_channel::bounded(1);
            let error = crate::daemon::serve(config, Vec::new(), stopped).unwrap_err();
            assert!(
                matches!(error, crate::daemon::StartError::CheckpointsLimit(n) if n == limit),
                "{error}"
            );
            assert!(error.to_string().contains("1 to 10"), "{error}");
        }
    }

    #[test]
    fn a_changed_file_is_loaded_again_and_a_limit_of_one_keeps_none() {
        let _guard = tch::no_grad_guard();
        let dir = tempfile::tempdir().unwrap();
        let a = write_model(dir.path(), "a", 1);
        write_model(dir.path(), "b", 2);
        let mut worker = worker(dir.path(), &a, 2);
        mark(&worker);
        select(&mut worker, "b", false);
        // a's file changes while it is resident (the checkpoint replaced by another).
        write_model(dir.path(), "a", 5);
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(later)
            .unwrap();
        select(&mut worker, "a", false);
        assert!(!marked(&worker), "a stale resident model was used");

        let mut single = self::worker(dir.path(), &a, 1);
        mark(&single);
        select(&mut single, "b", false);
        assert!(single.resident.paths().is_empty());
        select(&mut single, "a", false);
        assert!(!marked(&single));
        assert!(single.resident.paths().is_empty());
    }
}
