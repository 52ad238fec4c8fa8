//! What `sdhost img2img` and `sdhost txt2img` share: the model, device and output flags, the
//! request from `--from-png` and the request flags, and running a job with a progress bar,
//! Ctrl-C as A1111's interrupt and each image saved as it comes.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use sdhost_plugin_api::{Flow, OptionValue};

use crate::device::{parse_device, parse_dtype};
use crate::infotext::Infotext;
use crate::models::Prediction;
use crate::pipeline::img2img::{GeneratedImage, JobError, JobEvent, JobOutcome};
use crate::pipeline::model::GenerationModel;
use crate::pipeline::output::{save_numbered, save_patch, DEFAULT_OUTPUT_DIR};
use crate::pipeline::png_info::read_png_infotext;
use crate::pipeline::png_info::PngError;
use crate::pipeline::stop::JobStop;
use crate::request::GenerationRequest;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};

use super::folders::FolderArgs;
use super::request_flags::RequestFlags;

/// Exit status after Ctrl-C (128 + SIGINT), as shells report an interrupted command.
pub const INTERRUPTED_EXIT: i32 = 130;

/// The flags of a generation command besides its inputs.
#[derive(Args)]
pub struct JobArgs {
    /// Checkpoint file (.safetensors or .ckpt, A1111/CompVis single-file layout), or with
    /// --models-dir a checkpoint's name there [default: the first checkpoint of --models-dir].
    #[arg(long, value_name = "FILE|NAME")]
    model: Option<PathBuf>,
    /// Take prompts and parameters from the infotext of a PNG made before.
    #[arg(long, value_name = "FILE")]
    from_png: Option<PathBuf>,
    /// The models folder and the per-kind folders.
    #[command(flatten)]
    folders: FolderArgs,
    /// Folder of third-party sampler plugins.
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: fp32, fp16 or bf16.
    #[arg(long, default_value = "fp32")]
    dtype: String,
    /// Intra-op CPU threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
    /// What the model predicts, when the file does not say it right (A1111's yaml beside the
    /// checkpoint, as a flag): epsilon or v [default: from the file, see `sdhost info`].
    #[arg(long, value_parser = ["epsilon", "v"])]
    prediction: Option<String>,
    /// Folder for the PNGs (named NNNNN-SEED.png as A1111 names them).
    #[arg(long, default_value = DEFAULT_OUTPUT_DIR)]
    pub out_dir: PathBuf,
    /// The generation request's fields.
    #[command(flatten)]
    request: RequestFlags,
}

/// The model, samplers and request a command runs with.
pub struct LoadedJob {
    /// The loaded model (VAE and refiner chosen).
    pub model: GenerationModel,
    /// Its file.
    pub checkpoint: PathBuf,
    /// The samplers.
    pub registry: SamplerRegistry,
    /// The request.
    pub params: GenerationRequest,
}

/// `name=value`: a number when it parses as one, else a word.
fn parse_option(text: &str) -> anyhow::Result<(String, OptionValue)> {
    let (name, value) = text
        .split_once('=')
        .with_context(|| format!("sampler option \"{text}\" is not NAME=VALUE"))?;
    let value = match value.trim().parse::<f64>() {
        Ok(number) => OptionValue::Number(number),
        Err(_) => OptionValue::Text(value.trim().into()),
    };
    Ok((name.trim().to_string(), value))
}

/// Warns when the VAE an image's infotext names has another hash than the file used now.
fn warn_vae_hash(png: &Path, model: &GenerationModel) -> anyhow::Result<()> {
    let Some(text) = read_png_infotext(png)? else {
        return Ok(());
    };
    let infotext = Infotext::parse(&text);
    if let (Some(wanted), Some(vae)) = (infotext.get("VAE hash"), model.external_vae()) {
        if wanted != vae.hash {
            eprintln!(
                "warning: {} was made with VAE hash {wanted}, {} has {}: pixels will differ",
                png.display(),
                vae.path.display(),
                vae.hash
            );
        }
    }
    Ok(())
}

