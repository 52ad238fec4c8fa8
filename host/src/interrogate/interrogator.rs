//! The interrogator every front end calls: finds the files, loads each model on first use and
//! runs A1111's two methods (`modules/interrogate.py: InterrogateModels.interrogate`,
//! `modules/deepbooru.py: DeepDanbooru.tag`).
//!
//! Residency: A1111 keeps the models in RAM for the process lifetime and moves them to the GPU
//! per call; sdhost keeps them loaded where they run. On CPU they stay loaded (RAM is where they
//! live either way). On a GPU, unless `interrogate_keep_models_in_memory` is set, each model is
//! dropped when its part is done (BLIP before CLIP is loaded, so the peak is one of them beside
//! the SD model, not both) and read again from the page cache on the next call.

use std::path::PathBuf;

use image::RgbImage;
use tch::Device;

use super::blip::{BlipCaptioner, BlipError};
use super::categories::{Categories, CategoriesError};
use super::clip_interrogation::{interrogate_clip, ClipInterrogationError};
use super::clip_model::{ClipModelError, OpenAiClipFeatures};
use super::deepbooru::{DeepDanbooru, DeepbooruError};
use super::feature_cache::FeatureCache;
use super::files::{InterrogateFiles, MissingFile};
use super::options::InterrogateOptions;

/// The img2img tab's two interrogation buttons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterrogateMethod {
    /// "Interrogate CLIP": BLIP caption + CLIP ranking over the category lists.
    Clip,
    /// "Interrogate DeepBooru": DeepDanbooru's tags.
    #[serde(alias = "deepdanbooru")]
    Deepbooru,
}

impl InterrogateMethod {
    /// Reads A1111's names: `clip`, `deepbooru` (the UI's) or `deepdanbooru` (the API's `model`).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "clip" => Some(Self::Clip),
            "deepbooru" | "deepdanbooru" => Some(Self::Deepbooru),
            _ => None,
        }
    }

    /// The name the API uses (`clip`, `deepdanbooru`).
    pub fn api_name(self) -> &'static str {
        match self {
            Self::Clip => "clip",
            Self::Deepbooru => "deepdanbooru",
        }
    }
}

