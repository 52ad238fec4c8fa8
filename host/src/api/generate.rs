//! POST `/sdapi/v1/img2img` and `/sdapi/v1/txt2img`: A1111's request read laxly
//! ([`super::request_model`]), turned into the daemon's job (the same [`GenerateRequest`] or
//! [`Txt2imgJob`] a socket client's request becomes), queued on the daemon's one queue under
//! the client's address, and answered in A1111 v1.10.1's shape: bare base64 PNGs with their
//! infotext, `parameters` = the request, `info` = a JSON string. An interrupted job still
//! answers 200 with what it made.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use image::DynamicImage;
use serde_json::{Map, Value};

use super::body::LimitedBody;
use super::error::{ApiError, ValidationItem};
use super::images::{decode_image, encode_png};
use super::lax;
use super::processed::{image_grid, info, Finished, JobFacts};
use super::request_model::{read_model, Endpoint, Ordered};
use super::sampler_choice;
use super::ApiState;
use crate::daemon::config::Limits;
use crate::daemon::event::{Event, Outgoing, SamplerFacts};
use crate::daemon::live::timestamp_now;
use crate::daemon::model_status::ModelStatus;
use crate::daemon::queue::{Job, JobKind, SubmitError};
use crate::daemon::request::{GenerateRequest, Txt2imgJob};
use crate::daemon::server::check_limits;
use crate::infotext::Infotext;
use crate::pipeline::stop::JobStop;
use crate::prepare::modes::Img2ImgMode;
use crate::request::{GenerationRequest, InvalidRequest};
use crate::rng::{fixed_seed, random_seed};
use crate::scripts::{Script, Tab};

/// This module's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/sdapi/v1/img2img", post(img2img))
        .route("/sdapi/v1/txt2img", post(txt2img))
}

async fn img2img(
    State(state): State<ApiState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    answer(state, client, Endpoint::Img2img, body).await
}

async fn txt2img(
    State(state): State<ApiState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    LimitedBody(body): LimitedBody,
) -> Result<Response, ApiError> {
    answer(state, client, Endpoint::Txt2img, body).await
}

/// Answers a generation request. Parsing, decoding, waiting for the job and encoding are
/// blocking work: off the runtime's threads, so /progress and the rest answer meanwhile.
async fn answer(
    state: ApiState,
    client: SocketAddr,
    endpoint: Endpoint,
    body: Bytes,
) -> Result<Response, ApiError> {
    tokio::task::spawn_blocking(move || generate(&state, client, endpoint, &body))
        .await
        .map_err(|e| ApiError::runtime(format!("the request's thread failed: {e}")))?
}

/// A request read and checked, ready to queue.
struct Prepared {
    /// The job.
    job: JobKind,
    /// Its parameters.
    params: GenerationRequest,
    /// The request as A1111's model read it (`parameters`).
    model: Ordered,
    /// The sampler's resolved name (`info.sampler_name`).
    sampler_name: String,
    /// With a script: whether its jobs' images are returned after its grids (the X/Y/Z
    /// plot's "Include Sub Images").
    script_cells: Option<bool>,
}

