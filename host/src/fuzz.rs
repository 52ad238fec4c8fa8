//! Fuzz targets: each feeds arbitrary bytes to one parser that meets files or requests sdhost
//! did not write, through the calls its front end makes, down to the point where a job would
//! start (the sampling plan). A target returns normally for every input: errors are the
//! expected answer to garbage, and a panic is a finding. `fuzz/` drives them with `cargo afl`
//! (docs/reliability.md); `host/tests/integration/fuzz_corpus.rs` replays the kept corpus and
//! every crash input on each test run.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

use crate::api::generate::{parameters, ParamsContext};
use crate::api::png_info::{parse_generation_parameters, read_info};
use crate::api::request_model::{read_model, Endpoint};
use crate::checkpoint::{detect_family, infer_architecture, verify_structure, Checkpoint};
use crate::daemon::config::Limits;
use crate::daemon::event::{Capabilities, SamplerFacts};
use crate::daemon::protocol::{
    read_frame, Attachment, Frame, FrameError, FrameLimits, PixelFormat,
};
use crate::daemon::request::{parse_request, png_attachment, Request};
use crate::daemon::server::check_limits;
use crate::extra_networks::lora::convert::{
    convert_diffusers_name_to_compvis, match_layer, split_key, LayerIndex,
};
use crate::infotext::Infotext;
use crate::pickle::{embedding_vectors, load_state_dict, TorchFile, Value as PickleValue};
use crate::pipeline::png_info::{png_text, PARAMETERS_KEY};
use crate::prompt::editing::prompt_schedule;
use crate::prompt::emphasis::parse_prompt_attention;
use crate::request::GenerationRequest;
use crate::sampling::noise_levels::NoiseLevels;
use crate::sampling::plan::SamplingPlan;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};
use crate::scripts::xyz::values::{csv_values, expand, ValueKind};
use crate::scripts::{Script, Tab};

/// One fuzz target: its name (the corpus folder `fuzz/corpus/<name>`) and its entry point.
pub struct Target {
    /// The target's name.
    pub name: &'static str,
    /// What it reads, for `sdhost-fuzz --list` and docs/reliability.md.
    pub input: &'static str,
    /// Runs one input.
    pub run: fn(&[u8]),
}

/// Every target, in the order of the list.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame",
        input: "a byte stream of socket frames, each parsed into a request and its job",
        run: frame,
    },
    Target {
        name: "request",
        input: "a request header's JSON (img2img, txt2img, interrogate …) with test attachments",
        run: request,
    },
    Target {
        name: "api_body",
        input: "an HTTP API body of /sdapi/v1/img2img or txt2img (first byte picks which)",
        run: api_body,
    },
    Target {
        name: "pickle",
        input: "a .ckpt/.pt file: checkpoint, embedding, hypernetwork and upscaler readers",
        run: pickle,
    },
    Target {
        name: "safetensors",
        input: "a .safetensors file: header, tensors, checkpoint architecture",
        run: safetensors,
    },
    Target {
        name: "png_info",
        input: "a PNG file whose text chunks are read as infotext",
        run: png_info,
    },
    Target {
        name: "infotext",
        input: "infotext laid over a request, both ways",
        run: infotext,
    },
    Target {
        name: "prompt",
        input: "a prompt: editing schedule, emphasis, extra-network tags (first byte: steps)",
        run: prompt,
    },
    Target {
        name: "xyz_values",
        input: "an X/Y/Z axis value list (first byte picks the value kind) and script_args JSON",
        run: xyz_values,
    },
    Target {
        name: "lora_keys",
        input: "LoRA file keys, one per line, mapped onto an SD 1 checkpoint's layers",
        run: lora_keys,
    },
];

/// The target named `name`.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Small limits, so that inputs that pass them stay cheap to run.
fn limits() -> Limits {
    Limits {
        max_frame_bytes: 1 << 20,
        max_pixels: 1 << 16,
        ..Limits::default()
    }
}

/// The built-in samplers (the plugin beside the executable, or `SDHOST_FUZZ_SAMPLERS`).
fn registry() -> &'static SamplerRegistry {
    static REGISTRY: OnceLock<SamplerRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let builtin = std::env::var_os("SDHOST_FUZZ_SAMPLERS")
            .map(PathBuf::from)
            .or(PluginPaths::discover(None).builtin);
        SamplerRegistry::load(&PluginPaths {
            builtin,
            folder: None,
        })
    })
}

fn sampler_facts() -> &'static [SamplerFacts] {
    static FACTS: OnceLock<Vec<SamplerFacts>> = OnceLock::new();
    FACTS.get_or_init(|| Capabilities::new(registry(), &limits()).samplers)
}

