//! Writes the guest's initramfs: a `newc` cpio archive (the format the Linux kernel unpacks) of
//! the image directory that `scripts/powercut.sh` assembled, plus the files of this run.

use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// A `newc` archive being written.
pub(crate) struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    pub(crate) fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            written: 0,
        }
    }

    /// Adds `dir`'s contents (directories, regular files, symbolic links) under `/`, in sorted
    /// order, keeping permission bits.
    pub(crate) fn add_tree(&mut self, dir: &Path) -> io::Result<()> {
        self.add_dir_entries(dir, "")
    }

    fn add_dir_entries(&mut self, dir: &Path, prefix: &str) -> io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let meta = std::fs::symlink_metadata(entry.path())?;
            let perm = meta.mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                self.entry(&name, 0o120000 | 0o777, target.to_string_lossy().as_bytes())?;
            } else if meta.is_dir() {
                self.entry(&name, 0o040000 | perm, &[])?;
                self.add_dir_entries(&entry.path(), &format!("{name}/"))?;
            } else if meta.is_file() {
                let data = std::fs::read(entry.path())?;
                self.entry(&name, 0o100000 | perm, &data)?;
            }
        }
        Ok(())
    }

    /// Adds a directory.
    pub(crate) fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, 0o040755, &[])
    }

    /// Adds a regular file with permission bits `perm` (e.g. 0o644).
    pub(crate) fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, 0o100000 | (perm & 0o7777), data)
    }

    /// Writes the trailer and returns the writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.entry_with_ino("TRAILER!!!", 0, 0, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let ino = self.ino;
        self.ino += 1;
        self.entry_with_ino(name, ino, mode, data)
    }

    fn entry_with_ino(&mut self, name: &str, ino: u32, mode: u32, data: &[u8]) -> io::Result<()> {
        let name_len = name.len() + 1; // with its NUL
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{name_len:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            size = data.len(),
            maj = 0,
            min = 0,
            rmaj = 0,
            rmin = 0,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Pads to a multiple of 4 bytes, as `newc` requires after the name and after the data.
    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.write(&[0; 3][..n as usize])
    }
}

/// Whether `path` is executable by its owner (for checks before packing).
pub(crate) fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o100 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_the_archive_ends_with_a_trailer() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.dir("etc").unwrap();
        cpio.file("etc/a", 0o644, b"hello").unwrap();
        let bytes = cpio.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("etc/a\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
        // The second header starts on a 4-byte boundary right after the first entry.
        let second = text
            .find("070701")
            .and_then(|first| text[first + 1..].find("070701"));
        assert_eq!(second.map(|s| (s + 1) % 4), Some(0));
    }
}
