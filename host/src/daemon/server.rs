//! Listening and connections: the Unix socket (per-user folder 0700, socket 0600, one daemon
//! per socket, stale files replaced), optional TCP with a token, and per connection a reader
//! (requests) and a writer (events) thread. A connection that ends cancels its jobs.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;

use super::config::Limits;
use super::protocol::{read_frame, write_frame, FrameError, FrameLimits, PROTOCOL_VERSION};
use super::queue::{CancelOutcome, ConnId, Job, JobKind, Outgoing, Scheduler};
use super::request::{parse_request, Request, RequestError};
use super::worker::{error_event, ModelStatus};
use crate::pipeline::png_info::{png_text, PARAMETERS_KEY};

/// Why the daemon could not start listening.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another daemon answers on the socket.
    #[error("another sdhost daemon is already listening on {0}; stop it first, or pass --socket with another path")]
    AlreadyRunning(PathBuf),
    /// The socket or its folder could not be made.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the Unix socket: makes its folder (0700 when created), replaces a stale socket file,
/// refuses when a daemon answers there, and makes the socket 0600.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ListenError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ListenError::Io { path, source }
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ListenError::AlreadyRunning(path.to_path_buf()));
        }
        // Nobody answers: a daemon that died left it behind.
        std::fs::remove_file(path).map_err(io(path))?;
    }
    let listener = UnixListener::bind(path).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    Ok(listener)
}

/// The TCP token: read from `path`, or made (32 random bytes, hex) and stored 0600.
pub fn load_or_create_token(path: &Path) -> std::io::Result<String> {
    if let Ok(token) = std::fs::read_to_string(path) {
        let token = token.trim().to_string();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    file.write_all(token.as_bytes())?;
    Ok(token)
}

/// What every connection shares.
pub struct Shared {
    /// The job queue.
    pub queue: Scheduler,
    /// The loaded model as clients see it.
    pub status: Arc<Mutex<ModelStatus>>,
    /// Static capabilities (samplers, schedules, modes, limits) for `welcome` and `list`.
    pub capabilities: serde_json::Value,
    /// Selectable models.
    pub models: Vec<String>,
    /// Limits.
    pub limits: Limits,
    next_conn: AtomicU64,
    next_job: AtomicU64,
}

impl Shared {
    /// Shared state over a queue.
    pub fn new(
        limits: Limits,
        status: Arc<Mutex<ModelStatus>>,
        capabilities: serde_json::Value,
        models: Vec<String>,
    ) -> Self {
        Shared {
            queue: Scheduler::new(limits.queue_capacity),
            status,
            capabilities,
            models,
            limits,
            next_conn: AtomicU64::new(1),
            next_job: AtomicU64::new(1),
        }
    }

    fn model_json(&self) -> serde_json::Value {
        let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "name": status.name, "hash": status.hash, "demo": status.demo,
            "embeddings": status.embeddings,
        })
    }

    fn listing(&self) -> serde_json::Value {
        let mut listing = self.capabilities.clone();
        listing["model"] = self.model_json();
        listing["models"] = json!(self.models);
        listing
    }
}

/// Serves one connection until it ends. `token`: required in `hello` (TCP).
pub fn serve_connection<S>(stream: S, shared: Arc<Shared>, token: Option<String>)
where
    S: Read + Write + Send + 'static + TryCloneStream,
{
    let conn: ConnId = shared.next_conn.fetch_add(1, Ordering::SeqCst);
    let (sender, receiver) = crossbeam_channel::unbounded::<Outgoing>();
    let Ok(mut write_half) = stream.try_clone_stream() else {
        return;
    };
    let closed = Arc::new(AtomicBool::new(false));
    let writer_closed = closed.clone();
    let writer = std::thread::spawn(move || {
        for frame in receiver {
            if write_frame(&mut write_half, &frame.header, &frame.attachments).is_err() {
                writer_closed.store(true, Ordering::SeqCst);
                break;
            }
        }
        write_half.shutdown_stream();
    });
    read_requests(stream, conn, &shared, token, &sender);
    // The connection ended (or framing was lost): its jobs stop.
    shared.queue.drop_connection(conn);
    drop(sender);
    let _ = writer.join();
}

/// Streams that can be split into a reader and a writer and shut down.
pub trait TryCloneStream: Sized {
    /// A second handle to the same connection.
    fn try_clone_stream(&self) -> std::io::Result<Self>;
    /// Closes both directions.
    fn shutdown_stream(&self);
}

