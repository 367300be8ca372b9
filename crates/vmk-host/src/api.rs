//! The REST API: JSON over HTTP/1.1 on a Unix socket and, optionally, on TCP with a bearer
//! token. It is a thin translation of HTTP to [`HostApi`] calls; every route is listed in
//! [`routes`] and documented in `docs/api/openapi.json` (a test keeps the two in step).
//!
//! Entry points:
//! - [`serve`]: blocking; builds a tokio runtime, binds, serves until `shutdown` resolves.
//!   `vmk host start` calls it with [`termination_signal`].
//! - [`Server::bind`] then [`Server::run`]: the same in two steps, for callers that have a
//!   runtime or need the bound TCP address (tests bind port 0).
//!
//! Hostile input is answered before anything reaches the host: names are checked with
//! [`validate_name`], bodies are limited to [`BODY_LIMIT`], JSON must say so in its
//! `Content-Type`, and every error is `{"error": "<message>"}` with a 4xx/5xx status.
//! Host calls may block on file I/O, so they run on tokio's blocking pool.

mod console;
mod http;
mod network;
pub mod prometheus;

pub use http::BODY_LIMIT;
use http::{call, json, query, ApiErr, AppState, JsonBody, OptionalJsonBody, VmName};

use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use serde::Deserialize;
use tokio::sync::watch;

use vmk_api::model::{
    validate_name, HostConfig, StopRequest, STOP_TIMEOUT_DEFAULT_SECS, STOP_TIMEOUT_MAX_SECS,
};

use crate::host_api::HostApi;

