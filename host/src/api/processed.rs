//! What a generation answers, as A1111 v1.10.1 builds it (`modules/processing.py:
//! Processed.js`, `modules/images.py: image_grid`, `modules/api/api.py`): the `info` JSON
//! string with its keys in A1111's order, and the grid that leads `images` when the request
//! saves images and there are at least two (spec §f.11).

use image::RgbImage;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::infotext::Infotext;
use crate::request::GenerationRequest;
use crate::rng::SeedList;
use crate::scripts::grid;

/// A1111's version string in `info`.
pub const VERSION: &str = "v1.10.1";

/// One finished image of a job.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its position in the job.
    pub index: usize,
    /// Its seed.
    pub seed: u64,
    /// The pixels.
    pub image: RgbImage,
    /// Its infotext.
    pub infotext: String,
    /// Whether it is a script's grid (an X/Y/Z plot's).
    pub grid: bool,
}

/// `Processed.js()`'s object, its fields in A1111's order.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub prompt: String,
    pub all_prompts: Vec<String>,
    pub negative_prompt: String,
    pub all_negative_prompts: Vec<String>,
    pub seed: u64,
    pub all_seeds: Vec<u64>,
    pub subseed: u64,
    pub all_subseeds: Vec<u64>,
    pub subseed_strength: f64,
    pub width: u32,
    pub height: u32,
    pub sampler_name: String,
    pub cfg_scale: f64,
    pub steps: usize,
    pub batch_size: usize,
    pub restore_faces: bool,
    pub face_restoration_model: Option<String>,
    pub sd_model_name: String,
    pub sd_model_hash: String,
    pub sd_vae_name: Option<String>,
    pub sd_vae_hash: Option<String>,
    pub seed_resize_from_w: i64,
    pub seed_resize_from_h: i64,
    pub denoising_strength: f64,
    pub extra_generation_params: Map<String, Value>,
    pub index_of_first_image: usize,
    pub infotexts: Vec<String>,
    pub styles: Vec<String>,
    pub job_timestamp: String,
    pub clip_skip: usize,
    pub is_using_inpainting_conditioning: bool,
    pub version: &'static str,
}

/// What the job ran on, besides its request.
#[derive(Debug, Clone)]
pub struct JobFacts {
    /// The model's infotext name and short hash.
    pub model: (String, String),
    /// `%Y%m%d%H%M%S` of the job's start.
    pub job_timestamp: String,
    /// Whether the model is an inpainting model (9-channel UNet).
    pub inpainting_conditioning: bool,
}

/// `info` of a job that ran `params` (its seeds already fixed) and made `images` (infotexts
/// given in the order of `images` as returned, the grid's first when there is one).
pub fn info(
    params: &GenerationRequest,
    sampler_name: &str,
    infotexts: Vec<String>,
    index_of_first_image: usize,
    facts: JobFacts,
) -> Info {
    let count = params.n_iter * params.batch_size;
    // Seeds were fixed before the job, so every planned one is known even when it stopped
    // early (A1111 lists them all).
    let seeds = SeedList::new(
        params.seed.max(0) as u64,
        params.subseed.max(0) as u64,
        params.subseed_strength,
        count,
    );
    let first = infotexts.first().map(|text| Infotext::parse(text));
    let param = |key: &str| first.as_ref().and_then(|i| i.get(key)).map(String::from);
    Info {
        prompt: params.prompt.clone(),
        all_prompts: vec![params.prompt.clone(); count],
        negative_prompt: params.negative_prompt.clone(),
        all_negative_prompts: vec![params.negative_prompt.clone(); count],
        seed: seeds.seeds.first().copied().unwrap_or_default(),
        subseed: seeds.subseeds.first().copied().unwrap_or_default(),
        all_seeds: seeds.seeds,
        all_subseeds: seeds.subseeds,
        subseed_strength: params.subseed_strength,
        width: params.width,
        height: params.height,
        sampler_name: sampler_name.to_string(),
        cfg_scale: params.cfg_scale,
        steps: params.sampler.steps,
        batch_size: params.batch_size,
        restore_faces: false,
        face_restoration_model: None,
        sd_model_name: facts.model.0,
        sd_model_hash: facts.model.1,
        sd_vae_name: param("VAE"),
        sd_vae_hash: param("VAE hash"),
        seed_resize_from_w: params.seed_resize_from_w,
        seed_resize_from_h: params.seed_resize_from_h,
        denoising_strength: params.sampler.denoising_strength,
        extra_generation_params: Map::new(),
        index_of_first_image,
        infotexts,
        styles: Vec::new(),
        job_timestamp: facts.job_timestamp,
        clip_skip: params.clip_skip,
        is_using_inpainting_conditioning: facts.inpainting_conditioning,
        version: VERSION,
    }
}

/// A1111's grid of `images` (`images.image_grid` with its default options: rows =
/// round(√n), columns to fit, cells the largest image's size, empty places in the grid
/// background colour): `scripts::grid::image_grid`.
pub fn image_grid(images: &[RgbImage]) -> Option<RgbImage> {
    let n = images.len();
    // Python's round() of a square root never meets a tie: k + 0.5 squared is no integer.
    let rows = ((n as f64).sqrt().round() as usize).clamp(1, n.max(1));
    grid::image_grid(images, rows, grid::GRID_BACKGROUND).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_have_a1111s_rows_and_columns() {
        let tile = |v: u8| RgbImage::from_pixel(2, 3, image::Rgb([v, v, v]));
        let grid = image_grid(&[tile(1), tile(2), tile(3)]).unwrap();
        // round(√3) = 2 rows, 2 columns, the last place the grid background (#ffffff).
        assert_eq!(grid.dimensions(), (4, 6));
        assert_eq!(grid.get_pixel(2, 0)[0], 2);
        assert_eq!(grid.get_pixel(0, 3)[0], 3);
        assert_eq!(grid.get_pixel(3, 5)[0], 255);
        assert_eq!(
            image_grid(&[tile(1), tile(2)]).unwrap().dimensions(),
            (4, 3)
        );
        assert_eq!(image_grid(&[]), None);
    }

    #[test]
    fn info_lists_every_planned_seed_in_a1111_order() {
        let params = GenerationRequest {
            seed: 10,
            subseed: 3,
            n_iter: 2,
            batch_size: 2,
            ..GenerationRequest::api_defaults()
        };
        let facts = JobFacts {
            model: ("m".into(), "abc".into()),
            job_timestamp: "20240101000000".into(),
            inpainting_conditioning: false,
        };
        let info = info(
            &params,
            "Euler",
            vec!["p\nSteps: 50, Sampler: Euler, VAE: v.pt".into()],
            0,
            facts,
        );
        assert_eq!(info.all_seeds, [10, 11, 12, 13]);
        assert_eq!(info.sd_vae_name.as_deref(), Some("v.pt"));
        let text = crate::api::pyjson::dumps(&info);
        assert!(
            text.starts_with(r#"{"prompt": "", "all_prompts": ["#),
            "{text}"
        );
        assert!(
            text.ends_with(r#""is_using_inpainting_conditioning": false, "version": "v1.10.1"}"#)
        );
    }
}
