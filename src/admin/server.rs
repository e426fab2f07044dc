//! The daemon's side of the admin API: a Unix socket (mode 0660, owned by the user and group
//! the daemon runs as) that answers one JSON request line per connection with the daemon's own
//! [`Backend`]. A stale socket file left by a crash is replaced at start; the file is removed at
//! shutdown.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::{AdminError, Backend, Request, Response};

/// Permissions of the socket file: the service user and its group.
pub const SOCKET_MODE: u32 = 0o660;
/// Longest accepted request line.
const MAX_REQUEST: u64 = 64 << 10;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, backend.clone()));
                }
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
                backend.handle(request).await
            }
            Err(e) => Response::Error(format!("bad request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&response)
        .unwrap_or_else(|e| format!("{{\"error\":\"response: {e}\"}}").into_bytes());
    out.push(b'\n');
    if let Err(e) = write.write_all(&out).await {
        tracing::debug!(error = %e, "Admin client went away");
    }
    let _ = write.shutdown().await;
}
