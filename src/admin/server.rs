//! The daemon's side of the admin API: a Unix socket (mode 0660, owned by the user and group
//! the daemon runs as) that answers one JSON request line per connection with the daemon's own
//! [`Backend`]. A stale socket file left by a crash is replaced at start; the file is removed at
//! shutdown.
//!
//! Bounded: at most [`MAX_CLIENTS`] connections are served at once (more are answered with an
//! error and closed); a client has [`REQUEST_TIMEOUT`] to send its request and each write of the
//! answer must make progress within [`WRITE_TIMEOUT`], or the connection is dropped. Dead-letter
//! listings (`dlq list`, `dlq export`, which carry every payload) are streamed: entries are read
//! from the store one at a time on a blocking thread and written as they come, a few in flight,
//! so the daemon never holds the whole answer; the line is the same `{"dead-letters":[…]}`.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::{AdminError, Backend, Filter, Request, Response};

/// Permissions of the socket file: the service user and its group.
pub const SOCKET_MODE: u32 = 0o660;
/// Longest accepted request line.
const MAX_REQUEST: u64 = 64 << 10;
/// How long a client may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write of the answer may wait for a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CLIENTS: usize = 8;
/// Serialized dead letters queued between the store reader and the socket writer.
const STREAM_DEPTH: usize = 8;

/// Binds the admin socket at `path`, replacing a stale socket file; refuses when another
/// process answers on it or the path is not a socket.
pub fn bind(path: &Path) -> Result<UnixListener, AdminError> {
    let err = |source| AdminError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; not replacing it",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process answers on it",
            )));
        }
        tracing::info!(path = %path.display(), "Replacing a stale admin socket");
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    UnixListener::from_std(listener).map_err(err)
}

/// Serves requests until `stop` is cancelled, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    backend: Arc<Backend>,
    stop: CancellationToken,
) {
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    // As many again are told why they are refused; past those, connections are closed at once.
    let refusals = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match clients.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let backend = backend.clone();
                        tokio::spawn(async move {
                            answer(stream, backend).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(limit = MAX_CLIENTS, "Admin socket: too many clients; refusing one");
                        if let Ok(slot) = refusals.clone().try_acquire_owned() {
                            tokio::spawn(async move {
                                let _ = tokio::time::timeout(Duration::from_secs(1), refuse(stream)).await;
                                drop(slot);
                            });
                        }
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "Admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "Cannot remove the admin socket");
    }
}

/// Reads the request (closing over unread bytes would reset the connection under the answer),
/// then answers that the daemon is busy.
async fn refuse(stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        reader.read_until(b'\n', &mut line),
    )
    .await;
    let busy = Response::Error(format!(
        "the daemon serves {MAX_CLIENTS} admin clients at once; try again"
    ));
    let mut out = serde_json::to_vec(&busy).unwrap_or_default();
    out.push(b'\n');
    let _ = write.write_all(&out).await;
    let _ = write.shutdown().await;
}

async fn answer(stream: UnixStream, backend: Arc<Backend>) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let read = reader.read_until(b'\n', &mut line);
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Err(_) => Response::Error("no request within 10 s".into()),
        Ok(Err(e)) => Response::Error(format!("reading the request: {e}")),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Ok(request) => {
                tracing::info!(request = ?request, "Admin request");
                match request {
                    Request::DlqList { filter } => {
                        return stream_dead_letters(write, backend, filter).await
                    }
                    Request::DlqExport => {
                        return stream_dead_letters(write, backend, Filter::default()).await
                    }
                    other => backend.handle(other).await,
                }
            }
            Err(e) => Response::Error(format!("bad request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&response)
        .unwrap_or_else(|e| format!("{{\"error\":\"response: {e}\"}}").into_bytes());
    out.push(b'\n');
    if let Err(e) = write_within(&mut write, &out).await {
        tracing::debug!(error = %e, "Admin client went away");
    }
    let _ = write.shutdown().await;
}

/// Writes `bytes`, giving up after [`WRITE_TIMEOUT`] without progress.
async fn write_within(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    bytes: &[u8],
) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(bytes)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client read nothing for 10 s",
        )),
    }
}

/// Answers `dlq list`/`dlq export` as the line `{"dead-letters":[…]}`, written entry by entry
/// while a blocking thread reads the store. A store error after the first entry cannot become
/// an error response any more: it is logged and the line is left unfinished, which the client
/// reports as a broken answer.
async fn stream_dead_letters(
    mut write: tokio::net::unix::OwnedWriteHalf,
    backend: Arc<Backend>,
    filter: Filter,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(STREAM_DEPTH);
    let reader = tokio::task::spawn_blocking(move || {
        let mut first = true;
        backend.each_dead_letter(&filter, |d| {
            let mut chunk = Vec::with_capacity(256 + d.payload.len());
            if !std::mem::take(&mut first) {
                chunk.push(b',');
            }
            if serde_json::to_writer(&mut chunk, &d).is_err() {
                return false;
            }
            // Waits while the writer is behind; fails once it gave up.
            tx.blocking_send(chunk).is_ok()
        })
    });
    const HEAD: &[u8] = b"{\"dead-letters\":[";
    let mut started = false;
    let mut written = Ok(());
    while let Some(chunk) = rx.recv().await {
        if !std::mem::replace(&mut started, true) {
            written = write_within(&mut write, HEAD).await;
        }
        if written.is_ok() {
            written = write_within(&mut write, &chunk).await;
        }
        if written.is_err() {
            // Stops the reader at its next entry.
            break;
        }
    }
    drop(rx);
    let outcome = reader
        .await
        .map_err(|e| AdminError::Protocol(format!("the dead-letter reader failed: {e}")))
        .and_then(|r| r);
    let tail = match (&written, outcome) {
        (Err(e), _) => {
            tracing::debug!(error = %e, "Admin client went away mid-answer");
            None
        }
        (Ok(()), Ok(())) if started => Some(b"]}\n".to_vec()),
        (Ok(()), Ok(())) => Some([HEAD, b"]}\n"].concat()),
        // Nothing written yet: the failure can still be the answer.
        (Ok(()), Err(e)) if !started => {
            let mut line = serde_json::to_vec(&Response::Error(e.to_string())).unwrap_or_default();
            line.push(b'\n');
            Some(line)
        }
        (Ok(()), Err(e)) => {
            tracing::error!(error = %e, "Reading the dead-letter store failed mid-answer; the answer is cut off");
            None
        }
    };
    if let Some(tail) = tail {
        if let Err(e) = write_within(&mut write, &tail).await {
            tracing::debug!(error = %e, "Admin client went away");
        }
    }
    let _ = write.shutdown().await;
}
