//! `sdhost serve`: the daemon's flags over its config file; `crate::daemon::run` does the
//! rest (docs/protocol.md).

use std::path::PathBuf;

use clap::Args;

use crate::daemon::config::ServeConfig;

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
    /// An A1111 models/ folder (Stable-diffusion/, Lora/, LyCORIS/, hypernetworks/, VAE/,
    /// embeddings/ inside or beside it) or a folder of checkpoints.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Folder of textual-inversion embeddings.
    #[arg(long)]
    embeddings_dir: Option<PathBuf>,
    /// Folder of LoRA files instead of models/Lora (A1111's --lora-dir).
    #[arg(long)]
    lora_dir: Option<PathBuf>,
    /// Folder of hypernetworks instead of models/hypernetworks (A1111's --hypernetwork-dir).
    #[arg(long)]
    hypernetwork_dir: Option<PathBuf>,
    /// Folder of VAE files searched after models/VAE (A1111's --vae-dir).
    #[arg(long)]
    vae_dir: Option<PathBuf>,
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

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
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
        lora_dir,
        hypernetwork_dir,
        vae_dir,
        plugins_dir,
        device,
        dtype,
        threads
    );
    crate::daemon::run(config)?;
    Ok(())
}
