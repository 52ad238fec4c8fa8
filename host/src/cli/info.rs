//! `sdhost info MODEL`: what a checkpoint is, without loading its weights.

use crate::checkpoint::{
    default_cache_dir, infer_architecture, verify_structure, Checkpoint, ModelHashes,
};
use crate::models::{CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
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
    let arch = infer_architecture(&ckpt)?;
    verify_structure(&ckpt, &arch)?;

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
    let (unet, vae, clip) = (params(UNET_PREFIX), params(VAE_PREFIX), params(CLIP_PREFIX));
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
            "family": arch.family(),
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
    let c = &arch.clip;
    println!("file:          {}", args.model.display());
    println!("family:        {}", arch.family());
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
        "UNet:          in {} out {}, channels {} × {:?}, {} res blocks/level, attention {:?}, depth {}, context {}, heads {:?}{}",
        u.in_channels, u.out_channels, u.model_channels, u.channel_mult, u.num_res_blocks,
        u.attention_levels, u.transformer_depth, u.context_dim, u.heads,
        if u.use_linear_in_transformer { ", linear projections" } else { "" }
    );
    println!(
        "VAE:           channels {} × {:?}, {} res blocks/level, z {}, downscale {}, latent scale {}",
        v.ch, v.ch_mult, v.num_res_blocks, v.z_channels, v.downscale(), v.scaling_factor
    );
    println!(
        "text encoder:  CLIP width {}, {} layers, {} heads, MLP {}, vocabulary {}, {} positions",
        c.hidden_size,
        c.num_layers,
        c.num_heads,
        c.intermediate_size,
        c.vocab_size,
        c.max_positions
    );
    if let Some(h) = hashes {
        println!("model hash:    {} (legacy {})", h.short(), h.legacy);
        println!("sha256:        {}", h.sha256);
    }
    Ok(())
}