/// `GET /v1/vms/{name}/console/log` without `max_bytes` returns this much.
pub const CONSOLE_LOG_DEFAULT_BYTES: usize = 64 << 10;
/// Most console log one request may ask for.
pub const CONSOLE_LOG_MAX_BYTES: usize = 16 << 20;
/// Shortest bearer token accepted for the TCP API.
pub const TOKEN_MIN_LEN: usize = 16;
/// After the shutdown signal, how long requests in flight may take before they are dropped
/// (a stuck or slow client must not keep the host from exiting).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A connection must send a request head within this time (also closes idle keep-alive
/// connections), so idle or slow-loris clients cannot pile up connections.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// A request's body must have arrived within this time once its head has (408 otherwise, and
/// the connection is closed), so a client that announces a body and never sends it cannot
/// hold a connection and a handler. Bodies are at most [`BODY_LIMIT`], so this leaves
/// 100 KiB/s for the largest one. [`Server::set_body_read_timeout`] changes it.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the API could not be served. Messages name the file or address and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A configuration the API refuses to serve with (live socket, unsafe token file, ...).
    #[error("{0}")]
    Refused(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ApiError {
    let what = what.into();
    move |source| ApiError::Io { what, source }
}

/// Serves the API until `shutdown` resolves, then lets requests in flight finish (for at most
/// a few seconds) and removes the socket file. Blocks the calling thread: it runs its own
/// tokio runtime. Errors if the socket or TCP address cannot be bound.
pub fn serve<F>(host: Arc<dyn HostApi>, cfg: &HostConfig, shutdown: F) -> Result<(), ApiError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("vmk-api")
        .enable_all()
        .build()
        .map_err(io_err("cannot start the API's tokio runtime"))?;
    let server = Server::bind(host, cfg)?;
    let result = runtime.block_on(server.run(shutdown));
    // Console bridges still waiting on a client are dropped, not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Resolves on SIGINT or SIGTERM (what `systemctl stop` and Ctrl-C send). Must be polled
/// inside a tokio runtime, as [`serve`] does.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); only SIGINT stops the host");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A bound, not yet serving API: the Unix socket (and the TCP listener if configured).
pub struct Server {
    host: Arc<dyn HostApi>,
    unix: std::os::unix::net::UnixListener,
    socket: SocketFile,
    tcp: Option<(std::net::TcpListener, Arc<Token>)>,
    body_timeout: Duration,
}

impl Server {
    /// Binds the Unix socket `cfg.socket` (parent directories created, mode 0600; a stale
    /// socket file is replaced, a live one refused) and, if `cfg.tcp` is set, the TCP address
    /// after checking its token file. Needs no runtime.
    pub fn bind(host: Arc<dyn HostApi>, cfg: &HostConfig) -> Result<Server, ApiError> {
        // The token is checked first so a bad TCP setup leaves no socket file behind.
        let tcp = match &cfg.tcp {
            None => None,
            Some(t) => {
                let token = Arc::new(Token::read(&t.token_file)?);
                let listener = std::net::TcpListener::bind(&t.listen).map_err(io_err(format!(
                    "cannot listen on TCP address '{}' (the host config's tcp.listen)",
                    t.listen
                )))?;
                listener
                    .set_nonblocking(true)
                    .map_err(io_err("cannot make the TCP listener non-blocking"))?;
                Some((listener, token))
            }
        };
        let (unix, socket) = bind_unix(&cfg.socket)?;
        Ok(Server {
            host,
            unix,
            socket,
            tcp,
            body_timeout: BODY_READ_TIMEOUT,
        })
    }

    /// Sets how long a request body may take to arrive (default [`BODY_READ_TIMEOUT`]; tests
    /// use a short one).
    pub fn set_body_read_timeout(&mut self, timeout: Duration) {
        self.body_timeout = timeout;
    }

    /// The Unix socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket.path
    }

    /// The bound TCP address (useful when the config asked for port 0).
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` resolves (see [`serve`]). Must run inside a tokio runtime.
    pub async fn run<F>(self, shutdown: F) -> Result<(), ApiError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Server {
            host,
            unix,
            socket,
            tcp,
            body_timeout,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let state = AppState {
            host,
            shutdown: stop_rx.clone(),
            body_timeout,
        };
        let unix = tokio::net::UnixListener::from_std(unix)
            .map_err(io_err("cannot register the API socket with tokio"))?;
        let unix_server = serve_listener(unix, router(state.clone()), stop_rx.clone());
        let tcp_server = match tcp {
            None => None,
            Some((listener, token)) => {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(io_err("cannot register the TCP listener with tokio"))?;
                let app = router(state).layer(middleware::from_fn_with_state(token, require_token));
                Some(serve_listener(listener, app, stop_rx))
            }
        };
        let servers = async move {
            let tcp = async move {
                if let Some(s) = tcp_server {
                    s.await
                }
            };
            tokio::join!(unix_server, tcp);
        };
        tokio::pin!(servers);
        tokio::select! {
            () = &mut servers => {}
            () = shutdown => {
                let _ = stop_tx.send(true);
                // Past the grace period the remaining connections are dropped with the future.
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, servers).await;
            }
        };
        drop(socket);
        Ok(())
    }
}

/// Accepts connections until `stop` turns true, then waits for the open ones to finish
/// their requests (consoles included). HTTP/1.1 only, with upgrades, plus a timeout for
/// request heads ([`HEADER_TIMEOUT`]). HTTP/2 is not served: hyper-util's auto builder
/// answered an HTTP/2 preface even when told `http1_only` (its upgradeable connection ignores
/// that setting), and HTTP/2 connections had none of the HTTP/1 limits. hyper's HTTP/1
/// server closes a connection that starts with the HTTP/2 preface.
async fn serve_listener<L>(mut listener: L, app: Router, mut stop: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            // (Accept errors such as EMFILE are retried inside `accept`.)
            conn = listener.accept() => Some(conn.0),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(io) = accepted else { break };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            .with_upgrades();
        let mut conn_stop = stop.clone();
        conns.spawn(async move {
            tokio::pin!(conn);
            // A connection error (client gone, malformed request) concerns that client only.
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = conn_stop.wait_for(|s| *s) => {}
            }
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
        // Reap finished connections so the set does not grow with every client.
        while conns.try_join_next().is_some() {}
    }
    // Dropping the set (when `run` gives up after SHUTDOWN_GRACE) aborts what is left.
    while conns.join_next().await.is_some() {}
}

/// The socket file this server created; removed on drop unless another server has replaced
/// it since (same path, different inode).
struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds the API socket at `path` with mode 0600. The socket is bound inside a private
/// temporary directory, given its mode there and then renamed into place, so there is no
/// moment at which it is reachable with looser permissions (whatever the umask).
fn bind_unix(path: &Path) -> Result<(std::os::unix::net::UnixListener, SocketFile), ApiError> {
    if path.file_name().is_none() {
        return Err(ApiError::Refused(format!(
            "the API socket path '{}' does not name a file; set `socket` in the host config",
            path.display()
        )));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(io_err(format!(
            "cannot create the API socket's directory {} (run as root, or set `socket` in \
             the host config)",
            parent.display()
        )))?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ApiError::Refused(format!(
                        "another vmk host is already serving on {}; stop it first, or set \
                         another `socket` in the host config",
                        path.display()
                    )))
                }
                // Nobody listens: a host that died left it behind.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(io_err(format!(
                        "cannot remove the stale API socket {}",
                        path.display()
                    )))?
                }
                Err(e) => {
                    return Err(io_err(format!(
                        "cannot check whether a host is serving on the existing socket {}",
                        path.display()
                    ))(e))
                }
            }
        }
        Ok(_) => {
            return Err(ApiError::Refused(format!(
                "{} exists and is not a socket; remove it, or set another `socket` in the \
                 host config",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("cannot inspect {}", path.display()))(e)),
    }
    let tmp = parent.join(format!(".vmk-api.{}.tmp", std::process::id()));
    // Left over by a crashed host that had the same pid.
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(io_err(format!("cannot create {}", tmp.display())))?;
    let bound = (|| {
        let tmp_sock = tmp.join("s");
        let listener =
            std::os::unix::net::UnixListener::bind(&tmp_sock).map_err(io_err(format!(
                "cannot bind the API socket in {} (is the path under 100 bytes?)",
                tmp.display()
            )))?;
        std::fs::set_permissions(&tmp_sock, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(format!("cannot chmod 600 {}", tmp_sock.display())))?;
        std::fs::rename(&tmp_sock, path).map_err(io_err(format!(
            "cannot move the API socket into place at {}",
            path.display()
        )))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("cannot make the API socket non-blocking"))?;
        let m = std::fs::symlink_metadata(path)
            .map_err(io_err(format!("cannot inspect {}", path.display())))?;
        Ok((
            listener,
            SocketFile {
                path: path.to_path_buf(),
                id: (m.dev(), m.ino()),
            },
        ))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    bound
}

/// The TCP API's bearer token.
struct Token(Vec<u8>);

impl Token {
    /// Reads the token file, refusing one that group or others can read or write (the
    /// token would not be a secret) and one that is empty or too short.
    fn read(path: &Path) -> Result<Token, ApiError> {
        let what = || {
            format!(
                "cannot read the API token file {} (the host config's tcp.token_file)",
                path.display()
            )
        };
        let meta = std::fs::metadata(path).map_err(io_err(what()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ApiError::Refused(format!(
                "the API token file {} has mode {mode:03o}: group or others can access it; \
                 run `chmod 600 {}`",
                path.display(),
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(io_err(what()))?;
        let token = text.trim();
        let make = format!(
            "e.g. `head -c 32 /dev/urandom | base64 > {} && chmod 600 {}`",
            path.display(),
            path.display()
        );
        if token.is_empty() {
            return Err(ApiError::Refused(format!(
                "the API token file {} is empty; put a random token in it, {make}",
                path.display()
            )));
        }
        if token.len() < TOKEN_MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::Refused(format!(
                "the token in {} must be at least {TOKEN_MIN_LEN} printable ASCII characters \
                 without spaces, {make}",
                path.display()
            )));
        }
        Ok(Token(token.as_bytes().to_vec()))
    }

    /// Constant time in the content (the length of the token is not a secret worth hiding).
    fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(presented).into()
    }
}

/// Lets a TCP request through only with `Authorization: Bearer <token>`.
async fn require_token(State(token): State<Arc<Token>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| {
            let (scheme, rest) = v.split_at(v.len().min(7));
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        });
    match presented {
        Some(t) if token.matches(t) => next.run(req).await,
        _ => {
            let mut resp = ApiErr::new(
                StatusCode::UNAUTHORIZED,
                match presented {
                    None => {
                        "this API needs `Authorization: Bearer <token>` (the token is in \
                             the host's tcp.token_file; `vmk --url URL --token-file FILE`)"
                    }
                    Some(_) => "wrong bearer token",
                },
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            resp
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleLogQuery {
    max_bytes: Option<usize>,
}

// ---- routes ----

type Method = (&'static str, MethodFilter);
const GET: Method = ("GET", MethodFilter::GET);
const POST: Method = ("POST", MethodFilter::POST);
const DELETE: Method = ("DELETE", MethodFilter::DELETE);
const PATCH: Method = ("PATCH", MethodFilter::PATCH);
const PUT: Method = ("PUT", MethodFilter::PUT);

/// The router and the list of its routes, built together so the list cannot drift.
struct Routes {
    router: Router<AppState>,
    table: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn add<H, T>(mut self, (name, filter): Method, path: &'static str, handler: H) -> Routes
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.table.push((name, path));
        self.router = self.router.route(path, on(filter, handler));
        self
    }
}

fn build() -> Routes {
    Routes {
        router: Router::new(),
        table: Vec::new(),
    }
    .add(GET, "/v1/host", host_info)
    .add(PUT, "/v1/host/power", set_power)
    .add(GET, "/v1/vms", list_vms)
    .add(POST, "/v1/vms", create_vm)
    .add(GET, "/v1/vms/{name}", vm_info)
    .add(PUT, "/v1/vms/{name}", update_vm)
    .add(DELETE, "/v1/vms/{name}", delete_vm)
    .add(POST, "/v1/vms/{name}/start", start_vm)
    .add(POST, "/v1/vms/{name}/stop", stop_vm)
    .add(POST, "/v1/vms/{name}/poweroff", poweroff_vm)
    .add(POST, "/v1/vms/{name}/reset", reset_vm)
    .add(GET, "/v1/vms/{name}/metrics", vm_metrics)
    .add(GET, "/v1/vms/{name}/console", console::attach)
    .add(GET, "/v1/vms/{name}/console/log", console_log)
    .add(GET, "/v1/metrics", host_metrics)
    .add(GET, "/metrics", prometheus_metrics)
    // The network (api/network.rs).
    .add(GET, "/v1/network", network::info)
    .add(GET, "/v1/vswitches", network::list_vswitches)
    .add(POST, "/v1/vswitches", network::add_vswitch)
    .add(GET, "/v1/vswitches/{vswitch}", network::vswitch)
    .add(PATCH, "/v1/vswitches/{vswitch}", network::update_vswitch)
    .add(DELETE, "/v1/vswitches/{vswitch}", network::remove_vswitch)
    .add(POST, "/v1/vswitches/{vswitch}/uplinks", network::add_uplink)
    .add(
        DELETE,
        "/v1/vswitches/{vswitch}/uplinks/{uplink}",
        network::remove_uplink,
    )
    .add(GET, "/v1/portgroups", network::list_portgroups)
    .add(POST, "/v1/portgroups", network::add_portgroup)
    .add(GET, "/v1/portgroups/{portgroup}", network::portgroup)
    .add(
        PATCH,
        "/v1/portgroups/{portgroup}",
        network::update_portgroup,
    )
    .add(
        DELETE,
        "/v1/portgroups/{portgroup}",
        network::remove_portgroup,
    )
}

/// Every route of the API as (method, path template), e.g. `("POST", "/v1/vms/{name}/stop")`.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    build().table
}

fn router(state: AppState) -> Router {
    build()
        .router
        .fallback(|| async {
            ApiErr::new(
                StatusCode::NOT_FOUND,
                "no such API route (the routes are in docs/api/openapi.json)",
            )
        })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiErr::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "method {} is not allowed on {}",
                    req.method(),
                    req.uri().path()
                ),
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn host_info(State(s): State<AppState>) -> Result<Response, ApiErr> {
    let info = call(&s, |h| Ok(h.host_info())).await?;
    Ok(json(StatusCode::OK, &info))
}

async fn set_power(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<vmk_api::model::PowerRequest>,
) -> Result<Response, ApiErr> {
    let info = call(&s, move |h| h.set_power_policy(req.policy)).await?;
    Ok(json(StatusCode::OK, &info))
}

async fn list_vms(State(s): State<AppState>) -> Result<Response, ApiErr> {
    let vms = call(&s, |h| Ok(h.list())).await?;
    Ok(json(StatusCode::OK, &vms))
}

async fn create_vm(
    State(s): State<AppState>,
    JsonBody(def): JsonBody<vmk_api::model::VmDefinition>,
) -> Result<Response, ApiErr> {
    validate_name("VM", &def.name)?;
    let info = call(&s, move |h| h.create(def)).await?;
    Ok(json(StatusCode::CREATED, &info))
}

async fn vm_info(State(s): State<AppState>, VmName(name): VmName) -> Result<Response, ApiErr> {
    let info = call(&s, move |h| h.info(&name)).await?;
    Ok(json(StatusCode::OK, &info))
}

async fn update_vm(
    State(s): State<AppState>,
    VmName(name): VmName,
    JsonBody(def): JsonBody<vmk_api::model::VmDefinition>,
) -> Result<Response, ApiErr> {
    // A body named otherwise (a rename) is refused by the host, after the VM is looked up.
    let info = call(&s, move |h| h.update(&name, def)).await?;
    Ok(json(StatusCode::OK, &info))
}

async fn delete_vm(State(s): State<AppState>, VmName(name): VmName) -> Result<Response, ApiErr> {
    call(&s, move |h| h.delete(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn start_vm(State(s): State<AppState>, VmName(name): VmName) -> Result<Response, ApiErr> {
    let info = call(&s, move |h| h.start(&name)).await?;
    Ok(json(StatusCode::OK, &info))
}

async fn stop_vm(
    State(s): State<AppState>,
    VmName(name): VmName,
    OptionalJsonBody(body): OptionalJsonBody<StopRequest>,
) -> Result<Response, ApiErr> {
    let secs = body
        .and_then(|b| b.timeout_secs)
        .unwrap_or(STOP_TIMEOUT_DEFAULT_SECS);
    if secs > STOP_TIMEOUT_MAX_SECS {
        return Err(ApiErr::bad_request(format!(
            "timeout_secs {secs} is more than the maximum of {STOP_TIMEOUT_MAX_SECS}"
        )));
    }
    let info = call(&s, move |h| h.stop(&name, Duration::from_secs(secs))).await?;
    Ok(json(StatusCode::OK, &info))
}

async fn poweroff_vm(State(s): State<AppState>, VmName(name): VmName) -> Result<Response, ApiErr> {
    let info = call(&s, move |h| h.poweroff(&name)).await?;
    Ok(json(StatusCode::OK, &info))
}

async fn reset_vm(State(s): State<AppState>, VmName(name): VmName) -> Result<Response, ApiErr> {
    let info = call(&s, move |h| h.reset(&name)).await?;
    Ok(json(StatusCode::OK, &info))
}

async fn vm_metrics(State(s): State<AppState>, VmName(name): VmName) -> Result<Response, ApiErr> {
    let m = call(&s, move |h| h.vm_metrics(&name)).await?;
    Ok(json(StatusCode::OK, &m))
}

async fn host_metrics(State(s): State<AppState>) -> Result<Response, ApiErr> {
    let m = call(&s, |h| Ok(h.metrics())).await?;
    Ok(json(StatusCode::OK, &m))
}

async fn prometheus_metrics(State(s): State<AppState>) -> Result<Response, ApiErr> {
    let (m, net) = call(&s, |h| Ok((h.metrics(), h.network().map(|n| n.info())))).await?;
    let mut text = prometheus::render(&m);
    if let Some(n) = net {
        text.push_str(&prometheus::render_network(&n));
    }
    Ok(([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text).into_response())
}

async fn console_log(
    State(s): State<AppState>,
    VmName(name): VmName,
    uri: axum::http::Uri,
) -> Result<Response, ApiErr> {
    let q: ConsoleLogQuery = query(&uri)?;
    let max = q.max_bytes.unwrap_or(CONSOLE_LOG_DEFAULT_BYTES);
    if max > CONSOLE_LOG_MAX_BYTES {
        return Err(ApiErr::bad_request(format!(
            "max_bytes {max} is more than the maximum of {CONSOLE_LOG_MAX_BYTES}"
        )));
    }
    let log = call(&s, move |h| h.console_log(&name, max)).await?;
    Ok((
        // Guest output is bytes, not necessarily UTF-8: no charset is claimed.
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from(log),
    )
        .into_response())
}
