//! `abkit efi`: show the firmware's boot variables, like `efibootmgr -v`.

use abkit_efi::boot::{BootEntries, BootManager};
use abkit_efi::boot_vars::boot_entry_name;
use abkit_efi::{LoadOption, LoadOptionAttributes};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::vars::VarStoreArgs;

#[derive(Subcommand)]
pub enum EfiCommand {
    /// List BootCurrent, BootNext, BootOrder and every Boot#### entry.
    ///
    /// Entries marked `*` are active. Each line shows the description and
    /// the device path in UEFI text form, e.g.
    /// `HD(1,GPT,<guid>,0x800,0x40000)/\EFI\abkit\boot-a.efi`.
    /// Entries that cannot be decoded are listed as unreadable; they never
    /// stop the listing. Look-alike names firmware does not boot (such as
    /// `Boot001a`, lower-case hex) are listed as non-compliant.
    /// In the text output, control characters in descriptions and paths are
    /// escaped (`\n`, `\u{1b}`); `--json` gives them exactly.
    List(ListArgs),
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    store: VarStoreArgs,

    /// Print one JSON object instead of text (for scripts).
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: EfiCommand) -> anyhow::Result<()> {
    match cmd {
        EfiCommand::List(args) => list(args),
    }
}

#[derive(Serialize)]
struct EntryJson {
    number: u16,
    name: String,
    attributes: u32,
    active: bool,
    hidden: bool,
    force_reconnect: bool,
    category: &'static str,
    description: String,
    device_path: Option<String>,
    extra_paths: Vec<String>,
    optional_data: String,
}

#[derive(Serialize)]
struct SkippedJson {
    number: u16,
    name: String,
    reason: String,
}

#[derive(Serialize)]
struct NonCompliantJson {
    name: String,
    reason: String,
}

#[derive(Serialize)]
struct ListJson {
    boot_current: Option<u16>,
    boot_next: Option<u16>,
    boot_order: Option<Vec<u16>>,
    entries: Vec<EntryJson>,
    skipped: Vec<SkippedJson>,
    /// Look-alikes of `Boot####` that are not entries (e.g. `Boot001a`).
    noncompliant: Vec<NonCompliantJson>,
    /// Variables that exist but could not be read (e.g. a BootOrder of odd length).
    errors: Vec<String>,
}

fn category_name(attrs: LoadOptionAttributes) -> &'static str {
    match attrs.category() {
        LoadOptionAttributes::CATEGORY_BOOT => "boot",
        LoadOptionAttributes::CATEGORY_APP => "app",
        _ => "reserved",
    }
}

fn entry_json(number: u16, o: &LoadOption) -> EntryJson {
    EntryJson {
        number,
        name: boot_entry_name(number),
        attributes: o.attributes.0,
        active: o.attributes.is_active(),
        hidden: o.attributes.is_hidden(),
        force_reconnect: o.attributes.forces_reconnect(),
        category: category_name(o.attributes),
        description: o.description.clone(),
        device_path: o.boot_path().map(|p| p.to_string()),
        extra_paths: o.file_paths.iter().skip(1).map(|p| p.to_string()).collect(),
        optional_data: hex::encode(&o.optional_data),
    }
}

/// `s` for a terminal: characters that could move the cursor, fake a line or
/// reorder the text (C0/C1 controls, DEL, bidi controls, line/paragraph
/// separators) are escaped the way Rust writes them (`\n`, `\u{1b}`);
/// everything else, backslashes included (`\EFI\...`), is kept.
fn printable(s: &str) -> String {
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

/// The value of a variable, or `None` with its error noted (a garbage
/// BootNext must not hide the rest of the listing).
fn readable<T>(errors: &mut Vec<String>, r: Result<Option<T>, abkit_efi::BootError>) -> Option<T> {
    r.unwrap_or_else(|e| {
        errors.push(e.to_string());
        None
    })
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let mut store = args.store.open()?;
    let bm = BootManager::new(store.as_mut());
    let mut errors = Vec::new();
    let boot_current = readable(&mut errors, bm.boot_current());
    let boot_next = readable(&mut errors, bm.boot_next());
    // An absent BootOrder (firmware falls back to its own order) is shown
    // as such, not as an empty list.
    let order_exists = readable(
        &mut errors,
        bm.store_ref()
            .get(&abkit_efi::VarName::global(
                abkit_efi::boot_vars::BOOT_ORDER,
            ))
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

    if args.json {
        let out = ListJson {
            boot_current,
            boot_next,
            boot_order,
            entries: entries
                .iter()
                .map(|e| entry_json(e.number, &e.option))
                .collect(),
            skipped: skipped
                .iter()
                .map(|s| SkippedJson {
                    number: s.number,
                    name: boot_entry_name(s.number),
                    reason: s.reason.clone(),
                })
                .collect(),
            noncompliant: noncompliant
                .iter()
                .map(|n| NonCompliantJson {
                    name: n.name.clone(),
                    reason: n.reason.clone(),
                })
                .collect(),
            errors,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    let num = |n: Option<u16>| n.map_or("-".to_string(), |n| format!("{n:04X}"));
    println!("BootCurrent: {}", num(boot_current));
    println!("BootNext: {}", num(boot_next));
    match &boot_order {
        Some(order) => println!(
            "BootOrder: {}",
            order
                .iter()
                .map(|n| format!("{n:04X}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => println!("BootOrder: -"),
    }
    for e in &entries {
        let o = &e.option;
        let mark = if o.attributes.is_active() { "*" } else { " " };
        let extra_attrs: Vec<&str> = [
            (o.attributes.is_hidden(), "hidden"),
            (o.attributes.forces_reconnect(), "force-reconnect"),
            (
                o.attributes.category() != LoadOptionAttributes::CATEGORY_BOOT,
                category_name(o.attributes),
            ),
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
        let paths: Vec<String> = o.file_paths.iter().map(|p| p.to_string()).collect();
        let mut line = format!(
            "Boot{:04X}{mark} {}{flags}\t{}",
            e.number,
            printable(&o.description),
            printable(&paths.join(" + "))
        );
        if !o.optional_data.is_empty() {
            line.push_str(&format!(" data:{}", hex::encode(&o.optional_data)));
        }
        println!("{line}");
    }
    for s in &skipped {
        println!(
            "Boot{:04X}? (unreadable: {})",
            s.number,
            printable(&s.reason)
        );
    }
    for n in &noncompliant {
        println!(
            "{}? (non-compliant, not an entry: {})",
            printable(&n.name),
            printable(&n.reason)
        );
    }
    for e in &errors {
        eprintln!("abkit: warning: {e}");
    }
    Ok(())
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
