//! sdhost: Stable Diffusion img2img and inpainting for image editors, on libtorch, reproducing
//! AUTOMATIC1111's img2img tab (A1111 v1.10.1).
//!
//! # Brief overview
//!
//! The central function is [`pipeline::img2img::run_img2img`]: it takes a loaded
//! [`pipeline::model::GenerationModel`], the [`sampling::plugins::SamplerRegistry`], the job's
//! [`request::GenerationRequest`], an init image and an optional mask, and reports each
//! step and each finished [`pipeline::img2img::GeneratedImage`] to a callback. The `sdhost`
//! binary ([`cli`]) calls it from `sdhost img2img`, and the daemon ([`daemon`]) from the jobs
//! that editors send over a socket. [`request`] is the one request every front end fills: A1111's
//! parameters under its API names, their defaults, validation and infotext. The modules follow
//! the data path:
//!
//! * Load. [`checkpoint`] reads A1111's single-file `.safetensors` or `.ckpt` (a
//!   [`checkpoint::Checkpoint`], its [`models::Architecture`] inferred from tensor shapes,
//!   its model hash); [`weights`] hands its tensors by key name ([`weights::VarBuilder`]) to the
//!   networks in [`models`] ([`models::StableDiffusion`]: CLIP text encoder, UNet, autoencoder);
//!   [`pickle`] reads `torch.save` files (`.ckpt` state dicts, embeddings, VAEs) without
//!   running any of their Python; [`sd_vae`] swaps in an external VAE file (A1111's `sd_vae`
//!   option); [`tiny_model`] writes random-weight checkpoints for tests and the demo.
//! * Prepare. [`prepare`] is the 8-bit image work A1111 does with Pillow and OpenCV: the five
//!   tabs' inputs ([`prepare::modes::Img2ImgMode`]), resize modes, the mask's threshold and
//!   blur, the only-masked crop, the "fill" of the hole, and, after sampling, colour correction
//!   and the composite over the original ([`prepare::inpaint::InpaintInit`]).
//!   [`pipeline::init::JobInit`] runs it once per job and encodes the result with the VAE.
//! * Condition. [`prompt`] turns prompt text into CLIP conditioning as A1111 does: editing
//!   schedules, `AND`, emphasis, 75-token chunks, embeddings, clip skip
//!   ([`prompt::conditioning::Conditioner`]).
//! * Sample. [`rng`] draws A1111's per-image noise ([`rng::ImageRng`], [`rng::SeedList`]);
//!   [`sampling`] resolves the sampler and schedule and the σ levels img2img walks
//!   ([`sampling::plan::SamplingPlan`]), wraps the UNet with classifier-free guidance
//!   ([`sampling::denoiser::CfgDenoiser`]) and runs a sampler plugin through the ABI of the
//!   `sdhost-plugin-api` crate ([`sampling::plugins::SamplerRegistry::sample`]).
//! * Decode and deliver. [`pipeline`] decodes each latent to 8 bits, writes its
//!   [`infotext::Infotext`] ([`infotext`] is A1111's format, [`request`] what goes in it),
//!   makes live previews and saves numbered PNGs.
//! * Serve. [`daemon`] frames requests and events on a Unix socket, queues jobs fairly and runs
//!   them on one worker thread that owns the model; [`cli`] is the command line.
//!
//! [`device`] parses device and dtype names; [`error`] reads the failures libtorch reports
//! (panic messages, out of memory); loading's errors are [`weights::LoadError`].
//! [`doctor`] checks an installation part by part and names each problem's fix (`sdhost doctor`).
//! `docs/architecture.md` draws the whole path and maps each A1111 parameter and function to
//! the file that reproduces it.

pub mod api;
pub mod checkpoint;
pub mod cli;
pub mod daemon;
pub mod device;
pub mod doctor;
pub mod error;
pub mod extra_networks;
pub mod folder_walk;
pub mod fuzz;
pub mod infotext;
pub mod interrogate;
pub mod models;
pub mod pickle;
pub mod pipeline;
pub mod prepare;
pub mod prompt;
pub mod request;
pub mod rng;
pub mod sampling;
pub mod scripts;
pub mod sd_vae;
pub mod tiny_model;
pub mod upscale;
pub mod user_dirs;
pub mod weights;
