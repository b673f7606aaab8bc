//! What the test OS init decides, kept apart from the system calls so it can
//! be tested on the host: the variant it was built as (from the kernel
//! command line) and the plan the VM test handed it (the fw_cfg action).
//!
//! The kernel command line (the UKI's `.cmdline`) carries
//! `testos.variant=NAME testos.version=SEMVER testos.health=good|bad`; the
//! slot comes from `root=PARTLABEL=<PREFIX>-SYSTEM-A|B` after the loader's
//! rewrite. The action is a list of steps separated by `;`, each a
//! whitespace-separated command:
//!
//! | step | runs |
//! | --- | --- |
//! | `install SOURCE [ARG...]` | `abkit install SOURCE --keyring /etc/abkit/keyring --no-reboot --json [ARG...]` |
//! | `rollback` | `abkit rollback` |
//! | `status` | `abkit status --json`, printed as one `testos: status-json` line |
//! | `abkit ARG...` | `abkit ARG...` as given |
//! | `data-write NAME TEXT...` | write TEXT to `/data/NAME` and fsync it; prints `testos: data-write NAME ok` |
//! | `data-read NAME` | prints `testos: data NAME=TEXT` (or `testos: data NAME missing`) |
//! | `pcrs` | prints `testos: pcr N=HEX` for the SHA-256 PCRs 4, 7, 11 and 12 |
//! | `secureboot` | prints `testos: secureboot=V`, the `SecureBoot` variable's value |
//! | `skip-mark-good` | do not run `abkit mark-good` on this boot (anywhere in the list) |
//! | `agent [ARG...]` | `abkit agent [ARG...]`, echoed as it runs, until it exits (it normally reboots the machine). The agent owns the health gate of this boot: the init neither marks good nor reboots for a variant built unhealthy; the agent's check is [`crate::initrd::HEALTH_CHECK`] |
//! | `halt-at NAME` | every abkit run of this boot, `mark-good` included, gets `ABKIT_HALT_AT=NAME`: it halts at that checkpoint (`abkit_update::halt`) for the test to cut the power (anywhere in the list) |
//! | `reboot` / `poweroff` | how the boot ends (default `poweroff`); must be last |
//!
//! A step written `@VARIANT step` runs only on that variant (one QEMU run
//! may boot several kernels through kexec, all reading the same action).

use thiserror::Error;

use crate::initrd::KEYRING_DIR;

/// The init's health behaviour, from `testos.health=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Passes its health check: runs `abkit mark-good`.
    Good,
    /// Fails its health check: never marks good, reboots at once.
    Bad,
}

/// The variant of the test OS, read from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub variant: String,
    pub version: String,
    pub health: Health,
    /// `A` or `B` from `root=PARTLABEL=...-SYSTEM-X`; None if absent.
    pub slot: Option<char>,
}

impl Params {
    /// Reads the `testos.*` options and the slot; missing options read as
    /// `-` (the loader's own VM test boots the init without them).
    pub fn from_cmdline(cmdline: &str) -> Params {
        let mut params = Params {
            variant: "-".into(),
            version: "-".into(),
            health: Health::Good,
            slot: None,
        };
        for word in cmdline.split_whitespace() {
            if let Some(v) = word.strip_prefix("testos.variant=") {
                params.variant = v.to_string();
            } else if let Some(v) = word.strip_prefix("testos.version=") {
                params.version = v.to_string();
            } else if let Some(v) = word.strip_prefix("testos.health=") {
                params.health = if v == "bad" {
                    Health::Bad
                } else {
                    Health::Good
                };
            } else if let Some(label) = word
                .strip_prefix("root=PARTLABEL=")
                .or_else(|| word.strip_prefix("systemd.verity_root_data=PARTLABEL="))
            {
                params.slot = slot_of_label(label);
            }
        }
        params
    }

