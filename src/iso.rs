//! A minimal ISO 9660 writer with Joliet names, for NoCloud seeds: a few small files in
//! the root directory, written in-process (no `genisoimage` per guest).
//!
//! Layout, in 2048-byte sectors: 0–15 system area; 16 primary volume descriptor; 17 the
//! Joliet supplementary descriptor (UCS-2 names, so `meta-data` keeps its case and dash);
//! 18 terminator; 19–22 the path tables (L and M, primary and Joliet); 23 the primary root
//! directory (8.3 names); 24 the Joliet root directory; then each file's data. Readers
//! (Linux's iso9660 driver, cloud-init, cloudbase-init) use the Joliet names; the volume
//! label is in both descriptors.

const SECTOR: usize = 2048;
const PVD: usize = 16;
const SVD: usize = 17;
const TERMINATOR: usize = 18;
const PATH_L: usize = 19;
const PATH_M: usize = 20;
const JPATH_L: usize = 21;
const JPATH_M: usize = 22;
const ROOT: usize = 23;
const JROOT: usize = 24;
const FIRST_FILE: usize = 25;

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("an ISO seed holds at most {max} files, not {n}")]
    TooManyFiles { n: usize, max: usize },
    #[error("file name {0:?} is not 1 to 64 characters of ASCII")]
    BadName(String),
    #[error("volume label {0:?} is not 1 to 16 characters of ASCII")]
    BadLabel(String),
}

/// Both-endian 32-bit field (little-endian, then big-endian).
fn both32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}

fn both16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|c| c.to_be_bytes()).collect()
}

/// A directory record (ECMA-119 9.1).
fn record(extent: usize, len: usize, dir: bool, id: &[u8]) -> Vec<u8> {
    let pad = usize::from(id.len().is_multiple_of(2));
    let total = 33 + id.len() + pad;
    let mut r = Vec::with_capacity(total);
    r.push(total as u8);
    r.push(0);
    r.extend_from_slice(&both32(extent as u32));
    r.extend_from_slice(&both32(len as u32));
    // Recording date: 2000-01-01 00:00:00 UTC (a fixed date keeps seeds reproducible).
    r.extend_from_slice(&[100, 1, 1, 0, 0, 0, 0]);
    r.push(if dir { 2 } else { 0 });
    r.push(0);
    r.push(0);
    r.extend_from_slice(&both16(1));
    r.push(id.len() as u8);
    r.extend_from_slice(id);
    if pad == 1 {
        r.push(0);
    }
    r
}

/// A root directory sector: `.`, `..`, then the files in identifier order.
fn directory(at: usize, files: &[(Vec<u8>, usize, usize)]) -> Vec<u8> {
    let mut d = Vec::with_capacity(SECTOR);
    d.extend(record(at, SECTOR, true, &[0]));
    d.extend(record(at, SECTOR, true, &[1]));
    for (id, extent, len) in files {
        d.extend(record(*extent, *len, false, id));
    }
    d
}

fn path_table(root: usize, big_endian: bool) -> Vec<u8> {
    let mut p = vec![1, 0];
    let loc = root as u32;
    p.extend_from_slice(&if big_endian {
        loc.to_be_bytes()
    } else {
        loc.to_le_bytes()
    });
    p.extend_from_slice(&if big_endian {
        1u16.to_be_bytes()
    } else {
        1u16.to_le_bytes()
    });
    p.extend_from_slice(&[0, 0]);
    p
}

