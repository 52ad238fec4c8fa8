//! The sdhost-only figures of `sdhost bench`: whole jobs and their peak memory, time against
//! denoising strength, only-masked inpainting in a large image, model load, socket transport.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use image::{GrayImage, RgbImage};
use sdhost_plugin_api::Flow;
use tch::{Device, Kind};

use crate::checkpoint::{infer_architecture, Checkpoint};
use crate::daemon::protocol::{read_frame, write_frame, Attachment, FrameLimits, PixelFormat};
use crate::models::StableDiffusion;
use crate::pipeline::img2img::run_img2img;
use crate::pipeline::model::GenerationModel;
use crate::pipeline::params::Img2ImgParams;
use crate::prepare::inpaint::InpaintSettings;
use crate::sampling::plan::SamplerSettings;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};
use crate::tiny_model::{write_tiny_model, TinyModelSpec};

/// A smooth test picture of any size.
fn picture(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) / 2 % 256) as u8])
    })
}

fn params(width: u32, height: u32, steps: usize, strength: f64) -> Img2ImgParams {
    Img2ImgParams {
        prompt: "a lighthouse on a cliff".into(),
        width,
        height,
        seed: 1,
        sampler: SamplerSettings {
            sampler: "Euler".into(),
            steps,
            denoising_strength: strength,
            ..SamplerSettings::default()
        },
        ..Img2ImgParams::default()
    }
}

/// Wall time and peak RSS (MiB) of `sdhost img2img` as a separate process. The peak is the
/// child's `VmHWM`, polled until it exits (exec starts a fresh count, unlike `ru_maxrss`, which
/// also remembers the forked copy of this process).
fn job_process(sdhost: &Path, args: &[&str]) -> anyhow::Result<(f64, f64)> {
    let start = Instant::now();
    let mut child = Command::new(sdhost)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak_kib = peak_kib.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    anyhow::ensure!(status.success(), "sdhost img2img failed ({status})");
    Ok((start.elapsed().as_secs_f64(), peak_kib as f64 / 1024.0))
}

/// Prints the figures.
pub fn print_figures(model: &Path, wants: &dyn Fn(&str) -> bool) -> anyhow::Result<()> {
    let sdhost = std::env::current_exe()?;
    let work = tempfile::tempdir()?;
    let init_path = work.path().join("init.png");
    picture(512, 512).save(&init_path)?;
    let model_arg = model.to_string_lossy().into_owned();
    let init_arg = init_path.to_string_lossy().into_owned();
    let out_arg = work.path().join("out").to_string_lossy().into_owned();
    let threads = tch::get_num_threads().to_string();

    if wants("load") {
        let checkpoint = Checkpoint::open(model)?;
        let architecture = infer_architecture(&checkpoint)?;
        let bytes = std::fs::metadata(model)?.len() as f64 / 1e9;
        let load = || StableDiffusion::load(&checkpoint, &architecture, Kind::Float, Device::Cpu);
        // The first load warms the page cache; the second is timed.
        drop(load()?);
        let start = Instant::now();
        drop(load()?);
        println!(
            "model load, {bytes:.1} GB file, warm page cache, as fp32: {:.2} s (target 2 s)",
            start.elapsed().as_secs_f64()
        );
    }
    if wants("img2img") {
        let tiny = work.path().join("tiny.safetensors");
        write_tiny_model(&TinyModelSpec::tiny(0), &tiny)?;
        let tiny_arg = tiny.to_string_lossy().into_owned();
        for (label, model, size, steps) in [
            ("tiny model, 512², 20 steps", tiny_arg.as_str(), "512", "20"),
            ("SD 1.5, 256², 4 steps", model_arg.as_str(), "256", "4"),
            ("SD 1.5, 512², 1 step", model_arg.as_str(), "512", "1"),
        ] {
            let (seconds, rss) = job_process(
                &sdhost,
                &[
                    "img2img",
                    "--model",
                    model,
                    "--init-image",
                    &init_arg,
                    "--width",
                    size,
                    "--height",
                    size,
                    "--steps",
                    steps,
                    "--denoising-strength",
                    "1",
                    "--seed",
                    "1",
                    "--threads",
                    &threads,
                    "--out-dir",
                    &out_arg,
                ],
            )?;
            println!("img2img process, {label}: {seconds:.1} s, peak RSS {rss:.0} MiB");
        }
    }
    if wants("drift") {
        bf16_drift(work.path())?;
    }
    let needs_model = wants("scaling") || wants("inpaint");
    if needs_model {
        let generation = GenerationModel::load(model, Device::Cpu, Kind::Float, None)?;
        let registry = SamplerRegistry::load(&PluginPaths::discover(None));
        let time_job = |params: &Img2ImgParams, init: &RgbImage, mask: Option<&GrayImage>| {
            let start = Instant::now();
            run_img2img(&generation, &registry, params, init, mask, &mut |_| {
                Flow::Continue
            })
            .map(|_| start.elapsed().as_secs_f64())
            .context("benchmark job")
        };
        if wants("scaling") {
            let init = picture(256, 256);
            print!("img2img SD 1.5 256², 8 steps, time by denoising strength:");
            for strength in [0.25, 0.5, 0.75, 1.0] {
                let seconds = time_job(&params(256, 256, 8, strength), &init, None)?;
                let run = (strength.min(0.999) * 8.0) as usize + 1;
                print!(" {strength}: {seconds:.1} s ({run} steps)");
            }
            println!();
        }
        if wants("inpaint") {
            let plain = time_job(&params(512, 512, 2, 0.75), &picture(512, 512), None)?;
            let big = picture(4096, 4096);
            let mut mask = GrayImage::new(4096, 4096);
            for y in 1900..2156 {
                for x in 1900..2156 {
                    mask.put_pixel(x, y, image::Luma([255]));
                }
            }
            let inpaint = Img2ImgParams {
                inpaint: InpaintSettings {
                    only_masked: true,
                    ..InpaintSettings::default()
                },
                ..params(512, 512, 2, 0.75)
            };
            let masked = time_job(&inpaint, &big, Some(&mask))?;
            println!(
                "only-masked inpaint of 256² in 4096² vs img2img 512² (SD 1.5, 2 steps): {masked:.1} s vs {plain:.1} s = {:.2}x (target 1.2x)",
                masked / plain
            );
        }
    }
    if wants("transport") {
        transport(&sdhost, &model_arg, work.path())?;
    }
    Ok(())
}

