//! Which upscaler architecture a state dict holds, and its shapes, as spandrel 0.4 decides
//! (`__helpers/main_registry.py`: the architectures tried in its order, each with its
//! `detect` key condition and its `load`, which reads every hyperparameter from key names and
//! tensor shapes). sdhost runs ESRGAN (both key layouts, ESRGAN+, pixel-unshuffled
//! Real-ESRGAN), Compact and SwinIR; the spandrel architectures tried before them whose keys
//! overlap theirs (Swin2SR, HAT, DAT) are named in the error rather than mistaken for them.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::models::upscalers::{CompactConfig, EsrganConfig, SwinIrConfig, SwinIrUpsampler};

/// A detected architecture with the shapes to build it.
#[derive(Debug, Clone, PartialEq)]
pub enum Architecture {
    /// spandrel "ESRGAN" (RRDBNet).
    Esrgan(EsrganConfig),
    /// spandrel "Compact" (SRVGGNetCompact, "RealESRGAN Compact").
    Compact(CompactConfig),
    /// spandrel "SwinIR".
    SwinIr(SwinIrConfig),
}

impl Architecture {
    /// spandrel's architecture id.
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::Esrgan(_) => "ESRGAN",
            Architecture::Compact(_) => "Compact",
            Architecture::SwinIr(_) => "SwinIR",
        }
    }

    /// The descriptor's scale: output pixels per input pixel.
    pub fn scale(&self) -> i64 {
        match self {
            Architecture::Esrgan(c) => c.scale(),
            Architecture::Compact(c) => c.scale,
            Architecture::SwinIr(c) => c.upsampler.scale(),
        }
    }

    /// spandrel's `SizeRequirements` (minimum side, multiple of): the descriptor pads smaller
    /// inputs before calling the network.
    pub fn size_requirements(&self) -> (i64, i64) {
        match self {
            Architecture::Esrgan(c) => (
                if c.shuffle.is_some() { 4 } else { 2 },
                if c.shuffle.is_some() { 4 } else { 1 },
            ),
            Architecture::Compact(_) => (0, 1),
            Architecture::SwinIr(_) => (16, 1),
        }
    }
}

/// Why a state dict is not an upscaler sdhost runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    /// No architecture's keys match.
    #[error("not an upscaler model sdhost knows (ESRGAN, Real-ESRGAN, Real-ESRGAN Compact, SwinIR); its first keys are {0}")]
    Unknown(String),
    /// An architecture spandrel knows and sdhost does not run.
    #[error("a {0} upscaler model, an architecture sdhost does not run (it runs ESRGAN, Real-ESRGAN, Real-ESRGAN Compact and SwinIR)")]
    Unsupported(&'static str),
    /// The keys match but a shape or count does not make a network.
    #[error("a {arch} model with unexpected shapes: {reason}")]
    Malformed { arch: &'static str, reason: String },
}

/// Keys and shapes of a state dict.
struct Keys<'a>(&'a BTreeMap<String, Tensor>);

impl Keys<'_> {
    fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    fn all(&self, keys: &[&str]) -> bool {
        keys.iter().all(|k| self.has(k))
    }

    fn shape(&self, key: &str) -> Option<Vec<i64>> {
        self.0.get(key).map(Tensor::size)
    }

    /// spandrel's `get_seq_len`: one more than the largest `i` of `{prefix}.{i}.…`.
    fn seq_len(&self, prefix: &str) -> i64 {
        let dotted = format!("{prefix}.");
        self.0
            .keys()
            .filter_map(|k| k.strip_prefix(&dotted))
            .filter_map(|rest| rest.split('.').next()?.parse::<i64>().ok())
            .max()
            .map_or(0, |m| m + 1)
    }
}

fn malformed(arch: &'static str, reason: impl Into<String>) -> DetectError {
    DetectError::Malformed {
        arch,
        reason: reason.into(),
    }
}

/// A dimension of `key`'s shape, or the malformed-model error naming it.
fn dim(keys: &Keys, arch: &'static str, key: &str, index: usize) -> Result<i64, DetectError> {
    keys.shape(key)
        .and_then(|s| s.get(index).copied())
        .ok_or_else(|| {
            malformed(
                arch,
                format!("`{key}` is missing or has too few dimensions"),
            )
        })
}

