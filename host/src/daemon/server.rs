//! Listening and connections: the Unix socket (per-user folder 0700, socket 0600, one daemon
//! per socket, stale files replaced), optional TCP with a token, at most `max_connections`
//! open at once, and per connection a reader (requests) and a writer (events) thread. A
//! connection that ends cancels its jobs.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use subtle::ConstantTimeEq;

use super::catalog::SharedCatalog;
use super::config::Limits;
use super::connection::{Connection, Stream};
use super::event::{Capabilities, ErrorCode, Event, Listing, Outgoing};
use super::live::LiveState;
use super::model_status::ModelStatus;
use super::networks::NetworkListing;
use super::private_files::{check_socket, check_socket_folder, check_token_file, PrivacyError};
use super::protocol::PROTOCOL_VERSION;
use super::queue::{CancelOutcome, ConnId, Job, JobKind, Scheduler, SubmitError};
use super::request::{png_attachment, Request, RequestError};
use crate::extra_networks::facts::NetworkKind;
use crate::pipeline::hires::HiresTarget;
use crate::pipeline::png_info::{png_text, PARAMETERS_KEY};
use crate::pipeline::stop::JobStop;
use crate::request::GenerationRequest;
use crate::upscale::Upscaler;

/// Why the daemon could not start listening.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another daemon answers on the socket.
    #[error("another sdhost daemon is already listening on {0}; stop it first, or pass --socket with another path")]
    AlreadyRunning(PathBuf),
    /// The socket's folder or the bound socket is not private to this user.
    #[error(transparent)]
    NotPrivate(#[from] PrivacyError),
    /// The socket or its folder could not be made.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the Unix socket: makes its folder (0700 when created), refuses a folder others could
/// swap the socket in, replaces a stale socket file, refuses when a daemon answers there, and
/// makes the socket 0600 (checked after binding).
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
        check_socket_folder(dir)?;
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
    check_socket(path)?;
    Ok(listener)
}

/// The TCP token: read from `path` when that file is private to this user (refused
/// otherwise), or made (32 random bytes, hex) and stored 0600.
pub fn load_or_create_token(path: &Path) -> Result<String, PrivacyError> {
    let io = |source| PrivacyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        check_token_file(path)?;
        let token = std::fs::read_to_string(path).map_err(io)?;
        let token = token.trim();
        if !token.is_empty() {
            return Ok(token.to_string());
        }
    }
    make_token(path).map_err(io)
}

