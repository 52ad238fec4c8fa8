//! The stable ABI between the sdhost daemon and sampler plugins.
//!
//! A sampler plugin is a dynamic library (`cdylib`) that depends on this crate only. The host
//! loads it at run time, checks that it was built against a compatible version of this crate
//! (abi_stable compares the version and the layout of every type below), and lists its
//! samplers. Latents never cross the boundary as Rust or libtorch types: the plugin holds
//! opaque [`TensorId`]s and asks the host, through the [`Host`] operation table, to combine
//! them, to draw noise and to run the model. The tensors therefore stay on whatever device and
//! in whatever dtype the host uses, and nothing is copied.
//!
//! Plugin authors write samplers against the safe layer, [`Context`] and [`Latent`], implement
//! [`SamplerPlugin`] and export it with [`export_sampler_plugin!`]. See
//! `plugins/example-sampler/README.md` for a walk-through.

pub mod abi;
mod context;
mod export;
mod latent;

pub use abi::{
    Flow, HostError, HostErrorKind, OptionValue, PluginError, PluginErrorKind, SamplerInfo,
    SamplerOption, ScheduleInput, StepInfo, TensorId,
};
pub use context::{Context, SampleError};
pub use export::{__private, SamplerPlugin};
pub use latent::Latent;

/// Re-exported so that [`export_sampler_plugin!`] works without the plugin naming abi_stable.
pub use abi_stable;
