//! SHA-256 of image files: what corral records for a template, checks after an upload or
//! a node's fetch, and answers in `X-Checksum-Sha256`.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The file's SHA-256 (hex) and its size in bytes, read in 1 MiB blocks. Blocking: call
/// it from `spawn_blocking`.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_digest_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let (sum, n) = sha256_file(&p).unwrap();
        assert_eq!(
            sum,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(n, 3);
        assert!(sha256_file(&dir.path().join("none")).is_err());
    }
}
