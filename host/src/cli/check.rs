//! `sdhost check MODEL`: load every network of a checkpoint on a device and run each once.
//!
//! Answers "does this checkpoint work here?" before any generation: it reports load time,
//! the time of one CLIP, UNet and VAE call, and that the outputs are finite.

use crate::checkpoint::{infer_architecture, Checkpoint};
use crate::device::{dtype_name, parse_device, parse_dtype};
use crate::models::StableDiffusion;
use crate::prompt::conditioning::Conditioner;
use crate::prompt::embeddings::EmbeddingDatabase;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Arguments of `sdhost check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Checkpoint file (.safetensors, or a .ckpt/.pt pickle).
    model: PathBuf,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: fp32, fp16 or bf16.
    #[arg(long, default_value = "fp32")]
    dtype: String,
    /// Image side in pixels for the UNet and VAE calls.
    #[arg(long, default_value_t = 64)]
    size: i64,
    /// Intra-op CPU threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

/// Runs `sdhost check`.
pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let kind = parse_dtype(&args.dtype)?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let _guard = tch::no_grad_guard();

    let start = Instant::now();
    let ckpt = Checkpoint::open(&args.model)?;
    let arch = infer_architecture(&ckpt)?;
    let sd = StableDiffusion::load(&ckpt, &arch, kind, device)?;
    println!(
        "loaded {} ({}) as {} on {:?} in {:.2} s",
        args.model.display(),
        arch.family_name(),
        dtype_name(kind),
        device,
        start.elapsed().as_secs_f64()
    );

    let downscale = arch.vae.downscale();
    let side = args.size.max(downscale) / downscale * downscale;
    let embeddings = EmbeddingDatabase::default();
    let conditioner =
        Conditioner::new(&sd.text, &embeddings, 1).with_size(side as i64, side as i64);
    let mut vector = None;
    let cond = timed("text encoders (empty prompt)", || {
        let cond = conditioner.encode_texts(&[String::new()])?;
        vector = cond.vector;
        Ok(cond.crossattn)
    })?;
    let image = (Tensor::arange(side, (Kind::Float, device)) / (side as f64 / 2.0) - 1.0)
        .view([1, 1, 1, side])
        .expand([1, 3, side, side], false)
        .to_kind(kind);
    let latent = timed(&format!("VAE encode {side}×{side}"), || {
        Ok(sd.vae.encode(&image).mean)
    })?;
    let unet_in = if arch.unet.in_channels == latent.size()[1] {
        latent.shallow_clone()
    } else {
        // Inpainting UNets take latent, mask and masked-image latent (4 + 1 + 4 channels).
        let mask = latent.narrow(1, 0, 1).ones_like();
        Tensor::cat(&[&latent, &mask, &latent], 1)
    };
    let t = Tensor::from_slice(&[500.0f32]).to_device(device);
    timed("UNet step", || {
        Ok(sd.unet.forward(&unet_in, &t, &cond, vector.as_ref()))
    })
    .map(drop)?;
    timed("VAE decode", || Ok(sd.vae.decode(&latent))).map(drop)?;
    println!("ok: every network ran and returned finite values");
    Ok(())
}

/// Runs `f`, prints its time and output shape, and fails on NaN or infinite output.
fn timed(what: &str, f: impl FnOnce() -> anyhow::Result<Tensor>) -> anyhow::Result<Tensor> {
    let start = Instant::now();
    let out = f()?;
    println!(
        "{what:<22} {:>8.1} ms  shape {:?}",
        start.elapsed().as_secs_f64() * 1e3,
        out.size()
    );
    if out.isfinite().all().int64_value(&[]) == 0 {
        anyhow::bail!("{what} returned NaN or infinite values (try --dtype fp32)");
    }
    Ok(out)
}
