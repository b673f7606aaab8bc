//! Reading a boot from the serial log: the lines the firmware, the loader
//! and the test OS init print (protocol in docs/testos.md).

use serde_json::Value;

/// How a boot ended, as the init said (or the harness did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    PowerOff,
    Reboot,
    /// The harness killed QEMU (power cut).
    Killed,
    /// QEMU stopped without a last word from the init.
    Unknown,
}

/// `TESTOS variant=<V> slot=<S> version=<ver>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestosLine {
    pub variant: String,
    pub slot: String,
    pub version: String,
}

/// What one boot printed.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// Every TESTOS line (there must be exactly one).
    pub testos: Vec<TestosLine>,
    /// `BdsDxe: starting Boot0002 "abkit slot B" ...`: the entry number.
    pub firmware_entry: Option<u16>,
    /// `abkit: booting slot X` from the loader.
    pub loader_slot: Option<char>,
    /// `testos: system=/dev/vda3 ABKIT-TESTOS-SYSTEM variant=Y ...`: the text after the device.
    pub system: Option<String>,
    /// `testos: result NAME exit=CODE`, in order.
    pub results: Vec<(String, String)>,
    /// `testos: status-json {...}`, parsed (Null when it did not parse).
    pub status: Vec<Value>,
    /// JSON objects abkit printed on stdout or stderr (progress, reports).
    pub json: Vec<Value>,
    pub health_bad: bool,
    pub mark_good_skipped: bool,
    pub ending: Ending,
    /// `abkit: halted at NAME` (on abkit's stderr): the test-only checkpoint
    /// abkit stopped at (`ABKIT_HALT_AT`, see `abkit_update::halt`).
    pub halted_at: Option<String>,
    /// `testos: error: ...` lines.
    pub errors: Vec<String>,
}

impl BootReport {
    /// Parses a serial log (CR and ANSI escapes tolerated).
    pub fn parse(log: &str) -> BootReport {
        let mut report = BootReport {
            testos: Vec::new(),
            firmware_entry: None,
            loader_slot: None,
            system: None,
            results: Vec::new(),
            status: Vec::new(),
            json: Vec::new(),
            health_bad: false,
            mark_good_skipped: false,
            ending: Ending::Unknown,
            halted_at: None,
            errors: Vec::new(),
        };
        for raw in log.split('\n') {
            let line = clean(raw);
            let line = line.as_str();
            if let Some(t) = parse_testos_line(line) {
                report.testos.push(t);
            } else if let Some(rest) = line.find("BdsDxe: starting Boot").map(|i| &line[i + 21..]) {
                report.firmware_entry = rest.get(..4).and_then(|h| u16::from_str_radix(h, 16).ok());
            } else if let Some(slot) = line.strip_prefix("abkit: booting slot ") {
                report.loader_slot = slot.trim().chars().next();
            } else if let Some(rest) = line.strip_prefix("testos: system=") {
                report.system = rest.split_once(' ').map(|(_, text)| text.to_string());
            } else if let Some(rest) = line.strip_prefix("testos: result ") {
                if let Some((name, code)) = rest.split_once(" exit=") {
                    report.results.push((name.to_string(), code.to_string()));
                }
            } else if let Some(rest) = line.strip_prefix("testos: status-json ") {
                report
                    .status
                    .push(serde_json::from_str(rest).unwrap_or(Value::Null));
            } else if let Some(rest) = line
                .strip_prefix("testos: out: ")
                .or_else(|| line.strip_prefix("testos: err: "))
            {
                if rest.starts_with('{')
                    && let Ok(value) = serde_json::from_str::<Value>(rest)
                {
                    report.json.push(value);
                } else if let Some(name) = rest.strip_prefix("abkit: halted at ") {
                    report.halted_at = Some(name.trim().to_string());
                }
            } else if line.starts_with("testos: health=bad") {
                report.health_bad = true;
            } else if line == "testos: mark-good skipped" {
                report.mark_good_skipped = true;
            } else if line == "testos: done, powering off" {
                report.ending = Ending::PowerOff;
            } else if line == "testos: done, rebooting" {
                report.ending = Ending::Reboot;
            } else if let Some(rest) = line.strip_prefix("testos: error: ") {
                report.errors.push(rest.to_string());
            }
        }
        report
    }

    /// The exit code of the first step called `name` (`"0"` for success).
    pub fn result(&self, name: &str) -> Option<&str> {
        self.results
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, code)| code.as_str())
    }

    /// Every result called `name`, in order.
    pub fn results_of(&self, name: &str) -> Vec<&str> {
        self.results
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, code)| code.as_str())
            .collect()
    }
}

/// Drops CR, ANSI escape sequences and trailing blanks.
fn clean(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.trim_end().to_string()
}

