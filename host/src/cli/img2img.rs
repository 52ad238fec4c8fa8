//! `sdhost img2img`: A1111's img2img tab on the command line. The generation flags are the
//! request's fields under A1111's API names (`cli/request_flags.rs`); `--from-png` takes the
//! parameters of an image made before (flags given override).

use std::path::PathBuf;

use clap::Args;

use crate::pipeline::img2img::run_img2img;
use crate::prepare::init_image::{load_image, DEFAULT_BACKGROUND};
use crate::prepare::modes::{Img2ImgMode, ModeInputs};
use crate::request::GenerationRequest;

use super::job_args::JobArgs;
use super::script_flags::ScriptFlags;
use super::script_host::run_script;
use crate::scripts::output::default_grid_dir;
use crate::scripts::{ScriptInit, ScriptJob, Tab};

/// Arguments of `sdhost img2img`.
#[derive(Args)]
pub struct Img2ImgArgs {
    /// The image to start from (PNG or JPEG; transparency is flattened over white).
    #[arg(long)]
    init_image: PathBuf,
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
    /// Model, device, output and request flags.
    #[command(flatten)]
    job: JobArgs,
    /// Script flags (the X/Y/Z plot).
    #[command(flatten)]
    script: ScriptFlags,
}

fn parse_mode(text: &str) -> Result<Img2ImgMode, String> {
    Img2ImgMode::parse(text).ok_or_else(|| {
        let names: Vec<_> = Img2ImgMode::ALL.iter().map(|m| m.name()).collect();
        format!("unknown mode \"{text}\" ({})", names.join(", "))
    })
}

/// Runs `sdhost img2img`.
pub fn run(args: &Img2ImgArgs) -> anyhow::Result<()> {
    // A bad script flag is refused before the model loads.
    let script = args.script.script(Tab::Img2img)?;
    let image = load_image(&args.init_image)?;
    let sketch = args.sketch.as_deref().map(load_image).transpose()?;
    let mask_image = args.mask.as_deref().map(load_image).transpose()?;
    // Without --from-png the job has the image's size, rounded down to the latent grid.
    let mut job = args.job.load(GenerationRequest::default(), |step| {
        Some((
            (image.width() / step * step).max(step),
            (image.height() / step * step).max(step),
        ))
    })?;
    let params = job.params.clone();
    let params = &params;
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
    if let Some(script) = script {
        if args.patch_out {
            anyhow::bail!("--patch-out is not available with a script");
        }
        let base = ScriptJob {
            params: params.clone(),
            init: Some(ScriptInit::new(init_image, mask)),
            checkpoint: None,
            cell: Vec::new(),
        };
        let grid_dir = args
            .script
            .grid_dir
            .clone()
            .unwrap_or_else(|| default_grid_dir(&args.job.out_dir, Tab::Img2img));
        return run_script(&args.job, &mut job, &script, &base, &grid_dir);
    }
    args.job.run_job(args.patch_out, |stop, observe| {
        run_img2img(
            &job.model,
            &job.registry,
            params,
            &init_image,
            mask.as_ref(),
            stop,
            observe,
        )
    })
}
