//! The verified root on the kernel command line, in systemd's words so a
//! stock systemd initrd (systemd-veritysetup-generator) could mount it too:
//!
//! ```text
//! roothash=<hex>                                           systemd 233
//! systemd.verity_root_data=PARTLABEL=<PREFIX>-SYSTEM-X     systemd 233
//! systemd.verity_root_hash=PARTLABEL=<PREFIX>-SYSTEM-X     systemd 233
//! systemd.verity_root_options=hash-offset=<bytes>          systemd 248 (hash-offset= itself: 254)
//! ```
//!
//! The loader rewrites `SYSTEM-X` to the slot it boots, so every word names
//! the same slot (the engine's running-slot detection refuses a command line
//! naming both). [`CmdlineCatcher`] pulls the `.cmdline` section out of a
//! UKI streaming past, so `bundle verify` can compare the UKI's root hash
//! with the system payload's verity root without holding the UKI in memory.

use std::io::{self, Write};

/// `roothash=`.
pub const ROOTHASH: &str = "roothash";
/// `systemd.verity_root_data=`.
pub const VERITY_ROOT_DATA: &str = "systemd.verity_root_data";
/// `systemd.verity_root_hash=`.
pub const VERITY_ROOT_HASH: &str = "systemd.verity_root_hash";
/// `systemd.verity_root_options=`.
pub const VERITY_ROOT_OPTIONS: &str = "systemd.verity_root_options";
/// The device systemd's generator maps the root to (and `root=` names).
pub const ROOT_DEVICE: &str = "/dev/mapper/root";

/// Why a command line cannot take the verity words.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootCmdlineError {
    #[error("the command line already has `{0}`: abkit writes the verity parameters itself")]
    AlreadySet(String),
    #[error(
        "the command line has `{0}`: with a verity root, root= must be {ROOT_DEVICE} (or absent)"
    )]
    OtherRoot(String),
    #[error("label prefix {0:?} must be non-empty printable ASCII without spaces")]
    BadPrefix(String),
}

/// The root's verity parameters as a command line carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootVerity {
    /// Hex, as written.
    pub root_hash: String,
    pub data: Option<String>,
    pub hash: Option<String>,
    /// `hash-offset=` from the options, in bytes.
    pub hash_offset: Option<u64>,
}

/// Appends the verity words (and `root=/dev/mapper/root` when there is no
/// `root=`) to `cmdline`. Refuses a command line that already sets any of
/// them, or a `root=` naming another device.
pub fn with_verity_root(
    cmdline: &str,
    label_prefix: &str,
    root_hash_hex: &str,
    hash_offset: u64,
) -> Result<String, RootCmdlineError> {
    if label_prefix.is_empty()
        || !label_prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'=')
    {
        return Err(RootCmdlineError::BadPrefix(label_prefix.to_string()));
    }
    let mut has_root = false;
    for word in cmdline.split_whitespace() {
        let key = word.split_once('=').map_or(word, |(k, _)| k);
        if [
            ROOTHASH,
            VERITY_ROOT_DATA,
            VERITY_ROOT_HASH,
            VERITY_ROOT_OPTIONS,
        ]
        .contains(&key)
        {
            return Err(RootCmdlineError::AlreadySet(word.to_string()));
        }
        if key == "root" {
            if word != format!("root={ROOT_DEVICE}") {
                return Err(RootCmdlineError::OtherRoot(word.to_string()));
            }
            has_root = true;
        }
    }
    let slot = format!("PARTLABEL={label_prefix}-SYSTEM-X");
    let mut out = cmdline.trim().to_string();
    let mut push = |word: String| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&word);
    };
    if !has_root {
        push(format!("root={ROOT_DEVICE}"));
    }
    push(format!("{ROOTHASH}={root_hash_hex}"));
    push(format!("{VERITY_ROOT_DATA}={slot}"));
    push(format!("{VERITY_ROOT_HASH}={slot}"));
    push(format!("{VERITY_ROOT_OPTIONS}=hash-offset={hash_offset}"));
    Ok(out)
}

