//! The ostree CLI, through the exec seam: `ostree admin --sysroot=<root>/sysroot status`,
//! `undeploy`, `pin`, plus a parser for the status text, and the decisions built on it (which
//! standbys to drop before a backup; whether recovery needs an OS rollback).

use std::path::PathBuf;

use super::exec::{Cmd, CommandRunner, ExecError};

/// One deployment, as `ostree admin status` lists it (index 0 first: the default boot entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// Its index in the list (what `undeploy` and `pin` take).
    pub index: usize,
    /// The stateroot (OS name).
    pub osname: String,
    /// `<checksum>.<serial>`.
    pub id: String,
    /// Marked `*`: the running deployment.
    pub booted: bool,
    /// `Pinned: yes`.
    pub pinned: bool,
    /// The parenthesised marker after the id (`rollback`, `pending`, `staged`), if any.
    pub marker: Option<String>,
    /// The `Version:` line, if any.
    pub version: Option<String>,
}

/// The deployments, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Every deployment, index 0 first.
    pub deployments: Vec<Deployment>,
}

/// Why the status text could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("cannot parse `ostree admin status` line {line}: {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// The line.
    pub text: String,
}

/// Parses `ostree admin status` output.
pub fn parse_status(text: &str) -> Result<Status, ParseError> {
    let mut deployments: Vec<Deployment> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed == "No deployments." || trimmed.starts_with("OSTree:") {
            continue;
        }
        let err = || ParseError {
            line: n + 1,
            text: line.to_owned(),
        };
        let deployment_line =
            line.starts_with("* ") || (line.starts_with("  ") && !line.starts_with("    "));
        if deployment_line {
            let booted = line.starts_with('*');
            let mut words = line[2..].split_whitespace();
            let osname = words.next().ok_or_else(err)?.to_owned();
            let id = words.next().ok_or_else(err)?.to_owned();
            if !id.contains('.') {
                return Err(err());
            }
            let rest: Vec<&str> = words.collect();
            let marker = (!rest.is_empty()).then(|| {
                rest.join(" ")
                    .trim_matches(|c| c == '(' || c == ')')
                    .to_owned()
            });
            deployments.push(Deployment {
                index: deployments.len(),
                osname,
                id,
                booted,
                pinned: false,
                marker,
                version: None,
            });
        } else if let Some(d) = deployments.last_mut() {
            if let Some((k, v)) = trimmed.split_once(':') {
                match k.trim() {
                    "Pinned" => d.pinned = v.trim() == "yes",
                    "Version" => d.version = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        } else {
            return Err(err());
        }
    }
    Ok(Status { deployments })
}

impl Status {
    /// The deployment the node runs: the booted one, or (on a sysroot that is not booted, as
    /// in tests) the default one, index 0.
    pub fn current(&self) -> Option<&Deployment> {
        self.deployments
            .iter()
            .find(|d| d.booted)
            .or_else(|| self.deployments.first())
    }

    /// Whether any deployment is marked booted.
    pub fn is_booted(&self) -> bool {
        self.deployments.iter().any(|d| d.booted)
    }

    /// Indexes to undeploy so only the current deployment is left, highest first (so the
    /// remaining indexes stay valid while undeploying).
    pub fn standbys_to_undeploy(&self) -> Vec<usize> {
        let current = self.current().map(|d| d.index);
        let mut v: Vec<usize> = self
            .deployments
            .iter()
            .map(|d| d.index)
            .filter(|i| Some(*i) != current)
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v
    }

    /// What recovery must do about the OS.
    pub fn rollback_plan(&self) -> RollbackPlan {
        let Some(current) = self.current() else {
            return RollbackPlan::NoDeployments;
        };
        if current.pinned {
            return RollbackPlan::NoneNeeded;
        }
        match self.deployments.iter().find(|d| d.pinned) {
            None => RollbackPlan::NoPinned,
            Some(pinned) => {
                // Drop the deployments between the current one and the pinned one, so the pinned
                // one becomes the rollback target (index 1, or index 0's neighbour).
                let mut undeploy: Vec<usize> = self
                    .deployments
                    .iter()
                    .map(|d| d.index)
                    .filter(|&i| i != current.index && i < pinned.index)
                    .collect();
                undeploy.sort_unstable_by(|a, b| b.cmp(a));
                RollbackPlan::Rollback {
                    undeploy,
                    target: pinned.id.clone(),
                }
            }
        }
    }
}

/// The OS part of a recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RollbackPlan {
    /// The running deployment is the pinned (pre-upgrade) one.
    NoneNeeded,
    /// Undeploy these indexes (highest first), then roll back to `target` and reboot.
    Rollback {
        /// Indexes to drop first.
        undeploy: Vec<usize>,
        /// The pinned deployment's id.
        target: String,
    },
    /// The running deployment is not pinned and no deployment is.
    NoPinned,
    /// `ostree admin status` lists nothing.
    NoDeployments,
}