/// Detects the architecture of a canonical state dict; ESRGAN files in the new (basicsr,
/// BSRGAN) layout are renamed to the old one in place, as spandrel's `_to_old_arch` does.
pub fn detect(state: &mut BTreeMap<String, Tensor>) -> Result<Architecture, DetectError> {
    let keys = Keys(state);
    if keys.all(&["body.0.weight", "body.1.weight"]) {
        return compact(&keys).map(Architecture::Compact);
    }
    let swin_base = [
        "layers.0.residual_group.blocks.0.norm1.weight",
        "layers.0.residual_group.blocks.0.mlp.fc1.bias",
        "layers.0.residual_group.blocks.0.attn.relative_position_index",
    ];
    if keys.all(&swin_base) && keys.all(&["patch_embed.proj.weight", "conv_first.weight"]) {
        return Err(DetectError::Unsupported("Swin2SR"));
    }
    if keys.all(&["relative_position_index_SA", "conv_first.weight"])
        && keys.has("layers.0.residual_group.overlap_attn.qkv.weight")
    {
        return Err(DetectError::Unsupported("HAT"));
    }
    if keys.all(&swin_base) && (keys.has("conv_first.weight") || keys.has("conv_first.1.weight")) {
        return swinir(&keys).map(Architecture::SwinIr);
    }
    if keys.all(&[
        "conv_first.weight",
        "before_RG.1.weight",
        "layers.0.blocks.0.attn.qkv.weight",
    ]) {
        return Err(DetectError::Unsupported("DAT"));
    }
    let esrgan_layouts: [&[&str]; 4] = [
        &["model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"],
        &[
            "conv_first.weight",
            "body.0.rdb1.conv1.weight",
            "conv_body.weight",
            "conv_last.weight",
        ],
        &[
            "conv_first.weight",
            "RRDB_trunk.0.RDB1.conv1.weight",
            "trunk_conv.weight",
            "conv_last.weight",
        ],
        &["model.0.weight", "model.1.sub.0.RDB1.conv1x1.weight"],
    ];
    if esrgan_layouts.iter().any(|layout| keys.all(layout)) {
        to_old_esrgan_layout(state);
        return esrgan(&Keys(state)).map(Architecture::Esrgan);
    }
    let first: Vec<&str> = state.keys().take(4).map(String::as_str).collect();
    Err(DetectError::Unknown(format!("`{}`", first.join("`, `"))))
}

