//! Architecture inference from tensor shapes: no config file is needed, as with A1111
//! (`modules/sd_models_config.py: guess_model_config_from_state_dict`).

use super::family::{detect_family, FamilyDetection};
use super::Checkpoint;
use crate::models::clip::ClipConfig;
use crate::models::open_clip::OpenClipConfig;
use crate::models::text_encoders::{ModelFamily, TextConfig};
use crate::models::unet::{AttentionHeads, UNetConfig};
use crate::models::vae::{VaeConfig, SD1_LATENT_SCALE, SDXL_LATENT_SCALE};
use crate::models::{Architecture, UNET_PREFIX, VAE_PREFIX};

/// Values per scalar of SDXL's size/crop/aesthetic embedding (`ConcatTimestepEmbedderND`).
pub const SIZE_EMBEDDING_DIM: i64 = 256;
use crate::weights::{LoadError, Result};

/// Reads the architecture of `ckpt` from its tensor shapes.
pub fn infer_architecture(ckpt: &Checkpoint) -> Result<Architecture> {
    infer_architecture_with_reason(ckpt).map(|(architecture, _)| architecture)
}

/// Reads the architecture of `ckpt`, with the family rule that decided it.
pub fn infer_architecture_with_reason(
    ckpt: &Checkpoint,
) -> Result<(Architecture, FamilyDetection)> {
    let not_sd = |reason: String| LoadError::NotStableDiffusion {
        path: ckpt.path().to_path_buf(),
        reason,
    };
    let shape = |key: &str| ckpt.shape(key);
    let require = |key: &str| -> Result<Vec<i64>> {
        shape(key).ok_or_else(|| crate::weights::missing(ckpt.path(), key))
    };

    let detection = detect_family(ckpt)?;
    let family = detection.family;
    let text = infer_text(&detection, &require, &shape, &not_sd)?;
    let heads = match family {
        // SD1 fixes 8 heads; SD2 and SDXL fix 64 channels per head.
        ModelFamily::Sd1 => AttentionHeads::Count(8),
        _ => AttentionHeads::Width(64),
    };
    let unet = infer_unet(&require, &shape, &not_sd, heads)?;
    let mut vae = infer_vae(&require, &shape)?;
    if family.is_sdxl() {
        vae.scaling_factor = SDXL_LATENT_SCALE;
    }
    if text.context_dim() != unet.context_dim {
        return Err(not_sd(format!(
            "the {} text encoders give {}-wide context, the UNet's cross-attention takes {}",
            family.name(),
            text.context_dim(),
            unet.context_dim
        )));
    }
    check_vector_input(&text, &unet).map_err(not_sd)?;
    let architecture = Architecture { unet, vae, text };
    check_widths(&architecture).map_err(not_sd)?;
    Ok((architecture, detection))
}

/// SDXL's UNet takes a vector of the pooled text and 256 values per size/crop/aesthetic
/// scalar (six for the base model, five for the refiner); no other family has one.
fn check_vector_input(text: &TextConfig, unet: &UNetConfig) -> Result<(), String> {
    let family = text.family();
    let scalars = match family {
        ModelFamily::Sdxl => Some(6),
        ModelFamily::SdxlRefiner => Some(5),
        _ => None,
    };
    match (scalars, text.pooled_dim(), unet.adm_in_channels) {
        (None, _, None) => Ok(()),
        (None, _, Some(adm)) => Err(format!(
            "the UNet takes SDXL's {adm}-wide vector input (`label_emb`), but the text encoder is {}'s",
            family.name()
        )),
        (Some(_), _, None) => Err(format!(
            "{} text encoders, but the UNet has no vector input (`label_emb`)",
            family.name()
        )),
        (Some(_), None, Some(_)) => Err(format!(
            "the {} OpenCLIP tower has no `text_projection` for the pooled vector",
            family.name()
        )),
        (Some(n), Some(pooled), Some(adm)) if adm != pooled + n * SIZE_EMBEDDING_DIM => {
            Err(format!(
                "the UNet's vector input is {adm} wide; {} needs the {pooled}-wide pooled text and {n}×{SIZE_EMBEDDING_DIM} size values = {}",
                family.name(),
                pooled + n * SIZE_EMBEDDING_DIM
            ))
        }
        _ => Ok(()),
    }
}

