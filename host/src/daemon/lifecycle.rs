//! The daemon from start to stop: load the model, bind the sockets, start the worker, accept
//! connections, and on SIGTERM or SIGINT shut down gracefully (docs/protocol.md "Stopping").

use super::resident::{
    FileStamp, ResidentModels, DEFAULT_CHECKPOINTS_LIMIT, MAX_CHECKPOINTS_LIMIT,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Receiver;
use tch::Device;

use super::catalog::ModelCatalog;
use super::config::{config_dir, data_dir, default_socket, ServeConfig};
use super::event::{Capabilities, ErrorCode, Event};
use super::model_status::ModelStatus;
use super::networks::NetworkListing;
use super::private_files::PrivacyError;
use super::server::{accept, bind_unix, load_or_create_token, ListenError, Shared};
use super::worker::Worker;
use crate::device::{parse_device, parse_dtype, DeviceError};
use crate::interrogate::Interrogator;
use crate::pipeline::model::{GenerationModel, ModelError};
use crate::request::MAX_BATCH_SIZE;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};

/// The file name of the demo model made when no model is configured.
pub const DEMO_MODEL_FILE: &str = "tiny-sd1-demo.safetensors";

/// How long the running job has to notice its cancel flag before the daemon exits anyway
/// (one sampler step or a VAE decode; a model load cannot be interrupted).
const JOB_GRACE: Duration = Duration::from_secs(10);

/// Most images of a joint batch on a CUDA device by default (A1111's largest batch size).
const DEFAULT_JOINT_BATCH_CUDA: usize = 8;

