//! `sdhost txt2img`: A1111's txt2img tab on the command line, Hires. fix included. The
//! generation flags are the request's fields under A1111's API names
//! (`cli/request_flags.rs`: `--enable-hr`, `--hr-scale`, `--hr-upscaler` …); `--from-png`
//! takes the parameters of an image made before (flags given override).

use clap::Args;

use crate::pipeline::txt2img::run_txt2img;
use crate::request::GenerationRequest;

use super::job_args::JobArgs;
use super::script_flags::ScriptFlags;
use super::script_host::run_script;
use crate::scripts::output::default_grid_dir;
use crate::scripts::{ScriptJob, Tab};

/// Arguments of `sdhost txt2img`.
#[derive(Args)]
pub struct Txt2ImgArgs {
    /// Model, device, output and request flags.
    #[command(flatten)]
    job: JobArgs,
    /// Script flags (the X/Y/Z plot).
    #[command(flatten)]
    script: ScriptFlags,
}

/// Runs `sdhost txt2img`.
pub fn run(args: &Txt2ImgArgs) -> anyhow::Result<()> {
    // A bad script flag is refused before the model loads.
    let script = args.script.script(Tab::Txt2img)?;
    // A1111's txt2img tab: 512×512 unless the flags say otherwise.
    let mut job = args
        .job
        .load(GenerationRequest::txt2img_ui_defaults(), |_| None)?;
    if let Some(script) = script {
        let base = ScriptJob {
            params: job.params.clone(),
            init: None,
            checkpoint: None,
            cell: Vec::new(),
        };
        let grid_dir = args
            .script
            .grid_dir
            .clone()
            .unwrap_or_else(|| default_grid_dir(&args.job.out_dir, Tab::Txt2img));
        return run_script(&args.job, &mut job, &script, &base, &grid_dir);
    }
    args.job.run_job(false, |stop, observe| {
        run_txt2img(&job.model, &job.registry, &job.params, stop, observe)
    })
}
