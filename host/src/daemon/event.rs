//! What the daemon sends (docs/protocol.md): [`Event`], one variant per wire `type`, whose
//! serde form is the frame header. The schema lives here; a test holds the doc to it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use sdhost_plugin_api::{OptionValue, ScheduleInput};
use serde::Serialize;
use serde_json::Value;

use super::config::Limits;
use super::protocol::{Attachment, PixelFormat};
use crate::extra_networks::facts::NetworkFacts;
use crate::pipeline::preview::PreviewMethod;
use crate::prepare::modes::Img2ImgMode;
use crate::request::{FieldInfo, GenerationRequest};
use crate::sampling::plugins::SamplerRegistry;
use crate::sampling::schedule::Schedule;
use crate::scripts::CellAxis;

/// One frame header the daemon sends. Every event repeats the `id` of the request it answers
/// (job events: of the request that queued the job; null when there is none).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The answer to `hello`: the protocol spoken, and everything `list` tells.
    Welcome {
        id: Value,
        protocol: u32,
        /// `sdhost` and its version.
        daemon: String,
        #[serde(flatten)]
        listing: Box<Listing>,
    },
    /// The answer to `list`.
    List {
        id: Value,
        #[serde(flatten)]
        listing: Box<Listing>,
    },
    /// The answer to `ping`.
    Pong { id: Value },
    /// The answer to `png_info`: the infotext in the PNG and its parts (all null without one).
    PngInfo {
        id: Value,
        infotext: Option<String>,
        prompt: Option<String>,
        negative_prompt: Option<String>,
        parameters: Option<BTreeMap<String, String>>,
        /// The infotext read as a generation request (A1111's UI defaults where it is silent;
        /// added within protocol 1), so clients reuse parameters without parsing infotext.
        #[serde(skip_serializing_if = "Option::is_none")]
        request: Option<serde_json::Map<String, Value>>,
        /// What of the infotext this daemon cannot reproduce (a VAE it does not have); absent
        /// when nothing (added within protocol 1).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// A job was accepted with `position` jobs ahead of it.
    Queued {
        id: Value,
        job: u64,
        position: usize,
    },
    /// The worker took the job.
    Started { id: Value, job: u64 },
    /// How far a job is: first the plan, then each sampler step.
    Progress {
        id: Value,
        job: u64,
        /// Sampler steps done, counted over all batches.
        step: usize,
        #[serde(flatten)]
        detail: ProgressDetail,
    },
    /// One finished image (its pixels are the `image` attachment).
    Result {
        id: Value,
        job: u64,
        /// Its position in the job.
        index: usize,
        seed: u64,
        /// A1111's parameters text.
        infotext: String,
        /// Inpainting: where the `patch` attachment goes over the original.
        #[serde(skip_serializing_if = "Option::is_none")]
        patch: Option<Placement>,
        /// A script's grid (an X/Y/Z plot's), sent after the images of its jobs; `index`
        /// counts grids from 0 (absent: an ordinary image).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        grid: bool,
        /// An X/Y/Z plot cell's image: its axis values, X then Y then Z, "Nothing" axes left
        /// out (absent: not a cell's image).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        cell: Vec<CellAxis>,
    },
    /// Something the user should know about a job that still runs: a LoRA that was not
    /// found, keys of a network that match no layer … (added within protocol 1).
    Warning {
        id: Value,
        job: u64,
        /// For people.
        message: String,
    },
    /// The job ended normally.
    Done {
        id: Value,
        job: u64,
        #[serde(flatten)]
        outcome: DoneOutcome,
    },
    /// The job was cancelled after `images` images.
    Cancelled { id: Value, job: u64, images: usize },
    /// A request was refused, or a job failed.
    Error {
        id: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        job: Option<u64>,
        code: ErrorCode,
        /// For people.
        message: String,
    },
}

impl Event {
    /// An `error` answering request `id` (of job `job`, when a job failed).
    pub fn error(
        id: &Value,
        job: Option<u64>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Event::Error {
            id: id.clone(),
            job,
            code,
            message: message.into(),
        }
    }

    /// Every `type` an event can have, from the schema (for docs and their test).
    pub fn types() -> Vec<String> {
        super::protocol::message_types::<Event>()
    }
}