/// The whole request: read, queue, wait, answer.
fn generate(
    state: &ApiState,
    client: SocketAddr,
    endpoint: Endpoint,
    body: &[u8],
) -> Result<Response, ApiError> {
    let body = lax::json_object(body)?;
    let prepared = prepare(state, endpoint, &body)?;
    let Prepared {
        job,
        params,
        mut model,
        sampler_name,
        script_cells,
    } = prepared;
    if let Some(checkpoint) = model
        .get("override_settings")
        .get("sd_model_checkpoint")
        .and_then(Value::as_str)
    {
        switch_model(state, client, checkpoint)?;
    }
    let (outcome, job_timestamp) = run(state, client, job)?;
    let facts = {
        let status = state
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        JobFacts {
            model: (status.name.clone(), status.hash.clone()),
            job_timestamp,
            inpainting_conditioning: status.inpainting,
        }
    };
    let send_images = model.get("send_images").as_bool().unwrap_or(true);
    let save_images = model.get("save_images").as_bool().unwrap_or(false);
    let mut infotexts: Vec<String> = Vec::new();
    let mut pictures: Vec<(&image::RgbImage, String)> = Vec::new();
    // A1111 makes the grid only when it would save it (`do_not_save_grid = not save_images`)
    // and there are at least two images; its infotext is the first image's. A script's grids
    // are its own.
    let grid = (script_cells.is_none() && save_images && outcome.len() >= 2)
        .then(|| image_grid(&outcome.iter().map(|f| f.image.clone()).collect::<Vec<_>>()))
        .flatten();
    let index_of_first_image = match script_cells {
        // A script's images: its grids, then its jobs' images when it returns them.
        Some(with_cells) => {
            let returned = outcome.iter().filter(|f| f.grid || with_cells);
            pictures.extend(returned.map(|f| (&f.image, f.infotext.clone())));
            infotexts.extend(pictures.iter().map(|(_, text)| text.clone()));
            usize::from(outcome.iter().any(|f| f.grid))
        }
        None => {
            infotexts.extend(outcome.iter().map(|f| f.infotext.clone()));
            if let Some(grid) = &grid {
                let text = infotexts.first().cloned().unwrap_or_default();
                infotexts.insert(0, text.clone());
                pictures.push((grid, text));
            }
            pictures.extend(outcome.iter().map(|f| (&f.image, f.infotext.clone())));
            usize::from(grid.is_some())
        }
    };
    let images = if send_images {
        pictures
            .iter()
            .map(|(image, text)| encode_png(image, Some(text)))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        Vec::new()
    };
    let info = info(
        &params,
        &sampler_name,
        infotexts,
        index_of_first_image,
        facts,
    );
    if endpoint == Endpoint::Img2img && model.get("include_init_images").as_bool() != Some(true) {
        model.set("init_images", Value::Null);
        model.set("mask", Value::Null);
    }
    let answer = GenerationResponse {
        images,
        parameters: model,
        info: super::pyjson::dumps(&info),
    };
    Ok((StatusCode::OK, axum::Json(answer)).into_response())
}

/// A1111's `ImageToImageResponse` / `TextToImageResponse`.
#[derive(serde::Serialize)]
struct GenerationResponse {
    images: Vec<String>,
    parameters: Ordered,
    info: String,
}

/// An [`InvalidRequest`] as the 422 of the field it names.
fn invalid(error: InvalidRequest) -> ApiError {
    match &error {
        InvalidRequest::Value { field, message } => {
            ApiError::Validation(vec![ValidationItem::body(
                field,
                message.clone(),
                "value_error",
            )])
        }
        other => ApiError::Validation(vec![ValidationItem::body(
            "override_settings",
            other.to_string(),
            "value_error",
        )]),
    }
}

/// A1111 fields that change results and that sdhost does not do: logged when set.
const NOT_DONE: &[&str] = &[
    "restore_faces",
    "tiling",
    "disable_extra_networks",
    "image_cfg_scale",
];

/// Model fields that are not the job's parameters, or that are resolved here.
const NOT_PARAMS: &[&str] = &[
    "sampler_name",
    "sampler_index",
    "scheduler",
    "override_settings",
    "init_images",
    "mask",
    "infotext",
];

/// What turning a request body into job parameters reads of the server.
pub struct ParamsContext<'a> {
    /// A1111's API defaults with the `/options` settings that are request fields laid over.
    pub base: GenerationRequest,
    /// The samplers the daemon has, for names and their options.
    pub samplers: &'a [SamplerFacts],
    /// The daemon's limits.
    pub limits: &'a Limits,
}

impl<'a> ParamsContext<'a> {
    /// The context of `state`'s server now.
    pub fn of(state: &'a ApiState) -> Self {
        ParamsContext {
            base: super::options::request_base(state),
            samplers: &state.shared.capabilities.samplers,
            limits: &state.shared.limits,
        }
    }
}

