//! Starting and stopping the HTTP server: the address (loopback unless `--api-auth` is
//! given), Basic auth, CORS (off unless `--cors-allow-origins`), the body limit, trailing
//! slashes (`/sdapi/v1/options/` is `/sdapi/v1/options`, as A1111's redirect makes it), and a
//! tokio runtime on threads of its own that ends gracefully with the daemon.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderValue;
use axum::ServiceExt;
use tower::Layer;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};
use tower_http::normalize_path::NormalizePathLayer;

use super::auth::{self, Credential};
use super::body::BodyLimit;
use super::{router, ApiState};
use crate::daemon::config::ServeConfig;
use crate::daemon::server::Shared;
use crate::daemon::{FrontEnd, StartError, StartFrontEnd};

/// A1111's port.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7860";

/// How long requests in flight have to finish when the daemon stops (their jobs were
/// already ended by the daemon's shutdown, so they only write their answers).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Settings of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// `HOST:PORT` to listen on.
    pub address: String,
    /// `--api-auth` pairs (none: no auth).
    pub auth: Vec<Credential>,
    /// `--cors-allow-origins` (none: no CORS headers).
    pub cors_origins: Vec<String>,
    /// Largest request body in bytes (images come base64 inside JSON).
    pub max_body_bytes: usize,
}

/// Why the HTTP server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    /// The address is not `HOST:PORT`.
    #[error("--api-addr {address}: {message}")]
    Address { address: String, message: String },
    /// Listening beyond this machine without credentials.
    #[error("--api-addr {0} is reachable from other machines: pass --api-auth user:password (or listen on 127.0.0.1)")]
    NeedsAuth(String),
    /// `--api-auth` is not `user:pass` pairs.
    #[error(transparent)]
    Auth(#[from] auth::BadCredentials),
    /// A CORS origin is not a valid header value.
    #[error("--cors-allow-origins: \"{0}\" is not a valid origin")]
    Origin(String),
    /// Binding failed.
    #[error("listening on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
    /// The runtime could not start.
    #[error("starting the HTTP runtime: {0}")]
    Runtime(std::io::Error),
}

