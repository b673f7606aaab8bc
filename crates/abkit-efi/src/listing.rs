//! What `abkit efi list` shows: every boot manager variable of a store,
//! read so that one bad variable never hides the rest ([`list`]). The
//! report serializes as the `--json` object and displays as the text form
//! (like `efibootmgr -v`).

use std::fmt;

use serde::Serialize;

use crate::boot::{BootEntries, BootError, BootManager};
use crate::boot_vars::{BOOT_ORDER, boot_entry_name};
use crate::{LoadOption, LoadOptionAttributes, VarName};

/// One decoded `Boot####` entry.
#[derive(Debug, Clone, Serialize)]
pub struct ListedEntry {
    pub number: u16,
    pub name: String,
    pub attributes: u32,
    pub active: bool,
    pub hidden: bool,
    pub force_reconnect: bool,
    /// `boot`, `app` or `reserved`.
    pub category: &'static str,
    pub description: String,
    /// The first device path in UEFI text form.
    pub device_path: Option<String>,
    /// Any further device paths.
    pub extra_paths: Vec<String>,
    /// Lower-case hex.
    pub optional_data: String,
    /// Every device path, for the text form.
    #[serde(skip)]
    paths: Vec<String>,
}

/// A `Boot####` variable that could not be decoded.
#[derive(Debug, Clone, Serialize)]
pub struct ListedSkipped {
    pub number: u16,
    pub name: String,
    pub reason: String,
}

/// A look-alike of `Boot####` that is not an entry (e.g. `Boot001a`).
#[derive(Debug, Clone, Serialize)]
pub struct ListedNonCompliant {
    pub name: String,
    pub reason: String,
}

/// The boot manager's variables as `abkit efi list` reports them.
#[derive(Debug, Clone, Serialize)]
pub struct BootListing {
    pub boot_current: Option<u16>,
    pub boot_next: Option<u16>,
    /// `None` when there is no BootOrder (firmware falls back to its own
    /// order), which is not the same as an empty one.
    pub boot_order: Option<Vec<u16>>,
    pub entries: Vec<ListedEntry>,
    pub skipped: Vec<ListedSkipped>,
    /// Look-alikes of `Boot####` that are not entries (e.g. `Boot001a`).
    pub noncompliant: Vec<ListedNonCompliant>,
    /// Variables that exist but could not be read (e.g. a BootOrder of odd
    /// length). Not part of the text form: a front end shows them as warnings.
    pub errors: Vec<String>,
}

