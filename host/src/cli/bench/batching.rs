//! The batching case of `sdhost bench` (issue #26): four queued 512² img2img jobs that differ
//! only in prompts and seeds, one after another against one joint batch (the daemon's
//! `--joint-batch`, `pipeline/joint.rs`), with the largest pixel difference between the two.

use std::path::Path;

use anyhow::Context;
use image::RgbImage;
use sdhost_plugin_api::Flow;

use super::context::BenchContext;
use super::figures::{params, picture};
use crate::device::parse_dtype;
use crate::pipeline::img2img::{run_img2img_unobserved, JobEvent, JobOutcome};
use crate::pipeline::joint::{run_joint, JointInputs, JointMember};
use crate::pipeline::model::GenerationModel;
use crate::pipeline::stop::JobStop;
use crate::request::GenerationRequest;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};
use crate::sampling::schedule::Schedule;

/// The queued jobs' prompts (one job each).
const PROMPTS: [&str; 4] = [
    "a lighthouse on a cliff at dawn",
    "a red fox in the snow, detailed fur",
    "an old town street after rain, reflections",
    "a bowl of fruit on a wooden table, still life",
];

/// Sampler steps of each job (strength 0.75: 3 of them run; the ratio does not depend on them).
const STEPS: usize = 4;

/// The queued jobs: the 512² img2img with DPM++ 2M Karras, a prompt and seed each.
fn jobs() -> Vec<GenerationRequest> {
    PROMPTS
        .iter()
        .zip(1u64..)
        .map(|(prompt, seed)| {
            let mut request = params(512, 512, STEPS, 0.75);
            request.prompt = prompt.to_string();
            request.negative_prompt = "blurry, low quality".into();
            request.seed = seed as i64 * 1000;
            request.sampler.sampler = "DPM++ 2M".into();
            request.sampler.schedule = Schedule::Karras;
            request
        })
        .collect()
}

/// The jobs one after another, as the queue runs them without joint batching.
fn one_by_one(
    model: &GenerationModel,
    registry: &SamplerRegistry,
    jobs: &[GenerationRequest],
    init: &RgbImage,
) -> anyhow::Result<Vec<JobOutcome>> {
    jobs.iter()
        .map(|params| {
            run_img2img_unobserved(model, registry, params, init, None).context("a queued job")
        })
        .collect()
}

/// The jobs as one joint batch.
fn joint(
    model: &GenerationModel,
    registry: &SamplerRegistry,
    jobs: &[GenerationRequest],
    init: &RgbImage,
) -> anyhow::Result<Vec<JobOutcome>> {
    let stops: Vec<JobStop> = jobs.iter().map(|_| JobStop::new()).collect();
    let mut observers: Vec<fn(JobEvent<'_>) -> Flow> = vec![|_| Flow::Continue; jobs.len()];
    let mut members: Vec<JointMember<'_>> = jobs
        .iter()
        .zip(&stops)
        .zip(observers.iter_mut())
        .map(|((params, stop), observe)| JointMember {
            params,
            stop,
            observe,
        })
        .collect();
    let inputs = JointInputs::Img2img {
        image: init,
        mask: None,
    };
    run_joint(model, registry, inputs, &mut members)
        .into_iter()
        .map(|outcome| outcome.context("a job of the joint batch"))
        .collect()
}

/// The largest difference of one pixel channel between the two runs' images.
fn largest_difference(a: &[JobOutcome], b: &[JobOutcome]) -> u8 {
    a.iter()
        .zip(b)
        .flat_map(|(a, b)| a.images.iter().zip(&b.images))
        .flat_map(|(a, b)| a.image.as_raw().iter().zip(b.image.as_raw()))
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// Prints the throughput of the queued jobs as one batch against one after another, on the
/// context's device in `dtype`; `repeat` timed runs of each on CUDA, one on the CPU (a run is
/// minutes there), interleaved after a warm-up.
pub fn run(
    model_path: &Path,
    context: &BenchContext,
    dtype: &str,
    repeat: usize,
) -> anyhow::Result<()> {
    let kind = parse_dtype(dtype)?;
    let model = GenerationModel::load(model_path, context.device, kind, None)?;
    let registry = SamplerRegistry::load(&PluginPaths::discover(None));
    let jobs = jobs();
    let init = picture(512, 512);
    // Warm-up: the first calls of a process set up kernels (and fill the prompt cache for both
    // sides alike).
    one_by_one(&model, &registry, &jobs, &init)?;
    let runs = if context.is_cuda() { repeat.max(1) } else { 1 };
    let (mut alone, mut together) = (Vec::new(), Vec::new());
    let mut difference = 0;
    for _ in 0..runs {
        let mut outcomes = None;
        alone.push(context.seconds(|| {
            outcomes = Some(one_by_one(&model, &registry, &jobs, &init));
        }));
        let separate = outcomes.take().expect("ran")?;
        together.push(context.seconds(|| {
            outcomes = Some(joint(&model, &registry, &jobs, &init));
        }));
        let joined = outcomes.take().expect("ran")?;
        difference = difference.max(largest_difference(&separate, &joined));
    }
    let (alone, together) = (
        super::reference::median(alone),
        super::reference::median(together),
    );
    println!(
        "joint batching, {} queued 512² img2img jobs (DPM++ 2M Karras, 3 of {STEPS} steps, prompt and seed each, SD 1.5 {dtype} on {}): one after another {alone:.2} s, as one batch {together:.2} s: throughput {:.2}× (target ≥ 1.5× on a GPU; reported on the CPU); largest pixel difference to the separate runs {difference}/255",
        jobs.len(),
        context.name,
        alone / together
    );
    Ok(())
}
