//! A serial device stood in for by a socat pseudo-terminal pair.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_until;

/// A pseudo-terminal pair made by socat, standing in for a serial device: the sensor writes to
/// `<dir>/ttyA`, the gateway reads `<dir>/ttyB`. Killing socat is an unplug (the reader sees
/// end-of-file); starting it again with the same link names is the device coming back. Killed
/// on drop.
pub struct Socat {
    dir: PathBuf,
    child: Option<Child>,
    sensor: Option<std::fs::File>,
}

impl Socat {
    /// Links in `dir`, not started yet (the device is absent).
    pub fn absent(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            child: None,
            sensor: None,
        }
    }

    /// Starts a pair with links in `dir`.
    pub fn start(dir: &Path) -> Self {
        let mut socat = Self::absent(dir);
        socat.plug();
        socat
    }

    /// The path the gateway opens.
    pub fn device(&self) -> PathBuf {
        self.dir.join("ttyB")
    }

    fn sensor_path(&self) -> PathBuf {
        self.dir.join("ttyA")
    }

    /// Starts socat (again) under the same link names and opens the sensor's end. The sensor's
    /// end stays open as long as socat runs: socat quits when every opener of a pty left.
    pub fn plug(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        assert!(self.child.is_none(), "socat is already running");
        // A link left by a killed socat points to a pty that is gone (or reused): remove it
        // so that waiting for the links waits for the new ones.
        let _ = std::fs::remove_file(self.sensor_path());
        let _ = std::fs::remove_file(self.device());
        let child = Command::new("socat")
            .arg("-d")
            .arg("-d")
            .arg(format!(
                "pty,raw,echo=0,link={}",
                self.sensor_path().display()
            ))
            .arg(format!("pty,raw,echo=0,link={}", self.device().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), "socat's pty links", || {
            self.sensor_path().exists() && self.device().exists()
        });
        let sensor = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(self.sensor_path())
            .expect("open the sensor's end of the pty");
        self.sensor = Some(sensor);
    }

    /// Kills socat without warning, like pulling the USB cable, and removes the links as udev
    /// removes `/dev/serial/by-id/…` (a killed socat leaves them pointing at a pty number
    /// that the next pty, maybe another test's, reuses).
    pub fn unplug(&mut self) {
        self.sensor = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.sensor_path());
        let _ = std::fs::remove_file(self.device());
    }

    /// Whether socat is running.
    pub fn is_plugged(&self) -> bool {
        self.child.is_some()
    }

    /// A handle on the sensor's end for a writer thread; writes fail once socat is gone.
    pub fn sensor(&self) -> std::fs::File {
        self.sensor
            .as_ref()
            .expect("socat is running")
            .try_clone()
            .expect("clone the pty handle")
    }

    /// Writes `bytes` as the sensor (blocks while the gateway does not read).
    pub fn write(&self, bytes: &[u8]) {
        use std::io::Write;
        self.sensor().write_all(bytes).expect("write to the pty");
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        self.unplug();
    }
}
