//! `GET /v1/vms/{name}/console` with `Upgrade: vmk-console`: after `101 Switching
//! Protocols` the connection carries the serial console both ways, as Docker's attach does.
//! The server sends the history, then live output, and closes the stream when the run
//! ends; bytes from the client go to the guest's UART. The client detaches by closing the
//! connection (a half-close counts as detaching too, so a client whose input ends but wants
//! to keep reading just keeps its write side open).

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use vmk_api::model::CONSOLE_PROTOCOL;

use super::http::{call, ApiErr, AppState, VmName};
use crate::host_api::{ConsoleAttachment, ConsoleEvent, ConsoleInput};

/// How often the pump thread looks whether the client is still there while the guest is
/// silent.
const PUMP_POLL: Duration = Duration::from_millis(250);

/// Whether the request asks for the console protocol (`Connection: upgrade` among its
/// tokens and `Upgrade: vmk-console`).
fn wants_console(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(CONSOLE_PROTOCOL));
    connection_upgrade && upgrade
}

pub(super) async fn attach(
    State(s): State<AppState>,
    VmName(name): VmName,
    mut req: Request,
) -> Result<Response, ApiErr> {
    if !wants_console(req.headers()) {
        let mut resp = ApiErr::new(
            StatusCode::UPGRADE_REQUIRED,
            format!(
                "the console is interactive: send `Connection: Upgrade` and `Upgrade: \
                 {CONSOLE_PROTOCOL}` (`vmk vm console {name}`), or read the log at \
                 /v1/vms/{name}/console/log"
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static(CONSOLE_PROTOCOL));
        return Ok(resp);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    // Attach before answering, so a stopped or unknown VM gets a proper JSON error.
    let attachment = call(&s, move |h| h.console_attach(&name)).await?;
    let shutdown = s.shutdown.clone();
    tokio::spawn(async move {
        // The client went away before the switch: the attachment is simply dropped.
        if let Ok(upgraded) = on_upgrade.await {
            bridge(TokioIo::new(upgraded), attachment, shutdown).await;
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(CONSOLE_PROTOCOL));
    Ok(resp)
}

/// Carries the console over `io` until the run ends, the client leaves or the server stops.
async fn bridge<IO>(io: IO, attachment: ConsoleAttachment, mut shutdown: watch::Receiver<bool>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let ConsoleAttachment {
        history,
        events,
        input,
    } = attachment;
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    // The host's events come on a std channel: a plain thread waits on it (a long-lived
    // blocking-pool task would hold a pool thread and delay the runtime's shutdown).
    let pump = std::thread::Builder::new()
        .name("vmk-console".into())
        .spawn(move || pump(events, tx));
    if pump.is_err() {
        let _ = wr
            .write_all(b"\r\nvmk: the host cannot start a console thread; try again\r\n")
            .await;
        return;
    }
    let output = async {
        wr.write_all(&history).await?;
        wr.flush().await?;
        // Ends when the pump drops its sender: the run ended (after its last output).
        while let Some(chunk) = rx.recv().await {
            wr.write_all(&chunk).await?;
            wr.flush().await?;
        }
        wr.shutdown().await
    };
    let input: Arc<ConsoleInput> = Arc::new(input);
    let keys = async {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let bytes = buf[..n].to_vec();
            let input = input.clone();
            // The UART's input path takes locks the vCPU threads also take.
            let _ = tokio::task::spawn_blocking(move || input(&bytes)).await;
        }
    };
    let stop = async move {
        // (The guard `wait_for` returns is not Send: drop it here.)
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(output, keys, stop);
    tokio::select! {
        r = &mut output => {
            // The client stopped reading (it detached): still take what it typed before
            // it went, up to its end of file.
            if r.is_err() {
                tokio::select! {
                    _ = &mut keys => {}
                    _ = &mut stop => {}
                }
            }
        }
        _ = &mut keys => {}
        _ = &mut stop => {}
    }
    // Dropping `rx` here makes the pump thread exit at its next poll.
}

/// Moves console output from the host's channel to the connection's task.
fn pump(events: Receiver<ConsoleEvent>, tx: mpsc::Sender<Vec<u8>>) {
    loop {
        match events.recv_timeout(PUMP_POLL) {
            Ok(ConsoleEvent::Output(bytes)) => {
                if tx.blocking_send(bytes).is_err() {
                    return;
                }
            }
            Ok(ConsoleEvent::Ended(_)) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                if tx.is_closed() {
                    return;
                }
            }
        }
    }
}
