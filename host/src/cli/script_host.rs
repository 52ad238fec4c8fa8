//! The command line as a [`ScriptHost`]: a script's jobs run on the loaded model (another
//! checkpoint loaded when a job asks), one progress bar over all their steps, each image saved
//! to `--out-dir` as it comes and the script's grids to the grid folder at the end.

use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use sdhost_plugin_api::Flow;

use super::job_args::{progress_bar, JobArgs, LoadedJob, INTERRUPTED_EXIT};
use crate::interrogate::{InterrogateFiles, Interrogator};
use crate::pipeline::img2img::{run_img2img_with, GeneratedImage, JobEvent, JobOutcome};
use crate::pipeline::stop::JobStop;
use crate::pipeline::txt2img::run_txt2img;
use crate::sampling::plugins::SamplerRegistry;
use crate::scripts::output::save_grid;
use crate::scripts::sd_upscale::ready_upscaler;
use crate::scripts::{Script, ScriptError, ScriptHost, ScriptJob, UpscalerChoice};
use crate::upscale::ReadyUpscaler;

/// The CLI running one script.
struct CliHost<'a> {
    args: &'a JobArgs,
    loaded: &'a mut LoadedJob,
    stop: JobStop,
    bar: ProgressBar,
    /// Paths of the images saved so far.
    saved: Vec<PathBuf>,
    /// Loopback's interrogator: the models of `--models-dir`, loaded when first asked for.
    interrogator: Interrogator,
}

fn setup_error(name: &str, error: impl std::fmt::Display) -> ScriptError {
    ScriptError::Checkpoint {
        name: name.to_string(),
        message: format!("{error:#}"),
    }
}

impl ScriptHost for CliHost<'_> {
    fn registry(&self) -> &SamplerRegistry {
        &self.loaded.registry
    }

    fn has_checkpoint(&self, name: &str) -> bool {
        self.args.find_checkpoint(name).is_ok()
    }

    fn plan(&mut self, total_steps: usize, jobs: usize) {
        self.bar.set_length(total_steps as u64);
        self.bar.set_message(format!("job 1/{jobs}"));
    }

    fn run(&mut self, job: &ScriptJob) -> Result<JobOutcome, ScriptError> {
        if let Some(name) = &job.checkpoint {
            let path = self
                .args
                .find_checkpoint(name)
                .map_err(|e| setup_error(name, e))?;
            if path != self.loaded.checkpoint {
                self.bar
                    .suspend(|| eprintln!("loading checkpoint {}", path.display()));
                self.loaded.model = self
                    .args
                    .load_model(&path)
                    .map_err(|e| setup_error(name, e))?;
                self.loaded.checkpoint = path;
            }
        }
        let params = &job.params;
        let model = &mut self.loaded.model;
        if let Some(warning) = model
            .select_vae(&params.sd_vae)
            .map_err(|e| setup_error(&params.sd_vae, e))?
        {
            self.bar.suspend(|| eprintln!("warning: {warning}"));
        }
        self.args
            .select_refiner(model, &params.refiner_checkpoint)
            .map_err(|e| setup_error(&params.refiner_checkpoint, e))?;
        let (args, bar, stop) = (self.args, &self.bar, &self.stop);
        let deliver = job.init.as_ref().is_none_or(|init| init.deliver);
        let mut saved = Vec::new();
        let mut save_error = None;
        let mut observe = |event: JobEvent<'_>| {
            match event {
                JobEvent::Started { .. } => {}
                JobEvent::Step { .. } => bar.inc(1),
                JobEvent::Warning(message) => bar.suspend(|| eprintln!("warning: {message}")),
                JobEvent::Image(_) if !deliver => {}
                JobEvent::Image(image) => match args.save(image, false) {
                    Ok((path, _)) => {
                        bar.suspend(|| println!("{}", path.display()));
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
        };
        let (model, registry) = (&self.loaded.model, &self.loaded.registry);
        let outcome = match &job.init {
            Some(init) => {
                run_img2img_with(model, registry, params, init.inputs(), stop, &mut observe)
            }
            None => run_txt2img(model, registry, params, stop, &mut observe),
        };
        self.saved.extend(saved);
        if let Some(error) = save_error {
            return Err(setup_error("output", error));
        }
        Ok(outcome?)
    }

    fn upscaler(&self, choice: &UpscalerChoice) -> Result<(String, ReadyUpscaler), ScriptError> {
        ready_upscaler(choice, &self.loaded.model)
    }

    fn stopped(&self) -> bool {
        self.stop.ends_job()
    }

    fn interrogator(&mut self) -> &mut Interrogator {
        &mut self.interrogator
    }
}

/// Runs `script` over `base` with the loaded model; the grids go to `grid_dir`.
pub fn run_script(
    args: &JobArgs,
    loaded: &mut LoadedJob,
    script: &Script,
    base: &ScriptJob,
    grid_dir: &Path,
) -> anyhow::Result<()> {
    let stop = args.interrupt_on_ctrl_c()?;
    let device = loaded.model.device;
    let mut host = CliHost {
        args,
        loaded,
        stop: stop.clone(),
        bar: progress_bar(),
        saved: Vec::new(),
        interrogator: Interrogator::new(
            InterrogateFiles {
                models_dir: args.models_dir().map(Path::to_path_buf),
                ..InterrogateFiles::default()
            },
            device,
            Interrogator::default_feature_cache_dir(),
        ),
    };
    let result = script.run(&mut host, base);
    host.bar.finish_and_clear();
    let outcome = result?;
    for warning in &outcome.warnings {
        eprintln!("warning: {warning}");
    }
    // Pictures the script composed are saved as a job's images.
    for (index, made) in outcome.made.iter().enumerate() {
        let image = GeneratedImage {
            index,
            seed: made.seed,
            image: made.image.clone(),
            patch: None,
            infotext: made.infotext.clone(),
        };
        let (path, _) = args.save(&image, false)?;
        println!("{}", path.display());
    }
    for grid in outcome.grids.iter().take(outcome.saved_grids) {
        let path = save_grid(grid_dir, outcome.grid_basename, grid)?;
        println!("{}", path.display());
    }
    if outcome.stopped && stop.is_interrupted() {
        eprintln!(
            "stopped by Ctrl-C; {} image(s) kept in {}",
            host.saved.len(),
            args.out_dir.display()
        );
        std::process::exit(INTERRUPTED_EXIT);
    }
    Ok(())
}