/// The job's parameters: A1111's API defaults, the `/options` settings that are request
/// fields, then the request's `infotext`, `override_settings` and its own fields, each over
/// the last (A1111's precedence: an explicit field beats the setting it defaults to).
pub fn parameters(
    context: &ParamsContext,
    model: &Ordered,
    body: &Map<String, Value>,
    fix_seeds: bool,
) -> Result<(GenerationRequest, String), ApiError> {
    let mut base = context.base.clone();
    if let Some(text) = model.get("infotext").as_str() {
        for problem in base.apply_infotext(&Infotext::parse(text)) {
            eprintln!("sdhost: API: infotext: {problem}");
        }
    }
    let mut changes = Map::new();
    if let Some(settings) = model.get("override_settings").as_object() {
        let mut kept = Map::new();
        for (setting, value) in settings {
            match GenerationRequest::setting_field(setting) {
                Some(_) => {
                    kept.insert(setting.clone(), value.clone());
                }
                // The checkpoint is loaded before the job (`switch_model`).
                None if setting == "sd_model_checkpoint" => {}
                None => eprintln!(
                    "sdhost: API: override_settings \"{setting}\" is not a setting sdhost applies; ignored"
                ),
            }
        }
        changes.insert("override_settings".into(), Value::Object(kept));
    }
    for (name, value) in &model.0 {
        let sent = body.get(name).is_some_and(|v| !v.is_null());
        if !sent || value.is_null() || NOT_PARAMS.contains(&name.as_str()) {
            continue;
        }
        if GenerationRequest::is_field(name) || name == "mask_blur" {
            changes.insert(name.clone(), value.clone());
        } else if NOT_DONE.contains(&name.as_str()) && value.as_bool() != Some(false) {
            eprintln!("sdhost: API: \"{name}\" is not supported by sdhost; ignored");
        }
    }
    if let Some(styles) = model.get("styles").as_array().filter(|s| !s.is_empty()) {
        eprintln!("sdhost: API: prompt styles {styles:?} are not supported; ignored");
    }
    let name = [model.get("sampler_name"), model.get("sampler_index")]
        .into_iter()
        .filter_map(Value::as_str)
        .find(|n| !n.trim().is_empty())
        .unwrap_or("Euler");
    let choice = sampler_choice::resolve(context.samplers, name, model.get("scheduler").as_str());
    for warning in &choice.warnings {
        eprintln!("sdhost: API: {warning}");
    }
    // A1111 passes the request's `eta` to samplers that take one (ancestral, SDE, DDIM),
    // instead of the option; the other A1111 sampler fields are overridden by options there.
    if let Some(eta) = model.get("eta").as_f64() {
        let takes_eta = context
            .samplers
            .iter()
            .find(|s| s.name == choice.sampler)
            .is_some_and(|s| s.options.contains_key("eta"));
        if takes_eta {
            changes.insert("sampler_options".into(), serde_json::json!({ "eta": eta }));
        }
    }
    changes.insert("sampler_name".into(), Value::from(choice.sampler.clone()));
    changes.insert("scheduler".into(), Value::from(choice.schedule.label()));
    let mut params = base.overlay(&changes).map_err(invalid)?;
    // Seeds are fixed here, as A1111's `process_images` fixes them, so that `info` can list
    // every planned seed even of a job that stops early.
    if fix_seeds {
        params.seed = fixed_seed(params.seed, random_seed) as i64;
        params.subseed = fixed_seed(params.subseed, random_seed) as i64;
    }
    params.validate(8).map_err(invalid)?;
    check_limits(&params, context.limits)
        .map_err(|e| ApiError::http(StatusCode::PAYLOAD_TOO_LARGE, e.message))?;
    Ok((params, choice.sampler))
}

