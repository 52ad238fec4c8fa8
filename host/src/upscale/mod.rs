//! Upscalers as A1111 v1.10.1 has them (`modules/upscaler.py`, `modules/modelloader.py`,
//! `modules/upscaler_utils.py`): the pixel upscalers (None, Lanczos, Nearest;
//! `prepare::upscalers`) and the model upscalers found in the `models/` folders
//! ([`list`]), read through the restricted unpickler or safetensors ([`file`]), their
//! architecture detected as spandrel does ([`detect`]), built from `models::upscalers` and run
//! tiled as A1111 runs each class ([`tiling`]). Hires. fix and the extras ([`extras`]: the HTTP
//! API's and the daemon's `upscale`) find them by name.

pub mod detect;
pub mod extras;
pub mod file;
pub mod list;
pub mod model;
pub mod tiling;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use image::RgbImage;
use tch::Device;

pub use list::{ModelUpscaler, UpscalerClass, UpscalerDirs};
pub use model::UpscalerModel;
pub use tiling::TileSettings;

use crate::prepare::upscalers::{resize_to, upscale_by, PixelUpscaler};

/// Why an upscaler model cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpscalerError {
    /// The file could not be read, or is no valid safetensors file.
    #[error(transparent)]
    Load(#[from] crate::weights::LoadError),
    /// The restricted unpickler refused the file or could not read it.
    #[error(transparent)]
    Pickle(#[from] crate::pickle::PickleError),
    /// The pickle holds no mapping of names to tensors.
    #[error("{path}: not an upscaler state dict: {reason}")]
    NotStateDict { path: PathBuf, reason: String },
    /// Neither a pickle nor safetensors by its extension.
    #[error("{path}: not a model file (.pth, .pt, .ckpt or .safetensors)")]
    Extension { path: PathBuf },
    /// The state dict is no architecture sdhost runs.
    #[error("{path}: {source}")]
    Detect {
        path: PathBuf,
        source: detect::DetectError,
    },
}

/// An upscaler by A1111's name: a pixel upscaler or a model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upscaler {
    /// None, Lanczos or Nearest.
    Pixel(PixelUpscaler),
    /// A model of one of the upscaler folders.
    Model(ModelUpscaler),
}

impl Upscaler {
    /// The name A1111 lists.
    pub fn name(&self) -> &str {
        match self {
            Upscaler::Pixel(p) => p.name(),
            Upscaler::Model(m) => &m.name,
        }
    }

    /// `shared.sd_upscalers`: None, Lanczos and Nearest, then the models of `dirs` sorted by
    /// lower-case name.
    pub fn all(dirs: &UpscalerDirs) -> Vec<Upscaler> {
        PixelUpscaler::names()
            .into_iter()
            .filter_map(PixelUpscaler::named)
            .map(Upscaler::Pixel)
            .chain(dirs.scan().into_iter().map(Upscaler::Model))
            .collect()
    }

    /// The first upscaler with exactly `name` (A1111 matches names exactly), looking at the
    /// folders only when it is no pixel upscaler.
    pub fn named(name: &str, dirs: &UpscalerDirs) -> Option<Upscaler> {
        if let Some(pixel) = PixelUpscaler::named(name) {
            return Some(Upscaler::Pixel(pixel));
        }
        dirs.scan()
            .into_iter()
            .find(|m| m.name == name)
            .map(Upscaler::Model)
    }
}

/// An upscaler ready to run: a pixel upscaler, or a model upscaler with its network loaded.
#[derive(Clone)]
pub enum ReadyUpscaler {
    /// None, Lanczos or Nearest.
    Pixel(PixelUpscaler),
    /// A loaded model and its class's tiling.
    Model {
        /// The network (locked while it runs: libtorch tensors are not `Sync`, and one
        /// upscale at a time is what A1111's queue lock gives too).
        model: SharedModel,
        /// Its folder's class (which tiling A1111 uses).
        class: UpscalerClass,
        /// Tile size and overlap.
        tiles: TileSettings,
    },
}