/// Why an interrogation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum InterrogateError {
    /// A model file is not where it was looked for.
    #[error(transparent)]
    Missing(#[from] MissingFile),
    /// The options are out of range.
    #[error("invalid interrogation option: {0}")]
    InvalidOptions(String),
    /// The picture has no pixels.
    #[error("the picture to interrogate is empty ({0}x{1})")]
    EmptyPicture(u32, u32),
    /// The BLIP captioner failed to load or run.
    #[error("BLIP: {0}")]
    Blip(#[from] BlipError),
    /// CLIP failed to load.
    #[error("CLIP: {0}")]
    ClipModel(#[from] ClipModelError),
    /// The category lists could not be read.
    #[error(transparent)]
    Categories(#[from] CategoriesError),
    /// The ranking failed.
    #[error("CLIP ranking: {0}")]
    Ranking(#[from] ClipInterrogationError),
    /// DeepDanbooru failed to load or run.
    #[error("DeepDanbooru: {0}")]
    Deepbooru(#[from] DeepbooruError),
    /// The device ran out of memory.
    #[error("out of memory while interrogating: {0}")]
    OutOfMemory(String),
    /// libtorch failed otherwise (device error).
    #[error("libtorch: {0}")]
    Torch(String),
}

/// The interrogation models of one process, loaded on first use.
pub struct Interrogator {
    files: InterrogateFiles,
    device: Device,
    cache: Option<FeatureCache>,
    blip: Option<BlipCaptioner>,
    clip: Option<OpenAiClipFeatures>,
    categories: Option<Categories>,
    deepbooru: Option<DeepDanbooru>,
}

impl Interrogator {
    /// An interrogator finding its files by `files`, running on `device`, caching CLIP's text
    /// features of the category lists in `feature_cache_dir` (none: computed every call, as
    /// A1111 does).
    pub fn new(
        files: InterrogateFiles,
        device: Device,
        feature_cache_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            files,
            device,
            cache: feature_cache_dir.map(FeatureCache::new),
            blip: None,
            clip: None,
            categories: None,
            deepbooru: None,
        }
    }

    /// The default cache of CLIP text features: `<sdhost cache>/interrogate-features`.
    pub fn default_feature_cache_dir() -> Option<PathBuf> {
        crate::checkpoint::default_cache_dir().map(|d| d.join("interrogate-features"))
    }

    /// Where the files are looked for.
    pub fn files(&self) -> &InterrogateFiles {
        &self.files
    }

    /// Checks, before any work, that `method`'s files are there and `options` are in range.
    pub fn check(
        &self,
        method: InterrogateMethod,
        options: &InterrogateOptions,
    ) -> Result<(), InterrogateError> {
        check_options(options)?;
        match method {
            InterrogateMethod::Clip => {
                self.files.blip_model()?;
                self.files.bert_vocab()?;
                self.files.clip_model()?;
                self.files.categories_dir()?;
            }
            InterrogateMethod::Deepbooru => {
                self.files.deepdanbooru_model()?;
            }
        }
        Ok(())
    }

    /// The prompt A1111's button of `method` writes for `image`.
    pub fn interrogate(
        &mut self,
        image: &RgbImage,
        method: InterrogateMethod,
        options: &InterrogateOptions,
    ) -> Result<String, InterrogateError> {
        self.check(method, options)?;
        if image.width() == 0 || image.height() == 0 {
            return Err(InterrogateError::EmptyPicture(
                image.width(),
                image.height(),
            ));
        }
        let result = torch_guard(|| match method {
            InterrogateMethod::Clip => self.clip(image, options),
            InterrogateMethod::Deepbooru => self.deepbooru(image, options),
        });
        if !self.keeps_models(options) {
            self.release();
        }
        result
    }

    fn keeps_models(&self, options: &InterrogateOptions) -> bool {
        self.device == Device::Cpu || options.interrogate_keep_models_in_memory
    }

    /// Drops every loaded model (their memory goes back to the device).
    pub fn release(&mut self) {
        self.blip = None;
        self.clip = None;
        self.deepbooru = None;
    }

    fn clip(
        &mut self,
        image: &RgbImage,
        options: &InterrogateOptions,
    ) -> Result<String, InterrogateError> {
        let caption = {
            let blip = match self.blip.take() {
                Some(blip) => blip,
                None => BlipCaptioner::load(
                    &self.files.blip_model()?,
                    &self.files.bert_vocab()?,
                    self.device,
                )?,
            };
            let caption = blip.caption(image, options)?;
            if self.keeps_models(options) {
                self.blip = Some(blip);
            }
            caption
        };
        let dir = self.files.categories_dir()?;
        if self.categories.as_ref().is_none_or(|c| c.dir() != dir) {
            self.categories = Some(Categories::open(&dir)?);
        }
        let categories = self.categories.as_ref().expect("opened above");
        if self.clip.is_none() {
            let path = self.files.clip_model()?;
            self.clip = Some(OpenAiClipFeatures::load(&path, self.device)?);
        }
        let clip = self.clip.as_ref().expect("loaded above");
        Ok(interrogate_clip(
            &caption,
            image,
            clip,
            categories,
            self.cache.as_ref(),
            options,
        )?)
    }

    fn deepbooru(
        &mut self,
        image: &RgbImage,
        options: &InterrogateOptions,
    ) -> Result<String, InterrogateError> {
        if self.deepbooru.is_none() {
            let path = self.files.deepdanbooru_model()?;
            self.deepbooru = Some(DeepDanbooru::load(&path, self.device)?);
        }
        let model = self.deepbooru.as_ref().expect("loaded above");
        Ok(model.tag(image, options)?)
    }
}

/// A1111's sliders' ranges (`modules/shared_options.py`), checked before any model loads.
pub fn check_options(options: &InterrogateOptions) -> Result<(), InterrogateError> {
    let bad = |m: String| Err(InterrogateError::InvalidOptions(m));
    if !(1..=16).contains(&options.interrogate_clip_num_beams) {
        return bad(format!(
            "interrogate_clip_num_beams {} is outside 1-16",
            options.interrogate_clip_num_beams
        ));
    }
    if options.interrogate_clip_min_length < 1 || options.interrogate_clip_max_length < 1 {
        return bad("interrogate_clip_min_length and _max_length must be at least 1".into());
    }
    let threshold = options.interrogate_deepbooru_score_threshold;
    if !(0.0..=1.0).contains(&threshold) {
        return bad(format!(
            "interrogate_deepbooru_score_threshold {threshold} is outside 0-1"
        ));
    }
    Ok(())
}

/// Runs libtorch work, turning its panics (out of memory, device errors) into an error.
fn torch_guard<T>(
    work: impl FnOnce() -> Result<T, InterrogateError>,
) -> Result<T, InterrogateError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(payload) => {
            let message = crate::error::panic_message(&*payload);
            Err(match crate::error::torch_failure(&message) {
                crate::error::TorchFailure::OutOfMemory => InterrogateError::OutOfMemory(message),
                crate::error::TorchFailure::Other => InterrogateError::Torch(message),
            })
        }
    }
}