/// Rejects shapes the networks cannot run with (a crafted or damaged file would otherwise
/// fail later, inside libtorch): group norms need multiples of 32 channels, attention widths
/// must split into whole heads, and a prompt chunk needs 77 positions.
fn check_widths(a: &Architecture) -> Result<(), String> {
    let u = &a.unet;
    let unet_widths: Vec<i64> = u
        .channel_mult
        .iter()
        .map(|m| m * u.model_channels)
        .collect();
    for (&width, &attention) in unet_widths.iter().zip(&u.attention_levels) {
        if width <= 0 || width % 32 != 0 {
            return Err(format!(
                "UNet width {width} is not a positive multiple of 32"
            ));
        }
        let heads = u.heads.heads_for(width);
        if attention && (heads <= 0 || width % heads != 0) {
            return Err(format!(
                "UNet width {width} does not split into {heads} attention heads"
            ));
        }
    }
    let v = &a.vae;
    if v.ch_mult.is_empty() || v.num_res_blocks < 1 {
        return Err("the VAE encoder has no levels".into());
    }
    if let Some(width) = v
        .ch_mult
        .iter()
        .map(|m| m * v.ch)
        .find(|w| *w <= 0 || w % 32 != 0)
    {
        return Err(format!(
            "VAE width {width} is not a positive multiple of 32"
        ));
    }
    let towers: Vec<(i64, i64, i64, i64)> = match &a.text {
        TextConfig::Sd1 { clip, .. } => vec![clip_shape(clip)],
        TextConfig::Sd2 { open_clip, .. } => vec![open_clip_shape(open_clip)],
        TextConfig::Sdxl { clip_l, big_g, .. } => vec![clip_shape(clip_l), open_clip_shape(big_g)],
        TextConfig::SdxlRefiner { big_g, .. } => vec![open_clip_shape(big_g)],
    };
    // SD2 conditions on the penultimate block and SDXL's CLIP-L on its penultimate layer,
    // so those towers need two.
    let min_layers = if a.family() == ModelFamily::Sd1 { 1 } else { 2 };
    for (width, layers, heads, positions) in towers {
        if layers < min_layers || heads <= 0 || width % heads != 0 || positions < 77 {
            return Err(format!(
                "text encoder of width {width}, {layers} layers, {positions} positions cannot encode a 77-token prompt"
            ));
        }
    }
    Ok(())
}

fn clip_shape(c: &ClipConfig) -> (i64, i64, i64, i64) {
    (c.hidden_size, c.num_layers, c.num_heads, c.max_positions)
}

fn open_clip_shape(c: &OpenClipConfig) -> (i64, i64, i64, i64) {
    (c.width, c.layers, c.heads, c.context_length)
}

type Lookup<'a> = dyn Fn(&str) -> Option<Vec<i64>> + 'a;
type Require<'a> = dyn Fn(&str) -> Result<Vec<i64>> + 'a;
type NotSd<'a> = dyn Fn(String) -> LoadError + 'a;

/// Size of dimension `i`, 0 when the tensor has fewer dimensions (rejected later as a width).
fn dim(shape: &[i64], i: usize) -> i64 {
    shape.get(i).copied().unwrap_or(0)
}

fn count(shape: &Lookup, key_of: impl Fn(i64) -> String) -> i64 {
    (0..).take_while(|&i| shape(&key_of(i)).is_some()).count() as i64
}

