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
    /// An A1111 models/ folder (Stable-diffusion/, Lora/, LyCORIS/, hypernetworks/, VAE/, the
    /// upscalers of ESRGAN/, RealESRGAN/, SwinIR/, DAT/, embeddings/ inside or beside it) or a
    /// folder of checkpoints.
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
    /// Checkpoints kept loaded, the one in use counted (A1111's sd_checkpoints_limit, 1-10)
    /// [default: 1]: switching to a loaded one takes no load.
    #[arg(long, value_name = "N")]
    checkpoints_limit: Option<usize>,
    /// Most images in one batch of queued jobs that differ only in prompts and seeds, run as
    /// one UNet batch (1: each job alone) [default: 8 on CUDA, 1 on the CPU].
    #[arg(long, value_name = "IMAGES")]
    joint_batch: Option<usize>,
    /// Also serve AUTOMATIC1111's HTTP API (/sdapi/v1/*) on 127.0.0.1:7860, for A1111
    /// clients (webuiapi, editor plug-ins).
    #[arg(long)]
    api: bool,
    /// Serve the A1111 HTTP API on this address instead (port 0: any free port); an address
    /// reachable from other machines needs --api-auth.
    #[arg(long, value_name = "HOST:PORT")]
    api_addr: Option<String>,
    /// HTTP Basic credentials for the API: user:pass[,user2:pass2] (A1111's --api-auth).
    #[arg(long, value_name = "USER:PASS[,...]")]
    api_auth: Option<String>,
    /// Origins allowed to call the API from a browser: a,b (A1111's --cors-allow-origins).
    #[arg(long, value_name = "ORIGIN[,...]")]
    cors_allow_origins: Option<String>,
    #[command(flatten)]
    interrogate: crate::interrogate::InterrogateFiles,
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
        threads,
        checkpoints_limit,
        joint_batch,
        api_addr,
        api_auth,
        cors_allow_origins
    );
    let files = &args.interrogate;
    macro_rules! interrogate_flag {
        ($($name:ident),*) => { $(if files.$name.is_some() { config.interrogate.$name = files.$name.clone(); })* };
    }
    interrogate_flag!(
        blip_model,
        bert_vocab,
        clip_model,
        clip_models_path,
        interrogate_dir,
        deepdanbooru_model
    );
    if args.api && config.api_addr.is_none() {
        config.api_addr = Some(crate::api::server::DEFAULT_ADDR.into());
    }
    // Checked before the model loads: a bad address or a public one without credentials.
    let front_ends = crate::api::front_end(&config)?.into_iter().collect();
    crate::daemon::run(config, front_ends)?;
    Ok(())
}