    /// The line the VM tests look for, once per boot.
    pub fn testos_line(&self) -> String {
        let slot = self.slot.map_or_else(|| "?".to_string(), |s| s.to_string());
        format!(
            "TESTOS variant={} slot={} version={}",
            self.variant, slot, self.version
        )
    }
}

/// `ABKIT-SYSTEM-B` -> `B`.
pub fn slot_of_label(label: &str) -> Option<char> {
    let (_, tail) = label.rsplit_once("-SYSTEM-")?;
    match tail {
        "A" | "a" => Some('A'),
        "B" | "b" => Some('B'),
        _ => None,
    }
}

/// The verified root the command line asks for (systemd's words, written
/// by `abkit bundle create --rootfs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootParams {
    /// `roothash=`, hex.
    pub root_hash: String,
    /// The partition label of `systemd.verity_root_data=PARTLABEL=...`.
    pub data_label: String,
    /// The partition label of `systemd.verity_root_hash=PARTLABEL=...`.
    pub hash_label: String,
    /// `hash-offset=` in `systemd.verity_root_options=`.
    pub hash_offset: u64,
}

impl RootParams {
    /// None without `roothash=`; an error when it is there but the rest is
    /// missing or not understood (the boot must stop, not guess).
    pub fn from_cmdline(cmdline: &str) -> Result<Option<RootParams>, String> {
        let (mut hash, mut data, mut hash_dev, mut offset) = (None, None, None, None);
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "roothash" => hash = Some(value.to_string()),
                "systemd.verity_root_data" => data = Some(value.to_string()),
                "systemd.verity_root_hash" => hash_dev = Some(value.to_string()),
                "systemd.verity_root_options" => {
                    for option in value.split(',') {
                        if let Some(n) = option.strip_prefix("hash-offset=") {
                            offset = Some(
                                n.parse::<u64>()
                                    .map_err(|_| format!("bad hash-offset={n}"))?,
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(root_hash) = hash else {
            return Ok(None);
        };
        if root_hash.len() < 64 || !root_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("roothash={root_hash} is not a hex SHA-256"));
        }
        let label = |what: &str, v: Option<String>| -> Result<String, String> {
            let v = v.ok_or_else(|| format!("roothash= without {what}="))?;
            v.strip_prefix("PARTLABEL=")
                .map(str::to_string)
                .ok_or_else(|| format!("{what}={v}: only PARTLABEL= is supported"))
        };
        let data_label = label("systemd.verity_root_data", data)?;
        let hash_label = label("systemd.verity_root_hash", hash_dev)?;
        if data_label != hash_label {
            return Err(format!(
                "data ({data_label}) and hash ({hash_label}) on different partitions: the test OS needs the tree appended"
            ));
        }
        let hash_offset =
            offset.ok_or("roothash= without hash-offset= in systemd.verity_root_options=")?;
        Ok(Some(RootParams {
            root_hash,
            data_label,
            hash_label,
            hash_offset,
        }))
    }

    /// `ABKIT-SYSTEM-B` -> `ABKIT-DATA`: the data partition of the same disk layout.
    pub fn data_partition_label(&self) -> Option<String> {
        let (prefix, _) = self.data_label.rsplit_once("-SYSTEM-")?;
        Some(format!("{prefix}-DATA"))
    }
}

/// One thing the init does after its health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run `abkit` with these arguments; `name` labels the result line.
    Abkit { name: String, args: Vec<String> },
    /// `abkit status --json`, printed on one line.
    Status,
    /// Write text to a file under /data (fsynced).
    DataWrite { name: String, text: String },
    /// Print a file under /data.
    DataRead { name: String },
    /// Print the SHA-256 PCRs 4, 7, 11 and 12 the kernel's TPM driver shows
    /// (`testos: pcr N=HEX`).
    Pcrs,
    /// Print whether the firmware booted with Secure Boot on
    /// (`testos: secureboot=1`, from the `SecureBoot` variable).
    SecureBoot,
}

/// The PCRs the `pcrs` step prints: the loader (4), Secure Boot state (7),
/// the UKI's sections (11), the command line (12).
pub const PRINTED_PCRS: [u32; 4] = [4, 7, 11, 12];

/// How the boot ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    PowerOff,
    Reboot,
}

