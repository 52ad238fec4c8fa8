//! Deterministic stand-in CLIP features for tests of ranking, categories and the feature
//! cache without a CLIP network: each text's feature row is a fixed pseudo-random vector
//! derived from a hash of the text (what the tests need is stable, distinct features, not
//! meaning).

use super::ClipFeatures;
use image::RgbImage;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use tch::Tensor;

/// [`ClipFeatures`] whose rows are seeded by a hash of the identity and the text (or the
/// picture), counting the lines it is asked to encode.
#[derive(Debug)]
pub struct SeededClipFeatures {
    dim: usize,
    identity: String,
    seeing: Option<String>,
    encoded_lines: AtomicUsize,
}

impl SeededClipFeatures {
    /// Features of width `dim` for the model called `identity` (different identities give
    /// different features).
    pub fn new(dim: usize, identity: &str) -> Self {
        Self {
            dim,
            identity: identity.to_string(),
            seeing: None,
            encoded_lines: AtomicUsize::new(0),
        }
    }

    /// Makes every picture's features those of `text`, so that line ranks first.
    pub fn seeing(mut self, text: &str) -> Self {
        self.seeing = Some(text.to_string());
        self
    }

    /// The feature row of `text`.
    pub fn text_row(&self, text: &str) -> Vec<f32> {
        self.row(b"text", text.as_bytes())
    }

    /// How many lines `text_features` has encoded so far.
    pub fn encoded_lines(&self) -> usize {
        self.encoded_lines.load(Ordering::Relaxed)
    }

    /// Standard normal values from a splitmix64 stream seeded by sha256(identity, kind, bytes).
    fn row(&self, kind: &[u8], bytes: &[u8]) -> Vec<f32> {
        let mut hasher = Sha256::new();
        for part in [self.identity.as_bytes(), kind, bytes] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut state = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        let mut next_unit = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // 53 random bits in (0, 1]: never 0, so the logarithm is finite.
            ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
        };
        (0..self.dim)
            .map(|_| {
                let (u, v) = (next_unit(), next_unit());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect()
    }
}

impl ClipFeatures for SeededClipFeatures {
    fn image_features(&self, image: &RgbImage) -> Tensor {
        let row = match &self.seeing {
            Some(text) => self.text_row(text),
            None => {
                let mut bytes = Vec::with_capacity(8 + image.as_raw().len());
                bytes.extend_from_slice(&image.width().to_le_bytes());
                bytes.extend_from_slice(&image.height().to_le_bytes());
                bytes.extend_from_slice(image.as_raw());
                self.row(b"image", &bytes)
            }
        };
        Tensor::from_slice(&row).reshape([1, self.dim as i64])
    }

    fn text_features(&self, lines: &[String]) -> Tensor {
        self.encoded_lines.fetch_add(lines.len(), Ordering::Relaxed);
        let flat: Vec<f32> = lines.iter().flat_map(|line| self.text_row(line)).collect();
        Tensor::from_slice(&flat).reshape([lines.len() as i64, self.dim as i64])
    }

    fn identity(&self) -> &str {
        &self.identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_stable_distinct_and_normal() {
        let clip = SeededClipFeatures::new(256, "m");
        assert_eq!(clip.text_row("cat"), clip.text_row("cat"));
        assert_ne!(clip.text_row("cat"), clip.text_row("dog"));
        assert_ne!(
            clip.text_row("cat"),
            SeededClipFeatures::new(256, "n").text_row("cat")
        );
        let row = clip.text_row("");
        let mean = row.iter().sum::<f32>() / 256.0;
        let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / 256.0;
        assert!(mean.abs() < 0.2 && (var - 1.0).abs() < 0.3, "{mean} {var}");

        let lines = vec!["cat".to_string(), "dog".to_string()];
        let features = clip.text_features(&lines);
        assert_eq!(features.size(), [2, 256]);
        assert_eq!(
            Vec::<f32>::try_from(features.get(1)).unwrap(),
            clip.text_row("dog")
        );
        assert_eq!(clip.encoded_lines(), 2);

        let image = RgbImage::new(3, 2);
        assert_eq!(clip.image_features(&image).size(), [1, 256]);
        let seeing = SeededClipFeatures::new(256, "m").seeing("cat");
        assert_eq!(
            Vec::<f32>::try_from(seeing.image_features(&image).reshape([-1])).unwrap(),
            clip.text_row("cat")
        );
    }
}
