//! sdhost's integration and parity tests as one binary (libtorch is linked once), a module
//! per topic; `common` holds the shared helpers. Run one topic with
//! `cargo test --release --test integration <topic>::`.

mod api;
mod api_meta;
mod brownian;
mod checkpoint_loading;
mod cli;
mod clip_model;
mod color_correction;
mod common;
mod conditioning;
mod daemon;
mod denoiser;
mod families;
mod grid;
mod hypernetwork;
mod img2img;
mod inpaint;
mod lora;
mod lora_families;
mod lycoris;
mod masks;
mod module_cycles;
mod parity;
mod pickle_safety;
mod plugins;
mod png_info;
mod preview;
mod refiner;
mod request;
mod resize;
mod rng;
mod samplers;
mod sampling_plan;
mod schedules;
mod scripts_parity;
mod scripts_run;
mod tokenizer;
mod txt2img;
mod txt2img_parity;
mod upscalers;
mod vae_io;
mod vae_override;
mod vae_precision;
mod xyz;
