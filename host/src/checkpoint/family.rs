//! Which model family a checkpoint is, from its keys alone (A1111's
//! `modules/sd_models_config.py: guess_model_config_from_state_dict` and the renames of
//! `modules/sd_models.py: get_state_dict_from_checkpoint`).
//!
//! A1111 tells SD2 from SD1 by a 1024-wide OpenCLIP; here marker keys decide the family and
//! every width is read from shapes afterwards, so files of any width (the project's tiny ones
//! included) take the same path as full-size ones.

use super::Checkpoint;
use crate::models::text_encoders::ModelFamily;
use crate::models::UNET_PREFIX;
use crate::weights::{LoadError, Result};

/// A family found in a file, why, and where its (first) text encoder sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyDetection {
    /// The family.
    pub family: ModelFamily,
    /// The rule that decided it, for `sdhost info`.
    pub reason: String,
    /// Key prefix of the text encoder the family reads first: SD1's CLIP transformer, SD2's
    /// OpenCLIP (`cond_stage_model.model`, or `conditioner.embedders.0.model` in SD 2.1 Turbo
    /// files), SDXL's bigG, the refiner's bigG.
    pub text_prefix: String,
}

/// SDXL base/inpaint: the bigG tower is the second embedder.
const SDXL_BIG_G: &str = "conditioner.embedders.1.model";
/// The refiner's (and SD 2.1 Turbo's) only embedder.
const FIRST_OPEN_CLIP: &str = "conditioner.embedders.0.model";
/// SD 2.x's OpenCLIP.
const SD2_OPEN_CLIP: &str = "cond_stage_model.model";
/// SD 1.x's CLIP.
const SD1_CLIP: &str = "cond_stage_model.transformer";

/// Decides the family of `ckpt` (first matching rule wins, as in A1111), refusing families
/// sdhost does not run with their name.
pub fn detect_family(ckpt: &Checkpoint) -> Result<FamilyDetection> {
    let has = |key: &str| ckpt.shape(key).is_some();
    let has_prefix = |prefix: &str| ckpt.keys().any(|k| k.starts_with(prefix));
    let unsupported = |family: &str, reason: &str| LoadError::UnsupportedFamily {
        path: ckpt.path().to_path_buf(),
        family: family.to_string(),
        reason: reason.to_string(),
    };
    let found = |family, reason: String, text_prefix: &str| {
        Ok(FamilyDetection {
            family,
            reason,
            text_prefix: text_prefix.to_string(),
        })
    };
    let stem_channels = ckpt
        .shape(&format!("{UNET_PREFIX}.input_blocks.0.0.weight"))
        .and_then(|s| s.get(1).copied());

    if has(&format!("{UNET_PREFIX}.x_embedder.proj.weight"))
        || has_prefix(&format!("{UNET_PREFIX}.joint_blocks."))
    {
        return Err(unsupported(
            "Stable Diffusion 3",
            "MMDiT `x_embedder`/`joint_blocks`",
        ));
    }
    if has_prefix("double_blocks.") || has_prefix(&format!("{UNET_PREFIX}.double_blocks.")) {
        return Err(unsupported("Flux", "`double_blocks` transformer"));
    }
    if has("edm_mean") || has("edm_vpred.sigma_max") {
        return Err(unsupported(
            "Playground v2.5 / EDM",
            "`edm_mean`: an EDM noise schedule A1111 does not run either",
        ));
    }
    if stem_channels.is_none() {
        return Err(LoadError::NotStableDiffusion {
            path: ckpt.path().to_path_buf(),
            reason: format!(
                "no LDM UNet (`{UNET_PREFIX}.input_blocks.0.0.weight` is absent; diffusers folders and LoRA/VAE files are not checkpoints)"
            ),
        });
    }
    let ln_final = |prefix: &str| ckpt.shape(&format!("{prefix}.ln_final.weight"));
    if ln_final(SDXL_BIG_G).is_some() {
        if !has(&format!(
            "{UNET_PREFIX}.middle_block.1.transformer_blocks.0.attn1.to_q.weight"
        )) {
            return Err(unsupported(
                "SSD-1B",
                "SDXL without the middle block's transformer",
            ));
        }
        return found(
            ModelFamily::Sdxl,
            format!("`{SDXL_BIG_G}.ln_final.weight` (OpenCLIP bigG as the second embedder)"),
            SDXL_BIG_G,
        );
    }
    if let Some(shape) = ln_final(FIRST_OPEN_CLIP) {
        if shape.iter().product::<i64>() == 1024 {
            return found(
                ModelFamily::Sd2,
                format!(
                    "`{FIRST_OPEN_CLIP}.ln_final.weight` of width 1024: an SD 2.1 Turbo file, read as SD 2.x"
                ),
                FIRST_OPEN_CLIP,
            );
        }
        return found(
            ModelFamily::SdxlRefiner,
            format!("`{FIRST_OPEN_CLIP}.ln_final.weight` (OpenCLIP bigG as the only embedder)"),
            FIRST_OPEN_CLIP,
        );
    }
    if has_prefix("depth_model.") {
        return Err(unsupported(
            "SD 2.x depth",
            "`depth_model.*`: needs MiDaS depth estimation",
        ));
    }
    if has_prefix("embedder.model.") {
        return Err(unsupported(
            "SD 2.x unCLIP",
            "`embedder.model.*`: image-variation model",
        ));
    }
    let open_clip = has(&format!(
        "{SD2_OPEN_CLIP}.transformer.resblocks.0.attn.in_proj_weight"
    )) || has(&format!("{SD2_OPEN_CLIP}.token_embedding.weight"));
    if open_clip {
        if stem_channels == Some(5) {
            return Err(unsupported(
                "SD 2.x depth",
                "a 5-channel UNet stem: needs MiDaS depth estimation",
            ));
        }
        return found(
            ModelFamily::Sd2,
            format!("`{SD2_OPEN_CLIP}.*` (OpenCLIP ViT-H text encoder)"),
            SD2_OPEN_CLIP,
        );
    }
    if stem_channels == Some(8) {
        return Err(unsupported(
            "InstructPix2Pix",
            "an 8-channel UNet stem (latent + image conditioning)",
        ));
    }
    if has_prefix("cond_stage_model.roberta.") {
        return Err(unsupported(
            "AltDiffusion",
            "`cond_stage_model.roberta.*` (XLM-RoBERTa text encoder)",
        ));
    }
    if has_prefix(&format!("{SD1_CLIP}.")) {
        return found(
            ModelFamily::Sd1,
            format!("`{SD1_CLIP}.*` (CLIP ViT-L text encoder)"),
            SD1_CLIP,
        );
    }
    Err(LoadError::NotStableDiffusion {
        path: ckpt.path().to_path_buf(),
        reason: "a UNet without a text encoder A1111 knows (no `cond_stage_model.*` or `conditioner.embedders.*`)".into(),
    })
}
