//! The daemon's transport: a large layer's round trip through the Unix socket with no
//! compute, and how fast progress events with live previews arrive.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::reference::median;
use crate::daemon::protocol::{
    read_frame, write_frame, Attachment, Frame, FrameLimits, PixelFormat,
};
use crate::tiny_model::{write_tiny_model, TinyModelSpec};

/// Frames of any size the bench sends or gets.
const LIMITS: FrameLimits = FrameLimits {
    max_payload: 1 << 30,
};

/// A daemon started for the benchmark, with one connection that has said hello; killed on drop.
struct BenchDaemon {
    process: Child,
    stream: UnixStream,
}

impl BenchDaemon {
    fn start(sdhost: &Path, model: &str, dir: &Path) -> anyhow::Result<Self> {
        let socket = dir.join(format!("bench-{}.sock", std::process::id()));
        let mut process = Command::new(sdhost)
            .args(["serve", "--model", model, "--socket"])
            .arg(&socket)
            .env("SDHOST_CACHE_DIR", dir.join("cache"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let start = Instant::now();
        let mut stream = loop {
            match UnixStream::connect(&socket) {
                Ok(stream) => break stream,
                Err(_) if start.elapsed().as_secs() < 120 => {
                    if let Some(status) = process.try_wait()? {
                        anyhow::bail!("the bench daemon exited at start ({status})");
                    }
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => {
                    let _ = process.kill();
                    return Err(e.into());
                }
            }
        };
        write_frame(&mut stream, &json!({"type": "hello", "protocol": 1}), &[])?;
        read_frame(&mut stream, LIMITS)?;
        let _ = std::fs::remove_file(&socket);
        Ok(BenchDaemon { process, stream })
    }

    fn send(
        &mut self,
        header: &serde_json::Value,
        attachments: &[(Attachment, Vec<u8>)],
    ) -> anyhow::Result<()> {
        Ok(write_frame(&mut self.stream, header, attachments)?)
    }

    fn receive(&mut self) -> anyhow::Result<Frame> {
        Ok(read_frame(&mut self.stream, LIMITS)?)
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A square uniform attachment of `side` pixels.
fn attachment(name: &str, format: PixelFormat, side: u32, value: u8) -> (Attachment, Vec<u8>) {
    let channels = if format == PixelFormat::Y8 { 1 } else { 4 };
    let bytes = vec![value; (side * side * channels) as usize];
    let header = Attachment {
        name: name.into(),
        format,
        width: side,
        height: side,
        length: bytes.len() as u64,
    };
    (header, bytes)
}

/// Round trip of a 4096² RGBA layer plus its Y8 mask through the daemon's Unix socket with no
/// generation: the request is read, its images decoded and checked, and refused by validation
/// (batch size over the maximum, checked after the attachments are decoded), which is the
/// daemon's answer.
pub fn round_trip(sdhost: &Path, model: &str, dir: &Path) -> anyhow::Result<()> {
    let mut daemon = BenchDaemon::start(sdhost, model, dir)?;
    let attachments = [
        attachment("image", PixelFormat::Rgba8, 4096, 128),
        attachment("mask", PixelFormat::Y8, 4096, 255),
    ];
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        daemon.send(
            &json!({"type": "img2img", "params": {"batch_size": 1000}}),
            &attachments,
        )?;
        let answer = daemon.receive()?;
        anyhow::ensure!(
            answer.header["code"] == "invalid_params",
            "unexpected {}",
            answer.header
        );
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "socket round trip of a 4096² RGBA layer + Y8 mask (80 MiB), no compute: {:.0} ms median (target 150 ms)",
        median(times)
    );
    Ok(())
}

/// What a client sees of one job: seconds from sending it to `done`, and the previews that came
/// with its progress events.
struct JobStream {
    seconds: f64,
    previews: usize,
    preview_span: f64,
}

fn run_job(
    daemon: &mut BenchDaemon,
    preview: Option<&str>,
    side: u32,
    steps: usize,
) -> anyhow::Result<JobStream> {
    let mut header = json!({
        "type": "img2img",
        "params": {"prompt": "a lighthouse", "steps": steps, "denoising_strength": 1.0,
                   "sampler_name": "Euler", "seed": 1},
    });
    if let Some(method) = preview {
        header["preview"] = json!({"method": method, "every": 1});
    }
    daemon.send(
        &header,
        &[attachment("image", PixelFormat::Rgba8, side, 128)],
    )?;
    let start = Instant::now();
    let (mut previews, mut first, mut last) = (0, None, start);
    loop {
        let frame = daemon.receive()?;
        match frame.header["type"].as_str() {
            Some("progress") if frame.attachments.iter().any(|(a, _)| a.name == "preview") => {
                previews += 1;
                last = Instant::now();
                first.get_or_insert(last);
            }
            Some("done") => break,
            Some("error") => anyhow::bail!("bench job failed: {}", frame.header),
            _ => {}
        }
    }
    let span = first.map_or(0.0, |first| (last - first).as_secs_f64());
    Ok(JobStream {
        seconds: start.elapsed().as_secs_f64(),
        previews,
        preview_span: span,
    })
}

/// Progress events with a preview every step of a 20-step job on a tiny model: previews per
/// second as the client receives them, and the job's time against the same job without
/// previews. At 128² the steps are so short that the rate is the preview path's own limit; at
/// 512² it is what an editor user sees.
pub fn preview_rate(sdhost: &Path, dir: &Path) -> anyhow::Result<()> {
    let tiny = dir.join("tiny-previews.safetensors");
    write_tiny_model(&TinyModelSpec::tiny(0), &tiny)?;
    let mut daemon = BenchDaemon::start(sdhost, &tiny.to_string_lossy(), dir)?;
    let steps = 20;
    // A warm-up, then rounds alternating the three kinds of job; medians, as one job's time
    // varies by ±10 % here.
    run_job(&mut daemon, None, 128, 2)?;
    for (side, rounds) in [(128, 5), (512, 1)] {
        let methods = [None, Some("Approx cheap"), Some("Full")];
        let mut jobs: Vec<Vec<JobStream>> = methods.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (method, runs) in methods.iter().zip(&mut jobs) {
                runs.push(run_job(&mut daemon, *method, side, steps)?);
            }
        }
        let seconds = |runs: &[JobStream]| median(runs.iter().map(|j| j.seconds).collect());
        let plain = seconds(&jobs[0]);
        for (method, runs) in methods.iter().zip(&jobs).skip(1) {
            let method = method.unwrap_or_default();
            for job in runs {
                anyhow::ensure!(
                    job.previews == steps,
                    "{method}: {} previews for {steps} steps",
                    job.previews
                );
            }
            let rate = median(
                runs.iter()
                    .map(|j| (j.previews - 1) as f64 / j.preview_span)
                    .collect(),
            );
            let with = seconds(runs);
            println!(
                "progress with a {method} preview every step (tiny model, {side}², {steps} steps, median of {rounds}): {rate:.1} previews/s; job {with:.2} s vs {plain:.2} s without = {:.2}x",
                with / plain
            );
        }
    }
    Ok(())
}
