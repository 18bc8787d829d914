//! The agent's idle footprint. The agent runs from the one `corral` binary that also
//! holds the controller, the API and the CLI (tens of MiB of code), of which it runs a
//! small part. By default the kernel maps 16 pages around every page fault in a file
//! ("fault-around") and reads ahead, so the agent's scattered calls pulled much of the
//! binary's code into its resident set: on a host where the controller runs too, whose
//! page cache holds all of it, an idle agent showed 14 MiB of the binary's text.
//!
//! [`trim_text`] asks the kernel for exactly the pages the agent runs: it marks the
//! binary's executable mappings `MADV_RANDOM` (no fault-around, no read-ahead) and drops
//! the pages faulted in before (`MADV_DONTNEED`: code is never written, so it is read
//! back from the file when it runs again). Only the executable mappings are touched:
//! data the loader relocated is private and must stay. One of the four modules with
//! `unsafe` code (with `node::events`, `node::iotune` and `store::changes`).
#![allow(unsafe_code)]

/// Marks the running binary's code `MADV_RANDOM` and drops its resident pages; best
/// effort (a failure changes nothing but the footprint).
pub fn trim_text() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let exe = exe.display().to_string();
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        // Only executable, never-written mappings of our own file.
        let path = f.nth(3).unwrap_or("");
        if path != exe || !perms.starts_with("r-x") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is a whole mapping of this process's executable as the kernel
        // lists it, page-aligned; it is read-only code, so neither advice changes what
        // the process reads there: MADV_RANDOM only stops fault-around and read-ahead,
        // and MADV_DONTNEED on a private, never-written file mapping only unmaps pages
        // that fault back in from the file on their next use.
        unsafe {
            let addr = start as *mut libc::c_void;
            libc::madvise(addr, end - start, libc::MADV_RANDOM);
            libc::madvise(addr, end - start, libc::MADV_DONTNEED);
        }
    }
}
