//! A program in a real terminal: a tmux server of our own (its own socket, no user
//! configuration) with one window of a fixed size, read with `capture-pane` and driven with
//! `send-keys`. The pane stays after the program exits, and its exit status is kept.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux session running one program; the server is killed on drop.
pub struct Tmux {
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Tmux {
    /// Runs `program args…` in a `width`×`height` terminal.
    pub fn start(width: u16, height: u16, program: &std::path::Path, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tmux.sock");
        let conf = dir.path().join("tmux.conf");
        // Keep the pane (and the exit status) when the program exits; no status line, so the
        // program gets every row.
        std::fs::write(&conf, "set -g remain-on-exit on\nset -g status off\n").unwrap();
        // A shell around the program writes its exit status to a file: tmux 3.3 sometimes leaves
        // an exited pane's process unreaped (a zombie), and `#{pane_dead_status}` empty.
        let status_file = dir.path().join("status");
        let tmux = Self { socket, dir };
        let status = tmux
            .command()
            .arg("-f")
            .arg(&conf)
            .args(["new-session", "-d", "-s", "t", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .args(["--", "sh", "-c", "\"$@\"; echo $? > \"$0\""])
            .arg(&status_file)
            .arg(program)
            .args(args)
            .status()
            .expect("tmux must be installed (apt-get install tmux; scripts/test.sh does)");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn command(&self) -> Command {
        // The server forks from the first of these: it must not hold the Kafka mock's sockets.
        let mut command = super::clean_command("tmux");
        command.arg("-S").arg(&self.socket);
        command
    }

    fn output(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The visible screen, one string per row.
    pub fn capture(&self) -> String {
        self.output(&["capture-pane", "-p", "-t", "t"])
    }

    /// Types `keys` (tmux key names: `q`, `Escape`, `C-c`).
    pub fn send_keys(&self, keys: &str) {
        self.output(&["send-keys", "-t", "t", keys]);
    }

    /// The program's exit status once it has exited.
    pub fn exit_status(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("status"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Waits for the program to exit and returns its status (panicking with the screen after
    /// `limit`).
    pub fn wait_exit(&self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the program did not exit; the screen:\n{}",
                self.capture()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The terminal's size as the program sees it.
    pub fn size(&self) -> (u16, u16) {
        let text = self.output(&[
            "display-message",
            "-p",
            "-t",
            "t",
            "#{pane_width} #{pane_height}",
        ]);
        let mut parts = text.split_whitespace().map(|v| v.parse().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    }

    /// Polls the screen until `cond` holds (returning that screen), panicking with `what` and
    /// the last screen after `limit`.
    pub fn wait_for(&self, limit: Duration, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.capture();
            if cond(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .command()
            .arg("kill-server")
            .stderr(std::process::Stdio::null())
            .status();
    }
}