/// The action of one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mark_good: bool,
    /// An `agent` step: `abkit agent` decides this boot's health (the init
    /// neither marks good nor acts on `testos.health=bad`).
    pub agent: bool,
    /// `ABKIT_HALT_AT` for every abkit run of this boot (a power-cut test's
    /// checkpoint), if the action names one.
    pub halt_at: Option<String>,
    pub steps: Vec<Step>,
    pub finish: Finish,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "unknown step {0:?} (install, rollback, status, abkit, agent, data-write, data-read, pcrs, secureboot, skip-mark-good, halt-at, reboot, poweroff)"
    )]
    UnknownStep(String),
    #[error("step {0:?} needs an argument")]
    MissingArgument(String),
    #[error("{0:?} must be the last step")]
    FinishNotLast(String),
}

impl Plan {
    /// [`Plan::parse`] of the steps for `variant`: a step `@NAME step` is
    /// kept (as `step`) only when `NAME` is `variant`.
    pub fn parse_for(action: &str, variant: &str) -> Result<Plan, PlanError> {
        let steps: Vec<&str> = action
            .split(';')
            .filter_map(|step| {
                let step = step.trim();
                match step.strip_prefix('@') {
                    Some(rest) => {
                        let (name, step) = rest.split_once(char::is_whitespace)?;
                        (name == variant).then_some(step)
                    }
                    None => Some(step),
                }
            })
            .collect();
        Plan::parse(&steps.join(";"))
    }

    /// Parses an action string (see the module docs); empty means mark good
    /// and power off.
    pub fn parse(action: &str) -> Result<Plan, PlanError> {
        let mut plan = Plan {
            mark_good: true,
            agent: false,
            halt_at: None,
            steps: Vec::new(),
            finish: Finish::PowerOff,
        };
        let mut finished = None;
        for text in action.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some(word) = finished {
                return Err(PlanError::FinishNotLast(word));
            }
            let mut words = text.split_whitespace().map(str::to_string);
            let Some(command) = words.next() else {
                continue;
            };
            let rest: Vec<String> = words.collect();
            match command.as_str() {
                "install" => {
                    let Some((source, extra)) = rest.split_first() else {
                        return Err(PlanError::MissingArgument(command));
                    };
                    let mut args = vec!["install".to_string(), source.clone()];
                    args.extend(
                        [
                            "--keyring",
                            &format!("/{KEYRING_DIR}"),
                            "--no-reboot",
                            "--json",
                        ]
                        .map(String::from),
                    );
                    args.extend(extra.iter().cloned());
                    plan.steps.push(Step::Abkit {
                        name: "install".into(),
                        args,
                    });
                }
                "rollback" => plan.steps.push(Step::Abkit {
                    name: "rollback".into(),
                    args: vec!["rollback".into()],
                }),
                "status" => plan.steps.push(Step::Status),
                "abkit" => {
                    let Some(name) = rest.first() else {
                        return Err(PlanError::MissingArgument(command));
                    };
                    plan.steps.push(Step::Abkit {
                        name: name.clone(),
                        args: rest.clone(),
                    });
                }
                "data-write" | "data-read" => {
                    let Some(name) = rest.first() else {
                        return Err(PlanError::MissingArgument(command));
                    };
                    if !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                        || name.starts_with('.')
                    {
                        return Err(PlanError::MissingArgument(command));
                    }
                    plan.steps.push(if command == "data-write" {
                        Step::DataWrite {
                            name: name.clone(),
                            text: rest[1..].join(" "),
                        }
                    } else {
                        Step::DataRead { name: name.clone() }
                    });
                }
                "agent" => {
                    plan.agent = true;
                    let mut args = vec![command.clone()];
                    args.extend(rest);
                    plan.steps.push(Step::Abkit {
                        name: command,
                        args,
                    });
                }
                "pcrs" => plan.steps.push(Step::Pcrs),
                "secureboot" => plan.steps.push(Step::SecureBoot),
                "skip-mark-good" => plan.mark_good = false,
                "halt-at" => match rest.as_slice() {
                    [name] => plan.halt_at = Some(name.clone()),
                    _ => return Err(PlanError::MissingArgument(command)),
                },
                "reboot" => {
                    plan.finish = Finish::Reboot;
                    finished = Some(command);
                }
                "poweroff" => {
                    plan.finish = Finish::PowerOff;
                    finished = Some(command);
                }
                _ => return Err(PlanError::UnknownStep(command)),
            }
        }
        Ok(plan)
    }
}