/// The verity parameters in a command line; None without `roothash=`.
pub fn root_verity(cmdline: &str) -> Option<RootVerity> {
    let mut found = None::<String>;
    let (mut data, mut hash, mut hash_offset) = (None, None, None);
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            ROOTHASH => found = Some(value.to_string()),
            VERITY_ROOT_DATA => data = Some(value.to_string()),
            VERITY_ROOT_HASH => hash = Some(value.to_string()),
            VERITY_ROOT_OPTIONS => {
                for option in value.split(',') {
                    if let Some(n) = option.strip_prefix("hash-offset=") {
                        hash_offset = n.parse().ok();
                    }
                }
            }
            _ => {}
        }
    }
    Some(RootVerity {
        root_hash: found?,
        data,
        hash,
        hash_offset,
    })
}

/// A `Write` sink that a UKI streams through (from its first byte): it keeps
/// the headers, finds the `.cmdline` section in the section table and keeps
/// just that section's bytes. Memory: the first [`CmdlineCatcher::HEAD`]
/// bytes plus the command line.
pub struct CmdlineCatcher {
    head: Vec<u8>,
    seen: u64,
    /// File range of `.cmdline`, once the section table was read.
    range: Option<Option<(u64, u64)>>,
    cmdline: Vec<u8>,
}

impl Default for CmdlineCatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl CmdlineCatcher {
    /// Bytes of the file kept to read the section table from.
    pub const HEAD: usize = 64 << 10;

    pub fn new() -> CmdlineCatcher {
        CmdlineCatcher {
            head: Vec::new(),
            seen: 0,
            range: None,
            cmdline: Vec::new(),
        }
    }

    /// The section table, from the head: the `.cmdline` file range.
    fn find_range(head: &[u8]) -> Option<(u64, u64)> {
        let u16_at = |at: usize| Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?));
        if head.get(..2)? != b"MZ" {
            return None;
        }
        let pe = u32_at(0x3c)? as usize;
        if head.get(pe..pe + 4)? != b"PE\0\0" {
            return None;
        }
        let sections = u16_at(pe + 6)? as usize;
        let table = pe + 24 + u16_at(pe + 20)? as usize;
        for i in 0..sections {
            let at = table + 40 * i;
            let name = head.get(at..at + 8)?;
            if name == b".cmdline" {
                let virtual_size = u64::from(u32_at(at + 8)?);
                let raw_size = u64::from(u32_at(at + 16)?);
                let offset = u64::from(u32_at(at + 20)?);
                let len = match (virtual_size, raw_size) {
                    (0, r) => r,
                    (v, 0) => v,
                    (v, r) => v.min(r),
                };
                return Some((offset, offset + len));
            }
        }
        None
    }

    /// The command line (trimmed at NUL and whitespace), if the stream had one.
    pub fn finish(mut self) -> Option<String> {
        if self.range.is_none() {
            self.range = Some(Self::find_range(&self.head));
            if let Some(Some((start, end))) = self.range {
                let (s, e) = (start as usize, (end as usize).min(self.head.len()));
                if s < e {
                    self.cmdline = self.head[s..e].to_vec();
                }
            }
        }
        self.range??;
        Some(String::from_utf8_lossy(abkit_loader_core::trim_cmdline(&self.cmdline)).into_owned())
    }
}

