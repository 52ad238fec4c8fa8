//! `sdhost txt2img`: A1111's txt2img tab on the command line, Hires. fix included. The
//! generation flags are the request's fields under A1111's API names
//! (`cli/request_flags.rs`: `--enable-hr`, `--hr-scale`, `--hr-upscaler` …); `--from-png`
//! takes the parameters of an image made before (flags given override).

use clap::Args;

use crate::pipeline::txt2img::run_txt2img;
use crate::request::GenerationRequest;

use super::job_args::JobArgs;

/// Arguments of `sdhost txt2img`.
#[derive(Args)]
pub struct Txt2ImgArgs {
    /// Model, device, output and request flags.
    #[command(flatten)]
    job: JobArgs,
}

/// Runs `sdhost txt2img`.
pub fn run(args: &Txt2ImgArgs) -> anyhow::Result<()> {
    // A1111's txt2img tab: 512×512 unless the flags say otherwise.
    let job = args
        .job
        .load(GenerationRequest::txt2img_ui_defaults(), |_| None)?;
    args.job.run_job(false, |stop, observe| {
        run_txt2img(&job.model, &job.registry, &job.params, stop, observe)
    })
}
