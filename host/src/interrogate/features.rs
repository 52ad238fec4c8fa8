//! What the CLIP ranking needs from a CLIP model, so that ranking, categories and the feature
//! cache do not depend on how the network is loaded.

use image::RgbImage;
use tch::Tensor;

/// Image and text features of one CLIP model (OpenAI ViT-L/14 for A1111's interrogator).
pub trait ClipFeatures {
    /// Unnormalised image features [1, E] (fp32, CPU) of an RGB picture, CLIP's preprocessing
    /// (`Resize` + `CenterCrop` + normalisation) included.
    fn image_features(&self, image: &RgbImage) -> Tensor;
    /// Unnormalised text features [N, E] (fp32, CPU) of `lines`, each tokenised as
    /// `clip.tokenize(..., truncate=True)` does; encodes in chunks so any N fits in memory.
    fn text_features(&self, lines: &[String]) -> Tensor;
    /// A stable identity of the weights (e.g. the file's sha256), which keys cached text features.
    fn identity(&self) -> &str;
}
