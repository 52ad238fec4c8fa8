//! `sdhost serve`: start the daemon (docs/protocol.md).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::Args;

use crate::daemon::catalog::embeddings_dir;
use crate::daemon::config::{config_dir, data_dir, default_socket, ServeConfig};
use crate::daemon::event::Capabilities;
use crate::daemon::server::{bind_unix, load_or_create_token, serve_connection, Shared};
use crate::daemon::worker::{ModelStatus, Worker};
use crate::daemon::{demo_model, ModelCatalog};
use crate::device::{parse_device, parse_dtype};
use crate::pipeline::model::GenerationModel;
use crate::sampling::plugins::{PluginPaths, SamplerRegistry};

/// Arguments of `sdhost serve`; flags override the config file.
#[derive(Args)]
pub struct ServeArgs {
    /// Config file [default: $XDG_CONFIG_HOME/sdhost/config.toml when it exists].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unix socket [default: $XDG_RUNTIME_DIR/sdhost/sdhost.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Also listen on TCP, e.g. 127.0.0.1:7861 (clients need the token file's token).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Checkpoint to load [default: the config's, else the first in --models-dir, else a
    /// random-weight demo model].
    #[arg(long)]
    model: Option<PathBuf>,
    /// An A1111 models/ folder (Stable-diffusion/, embeddings/ beside it) or a folder of
    /// checkpoints.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Folder of textual-inversion embeddings.
    #[arg(long)]
    embeddings_dir: Option<PathBuf>,
    /// Folder of third-party sampler plugins.
    #[arg(long)]
    plugins_dir: Option<PathBuf>,
    /// Device: cpu, cuda or cuda:N [default: cpu].
    #[arg(long)]
    device: Option<String>,
    /// Compute dtype: fp32, fp16 or bf16 [default: fp32].
    #[arg(long)]
    dtype: Option<String>,
    /// Intra-op CPU threads (0: libtorch's default).
    #[arg(long)]
    threads: Option<i32>,
}

/// Runs the daemon until it is stopped.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    // A client that goes away must be an error on its connection, not the daemon's end.
    // SAFETY: restoring the ignored disposition Rust's runtime sets for every program.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let mut config = ServeConfig::load(args.config.as_deref())?;
    macro_rules! flag {
        ($($name:ident),*) => { $(if args.$name.is_some() { config.$name = args.$name.clone(); })* };
    }
    flag!(
        socket,
        listen,
        model,
        models_dir,
        embeddings_dir,
        plugins_dir,
        device,
        dtype,
        threads
    );

    let device = parse_device(config.device.as_deref().unwrap_or("cpu"))?;
    let kind = parse_dtype(config.dtype.as_deref().unwrap_or("fp32"))?;
    if let Some(threads) = config.threads.filter(|&t| t > 0) {
        tch::set_num_threads(threads);
    }
    let catalog = ModelCatalog::scan(config.models_dir.as_deref(), config.model.as_deref());
    let embeddings = config
        .embeddings_dir
        .clone()
        .or_else(|| config.models_dir.as_deref().and_then(embeddings_dir));
    let (model_path, demo) = match config
        .model
        .clone()
        .or_else(|| catalog.first().map(PathBuf::from))
    {
        Some(path) => (path, false),
        None => {
            let dir = data_dir().context("no HOME to keep the demo model in; pass --model")?;
            (demo_model(&dir)?, true)
        }
    };
    if demo {
        eprintln!("sdhost: ************************************************************");
        eprintln!("sdhost: no model configured: serving a RANDOM-WEIGHT DEMO model");
        eprintln!(
            "sdhost: ({}); its pictures are noise.",
            model_path.display()
        );
        eprintln!("sdhost: pass --model or --models-dir (an A1111 models/ folder works).");
        eprintln!("sdhost: ************************************************************");
    }
    let model = GenerationModel::load(&model_path, device, kind, embeddings.as_deref())
        .with_context(|| format!("loading {}", model_path.display()))?;
    let status = Arc::new(Mutex::new(ModelStatus {
        name: model.name.clone(),
        hash: model.hash.clone(),
        path: model_path.clone(),
        demo,
        embeddings: model.embeddings.names(),
    }));
    let registry = SamplerRegistry::load(&PluginPaths::discover(config.plugins_dir.clone()));
    for skipped in &registry.skipped {
        eprintln!("sdhost: plugin skipped: {skipped}");
    }
    let shared = Arc::new(Shared::new(
        config.limits.clone(),
        status.clone(),
        Capabilities::new(&registry, &config.limits),
        catalog.names(),
    ));

    let socket = config.socket.clone().unwrap_or_else(default_socket);
    let listener = bind_unix(&socket)?;
    {
        let socket = socket.clone();
        let shared = shared.clone();
        ctrlc::set_handler(move || {
            let _ = std::fs::remove_file(&socket);
            shared.queue.shutdown();
            std::process::exit(0);
        })
        .context("installing the signal handler")?;
    }
    if let Some(address) = &config.listen {
        let token_path = config_dir()
            .context("no HOME for the token file")?
            .join("token");
        let token = load_or_create_token(&token_path)
            .with_context(|| format!("token file {}", token_path.display()))?;
        let tcp = std::net::TcpListener::bind(address)
            .with_context(|| format!("listening on {address}"))?;
        eprintln!(
            "sdhost: listening on tcp://{} (token in {})",
            tcp.local_addr()?,
            token_path.display()
        );
        let shared = shared.clone();
        std::thread::spawn(move || {
            for stream in tcp.incoming().flatten() {
                let shared = shared.clone();
                let token = Some(token.clone());
                std::thread::spawn(move || serve_connection(stream, shared, token));
            }
        });
    }

    let worker = Worker {
        model,
        registry,
        catalog,
        embeddings_dir: embeddings,
        device,
        kind,
        status,
    };
    {
        let shared = shared.clone();
        std::thread::spawn(move || worker.run(&shared.queue));
    }
    println!(
        "sdhost: serving {} on {}",
        model_path.display(),
        socket.display()
    );
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let shared = shared.clone();
                std::thread::spawn(move || serve_connection(stream, shared, None));
            }
            Err(error) => eprintln!("sdhost: accept failed: {error}"),
        }
    }
    Ok(())
}
