//! Where a 512² job's peak memory comes from: each stage of an SD 1.5 img2img run on its own,
//! with the process's resident memory before it and its peak while it runs (Linux resets the
//! peak, `VmHWM`, when "5" is written to `/proc/self/clear_refs`); then the VAE at twice the
//! size, whole and in tiles.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use tch::{Device, Kind, Tensor};

use super::reference::status_kib;
use crate::checkpoint::{infer_architecture, Checkpoint};
use crate::device::release_freed_memory;
use crate::models::vae::VaeTiling;
use crate::models::StableDiffusion;

/// A field of `/proc/self/status` in MiB.
fn status_mib(field: &str) -> anyhow::Result<f64> {
    let kib = status_kib(Path::new("/proc/self/status"), field)
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    Ok(kib / 1024.0)
}

/// Runs `stage`, printing resident memory before, its peak above that, what it keeps and
/// how long it took.
fn stage<T>(label: &str, run: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    // As the pipeline does between its stages.
    release_freed_memory(Device::Cpu);
    let before = status_mib("VmRSS:")?;
    std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
    let start = Instant::now();
    let value = run()?;
    let seconds = start.elapsed().as_secs_f64();
    let (peak, after) = (status_mib("VmHWM:")?, status_mib("VmRSS:")?);
    println!(
        "  {label:<38} {before:>9.0} {:>+9.0} {:>+9.0} {seconds:>9.1}",
        peak - before,
        after - before
    );
    Ok(value)
}

/// Prints the memory profile of the stages of a `size`² fp32 job on `model`.
pub fn profile(model: &Path, size: i64) -> anyhow::Result<()> {
    println!("peak memory by stage, SD 1.5 at {size}², fp32, CFG batch 2 (MiB, s):");
    println!(
        "  {:<38} {:>9} {:>9} {:>9} {:>9}",
        "stage", "RSS", "peak", "kept", "seconds"
    );
    let on = (Kind::Float, Device::Cpu);
    let sd = stage("load the checkpoint", || {
        let checkpoint = Checkpoint::open(model)?;
        let architecture = infer_architecture(&checkpoint)?;
        Ok(StableDiffusion::load(
            &checkpoint,
            &architecture,
            Kind::Float,
            Device::Cpu,
        )?)
    })?;
    let context = stage("CLIP, prompt and negative prompt", || {
        let ids = Tensor::randint(49000, [2, 77], (Kind::Int64, Device::Cpu));
        Ok(sd.text.context_of_ids(&ids))
    })?;
    let latent = stage("VAE encode", || {
        let image = Tensor::rand([1, 3, size, size], on) * 2.0 - 1.0;
        Ok(sd.vae.encode(&image).mean)
    })?;
    let latent = stage("UNet call", || {
        let x = Tensor::cat(&[&latent, &latent], 0);
        let t = Tensor::from_slice(&[500.0f32, 500.0]);
        Ok(sd.unet.forward(&x, &t, &context, None).narrow(0, 0, 1))
    })?;
    let _image = stage("VAE decode", || Ok(sd.vae.decode(&latent)))?;
    drop((context, latent));

    // Larger images: the VAE in one piece against 512² tiles (`--vae-tiling`).
    let big = 2 * size;
    let tiling = Some(VaeTiling::default());
    let image = Tensor::rand([1, 3, big, big], on) * 2.0 - 1.0;
    let latent = Tensor::randn([1, 4, big / 8, big / 8], on);
    for (how, tiles) in [("whole", None), ("512² tiles", tiling)] {
        let _ = stage(&format!("VAE encode {big}², {how}"), || {
            Ok(sd.vae.encode_tiled(&image, tiles).mean)
        })?;
        let _ = stage(&format!("VAE decode {big}², {how}"), || {
            Ok(sd.vae.decode_tiled(&latent, tiles))
        })?;
    }
    Ok(())
}