fn infer_unet(
    require: &Require,
    shape: &Lookup,
    not_sd: &NotSd,
    heads: AttentionHeads,
) -> Result<UNetConfig> {
    let p = UNET_PREFIX;
    let stem = require(&format!("{p}.input_blocks.0.0.weight"))?;
    let (model_channels, in_channels) = (dim(&stem, 0), dim(&stem, 1));
    if model_channels <= 0 {
        return Err(not_sd("the UNet stem has no output channels".into()));
    }
    let out_channels = dim(&require(&format!("{p}.out.2.weight"))?, 0);

    // Walk the input blocks: ResBlocks (with in_layers) until a Downsample (`op`) ends a level.
    // Each level's transformer depth is counted in its first block with attention (SDXL's
    // levels differ: none, 2, 10).
    let depth_of = |transformer: &str| {
        count(shape, |i| {
            format!("{transformer}.transformer_blocks.{i}.attn1.to_q.weight")
        })
    };
    let mut channel_mult = Vec::new();
    let mut attention_levels = Vec::new();
    let mut transformer_depth = Vec::new();
    let mut num_res_blocks = 0;
    let mut in_level = 0;
    let mut level_attention = false;
    let mut level_depth = 0;
    let mut level_channels = 0;
    let mut index = 1;
    loop {
        let block = format!("{p}.input_blocks.{index}");
        if shape(&format!("{block}.0.op.weight")).is_some() {
            channel_mult.push(level_channels / model_channels);
            attention_levels.push(level_attention);
            transformer_depth.push(level_depth);
            num_res_blocks = in_level;
            in_level = 0;
            level_attention = false;
            level_depth = 0;
        } else if let Some(conv) = shape(&format!("{block}.0.in_layers.2.weight")) {
            level_channels = dim(&conv, 0);
            if !level_attention && shape(&format!("{block}.1.proj_in.weight")).is_some() {
                level_attention = true;
                level_depth = depth_of(&format!("{block}.1"));
            }
            in_level += 1;
        } else {
            break;
        }
        index += 1;
    }
    if in_level == 0 {
        return Err(not_sd(
            "the UNet has no ResBlock at its lowest level".into(),
        ));
    }
    // The bottom level has no Downsample.
    channel_mult.push(level_channels / model_channels);
    attention_levels.push(level_attention);
    transformer_depth.push(level_depth);
    if num_res_blocks == 0 {
        num_res_blocks = in_level;
    }

    let transformer = format!("{p}.middle_block.1");
    let proj_in = require(&format!("{transformer}.proj_in.weight"))?;
    let context_dim = dim(
        &require(&format!(
            "{transformer}.transformer_blocks.0.attn2.to_k.weight"
        ))?,
        1,
    );
    let transformer_depth_middle = depth_of(&transformer);
    let adm_in_channels = shape(&format!("{p}.label_emb.0.0.weight")).map(|s| dim(&s, 1));
    Ok(UNetConfig {
        in_channels,
        out_channels,
        model_channels,
        channel_mult,
        num_res_blocks,
        attention_levels,
        transformer_depth,
        transformer_depth_middle,
        adm_in_channels,
        context_dim,
        heads,
        use_linear_in_transformer: proj_in.len() == 2,
    })
}