/// What a `progress` event says besides its step.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ProgressDetail {
    /// The first event of a job (step 0): how many steps and images are coming.
    Planned {
        /// Sampler steps over all batches.
        total: usize,
        images: usize,
    },
    /// After a sampler step of batch `batch`.
    Step {
        batch: usize,
        /// Present when this step carries a live preview (the `preview` attachment).
        #[serde(skip_serializing_if = "Option::is_none")]
        preview: Option<PreviewFacts>,
    },
}

/// The live preview on a `progress` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct PreviewFacts {
    pub width: u32,
    pub height: u32,
    /// The previewed image's position in the job (the `index` its `result` will have).
    pub index: usize,
}

/// Where a patch goes over the original image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Placement {
    pub x: u32,
    pub y: u32,
}

/// What a `done` event reports.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum DoneOutcome {
    /// An img2img job: how many images it made, and what it was asked for and did not do
    /// (an extra network or a VAE not found or not loadable; omitted when nothing).
    Images {
        images: usize,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// A `select_model` job: the model now loaded.
    Model { model: String, hash: String },
    /// An `interrogate` job: the prompt A1111's button writes, and the method that made it.
    Caption { caption: String, method: String },
}

/// The `code` of an `error` event: what went wrong, for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a frame; the connection is closed.
    Framing,
    /// A complete frame with an invalid header or attachment sizes.
    BadFrame,
    /// A request before `hello`.
    HelloRequired,
    /// The `hello` names another protocol version; the connection is closed.
    ProtocolVersion,
    /// A TCP `hello` without the right token; the connection is closed.
    Unauthorized,
    /// An unknown request `type`.
    UnknownRequest,
    /// A missing or ill-typed field, an unknown parameter, an undecodable image.
    BadRequest,
    /// More than the daemon allows (pixels, images, prompt, connections).
    Limit,
    /// The queue is full.
    QueueFull,
    /// The daemon is stopping: the job or connection ends.
    ShuttingDown,
    /// `cancel` of a job this connection does not have.
    UnknownJob,
    /// The job's parameters cannot run.
    InvalidParams,
    /// The mask selects nothing or cannot be composited.
    BadMask,
    /// The device ran out of memory.
    OutOfMemory,
    /// A sampler plugin failed.
    SamplerFailed,
    /// `select_model` named no known model.
    UnknownModel,
    /// `select_model` could not load the model.
    ModelLoadFailed,
    /// Any other failure of a job.
    Internal,
}

impl ErrorCode {
    /// Every code, from the schema (for docs and their test).
    pub fn all() -> Vec<String> {
        super::protocol::unit_values::<ErrorCode>()
    }
}

/// An event and the attachments its frame carries.
#[derive(Debug)]
pub struct Outgoing {
    /// The header.
    pub event: Event,
    /// Attachments with their bytes, in order.
    pub attachments: Vec<(Attachment, Vec<u8>)>,
}

impl From<Event> for Outgoing {
    fn from(event: Event) -> Self {
        Outgoing {
            event,
            attachments: Vec::new(),
        }
    }
}

/// What `welcome` and `list` tell: the loaded model, the others, and the capabilities.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Listing {
    /// The loaded model.
    pub model: ModelFacts,
    /// Models `select_model` can load.
    pub models: Vec<String>,
    /// Every LoRA, LyCORIS, hypernetwork and VAE file of the model folders with what a picker
    /// shows of it (docs/protocol.md, Networks). `sd_vae` takes `Automatic`, `None` or a
    /// `vae` entry's name.
    pub networks: Vec<NetworkFacts>,
    /// The names `upscale` takes, as A1111's `/sdapi/v1/upscalers` lists them: None, Lanczos,
    /// Nearest, then the model upscalers of the upscaler folders (added within protocol 1).
    pub upscalers: Vec<String>,
    #[serde(flatten)]
    pub capabilities: Capabilities,
}

/// What clients see of the loaded model.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ModelFacts {
    /// Infotext name.
    pub name: String,
    /// Short hash.
    pub hash: String,
    /// Whether it is the random-weight demo model (tell the user).
    pub demo: bool,
    /// Embeddings its prompts can use.
    pub embeddings: Vec<String>,
}

