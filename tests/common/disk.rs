//! A real small filesystem for disk faults: a tmpfs of a given size mounted on a directory
//! (root only), filled with a ballast file until the kernel refuses writes (ENOSPC), emptied
//! again to give the space back. Unmounted on drop.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=…`, e.g. "16m") on `dir` (created). When that
    /// is impossible (not root, no mount), prints that `test` is SKIPPED and returns `None`;
    /// under `CI=true` it fails instead, so a build machine cannot pass without the test.
    pub fn mount(dir: &Path, size: &str, test: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self {
                dir: dir.to_owned(),
            }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                let message = format!("SKIPPED: {test}: cannot mount a tmpfs ({why})");
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
                let _ = writeln!(std::io::stderr(), "\n*** {message} ***\n");
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Fills the filesystem with `name` until a write fails with ENOSPC; returns the bytes
    /// written.
    pub fn fill(&self, name: &str) -> u64 {
        let mut file = std::fs::File::create(self.dir.join(name)).unwrap();
        let chunk = vec![0xa5u8; 4096];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", self.dir.display()),
            }
        }
        written
    }

    /// Deletes the ballast `name`: the space is free again.
    pub fn free(&self, name: &str) {
        std::fs::remove_file(self.dir.join(name)).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