/// The ostree CLI on one sysroot.
#[derive(Debug)]
pub struct Ostree<'a> {
    runner: &'a dyn CommandRunner,
    sysroot: PathBuf,
}

impl<'a> Ostree<'a> {
    /// ostree on `sysroot` (normally `<host root>/sysroot`; `/` on a booted node is the same
    /// tree).
    pub fn new(runner: &'a dyn CommandRunner, sysroot: impl Into<PathBuf>) -> Self {
        Self {
            runner,
            sysroot: sysroot.into(),
        }
    }

    fn admin(&self, verb: &str) -> Cmd {
        let mut sysroot = std::ffi::OsString::from("--sysroot=");
        sysroot.push(&self.sysroot);
        Cmd::new("ostree").arg("admin").arg(verb).arg(sysroot)
    }

    /// `ostree admin status`, parsed.
    pub fn status(&self) -> Result<Status, OstreeError> {
        let out = self.runner.run(&self.admin("status"))?;
        Ok(parse_status(&out.stdout_text())?)
    }

    /// `ostree admin undeploy <index>`.
    pub fn undeploy(&self, index: usize) -> Result<(), OstreeError> {
        self.runner
            .run(&self.admin("undeploy").arg(index.to_string()))?;
        Ok(())
    }

    /// `ostree admin pin <index>`.
    pub fn pin(&self, index: usize) -> Result<(), OstreeError> {
        self.runner.run(&self.admin("pin").arg(index.to_string()))?;
        Ok(())
    }
}

/// An ostree operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OstreeError {
    /// The command failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Its output was not understood.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOTED: &str = "\
* rhcos 4a3c0f1e.0
    Version: 416.94.202406251923-0 (2024-06-25T19:27:51Z)
    origin refspec: none
  rhcos 9b1d22aa.0 (rollback)
    Version: 416.94.202405011200-0
    Pinned: yes
    origin refspec: none
";

    #[test]
    fn parses_booted_status_and_plans_a_rollback() {
        let s = parse_status(BOOTED).unwrap();
        assert_eq!(s.deployments.len(), 2);
        assert!(s.deployments[0].booted && !s.deployments[0].pinned);
        assert_eq!(s.deployments[1].marker.as_deref(), Some("rollback"));
        assert!(s.deployments[1].pinned);
        assert_eq!(
            s.rollback_plan(),
            RollbackPlan::Rollback {
                undeploy: vec![],
                target: "9b1d22aa.0".into()
            }
        );
        assert_eq!(s.standbys_to_undeploy(), vec![1]);
    }

    #[test]
    fn several_standbys_are_dropped_down_to_the_pinned_one() {
        let s =
            parse_status("* os c.0\n  os b.0\n  os a.0 (rollback)\n    Pinned: yes\n  os z.0\n")
                .unwrap();
        assert_eq!(
            s.rollback_plan(),
            RollbackPlan::Rollback {
                undeploy: vec![1],
                target: "a.0".into()
            }
        );
        assert_eq!(s.standbys_to_undeploy(), vec![3, 2, 1]);
    }

    #[test]
    fn pinned_current_needs_nothing_and_garbage_is_an_error() {
        let s = parse_status("* os a.0\n    Pinned: yes\n").unwrap();
        assert_eq!(s.rollback_plan(), RollbackPlan::NoneNeeded);
        assert_eq!(
            parse_status("No deployments.\n").unwrap().rollback_plan(),
            RollbackPlan::NoDeployments
        );
        assert!(parse_status("    Pinned: yes\n").is_err());
        assert_eq!(
            parse_status("* os a.0\n").unwrap().rollback_plan(),
            RollbackPlan::NoPinned
        );
    }
}