fn parse_testos_line(line: &str) -> Option<TestosLine> {
    let rest = line.strip_prefix("TESTOS ")?;
    let mut variant = None;
    let mut slot = None;
    let mut version = None;
    for word in rest.split_whitespace() {
        if let Some(v) = word.strip_prefix("variant=") {
            variant = Some(v.to_string());
        } else if let Some(v) = word.strip_prefix("slot=") {
            slot = Some(v.to_string());
        } else if let Some(v) = word.strip_prefix("version=") {
            version = Some(v.to_string());
        }
    }
    Some(TestosLine {
        variant: variant?,
        slot: slot?,
        version: version?,
    })
}

/// Bytes of the system image written so far, if `value` is an install
/// progress report (`{"event":"progress","step":"write-system","done":N,..}`).
/// Reads any numeric field whose name says "written" (or `done`/`bytes`) in
/// an object that mentions the system payload and is not a check pass.
pub fn system_bytes_written(value: &Value) -> Option<u64> {
    let Value::Object(map) = value else {
        return None;
    };
    let mentions_system = map.values().any(|v| {
        v.as_str()
            .is_some_and(|s| s.contains("system") && !s.contains("check"))
    });
    if !mentions_system {
        return None;
    }
    for (key, v) in map {
        let key = key.to_ascii_lowercase();
        if (key.contains("written") || key == "done" || key == "bytes" || key == "bytes_done")
            && let Some(n) = v.as_u64()
        {
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\u{1b}[2J\u{1b}[01;01HBdsDxe: loading Boot0002 \"abkit slot B\" from HD(1,GPT,..)/\\EFI\\abkit\\boot-b.efi\r\n\
BdsDxe: starting Boot0002 \"abkit slot B\" from HD(1,GPT,..)/\\EFI\\abkit\\boot-b.efi\r\n\
abkit: booting slot B\r\n\
testos: cmdline=console=ttyS0\r\n\
TESTOS variant=Y slot=B version=1.1.0\r\n\
testos: system=/dev/vda3 ABKIT-TESTOS-SYSTEM variant=Y version=1.1.0\r\n\
testos: health=good\r\n\
testos: run: abkit mark-good\r\n\
testos: result mark-good exit=0\r\n\
testos: out: {\"event\":\"progress\",\"payload\":\"system\",\"written\":4194304}\r\n\
testos: err: not json\r\n\
testos: err: abkit: halted at mark-good:recorded-good\r\n\
testos: result install exit=1\r\n\
testos: status-json { \"running_slot\": \"B\" }\r\n\
testos: error: boom\r\n\
testos: done, rebooting\r\n";

    #[test]
    fn parses_a_boot() {
        let r = BootReport::parse(LOG);
        assert_eq!(
            r.testos,
            vec![TestosLine {
                variant: "Y".into(),
                slot: "B".into(),
                version: "1.1.0".into()
            }]
        );
        assert_eq!(r.firmware_entry, Some(2));
        assert_eq!(r.loader_slot, Some('B'));
        assert_eq!(
            r.system.as_deref(),
            Some("ABKIT-TESTOS-SYSTEM variant=Y version=1.1.0")
        );
        assert_eq!(r.result("mark-good"), Some("0"));
        assert_eq!(r.result("install"), Some("1"));
        assert_eq!(r.result("rollback"), None);
        assert_eq!(r.status[0]["running_slot"], "B");
        assert_eq!(r.json.len(), 1);
        assert_eq!(system_bytes_written(&r.json[0]), Some(4194304));
        assert_eq!(r.errors, vec!["boom".to_string()]);
        assert_eq!(r.halted_at.as_deref(), Some("mark-good:recorded-good"));
        assert_eq!(r.ending, Ending::Reboot);
        assert!(!r.health_bad);
    }

    #[test]
    fn incomplete_log() {
        let r = BootReport::parse("BdsDxe: starting Boot0001 \"x\"\nTESTOS variant=X slot=A\n");
        assert!(
            r.testos.is_empty(),
            "a TESTOS line without version is not one"
        );
        assert_eq!(r.halted_at, None);
        assert_eq!(r.ending, Ending::Unknown);
    }

    #[test]
    fn progress_of_other_payloads_is_not_system() {
        let v: Value = serde_json::from_str(r#"{"payload":"efi","written":10}"#).unwrap();
        assert_eq!(system_bytes_written(&v), None);
        let v: Value = serde_json::from_str(r#"{"payload":"system","phase":"verify"}"#).unwrap();
        assert_eq!(system_bytes_written(&v), None);
        let v: Value = serde_json::from_str(
            r#"{"event":"progress","step":"check-system","done":9,"total":9}"#,
        )
        .unwrap();
        assert_eq!(system_bytes_written(&v), None);
        let v: Value = serde_json::from_str(
            r#"{"event":"progress","step":"write-system","done":8,"total":9}"#,
        )
        .unwrap();
        assert_eq!(system_bytes_written(&v), Some(8));
    }
}
