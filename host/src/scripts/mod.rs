//! A1111's scripts (`modules/scripts.py`: the "Script" dropdown of the txt2img and img2img
//! tabs, `scripts/*.py`): a script takes the tab's request and runs ordinary jobs of its own
//! making (X/Y/Z plot: one per cell; loopback: each output fed back as the next init; SD
//! upscale: one per tile), then returns their images with its own (grids first, as A1111's
//! `Processed` lists them).
//!
//! The script never touches the model: it asks a [`ScriptHost`] to run each [`ScriptJob`]. The
//! daemon's worker and the CLI each implement the host (switching checkpoint and VAE as a job
//! asks, reporting progress, stopping when told), so a script runs the same everywhere.
//!
//! Front ends choose a script by its A1111 title ([`Script::from_api`], case-insensitive as
//! A1111's API `script_name` is) with A1111's positional `script_args`. [`grid`] and [`crate::prepare::tiles`]
//! are the picture helpers the scripts share from `modules/images.py`.

mod args;
pub mod grid;
pub mod loopback;
pub mod matched_noise;
pub mod outpainting;
pub mod outpainting_mk2;
pub mod output;
pub mod poor_mans_outpainting;
pub mod prompt_matrix;
pub mod prompts_from_file;
pub mod sd_upscale;

pub use sd_upscale::UpscalerChoice;
pub mod xyz;

use image::{GrayImage, RgbImage};
use serde_json::Value;

use crate::infotext::Infotext;
use crate::interrogate::{InterrogateError, InterrogateMethod, InterrogateOptions, Interrogator};
use crate::pipeline::img2img::{JobError, JobOutcome};
use crate::request::GenerationRequest;
use crate::sampling::plugins::SamplerRegistry;
use crate::upscale::ReadyUpscaler;

/// Which A1111 tab a script runs on: some scripts and some X/Y/Z axes exist on one tab only
/// (`AxisOptionTxt2Img`, `AxisOptionImg2Img`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// txt2img (Hires. fix axes).
    Txt2img,
    /// img2img (an init image, perhaps a mask).
    Img2img,
}

impl Tab {
    /// A1111's folder name stem (`txt2img`, `img2img`): `outputs/<stem>-images`, `-grids`.
    pub fn stem(self) -> &'static str {
        match self {
            Tab::Txt2img => "txt2img",
            Tab::Img2img => "img2img",
        }
    }
}

/// An img2img job's prepared inputs: what [`crate::pipeline::img2img::run_img2img`] takes (the
/// tab's mode already applied).
#[derive(Debug, Clone)]
pub struct ScriptInit {
    /// Init image.
    pub image: RgbImage,
    /// Inpainting mask (white: regenerate).
    pub mask: Option<GrayImage>,
    /// A1111's `p.latent_mask` (the outpainting scripts): blends the latents instead of the
    /// processed mask.
    pub latent_mask: Option<GrayImage>,
    /// A1111's `p.color_corrections` set by a script (Loopback: the original picture).
    pub color_target: Option<RgbImage>,
    /// Whether the host delivers (saves, sends) the job's images as they come; off where A1111
    /// sets `do_not_save_samples` because the script composes its own picture from them
    /// (outpainting, SD upscale), which it returns in [`ScriptOutcome::made`].
    pub deliver: bool,
}

impl ScriptInit {
    /// The tab's init image and mask, delivered as an ordinary job's.
    pub fn new(image: RgbImage, mask: Option<GrayImage>) -> Self {
        ScriptInit {
            image,
            mask,
            latent_mask: None,
            color_target: None,
            deliver: true,
        }
    }

    /// The pipeline's inputs.
    pub fn inputs(&self) -> crate::pipeline::img2img::Img2ImgInputs<'_> {
        crate::pipeline::img2img::Img2ImgInputs {
            image: &self.image,
            mask: self.mask.as_ref(),
            latent_mask: self.latent_mask.as_ref(),
            color_target: self.color_target.as_ref(),
        }
    }
}

