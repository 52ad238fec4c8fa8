//! Architecture inference from tensor shapes: no config file is needed, as with A1111
//! (`modules/sd_models_config.py: guess_model_config_from_state_dict`).

use super::Checkpoint;
use crate::models::clip::ClipConfig;
use crate::models::unet::{AttentionHeads, UNetConfig};
use crate::models::vae::{VaeConfig, SD1_LATENT_SCALE};
use crate::models::{Architecture, CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
use crate::weights::{LoadError, Result};

/// Reads the architecture of `ckpt` from its tensor shapes.
pub fn infer_architecture(ckpt: &Checkpoint) -> Result<Architecture> {
    let not_sd = |reason: String| LoadError::NotStableDiffusion {
        path: ckpt.path().to_path_buf(),
        reason,
    };
    let shape = |key: &str| ckpt.shape(key);
    let require = |key: &str| -> Result<Vec<i64>> {
        shape(key).ok_or_else(|| crate::weights::missing(ckpt.path(), key))
    };

    let stem = format!("{UNET_PREFIX}.input_blocks.0.0.weight");
    if shape(&stem).is_none() {
        return Err(not_sd(format!(
            "no LDM UNet (`{stem}` is absent; diffusers folders and LoRA/VAE files are not checkpoints)"
        )));
    }
    if shape(&format!("{UNET_PREFIX}.label_emb.0.0.weight")).is_some() {
        return Err(not_sd(
            "SDXL-style UNet (label_emb); only SD 1.x checkpoints are supported".into(),
        ));
    }
    let clip_prefix = [format!("{CLIP_PREFIX}.text_model"), CLIP_PREFIX.to_string()]
        .into_iter()
        .find(|p| shape(&format!("{p}.embeddings.token_embedding.weight")).is_some())
        .ok_or_else(|| {
            not_sd(format!(
                "no CLIP ViT-L text encoder under `{CLIP_PREFIX}` (SD 2.x/OpenCLIP is not supported)"
            ))
        })?;

    let unet = infer_unet(&require, &shape, &not_sd)?;
    let vae = infer_vae(&require, &shape)?;
    let clip = infer_clip(&clip_prefix, &require, &shape)?;
    if clip.hidden_size != unet.context_dim {
        return Err(not_sd(format!(
            "text encoder width {} does not match the UNet's context dim {}",
            clip.hidden_size, unet.context_dim
        )));
    }
    let architecture = Architecture {
        unet,
        vae,
        clip,
        clip_prefix,
    };
    check_widths(&architecture).map_err(not_sd)?;
    Ok(architecture)
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
    let c = &a.clip;
    if c.num_layers < 1 || c.hidden_size % c.num_heads != 0 || c.max_positions < 77 {
        return Err(format!(
            "text encoder of width {}, {} layers, {} positions cannot encode a 77-token prompt",
            c.hidden_size, c.num_layers, c.max_positions
        ));
    }
    Ok(())
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

fn infer_unet(require: &Require, shape: &Lookup, not_sd: &NotSd) -> Result<UNetConfig> {
    let p = UNET_PREFIX;
    let stem = require(&format!("{p}.input_blocks.0.0.weight"))?;
    let (model_channels, in_channels) = (dim(&stem, 0), dim(&stem, 1));
    if model_channels <= 0 {
        return Err(not_sd("the UNet stem has no output channels".into()));
    }
    let out_channels = dim(&require(&format!("{p}.out.2.weight"))?, 0);

    // Walk the input blocks: ResBlocks (with in_layers) until a Downsample (`op`) ends a level.
    let mut channel_mult = Vec::new();
    let mut attention_levels = Vec::new();
    let mut num_res_blocks = 0;
    let mut in_level = 0;
    let mut level_attention = false;
    let mut level_channels = 0;
    let mut index = 1;
    loop {
        let block = format!("{p}.input_blocks.{index}");
        if shape(&format!("{block}.0.op.weight")).is_some() {
            channel_mult.push(level_channels / model_channels);
            attention_levels.push(level_attention);
            num_res_blocks = in_level;
            in_level = 0;
            level_attention = false;
        } else if let Some(conv) = shape(&format!("{block}.0.in_layers.2.weight")) {
            level_channels = dim(&conv, 0);
            level_attention |= shape(&format!("{block}.1.proj_in.weight")).is_some();
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
    let transformer_depth = count(shape, |i| {
        format!("{transformer}.transformer_blocks.{i}.attn1.to_q.weight")
    });
    // SD1 fixes 8 heads; SD2 (1024-wide OpenCLIP context) fixes 64 channels per head.
    let heads = if context_dim == 1024 {
        AttentionHeads::Width(64)
    } else {
        AttentionHeads::Count(8)
    };
    Ok(UNetConfig {
        in_channels,
        out_channels,
        model_channels,
        channel_mult,
        num_res_blocks,
        attention_levels,
        transformer_depth,
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
