//! The A1111 HTTP API's overhead per 512² img2img request (`--only api`): what a request
//! costs beyond its job (JSON, base64 and PNG decode of the init image, routing, the queue
//! hand-off, PNG and base64 encode of the result with its infotext, the answer's JSON),
//! measured side by side in one run: the same request through the real HTTP server and
//! straight into the daemon's queue, over a worker that answers at once with the init image
//! (a job of no cost), then the real job's time on the tiny model for the share.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use image::{DynamicImage, RgbImage};
use serde_json::json;
use tch::{Device, Kind};

use super::figures::{params, time_job};
use super::reference::median;
use crate::api::images::{decode_image, encode_png};
use crate::api::ApiConfig;
use crate::daemon::catalog::ModelCatalog;
use crate::daemon::config::Limits;
use crate::daemon::event::{Capabilities, DoneOutcome, Event, Outgoing};
use crate::daemon::model_status::ModelStatus;
use crate::daemon::networks::NetworkListing;
use crate::daemon::protocol::{Attachment, PixelFormat};
use crate::daemon::queue::{Job, JobKind};
use crate::daemon::request::GenerateRequest;
use crate::daemon::server::Shared;
use crate::extra_networks::dirs::NetworkDirs;
use crate::pipeline::model::GenerationModel;
use crate::pipeline::stop::JobStop;
use crate::prepare::modes::Img2ImgMode;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};
use crate::tiny_model::{write_tiny_model, TinyModelSpec};

/// The side of the benchmark's images.
const SIDE: u32 = 512;

/// Timed requests per side (after warm-ups).
const ROUNDS: usize = 30;

/// A result's infotext of a typical length.
const INFOTEXT: &str = "a lighthouse on a cliff, (golden hour:1.2), <lora:detail:0.6>\nNegative prompt: blurry, lowres\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.75, RNG: CPU, Version: v1.10.1";

/// A photo-like picture: a smooth gradient with grain, so that its PNG is about as large and
/// as slow to code as a photograph's (a flat gradient compresses far better).
fn photo(side: u32) -> RgbImage {
    let mut state: u32 = 0x2545_f491;
    RgbImage::from_fn(side, side, |x, y| {
        let mut grain = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 17) as i32 - 8
        };
        let channel = |base: u32, noise: i32| (base as i32 + noise).clamp(0, 255) as u8;
        image::Rgb([
            channel(x / 2, grain()),
            channel(y / 2, grain()),
            channel((x + y) / 4 + 64, grain()),
        ])
    })
}

/// The daemon's shared state with no model behind it: the API answers from it and jobs go
/// to [`echo_worker`].
fn bench_shared() -> Arc<Shared> {
    let limits = Limits::default();
    let registry = SamplerRegistry::load(&PluginPaths::discover(None));
    let status = Arc::new(Mutex::new(ModelStatus {
        name: "bench".into(),
        hash: "0000000000".into(),
        path: "bench.safetensors".into(),
        demo: false,
        embeddings: Vec::new(),
        embedding_shapes: Default::default(),
        inpainting: false,
        checkpoints_limit: 1,
    }));
    Arc::new(Shared::new(
        limits.clone(),
        status,
        Capabilities::new(&registry, &limits),
        ModelCatalog::scan(None, None).shared(),
        NetworkListing::start(NetworkDirs::default(), None),
    ))
}

/// A worker whose jobs cost nothing: each answers its init image as the one result, in the
/// real worker's form (RGBA attachment, then `done`).
fn echo_worker(shared: Arc<Shared>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while let Some(job) = shared.queue.next() {
            if let JobKind::Generate(request) = &job.kind {
                let rgba = request.image.to_rgba8();
                let (width, height) = rgba.dimensions();
                let bytes = rgba.into_raw();
                let attachment = Attachment {
                    name: "image".into(),
                    format: PixelFormat::Rgba8,
                    width,
                    height,
                    length: bytes.len() as u64,
                };
                let result = Event::Result {
                    id: job.request_id.clone(),
                    job: job.id,
                    index: 0,
                    seed: 1234,
                    infotext: INFOTEXT.into(),
                    patch: None,
                    grid: false,
                    cell: Vec::new(),
                };
                let _ = job.events.send(Outgoing {
                    event: result,
                    attachments: vec![(attachment, bytes)],
                });
                let done = Event::Done {
                    id: job.request_id.clone(),
                    job: job.id,
                    outcome: DoneOutcome::Images {
                        images: 1,
                        warnings: Vec::new(),
                    },
                };
                let _ = job.events.send(done.into());
            }
            shared.queue.finished();
        }
    })
}

