//! The stable ABI between the sdhost daemon and sampler plugins.
//!
//! A sampler plugin is a dynamic library (`cdylib`) that depends on this crate only. The host
//! loads it at run time, checks that it was built against a compatible version of this crate
//! (abi_stable compares the version and the layout of every type below), and lists its
//! samplers. Latents never cross the boundary as Rust or libtorch types: the plugin holds
//! opaque [`TensorId`]s and asks the host, through the [`Host`](abi::Host) operation table, to
//! combine them, to draw noise and to run the model. The tensors therefore stay on whatever
//! device and in whatever dtype the host uses, and nothing is copied.
//!
//! # Overview
//!
//! - [`SamplerPlugin`]: what a plugin implements: its samplers and how to run one.
//! - [`SamplerSpec`]: how a sampler is presented (name, aliases, default schedule, A1111's
//!   flags, options with defaults); it converts into the ABI row [`SamplerInfo`].
//! - [`Context`]: one sample call: the σ schedule, options, the model ([`Context::denoise`]),
//!   noise ([`Context::noise`]) and progress ([`Context::callback`]).
//! - [`Latent`]: a host-owned tensor with arithmetic (`&x + &d * dt`, fused
//!   [`Latent::mix`]/[`Latent::combine`]).
//! - [`export_sampler_plugin!`]: turns the plugin type into the library's root module.
//!
//! # A complete sampler plugin
//!
//! Euler's method on the probability-flow ODE dx/dσ = (x − D(x, σ))/σ, as k-diffusion's
//! `sample_euler` without churn; its images equal the built-in "Euler"'s pixel for pixel. Build
//! the crate as a `cdylib` and put the library in sdhost's plugins folder; `docs/plugins.md`
//! walks through the rest.
//!
//! ```
//! use sdhost_plugin_api::{export_sampler_plugin, Context, Latent, SampleResult};
//! use sdhost_plugin_api::{SamplerInfo, SamplerPlugin, SamplerSpec};
//!
//! pub struct MyEuler;
//!
//! impl SamplerPlugin for MyEuler {
//!     const NAME: &'static str = "my-euler";
//!     const VERSION: &'static str = "0.1.0";
//!
//!     fn samplers() -> Vec<SamplerInfo> {
//!         vec![SamplerSpec::new("My Euler").alias("my_euler").into()]
//!     }
//!
//!     fn sample<'c, 'a>(
//!         _sampler: &str,
//!         ctx: &'c Context<'a>,
//!         mut x: Latent<'c, 'a>,
//!     ) -> SampleResult<'c, 'a> {
//!         for (i, s) in ctx.sigmas().windows(2).enumerate() {
//!             let denoised = ctx.denoise(&x, s[0])?;
//!             ctx.callback(i, s[0], s[0], &x, &denoised)?;
//!             // d = (x − D)/σ (k-diffusion `to_d`) in one host call
//!             let d = x.mix(1.0 / s[0], &denoised, -1.0 / s[0]);
//!             x = x + d * (s[1] - s[0]);
//!         }
//!         Ok(x)
//!     }
//! }
//!
//! export_sampler_plugin!(MyEuler);
//! # let info = MyEuler::samplers();
//! # assert_eq!((info[0].name.as_str(), info[0].aliases[0].as_str()), ("My Euler", "my_euler"));
//! # assert!(info[0].default_schedule.is_none() && !info[0].second_order);
//! ```
//!
//! # Errors and cancellation
//!
//! Arithmetic on latents never fails from the plugin's side: the host remembers the first
//! failure (out of memory, a released handle) and reports it at the next call that returns a
//! `Result` (`denoise`, `noise`, `brownian_noise`, `callback`), which the sampler passes on with
//! `?`. A cancelled job is reported the same way, as [`SampleError::is_cancelled`], even by a
//! sampler that never calls `callback`.

pub mod abi;
mod context;
mod export;
mod latent;
mod spec;

pub use abi::{
    Flow, HostError, HostErrorKind, OptionValue, PluginError, PluginErrorKind, SamplerInfo,
    SamplerOption, ScheduleInput, StepInfo, TensorId,
};
pub use context::{Context, SampleError};
pub use export::{__private, SamplerPlugin};
pub use latent::Latent;
pub use spec::{SampleResult, SamplerFn, SamplerSpec};

/// Re-exported so that [`export_sampler_plugin!`] works without the plugin naming abi_stable.
pub use abi_stable;