/// One ordinary job a script asks for: A1111's `process_images(p)` on a copy of `p`.
#[derive(Debug, Clone)]
pub struct ScriptJob {
    /// Its parameters (seeds already fixed by the script where A1111 fixes them).
    pub params: GenerationRequest,
    /// img2img's init image and mask; `None`: a txt2img job.
    pub init: Option<ScriptInit>,
    /// Checkpoint to load first (a name, title or file, as `sd_model_checkpoint` takes it);
    /// it stays loaded after the job, as in A1111. `None`: the loaded one.
    pub checkpoint: Option<String>,
    /// An X/Y/Z plot cell's axis values, X then Y then Z, so clients can tell the cells'
    /// images apart (they run in cost order); empty for every other job.
    pub cell: Vec<CellAxis>,
}

/// One axis value of an X/Y/Z plot cell, as the grid's legend writes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct CellAxis {
    /// The axis's A1111 label (`Steps`, `CFG Scale`).
    pub axis: String,
    /// The value's legend text without the `Steps: ` prefix some axes' legends add.
    pub value: String,
}

impl ScriptJob {
    /// The sampler steps this job will report (first pass and Hires. fix pass, every batch).
    pub fn planned_steps(&self) -> usize {
        let params = &self.params;
        let sampler = &params.sampler;
        // img2img samples t_enc + 1 of its steps (k-diffusion; DDIM one fewer).
        let first = match self.init {
            Some(_) => {
                let (_, t_enc) = crate::sampling::schedule::img2img_steps(
                    sampler.steps,
                    sampler.denoising_strength,
                    sampler.fix_steps,
                );
                (t_enc + 1).min(sampler.steps.max(1))
            }
            None => sampler.steps,
        };
        let hires = if self.init.is_none() && params.hires.enable_hr {
            match params.hires.hr_second_pass_steps {
                0 => sampler.steps,
                steps => steps,
            }
        } else {
            0
        };
        (first + hires) * params.n_iter
    }
}