/// A volume descriptor; `joliet` makes it the supplementary one with UCS-2 text.
fn descriptor(
    label: &str,
    joliet: bool,
    total: usize,
    root: usize,
    paths: (usize, usize),
) -> Vec<u8> {
    let mut d = vec![0u8; SECTOR];
    d[0] = if joliet { 2 } else { 1 };
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    let text = |d: &mut [u8], at: usize, len: usize, s: &str| {
        if joliet {
            // UCS-2 spaces; an odd-length field ends in one zero byte.
            for pair in d[at..at + len].chunks_mut(2) {
                pair[0] = 0;
                if let Some(b) = pair.get_mut(1) {
                    *b = b' ';
                }
            }
            let u = ucs2(s);
            let n = u.len().min(len);
            d[at..at + n].copy_from_slice(&u[..n]);
        } else {
            d[at..at + len].fill(b' ');
            let n = s.len().min(len);
            d[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
        }
    };
    text(&mut d, 8, 32, "LINUX");
    text(&mut d, 40, 32, label);
    d[80..88].copy_from_slice(&both32(total as u32));
    if joliet {
        d[88..91].copy_from_slice(b"%/E"); // UCS-2 level 3
    }
    d[120..124].copy_from_slice(&both16(1));
    d[124..128].copy_from_slice(&both16(1));
    d[128..132].copy_from_slice(&both16(SECTOR as u16));
    d[132..140].copy_from_slice(&both32(10));
    d[140..144].copy_from_slice(&(paths.0 as u32).to_le_bytes());
    d[148..152].copy_from_slice(&(paths.1 as u32).to_be_bytes());
    let root_rec = record(root, SECTOR, true, &[0]);
    d[156..156 + root_rec.len()].copy_from_slice(&root_rec);
    for (at, len) in [(190, 128), (318, 128), (446, 128), (574, 128)] {
        text(&mut d, at, len, "");
    }
    for (at, len) in [(702, 37), (739, 37), (776, 37)] {
        text(&mut d, at, len, "");
    }
    // Creation and modification dates as digits, expiration and effective unset.
    for at in [813, 830] {
        d[at..at + 16].copy_from_slice(b"2000010100000000");
    }
    for at in [847, 864] {
        d[at..at + 16].copy_from_slice(b"0000000000000000");
    }
    d[881] = 1;
    d
}

/// The primary (8.3) name of the `i`th file in Joliet order: `F00.;1`, `F01.;1`, …, so
/// both directories list the files in the same order. Readers use the Joliet names.
fn short_name(i: usize) -> Vec<u8> {
    format!("F{i:02}.;1").into_bytes()
}

/// Builds an image holding `files` (name, content) in its root, labelled `label`.
pub fn build(label: &str, files: &[(&str, &[u8])]) -> Result<Vec<u8>, IsoError> {
    if label.is_empty() || label.len() > 16 || !label.is_ascii() {
        return Err(IsoError::BadLabel(label.to_string()));
    }
    // Each Joliet record is at most 33 + 128 bytes; 12 fit one sector with room to spare.
    if files.len() > 12 {
        return Err(IsoError::TooManyFiles {
            n: files.len(),
            max: 12,
        });
    }
    let mut sorted: Vec<(usize, &str, &[u8])> = files
        .iter()
        .enumerate()
        .map(|(i, (n, c))| (i, *n, *c))
        .collect();
    for (_, n, _) in &sorted {
        if n.is_empty() || n.len() > 64 || !n.is_ascii() {
            return Err(IsoError::BadName(n.to_string()));
        }
    }
    sorted.sort_by(|a, b| a.1.cmp(b.1));
    let mut extent = FIRST_FILE;
    let mut primary = Vec::new();
    let mut joliet = Vec::new();
    for (i, (_, name, content)) in sorted.iter().enumerate() {
        primary.push((short_name(i), extent, content.len()));
        joliet.push((ucs2(name), extent, content.len()));
        extent += content.len().div_ceil(SECTOR).max(1);
    }
    let total = extent;
    let mut img = vec![0u8; total * SECTOR];
    let mut put = |sector: usize, bytes: &[u8]| {
        let at = sector * SECTOR;
        img[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(
        PVD,
        &descriptor(label, false, total, ROOT, (PATH_L, PATH_M)),
    );
    put(
        SVD,
        &descriptor(label, true, total, JROOT, (JPATH_L, JPATH_M)),
    );
    let mut term = vec![0u8; 7];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    put(TERMINATOR, &term);
    put(PATH_L, &path_table(ROOT, false));
    put(PATH_M, &path_table(ROOT, true));
    put(JPATH_L, &path_table(JROOT, false));
    put(JPATH_M, &path_table(JROOT, true));
    put(ROOT, &directory(ROOT, &primary));
    put(JROOT, &directory(JROOT, &joliet));
    for ((_, _, content), (_, at, _)) in sorted.iter().zip(&primary) {
        put(*at, content);
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn isoinfo_reads_the_joliet_names_label_and_contents() {
        let files: [(&str, &[u8]); 3] = [
            ("user-data", b"#cloud-config\nhostname: a\n"),
            ("meta-data", b"instance-id: x\n"),
            ("network-config", &[b'n'; 5000]),
        ];
        let img = build("cidata", &files).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.iso");
        std::fs::write(&path, &img).unwrap();
        let Ok(out) = Command::new("isoinfo")
            .args(["-J", "-f", "-i"])
            .arg(&path)
            .output()
        else {
            // CI installs it: there a missing tool is a failure, not a skip.
            assert!(std::env::var("CI").is_err(), "isoinfo is required in CI");
            eprintln!("SKIPPED (part): isoinfo is not installed (Debian package genisoimage)");
            return;
        };
        let listing = String::from_utf8_lossy(&out.stdout);
        for (name, content) in files {
            assert!(listing.contains(&format!("/{name}")), "{listing}");
            let got = Command::new("isoinfo")
                .args(["-J", "-x", &format!("/{name}"), "-i"])
                .arg(&path)
                .output()
                .unwrap()
                .stdout;
            assert_eq!(got, content, "{name}");
        }
        let pvd = Command::new("isoinfo")
            .args(["-d", "-i"])
            .arg(&path)
            .output()
            .unwrap()
            .stdout;
        let pvd = String::from_utf8_lossy(&pvd);
        assert!(pvd.contains("Volume id: cidata"), "{pvd}");
        assert!(pvd.contains("Joliet"), "{pvd}");
    }

    #[test]
    fn refuses_what_it_cannot_lay_out() {
        assert!(build("", &[]).is_err());
        assert!(build("cidata", &[("", b"x")]).is_err());
        let many: Vec<(&str, &[u8])> = (0..13).map(|_| ("f", &b"x"[..])).collect();
        assert!(build("cidata", &many).is_err());
    }
}
