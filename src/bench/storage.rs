//! Storage figures (`corral bench --storage-only`): how long a snapshot takes to create
//! and to revert at 1 GiB and at 16 GiB, each disk holding the same 1 GiB of written
//! data, through the node's own snapshot code on the local `qemu:///system` (TCG) with a
//! running domain; and, for the choice between internal and external snapshots, the time
//! of an external disk-only snapshot of the same disks (`virsh snapshot-create-as
//! --disk-only`).
//!
//! Then a template from a guest's disk: corral's node conversion (`qemu-img convert` with
//! progress, then the SHA-256) against `qemu-img convert` by hand, of the same 16 GiB disk.

use std::path::Path;
use std::time::Instant;

use tokio::process::Command;

use super::BenchError;
use corral::node::hypervisor::{Hypervisor, Libvirt};

/// Written into every disk before it is timed.
const DATA_MIB: u64 = 1024;
/// Snapshots taken and reverted per disk.
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn sh(cmd: &str, args: &[&str]) -> Result<String, BenchError> {
    let out = Command::new(cmd).args(args).output().await?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn domain_xml(name: &str, uuid: &str, disk: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>\
         <memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>\
         </devices></domain>"
    )
}

/// (internal create, internal revert, external create) seconds for a disk of `gib`.
async fn one(hv: &Libvirt, dir: &Path, gib: u64) -> Result<(f64, f64, f64), BenchError> {
    let disk = dir.join(format!("snap-{gib}.qcow2"));
    let disk_s = disk.display().to_string();
    sh(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &disk_s, &format!("{gib}G")],
    )
    .await?;
    sh(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -P 0xa5 0 {DATA_MIB}M"),
            &disk_s,
        ],
    )
    .await?;
    let uuid = uuid::Uuid::new_v4().to_string();
    let name = format!("corral-bench-snap-{gib}-{}", &uuid[..8]);
    hv.define(&domain_xml(&name, &uuid, &disk_s))
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let run = async {
        hv.start(&uuid)
            .await
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        // The median of several rounds: one snapshot takes milliseconds.
        let (mut creates, mut reverts) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            corral::node::snapshots::create(hv, &uuid, "bench")
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            creates.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            corral::node::snapshots::revert(hv, &uuid, "bench")
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            reverts.push(t.elapsed().as_secs_f64());
            corral::node::snapshots::delete(hv, &uuid, "bench")
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?;
        }
        let (create, revert) = (median(creates), median(reverts));
        let overlay = dir
            .join(format!("snap-{gib}.ext.qcow2"))
            .display()
            .to_string();
        let t = Instant::now();
        sh(
            "virsh",
            &[
                "-c",
                "qemu:///system",
                "snapshot-create-as",
                &name,
                "ext",
                "--disk-only",
                "--atomic",
                "--no-metadata",
                "--diskspec",
                &format!("vda,file={overlay}"),
            ],
        )
        .await?;
        let external = t.elapsed().as_secs_f64();
        Ok::<_, BenchError>((create, revert, external))
    };
    let r = run.await;
    let _ = hv.destroy(&uuid).await;
    let _ = hv.undefine(&uuid).await;
    r
}

/// (corral's conversion with checksum, `qemu-img convert` by hand) seconds.
async fn to_template(dir: &Path) -> Result<(f64, f64), BenchError> {
    let disk = dir.join("tpl-src.qcow2").display().to_string();
    sh("qemu-img", &["create", "-q", "-f", "qcow2", &disk, "16G"]).await?;
    sh(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -P 0x5a 0 {DATA_MIB}M"),
            &disk,
        ],
    )
    .await?;
    let by_hand = dir.join("tpl-hand.qcow2").display().to_string();
    let t = Instant::now();
    sh("qemu-img", &["convert", "-O", "qcow2", &disk, &by_hand]).await?;
    let hand = t.elapsed().as_secs_f64();
    let ours = dir.join("tpl-corral.qcow2").display().to_string();
    let t = Instant::now();
    corral::node::images::convert(&disk, None, &ours, None, |_| {})
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    corral::node::images::checksum(&ours)
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let corral = t.elapsed().as_secs_f64();
    for f in [&disk, &by_hand, &ours] {
        let _ = std::fs::remove_file(f);
    }
    Ok((corral, hand))
}