fn infer_vae(require: &Require, shape: &Lookup) -> Result<VaeConfig> {
    let p = format!("{VAE_PREFIX}.encoder");
    let conv_in = require(&format!("{p}.conv_in.weight"))?;
    let ch = dim(&conv_in, 0);
    let levels = count(shape, |i| format!("{p}.down.{i}.block.0.conv1.weight"));
    let ch_mult = (0..levels)
        .map(|i| {
            Ok(
                dim(&require(&format!("{p}.down.{i}.block.0.conv2.weight"))?, 0)
                    .checked_div(ch)
                    .unwrap_or(0),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let num_res_blocks = count(shape, |j| format!("{p}.down.0.block.{j}.conv1.weight"));
    let z_channels = dim(
        &require(&format!("{VAE_PREFIX}.decoder.conv_in.weight"))?,
        1,
    );
    let out_channels = dim(
        &require(&format!("{VAE_PREFIX}.decoder.conv_out.weight"))?,
        0,
    );
    Ok(VaeConfig {
        in_channels: dim(&conv_in, 1),
        out_channels,
        ch,
        ch_mult,
        num_res_blocks,
        z_channels,
        scaling_factor: SD1_LATENT_SCALE,
    })
}

fn infer_text(
    detection: &FamilyDetection,
    require: &Require,
    shape: &Lookup,
    not_sd: &NotSd,
) -> Result<TextConfig> {
    let prefix = detection.text_prefix.clone();
    Ok(match detection.family {
        ModelFamily::Sd1 => {
            let prefix = clip_prefix(&prefix, shape)
                .ok_or_else(|| not_sd(format!("no CLIP ViT-L text encoder under `{prefix}`")))?;
            TextConfig::Sd1 {
                clip: infer_clip(&prefix, require, shape)?,
                prefix,
            }
        }
        ModelFamily::Sd2 => TextConfig::Sd2 {
            open_clip: infer_open_clip(&prefix, require, shape)?,
            prefix,
        },
        ModelFamily::Sdxl => {
            let first = "conditioner.embedders.0.transformer";
            let clip_l_prefix = clip_prefix(first, shape).ok_or_else(|| {
                not_sd(format!(
                    "SDXL without its CLIP ViT-L text encoder (`{first}.text_model.*`)"
                ))
            })?;
            TextConfig::Sdxl {
                clip_l: infer_clip(&clip_l_prefix, require, shape)?,
                clip_l_prefix,
                big_g: infer_open_clip(&prefix, require, shape)?,
                big_g_prefix: prefix,
            }
        }
        ModelFamily::SdxlRefiner => TextConfig::SdxlRefiner {
            big_g: infer_open_clip(&prefix, require, shape)?,
            prefix,
        },
    })
}

/// Where transformers' `CLIPTextModel` sits under `transformer`: `…text_model` with current
/// transformers, `transformer` itself with old ones.
fn clip_prefix(transformer: &str, shape: &Lookup) -> Option<String> {
    [format!("{transformer}.text_model"), transformer.to_string()]
        .into_iter()
        .find(|p| shape(&format!("{p}.embeddings.token_embedding.weight")).is_some())
}

fn infer_open_clip(prefix: &str, require: &Require, shape: &Lookup) -> Result<OpenClipConfig> {
    let tokens = require(&format!("{prefix}.token_embedding.weight"))?;
    let positions = require(&format!("{prefix}.positional_embedding"))?;
    let c_fc = require(&format!("{prefix}.transformer.resblocks.0.mlp.c_fc.weight"))?;
    let layers = count(shape, |i| {
        format!("{prefix}.transformer.resblocks.{i}.mlp.c_fc.weight")
    });
    let width = dim(&tokens, 1);
    Ok(OpenClipConfig {
        vocab_size: dim(&tokens, 0),
        width,
        mlp_width: dim(&c_fc, 0),
        layers,
        heads: ClipConfig::heads_for_width(width),
        context_length: dim(&positions, 0),
        projection_dim: shape(&format!("{prefix}.text_projection")).map(|s| dim(&s, 1)),
    })
}

fn infer_clip(prefix: &str, require: &Require, shape: &Lookup) -> Result<ClipConfig> {
    let tokens = require(&format!("{prefix}.embeddings.token_embedding.weight"))?;
    let positions = require(&format!("{prefix}.embeddings.position_embedding.weight"))?;
    let fc1 = require(&format!("{prefix}.encoder.layers.0.mlp.fc1.weight"))?;
    let num_layers = count(shape, |i| {
        format!("{prefix}.encoder.layers.{i}.mlp.fc1.weight")
    });
    Ok(ClipConfig {
        vocab_size: dim(&tokens, 0),
        hidden_size: dim(&tokens, 1),
        intermediate_size: dim(&fc1, 0),
        num_layers,
        num_heads: ClipConfig::heads_for_width(dim(&tokens, 1)),
        max_positions: dim(&positions, 0),
    })
}