/// Why a script did not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// No script has that title on that tab (A1111's API: 422 "Script '…' not found").
    #[error("Script '{0}' not found")]
    NotFound(String),
    /// A script argument that cannot be used, found before any job ran.
    #[error("{script}: {message}")]
    InvalidArgs {
        /// The script's title.
        script: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint a job asks for could not be loaded.
    #[error("checkpoint \"{name}\": {message}")]
    Checkpoint {
        /// As asked.
        name: String,
        /// Why.
        message: String,
    },
    /// A job failed.
    #[error(transparent)]
    Job(#[from] JobError),
    /// An interrogation a script asked for failed (a model file missing, …).
    #[error("interrogate: {0}")]
    Interrogate(#[from] InterrogateError),
}

/// What runs a script's jobs: implemented by the daemon's worker and by the CLI.
pub trait ScriptHost {
    /// The samplers (names checked before any job; options a sampler declares).
    fn registry(&self) -> &SamplerRegistry;
    /// Whether `name` names a checkpoint the host can load (A1111's
    /// `get_closet_checkpoint_match` finding one).
    fn has_checkpoint(&self, name: &str) -> bool;
    /// Announces the whole script's work before its first job: sampler steps over all jobs
    /// (A1111's `total_tqdm`) and jobs; progress then counts on across jobs.
    fn plan(&mut self, total_steps: usize, jobs: usize);
    /// Runs one ordinary job: loads `job.checkpoint` when it is not the loaded one, selects the
    /// job's VAE and refiner, reports its steps and delivers (saves, sends) its images as an
    /// ordinary job's, and stops between steps when the user stops the script.
    fn run(&mut self, job: &ScriptJob) -> Result<JobOutcome, ScriptError>;
    /// Whether the user stopped the script (cancel or interrupt): no further job is started.
    fn stopped(&self) -> bool;
    /// The loaded model's upscaler `choice` names (A1111's `shared.sd_upscalers`: None,
    /// Lanczos, Nearest, then the models of the upscaler folders), read and ready to run.
    fn upscaler(&self, choice: &UpscalerChoice) -> Result<(String, ReadyUpscaler), ScriptError>;
    /// The host's interrogator (its models loaded on first use).
    fn interrogator(&mut self) -> &mut Interrogator;
    /// The prompt A1111's interrogate button of `method` writes for `image` (Loopback's
    /// "Append interrogated prompt"), with A1111's default interrogation options.
    fn interrogate(
        &mut self,
        image: &RgbImage,
        method: InterrogateMethod,
    ) -> Result<String, ScriptError> {
        let options = InterrogateOptions::default();
        Ok(self.interrogator().interrogate(image, method, &options)?)
    }
}

/// One image a script returns besides its jobs' own (a grid).
#[derive(Debug, Clone)]
pub struct ScriptImage {
    /// The pixels.
    pub image: RgbImage,
    /// Its infotext.
    pub infotext: Infotext,
    /// Seed shown for it (the first image's).
    pub seed: u64,
}

/// What a script produced, in A1111's order.
#[derive(Debug, Default)]
pub struct ScriptOutcome {
    /// Grids, listed first.
    pub grids: Vec<ScriptImage>,
    /// How many of the first grids the front end saves in the grid folder as
    /// `<grid_basename>-NNNN.png` (A1111 does not save every grid it returns: the X/Y/Z plot
    /// with one Z value returns its Z grid but saves only the plot).
    pub saved_grids: usize,
    /// File name stem of the grids (`xyz_grid`).
    pub grid_basename: &'static str,
    /// The jobs' images that the script returns after its grids (already delivered by the
    /// host as their jobs made them).
    pub images: Vec<ScriptImage>,
    /// Pictures the script composed from undelivered jobs (outpainting, SD upscale): the front
    /// end delivers them as a job's images (saved in the images folder, sent as results).
    pub made: Vec<ScriptImage>,
    /// Things the user should know that did not stop the script.
    pub warnings: Vec<String>,
    /// Whether the user stopped it before its end.
    pub stopped: bool,
}

/// A script chosen with its arguments: one variant per script of A1111's dropdown that sdhost
/// runs, each with its parsed arguments.
#[derive(Debug, Clone)]
pub enum Script {
    /// X/Y/Z plot (`scripts/xyz_grid.py`).
    XyzPlot(Box<xyz::XyzArgs>),
    /// Prompt matrix (`scripts/prompt_matrix.py`), either tab.
    PromptMatrix(prompt_matrix::PromptMatrixArgs, Tab),
    /// Prompts from file or textbox (`scripts/prompts_from_file.py`), either tab.
    PromptsFromFile(prompts_from_file::PromptsFromFileArgs, Tab),
    /// Loopback (`scripts/loopback.py`), img2img.
    Loopback(loopback::LoopbackArgs),
    /// SD upscale (`scripts/sd_upscale.py`), img2img.
    SdUpscale(sd_upscale::SdUpscaleArgs),
    /// Outpainting mk2 (`scripts/outpainting_mk_2.py`), img2img.
    OutpaintingMk2(outpainting_mk2::Mk2Args),
    /// Poor man's outpainting (`scripts/poor_mans_outpainting.py`), img2img.
    PoorMansOutpainting(poor_mans_outpainting::PoorMansArgs),
}

impl Script {
    /// The titles of the scripts sdhost runs, as A1111's dropdown shows them.
    pub const TITLES: &'static [&'static str] = &[
        xyz::TITLE,
        prompt_matrix::TITLE,
        prompts_from_file::TITLE,
        loopback::TITLE,
        sd_upscale::TITLE,
        outpainting_mk2::TITLE,
        poor_mans_outpainting::TITLE,
    ];

    /// The script an API request names (`script_name`, any case, as A1111's
    /// `script_name_to_index` compares) with its positional `script_args`, for `tab`.
    pub fn from_api(name: &str, args: &[Value], tab: Tab) -> Result<Self, ScriptError> {
        let wanted = name.trim().to_lowercase();
        if wanted == xyz::TITLE.to_lowercase() {
            return Ok(Script::XyzPlot(Box::new(xyz::XyzArgs::from_api(
                args, tab,
            )?)));
        }
        let img2img = tab == Tab::Img2img;
        let is = |title: &str| wanted == title.to_lowercase();
        if is(prompt_matrix::TITLE) {
            return Ok(Script::PromptMatrix(args::prompt_matrix(args)?, tab));
        }
        if is(prompts_from_file::TITLE) {
            return Ok(Script::PromptsFromFile(args::prompts_from_file(args)?, tab));
        }
        // The others are on A1111's img2img tab only (`show` returns `is_img2img`).
        if img2img && is(loopback::TITLE) {
            return Ok(Script::Loopback(args::loopback(args)?));
        }
        if img2img && is(sd_upscale::TITLE) {
            return Ok(Script::SdUpscale(args::sd_upscale(args)?));
        }
        if img2img && is(outpainting_mk2::TITLE) {
            return Ok(Script::OutpaintingMk2(args::outpainting_mk2(args)?));
        }
        if img2img && is(poor_mans_outpainting::TITLE) {
            return Ok(Script::PoorMansOutpainting(args::poor_mans(args)?));
        }
        Err(ScriptError::NotFound(name.to_string()))
    }

    /// The script's A1111 title.
    pub fn title(&self) -> &'static str {
        match self {
            Script::XyzPlot(_) => xyz::TITLE,
            Script::PromptMatrix(..) => prompt_matrix::TITLE,
            Script::PromptsFromFile(..) => prompts_from_file::TITLE,
            Script::Loopback(_) => loopback::TITLE,
            Script::SdUpscale(_) => sd_upscale::TITLE,
            Script::OutpaintingMk2(_) => outpainting_mk2::TITLE,
            Script::PoorMansOutpainting(_) => poor_mans_outpainting::TITLE,
        }
    }

    /// The tab it was chosen for.
    pub fn tab(&self) -> Tab {
        match self {
            Script::XyzPlot(args) => args.tab,
            Script::PromptMatrix(_, tab) | Script::PromptsFromFile(_, tab) => *tab,
            _ => Tab::Img2img,
        }
    }

    /// Runs the script over `base` (the tab's request, with its init image on img2img).
    pub fn run(
        &self,
        host: &mut dyn ScriptHost,
        base: &ScriptJob,
    ) -> Result<ScriptOutcome, ScriptError> {
        match self {
            Script::XyzPlot(args) => xyz::run(args, host, base),
            Script::PromptMatrix(args, _) => prompt_matrix::run(args, host, base),
            Script::PromptsFromFile(args, _) => prompts_from_file::run(args, host, base),
            Script::Loopback(args) => loopback::run(args, host, base),
            Script::SdUpscale(args) => sd_upscale::run(args, host, base),
            Script::OutpaintingMk2(args) => outpainting_mk2::run(args, host, base),
            Script::PoorMansOutpainting(args) => poor_mans_outpainting::run(args, host, base),
        }
    }

    /// Whether the API returns the jobs' images after the grids (all scripts but the X/Y/Z
    /// plot, which does so only with "Include Sub Images").
    pub fn returns_job_images(&self) -> bool {
        match self {
            Script::XyzPlot(args) => args.include_lone_images,
            _ => true,
        }
    }
}