/// Pretty-printed JSON as one line: JSON strings cannot hold raw newlines,
/// so turning line breaks into spaces keeps the document valid.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_from_a_rewritten_command_line() {
        let p = Params::from_cmdline(
            "console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-B ro testos.variant=Y testos.version=1.1.0 testos.health=bad\n",
        );
        assert_eq!(p.variant, "Y");
        assert_eq!(p.version, "1.1.0");
        assert_eq!(p.health, Health::Bad);
        assert_eq!(p.slot, Some('B'));
        assert_eq!(p.testos_line(), "TESTOS variant=Y slot=B version=1.1.0");
    }

    #[test]
    fn params_default_when_absent() {
        let p = Params::from_cmdline("console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-X");
        assert_eq!(p.health, Health::Good);
        assert_eq!(p.slot, None);
        assert_eq!(p.testos_line(), "TESTOS variant=- slot=? version=-");
    }

    #[test]
    fn slot_labels() {
        assert_eq!(slot_of_label("ABKIT-SYSTEM-A"), Some('A'));
        assert_eq!(slot_of_label("OTHER-SYSTEM-b"), Some('B'));
        assert_eq!(slot_of_label("ABKIT-SYSTEM-X"), None);
        assert_eq!(slot_of_label("ABKIT-DATA"), None);
    }

    #[test]
    fn empty_action_marks_good_and_powers_off() {
        let plan = Plan::parse("  ").unwrap();
        assert!(plan.mark_good);
        assert!(plan.steps.is_empty());
        assert_eq!(plan.halt_at, None);
        assert_eq!(plan.finish, Finish::PowerOff);
    }

    #[test]
    fn halt_at_applies_to_the_whole_boot() {
        let plan = Plan::parse("halt-at mark-good:recorded-good; status; poweroff").unwrap();
        assert_eq!(plan.halt_at.as_deref(), Some("mark-good:recorded-good"));
        assert!(plan.mark_good);
        assert_eq!(plan.steps, vec![Step::Status]);
        assert_eq!(
            Plan::parse("halt-at"),
            Err(PlanError::MissingArgument("halt-at".into()))
        );
    }

    #[test]
    fn full_action() {
        let plan = Plan::parse(
            "install /mnt/bundles/y.abb --allow-downgrade; status; rollback; abkit status; reboot",
        )
        .unwrap();
        assert_eq!(plan.finish, Finish::Reboot);
        assert_eq!(
            plan.steps[0],
            Step::Abkit {
                name: "install".into(),
                args: [
                    "install",
                    "/mnt/bundles/y.abb",
                    "--keyring",
                    "/etc/abkit/keyring",
                    "--no-reboot",
                    "--json",
                    "--allow-downgrade"
                ]
                .map(String::from)
                .to_vec()
            }
        );
        assert_eq!(plan.steps[1], Step::Status);
        assert_eq!(
            plan.steps[3],
            Step::Abkit {
                name: "status".into(),
                args: vec!["status".into()]
            }
        );
        assert!(!Plan::parse("skip-mark-good; poweroff").unwrap().mark_good);
        assert_eq!(
            Plan::parse("secureboot; pcrs").unwrap().steps,
            [Step::SecureBoot, Step::Pcrs]
        );
        assert!(!plan.agent);
    }

    #[test]
    fn the_agent_step_hands_the_health_gate_over() {
        let plan = Plan::parse("agent --config /x.toml; poweroff").unwrap();
        assert!(plan.agent);
        assert_eq!(
            plan.steps,
            vec![Step::Abkit {
                name: "agent".into(),
                args: vec!["agent".into(), "--config".into(), "/x.toml".into()]
            }]
        );
    }

    #[test]
    fn bad_actions_are_refused() {
        assert_eq!(
            Plan::parse("frobnicate"),
            Err(PlanError::UnknownStep("frobnicate".into()))
        );
        assert_eq!(
            Plan::parse("install"),
            Err(PlanError::MissingArgument("install".into()))
        );
        assert_eq!(
            Plan::parse("reboot; status"),
            Err(PlanError::FinishNotLast("reboot".into()))
        );
    }

    #[test]
    fn root_params_from_the_command_line_abkit_writes() {
        let h = "ab".repeat(32);
        let line = format!(
            "console=ttyS0 root=/dev/mapper/root roothash={h} systemd.verity_root_data=PARTLABEL=ABKIT-SYSTEM-B systemd.verity_root_hash=PARTLABEL=ABKIT-SYSTEM-B systemd.verity_root_options=hash-offset=12288 testos.variant=Y"
        );
        let r = RootParams::from_cmdline(&line).unwrap().unwrap();
        assert_eq!(r.root_hash, h);
        assert_eq!(r.data_label, "ABKIT-SYSTEM-B");
        assert_eq!(r.hash_offset, 12288);
        assert_eq!(r.data_partition_label().as_deref(), Some("ABKIT-DATA"));
        assert_eq!(Params::from_cmdline(&line).slot, Some('B'));
        assert_eq!(RootParams::from_cmdline("console=ttyS0"), Ok(None));
        // Incomplete or odd: an error, never a guess.
        assert!(RootParams::from_cmdline(&format!("roothash={h}")).is_err());
        assert!(RootParams::from_cmdline("roothash=xyz").is_err());
        let other = line.replace(
            "systemd.verity_root_hash=PARTLABEL=ABKIT-SYSTEM-B",
            "systemd.verity_root_hash=PARTLABEL=ABKIT-SYSTEM-A",
        );
        assert!(RootParams::from_cmdline(&other).is_err());
        let no_offset = line.replace("hash-offset=12288", "panic-on-corruption");
        assert!(RootParams::from_cmdline(&no_offset).is_err());
    }

    #[test]
    fn data_steps() {
        let plan = Plan::parse_for("@X abkit a; @Y abkit b; status; poweroff", "Y").unwrap();
        assert_eq!(
            plan.steps,
            vec![
                Step::Abkit {
                    name: "b".into(),
                    args: vec!["b".into()]
                },
                Step::Status
            ]
        );
        assert_eq!(plan.finish, Finish::PowerOff);
        let plan = Plan::parse("data-write note hello world; data-read note").unwrap();
        assert_eq!(
            plan.steps,
            vec![
                Step::DataWrite {
                    name: "note".into(),
                    text: "hello world".into()
                },
                Step::DataRead {
                    name: "note".into()
                }
            ]
        );
        assert!(Plan::parse("data-read ../etc").is_err());
        assert!(Plan::parse("data-write").is_err());
    }

    #[test]
    fn json_on_one_line_stays_json() {
        let text = "{\n  \"a\": 1,\n  \"b\": [\n    \"x y\"\n  ]\n}\n";
        assert_eq!(one_line(text), "{ \"a\": 1, \"b\": [ \"x y\" ] }");
    }
}
