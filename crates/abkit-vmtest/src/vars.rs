//! The firmware's boot variables after a boot, read offline from the OVMF
//! VARS file with `abkit efi list --ovmf-vars F --json`, seen through the
//! slots: which entry is slot A's and B's, what BootOrder and BootNext say.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// BootOrder, BootNext and our two entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootVars {
    pub boot_order: Vec<u16>,
    pub boot_next: Option<u16>,
    /// Boot#### of `\EFI\abkit\boot-a.efi` and `\EFI\abkit\boot-b.efi`.
    pub slot_a: Option<u16>,
    pub slot_b: Option<u16>,
}

impl BootVars {
    /// Runs `abkit efi list --ovmf-vars VARS --json`.
    pub fn read(abkit: &Path, vars: &Path) -> anyhow::Result<BootVars> {
        let out = Command::new(abkit)
            .args(["efi", "list", "--json", "--ovmf-vars"])
            .arg(vars)
            .output()
            .with_context(|| format!("running {}", abkit.display()))?;
        if !out.status.success() {
            bail!(
                "abkit efi list --ovmf-vars {} failed: {}",
                vars.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let json: Value =
            serde_json::from_slice(&out.stdout).context("abkit efi list printed no JSON")?;
        BootVars::from_json(&json)
    }

    /// Interprets the JSON of `abkit efi list --json`.
    pub fn from_json(json: &Value) -> anyhow::Result<BootVars> {
        let number = |v: &Value| v.as_u64().and_then(|n| u16::try_from(n).ok());
        let boot_order = match &json["boot_order"] {
            Value::Null => Vec::new(),
            Value::Array(items) => items.iter().filter_map(number).collect(),
            other => bail!("boot_order is {other}"),
        };
        let boot_next = number(&json["boot_next"]);
        let mut vars = BootVars {
            boot_order,
            boot_next,
            slot_a: None,
            slot_b: None,
        };
        for entry in json["entries"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let path = entry["device_path"]
                .as_str()
                .unwrap_or("")
                .to_ascii_lowercase();
            let Some(n) = number(&entry["number"]) else {
                continue;
            };
            if path.ends_with("\\efi\\abkit\\boot-a.efi") {
                if vars.slot_a.is_some() {
                    bail!("two boot entries for slot A");
                }
                vars.slot_a = Some(n);
            } else if path.ends_with("\\efi\\abkit\\boot-b.efi") {
                if vars.slot_b.is_some() {
                    bail!("two boot entries for slot B");
                }
                vars.slot_b = Some(n);
            }
        }
        Ok(vars)
    }

    /// Checks that BootOrder is still `order` (only mark-good changes it).
    pub fn expect_order(&self, order: &[u16]) -> anyhow::Result<()> {
        if self.boot_order != order {
            bail!("BootOrder changed: {order:?} -> {:?}", self.boot_order);
        }
        Ok(())
    }

    /// The slot a Boot#### number belongs to.
    pub fn slot_of(&self, number: u16) -> Option<char> {
        if Some(number) == self.slot_a {
            Some('A')
        } else if Some(number) == self.slot_b {
            Some('B')
        } else {
            None
        }
    }

    /// The slot BootNext points at; `Some('?')` for a foreign entry.
    pub fn next_slot(&self) -> Option<char> {
        self.boot_next.map(|n| self.slot_of(n).unwrap_or('?'))
    }

    /// Our entries in BootOrder, in order: e.g. `"AB"`.
    pub fn our_order(&self) -> String {
        self.boot_order
            .iter()
            .filter_map(|&n| self.slot_of(n))
            .collect()
    }

    /// The slot of BootOrder's first entry; `?` if it is not ours.
    pub fn first_slot(&self) -> char {
        self.boot_order
            .first()
            .map_or('-', |&n| self.slot_of(n).unwrap_or('?'))
    }

    /// One-line summary: `BootOrder A,B (0001,0002,0003) BootNext -`.
    pub fn summary(&self) -> String {
        let order: Vec<String> = self.boot_order.iter().map(|n| format!("{n:04X}")).collect();
        format!(
            "BootOrder first {} [{}] ours {} BootNext {}",
            self.first_slot(),
            order.join(","),
            self.our_order(),
            self.next_slot().map_or("-".to_string(), |s| s.to_string())
        )
    }

    /// Checks the state the firmware will act on at the next boot.
    pub fn expect(&self, first: char, next: Option<char>) -> anyhow::Result<()> {
        if self.first_slot() != first {
            bail!(
                "BootOrder should start with slot {first}'s entry: {}",
                self.summary()
            );
        }
        if self.our_order().len() != 2 {
            bail!(
                "BootOrder should hold both slot entries: {}",
                self.summary()
            );
        }
        if self.next_slot() != next {
            bail!(
                "BootNext should be {}: {}",
                next.map_or("unset".to_string(), |s| format!("slot {s}")),
                self.summary()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(order: &str, next: &str) -> Value {
        serde_json::from_str(&format!(
            r#"{{"boot_current":null,"boot_next":{next},"boot_order":{order},"entries":[
            {{"number":1,"description":"abkit slot A","device_path":"HD(1,GPT,X,0x800,0x1)/\\EFI\\abkit\\boot-a.efi"}},
            {{"number":2,"description":"abkit slot B","device_path":"HD(1,GPT,X,0x800,0x1)/\\EFI\\ABKIT\\BOOT-B.EFI"}},
            {{"number":3,"description":"UEFI Misc Device","device_path":"PciRoot(0x0)/Pci(0x3,0x0)"}}],
            "skipped":[],"errors":[]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn slots_order_and_next() {
        let v = BootVars::from_json(&json("[2,3,1]", "1")).unwrap();
        assert_eq!((v.slot_a, v.slot_b), (Some(1), Some(2)));
        assert_eq!(v.first_slot(), 'B');
        assert_eq!(v.our_order(), "BA");
        assert_eq!(v.next_slot(), Some('A'));
        v.expect('B', Some('A')).unwrap();
        assert!(v.expect('A', Some('A')).is_err());
        assert!(v.expect('B', None).is_err());
    }

    #[test]
    fn missing_order_and_foreign_next() {
        let v = BootVars::from_json(&json("null", "3")).unwrap();
        assert_eq!(v.first_slot(), '-');
        assert_eq!(v.next_slot(), Some('?'));
        assert!(v.expect('A', None).is_err());
    }
}