/// How long clients have to take their last events before their connections are dropped.
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `device` or `dtype` is not one the daemon knows.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// `checkpoints_limit` is outside A1111's 1 … 10.
    #[error("checkpoints_limit {0}: keep 1 to {max} checkpoints loaded", max = MAX_CHECKPOINTS_LIMIT)]
    CheckpointsLimit(usize),
    /// `joint_batch` is outside 1 … the largest batch.
    #[error("joint_batch {0}: 1 to {max} images", max = MAX_BATCH_SIZE)]
    JointBatch(usize),
    /// No model is configured and there is no per-user folder for the demo model.
    #[error("no HOME to keep the demo model in; pass --model")]
    NoDataDir,
    /// The demo model could not be written.
    #[error("making the demo model {path}: {source}")]
    DemoModel {
        path: PathBuf,
        // Boxed, as is `Model`'s: start errors are rare and need not make every result wide.
        source: Box<crate::weights::LoadError>,
    },
    /// The model could not be loaded.
    #[error("loading {path}: {source}")]
    Model {
        path: PathBuf,
        source: Box<ModelError>,
    },
    /// The Unix socket could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// TCP was asked for and there is no per-user folder for the token.
    #[error("no HOME for the token file")]
    NoConfigDir,
    /// The token file is not private, or could not be read or made.
    #[error(transparent)]
    Token(#[from] PrivacyError),
    /// The TCP address could not be bound.
    #[error("listening on {address}: {source}")]
    Tcp {
        address: String,
        source: std::io::Error,
    },
    /// A front end beside the socket (the HTTP API) could not start.
    #[error("{name}: {source}")]
    FrontEnd {
        name: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The signal handler could not be installed.
    #[error("installing the signal handler: {0}")]
    Signals(#[from] ctrlc::Error),
}

/// Makes (once) the random-weight demo model in `dir` and returns its path.
pub fn demo_model(dir: &Path) -> Result<PathBuf, StartError> {
    let path = dir.join(DEMO_MODEL_FILE);
    if !path.exists() {
        let spec = crate::tiny_model::TinyModelSpec::tiny(0);
        std::fs::create_dir_all(dir)
            .map_err(|source| crate::weights::LoadError::Io {
                path: dir.to_path_buf(),
                source,
            })
            .and_then(|()| crate::tiny_model::write_tiny_model(&spec, &path).map(drop))
            .map_err(|source| StartError::DemoModel {
                path: path.clone(),
                source: Box::new(source),
            })?;
    }
    Ok(path)
}

/// A front end serving the daemon's queue beside the local socket (the HTTP API of
/// `crate::api`). The daemon knows it only through this trait, so that front ends depend on
/// the daemon and not the other way round.
pub trait FrontEnd: Send {
    /// Stops it; called after the daemon's jobs ended, so that requests waiting on them have
    /// their answers written first.
    fn stop(self: Box<Self>);
}

/// Starts a front end over the daemon's shared state (its model runs on the device given),
/// once the queue exists and before the worker takes jobs.
pub type StartFrontEnd =
    Box<dyn FnOnce(Arc<Shared>, Device) -> Result<Box<dyn FrontEnd>, StartError> + Send>;

/// Runs the daemon until SIGTERM or SIGINT, then stops gracefully and returns. A second
/// signal ends the process at once.
pub fn run(config: ServeConfig, front_ends: Vec<StartFrontEnd>) -> Result<(), StartError> {
    // A client that goes away must be an error on its connection, not the daemon's end.
    // SAFETY: restoring the ignored disposition Rust's runtime sets for every program.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let (signal, stop) = crossbeam_channel::bounded(1);
    let mut signalled = false;
    // `termination` also routes SIGTERM (and SIGHUP) here, not only SIGINT.
    ctrlc::set_handler(move || {
        if signalled {
            eprintln!("sdhost: second signal: stopping now");
            std::process::exit(1);
        }
        signalled = true;
        let _ = signal.try_send(());
    })?;
    serve(config, front_ends, stop)
}

/// Runs the daemon until `stop` receives (or its sender is dropped), then shuts down:
/// new connections are turned away and the socket removed, waiting jobs end with an
/// `error` `shutting_down`, the running job is cancelled through its flag and ends the same
/// way, clients get their last events, and the function returns.
pub fn serve(
    config: ServeConfig,
    front_ends: Vec<StartFrontEnd>,
    stop: Receiver<()>,
) -> Result<(), StartError> {
    let device = parse_device(config.device.as_deref().unwrap_or("cpu"))?;
    let kind = parse_dtype(config.dtype.as_deref().unwrap_or("fp32"))?;
    let checkpoints_limit = config
        .checkpoints_limit
        .unwrap_or(DEFAULT_CHECKPOINTS_LIMIT);
    if !(1..=MAX_CHECKPOINTS_LIMIT).contains(&checkpoints_limit) {
        return Err(StartError::CheckpointsLimit(checkpoints_limit));
    }
    let joint_batch = config.joint_batch.unwrap_or(match device {
        Device::Cuda(_) => DEFAULT_JOINT_BATCH_CUDA,
        _ => 1,
    });
    if !(1..=MAX_BATCH_SIZE).contains(&joint_batch) {
        return Err(StartError::JointBatch(joint_batch));
    }
    if let Some(threads) = config.threads.filter(|&t| t > 0) {
        tch::set_num_threads(threads);
    }
    let mut catalog = ModelCatalog::scan(config.models_dir.as_deref(), config.model.as_deref());
    let folders = config.folders();
    let embeddings = folders.embeddings_dir();
    let network_dirs = folders.network_dirs();
    let (model_path, demo) = match config
        .model
        .clone()
        .or_else(|| catalog.first().map(PathBuf::from))
    {
        Some(path) => (path, false),
        None => (demo_model(&data_dir().ok_or(StartError::NoDataDir)?)?, true),
    };
    if demo {
        warn_demo(&model_path);
        // Listed and selectable like any model (the HTTP API's clients pick by title).
        catalog = ModelCatalog::scan(config.models_dir.as_deref(), Some(&model_path));
    }
    let catalog = catalog.shared();
    let model = GenerationModel::load(&model_path, device, kind, embeddings.as_deref())
        .map_err(|source| StartError::Model {
            path: model_path.clone(),
            source: Box::new(source),
        })?
        .with_network_dirs(network_dirs.clone());
    let status = Arc::new(Mutex::new(ModelStatus {
        name: model.name.clone(),
        hash: model.hash.clone(),
        path: model_path.clone(),
        demo,
        embeddings: model.embeddings.names(),
        inpainting: model.sd.architecture.is_inpainting(),
        embedding_shapes: (
            model.embeddings.shapes(),
            model.embeddings.skipped_shapes.clone(),
        ),
        checkpoints_limit,
    }));
    let registry = SamplerRegistry::load(&PluginPaths::discover(config.plugins_dir.clone()));
    for skipped in &registry.skipped {
        eprintln!("sdhost: plugin skipped: {skipped}");
    }
    let shared = Arc::new(Shared::new(
        config.limits.clone(),
        status.clone(),
        Capabilities::new(&registry, &config.limits),
        catalog.clone(),
        NetworkListing::start(
            network_dirs.clone(),
            config
                .model
                .as_deref()
                .and_then(Path::parent)
                .map(PathBuf::from),
        ),
    ));

    let socket = config.socket.clone().unwrap_or_else(default_socket);
    let listener = bind_unix(&socket)?;
    if let Some(address) = &config.listen {
        listen_tcp(address, &shared)?;
    }
    // Started before the worker: a front end that cannot bind stops the daemon before work.
    let front_ends = front_ends
        .into_iter()
        .map(|start| start(shared.clone(), device))
        .collect::<Result<Vec<_>, _>>()?;
    let worker = Worker {
        model,
        registry,
        catalog,
        embeddings_dir: embeddings,
        network_dirs,
        device,
        kind,
        status,
        live: shared.live.clone(),
        interrogator: Interrogator::new(
            config.interrogate_files(),
            device,
            Interrogator::default_feature_cache_dir(),
        ),
        resident: ResidentModels::new(FileStamp::of(&model_path)),
        joint_batch,
    };
    let (worker_done, worker_ended) = crossbeam_channel::bounded::<()>(1);
    {
        let shared = shared.clone();
        std::thread::spawn(move || {
            worker.run(&shared.queue);
            let _ = worker_done.send(());
        });
    }
    {
        let shared = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => accept(stream, &shared, None),
                    Err(error) => eprintln!("sdhost: accept failed: {error}"),
                }
            }
        });
    }
    println!(
        "sdhost: serving {} on {}",
        model_path.display(),
        socket.display()
    );

    // A closed channel means whoever could stop us is gone: stop as well.
    let _ = stop.recv();
    eprintln!("sdhost: stopping");
    shut_down(&shared, &socket, &worker_ended);
    // After the jobs ended: HTTP requests waiting on them have their answers to write.
    for front_end in front_ends {
        front_end.stop();
    }
    Ok(())
}

