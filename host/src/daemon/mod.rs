//! `sdhost serve`: the generation daemon. It keeps a model resident and serves editors over a
//! local socket (docs/protocol.md). [`run`] is the whole daemon; inside it `protocol` frames
//! bytes, `request` and `event` type what the frames say, `connection` reads and writes them
//! for one client, `server` admits and serves connections, `queue` orders jobs, `worker`
//! runs them on the model (`joint_run` batches queued jobs that allow it, `resident` keeps others loaded), `upscale` is the extras upscale request, `private_files` re-checks at start that the token and socket are
//! private, `live` publishes what the running job does (for the HTTP API's `/progress`), and
//! `lifecycle` starts and stops it all.

pub mod attachments;
pub mod catalog;
pub mod config;
pub mod connection;
pub mod event;
mod joint_run;
pub mod lifecycle;
pub mod live;
pub mod model_status;
pub mod networks;
pub mod private_files;
pub mod protocol;
pub mod queue;
pub mod request;
pub mod resident;
mod script_run;
pub mod server;
pub mod upscale;
mod upscale_run;
pub mod worker;

pub use catalog::ModelCatalog;
pub use lifecycle::{demo_model, run, serve, FrontEnd, StartError, StartFrontEnd, DEMO_MODEL_FILE};
