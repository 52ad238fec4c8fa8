//! `sdhost dev …`: tools for developers and tests.

use crate::device::parse_dtype;
use crate::tiny_model::{write_tiny_model, Preset, TinyFamily, TinyModelSpec};
use std::path::PathBuf;

/// Developer subcommands.
#[derive(clap::Subcommand)]
pub enum DevCommand {
    /// Write a random-weight checkpoint in A1111's single-file layout (deterministic per seed).
    MakeTinyModel {
        /// Output `.safetensors` path.
        out: PathBuf,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Make a 9-channel inpainting UNet.
        #[arg(long)]
        inpainting: bool,
        /// Architecture: tiny widths of each family, or the full SD 1.5, SD 2.x 768-v and
        /// SDXL shapes.
        #[arg(long, value_enum, default_value = "tiny", conflicts_with = "family")]
        preset: Preset,
        /// A tiny model of this kind (sets the preset and inpainting).
        #[arg(long, value_enum)]
        family: Option<TinyFamily>,
        /// Dtype on disk: fp32, fp16 or bf16.
        #[arg(long, default_value = "fp32")]
        dtype: String,
    },
}

/// Runs a developer subcommand.
pub fn run(cmd: DevCommand) -> anyhow::Result<()> {
    match cmd {
        DevCommand::MakeTinyModel {
            out,
            seed,
            inpainting,
            preset,
            family,
            dtype,
        } => {
            let (preset, inpainting) = match family {
                Some(family) => family.preset(),
                None => (preset, inpainting),
            };
            if inpainting && preset == Preset::TinySdxlRefiner {
                anyhow::bail!("there is no inpainting SDXL refiner");
            }
            let spec = TinyModelSpec {
                preset,
                inpainting,
                seed,
                storage: parse_dtype(&dtype)?,
            };
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    anyhow::anyhow!("{}: cannot create folder: {e}", parent.display())
                })?;
            }
            let arch = write_tiny_model(&spec, &out)?;
            println!(
                "wrote {} ({}, {:?}, seed {seed}, {dtype})",
                out.display(),
                arch.family_name(),
                preset
            );
            Ok(())
        }
    }
}