/// What a job does with its parameters before its first model call: the daemon's checks and
/// the sampling plan (sampler, schedule and noise levels).
fn plan(params: &GenerationRequest, txt2img: bool) {
    if check_limits(params, &limits()).is_err() {
        return;
    }
    let levels = NoiseLevels::sd_scaled_linear();
    let _ = if txt2img {
        SamplingPlan::txt2img(registry(), &params.sampler, &levels)
    } else {
        SamplingPlan::new(registry(), &params.sampler, &levels)
    };
}

fn frame(data: &[u8]) {
    let mut stream = data;
    let frame_limits = FrameLimits {
        max_payload: limits().max_frame_bytes,
    };
    loop {
        match read_frame(&mut stream, frame_limits) {
            Ok(frame) => serve(frame),
            Err(FrameError::Invalid(_)) => {}
            Err(_) => break,
        }
    }
}

/// What the daemon does with a frame before queueing its job.
fn serve(frame: Frame) {
    let Ok(envelope) = parse_request(frame) else {
        return;
    };
    let max_pixels = limits().max_pixels;
    match envelope.request {
        Request::Img2img(header) => {
            if let Ok(job) = header.into_job(envelope.attachments, max_pixels) {
                plan(&job.params, false);
            }
        }
        Request::Txt2img(header) => {
            if let Ok(job) = header.into_job() {
                plan(&job.params, true);
            }
        }
        Request::Interrogate(header) => {
            let _ = header.into_job(envelope.attachments, max_pixels);
        }
        Request::PngInfo { infotext: sent } => {
            let mut attachments = envelope.attachments;
            let text = match sent {
                Some(text) => Some(text),
                None => png_attachment(&mut attachments)
                    .ok()
                    .and_then(|png| png_text(&png, PARAMETERS_KEY).ok().flatten()),
            };
            if let Some(text) = text {
                infotext(text.as_bytes());
            }
        }
        _ => {}
    }
}

/// A 16×16 test attachment named `name`.
fn attachment(name: &str, format: PixelFormat, bytes_per_pixel: usize) -> (Attachment, Vec<u8>) {
    let bytes: Vec<u8> = (0..16 * 16 * bytes_per_pixel)
        .map(|i| (i * 7 % 256) as u8)
        .collect();
    let described = Attachment {
        name: name.into(),
        format,
        width: 16,
        height: 16,
        length: bytes.len() as u64,
    };
    (described, bytes)
}

fn request(data: &[u8]) {
    let Ok(header) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let attachments = vec![
        attachment("image", PixelFormat::Rgba8, 4),
        attachment("mask", PixelFormat::Y8, 1),
        attachment("sketch", PixelFormat::Rgba8, 4),
    ];
    serve(Frame {
        header,
        attachments,
    });
}

fn api_body(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (endpoint, tab) = if selector % 2 == 0 {
        (Endpoint::Img2img, Tab::Img2img)
    } else {
        (Endpoint::Txt2img, Tab::Txt2img)
    };
    let Ok(body) = crate::api::lax::json_object(body) else {
        return;
    };
    let Ok(model) = read_model(endpoint, &body) else {
        return;
    };
    let max_pixels = limits().max_pixels;
    for key in ["init_images", "mask"] {
        let texts = match model.get(key) {
            Value::Array(items) => items.clone(),
            Value::String(_) => vec![model.get(key).clone()],
            _ => Vec::new(),
        };
        for text in texts.iter().filter_map(Value::as_str) {
            let _ = crate::api::images::decode_image(text, max_pixels);
        }
    }
    if let Some(name) = model.get("script_name").as_str() {
        let args = model
            .get("script_args")
            .as_array()
            .cloned()
            .unwrap_or_default();
        let _ = Script::from_api(name, &args, tab);
    }
    let context = ParamsContext {
        base: GenerationRequest::api_defaults(),
        samplers: sampler_facts(),
        limits: &limits(),
    };
    if let Ok((params, _)) = parameters(&context, &model, &body, true) {
        plan(&params, endpoint == Endpoint::Txt2img);
    }
}

/// `data` in a scratch file of this process named with `extension`.
fn scratch_file(data: &[u8], extension: &str) -> Option<PathBuf> {
    let path = std::env::temp_dir().join(format!("sdhost-fuzz-{}.{extension}", std::process::id()));
    let mut file = std::fs::File::create(&path).ok()?;
    file.write_all(data).ok()?;
    Some(path)
}

/// Tensor references in a pickled value: at most 64, looking at most 10,000 values deep or
/// wide (containers may contain themselves, as in Python).
fn tensor_refs(root: &PickleValue) -> Vec<crate::pickle::TensorRef> {
    let mut found = Vec::new();
    let mut pending = vec![root.clone()];
    let mut visits = 0;
    while let Some(value) = pending.pop() {
        visits += 1;
        if visits > 10_000 || found.len() >= 64 {
            break;
        }
        match value {
            PickleValue::Tensor(t) => found.push(t),
            PickleValue::Tuple(items) => pending.extend(items.iter().cloned()),
            PickleValue::List(items) => pending.extend(items.borrow().iter().cloned()),
            PickleValue::Dict(items) => {
                for (key, value) in items.borrow().iter() {
                    pending.push(key.clone());
                    pending.push(value.clone());
                }
            }
            PickleValue::Object(_, state) => pending.push(state.borrow().clone()),
            _ => {}
        }
    }
    found
}