/// spandrel's `_new_to_old_arch`: Real-ESRGAN's `conv_first`, `body.N.rdbK.convJ`,
/// `conv_body`, `conv_upN`, `conv_hr`, `conv_last` (and BSRGAN's `RRDB_trunk`, `trunk_conv`,
/// `upconvN`, `HRconv`) under the old `model.…` names.
fn to_old_esrgan_layout(state: &mut BTreeMap<String, Tensor>) {
    if !state.contains_key("conv_first.weight") {
        return;
    }
    let old = std::mem::take(state);
    let blocks = old
        .keys()
        .filter_map(|k| {
            let rest = k
                .strip_prefix("body.")
                .or_else(|| k.strip_prefix("RRDB_trunk."))?;
            rest.split('.').next()?.parse::<i64>().ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    let max_up = old
        .keys()
        .filter_map(|k| {
            let rest = k
                .strip_prefix("conv_up")
                .or_else(|| k.strip_prefix("upconv"))?;
            rest.split('.').next()?.parse::<i64>().ok()
        })
        .max()
        .map_or(0, |n| 3 * n);
    for (key, tensor) in old {
        let Some((stem, kind)) = key.rsplit_once('.') else {
            continue;
        };
        let renamed = match stem {
            "conv_first" => Some("model.0".to_string()),
            "conv_body" | "trunk_conv" => Some(format!("model.1.sub.{blocks}")),
            "conv_hr" | "HRconv" => Some(format!("model.{}", max_up + 2)),
            "conv_last" => Some(format!("model.{}", max_up + 4)),
            _ => rename_block(stem).or_else(|| {
                let n = stem
                    .strip_prefix("conv_up")
                    .or_else(|| stem.strip_prefix("upconv"))?
                    .parse::<i64>()
                    .ok()?;
                Some(format!("model.{}", 3 * n))
            }),
        };
        // Keys of neither layout are dropped, as spandrel's conversion drops them.
        if let Some(renamed) = renamed {
            state.insert(format!("{renamed}.{kind}"), tensor);
        }
    }
}

/// `body.N.rdbK.convJ` / `RRDB_trunk.N.RDBK.convJ` → `model.1.sub.N.RDBK.convJ.0`.
fn rename_block(stem: &str) -> Option<String> {
    let rest = stem
        .strip_prefix("body.")
        .or_else(|| stem.strip_prefix("RRDB_trunk."))?;
    let mut parts = rest.split('.');
    let n: i64 = parts.next()?.parse().ok()?;
    let rdb = parts.next()?;
    let k: i64 = rdb
        .strip_prefix("rdb")
        .or_else(|| rdb.strip_prefix("RDB"))?
        .parse()
        .ok()?;
    let j: i64 = parts.next()?.strip_prefix("conv")?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(format!("model.1.sub.{n}.RDB{k}.conv{j}.0"))
}

/// `ESRGANArch.load`'s hyperparameters from an old-layout state dict.
fn esrgan(keys: &Keys) -> Result<EsrganConfig, DetectError> {
    const ARCH: &str = "ESRGAN";
    let seq = keys.seq_len("model");
    if seq < 5 || (seq - 5) % 3 != 0 {
        return Err(malformed(
            ARCH,
            format!("`model` has {seq} layers, not 5 + 3 per ×2 stage"),
        ));
    }
    let in_nc = dim(keys, ARCH, "model.0.weight", 1)?;
    let nf = dim(keys, ARCH, "model.0.weight", 0)?;
    let out_nc = dim(keys, ARCH, &format!("model.{}.weight", seq - 1), 0)?;
    let blocks = keys.seq_len("model.1.sub") - 1;
    let gc = dim(keys, ARCH, "model.1.sub.0.RDB1.conv1.0.weight", 0)?;
    let plus = keys.0.keys().any(|k| k.contains(".conv1x1."));
    let shuffle = [4, 16]
        .into_iter()
        .find(|f| in_nc == out_nc * f)
        .map(|f| if f == 4 { 2 } else { 4 });
    let config = EsrganConfig {
        in_nc,
        out_nc,
        nf,
        gc,
        blocks,
        upsamples: (seq - 5) / 3,
        plus,
        shuffle,
    };
    if blocks < 1 || config.body_scale() < shuffle.unwrap_or(1) {
        return Err(malformed(
            ARCH,
            "no RRDB blocks, or a scale below its unshuffle",
        ));
    }
    Ok(config)
}

/// spandrel's `get_scale_and_output_channels`: a scale and channel count with
/// `scale² · channels = x`, trying the input's channels, then 3, 4 and 1.
fn scale_and_channels(x: i64, in_nc: i64) -> Option<(i64, i64)> {
    [in_nc, 3, 4, 1].into_iter().find_map(|c| {
        if c <= 0 || x % c != 0 {
            return None;
        }
        let s = ((x / c) as f64).sqrt().round() as i64;
        (s * s == x / c && s > 0).then_some((s, c))
    })
}

/// `CompactArch.load`.
fn compact(keys: &Keys) -> Result<CompactConfig, DetectError> {
    const ARCH: &str = "Compact";
    let highest = keys.seq_len("body") - 1;
    let in_nc = dim(keys, ARCH, "body.0.weight", 1)?;
    let nf = dim(keys, ARCH, "body.0.weight", 0)?;
    let last = dim(keys, ARCH, &format!("body.{highest}.bias"), 0)?;
    let (scale, out_nc) = scale_and_channels(last, in_nc).ok_or_else(|| {
        malformed(
            ARCH,
            format!("its last layer's {last} channels are no scale² × 1, 3 or 4"),
        )
    })?;
    if highest < 2 || highest % 2 != 0 {
        return Err(malformed(ARCH, format!("`body` ends at layer {highest}")));
    }
    Ok(CompactConfig {
        in_nc,
        out_nc,
        nf,
        convs: (highest - 2) / 2,
        scale,
    })
}

/// `SwinIRArch.load`.
fn swinir(keys: &Keys) -> Result<SwinIrConfig, DetectError> {
    const ARCH: &str = "SwinIR";
    if keys.has("conv_first.1.weight") {
        return Err(malformed(
            ARCH,
            "its input is pixel-unshuffled (`conv_first.1`), which sdhost does not run",
        ));
    }
    let num_in = dim(keys, ARCH, "conv_first.weight", 1)?;
    let embed_dim = dim(keys, ARCH, "conv_first.weight", 0)?;
    let block0 = "layers.0.residual_group.blocks.0";
    let mlp_hidden = dim(keys, ARCH, &format!("{block0}.mlp.fc1.bias"), 0)?;
    let index_len = dim(
        keys,
        ARCH,
        &format!("{block0}.attn.relative_position_index"),
        0,
    )?;
    let window_size = (index_len as f64).sqrt() as i64;
    let img_size = match keys.shape("layers.0.residual_group.blocks.1.attn_mask") {
        Some(shape) => ((shape[0] as f64).sqrt() * window_size as f64) as i64,
        None => 64,
    };
    let layers = keys.seq_len("layers");
    let mut depths = Vec::new();
    let mut heads = Vec::new();
    for i in 0..layers {
        depths.push(keys.seq_len(&format!("layers.{i}.residual_group.blocks")));
        heads.push(dim(
            keys,
            ARCH,
            &format!("layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"),
            1,
        )?);
    }
    let upsampler = if keys.has("conv_before_upsample.0.weight") {
        let num_feat = dim(keys, ARCH, "conv_before_upsample.0.weight", 0)?;
        if keys.has("conv_up1.weight") {
            let ups = keys
                .0
                .keys()
                .filter(|k| k.contains("conv_up") && !k.contains("bias"))
                .count() as u32;
            SwinIrUpsampler::NearestConv {
                scale: 1 << ups,
                num_feat,
            }
        } else {
            // `get_pixelshuffle_params`: each `upsample.{2i}` multiplies the scale.
            let mut scale = 1;
            for i in (0..10).step_by(2) {
                let Some(shape) = keys.shape(&format!("upsample.{i}.weight")) else {
                    break;
                };
                let ratio = shape[0] / shape[1].max(1);
                scale *= (ratio as f64).sqrt() as i64;
            }
            SwinIrUpsampler::PixelShuffle { scale, num_feat }
        }
    } else if keys.has("upsample.0.weight") {
        let bias = dim(keys, ARCH, "upsample.0.bias", 0)?;
        SwinIrUpsampler::PixelShuffleDirect {
            scale: ((bias / num_in) as f64).sqrt() as i64,
        }
    } else {
        SwinIrUpsampler::None
    };
    if embed_dim < 4 || window_size < 1 || depths.iter().any(|&d| d < 1) || upsampler.scale() < 1 {
        return Err(malformed(ARCH, "empty layers, window or scale"));
    }
    Ok(SwinIrConfig {
        in_chans: num_in,
        embed_dim,
        depths,
        heads,
        window_size,
        img_size,
        mlp_hidden,
        three_conv: !keys.has("conv_after_body.weight"),
        upsampler,
        // spandrel: the JPEG models are the only ones with window 7, and use this range.
        img_range: if window_size == 7 { 255.0 } else { 1.0 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn dict(entries: &[(&str, &[i64])]) -> BTreeMap<String, Tensor> {
        entries
            .iter()
            .map(|(k, s)| (k.to_string(), Tensor::zeros(*s, (Kind::Float, Device::Cpu))))
            .collect()
    }

    #[test]
    fn new_layout_keys_are_renamed_as_spandrel_renames_them() {
        let mut state = dict(&[
            ("conv_first.weight", &[8, 12, 3, 3]),
            ("body.0.rdb1.conv1.weight", &[32, 8, 3, 3]),
            ("body.1.rdb3.conv5.bias", &[8]),
            ("conv_body.weight", &[8, 8, 3, 3]),
            ("conv_up1.weight", &[8, 8, 3, 3]),
            ("conv_up2.weight", &[8, 8, 3, 3]),
            ("conv_hr.weight", &[8, 8, 3, 3]),
            ("conv_last.weight", &[3, 8, 3, 3]),
        ]);
        to_old_esrgan_layout(&mut state);
        let keys: Vec<&str> = state.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "model.0.weight",
                "model.1.sub.0.RDB1.conv1.0.weight",
                "model.1.sub.1.RDB3.conv5.0.bias",
                "model.1.sub.2.weight",
                "model.10.weight",
                "model.3.weight",
                "model.6.weight",
                "model.8.weight",
            ]
        );
        let config = esrgan(&Keys(&state)).unwrap();
        assert_eq!(
            (config.shuffle, config.scale(), config.blocks),
            (Some(2), 2, 2)
        );
    }

    #[test]
    fn pixel_shuffle_outputs_give_scale_and_channels() {
        assert_eq!(scale_and_channels(48, 3), Some((4, 3)));
        assert_eq!(scale_and_channels(12, 3), Some((2, 3)));
        assert_eq!(scale_and_channels(64, 3), Some((4, 4)));
        assert_eq!(scale_and_channels(7, 3), None);
    }

    #[test]
    fn unknown_and_foreign_state_dicts_are_named() {
        let mut state = dict(&[("encoder.conv_in.weight", &[4, 3, 3, 3])]);
        assert!(matches!(detect(&mut state), Err(DetectError::Unknown(_))));
        let mut state = dict(&[
            ("conv_first.weight", &[8, 3, 3, 3]),
            ("before_RG.1.weight", &[8]),
            ("layers.0.blocks.0.attn.qkv.weight", &[24, 8]),
        ]);
        assert_eq!(detect(&mut state), Err(DetectError::Unsupported("DAT")));
    }
}