impl JobArgs {
    /// The A1111 `models/` folder given with `--models-dir`.
    pub fn models_dir(&self) -> Option<&Path> {
        self.folders.models_dir.as_deref()
    }

    /// The checkpoint file `name` names (a file, or a checkpoint of --models-dir).
    pub fn find_checkpoint(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.folders.checkpoint(Some(Path::new(name)))
    }

    /// Loads `checkpoint` on the device, with the folders' networks and `--prediction`.
    pub fn load_model(&self, checkpoint: &Path) -> anyhow::Result<GenerationModel> {
        let device = parse_device(&self.device)?;
        let kind = parse_dtype(&self.dtype)?;
        let folders = self.folders.folders();
        let mut model = GenerationModel::load(
            checkpoint,
            device,
            kind,
            folders.embeddings_dir().as_deref(),
        )?
        .with_network_dirs(folders.network_dirs());
        if let Some(prediction) = self.prediction.as_deref() {
            model = model.with_prediction(match prediction {
                "v" => Prediction::V,
                _ => Prediction::Epsilon,
            });
        }
        Ok(model)
    }

    /// Loads the refiner `name` names for `model` (nothing for an empty name).
    pub fn select_refiner(&self, model: &mut GenerationModel, name: &str) -> anyhow::Result<()> {
        if name.is_empty() {
            return Ok(());
        }
        let path = self.folders.checkpoint(Some(Path::new(name)))?;
        model.select_refiner(&path, self.folders.folders().embeddings_dir().as_deref())?;
        Ok(())
    }

    /// A stop that Ctrl-C sets as A1111's interrupt (a second Ctrl-C exits at once).
    pub fn interrupt_on_ctrl_c(&self) -> anyhow::Result<JobStop> {
        let stop = JobStop::new();
        let handler_stop = stop.clone();
        ctrlc::set_handler(move || {
            if handler_stop.is_interrupted() {
                // A second Ctrl-C: the user does not want to wait for the batch to finish.
                std::process::exit(INTERRUPTED_EXIT);
            }
            handler_stop.interrupt();
        })
        .context("installing the Ctrl-C handler")?;
        Ok(stop)
    }

    /// Loads the model and samplers and makes the request: `--from-png`'s parameters (else
    /// `base` with its size from `size`, given the model's downscale), the request flags and
    /// sampler options over them; then the VAE and refiner it names.
    pub fn load(
        &self,
        base: GenerationRequest,
        size: impl FnOnce(u32) -> Option<(u32, u32)>,
    ) -> anyhow::Result<LoadedJob> {
        // Bad device or dtype names are refused before the plugins load.
        parse_device(&self.device)?;
        parse_dtype(&self.dtype)?;
        if self.threads > 0 {
            tch::set_num_threads(self.threads);
        }
        let registry = SamplerRegistry::load(&PluginPaths::discover(self.plugins_dir.clone()));
        let checkpoint = self.folders.checkpoint(self.model.as_deref())?;
        let mut model = self.load_model(&checkpoint)?;

        let mut base = base;
        if let Some(png) = &self.from_png {
            let text = read_png_infotext(png)?
                .with_context(|| format!("{}: has no generation parameters", png.display()))?;
            let infotext = Infotext::parse(&text);
            for problem in base.apply_infotext(&infotext) {
                eprintln!("warning: {}: {problem}", png.display());
            }
            if let Ok((found, _)) = registry.find_with_schedule(&base.sampler.sampler) {
                base.apply_sampler_options(&infotext, found.info);
            }
            // Options read from a PNG belong to its sampler.
            if self.request.changes.contains_key("sampler_name") {
                base.sampler.options.clear();
            }
            if let Some(hash) = infotext.get("Model hash") {
                if hash != model.hash {
                    eprintln!(
                        "warning: {} was made with model hash {hash}, {} has {}: pixels will differ",
                        png.display(),
                        checkpoint.display(),
                        model.hash
                    );
                }
            }
        } else if let Some((width, height)) = size(model.downscale()) {
            (base.width, base.height) = (width, height);
        }
        let mut params = base.overlay(&self.request.changes)?;
        for option in &self.request.options {
            let (name, value) = parse_option(option)?;
            params.sampler.options.retain(|(n, _)| *n != name);
            params.sampler.options.push((name, value));
        }
        // The VAE is chosen before any work, as A1111 reloads it before processing.
        if let Some(warning) = model.select_vae(&params.sd_vae)? {
            eprintln!("warning: {warning}");
        }
        if let Some(png) = &self.from_png {
            warn_vae_hash(png, &model)?;
        }
        self.select_refiner(&mut model, &params.refiner_checkpoint)?;
        Ok(LoadedJob {
            model,
            checkpoint,
            registry,
            params,
        })
    }