fn pickle(data: &[u8]) {
    let Some(path) = scratch_file(data, "ckpt") else {
        return;
    };
    if let Ok(file) = TorchFile::open(&path) {
        for t in tensor_refs(&file.root) {
            let _ = file.tensor(&t);
        }
    }
    if let Ok(state) = load_state_dict(&path) {
        for key in state.keys().take(64).map(str::to_owned).collect::<Vec<_>>() {
            let _ = state.tensor(&key);
        }
    }
    let _ = embedding_vectors(&path);
    let _ = crate::extra_networks::hypernetwork::file::load_hypernetwork(
        &path,
        tch::Kind::Float,
        tch::Device::Cpu,
    );
    if let Ok(mut state) = crate::upscale::file::read_state_dict(&path) {
        let _ = crate::upscale::detect::detect(&mut state);
    }
    checkpoint(&path);
}

/// A checkpoint's loading up to its weights: family, architecture, every tensor's shape.
fn checkpoint(path: &std::path::Path) {
    let Ok(ckpt) = Checkpoint::open(path) else {
        return;
    };
    let _ = detect_family(&ckpt);
    if let Ok(architecture) = infer_architecture(&ckpt) {
        let _ = verify_structure(&ckpt, &architecture);
    }
    for key in ckpt.keys().take(64).map(str::to_owned).collect::<Vec<_>>() {
        let _ = ckpt.raw(&key);
    }
}

fn safetensors(data: &[u8]) {
    let Some(path) = scratch_file(data, "safetensors") else {
        return;
    };
    checkpoint(&path);
    let _ = crate::extra_networks::catalog::read_safetensors_metadata(&path);
    let _ = crate::extra_networks::lora::network::read_state_dict(&path);
}

fn png_info(data: &[u8]) {
    if let Ok((text, _)) = read_info(data) {
        let _ = parse_generation_parameters(&text);
    }
    if let Ok(Some(text)) = png_text(data, PARAMETERS_KEY) {
        infotext(text.as_bytes());
    }
}

fn infotext(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = Infotext::parse(&text);
    let _ = parsed.to_text();
    let _ = parse_generation_parameters(&text);
    for mut base in [
        GenerationRequest::ui_defaults(),
        GenerationRequest::txt2img_ui_defaults(),
    ] {
        let _ = base.apply_infotext(&parsed);
        let _ = base.to_object();
        plan(&base, false);
    }
}

fn prompt(data: &[u8]) {
    let Some((&steps, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let (clean, networks) = crate::extra_networks::parse_prompt(&text);
    for (name, calls) in networks.iter() {
        for call in calls {
            if name == "lora" || name == "lyco" {
                let _ = crate::extra_networks::lora::LoraTag::parse(call);
            }
        }
    }
    for scheduled in prompt_schedule(&clean, usize::from(steps).max(1)) {
        let _ = parse_prompt_attention(&scheduled.text);
    }
}

fn xyz_values(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let kind = match selector % 4 {
        0 => ValueKind::Int,
        1 => ValueKind::Float,
        2 => ValueKind::Str,
        _ => ValueKind::Permutations,
    };
    let _ = expand(kind, &csv_values(&text));
    if let Ok(Value::Array(args)) = serde_json::from_str::<Value>(&text) {
        let _ = Script::from_api("X/Y/Z plot", &args, Tab::Img2img);
        let _ = Script::from_api("X/Y/Z plot", &args, Tab::Txt2img);
    }
}

/// The layer keys (no `.weight`) of the tiny SD 1 checkpoint, made once.
fn sd1_layers() -> &'static [String] {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "sdhost-fuzz-sd1-{}.safetensors",
            std::process::id()
        ));
        let spec = crate::tiny_model::TinyModelSpec::tiny(1);
        let keys = crate::tiny_model::write_tiny_model(&spec, &path)
            .ok()
            .and_then(|_| Checkpoint::open(&path).ok())
            .map(|ckpt| {
                ckpt.keys()
                    .filter_map(|k| k.strip_suffix(".weight"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        keys
    })
}

fn lora_keys(data: &[u8]) {
    static INDEX: OnceLock<LayerIndex> = OnceLock::new();
    let index = INDEX.get_or_init(|| {
        LayerIndex::new(
            sd1_layers().iter().map(String::as_str),
            "cond_stage_model.transformer.text_model",
        )
    });
    let text = String::from_utf8_lossy(data);
    for key in text.lines().take(256) {
        let (layer, _part) = split_key(key);
        let _ = convert_diffusers_name_to_compvis(&layer, index.is_sd2());
        let _ = match_layer(&layer, index);
    }
}