fn category_name(attrs: LoadOptionAttributes) -> &'static str {
    match attrs.category() {
        LoadOptionAttributes::CATEGORY_BOOT => "boot",
        LoadOptionAttributes::CATEGORY_APP => "app",
        _ => "reserved",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ListedEntry {
    fn new(number: u16, o: &LoadOption) -> ListedEntry {
        let paths: Vec<String> = o.file_paths.iter().map(|p| p.to_string()).collect();
        ListedEntry {
            number,
            name: boot_entry_name(number),
            attributes: o.attributes.0,
            active: o.attributes.is_active(),
            hidden: o.attributes.is_hidden(),
            force_reconnect: o.attributes.forces_reconnect(),
            category: category_name(o.attributes),
            description: o.description.clone(),
            device_path: o.boot_path().map(|p| p.to_string()),
            extra_paths: paths.iter().skip(1).cloned().collect(),
            optional_data: hex(&o.optional_data),
            paths,
        }
    }
}

/// The value of a variable, or `None` with its error noted (a garbage
/// BootNext must not hide the rest of the listing).
fn readable<T>(errors: &mut Vec<String>, r: Result<Option<T>, BootError>) -> Option<T> {
    r.unwrap_or_else(|e| {
        errors.push(e.to_string());
        None
    })
}

/// Reads BootCurrent, BootNext, BootOrder and every `Boot####` entry.
/// Only a store that cannot list its variables fails; an unreadable
/// variable is noted in [`BootListing::errors`] or [`BootListing::skipped`].
pub fn list(bm: &BootManager<'_>) -> Result<BootListing, BootError> {
    let mut errors = Vec::new();
    let boot_current = readable(&mut errors, bm.boot_current());
    let boot_next = readable(&mut errors, bm.boot_next());
    let order_exists = readable(
        &mut errors,
        bm.store_ref()
            .get(&VarName::global(BOOT_ORDER))
            .map(|v| v.map(|_| ()))
            .map_err(Into::into),
    )
    .is_some();
    let boot_order = if order_exists {
        readable(&mut errors, bm.boot_order().map(Some))
    } else {
        None
    };
    let BootEntries {
        entries,
        skipped,
        noncompliant,
    } = bm.entries()?;
    Ok(BootListing {
        boot_current,
        boot_next,
        boot_order,
        entries: entries
            .iter()
            .map(|e| ListedEntry::new(e.number, &e.option))
            .collect(),
        skipped: skipped
            .into_iter()
            .map(|s| ListedSkipped {
                number: s.number,
                name: boot_entry_name(s.number),
                reason: s.reason,
            })
            .collect(),
        noncompliant: noncompliant
            .into_iter()
            .map(|n| ListedNonCompliant {
                name: n.name,
                reason: n.reason,
            })
            .collect(),
        errors,
    })
}

/// `s` for a terminal: characters that could move the cursor, fake a line or
/// reorder the text (C0/C1 controls, DEL, bidi controls, line/paragraph
/// separators) are escaped the way Rust writes them (`\n`, `\u{1b}`);
/// everything else, backslashes included (`\EFI\...`), is kept.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let unsafe_char = c.is_control()
            || matches!(
                c,
                '\u{200E}'
                    | '\u{200F}'
                    | '\u{202A}'..='\u{202E}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{2028}'
                    | '\u{2029}'
            );
        if unsafe_char {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl fmt::Display for ListedEntry {
    /// `Boot0001* description [flags]\tpaths data:hex`, control characters escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.active { "*" } else { " " };
        let extra_attrs: Vec<&str> = [
            (self.hidden, "hidden"),
            (self.force_reconnect, "force-reconnect"),
            (self.category != "boot", self.category),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, s)| *s)
        .collect();
        let flags = if extra_attrs.is_empty() {
            String::new()
        } else {
            format!(" [{}]", extra_attrs.join(","))
        };
        write!(
            f,
            "Boot{:04X}{mark} {}{flags}\t{}",
            self.number,
            printable(&self.description),
            printable(&self.paths.join(" + "))
        )?;
        if !self.optional_data.is_empty() {
            write!(f, " data:{}", self.optional_data)?;
        }
        Ok(())
    }
}

impl fmt::Display for BootListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = |n: Option<u16>| n.map_or("-".to_string(), |n| format!("{n:04X}"));
        writeln!(f, "BootCurrent: {}", num(self.boot_current))?;
        writeln!(f, "BootNext: {}", num(self.boot_next))?;
        match &self.boot_order {
            Some(order) => {
                let order: Vec<String> = order.iter().map(|n| format!("{n:04X}")).collect();
                writeln!(f, "BootOrder: {}", order.join(","))?;
            }
            None => writeln!(f, "BootOrder: -")?,
        }
        for e in &self.entries {
            writeln!(f, "{e}")?;
        }
        for s in &self.skipped {
            writeln!(
                f,
                "Boot{:04X}? (unreadable: {})",
                s.number,
                printable(&s.reason)
            )?;
        }
        for n in &self.noncompliant {
            writeln!(
                f,
                "{}? (non-compliant, not an entry: {})",
                printable(&n.name),
                printable(&n.reason)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn printable_escapes_what_a_terminal_would_act_on() {
        assert_eq!(printable("\\EFI\\a b-é.efi"), "\\EFI\\a b-é.efi");
        assert_eq!(
            printable("a\x1b[2J\n\r\t\x7f\u{9b}b"),
            "a\\u{1b}[2J\\n\\r\\t\\u{7f}\\u{9b}b"
        );
        assert_eq!(printable("x\u{202E}y\u{2028}"), "x\\u{202e}y\\u{2028}");
    }
}