/// What the daemon can do, fixed while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Capabilities {
    /// Samplers with their plugin and options.
    pub samplers: Vec<SamplerFacts>,
    /// Schedule labels.
    pub schedules: Vec<String>,
    /// The img2img modes.
    pub modes: Vec<String>,
    /// Every field `params` takes, with its doc and A1111's UI default: clients build their
    /// dialogs and defaults from this rather than from a copy.
    #[schemars(with = "Vec<Value>")]
    pub request_fields: &'static [FieldInfo],
    /// `resize_mode` names.
    pub resize_modes: Vec<String>,
    /// Attachment formats.
    pub formats: Vec<PixelFormat>,
    /// Methods `img2img`'s `preview` takes.
    pub preview_methods: Vec<String>,
    /// Limits on requests.
    pub limits: Limits,
    /// A1111's `options` of each sampler by name, as `/sdapi/v1/samplers` shows them (the HTTP
    /// API's; not part of the socket protocol).
    #[serde(skip)]
    #[schemars(skip)]
    pub a1111_sampler_options: BTreeMap<String, Vec<(String, String)>>,
}

/// A1111's `options` dict of a sampler (`sd_samplers_kdiffusion.samplers_k_diffusion`), made
/// from its flags, in A1111's key order; booleans as Python prints them.
fn a1111_sampler_options(info: &sdhost_plugin_api::SamplerInfo) -> Vec<(String, String)> {
    let mut options = Vec::new();
    let schedule = info.default_schedule.as_ref().into_option();
    // A1111 names a schedule only for k-diffusion samplers that default to one (LCM's own
    // schedule is not one of its scheduler list).
    if let Some(schedule) = schedule.filter(|s| Schedule::from_name(s).is_ok()) {
        options.push(("scheduler".to_string(), schedule.to_string()));
    }
    let flags = [
        ("discard_next_to_last_sigma", info.discard_penultimate_sigma),
        ("uses_ensd", info.uses_ensd),
        ("second_order", info.second_order),
        ("brownian_noise", info.brownian),
    ];
    for (flag, on) in flags {
        if on {
            options.push((flag.to_string(), "True".to_string()));
        }
    }
    // The one A1111 option no flag carries: the SDE solver of its "Heun" variant.
    if info.name.as_str() == "DPM++ 2M SDE Heun" {
        options.push(("solver_type".to_string(), "heun".to_string()));
    }
    options
}

/// One sampler as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct SamplerFacts {
    /// A1111's name.
    pub name: String,
    /// Other names it answers to.
    pub aliases: Vec<String>,
    /// The plugin it comes from.
    pub plugin: String,
    /// The schedule `Automatic` means for it.
    pub default_schedule: Option<String>,
    /// Whether it samples on timesteps rather than sigmas.
    pub timesteps: bool,
    /// Its options and their defaults.
    pub options: BTreeMap<String, OptionDefault>,
}

/// A sampler option's default.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OptionDefault {
    /// A number (flags are 0 and 1).
    Number(f64),
    /// A word.
    Text(String),
}

/// A1111's resize modes by name, in index order.
const RESIZE_MODES: [&str; 4] = [
    "just-resize",
    "crop-and-resize",
    "resize-and-fill",
    "latent-upscale",
];