impl TryCloneStream for UnixStream {
    fn try_clone_stream(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_stream(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

impl TryCloneStream for std::net::TcpStream {
    fn try_clone_stream(&self) -> std::io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_stream(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}

fn read_requests<S: Read>(
    mut stream: S,
    conn: ConnId,
    shared: &Shared,
    token: Option<String>,
    events: &crossbeam_channel::Sender<Outgoing>,
) {
    let limits = FrameLimits {
        max_payload: shared.limits.max_frame_bytes,
    };
    let send = |event: Outgoing| {
        let _ = events.send(event);
    };
    let null = serde_json::Value::Null;
    let mut greeted = false;
    loop {
        let frame = match read_frame(&mut stream, limits) {
            Ok(frame) => frame,
            Err(FrameError::Closed | FrameError::Io(_)) => return,
            Err(FrameError::FramingLost(message)) => {
                send(error_event(&null, None, "framing", &message));
                return;
            }
            Err(FrameError::Invalid(message)) => {
                send(error_event(&null, None, "bad_frame", &message));
                continue;
            }
        };
        let request_id = frame.header.get("id").cloned().unwrap_or_default();
        let envelope = match parse_request(frame, shared.limits.max_pixels) {
            Ok(envelope) => envelope,
            Err(RequestError { code, message }) => {
                let id = request_id;
                send(error_event(&id, None, code, &message));
                continue;
            }
        };
        let id = envelope.id;
        match envelope.request {
            Request::Hello {
                protocol,
                client: _,
                token: given,
            } => {
                if protocol != PROTOCOL_VERSION {
                    send(error_event(&id, None, "protocol_version", &format!(
                        "this daemon speaks protocol {PROTOCOL_VERSION}, the client {protocol}; update the older side"
                    )));
                    return;
                }
                if token.is_some() && given != token {
                    send(error_event(
                        &id,
                        None,
                        "unauthorized",
                        "wrong or missing token (see the token file named in the daemon's log)",
                    ));
                    return;
                }
                greeted = true;
                let mut welcome = shared.listing();
                welcome["type"] = json!("welcome");
                welcome["id"] = id;
                welcome["protocol"] = json!(PROTOCOL_VERSION);
                welcome["daemon"] = json!(format!("sdhost {}", env!("CARGO_PKG_VERSION")));
                send(Outgoing::event(welcome));
            }
            _ if !greeted => {
                send(error_event(
                    &id,
                    None,
                    "hello_required",
                    "the first request must be hello",
                ));
            }
            Request::Ping => send(Outgoing::event(json!({"type": "pong", "id": id}))),
            Request::List => {
                let mut listing = shared.listing();
                listing["type"] = json!("list");
                listing["id"] = id;
                send(Outgoing::event(listing));
            }
            Request::Cancel { job } => match shared.queue.cancel(conn, job) {
                CancelOutcome::Dequeued(job) => send(Outgoing::event(json!({
                    "type": "cancelled", "id": job.request_id, "job": job.id, "images": 0,
                }))),
                // The worker reports "cancelled" when it stops.
                CancelOutcome::Flagged => {}
                CancelOutcome::Unknown => send(error_event(
                    &id,
                    Some(job),
                    "unknown_job",
                    "no such job of this connection",
                )),
            },
            Request::PngInfo { png } => send(png_info(&id, &png)),
            Request::SelectModel { model } => {
                submit(shared, conn, id, JobKind::SelectModel(model), events)
            }
            Request::Generate(request) => {
                let params = &request.params;
                let limits = &shared.limits;
                let pixels = u64::from(params.width) * u64::from(params.height);
                let images = params.n_iter.saturating_mul(params.batch_size);
                let prompt = params.prompt.chars().count() + params.negative_prompt.chars().count();
                let refused = if pixels > limits.max_pixels {
                    Some(format!(
                        "{}x{} is more than the limit of {} pixels",
                        params.width, params.height, limits.max_pixels
                    ))
                } else if images > limits.max_images {
                    Some(format!(
                        "{images} images is more than the limit of {}",
                        limits.max_images
                    ))
                } else if prompt > limits.max_prompt_chars {
                    Some(format!(
                        "prompts of {prompt} characters are more than the limit of {}",
                        limits.max_prompt_chars
                    ))
                } else {
                    None
                };
                match refused {
                    Some(message) => send(error_event(&id, None, "limit", &message)),
                    None => submit(shared, conn, id, JobKind::Generate(request), events),
                }
            }
        }
    }
}

fn submit(
    shared: &Shared,
    conn: ConnId,
    request_id: serde_json::Value,
    kind: JobKind,
    events: &crossbeam_channel::Sender<Outgoing>,
) {
    let job = Job {
        id: shared.next_job.fetch_add(1, Ordering::SeqCst),
        request_id: request_id.clone(),
        conn,
        kind,
        cancel: Arc::new(AtomicBool::new(false)),
        events: events.clone(),
    };
    let announce = |job: &Job, ahead: usize| {
        let _ = events.send(Outgoing::event(json!({
            "type": "queued", "id": job.request_id, "job": job.id, "position": ahead,
        })));
    };
    if shared.queue.submit(job, announce).is_err() {
        let _ = events.send(error_event(
            &request_id,
            None,
            "queue_full",
            "the daemon's queue is full; try again when a job has finished",
        ));
    }
}

fn png_info(id: &serde_json::Value, png: &[u8]) -> Outgoing {
    match png_text(png, PARAMETERS_KEY) {
        Ok(text) => {
            let parsed = text.as_deref().map(crate::infotext::Infotext::parse);
            Outgoing::event(json!({
                "type": "png_info", "id": id, "infotext": text,
                "prompt": parsed.as_ref().map(|p| p.prompt.clone()),
                "negative_prompt": parsed.as_ref().map(|p| p.negative_prompt.clone()),
                "parameters": parsed.map(|p| p.params.into_iter().map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<_, _>>()),
            }))
        }
        Err(message) => error_event(
            id,
            None,
            "bad_request",
            &format!("not a readable PNG: {message}"),
        ),
    }
}