/// Makes a new token (32 random bytes, hex) and stores it 0600.
fn make_token(path: &Path) -> std::io::Result<String> {
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

/// Whether a client's `given` token is `expected`, compared in constant time (a byte-by-byte
/// comparison that stops early would tell a TCP client how much of its guess was right).
pub fn token_matches(expected: &str, given: Option<&str>) -> bool {
    let given = given.unwrap_or("");
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// What every connection shares.
pub struct Shared {
    /// The job queue.
    pub queue: Scheduler,
    /// The loaded model as clients see it.
    pub status: Arc<Mutex<ModelStatus>>,
    /// Static capabilities (samplers, schedules, modes, limits) for `welcome` and `list`.
    pub capabilities: Capabilities,
    /// Selectable models (the worker's catalog, rescanned on request).
    pub catalog: SharedCatalog,
    /// LoRA, LyCORIS, hypernetwork and VAE files.
    pub networks: NetworkListing,
    /// Limits.
    pub limits: Limits,
    /// The open connections.
    pub connections: OpenConnections,
    /// What the running job is doing (written by the worker, read by the HTTP API).
    pub live: Arc<LiveState>,
    next_job: AtomicU64,
}

impl Shared {
    /// Shared state over a queue.
    pub fn new(
        limits: Limits,
        status: Arc<Mutex<ModelStatus>>,
        capabilities: Capabilities,
        catalog: SharedCatalog,
        networks: NetworkListing,
    ) -> Self {
        Shared {
            networks,
            queue: Scheduler::new(limits.queue_capacity),
            status,
            capabilities,
            catalog,
            connections: OpenConnections::new(limits.max_connections),
            limits,
            live: Arc::new(LiveState::default()),
            next_job: AtomicU64::new(1),
        }
    }

    /// A new job number (unique per daemon, over every front end).
    pub fn next_job_id(&self) -> u64 {
        self.next_job.fetch_add(1, Ordering::SeqCst)
    }

    fn listing(&self) -> Box<Listing> {
        let model = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .facts();
        let networks = self.networks.current();
        // Files added since, and hashes computed meanwhile, show in the next listing.
        self.networks.refresh();
        Box::new(Listing {
            model,
            models: self
                .catalog
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .names(),
            networks,
            upscalers: Upscaler::all(&self.networks.dirs().upscalers)
                .iter()
                .map(|u| u.name().to_string())
                .collect(),
            capabilities: self.capabilities.clone(),
        })
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open.
    Full,
    /// The daemon is stopping.
    ShuttingDown,
}

/// Closes the reading side of one connection (at shutdown).
type Closer = Box<dyn Fn() + Send>;

#[derive(Default)]
struct OpenState {
    open: BTreeMap<ConnId, Closer>,
    stopped: bool,
}

/// The open connections: at most `max` at once, and at shutdown a way to end them all.
pub struct OpenConnections {
    state: Mutex<OpenState>,
    /// Signalled when a connection ends.
    ended: Condvar,
    max: usize,
    next: AtomicU64,
}

impl OpenConnections {
    /// Room for `max` connections (at least one).
    pub fn new(max: usize) -> Self {
        OpenConnections {
            state: Mutex::new(OpenState::default()),
            ended: Condvar::new(),
            max: max.max(1),
            next: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OpenState> {
        // Every update is one map operation or one flag: a panic cannot leave it half done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A number for a new connection, or why there is no room; `close` ends its reading side.
    pub fn admit(&self, close: Closer) -> Result<ConnId, Refusal> {
        let mut state = self.lock();
        if state.stopped {
            return Err(Refusal::ShuttingDown);
        }
        if state.open.len() >= self.max {
            return Err(Refusal::Full);
        }
        let conn = self.next.fetch_add(1, Ordering::SeqCst);
        state.open.insert(conn, close);
        Ok(conn)
    }

    /// Connection `conn` ended: its place is free.
    pub fn release(&self, conn: ConnId) {
        self.lock().open.remove(&conn);
        self.ended.notify_all();
    }

    /// How many are open.
    pub fn count(&self) -> usize {
        self.lock().open.len()
    }

    /// Turns every new connection away from now on.
    pub fn stop_accepting(&self) {
        self.lock().stopped = true;
    }

    /// Ends every connection's reading side: each reader sees the end, and its writer sends
    /// what is still queued for the client before the connection closes.
    pub fn close_all(&self) {
        for close in self.lock().open.values() {
            close();
        }
    }

    /// Waits until every connection has ended or `timeout` passed; whether all ended.
    pub fn wait_all_ended(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .ended
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Gives the connection's place back however its thread ends.
struct Admitted<'a> {
    connections: &'a OpenConnections,
    conn: ConnId,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.connections.release(self.conn);
    }
}

/// Takes a new connection: serves it on a thread of its own, or, when there is no room or
/// the daemon is stopping, answers with one `error` and closes it. `token`: required in
/// `hello` (TCP).
pub fn accept<S: Stream>(stream: S, shared: &Arc<Shared>, token: Option<String>) {
    let connection = Connection::new(stream, shared.limits.max_frame_bytes);
    // The handle that ends the reading side at shutdown. Without one the system is out of
    // descriptors, and the connection could not be served or answered either.
    let Ok(closer) = connection.try_clone() else {
        return;
    };
    let close = Box::new(move || closer.shutdown(Shutdown::Read));
    let conn = match shared.connections.admit(close) {
        Ok(conn) => conn,
        Err(refusal) => return turn_away(connection, refusal, &shared.limits),
    };
    let shared = shared.clone();
    std::thread::spawn(move || {
        let _admitted = Admitted {
            connections: &shared.connections,
            conn,
        };
        serve_connection(connection, conn, &shared, token);
    });
}

/// Tells a connection why it is not served, and closes it.
fn turn_away<S: Stream>(mut connection: Connection<S>, refusal: Refusal, limits: &Limits) {
    let (code, message) = match refusal {
        Refusal::ShuttingDown => (
            ErrorCode::ShuttingDown,
            "the daemon is shutting down".into(),
        ),
        Refusal::Full => (
            ErrorCode::Limit,
            format!(
                "the daemon serves at most {} connections at once; close another or try again \
                 later",
                limits.max_connections
            ),
        ),
    };
    // A client that does not read must not hold up the accepting thread.
    connection.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = connection.write_event(&Event::error(&Value::Null, None, code, message), &[]);
    connection.shutdown(Shutdown::Both);
}

/// Serves one admitted connection until it ends.
fn serve_connection<S: Stream>(
    mut connection: Connection<S>,
    conn: ConnId,
    shared: &Shared,
    token: Option<String>,
) {
    let (sender, receiver) = crossbeam_channel::unbounded::<Outgoing>();
    let Ok(mut write_half) = connection.try_clone() else {
        return;
    };
    let writer = std::thread::spawn(move || {
        for outgoing in receiver {
            if write_half
                .write_event(&outgoing.event, &outgoing.attachments)
                .is_err()
            {
                break;
            }
        }
        write_half.shutdown(Shutdown::Both);
    });
    read_requests(&mut connection, conn, shared, token, &sender);
    // The connection ended (or framing was lost): its jobs stop.
    shared.queue.drop_connection(conn);
    drop(sender);
    let _ = writer.join();
}

fn read_requests<S: Stream>(
    connection: &mut Connection<S>,
    conn: ConnId,
    shared: &Shared,
    token: Option<String>,
    events: &crossbeam_channel::Sender<Outgoing>,
) {
    let send = |event: Event| {
        let _ = events.send(event.into());
    };
    let mut greeted = false;
    loop {
        let envelope = match connection.read_request() {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return,
            Err(error) => {
                if let Some(event) = error.event() {
                    send(event);
                }
                if error.ends_connection() {
                    return;
                }
                continue;
            }
        };
        let id = envelope.id;
        let refuse = |code, message: &str| send(Event::error(&id, None, code, message));
        match envelope.request {
            Request::Hello {
                protocol,
                client: _,
                token: given,
            } => {
                if protocol != PROTOCOL_VERSION {
                    refuse(ErrorCode::ProtocolVersion, &format!(
                        "this daemon speaks protocol {PROTOCOL_VERSION}, the client {protocol}; update the older side"
                    ));
                    return;
                }
                if token
                    .as_deref()
                    .is_some_and(|t| !token_matches(t, given.as_deref()))
                {
                    refuse(
                        ErrorCode::Unauthorized,
                        "wrong or missing token (see the token file named in the daemon's log)",
                    );
                    return;
                }
                greeted = true;
                send(Event::Welcome {
                    id,
                    protocol: PROTOCOL_VERSION,
                    daemon: format!("sdhost {}", env!("CARGO_PKG_VERSION")),
                    listing: shared.listing(),
                });
            }
            _ if !greeted => refuse(ErrorCode::HelloRequired, "the first request must be hello"),
            Request::Ping => send(Event::Pong { id }),
            Request::List => send(Event::List {
                id,
                listing: shared.listing(),
            }),
            Request::Cancel { job } => match shared.queue.cancel(conn, job) {
                CancelOutcome::Dequeued(job) => send(Event::Cancelled {
                    id: job.request_id,
                    job: job.id,
                    images: 0,
                }),
                // The worker reports "cancelled" when it stops.
                CancelOutcome::Flagged => {}
                CancelOutcome::Unknown => send(Event::error(
                    &id,
                    Some(job),
                    ErrorCode::UnknownJob,
                    "no such job of this connection",
                )),
            },
            Request::PngInfo {
                infotext: Some(text),
            } => send(missing_vae(
                infotext_info(&id, Some(text)),
                &shared.networks,
            )),
            Request::PngInfo { infotext: None } => {
                let mut attachments = envelope.attachments;
                match png_attachment(&mut attachments) {
                    Ok(png) => send(missing_vae(png_info(&id, &png), &shared.networks)),
                    Err(error) => refuse(error.code, &error.message),
                }
            }
            Request::SelectModel { model } => {
                submit(shared, conn, id, JobKind::SelectModel(model), events)
            }
            Request::Img2img(header) => {
                let job = header
                    .into_job(envelope.attachments, shared.limits.max_pixels)
                    .and_then(|job| {
                        check_limits(&job.params, &shared.limits)?;
                        Ok(job)
                    });
                match job {
                    Ok(job) => submit(shared, conn, id, JobKind::Generate(Box::new(job)), events),
                    Err(error) => refuse(error.code, &error.message),
                }
            }
            Request::Interrogate(header) => {
                match header.into_job(envelope.attachments, shared.limits.max_pixels) {
                    Ok(job) => submit(
                        shared,
                        conn,
                        id,
                        JobKind::Interrogate(Box::new(job)),
                        events,
                    ),
                    Err(error) => refuse(error.code, &error.message),
                }
            }
            Request::Upscale(header) => {
                let dirs = &shared.networks.dirs().upscalers;
                match header.into_job(envelope.attachments, shared.limits.max_pixels, dirs) {
                    Ok(job) => submit(shared, conn, id, JobKind::Upscale(Box::new(job)), events),
                    Err(error) => refuse(error.code, &error.message),
                }
            }
            Request::Txt2img(header) => {
                let job = header.into_job().and_then(|job| {
                    check_limits(&job.params, &shared.limits)?;
                    Ok(job)
                });
                match job {
                    Ok(job) => submit(shared, conn, id, JobKind::Txt2img(Box::new(job)), events),
                    Err(error) => refuse(error.code, &error.message),
                }
            }
        }
    }
}

/// Refuses, before a job is queued, parameters no model can run (`invalid_params`: steps,
/// batch and image sizes of [`GenerationRequest::validate`] at the smallest latent scale, 8)
/// and jobs larger than the daemon allows (`limit`; with Hires. fix, its size counts). The
/// worker validates again against the loaded model.
pub fn check_limits(params: &GenerationRequest, limits: &Limits) -> Result<(), RequestError> {
    params.validate(8).map_err(|e| RequestError {
        code: ErrorCode::InvalidParams,
        message: e.to_string(),
    })?;
    let area = |(w, h): (u32, u32)| u64::from(w) * u64::from(h);
    let mut size = (params.width, params.height);
    if params.hires.enable_hr {
        let target = HiresTarget::new(&params.hires, params.width, params.height).upscale_to;
        if area(target) > area((params.width, params.height)) {
            size = target;
        }
    }
    let ((width, height), pixels) = (size, area(size));
    let images = params.n_iter.saturating_mul(params.batch_size);
    let prompt = params.prompt.chars().count() + params.negative_prompt.chars().count();
    let refused = if pixels > limits.max_pixels {
        format!(
            "{width}x{height} is more than the limit of {} pixels",
            limits.max_pixels
        )
    } else if images > limits.max_images {
        format!(
            "{images} images is more than the limit of {}",
            limits.max_images
        )
    } else if prompt > limits.max_prompt_chars {
        format!(
            "prompts of {prompt} characters are more than the limit of {}",
            limits.max_prompt_chars
        )
    } else {
        return Ok(());
    };
    Err(RequestError {
        code: ErrorCode::Limit,
        message: refused,
    })
}

fn submit(
    shared: &Shared,
    conn: ConnId,
    request_id: Value,
    kind: JobKind,
    events: &crossbeam_channel::Sender<Outgoing>,
) {
    let job = Job {
        id: shared.next_job_id(),
        request_id: request_id.clone(),
        conn,
        kind,
        stop: JobStop::new(),
        events: events.clone(),
    };
    let announce = |job: &Job, ahead: usize| {
        let queued = Event::Queued {
            id: job.request_id.clone(),
            job: job.id,
            position: ahead,
        };
        let _ = events.send(queued.into());
    };
    if let Err(error) = shared.queue.submit(job, announce) {
        let code = match error {
            SubmitError::Full => ErrorCode::QueueFull,
            SubmitError::ShuttingDown => ErrorCode::ShuttingDown,
        };
        let _ = events.send(Event::error(&request_id, None, code, error.to_string()).into());
    }
}

/// The `png_info` answer for an infotext (none: the PNG had none): its parts, and the request
/// it describes (A1111's UI defaults where it is silent, as "Send to img2img" fills the tab).
fn infotext_info(id: &Value, text: Option<String>) -> Event {
    let parsed = text.as_deref().map(crate::infotext::Infotext::parse);
    let request = parsed.as_ref().map(|infotext| {
        let mut request = GenerationRequest::ui_defaults();
        // What cannot be read keeps its default; png_info reports, it does not refuse.
        let _ = request.apply_infotext(infotext);
        request.to_object()
    });
    Event::PngInfo {
        id: id.clone(),
        prompt: parsed.as_ref().map(|p| p.prompt.clone()),
        negative_prompt: parsed.as_ref().map(|p| p.negative_prompt.clone()),
        parameters: parsed.map(|p| p.params.into_iter().collect()),
        infotext: text,
        request,
        warnings: Vec::new(),
    }
}

/// A `png_info` answer with a warning when its infotext names a VAE this daemon does not list
/// (the job would run with the checkpoint's own, as A1111 does after its warning).
fn missing_vae(mut event: Event, networks: &NetworkListing) -> Event {
    if let Event::PngInfo {
        request: Some(request),
        warnings,
        ..
    } = &mut event
    {
        let vae = request
            .get("sd_vae")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let special = [crate::sd_vae::AUTOMATIC, crate::sd_vae::NONE].contains(&vae);
        if !special && !crate::sd_vae::list::is_path(vae) && !networks.lists(NetworkKind::Vae, vae)
        {
            warnings.push(format!(
                "the infotext's VAE {vae} is not in this daemon's VAE folders; a job would use the checkpoint's own VAE"
            ));
        }
    }
    event
}

fn png_info(id: &Value, png: &[u8]) -> Event {
    match png_text(png, PARAMETERS_KEY) {
        Ok(text) => infotext_info(id, text),
        Err(message) => Event::error(
            id,
            None,
            ErrorCode::BadRequest,
            format!("not a readable PNG: {message}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn the_cap_frees_places_and_shutdown_closes_everyone() {
        let connections = OpenConnections::new(2);
        let closed = Arc::new(AtomicUsize::new(0));
        let closer = || {
            let closed = closed.clone();
            Box::new(move || {
                closed.fetch_add(1, Ordering::SeqCst);
            }) as Closer
        };
        let first = connections.admit(closer()).unwrap();
        let second = connections.admit(closer()).unwrap();
        assert_ne!(first, second);
        assert_eq!(connections.admit(closer()), Err(Refusal::Full));
        connections.release(first);
        let third = connections.admit(closer()).unwrap();
        connections.stop_accepting();
        assert_eq!(connections.admit(closer()), Err(Refusal::ShuttingDown));
        connections.close_all();
        assert_eq!(
            closed.load(Ordering::SeqCst),
            2,
            "both open ones were closed"
        );
        assert!(!connections.wait_all_ended(Duration::from_millis(10)));
        connections.release(second);
        connections.release(third);
        assert!(connections.wait_all_ended(Duration::ZERO));
        assert_eq!(connections.count(), 0);
    }

    #[test]
    fn tokens_match_only_when_equal() {
        let token = "ab".repeat(32);
        assert!(token_matches(&token, Some(&token)));
        assert!(!token_matches(&token, None));
        assert!(!token_matches(&token, Some("")));
        assert!(!token_matches(&token, Some(&token[..63])));
        assert!(!token_matches(&token, Some(&format!("{token}0"))));
        assert!(!token_matches(
            &token,
            Some(&"ab".repeat(31).replace("b", "c"))
        ));
    }

    #[test]
    fn an_existing_token_is_used_only_when_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sdhost/token");
        let made = load_or_create_token(&path).unwrap();
        assert_eq!(made.len(), 64);
        assert_eq!(load_or_create_token(&path).unwrap(), made);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_token(&path).unwrap_err();
        assert!(
            matches!(err, PrivacyError::OpenToken { mode: 0o644, .. }),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            made,
            "left as it was"
        );
    }
}
