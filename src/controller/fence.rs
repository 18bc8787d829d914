//! Fencing (S74): the controller runs a node's fence command (an IPMI or Redfish power
//! off, for example) before it restarts that node's HA guests anywhere else.
//!
//! A node's command is an argv whose program is a file name in the controller's fence
//! directory (`fence_dir`, default `/etc/corral/fence.d`): the API only chooses among
//! what the host's root put there, so an API administrator cannot run anything else on
//! the controller's host. Arguments may use `{node}` (the node's id) and `{address}` (its
//! management address); the command also gets `CORRAL_NODE_ID` and `CORRAL_NODE_ADDRESS`.
//! Exit status 0 confirms the node is off; anything else, or no answer within
//! `fence_timeout_secs`, is a failure, and nothing restarts.
//!
//! A fence runs outside any transaction: the `node.failover` step that needs it starts it
//! here and waits (`StepError::Waiting`) until its result is in. A controller that dies
//! meanwhile runs it again at the next attempt: powering off a node that is off is safe.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a fence command cannot be accepted or did not confirm.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("a fence command needs a program")]
    Empty,
    #[error("the fence program {0:?} must be a file name in the controller's fence directory {1}")]
    NotInDir(String, String),
    #[error("the fence program {0} does not exist")]
    Missing(String),
    #[error("the fence command could not run: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the fence command exited with {status}: {stderr}")]
    Failed { status: String, stderr: String },
    #[error("the fence command gave no answer within {0} s")]
    Timeout(u64),
}

/// Where a node's fence stands.
#[derive(Debug, Clone, PartialEq)]
pub enum FenceState {
    Running,
    Confirmed,
    Failed(String),
}

/// Runs fence commands and keeps their results until taken.
pub struct Fencer {
    dir: PathBuf,
    timeout: Duration,
    runs: Arc<Mutex<HashMap<String, FenceState>>>,
}

impl Fencer {
    pub fn new(dir: PathBuf, timeout: Duration) -> Fencer {
        Fencer {
            dir,
            timeout,
            runs: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The program of `argv` in the fence directory, checked (the API checks it too).
    pub fn program(&self, argv: &[String]) -> Result<PathBuf, FenceError> {
        let name = argv.first().ok_or(FenceError::Empty)?;
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && Path::new(name).file_name().and_then(|n| n.to_str()) == Some(name.as_str());
        if !plain {
            return Err(FenceError::NotInDir(
                name.clone(),
                self.dir.display().to_string(),
            ));
        }
        let path = self.dir.join(name);
        if !path.is_file() {
            return Err(FenceError::Missing(path.display().to_string()));
        }
        Ok(path)
    }

    /// Fence run `key`'s state, starting it (node `node` at `address`, command `argv`)
    /// when it has none. A finished run's result is handed over once.
    pub fn poll(&self, key: &str, node: &str, address: &str, argv: &[String]) -> FenceState {
        let Ok(mut runs) = self.runs.lock() else {
            return FenceState::Failed("the fence registry is poisoned".into());
        };
        match runs.get(key).cloned() {
            Some(FenceState::Running) => return FenceState::Running,
            Some(done) => {
                runs.remove(key);
                return done;
            }
            None => {}
        }
        let program = match self.program(argv) {
            Ok(p) => p,
            Err(e) => return FenceState::Failed(e.to_string()),
        };
        runs.insert(key.to_string(), FenceState::Running);
        drop(runs);
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(
            argv[1..]
                .iter()
                .map(|a| a.replace("{node}", node).replace("{address}", address)),
        )
        .env("CORRAL_NODE_ID", node)
        .env("CORRAL_NODE_ADDRESS", address)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
        let (runs, key, timeout) = (self.runs.clone(), key.to_string(), self.timeout);
        let node = node.to_string();
        tokio::spawn(async move {
            let state = match run(cmd, timeout).await {
                Ok(()) => {
                    tracing::warn!(node = %node, "fence confirmed: the node is off");
                    FenceState::Confirmed
                }
                Err(e) => {
                    tracing::warn!(node = %node, "fence failed: {e}");
                    FenceState::Failed(e.to_string())
                }
            };
            if let Ok(mut r) = runs.lock() {
                r.insert(key, state);
            }
        });
        FenceState::Running
    }
}

async fn run(mut cmd: tokio::process::Command, timeout: Duration) -> Result<(), FenceError> {
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| FenceError::Timeout(timeout.as_secs()))?
        .map_err(FenceError::Spawn)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(FenceError::Failed {
        status: out.status.to_string(),
        stderr: stderr.trim().chars().take(500).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fencer(dir: &Path) -> Fencer {
        Fencer::new(dir.to_path_buf(), Duration::from_secs(5))
    }

    #[test]
    fn only_a_file_in_the_fence_directory_is_a_program() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ipmi-off"), "#!/bin/sh\n").unwrap();
        let f = fencer(dir.path());
        let argv = |p: &str| vec![p.to_string(), "{node}".to_string()];
        assert!(f.program(&argv("ipmi-off")).is_ok());
        for bad in ["/bin/sh", "../ipmi-off", "", ".hidden", "sub/ipmi-off"] {
            assert!(f.program(&argv(bad)).is_err(), "{bad}");
        }
        assert!(matches!(
            f.program(&argv("absent")),
            Err(FenceError::Missing(_))
        ));
        assert!(matches!(f.program(&[]), Err(FenceError::Empty)));
    }

    #[tokio::test]
    async fn a_fence_confirms_by_its_exit_status_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("off");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = n1 ] && [ \"$CORRAL_NODE_ID\" = n1 ]\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = fencer(dir.path());
        let argv = vec!["off".to_string(), "{node}".to_string()];
        let until_done = |key: &'static str, node: &'static str| {
            let f = &f;
            let argv = argv.clone();
            async move {
                loop {
                    match f.poll(key, node, "10.0.0.1", &argv) {
                        FenceState::Running => tokio::time::sleep(Duration::from_millis(20)).await,
                        done => return done,
                    }
                }
            }
        };
        assert_eq!(until_done("a", "n1").await, FenceState::Confirmed);
        assert!(matches!(until_done("b", "n2").await, FenceState::Failed(_)));
    }
}
