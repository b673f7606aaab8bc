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
//! | `skip-mark-good` | do not run `abkit mark-good` on this boot (anywhere in the list) |
//! | `halt-at NAME` | every abkit run of this boot, `mark-good` included, gets `ABKIT_HALT_AT=NAME`: it halts at that checkpoint (`abkit_update::halt`) for the test to cut the power (anywhere in the list) |
//! | `reboot` / `poweroff` | how the boot ends (default `poweroff`); must be last |

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
            } else if let Some(label) = word.strip_prefix("root=PARTLABEL=") {
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

/// One thing the init does after its health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run `abkit` with these arguments; `name` labels the result line.
    Abkit { name: String, args: Vec<String> },
    /// `abkit status --json`, printed on one line.
    Status,
}

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
    /// `ABKIT_HALT_AT` for every abkit run of this boot (a power-cut test's
    /// checkpoint), if the action names one.
    pub halt_at: Option<String>,
    pub steps: Vec<Step>,
    pub finish: Finish,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "unknown step {0:?} (install, rollback, status, abkit, skip-mark-good, halt-at, reboot, poweroff)"
    )]
    UnknownStep(String),
    #[error("step {0:?} needs an argument")]
    MissingArgument(String),
    #[error("{0:?} must be the last step")]
    FinishNotLast(String),
}

impl Plan {
    /// Parses an action string (see the module docs); empty means mark good
    /// and power off.
    pub fn parse(action: &str) -> Result<Plan, PlanError> {
        let mut plan = Plan {
            mark_good: true,
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
    fn json_on_one_line_stays_json() {
        let text = "{\n  \"a\": 1,\n  \"b\": [\n    \"x y\"\n  ]\n}\n";
        assert_eq!(one_line(text), "{ \"a\": 1, \"b\": [ \"x y\" ] }");
    }
}
