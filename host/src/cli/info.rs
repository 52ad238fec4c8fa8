//! `sdhost info MODEL`: what a checkpoint is, without loading its weights.

use crate::checkpoint::{
    default_cache_dir, detect_prediction, infer_architecture_with_reason, needs_v_test,
    prediction_from_file, verify_structure, Checkpoint, ModelHashes, PredictionDetection,
};
use crate::models::clip::ClipConfig;
use crate::models::open_clip::OpenClipConfig;
use crate::models::text_encoders::TextConfig;
use crate::models::unet::UNetModel;
use crate::models::{Architecture, UNET_PREFIX, VAE_PREFIX};
use crate::weights::VarBuilder;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Arguments of `sdhost info`.
#[derive(clap::Args)]
pub struct InfoArgs {
    /// Checkpoint file (.safetensors, or a .ckpt/.pt pickle).
    model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Skip hashing (hashing reads the whole file once; results are cached).
    #[arg(long)]
    no_hash: bool,
}

/// Runs `sdhost info`.
pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    let ckpt = Checkpoint::open(&args.model)?;
    let (arch, detection) = infer_architecture_with_reason(&ckpt)?;
    verify_structure(&ckpt, &arch)?;
    let prediction = prediction(&ckpt, &arch)?;

    let mut dtypes: BTreeMap<String, i64> = BTreeMap::new();
    for key in ckpt.keys() {
        let n: i64 = ckpt
            .shape(key)
            .expect("key from the same file")
            .iter()
            .product();
        *dtypes
            .entry(format!(
                "{:?}",
                ckpt.dtype(key).expect("key from the same file")
            ))
            .or_default() += n;
    }
    let params = |prefix: &str| ckpt.size_under(prefix).0;
    let (unet, vae) = (params(UNET_PREFIX), params(VAE_PREFIX));
    let clip = params("cond_stage_model.") + params("conditioner.");
    let hashes = if args.no_hash {
        None
    } else {
        Some(
            ModelHashes::cached(&args.model, default_cache_dir().as_deref())
                .map_err(|e| anyhow::anyhow!("{}: cannot hash: {e}", args.model.display()))?,
        )
    };

    if args.json {
        let value = serde_json::json!({
            "file": args.model,
            "family": arch.family_name(),
            "family_reason": detection.reason,
            "prediction": prediction.prediction,
            "prediction_reason": prediction.reason,
            "architecture": arch,
            "dtypes": dtypes,
            "parameters": {"unet": unet, "vae": vae, "text_encoder": clip, "total": unet + vae + clip},
            "hashes": hashes.as_ref().map(|h| serde_json::json!({
                "sha256": h.sha256, "model_hash": h.short(), "legacy_hash": h.legacy,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }

    let u = &arch.unet;
    let v = &arch.vae;
    println!("file:          {}", args.model.display());
    println!(
        "family:        {} (from {})",
        arch.family_name(),
        detection.reason
    );
    println!(
        "prediction:    {} ({})",
        match prediction.prediction {
            crate::models::Prediction::Epsilon => "epsilon",
            crate::models::Prediction::V => "v",
        },
        prediction.reason
    );
    let dtype_list: Vec<String> = dtypes
        .iter()
        .map(|(d, n)| format!("{d} ({n} values)"))
        .collect();
    println!("stored dtypes: {}", dtype_list.join(", "));
    println!(
        "parameters:    {} total (UNet {}, VAE {}, text encoder {})",
        unet + vae + clip,
        unet,
        vae,
        clip
    );
    println!(
        "UNet:          in {} out {}, channels {} × {:?}, {} res blocks/level, attention {:?}, depth {:?} (middle {}), context {}, heads {:?}{}{}",
        u.in_channels, u.out_channels, u.model_channels, u.channel_mult, u.num_res_blocks,
        u.attention_levels, u.transformer_depth, u.transformer_depth_middle, u.context_dim, u.heads,
        if u.use_linear_in_transformer { ", linear projections" } else { "" },
        u.adm_in_channels.map(|a| format!(", vector input {a}")).unwrap_or_default()
    );
    println!(
        "VAE:           channels {} × {:?}, {} res blocks/level, z {}, downscale {}, latent scale {}",
        v.ch, v.ch_mult, v.num_res_blocks, v.z_channels, v.downscale(), v.scaling_factor
    );
    for line in text_lines(&arch.text) {
        println!("text encoder:  {line}");
    }
    if let Some(h) = hashes {
        println!("model hash:    {} (legacy {})", h.short(), h.legacy);
        println!("sha256:        {}", h.sha256);
    }
    Ok(())
}

/// The prediction type: from the file when it says, else (4-channel SD 2.x) A1111's test on
/// the UNet, loaded for it alone.
fn prediction(ckpt: &Checkpoint, arch: &Architecture) -> anyhow::Result<PredictionDetection> {
    if !needs_v_test(arch) {
        if let Some(found) = prediction_from_file(ckpt, arch.family()) {
            return Ok(found);
        }
    }
    let _guard = tch::no_grad_guard();
    let vb = VarBuilder::new(ckpt, tch::Kind::Float, tch::Device::Cpu);
    let unet = UNetModel::new(&vb.pp(UNET_PREFIX), &arch.unet)?;
    Ok(detect_prediction(ckpt, arch, &unet))
}

/// One line per text encoder.
fn text_lines(text: &TextConfig) -> Vec<String> {
    let clip = |name: &str, c: &ClipConfig| {
        format!(
            "{name} width {}, {} layers, {} heads, MLP {}, vocabulary {}, {} positions",
            c.hidden_size,
            c.num_layers,
            c.num_heads,
            c.intermediate_size,
            c.vocab_size,
            c.max_positions
        )
    };
    let open_clip = |name: &str, c: &OpenClipConfig| {
        format!(
            "{name} width {}, {} layers, {} heads, MLP {}, vocabulary {}, {} positions, projection {}",
            c.width,
            c.layers,
            c.heads,
            c.mlp_width,
            c.vocab_size,
            c.context_length,
            c.projection_dim.map_or("none".to_string(), |p| p.to_string())
        )
    };
    match text {
        TextConfig::Sd1 { clip: c, .. } => vec![clip("CLIP ViT-L", c)],
        TextConfig::Sd2 { open_clip: c, .. } => vec![open_clip("OpenCLIP ViT-H", c)],
        TextConfig::Sdxl { clip_l, big_g, .. } => vec![
            clip("CLIP ViT-L", clip_l),
            open_clip("OpenCLIP ViT-bigG", big_g),
        ],
        TextConfig::SdxlRefiner { big_g, .. } => vec![open_clip("OpenCLIP ViT-bigG", big_g)],
    }
}