/// Listens on TCP as well, with the per-user token.
fn listen_tcp(address: &str, shared: &Arc<Shared>) -> Result<(), StartError> {
    let token_path = config_dir().ok_or(StartError::NoConfigDir)?.join("token");
    let token = load_or_create_token(&token_path)?;
    let tcp_error = |source| StartError::Tcp {
        address: address.to_string(),
        source,
    };
    let tcp = std::net::TcpListener::bind(address).map_err(tcp_error)?;
    eprintln!(
        "sdhost: listening on tcp://{} (token in {})",
        tcp.local_addr().map_err(tcp_error)?,
        token_path.display()
    );
    let shared = shared.clone();
    std::thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            accept(stream, &shared, Some(token.clone()));
        }
    });
    Ok(())
}

fn warn_demo(model_path: &Path) {
    eprintln!("sdhost: ************************************************************");
    eprintln!("sdhost: no model configured: serving a RANDOM-WEIGHT DEMO model");
    eprintln!(
        "sdhost: ({}); its pictures are noise.",
        model_path.display()
    );
    eprintln!("sdhost: pass --model or --models-dir (an A1111 models/ folder works).");
    eprintln!("sdhost: ************************************************************");
}

/// The graceful stop. Jobs are cancelled rather than finished: a job can take minutes, and
/// whoever stops a daemon (Ctrl-C, `systemctl stop`, logging out) expects it gone in seconds.
/// The token file stays: it is the TCP clients' credential, not a runtime file.
fn shut_down(shared: &Shared, socket: &Path, worker_ended: &Receiver<()>) {
    // The accepting threads stay blocked in accept(); what they take from now on is told
    // `shutting_down`, and without the socket file no new client finds the daemon.
    shared.connections.stop_accepting();
    let _ = std::fs::remove_file(socket);
    for job in shared.queue.shutdown() {
        let message = "the daemon is shutting down; the job did not start";
        let event = Event::error(
            &job.request_id,
            Some(job.id),
            ErrorCode::ShuttingDown,
            message,
        );
        let _ = job.events.send(event.into());
    }
    if worker_ended.recv_timeout(JOB_GRACE).is_err() {
        eprintln!(
            "sdhost: the running job did not stop within {}s; exiting anyway",
            JOB_GRACE.as_secs()
        );
    }
    shared.connections.close_all();
    if !shared.connections.wait_all_ended(FLUSH_GRACE) {
        eprintln!(
            "sdhost: {} clients did not take their last events within {}s",
            shared.connections.count(),
            FLUSH_GRACE.as_secs()
        );
    }
}