/// How far bf16 moves an image from fp32: the same img2img job on a tiny model in both dtypes,
/// mean absolute pixel difference (0-255).
fn bf16_drift(dir: &Path) -> anyhow::Result<()> {
    let tiny = dir.join("tiny-drift.safetensors");
    write_tiny_model(&TinyModelSpec::tiny(3), &tiny)?;
    let registry = SamplerRegistry::load(&PluginPaths::discover(None));
    let init = picture(128, 128);
    let job = |kind: Kind| -> anyhow::Result<RgbImage> {
        let model = GenerationModel::load(&tiny, Device::Cpu, kind, None)?;
        let outcome = run_img2img(
            &model,
            &registry,
            &params(128, 128, 10, 0.6),
            &init,
            None,
            &mut |_| Flow::Continue,
        )?;
        Ok(outcome.images.into_iter().next().context("an image")?.image)
    };
    let (fp32, bf16) = (job(Kind::Float)?, job(Kind::BFloat16)?);
    let total: u64 = fp32
        .as_raw()
        .iter()
        .zip(bf16.as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    println!(
        "bf16 image drift vs fp32 (tiny model, 128², 10 steps, strength 0.6): mean |Δ| {:.2} of 255",
        total as f64 / fp32.as_raw().len() as f64
    );
    Ok(())
}

/// Round trip of a 4096² RGBA layer plus its Y8 mask through the daemon's Unix socket with no
/// generation: the request is read, its images decoded and checked, and refused by a limit
/// (batch size over the maximum), which is the daemon's answer.
fn transport(sdhost: &Path, model: &str, dir: &Path) -> anyhow::Result<()> {
    let socket = dir.join("bench.sock");
    let mut daemon = Command::new(sdhost)
        .args(["serve", "--model", model, "--socket"])
        .arg(&socket)
        .env("SDHOST_CACHE_DIR", dir.join("cache"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = (|| -> anyhow::Result<()> {
        let start = Instant::now();
        let mut stream = loop {
            match std::os::unix::net::UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                Err(_) if start.elapsed().as_secs() < 120 => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Err(e) => return Err(e.into()),
            }
        };
        let limits = FrameLimits {
            max_payload: 1 << 30,
        };
        write_frame(
            &mut stream,
            &serde_json::json!({"type": "hello", "protocol": 1}),
            &[],
        )?;
        read_frame(&mut stream, limits)?;
        let side = 4096u32;
        let image = vec![128u8; (side * side * 4) as usize];
        let mask = vec![255u8; (side * side) as usize];
        let attachment = |name: &str, format, bytes: &Vec<u8>| Attachment {
            name: name.into(),
            format,
            width: side,
            height: side,
            length: bytes.len() as u64,
        };
        let attachments = [
            (
                attachment("image", PixelFormat::Rgba8, &image),
                image.clone(),
            ),
            (attachment("mask", PixelFormat::Y8, &mask), mask.clone()),
        ];
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            write_frame(
                &mut stream,
                &serde_json::json!({"type": "img2img", "params": {"batch_size": 1000}}),
                &attachments,
            )?;
            let answer = read_frame(&mut stream, limits)?;
            anyhow::ensure!(
                answer.header["code"] == "limit",
                "unexpected {}",
                answer.header
            );
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "socket round trip of a 4096² RGBA layer + Y8 mask (80 MiB), no compute: {:.0} ms median (target 150 ms)",
            times[times.len() / 2]
        );
        Ok(())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    result
}