/// Reads and checks a request (no job is queued when anything is wrong), in A1111's order:
/// the init images' presence, the mask, the script, then the parameters.
fn prepare(
    state: &ApiState,
    endpoint: Endpoint,
    body: &Map<String, Value>,
) -> Result<Prepared, ApiError> {
    let model = read_model(endpoint, body)?;
    let images = match endpoint {
        Endpoint::Img2img => Some(read_images(state, &model)?),
        Endpoint::Txt2img => None,
    };
    let script = match model.get("script_name").as_str().filter(|s| !s.is_empty()) {
        Some(name) => {
            let args = model
                .get("script_args")
                .as_array()
                .cloned()
                .unwrap_or_default();
            let tab = match endpoint {
                Endpoint::Img2img => Tab::Img2img,
                Endpoint::Txt2img => Tab::Txt2img,
            };
            // A1111 answers 422 for a name no script has; sdhost also for arguments that do
            // not fit the script, before anything is queued.
            let script = Script::from_api(name, &args, tab)
                .map_err(|e| ApiError::http(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
            Some(script)
        }
        None => None,
    };
    let script_cells = script.as_ref().map(Script::returns_job_images);
    if let Some(scripts) = model.get("alwayson_scripts").as_object() {
        for name in scripts.keys() {
            // A1111 refuses unknown ones (422); clients send Forge's and extensions' names
            // unasked, so sdhost runs the job without them and says so.
            eprintln!("sdhost: API: always-on script \"{name}\" is not available; ignored");
        }
    }
    // "Keep -1 for seeds": the plot's cells draw their own random seeds.
    let fix_seeds = !matches!(&script, Some(Script::XyzPlot(args)) if args.no_fixed_seeds);
    let (params, sampler_name) = parameters(&ParamsContext::of(state), &model, body, fix_seeds)?;
    let job = match images {
        Some((image, mask)) => JobKind::Generate(Box::new(GenerateRequest {
            mode: Img2ImgMode::implied(false, mask.is_some()),
            params: params.clone(),
            image,
            mask,
            sketch: None,
            preview: None,
            script,
        })),
        None => txt2img_job(&params, script),
    };
    Ok(Prepared {
        job,
        params,
        model,
        sampler_name,
        script_cells,
    })
}

/// A txt2img job (with Hires. fix when its parameters enable it) of `params`, run by
/// `script` when there is one.
fn txt2img_job(params: &GenerationRequest, script: Option<Script>) -> JobKind {
    JobKind::Txt2img(Box::new(Txt2imgJob {
        params: params.clone(),
        preview: None,
        script,
    }))
}

/// img2img's init image (the first of `init_images`; the others are checked and ignored)
/// and mask (`""` is none), each checked against the pixel limit before decoding.
fn read_images(
    state: &ApiState,
    model: &Ordered,
) -> Result<(DynamicImage, Option<DynamicImage>), ApiError> {
    let Some(init_images) = model.get("init_images").as_array() else {
        return Err(ApiError::http(
            StatusCode::NOT_FOUND,
            "Init image not found",
        ));
    };
    let max_pixels = state.shared.limits.max_pixels;
    let mask = match model.get("mask").as_str() {
        Some(text) if !text.is_empty() => Some(decode_image(text, max_pixels)?),
        _ => None,
    };
    let mut first = None;
    for (i, item) in init_images.iter().enumerate() {
        let Some(text) = item.as_str() else {
            return Err(ApiError::Validation(vec![ValidationItem {
                loc: vec![
                    Value::from("body"),
                    Value::from("init_images"),
                    Value::from(i),
                ],
                msg: "str type expected".into(),
                kind: "type_error.str".into(),
            }]));
        };
        let image = decode_image(text, max_pixels)?;
        if first.is_none() {
            first = Some(image);
        } else {
            eprintln!("sdhost: API: init image {i} ignored: sdhost uses the first");
        }
    }
    let image =
        first.ok_or_else(|| ApiError::http(StatusCode::NOT_FOUND, "Init image not found"))?;
    Ok((image, mask))
}

/// Whether `alias` (a title `name.safetensors [hash]`, a name, a file name or a short hash)
/// names the loaded model.
fn names_loaded(status: &ModelStatus, alias: &str) -> bool {
    let bare = alias
        .strip_suffix(']')
        .and_then(|a| a.rsplit_once(" ["))
        .map_or(alias, |(name, _)| name);
    let file = status.path.file_name().map(|n| n.to_string_lossy());
    let stem = status.path.file_stem().map(|n| n.to_string_lossy());
    [alias, bare].iter().any(|given| {
        *given == status.name
            || file.as_deref() == Some(*given)
            || stem.as_deref() == Some(*given)
            || (!status.hash.is_empty() && *given == status.hash)
    })
}

/// `override_settings.sd_model_checkpoint`: loads that model first (it stays loaded after
/// the job, as in A1111) unless it is the loaded one; a name no model has is ignored, as
/// A1111's `process_images` ignores it.
fn switch_model(state: &ApiState, client: SocketAddr, checkpoint: &str) -> Result<(), ApiError> {
    let loaded = {
        let status = state
            .shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        names_loaded(&status, checkpoint)
    };
    if loaded {
        return Ok(());
    }
    let (events, received) = crossbeam_channel::unbounded::<Outgoing>();
    submit(
        state,
        client,
        JobKind::SelectModel(checkpoint.to_string()),
        events,
    )?;
    for outgoing in received {
        match outgoing.event {
            Event::Done { .. } | Event::Cancelled { .. } => return Ok(()),
            Event::Error { message, .. } => {
                eprintln!("sdhost: API: override_settings.sd_model_checkpoint: {message}; ignored");
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Queues a job of client `client` whose events go to `events`.
pub(super) fn submit(
    state: &ApiState,
    client: SocketAddr,
    kind: JobKind,
    events: crossbeam_channel::Sender<Outgoing>,
) -> Result<(), ApiError> {
    let shared = &state.shared;
    let job = Job {
        id: shared.next_job_id(),
        request_id: Value::from(format!("http {client}")),
        conn: state.conn_of(client.ip()),
        kind,
        stop: JobStop::new(),
        events,
    };
    shared.queue.submit(job, |_, _| {}).map_err(|error| {
        let status = match error {
            SubmitError::Full | SubmitError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::http(status, error.to_string())
    })
}

/// Queues `request` as client `client`'s job and waits for its images: all of them, or
/// those made before an interrupt; the job's start time as A1111's `job_timestamp`.
fn run(
    state: &ApiState,
    client: SocketAddr,
    request: JobKind,
) -> Result<(Vec<Finished>, String), ApiError> {
    let (events, received) = crossbeam_channel::unbounded::<Outgoing>();
    submit(state, client, request, events)?;
    let mut finished = Vec::new();
    let mut timestamp = timestamp_now();
    for outgoing in received {
        match outgoing.event {
            Event::Started { .. } => timestamp = timestamp_now(),
            Event::Result {
                index,
                seed,
                infotext,
                grid,
                ..
            } => {
                // The worker sends the image as the first attachment, RGBA.
                let Some((attachment, rgba)) = outgoing.attachments.into_iter().next() else {
                    continue;
                };
                let Some(image) =
                    image::RgbaImage::from_raw(attachment.width, attachment.height, rgba)
                else {
                    continue;
                };
                finished.push(Finished {
                    index,
                    seed,
                    grid,
                    image: DynamicImage::ImageRgba8(image).to_rgb8(),
                    infotext,
                });
            }
            Event::Done { .. } | Event::Cancelled { .. } => {
                // A script's grids first, as A1111's `Processed` lists them.
                finished.sort_by_key(|f: &Finished| (!f.grid, f.index));
                return Ok((finished, timestamp));
            }
            Event::Error { message, .. } => return Err(ApiError::runtime(message)),
            _ => {}
        }
    }
    Err(ApiError::runtime("the job ended without an answer"))
}