impl ReadyUpscaler {
    /// `do_upscale` once: the model's native scale through its class's tiling (A1111's model
    /// upscalers ignore the requested scale here); `stop` is asked before each tile.
    fn model_step(
        model: &UpscalerModel,
        class: UpscalerClass,
        tiles: TileSettings,
        image: &RgbImage,
        stop: &dyn Fn() -> bool,
    ) -> RgbImage {
        if class.tiles_in_float() {
            tiling::upscale_2(model, image, tiles, stop)
        } else {
            tiling::upscale_with_model(model, image, tiles, stop)
        }
    }

    /// `Upscaler.upscale(img, scale)`: up to three steps until the picture reaches `scale`
    /// rounded down to multiples of 8, then Lanczos to exactly that (the extras' upscale).
    pub fn upscale(&self, image: &RgbImage, scale: f64) -> RgbImage {
        self.upscale_watched(image, scale, &|| false).0
    }

    /// [`Self::upscale`], asking `stop` before each tile of a model upscaler: `None` when it
    /// said so (the pixel upscalers are not tiled and always finish).
    pub fn upscale_until(
        &self,
        image: &RgbImage,
        scale: f64,
        stop: &dyn Fn() -> bool,
    ) -> Option<RgbImage> {
        let (upscaled, stopped) = self.upscale_watched(image, scale, stop);
        (!stopped).then_some(upscaled)
    }

    /// The upscale, and whether `stop` ended it early.
    fn upscale_watched(
        &self,
        image: &RgbImage,
        scale: f64,
        stop: &dyn Fn() -> bool,
    ) -> (RgbImage, bool) {
        match self {
            ReadyUpscaler::Pixel(p) => (p.upscale(image, scale), false),
            ReadyUpscaler::Model {
                model,
                class,
                tiles,
            } => {
                let model = model.lock().unwrap_or_else(|p| p.into_inner());
                let stopped = std::cell::Cell::new(false);
                let watch = || {
                    stopped.set(stopped.get() || stop());
                    stopped.get()
                };
                // A stopped step gives the picture back unchanged, which ends the steps.
                let upscaled = upscale_by(image, scale, &mut |img| {
                    Self::model_step(&model, *class, *tiles, img, &watch)
                });
                (upscaled, stopped.get())
            }
        }
    }

    /// `images.resize_image(0, image, width, height, upscaler_name)`: the upscaler when it
    /// enlarges, then Lanczos to exactly `width` × `height` (Hires. fix's pixel upscale).
    pub fn upscale_to(&self, image: &RgbImage, width: u32, height: u32) -> RgbImage {
        match self {
            ReadyUpscaler::Pixel(p) => {
                crate::prepare::upscalers::upscale_to(*p, image, width, height)
            }
            ReadyUpscaler::Model { .. } => resize_to(image, width, height, &mut |img, scale| {
                self.upscale(img, scale)
            }),
        }
    }
}

/// A loaded upscaler shared by the jobs that use it.
type SharedModel = Arc<Mutex<UpscalerModel>>;

/// The last model upscaler loaded, kept for the next job (A1111 keeps SwinIR's; ESRGAN's are
/// read per use, which gives the same pixels).
#[derive(Default)]
pub struct UpscalerCache {
    last: Mutex<Option<(PathBuf, Device, SharedModel)>>,
}

impl UpscalerCache {
    /// `upscaler` ready on `device` with A1111's default tiling; a model is read (or taken
    /// from the cache) now, so a broken or foreign file fails before any other work.
    pub fn ready(
        &self,
        upscaler: &Upscaler,
        device: Device,
    ) -> Result<ReadyUpscaler, UpscalerError> {
        let model = match upscaler {
            Upscaler::Pixel(p) => return Ok(ReadyUpscaler::Pixel(*p)),
            Upscaler::Model(m) => m,
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let cached = last
            .as_ref()
            .filter(|(path, dev, _)| *path == model.path && *dev == device)
            .map(|(_, _, loaded)| loaded.clone());
        let loaded = match cached {
            Some(loaded) => loaded,
            None => {
                // The old one goes first: two upscalers never share memory.
                *last = None;
                let loaded = Arc::new(Mutex::new(UpscalerModel::load(&model.path, device)?));
                *last = Some((model.path.clone(), device, loaded.clone()));
                loaded
            }
        };
        Ok(ReadyUpscaler::Model {
            model: loaded,
            class: model.class,
            tiles: TileSettings::default(),
        })
    }
}
