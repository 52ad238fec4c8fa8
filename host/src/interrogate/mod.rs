//! Interrogation: a prompt from a picture, as A1111's img2img "Interrogate CLIP" and
//! "Interrogate DeepBooru" buttons make it (`modules/interrogate.py`, `modules/deepbooru.py`).
//!
//! * CLIP: a BLIP caption ([`blip`]) followed by the best matches of OpenAI CLIP ViT-L/14 over
//!   the category word lists ([`categories`], ranked by [`ranking`] through [`ClipFeatures`],
//!   text features cached by [`feature_cache`], the whole flow in [`clip_interrogation`]).
//!   The CLIP model is OpenAI's ViT-L/14 file ([`clip_model`]: its image preprocessing in
//!   [`clip_preprocess`], `clip.tokenize` in [`clip_tokenize`]).
//! * DeepBooru: DeepDanbooru's tags above a score threshold ([`deepbooru`]).
//!
//! [`InterrogateOptions`] carries A1111's "Interrogate" settings to every front end, [`files`] finds
//! the model files as A1111 keeps them, and [`Interrogator`] (which every front end calls) loads
//! the models on first use and runs either method.

pub mod blip;
pub mod categories;
pub mod clip_interrogation;
pub mod clip_model;
pub mod clip_preprocess;
pub mod clip_tokenize;
pub mod deepbooru;
pub mod feature_cache;
pub mod features;
pub mod files;
pub mod interrogator;
pub mod options;
pub mod ranking;
pub mod seeded_features;

pub use categories::{Categories, CategoriesError, CategoryList};
pub use clip_interrogation::{interrogate_clip, ClipInterrogationError};
pub use feature_cache::FeatureCache;
pub use features::ClipFeatures;
pub use files::{InterrogateFiles, MissingFile};
pub use interrogator::{InterrogateError, InterrogateMethod, Interrogator};
pub use options::InterrogateOptions;
