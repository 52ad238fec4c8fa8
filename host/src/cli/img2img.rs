//! `sdhost img2img`: A1111's img2img tab on the command line. Flags carry A1111's field
//! names; `--from-png` takes the parameters of an image made before (flags given override).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use sdhost_plugin_api::{Flow, OptionValue};

use crate::device::{parse_device, parse_dtype};
use crate::infotext::Infotext;
use crate::pipeline::img2img::{run_img2img, JobEvent};
use crate::pipeline::model::GenerationModel;
use crate::pipeline::output::{save_numbered, save_patch, DEFAULT_OUTPUT_DIR};
use crate::pipeline::params::{Img2ImgParams, InitLatentMode, RngChoice};
use crate::pipeline::png_info::read_png_infotext;
use crate::prepare::init_image::{load_image, DEFAULT_BACKGROUND};
use crate::prepare::inpaint::MaskedContent;
use crate::prepare::modes::{Img2ImgMode, ModeInputs};
use crate::prepare::resize::ResizeMode;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};
use crate::sampling::schedule::Schedule;

/// Exit status after Ctrl-C (128 + SIGINT), as shells report an interrupted command.
const INTERRUPTED_EXIT: i32 = 130;

/// Arguments of `sdhost img2img`.
#[derive(Args)]
pub struct Img2ImgArgs {
    /// Checkpoint file (.safetensors, A1111/CompVis single-file layout).
    #[arg(long)]
    model: PathBuf,
    /// The image to start from (PNG or JPEG; transparency is flattened over white).
    #[arg(long)]
    init_image: PathBuf,
    /// Take prompts and parameters from the infotext of a PNG made before.
    #[arg(long, value_name = "FILE")]
    from_png: Option<PathBuf>,
    /// Prompt (A1111 syntax: (emphasis:1.2), [edit:at:0.5], AND, embeddings).
    #[arg(long)]
    prompt: Option<String>,
    /// Negative prompt.
    #[arg(long)]
    negative_prompt: Option<String>,
    /// just-resize, crop-and-resize, resize-and-fill or latent-upscale (or A1111's 0-3).
    #[arg(long, value_parser = parse_resize_mode)]
    resize_mode: Option<ResizeMode>,
    /// Sampler by A1111 name, e.g. "DPM++ 2M", "Euler a" [default: DPM++ 2M].
    #[arg(long)]
    sampler: Option<String>,
    /// Schedule type, e.g. Karras, Exponential [default: Automatic].
    #[arg(long)]
    scheduler: Option<String>,
    /// Sampling steps [default: 20].
    #[arg(long)]
    steps: Option<usize>,
    /// Classifier-free guidance scale [default: 7].
    #[arg(long)]
    cfg_scale: Option<f64>,
    /// How much of the init image is replaced, 0-1 [default: 0.75].
    #[arg(long)]
    denoising_strength: Option<f64>,
    /// Seed; -1 picks a random one [default: -1].
    #[arg(long, allow_hyphen_values = true)]
    seed: Option<i64>,
    /// Variation seed; -1 picks a random one [default: -1].
    #[arg(long, allow_hyphen_values = true)]
    subseed: Option<i64>,
    /// Variation strength, 0-1 [default: 0].
    #[arg(long)]
    subseed_strength: Option<f64>,
    /// "Resize seed from" size, WIDTHxHEIGHT.
    #[arg(long, value_parser = parse_size, value_name = "WxH")]
    seed_resize_from: Option<(u32, u32)>,
    /// Output width [default: the init image's, down to a multiple of 8].
    #[arg(long)]
    width: Option<u32>,
    /// Output height [default: the init image's, down to a multiple of 8].
    #[arg(long)]
    height: Option<u32>,
    /// Batches run one after another [default: 1].
    #[arg(long)]
    batch_count: Option<usize>,
    /// Images sampled together per batch [default: 1].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Clip skip [default: 1].
    #[arg(long)]
    clip_skip: Option<usize>,
    /// Noise source: cpu (same on every machine), nv (A1111's NV), gpu (CUDA) [default: cpu].
    #[arg(long, value_enum)]
    rng: Option<RngChoice>,
    /// Init latent: sample (A1111) or mean of the VAE's distribution [default: sample].
    #[arg(long, value_enum)]
    init_latent: Option<InitLatentMode>,
    /// Factor on the initial noise [default: 1].
    #[arg(long)]
    initial_noise_multiplier: Option<f64>,
    /// Eta noise seed delta (ENSD) [default: 0].
    #[arg(long, allow_hyphen_values = true)]
    eta_noise_seed_delta: Option<i64>,
    /// Which A1111 tab: img2img, sketch, inpaint, inpaint-sketch, inpaint-upload [default:
    /// inpaint-upload with --mask, sketch with --sketch, else img2img].
    #[arg(long, value_enum)]
    mode: Option<Img2ImgMode>,
    /// Mask image: transparency → its alpha (above 128 counts), opaque → its luma (white =
    /// regenerate). Another size with the image's aspect ratio is scaled to it.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Sketch layer painted over the image (Sketch; with --mode inpaint-sketch its strokes
    /// are also the mask).
    #[arg(long)]
    sketch: Option<PathBuf>,
    /// Mask blur in pixels, x and y [default: 4].
    #[arg(long)]
    mask_blur: Option<u32>,
    /// Mask blur along x only.
    #[arg(long)]
    mask_blur_x: Option<u32>,
    /// Mask blur along y only.
    #[arg(long)]
    mask_blur_y: Option<u32>,
    /// Mask mode "Inpaint not masked": regenerate what the mask leaves out.
    #[arg(long)]
    inpainting_mask_invert: bool,
    /// Masked content: fill, original, latent-noise, latent-nothing [default: original].
    #[arg(long, value_enum)]
    inpainting_fill: Option<MaskedContent>,
    /// Inpaint area "Only masked": generate the masked region at the full width × height.
    #[arg(long)]
    inpaint_full_res: bool,
    /// Only masked padding, pixels [default: 32].
    #[arg(long)]
    inpaint_full_res_padding: Option<u32>,
    /// Only masked: grow the region to at least this size first (e.g. 512x512, SD's native
    /// size), so a small selection keeps its surroundings.
    #[arg(long, value_parser = parse_size, value_name = "WxH")]
    inpaint_min_context: Option<(u32, u32)>,
    /// Inpaint sketch's mask transparency, 0-100 [default: 0].
    #[arg(long, default_value_t = 0.0)]
    mask_alpha: f64,
    /// Inpainting models: conditioning mask strength, 0-1 [default: 1].
    #[arg(long)]
    inpainting_mask_weight: Option<f64>,
    /// Colour correction: match each result's colours to the init image (A1111's option).
    #[arg(long)]
    color_correction: bool,
    /// VAE tiling: encode and decode images wider or taller than 512 px in overlapping 512²
    /// tiles, so memory stays at one tile's whatever the size (pixels differ slightly).
    #[arg(long)]
    vae_tiling: bool,
    /// Also write each inpainting result as NNNNN-SEED-patch.png: the regenerated area with
    /// alpha = the blend mask, its offset in the image in the PNG and on stdout.
    #[arg(long)]
    patch_out: bool,
    /// Sampler option, repeatable: eta=0.5, s_churn=1 (`sdhost samplers --options` lists them).
    #[arg(long = "option", value_name = "NAME=VALUE")]
    options: Vec<String>,
    /// Folder of textual-inversion embeddings.
    #[arg(long)]
    embeddings_dir: Option<PathBuf>,
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
    /// Folder for the PNGs (named NNNNN-SEED.png as A1111 names them).
    #[arg(long, default_value = DEFAULT_OUTPUT_DIR)]
    out_dir: PathBuf,
}