impl Write for CmdlineCatcher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let start = self.seen;
        self.seen += buf.len() as u64;
        if self.head.len() < Self::HEAD {
            let take = (Self::HEAD - self.head.len()).min(buf.len());
            self.head.extend_from_slice(&buf[..take]);
            if self.head.len() < Self::HEAD {
                return Ok(buf.len());
            }
            // Head complete: read the section table; what the head already
            // holds of the command line is taken from it.
            let range = Self::find_range(&self.head);
            self.range = Some(range);
            if let Some((s, e)) = range {
                let (s, e) = (s as usize, (e as usize).min(self.head.len()));
                if s < e {
                    self.cmdline.extend_from_slice(&self.head[s..e]);
                }
            }
        }
        if let Some(Some((s, e))) = self.range {
            let lo = s.max(start).max(Self::HEAD as u64);
            let hi = e.min(self.seen);
            if lo < hi {
                self.cmdline
                    .extend_from_slice(&buf[(lo - start) as usize..(hi - start) as usize]);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "4f22aa";

    #[test]
    fn words_are_appended_in_systemds_names() {
        let line = with_verity_root("console=ttyS0 ro", "ABKIT", H, 8192).unwrap();
        assert_eq!(
            line,
            "console=ttyS0 ro root=/dev/mapper/root roothash=4f22aa \
             systemd.verity_root_data=PARTLABEL=ABKIT-SYSTEM-X \
             systemd.verity_root_hash=PARTLABEL=ABKIT-SYSTEM-X \
             systemd.verity_root_options=hash-offset=8192"
        );
        let v = root_verity(&line).unwrap();
        assert_eq!(v.root_hash, H);
        assert_eq!(v.hash_offset, Some(8192));
        assert_eq!(v.data.as_deref(), Some("PARTLABEL=ABKIT-SYSTEM-X"));
        // An explicit root=/dev/mapper/root is kept, not doubled.
        let line = with_verity_root("root=/dev/mapper/root", "P", H, 1).unwrap();
        assert_eq!(line.matches("root=/dev/mapper/root").count(), 1);
        assert_eq!(root_verity("console=ttyS0"), None);
    }

    #[test]
    fn conflicting_words_are_refused() {
        assert_eq!(
            with_verity_root("roothash=00", "ABKIT", H, 1),
            Err(RootCmdlineError::AlreadySet("roothash=00".into()))
        );
        assert!(matches!(
            with_verity_root("systemd.verity_root_options=x", "ABKIT", H, 1),
            Err(RootCmdlineError::AlreadySet(_))
        ));
        assert_eq!(
            with_verity_root("root=PARTLABEL=ABKIT-SYSTEM-X", "ABKIT", H, 1),
            Err(RootCmdlineError::OtherRoot(
                "root=PARTLABEL=ABKIT-SYSTEM-X".into()
            ))
        );
        assert!(with_verity_root("", "A B", H, 1).is_err());
        assert!(with_verity_root("", "", H, 1).is_err());
    }

    fn catch(bytes: &[u8], piece: usize) -> Option<String> {
        let mut c = CmdlineCatcher::new();
        for p in bytes.chunks(piece) {
            c.write_all(p).unwrap();
        }
        c.finish()
    }

    #[test]
    fn catcher_finds_the_command_line_in_any_pieces() {
        // A fake PE: headers, then the .cmdline bytes far past the head.
        let cmdline = b"console=ttyS0 roothash=abcd\0\0";
        let offset = 200_000usize;
        let mut pe = vec![0u8; offset + 4096];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x86..0x88].copy_from_slice(&2u16.to_le_bytes());
        pe[0x94..0x96].copy_from_slice(&240u16.to_le_bytes());
        let table = 0x80 + 24 + 240;
        pe[table..table + 5].copy_from_slice(b".text");
        let s = table + 40;
        pe[s..s + 8].copy_from_slice(b".cmdline");
        pe[s + 8..s + 12].copy_from_slice(&(cmdline.len() as u32).to_le_bytes());
        pe[s + 16..s + 20].copy_from_slice(&4096u32.to_le_bytes());
        pe[s + 20..s + 24].copy_from_slice(&(offset as u32).to_le_bytes());
        pe[offset..offset + cmdline.len()].copy_from_slice(cmdline);
        for piece in [1 << 20, 4096, 333, 65536] {
            assert_eq!(
                catch(&pe, piece).as_deref(),
                Some("console=ttyS0 roothash=abcd"),
                "pieces of {piece}"
            );
        }
        // Inside the head too, and in a file shorter than the head.
        let mut small = pe[..0x1000].to_vec();
        small.extend_from_slice(cmdline);
        small[s + 20..s + 24].copy_from_slice(&0x1000u32.to_le_bytes());
        assert_eq!(
            catch(&small, 100).as_deref(),
            Some("console=ttyS0 roothash=abcd")
        );
        // No .cmdline, not a PE.
        small[s..s + 8].copy_from_slice(b".osrel\0\0");
        assert_eq!(catch(&small, 100), None);
        assert_eq!(catch(b"hello", 2), None);
    }
}