impl Capabilities {
    /// The capabilities of a daemon with these samplers and limits.
    pub fn new(registry: &SamplerRegistry, limits: &Limits) -> Self {
        let samplers = registry
            .samplers()
            .map(|found| {
                let info = found.info;
                SamplerFacts {
                    name: info.name.to_string(),
                    aliases: info.aliases.iter().map(|a| a.to_string()).collect(),
                    plugin: found.plugin.name.clone(),
                    default_schedule: info
                        .default_schedule
                        .as_ref()
                        .into_option()
                        .map(|s| s.to_string()),
                    timesteps: info.input == ScheduleInput::Timesteps,
                    options: info
                        .options
                        .iter()
                        .map(|o| {
                            let default = match &o.default {
                                OptionValue::Number(n) => OptionDefault::Number(*n),
                                OptionValue::Text(t) => OptionDefault::Text(t.to_string()),
                            };
                            (o.name.to_string(), default)
                        })
                        .collect(),
                }
            })
            .collect();
        let names = |labels: &mut dyn Iterator<Item = &'static str>| {
            labels.map(String::from).collect::<Vec<_>>()
        };
        Capabilities {
            samplers,
            schedules: names(&mut Schedule::ALL.iter().map(|s| s.label())),
            modes: names(&mut Img2ImgMode::ALL.iter().map(|m| m.name())),
            request_fields: GenerationRequest::fields(),
            resize_modes: names(&mut RESIZE_MODES.into_iter()),
            formats: vec![PixelFormat::Rgba8, PixelFormat::Y8, PixelFormat::Png],
            preview_methods: names(&mut PreviewMethod::ALL.iter().map(|m| m.label())),
            limits: limits.clone(),
            a1111_sampler_options: registry
                .samplers()
                .map(|found| {
                    let info = found.info;
                    (info.name.to_string(), a1111_sampler_options(info))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The header an event is sent with.
    fn header(event: Event) -> Value {
        serde_json::to_value(event).unwrap()
    }

    #[test]
    fn job_events_keep_their_wire_form() {
        let id = json!(7);
        assert_eq!(
            header(Event::Queued {
                id: id.clone(),
                job: 3,
                position: 1
            }),
            json!({"type": "queued", "id": 7, "job": 3, "position": 1})
        );
        assert_eq!(
            header(Event::Started {
                id: id.clone(),
                job: 3
            }),
            json!({"type": "started", "id": 7, "job": 3})
        );
        assert_eq!(
            header(Event::Progress {
                id: id.clone(),
                job: 3,
                step: 0,
                detail: ProgressDetail::Planned {
                    total: 40,
                    images: 4
                }
            }),
            json!({"type": "progress", "id": 7, "job": 3, "step": 0, "total": 40, "images": 4})
        );
        assert_eq!(
            header(Event::Progress {
                id: id.clone(),
                job: 3,
                step: 5,
                detail: ProgressDetail::Step {
                    batch: 1,
                    preview: None
                }
            }),
            json!({"type": "progress", "id": 7, "job": 3, "step": 5, "batch": 1})
        );
        assert_eq!(
            header(Event::Progress {
                id: id.clone(),
                job: 3,
                step: 6,
                detail: ProgressDetail::Step {
                    batch: 1,
                    preview: Some(PreviewFacts {
                        width: 6,
                        height: 5,
                        index: 2
                    })
                }
            }),
            json!({"type": "progress", "id": 7, "job": 3, "step": 6, "batch": 1,
                   "preview": {"width": 6, "height": 5, "index": 2}})
        );
        assert_eq!(
            header(Event::Result {
                id: id.clone(),
                job: 3,
                index: 0,
                seed: 42,
                infotext: "a cat".into(),
                patch: Some(Placement { x: 2, y: 50 }),
                grid: false,
                cell: Vec::new(),
            }),
            json!({"type": "result", "id": 7, "job": 3, "index": 0, "seed": 42,
                   "infotext": "a cat", "patch": {"x": 2, "y": 50}})
        );
        assert_eq!(
            header(Event::Result {
                id: id.clone(),
                job: 3,
                index: 1,
                seed: 42,
                infotext: "a cat".into(),
                patch: None,
                grid: false,
                cell: vec![CellAxis {
                    axis: "Steps".into(),
                    value: "10".into()
                }],
            }),
            json!({"type": "result", "id": 7, "job": 3, "index": 1, "seed": 42,
                   "infotext": "a cat", "cell": [{"axis": "Steps", "value": "10"}]})
        );
        assert_eq!(
            header(Event::Done {
                id: id.clone(),
                job: 3,
                outcome: DoneOutcome::Images {
                    images: 4,
                    warnings: Vec::new()
                }
            }),
            json!({"type": "done", "id": 7, "job": 3, "images": 4})
        );
        assert_eq!(
            header(Event::Done {
                id: id.clone(),
                job: 3,
                outcome: DoneOutcome::Images {
                    images: 1,
                    warnings: vec!["hypernetwork `x` not found".into()]
                }
            }),
            json!({"type": "done", "id": 7, "job": 3, "images": 1,
                   "warnings": ["hypernetwork `x` not found"]})
        );
        assert_eq!(
            header(Event::Done {
                id: id.clone(),
                job: 3,
                outcome: DoneOutcome::Model {
                    model: "m".into(),
                    hash: "h".into()
                }
            }),
            json!({"type": "done", "id": 7, "job": 3, "model": "m", "hash": "h"})
        );
        assert_eq!(
            header(Event::Cancelled {
                id: id.clone(),
                job: 3,
                images: 1
            }),
            json!({"type": "cancelled", "id": 7, "job": 3, "images": 1})
        );
        assert_eq!(
            header(Event::error(&id, Some(3), ErrorCode::OutOfMemory, "no")),
            json!({"type": "error", "id": 7, "job": 3, "code": "out_of_memory", "message": "no"})
        );
        assert_eq!(
            header(Event::error(&Value::Null, None, ErrorCode::BadFrame, "x")),
            json!({"type": "error", "id": null, "code": "bad_frame", "message": "x"})
        );
    }

    #[test]
    fn answers_keep_their_wire_form() {
        // No plugins: the sampler rows are the plugins' business (the daemon tests see them).
        let registry = SamplerRegistry::default();
        let limits = Limits::default();
        let listing = Listing {
            model: ModelFacts {
                name: "tiny".into(),
                hash: "abc".into(),
                demo: true,
                embeddings: vec!["e".into()],
            },
            models: vec!["tiny".into()],
            networks: Vec::new(),
            upscalers: vec!["None".into(), "Lanczos".into(), "Nearest".into()],
            capabilities: Capabilities::new(&registry, &limits),
        };
        let welcome = header(Event::Welcome {
            id: json!(1),
            protocol: 1,
            daemon: "sdhost 0".into(),
            listing: Box::new(listing.clone()),
        });
        let mut keys: Vec<&str> = welcome
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "daemon",
                "formats",
                "id",
                "limits",
                "model",
                "models",
                "modes",
                "networks",
                "preview_methods",
                "protocol",
                "request_fields",
                "resize_modes",
                "samplers",
                "schedules",
                "type",
                "upscalers"
            ]
        );
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(
            welcome["model"],
            json!({"name": "tiny", "hash": "abc", "demo": true, "embeddings": ["e"]})
        );
        assert_eq!(welcome["formats"], json!(["rgba8", "y8", "png"]));
        // The connection cap is the daemon's business: a client over it is told so.
        assert_eq!(
            welcome["limits"],
            json!({"max_frame_bytes": limits.max_frame_bytes, "max_pixels": limits.max_pixels,
                   "max_images": limits.max_images, "max_prompt_chars": limits.max_prompt_chars,
                   "queue_capacity": limits.queue_capacity})
        );
        assert_eq!(welcome["samplers"], json!([]));
        assert_eq!(welcome["resize_modes"][3], "latent-upscale");
        assert_eq!(
            welcome["request_fields"].as_array().unwrap().len(),
            GenerationRequest::fields().len()
        );
        let list = header(Event::List {
            id: json!("x"),
            listing: Box::new(listing),
        });
        assert_eq!(list["type"], "list");
        assert_eq!(list["samplers"], welcome["samplers"]);
        assert_eq!(
            header(Event::Pong { id: json!(2) }),
            json!({"type": "pong", "id": 2})
        );
        assert_eq!(
            header(Event::PngInfo {
                id: json!(2),
                infotext: None,
                prompt: None,
                negative_prompt: None,
                parameters: None,
                request: None,
                warnings: Vec::new(),
            }),
            json!({"type": "png_info", "id": 2, "infotext": null, "prompt": null,
                   "negative_prompt": null, "parameters": null})
        );
    }

    #[test]
    fn types_and_codes_come_from_the_schema() {
        let types = Event::types();
        for kind in [
            "welcome",
            "progress",
            "result",
            "error",
            "png_info",
            "cancelled",
            "warning",
        ] {
            assert!(types.iter().any(|t| t == kind), "{kind} in {types:?}");
        }
        assert_eq!(types.len(), 12, "{types:?}");
        let codes = ErrorCode::all();
        assert_eq!(codes.len(), 18, "{codes:?}");
        assert!(codes.iter().any(|c| c == "shutting_down"));
    }
}
