//! A1111's VAE override (`modules/sd_vae.py`): the option `sd_vae` (`Automatic`, `None` or a VAE
//! file's name) picks an external autoencoder for the loaded checkpoint.
//!
//! [`list`] is A1111's `vae_dict` (the files of `models/VAE` and the `*.vae.*` files beside
//! checkpoints) and `resolve_vae`; [`file`] reads a VAE file strictly into the checkpoint's
//! autoencoder shape; [`swap`] puts it into the model and keeps the checkpoint's own aside.
//! Boundary: knows files and the autoencoder; the model calls it
//! (`pipeline::model::GenerationModel::select_vae`) before a job runs.

pub mod file;
pub mod list;
pub mod swap;

pub use file::{load_vae_file, VaeFileError};
pub use list::{
    resolve_vae, resolve_vae_for, VaeChoiceError, VaeChooser, VaeList, VaeResolution, AUTOMATIC,
    NONE,
};
pub use swap::{ExternalVae, VaeSwap};

use std::path::PathBuf;

/// Why the VAE a job asks for cannot be used (reported before any work starts).
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// The choice names a file that is not there.
    #[error(transparent)]
    Choice(#[from] VaeChoiceError),
    /// The file cannot be read or does not fit the checkpoint's autoencoder.
    #[error(transparent)]
    File(#[from] VaeFileError),
    /// The file could not be hashed for the infotext.
    #[error("VAE {path}: cannot hash: {source}")]
    Hash {
        path: PathBuf,
        source: std::io::Error,
    },
}
