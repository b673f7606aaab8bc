//! A writer of "newc" cpio archives (`cpio -H newc`), the format Linux
//! unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (magic `070701`, then 13 fields of 8
//! hex digits: ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
//! devminor, rdevmajor, rdevminor, namesize with NUL, check), the NUL-ended
//! name padded to 4 bytes, and the data padded to 4 bytes. The archive ends
//! with an entry named `TRAILER!!!`.

use std::io::{self, Write};

/// File type bits of `mode`.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// Why an entry cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("cpio entry name {0:?} is empty, absolute or holds a NUL")]
    BadName(String),
    #[error("cpio entry {name:?} is {len} bytes; newc stores at most 4 GiB - 1")]
    TooLarge { name: String, len: usize },
    #[error("writing the cpio archive failed: {0}")]
    Io(#[from] io::Error),
}

/// Writes entries one after another; call [`CpioWriter::finish`] at the end.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter { out, next_ino: 1 }
    }

    /// A directory; `path` is relative (`dev`, `lib/modules`), owner root.
    pub fn dir(&mut self, path: &str, permissions: u32) -> Result<(), CpioError> {
        self.entry(path, S_IFDIR | (permissions & 0o7777), 2, &[])
    }

    /// A regular file with `data`.
    pub fn file(&mut self, path: &str, permissions: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(path, S_IFREG | (permissions & 0o7777), 1, data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        self.entry(path, S_IFLNK | 0o777, 1, target.as_bytes())
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.header(TRAILER, 0, 0, 0, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) -> Result<(), CpioError> {
        if path.is_empty() || path.starts_with('/') || path.contains('\0') || path == TRAILER {
            return Err(CpioError::BadName(path.to_string()));
        }
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            name: path.to_string(),
            len: data.len(),
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(path, ino, mode, nlink, size)?;
        self.write_padded(data)
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
    ) -> Result<(), CpioError> {
        let name_size =
            u32::try_from(name.len() + 1).map_err(|_| CpioError::BadName(name.to_string()))?;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, name_size, 0];
        let mut header = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for field in fields {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        debug_assert_eq!(header.len(), HEADER_LEN);
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        self.write_padded(&header)
    }

    fn write_padded(&mut self, bytes: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(bytes)?;
        let pad = (4 - bytes.len() % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn archive() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.dir("lib", 0o755).unwrap();
        w.file("lib/hello.txt", 0o644, b"hello, initrd\n").unwrap();
        w.file("init", 0o755, &[0x7f, b'E', b'L', b'F', 1, 2, 3])
            .unwrap();
        w.file("empty", 0o600, b"").unwrap();
        w.symlink("sbin", "lib").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn first_header_bytes_are_exact() {
        let bytes = archive();
        let expected = concat!(
            "070701", "00000001", "000041ed", "00000000", "00000000", "00000002", "00000000",
            "00000000", "00000000", "00000000", "00000000", "00000000", "00000004", "00000000",
            "dev\0",
        );
        assert_eq!(&bytes[..expected.len()], expected.as_bytes());
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_what_we_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, archive()).unwrap();
        let list = Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&path)
            .output()
            .expect("cpio is installed by make deps");
        assert!(
            list.status.success(),
            "{}",
            String::from_utf8_lossy(&list.stderr)
        );
        let listing = String::from_utf8(list.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 6, "{listing}");
        assert!(
            lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" dev"),
            "{listing}"
        );
        assert!(
            lines[2].starts_with("-rw-r--r--") && lines[2].contains(" 14 "),
            "{listing}"
        );
        assert!(
            lines[3].starts_with("-rwxr-xr-x") && lines[3].ends_with(" init"),
            "{listing}"
        );
        assert!(
            lines[5].starts_with("lrwxrwxrwx") && lines[5].ends_with("sbin -> lib"),
            "{listing}"
        );

        let out = dir.path().join("x");
        std::fs::create_dir(&out).unwrap();
        let extract = Command::new("cpio")
            .args(["-i", "-d", "--quiet", "-F"])
            .arg(&path)
            .current_dir(&out)
            .output()
            .unwrap();
        assert!(
            extract.status.success(),
            "{}",
            String::from_utf8_lossy(&extract.stderr)
        );
        assert_eq!(
            std::fs::read(out.join("lib/hello.txt")).unwrap(),
            b"hello, initrd\n"
        );
        assert_eq!(
            std::fs::read(out.join("init")).unwrap(),
            [0x7f, b'E', b'L', b'F', 1, 2, 3]
        );
        assert_eq!(
            std::fs::read_link(out.join("sbin")).unwrap(),
            std::path::Path::new("lib")
        );
    }

    #[test]
    fn bad_names_are_refused() {
        let mut w = CpioWriter::new(Vec::new());
        for name in ["", "/abs", "a\0b", "TRAILER!!!"] {
            let err = w.file(name, 0o644, b"x").unwrap_err().to_string();
            assert!(err.contains("is empty, absolute or holds a NUL"), "{err}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        #[test]
        fn any_file_round_trips_through_gnu_cpio(
            name in "[a-z]{1,20}",
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        ) {
            let mut w = CpioWriter::new(Vec::new());
            w.file(&name, 0o644, &data).unwrap();
            let bytes = w.finish().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a.cpio");
            std::fs::write(&path, bytes).unwrap();
            let out = Command::new("cpio")
                .args(["-i", "--to-stdout", "--quiet", "-F"])
                .arg(&path)
                .output()
                .unwrap();
            proptest::prop_assert!(out.status.success());
            proptest::prop_assert_eq!(out.stdout, data);
        }
    }
}