/// A1111's `processing.fix_seed(p)`: -1 seeds (seed and variation seed) made concrete once, so
/// every job a script makes from the request shares them.
pub fn fix_seed(params: &mut GenerationRequest) {
    use crate::rng::{fixed_seed, random_seed};
    params.seed = fixed_seed(params.seed, random_seed) as i64;
    params.subseed = fixed_seed(params.subseed, random_seed) as i64;
}

impl ScriptImage {
    /// A job's image as a script returns it.
    pub fn of(image: &crate::pipeline::job::GeneratedImage) -> Self {
        ScriptImage {
            image: image.image.clone(),
            infotext: image.infotext.clone(),
            seed: image.seed,
        }
    }
}

/// The script's error for an image helper's failure.
fn picture_error(script: &'static str, error: impl std::fmt::Display) -> ScriptError {
    ScriptError::InvalidArgs {
        script,
        message: error.to_string(),
    }
}

/// `infotext` with a script's keys where A1111 puts `extra_generation_params`: after the
/// job's own keys, before `Version` and `User`.
pub fn with_extra_params(infotext: &Infotext, keys: &[(String, String)]) -> Infotext {
    let mut out = infotext.clone();
    let at = out
        .params
        .iter()
        .position(|(k, _)| crate::infotext::TRAILING_KEYS.contains(&k.as_str()))
        .unwrap_or(out.params.len());
    for (offset, pair) in keys.iter().enumerate() {
        out.params.insert(at + offset, pair.clone());
    }
    out
}

/// The sampler steps of `jobs`, announced to the host before the first.
fn plan_jobs(host: &mut dyn ScriptHost, jobs: &[ScriptJob]) {
    let total = jobs.iter().map(ScriptJob::planned_steps).sum();
    host.plan(total, jobs.len());
}
