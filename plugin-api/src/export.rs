//! What a plugin implements, and the export helper that turns it into the root module.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::{RNone, RResult, RStr, RString, RVec};

use crate::abi::{
    PluginError, PluginErrorKind, SampleJob, SamplerInfo, SamplerPluginModule, SamplerPluginRef,
    TensorId,
};
use crate::context::Context;
use crate::latent::Latent;
use crate::spec::SampleResult;

/// A sampler plugin: its name, its samplers, and how to run one.
pub trait SamplerPlugin {
    /// The plugin's name, shown in listings and in error messages.
    const NAME: &'static str;
    /// The plugin's version.
    const VERSION: &'static str;

    /// The samplers the plugin offers, usually built with [`crate::SamplerSpec`].
    fn samplers() -> Vec<SamplerInfo>;

    /// Runs `sampler` (a name from [`Self::samplers`], never an alias) from the latent `x` down
    /// the context's noise levels and returns the final latent.
    fn sample<'c, 'a>(
        sampler: &str,
        context: &'c Context<'a>,
        x: Latent<'c, 'a>,
    ) -> SampleResult<'c, 'a>;
}

/// Exports `$plugin` (a type implementing [`SamplerPlugin`]) as the library's root module.
///
/// Use it once, in the plugin's `lib.rs`, in a crate built as `cdylib`. Panics inside the
/// plugin are caught at the boundary and reported to the host as errors.
#[macro_export]
macro_rules! export_sampler_plugin {
    ($plugin:ty) => {
        // What abi_stable's `#[export_root_module]` expands to, written with paths through
        // this crate so that plugins need no direct abi_stable dependency. The symbol name is
        // abi_stable's loader name, checked by a test in sdhost-plugin-api.
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static SDHOST_SAMPLER_PLUGIN_HEADER: $crate::abi_stable::library::LibHeader = {
            extern "C" fn erased_root_module() -> $crate::abi_stable::library::RootModuleResult {
                $crate::abi_stable::library::__call_root_module_loader(
                    $crate::__private::root_module::<$plugin>,
                )
            }
            unsafe {
                $crate::abi_stable::library::LibHeader::from_constructor::<
                    $crate::abi::SamplerPluginRef,
                >(
                    erased_root_module,
                    $crate::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// Support for [`export_sampler_plugin!`]; not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use abi_stable::prefix_type::PrefixTypeTrait;

    /// Builds the root module of plugin `P`.
    pub fn root_module<P: SamplerPlugin>() -> SamplerPluginRef {
        SamplerPluginModule {
            name: name::<P>,
            version: version::<P>,
            samplers: samplers::<P>,
            sample: sample::<P>,
        }
        .leak_into_prefix()
    }

    extern "C" fn name<P: SamplerPlugin>() -> RString {
        P::NAME.into()
    }

    extern "C" fn version<P: SamplerPlugin>() -> RString {
        P::VERSION.into()
    }

    extern "C" fn samplers<P: SamplerPlugin>() -> RVec<SamplerInfo> {
        // A panic here must not unwind into the host; a plugin that cannot list its
        // samplers simply offers none.
        catch_unwind(P::samplers).unwrap_or_default().into()
    }

    extern "C" fn sample<P: SamplerPlugin>(
        sampler: RStr<'_>,
        job: SampleJob<'_>,
    ) -> RResult<TensorId, PluginError> {
        let outcome = catch_unwind(AssertUnwindSafe(|| run::<P>(sampler.as_str(), job)));
        match outcome {
            Ok(result) => result.into(),
            Err(payload) => RResult::RErr(PluginError {
                kind: PluginErrorKind::Panic,
                host_kind: RNone,
                message: format!("sampler {sampler} panicked: {}", panic_message(&*payload)).into(),
            }),
        }
    }

    fn run<P: SamplerPlugin>(sampler: &str, job: SampleJob<'_>) -> Result<TensorId, PluginError> {
        let samplers = P::samplers();
        let Some(info) = samplers.into_iter().find(|info| {
            info.name.as_str() == sampler || info.aliases.iter().any(|a| a.as_str() == sampler)
        }) else {
            return Err(PluginError {
                kind: PluginErrorKind::UnknownSampler,
                host_kind: RNone,
                message: format!("plugin {} has no sampler named \"{sampler}\"", P::NAME).into(),
            });
        };
        let (context, x) = Context::new(job, info.options.into_vec());
        let x = Latent::from_id(&context, x);
        let result = P::sample(info.name.as_str(), &context, x)?;
        Ok(result.into_id())
    }

    fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
        if let Some(text) = payload.downcast_ref::<&str>() {
            text.to_string()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "(no message)".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_symbol_is_abi_stables_loader_name() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
