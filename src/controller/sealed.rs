//! Secrets the controller must use again (the SMTP password) are kept sealed in the
//! database: ChaCha20-Poly1305 under a 256-bit key in `<data dir>/secrets.key` (0600,
//! beside `redis.secret`, created at first start). A copy of the database alone reveals
//! nothing; whoever reads the data directory as root reads both, which no scheme without
//! an external key store prevents. A sealed value reads `sealed:v1:<hex nonce><hex
//! ciphertext and tag>`; a value without the prefix is from before sealing and is sealed
//! the next time the controller starts.

use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "sealed:v1:";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the secrets key {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the secrets key {0} is not 64 hex digits")]
    BadKey(String),
    #[error("a sealed value does not open with this controller's key (was secrets.key replaced?)")]
    Open,
    #[error("sealing failed")]
    Seal,
}

/// Seals and opens values with the controller's key.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

impl Sealer {
    /// The key of `data_dir` (`secrets.key`), made (0600) at first use.
    pub fn of_dir(data_dir: &Path) -> Result<Sealer, SealError> {
        let path = data_dir.join("secrets.key");
        let err = |source| SealError::Key {
            path: path.display().to_string(),
            source,
        };
        let rng = SystemRandom::new();
        let hex_key = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = [0u8; 32];
                rng.fill(&mut k).map_err(|_| SealError::Seal)?;
                let s = hex::encode(k);
                crate::modes::private_dir(data_dir).map_err(err)?;
                crate::modes::write_private(&path, s.as_bytes()).map_err(err)?;
                s
            }
            Err(e) => return Err(err(e)),
        };
        let bytes = hex::decode(&hex_key)
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| SealError::BadKey(path.display().to_string()))?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| SealError::Seal)?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            rng,
        })
    }

    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }

    pub fn seal(&self, plain: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Seal)?;
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| SealError::Seal)?;
        Ok(format!(
            "{PREFIX}{}{}",
            hex::encode(nonce),
            hex::encode(data)
        ))
    }

    /// The plain value; one from before sealing comes back as it is.
    pub fn open(&self, value: &str) -> Result<String, SealError> {
        let Some(rest) = value.strip_prefix(PREFIX) else {
            return Ok(value.to_string());
        };
        let bytes = hex::decode(rest).map_err(|_| SealError::Open)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (n, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| SealError::Open)?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_sealed_value_opens_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::of_dir(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("secrets.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = s.seal("smtp-pw").unwrap();
        assert!(
            Sealer::is_sealed(&sealed) && !sealed.contains("smtp-pw"),
            "{sealed}"
        );
        assert_ne!(
            sealed,
            s.seal("smtp-pw").unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(s.open(&sealed).unwrap(), "smtp-pw");
        // The same key file again (a restart) opens it; another key does not.
        assert_eq!(
            Sealer::of_dir(dir.path()).unwrap().open(&sealed).unwrap(),
            "smtp-pw"
        );
        let other = tempfile::tempdir().unwrap();
        assert!(Sealer::of_dir(other.path()).unwrap().open(&sealed).is_err());
        assert_eq!(s.open("plain-from-before").unwrap(), "plain-from-before");
    }
}