fn parse_resize_mode(text: &str) -> Result<ResizeMode, String> {
    ResizeMode::parse(text).ok_or_else(|| {
        format!("unknown resize mode \"{text}\" (just-resize, crop-and-resize, resize-and-fill, latent-upscale, or 0-3)")
    })
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("\"{text}\" is not WIDTHxHEIGHT"))?;
    let side = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("\"{text}\" is not WIDTHxHEIGHT"))
    };
    Ok((side(w)?, side(h)?))
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
    let model = GenerationModel::load(&args.model, device, kind, args.embeddings_dir.as_deref())?;

    let mut params = Img2ImgParams::default();
    if let Some(png) = &args.from_png {
        let text = read_png_infotext(png)?
            .with_context(|| format!("{}: has no generation parameters", png.display()))?;
        let infotext = Infotext::parse(&text);
        for problem in params.apply_infotext(&infotext) {
            eprintln!("warning: {}: {problem}", png.display());
        }
        if let Ok((found, _)) = registry.find_with_schedule(&params.sampler.sampler) {
            params.apply_sampler_options(&infotext, found.info);
        }
        if let Some(hash) = infotext.get("Model hash") {
            if hash != model.hash {
                eprintln!(
                    "warning: {} was made with model hash {hash}, {} has {}: pixels will differ",
                    png.display(),
                    args.model.display(),
                    model.hash
                );
            }
        }
    } else {
        let step = model.downscale();
        params.width = (image.width() / step * step).max(step);
        params.height = (image.height() / step * step).max(step);
    }
    apply_flags(args, &mut params)?;
    let mode = args
        .mode
        .unwrap_or_else(|| Img2ImgMode::implied(sketch.is_some(), mask_image.is_some()));
    let (init_image, mask) = mode.prepare(&ModeInputs {
        image: &image,
        sketch: sketch.as_ref(),
        mask: mask_image.as_ref(),
        mask_alpha: args.mask_alpha,
        mask_blur: params.inpaint.mask_blur_x,
        background: DEFAULT_BACKGROUND,
    })?;

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        ctrlc::set_handler(move || {
            if interrupted.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: the user does not want to wait for the current step.
                std::process::exit(INTERRUPTED_EXIT);
            }
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
        Some(&interrupted),
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
            if interrupted.load(Ordering::SeqCst) || save_error.is_some() {
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
    let outcome = outcome?;
    if outcome.cancelled {
        eprintln!(
            "stopped by Ctrl-C; {} finished image(s) kept in {}",
            saved.len(),
            args.out_dir.display()
        );
        std::process::exit(INTERRUPTED_EXIT);
    }
    Ok(())
}

/// Flags given on the command line override defaults and `--from-png`.
fn apply_flags(args: &Img2ImgArgs, params: &mut Img2ImgParams) -> anyhow::Result<()> {
    fn set<T: Clone>(target: &mut T, flag: &Option<T>) {
        if let Some(value) = flag {
            *target = value.clone();
        }
    }
    set(&mut params.prompt, &args.prompt);
    set(&mut params.negative_prompt, &args.negative_prompt);
    set(&mut params.resize_mode, &args.resize_mode);
    if let Some(sampler) = &args.sampler {
        params.sampler.sampler = sampler.clone();
        // Options read from a PNG belong to its sampler.
        if args.from_png.is_some() {
            params.sampler.options.clear();
        }
    }
    if let Some(name) = &args.scheduler {
        params.sampler.schedule = Schedule::from_name(name)?;
    }
    set(&mut params.sampler.steps, &args.steps);
    set(&mut params.cfg_scale, &args.cfg_scale);
    set(
        &mut params.sampler.denoising_strength,
        &args.denoising_strength,
    );
    set(&mut params.seed, &args.seed);
    set(&mut params.subseed, &args.subseed);
    set(&mut params.subseed_strength, &args.subseed_strength);
    if args.seed_resize_from.is_some() {
        params.seed_resize_from = args.seed_resize_from;
    }
    set(&mut params.width, &args.width);
    set(&mut params.height, &args.height);
    set(&mut params.batch_count, &args.batch_count);
    set(&mut params.batch_size, &args.batch_size);
    set(&mut params.clip_skip, &args.clip_skip);
    set(&mut params.rng, &args.rng);
    set(&mut params.init_latent, &args.init_latent);
    set(
        &mut params.initial_noise_multiplier,
        &args.initial_noise_multiplier,
    );
    set(&mut params.eta_noise_seed_delta, &args.eta_noise_seed_delta);
    params.color_correction |= args.color_correction;
    params.vae_tiling |= args.vae_tiling;
    let inpaint = &mut params.inpaint;
    if let Some(blur) = args.mask_blur {
        inpaint.mask_blur_x = blur;
        inpaint.mask_blur_y = blur;
    }
    set(&mut inpaint.mask_blur_x, &args.mask_blur_x);
    set(&mut inpaint.mask_blur_y, &args.mask_blur_y);
    inpaint.invert |= args.inpainting_mask_invert;
    set(&mut inpaint.masked_content, &args.inpainting_fill);
    inpaint.only_masked |= args.inpaint_full_res;
    set(
        &mut inpaint.only_masked_padding,
        &args.inpaint_full_res_padding,
    );
    if args.inpaint_min_context.is_some() {
        inpaint.min_context = args.inpaint_min_context;
    }
    set(&mut inpaint.mask_weight, &args.inpainting_mask_weight);
    for option in &args.options {
        let (name, value) = parse_option(option)?;
        params.sampler.options.retain(|(n, _)| *n != name);
        params.sampler.options.push((name, value));
    }
    Ok(())
}
