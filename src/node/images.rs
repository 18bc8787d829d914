//! Writing template images on a node: a guest's disk (or one of its snapshots) flattened
//! by `qemu-img convert` into one of the node's template directories, with its progress
//! reported as it goes and its SHA-256 computed at the end.
//!
//! The image is written under a temporary name and renamed when whole, so a re-run job
//! finds either nothing (and converts again) or the finished image (and only checksums
//! it).

use std::path::Path;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::actions::ActionError;

/// The SHA-256 (hex) and size of a file, read on a blocking thread.
pub async fn checksum(path: &str) -> Result<(String, u64), ActionError> {
    let path = std::path::PathBuf::from(path);
    tokio::task::spawn_blocking(move || crate::digest::sha256_file(&path))
        .await
        .map_err(|e| ActionError::retry("reading the image", e))?
        .map_err(|e| ActionError::retry("reading the image", e))
}

/// Converts `source` (at internal snapshot `snapshot`, when given) into a standalone
/// qcow2 at `dest`, calling `progress` with whole percents as `qemu-img` reports them.
pub async fn convert(
    source: &str,
    snapshot: Option<&str>,
    dest: &str,
    rate_limit_mib: Option<u64>,
    mut progress: impl FnMut(u32),
) -> Result<(), ActionError> {
    if Path::new(dest).exists() {
        return Ok(());
    }
    let tmp = super::staged(dest);
    let mut cmd = Command::new("qemu-img");
    // -U: a snapshot can be read while the guest runs; a stopped guest's disk is idle.
    cmd.args(["convert", "-p", "-U", "-O", "qcow2"]);
    // The node's guests keep their share of the disk while a template is written.
    if let Some(r) = rate_limit_mib.filter(|r| *r > 0) {
        cmd.arg("-r").arg(format!("{r}M"));
    }
    // A conversion given up (an interrupting cancel) stops with its future.
    cmd.kill_on_drop(true);
    if let Some(s) = snapshot {
        cmd.arg("-l").arg(format!("snapshot.name={s}"));
    }
    cmd.arg(source).arg(&tmp);
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| ActionError::retry("running qemu-img", e))?;
    if let Some(out) = child.stdout.take() {
        // `-p` rewrites one line with `\r`: "    (12.50/100%)".
        let mut parts = BufReader::new(out).split(b'\r');
        while let Ok(Some(part)) = parts.next_segment().await {
            let text = String::from_utf8_lossy(&part);
            if let Some(p) = text
                .trim()
                .strip_prefix('(')
                .and_then(|t| t.split('/').next())
                .and_then(|n| n.parse::<f64>().ok())
            {
                progress(p as u32);
            }
        }
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| ActionError::retry("qemu-img", e))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(ActionError::Permanent(format!(
            "qemu-img convert: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // A guest's disk made an image: its owner's alone until they publish it.
    crate::modes::make_private(Path::new(&tmp))
        .map_err(|e| ActionError::retry("making the image private", e))?;
    std::fs::rename(&tmp, dest).map_err(|e| ActionError::retry("moving the image in place", e))
}
