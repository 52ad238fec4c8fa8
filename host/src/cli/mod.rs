//! The `sdhost` command line.

mod bench;
mod check;
mod dev;
mod doctor;
pub mod folders;
mod img2img;
mod info;
mod interrogate;
mod job_args;
mod png_info;
mod prompt;
pub mod request_flags;
mod samplers;
mod script_flags;
mod script_host;
mod serve;
mod txt2img;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Stable Diffusion for image editors: img2img and inpainting on libtorch.
#[derive(Parser)]
#[command(name = "sdhost", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: keep a model loaded and serve editors over a local socket.
    Serve(Box<serve::ServeArgs>),
    /// img2img as A1111's img2img tab does it: init image, prompt, sampler, seed → PNGs.
    Img2img(Box<img2img::Img2ImgArgs>),
    /// txt2img as A1111's txt2img tab does it, Hires. fix included: prompt, sampler, seed →
    /// PNGs.
    Txt2img(Box<txt2img::Txt2ImgArgs>),
    /// A prompt from a picture, as A1111's "Interrogate CLIP" or "Interrogate DeepBooru" makes it.
    Interrogate(Box<interrogate::InterrogateArgs>),
    /// Show a checkpoint's architecture, dtype, parameter count and A1111 hashes.
    Info(info::InfoArgs),
    /// Load a checkpoint on a device and run each network once, with timings.
    Check(check::CheckArgs),
    /// Show how a prompt is understood: schedule, emphasis, tokens and chunks.
    Prompt(prompt::PromptArgs),
    /// Show the generation parameters (A1111 infotext) stored in a PNG.
    PngInfo(png_info::PngInfoArgs),
    /// List the samplers of every loaded plugin with their default schedules.
    Samplers(samplers::SamplersArgs),
    /// Check the installation (libtorch, device, config, models, plugins, GIMP plug-in,
    /// daemon) and say how to fix each problem; exit status 1 when there is one.
    Doctor(doctor::DoctorArgs),
    /// Time sdhost's networks against diffusers' side by side (docs/performance.md).
    Bench(Box<bench::BenchArgs>),
    /// Developer tools: tiny models and network checks.
    #[command(subcommand)]
    Dev(dev::DevCommand),
}

impl Cli {
    /// Runs the chosen command; its exit status is failure only for a failed check
    /// (`doctor`), errors are returned.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let done = match self.command {
            Command::Serve(args) => serve::run(&args),
            Command::Img2img(args) => img2img::run(&args),
            Command::Txt2img(args) => txt2img::run(&args),
            Command::Interrogate(args) => interrogate::run(&args),
            Command::Info(args) => info::run(&args),
            Command::Check(args) => check::run(&args),
            Command::Prompt(args) => prompt::run(&args),
            Command::PngInfo(args) => png_info::run(&args),
            Command::Samplers(args) => samplers::run(&args),
            Command::Bench(args) => bench::run(&args),
            Command::Doctor(args) => return doctor::run(&args),
            Command::Dev(cmd) => dev::run(cmd),
        };
        done.map(|()| ExitCode::SUCCESS)
    }
}