/// Seconds to upload `MIB` MiB through the API (streamed, checksummed, inspected and
/// registered) and to `cp` the same file on the same disk.
async fn upload(dir: &Path) -> Result<(f64, f64), BenchError> {
    const MIB: usize = 1024;
    let src = dir.join("upload-src.raw");
    {
        use rand::{RngCore, SeedableRng};
        use std::io::Write;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src)?);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..MIB {
            rng.fill_bytes(&mut buf);
            f.write_all(&buf)?;
        }
        f.flush()?;
    }
    let src_s = src.display().to_string();
    let (sha, _) = corral::node::images::checksum(&src_s)
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let copy = dir.join("upload-cp.raw").display().to_string();
    let t = Instant::now();
    sh("cp", &[&src_s, &copy]).await?;
    let cp = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&copy);

    let srv_dir = dir.join("upload-controller");
    std::fs::create_dir_all(&srv_dir)?;
    let (redis_url, _redis) = super::private_redis(super::free_port()?, &srv_dir).await?;
    let server = super::reads::Server::start(&srv_dir, &redis_url).await?;
    let file = tokio::fs::File::open(&src).await?;
    let t = Instant::now();
    let resp = reqwest::Client::new()
        .put(format!(
            "http://{}/api/v1/templates/bench-upload/image?os_type=linux&sha256={sha}",
            server.addr
        ))
        .bearer_auth(&server.token)
        .header("content-type", "application/octet-stream")
        .body(crate::cli::file_body(file))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let up = t.elapsed().as_secs_f64();
    server.shutdown().await;
    let _ = std::fs::remove_file(&src);
    if status != 201 {
        return Err(BenchError::Setup(format!("the upload answered {status}")));
    }
    Ok((up, cp))
}

pub async fn run(dir: &Path) -> Result<(), BenchError> {
    let hv = Libvirt::new("qemu:///system");
    let small = one(&hv, dir, 1).await?;
    let big = one(&hv, dir, 16).await?;
    let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { 0.0 };
    println!(
        "snapshots of a running TCG domain, {DATA_MIB} MiB written on each disk, median of {ROUNDS} (internal, as corral takes them):"
    );
    println!(
        "  create:  1 GiB {:>8.3} s   16 GiB {:>8.3} s   16 GiB / 1 GiB {:>5.2}x",
        small.0,
        big.0,
        ratio(small.0, big.0)
    );
    println!(
        "  revert:  1 GiB {:>8.3} s   16 GiB {:>8.3} s   16 GiB / 1 GiB {:>5.2}x",
        small.1,
        big.1,
        ratio(small.1, big.1)
    );
    println!(
        "  external disk-only create (for comparison; libvirt 9.0 cannot revert it): 1 GiB {:.3} s, 16 GiB {:.3} s",
        small.2, big.2
    );
    let (up, cp) = upload(dir).await?;
    println!(
        "upload of a 1024 MiB image through the API: {up:.3} s ({:.0} MiB/s, checksummed and inspected), cp of the same file {cp:.3} s ({:.0} MiB/s): {:.2}x cp's throughput",
        1024.0 / up,
        1024.0 / cp,
        cp / up
    );
    let (corral, hand) = to_template(dir).await?;
    println!(
        "template from a 16 GiB disk with {DATA_MIB} MiB written: corral {corral:.3} s (convert + SHA-256), qemu-img convert by hand {hand:.3} s, ratio {:.2}x",
        ratio(hand, corral)
    );
    Ok(())
}