    /// Runs `job` with a progress bar, Ctrl-C as A1111's interrupt (a second one exits at
    /// once), each image saved to `--out-dir` as it comes (and its path printed) and, with
    /// `patches`, each inpainting patch beside it.
    pub fn run_job(
        &self,
        patches: bool,
        job: impl FnOnce(&JobStop, &mut dyn FnMut(JobEvent<'_>) -> Flow) -> Result<JobOutcome, JobError>,
    ) -> anyhow::Result<()> {
        let stop = self.interrupt_on_ctrl_c()?;
        let bar = progress_bar();
        let mut batches = 1;
        let mut saved = Vec::new();
        let mut save_error = None;
        let outcome = job(&stop, &mut |event| {
            match event {
                JobEvent::Started {
                    batches: count,
                    steps_per_batch,
                    ..
                } => {
                    batches = count;
                    bar.set_length((count * steps_per_batch) as u64);
                    bar.set_message(format!("batch 1/{count}"));
                }
                JobEvent::Step { batch, .. } => {
                    bar.set_message(format!("batch {}/{batches}", batch + 1));
                    bar.inc(1);
                }
                JobEvent::Warning(message) => bar.suspend(|| eprintln!("warning: {message}")),
                JobEvent::Image(image) => match self.save(image, patches) {
                    Ok((path, patch)) => {
                        bar.suspend(|| {
                            println!("{}", path.display());
                            if let (Some(patch_path), Some(patch)) = (patch, &image.patch) {
                                println!("{} at {},{}", patch_path.display(), patch.x, patch.y);
                            }
                        });
                        saved.push(path);
                    }
                    Err(error) => {
                        save_error.get_or_insert(error);
                    }
                },
            }
            if save_error.is_some() {
                Flow::Cancel
            } else {
                Flow::Continue
            }
        });
        bar.finish_and_clear();
        if let Some(error) = save_error {
            return Err(error.into());
        }
        // Its warnings were printed as they came (`JobEvent::Warning`).
        let outcome = outcome?;
        if outcome.interrupted {
            eprintln!(
                "stopped by Ctrl-C; {} image(s) kept in {}",
                saved.len(),
                self.out_dir.display()
            );
            std::process::exit(INTERRUPTED_EXIT);
        }
        Ok(())
    }

    /// Saves an image (and with `patches` its patch); returns their paths.
    pub fn save(
        &self,
        image: &GeneratedImage,
        patches: bool,
    ) -> Result<(PathBuf, Option<PathBuf>), PngError> {
        let path = save_numbered(&self.out_dir, image)?;
        let patch = if patches {
            save_patch(&path, image)?
        } else {
            None
        };
        Ok((path, patch))
    }
}

/// The progress bar: steps of every batch, with A1111's it/s.
pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} steps, {its}, ETA {eta}")
            .expect("valid progress template")
            .with_key(
                "its",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    // Sampler steps per second, as A1111's console shows them.
                    let _ = write!(w, "{:.2} it/s", state.per_sec());
                },
            )
            .progress_chars("=> "),
    );
    bar
}
