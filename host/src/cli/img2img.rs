//! `sdhost img2img`: A1111's img2img tab on the command line. The generation flags are the
//! request's fields under A1111's API names (`cli/request_flags.rs`); `--from-png` takes the
//! parameters of an image made before (flags given override).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use sdhost_plugin_api::{Flow, OptionValue};

use crate::device::{parse_device, parse_dtype};
use crate::infotext::Infotext;
use crate::models::Prediction;
use crate::pipeline::img2img::{run_img2img, JobEvent};
use crate::pipeline::model::GenerationModel;
use crate::pipeline::output::{save_numbered, save_patch, DEFAULT_OUTPUT_DIR};
use crate::pipeline::png_info::read_png_infotext;
use crate::pipeline::stop::JobStop;
use crate::prepare::init_image::{load_image, DEFAULT_BACKGROUND};
use crate::prepare::modes::{Img2ImgMode, ModeInputs};
use crate::request::GenerationRequest;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};

use super::folders::FolderArgs;
use super::request_flags::RequestFlags;

/// Exit status after Ctrl-C (128 + SIGINT), as shells report an interrupted command.
const INTERRUPTED_EXIT: i32 = 130;

/// Arguments of `sdhost img2img`.
#[derive(Args)]
pub struct Img2ImgArgs {
    /// Checkpoint file (.safetensors or .ckpt, A1111/CompVis single-file layout), or with
    /// --models-dir a checkpoint's name there [default: the first checkpoint of --models-dir].
    #[arg(long, value_name = "FILE|NAME")]
    model: Option<PathBuf>,
    /// The image to start from (PNG or JPEG; transparency is flattened over white).
    #[arg(long)]
    init_image: PathBuf,
    /// Take prompts and parameters from the infotext of a PNG made before.
    #[arg(long, value_name = "FILE")]
    from_png: Option<PathBuf>,
    /// Which A1111 tab: img2img, sketch, inpaint, inpaint-sketch, inpaint-upload [default:
    /// inpaint-upload with --mask, sketch with --sketch, else img2img].
    #[arg(long, value_parser = parse_mode)]
    mode: Option<Img2ImgMode>,
    /// Mask image: transparency → its alpha (above 128 counts), opaque → its luma (white =
    /// regenerate). Another size with the image's aspect ratio is scaled to it.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Sketch layer painted over the image (Sketch; with --mode inpaint-sketch its strokes
    /// are also the mask).
    #[arg(long)]
    sketch: Option<PathBuf>,
    /// Also write each inpainting result as NNNNN-SEED-patch.png: the regenerated area with
    /// alpha = the blend mask, its offset in the image in the PNG and on stdout.
    #[arg(long)]
    patch_out: bool,
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
    out_dir: PathBuf,
    /// The generation request's fields.
    #[command(flatten)]
    request: RequestFlags,
}

fn parse_mode(text: &str) -> Result<Img2ImgMode, String> {
    Img2ImgMode::parse(text).ok_or_else(|| {
        let names: Vec<_> = Img2ImgMode::ALL.iter().map(|m| m.name()).collect();
        format!("unknown mode \"{text}\" ({})", names.join(", "))
    })
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
fn warn_vae_hash(png: &std::path::Path, model: &GenerationModel) -> anyhow::Result<()> {
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

/// Runs `sdhost img2img`.
pub fn run(args: &Img2ImgArgs) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let kind = parse_dtype(&args.dtype)?;
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let registry = SamplerRegistry::load(&PluginPaths::discover(args.plugins_dir.clone()));
    let image = load_image(&args.init_image)?;
    let sketch = args.sketch.as_deref().map(load_image).transpose()?;
    let mask_image = args.mask.as_deref().map(load_image).transpose()?;
    let checkpoint = args.folders.checkpoint(args.model.as_deref())?;
    let folders = args.folders.folders();
    let mut model = GenerationModel::load(
        &checkpoint,
        device,
        kind,
        folders.embeddings_dir().as_deref(),
    )?
    .with_network_dirs(folders.network_dirs());
    if let Some(prediction) = args.prediction.as_deref() {
        model = model.with_prediction(match prediction {
            "v" => Prediction::V,
            _ => Prediction::Epsilon,
        });
    }

    let mut base = GenerationRequest::default();
    if let Some(png) = &args.from_png {
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
        if args.request.changes.contains_key("sampler_name") {
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
    } else {
        let step = model.downscale();
        base.width = (image.width() / step * step).max(step);
        base.height = (image.height() / step * step).max(step);
    }
    let mut params = base.overlay(&args.request.changes)?;
    for option in &args.request.options {
        let (name, value) = parse_option(option)?;
        params.sampler.options.retain(|(n, _)| *n != name);
        params.sampler.options.push((name, value));
    }
    // The VAE is chosen before any work, as A1111 reloads it before processing.
    if let Some(warning) = model.select_vae(&params.sd_vae)? {
        eprintln!("warning: {warning}");
    }
    if let Some(png) = &args.from_png {
        warn_vae_hash(png, &model)?;
    }
    if !params.refiner_checkpoint.is_empty() {
        let path = args
            .folders
            .checkpoint(Some(Path::new(&params.refiner_checkpoint)))?;
        model.select_refiner(&path, folders.embeddings_dir().as_deref())?;
    }
    let mode = args
        .mode
        .unwrap_or_else(|| Img2ImgMode::implied(sketch.is_some(), mask_image.is_some()));
    let (init_image, mask) = mode.prepare(&ModeInputs {
        image: &image,
        sketch: sketch.as_ref(),
        mask: mask_image.as_ref(),
        mask_alpha: params.mask_alpha,
        mask_blur: params.inpaint.mask_blur_x,
        background: DEFAULT_BACKGROUND,
    })?;

    // Ctrl-C is A1111's interrupt: the running batch is finished from its last prediction.
    let stop = JobStop::new();
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.is_interrupted() {
                // A second Ctrl-C: the user does not want to wait for the batch to finish.
                std::process::exit(INTERRUPTED_EXIT);
            }
            stop.interrupt();
        })
        .context("installing the Ctrl-C handler")?;
    }

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
    let mut batches = 1;
    let mut saved = Vec::new();
    let mut save_error = None;
    let outcome = run_img2img(
        &model,
        &registry,
        &params,
        &init_image,
        mask.as_ref(),
        &stop,
        &mut |event| {
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
                JobEvent::Image(image) => {
                    let written = save_numbered(&args.out_dir, image).and_then(|path| {
                        let patch = if args.patch_out {
                            save_patch(&path, image)?
                        } else {
                            None
                        };
                        Ok((path, patch))
                    });
                    match written {
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
                            return Flow::Cancel;
                        }
                    }
                }
            }
            if save_error.is_some() {
                Flow::Cancel
            } else {
                Flow::Continue
            }
        },
    );
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
            args.out_dir.display()
        );
        std::process::exit(INTERRUPTED_EXIT);
    }
    Ok(())
}