/// The running server.
pub struct ApiServer {
    /// Where it listens (the port is known here when 0 was asked for).
    pub address: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl ApiConfig {
    /// The settings the daemon's config names, when it serves the API at all: `address`,
    /// `--api-auth` pairs and `--cors-allow-origins` as A1111 writes them (`a,b`).
    pub fn from_flags(
        address: &str,
        auth: Option<&str>,
        cors_origins: Option<&str>,
        max_body_bytes: usize,
    ) -> Result<Self, ApiStartError> {
        Ok(ApiConfig {
            address: address.to_string(),
            auth: auth::parse_credentials(auth.unwrap_or_default())?,
            cors_origins: cors_origins
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(String::from)
                .collect(),
            max_body_bytes,
        })
    }
}

impl ApiServer {
    /// Stops accepting, lets requests in flight write their answers (up to a grace period),
    /// and returns.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take() {
            // The runtime ends its own tasks after the grace; joining cannot hang longer.
            let _ = thread.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn resolve(address: &str) -> Result<Vec<SocketAddr>, ApiStartError> {
    let bad = |message: String| ApiStartError::Address {
        address: address.to_string(),
        message,
    };
    let found: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .collect();
    if found.is_empty() {
        return Err(bad("resolves to no address".into()));
    }
    Ok(found)
}

/// The CORS layer A1111 installs: origins only as listed, any method and header, with
/// credentials (browsers then need the request's own methods and headers echoed).
fn cors(origins: &[String]) -> Result<Option<CorsLayer>, ApiStartError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let origins = origins
        .iter()
        .map(|o| HeaderValue::from_str(o.trim()).map_err(|_| ApiStartError::Origin(o.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods(AllowMethods::mirror_request())
            .allow_headers(AllowHeaders::mirror_request())
            .allow_credentials(true),
    ))
}

/// The HTTP API as a front end of the daemon when `config` asks for it (`api_addr`), its
/// flags checked now; it binds when the daemon starts it.
pub fn front_end(config: &ServeConfig) -> Result<Option<StartFrontEnd>, ApiStartError> {
    let Some(address) = &config.api_addr else {
        return Ok(None);
    };
    let settings = ApiConfig::from_flags(
        address,
        config.api_auth.as_deref(),
        config.cors_allow_origins.as_deref(),
        usize::try_from(config.limits.max_frame_bytes).unwrap_or(usize::MAX),
    )?;
    Ok(Some(Box::new(move |shared, device| {
        let server = start(settings, shared, device).map_err(|error| StartError::FrontEnd {
            name: "HTTP API",
            source: Box::new(error),
        })?;
        // On stdout, as the socket's line: scripts that start the daemon read it.
        println!("sdhost: A1111 API on http://{}", server.address);
        Ok(Box::new(server) as Box<dyn FrontEnd>)
    })))
}

impl FrontEnd for ApiServer {
    fn stop(self: Box<Self>) {
        ApiServer::stop(*self);
    }
}

/// Starts the server over the daemon's `shared` state (its model runs on `device`): binds
/// now, so that errors are the caller's, and serves on a runtime of its own.
pub fn start(
    config: ApiConfig,
    shared: Arc<Shared>,
    device: tch::Device,
) -> Result<ApiServer, ApiStartError> {
    let addresses = resolve(&config.address)?;
    if config.auth.is_empty() && addresses.iter().any(|a| !a.ip().is_loopback()) {
        return Err(ApiStartError::NeedsAuth(config.address.clone()));
    }
    let cors = cors(&config.cors_origins)?;
    let bind_error = |source| ApiStartError::Bind {
        address: config.address.clone(),
        source,
    };
    let listener = TcpListener::bind(addresses.as_slice()).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let address = listener.local_addr().map_err(bind_error)?;
    // `localhost` clients may try ::1 first (A1111 binds both through the OS's dual stack).
    let also_v6 = (address.ip() == std::net::Ipv4Addr::LOCALHOST)
        .then(|| {
            TcpListener::bind(SocketAddr::new(
                std::net::Ipv6Addr::LOCALHOST.into(),
                address.port(),
            ))
            .ok()
        })
        .flatten()
        .filter(|l| l.set_nonblocking(true).is_ok());

    let credentials = Arc::new(config.auth.clone());
    let limit = config.max_body_bytes;
    let state = ApiState::new(shared, config, device);
    let mut app = router(state)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(BodyLimit(limit)));
    if !credentials.is_empty() {
        app = app.layer(axum::middleware::from_fn_with_state(
            credentials,
            auth::require,
        ));
    }
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    let app = NormalizePathLayer::trim_trailing_slash().layer(app);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sdhost-api")
        .enable_all()
        .build()
        .map_err(ApiStartError::Runtime)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("sdhost-api".into())
        .spawn(move || {
            runtime.block_on(async move {
                let mut servers = Vec::new();
                for listener in std::iter::once(listener).chain(also_v6) {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        continue;
                    };
                    let service = ServiceExt::<Request>::into_make_service_with_connect_info::<
                        SocketAddr,
                    >(app.clone());
                    let mut stopped = stopped.clone();
                    servers.push(tokio::spawn(async move {
                        let shutdown = async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        };
                        if let Err(error) = axum::serve(listener, service)
                            .with_graceful_shutdown(shutdown)
                            .await
                        {
                            eprintln!("sdhost: HTTP server: {error}");
                        }
                    }));
                }
                let mut stopped = stopped;
                let _ = stopped.wait_for(|s| *s).await;
                let _ = tokio::time::timeout(STOP_GRACE, async {
                    for server in servers {
                        let _ = server.await;
                    }
                })
                .await;
            });
            runtime.shutdown_timeout(Duration::from_millis(100));
        })
        .map_err(ApiStartError::Runtime)?;
    Ok(ApiServer {
        address,
        stop: Some(stop),
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_address_is_loopback_and_names_resolving_beyond_it_are_seen() {
        let default = resolve(DEFAULT_ADDR).unwrap();
        assert!(default.iter().all(|a| a.ip().is_loopback()), "{default:?}");
        assert!(resolve("localhost:0")
            .unwrap()
            .iter()
            .all(|a| a.ip().is_loopback()));
        for public in ["0.0.0.0:0", "[::]:0", "192.0.2.1:7860"] {
            assert!(
                resolve(public)
                    .unwrap()
                    .iter()
                    .any(|a| !a.ip().is_loopback()),
                "{public}"
            );
        }
    }
}