/// One HTTP/1.1 POST of `body` (a fresh connection, as `requests` without a session makes):
/// the status and the answer's size.
fn post(address: SocketAddr, path: &str, body: &[u8]) -> anyhow::Result<(u16, usize)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let status = std::str::from_utf8(answer.get(9..12).unwrap_or_default())?.parse()?;
    Ok((status, answer.len()))
}

/// The same job handed straight to the queue (the image already decoded, as a socket client's
/// attachment is), waiting for its result: the daemon's part that both front ends share.
fn through_queue(shared: &Shared, image: &RgbImage) -> anyhow::Result<()> {
    let (events, received) = crossbeam_channel::unbounded::<Outgoing>();
    let request = GenerateRequest {
        mode: Img2ImgMode::Img2img,
        params: params(SIDE, SIDE, 20, 0.75),
        image: DynamicImage::ImageRgb8(image.clone()),
        mask: None,
        sketch: None,
        preview: None,
        script: None,
    };
    let job = Job {
        id: shared.next_job_id(),
        request_id: json!("bench"),
        conn: 1,
        kind: JobKind::Generate(Box::new(request)),
        stop: JobStop::new(),
        events,
    };
    shared
        .queue
        .submit(job, |_, _| {})
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for outgoing in received {
        if let Event::Done { .. } = outgoing.event {
            return Ok(());
        }
    }
    anyhow::bail!("the bench worker ended without an answer")
}

/// Milliseconds of `f`, median over [`ROUNDS`] calls after two warm-ups.
fn time_ms(mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    f()?;
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// Measures and prints the overhead and its share of a real 512² job (tiny model, 20 steps,
/// strength 0.75, A1111's default), scratch files in `dir`.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let shared = bench_shared();
    let worker = echo_worker(shared.clone());
    let config = ApiConfig::from_flags(
        "127.0.0.1:0",
        None,
        None,
        usize::try_from(shared.limits.max_frame_bytes).unwrap_or(usize::MAX),
    )?;
    let server = crate::api::start(config, shared.clone(), Device::Cpu)?;

    let picture = photo(SIDE);
    let init = encode_png(&picture, None)?;
    // webuiapi's request: the init image as a data URL, its default fields.
    let body = serde_json::to_vec(&json!({
        "init_images": [format!("data:image/png;base64,{init}")],
        "prompt": "a lighthouse on a cliff, (golden hour:1.2)", "negative_prompt": "blurry",
        "steps": 20, "width": SIDE, "height": SIDE, "denoising_strength": 0.75, "seed": 1234,
        "sampler_name": "DPM++ 2M", "scheduler": "automatic", "sampler_index": "DPM++ 2M",
        "cfg_scale": 7.0, "batch_size": 1, "n_iter": 1, "styles": [], "subseed": -1,
        "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
        "override_settings": {}, "alwayson_scripts": {}, "script_args": [], "send_images": true,
    }))?;
    let mut answer_bytes = 0;
    let http = time_ms(|| {
        let (status, size) = post(server.address, "/sdapi/v1/img2img", &body)?;
        anyhow::ensure!(status == 200, "the bench request got {status}");
        answer_bytes = size;
        Ok(())
    })?;
    let queue = time_ms(|| through_queue(&shared, &picture))?;
    let max_pixels = shared.limits.max_pixels;
    let decode = time_ms(|| {
        decode_image(&init, max_pixels)?;
        Ok(())
    })?;
    let encode = time_ms(|| {
        encode_png(&picture, Some(INFOTEXT))?;
        Ok(())
    })?;
    drop(server);
    shared.queue.shutdown();
    let _ = worker.join();

    let overhead = http - queue;
    println!(
        "A1111 API overhead per 512² img2img request (request {:.2} MB, answer {:.2} MB; median of {ROUNDS}): HTTP {http:.1} ms − the same job straight into the queue {queue:.1} ms = {overhead:.1} ms (target 15 ms); of it PNG+base64 decode {decode:.1} ms, PNG+base64 encode {encode:.1} ms",
        body.len() as f64 / 1e6,
        answer_bytes as f64 / 1e6,
    );

    let tiny = dir.join("tiny-api.safetensors");
    write_tiny_model(&TinyModelSpec::tiny(0), &tiny)?;
    let model = GenerationModel::load(&tiny, Device::Cpu, Kind::Float, None)?;
    let registry = SamplerRegistry::load(&PluginPaths::discover(None));
    let job = time_job(
        &model,
        &registry,
        &params(SIDE, SIDE, 20, 0.75),
        &picture,
        None,
    )?;
    println!(
        "  share of the job: {:.2} % of a 512² img2img on the tiny model (20 steps, strength 0.75: {job:.2} s)",
        overhead / (job * 1e3) * 100.0
    );
    Ok(())
}
