//! Allocators: IP addresses, VNC ports, MAC addresses.
//!
//! Each allocation is an INSERT into a lease table whose primary key makes a duplicate
//! impossible, inside the saga step's transaction: two creates racing for the last address
//! cannot both win, and an undo (or a crash before commit) returns everything.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::Rng;

use super::store::{PoolRow, StoreError, Tx};

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("IP pool {0} has no free address")]
    PoolExhausted(String),
    #[error("no IP pool has a free address")]
    NoFreeAddress,
    #[error("{0} is not inside any IP pool's allocatable range")]
    NotInPool(String),
    #[error("IP {0} is already in use")]
    IpInUse(String),
    #[error("no free VNC port in {min}-{max} on node {node}")]
    VncExhausted { node: String, min: u16, max: u16 },
    #[error("IP pool {pool} is corrupt: {why}")]
    BadPool { pool: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AllocError {
    fn from(e: sqlx::Error) -> Self {
        AllocError::Store(StoreError::Db(e))
    }
}

/// A parsed pool: network and allocatable range.
pub struct PoolRange {
    pub net: Ipv4Net,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
}

impl PoolRange {
    pub fn parse(p: &PoolRow) -> Result<Self, AllocError> {
        let bad = |why: String| AllocError::BadPool {
            pool: p.name.clone(),
            why,
        };
        let net: Ipv4Net = p.cidr.parse().map_err(|e| bad(format!("cidr: {e}")))?;
        let start: Ipv4Addr = p
            .range_start
            .parse()
            .map_err(|e| bad(format!("range_start: {e}")))?;
        let end: Ipv4Addr = p
            .range_end
            .parse()
            .map_err(|e| bad(format!("range_end: {e}")))?;
        let gateway = match &p.gateway {
            Some(g) => Some(g.parse().map_err(|e| bad(format!("gateway: {e}")))?),
            None => None,
        };
        Ok(PoolRange {
            net,
            start,
            end,
            gateway,
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip >= self.start && ip <= self.end && Some(ip) != self.gateway
    }

    /// First address of the range that is neither taken nor the gateway.
    pub fn first_free(&self, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        (u32::from(self.start)..=u32::from(self.end))
            .map(Ipv4Addr::from)
            .find(|ip| Some(*ip) != self.gateway && !taken.contains(ip))
    }
}

async fn taken_in(tx: &mut Tx<'_>, pool_id: &str) -> Result<HashSet<Ipv4Addr>, AllocError> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT ip FROM ip_leases WHERE pool_id = ?")
        .bind(pool_id)
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows.into_iter().filter_map(|r| r.0.parse().ok()).collect())
}

async fn lease_ip(
    tx: &mut Tx<'_>,
    ip: Ipv4Addr,
    pool: &str,
    guest: &str,
) -> Result<(), AllocError> {
    let r = sqlx::query("INSERT INTO ip_leases (ip, pool_id, guest_id) VALUES (?, ?, ?)")
        .bind(ip.to_string())
        .bind(pool)
        .bind(guest)
        .execute(&mut **tx)
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
            Err(AllocError::IpInUse(ip.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Allocates an address for `guest`: the requested one (checked) or the next free one of
/// `pools`, tried in order. Returns the pool and the address.
pub async fn allocate_ip(
    tx: &mut Tx<'_>,
    pools: &[PoolRow],
    requested: Option<&str>,
    guest: &str,
) -> Result<(PoolRow, Ipv4Addr), AllocError> {
    if let Some(req) = requested {
        let ip: Ipv4Addr = req
            .parse()
            .map_err(|_| AllocError::NotInPool(req.to_string()))?;
        for p in pools {
            if PoolRange::parse(p)?.contains(ip) {
                lease_ip(tx, ip, &p.id, guest).await?;
                return Ok((p.clone(), ip));
            }
        }
        return Err(AllocError::NotInPool(req.to_string()));
    }
    for p in pools {
        let range = PoolRange::parse(p)?;
        let taken = taken_in(tx, &p.id).await?;
        if let Some(ip) = range.first_free(&taken) {
            lease_ip(tx, ip, &p.id, guest).await?;
            return Ok((p.clone(), ip));
        }
    }
    match pools {
        [only] => Err(AllocError::PoolExhausted(only.name.clone())),
        _ => Err(AllocError::NoFreeAddress),
    }
}

/// Allocates a VNC port on `node` from `min..=max` (ports are per node, not cluster-wide).
pub async fn allocate_vnc(
    tx: &mut Tx<'_>,
    node: &str,
    min: u16,
    max: u16,
    guest: &str,
) -> Result<u16, AllocError> {
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT port FROM vnc_leases WHERE node_id = ?")
        .bind(node)
        .fetch_all(&mut **tx)
        .await?;
    let taken: HashSet<i64> = rows.into_iter().map(|r| r.0).collect();
    let port = (min..=max)
        .find(|p| !taken.contains(&i64::from(*p)))
        .ok_or_else(|| AllocError::VncExhausted {
            node: node.to_string(),
            min,
            max,
        })?;
    sqlx::query("INSERT INTO vnc_leases (node_id, port, guest_id) VALUES (?, ?, ?)")
        .bind(node)
        .bind(i64::from(port))
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(port)
}

/// Allocates a random locally administered MAC in QEMU's 52:54:00 prefix.
pub async fn allocate_mac(tx: &mut Tx<'_>, guest: &str) -> Result<String, AllocError> {
    for _ in 0..32 {
        let mac = random_mac();
        let r = sqlx::query("INSERT INTO mac_leases (mac, guest_id) VALUES (?, ?)")
            .bind(&mac)
            .bind(guest)
            .execute(&mut **tx)
            .await;
        match r {
            Ok(_) => return Ok(mac),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(AllocError::Store(StoreError::Db(sqlx::Error::Protocol(
        "could not find a free MAC in 32 tries".into(),
    ))))
}

pub fn random_mac() -> String {
    let mut rng = rand::thread_rng();
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        rng.gen::<u8>(),
        rng.gen::<u8>(),
        rng.gen::<u8>()
    )
}

/// Returns every lease `guest` holds.
pub async fn release_all(tx: &mut Tx<'_>, guest: &str) -> Result<(), AllocError> {
    for sql in [
        "DELETE FROM ip_leases WHERE guest_id = ?",
        "DELETE FROM vnc_leases WHERE guest_id = ?",
        "DELETE FROM mac_leases WHERE guest_id = ?",
    ] {
        sqlx::query(sql).bind(guest).execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> PoolRow {
        PoolRow {
            id: "p".into(),
            name: "p".into(),
            cidr: "192.0.2.0/24".into(),
            range_start: "192.0.2.1".into(),
            range_end: "192.0.2.4".into(),
            gateway: Some("192.0.2.1".into()),
            dns: "[]".into(),
            created_at: 0,
        }
    }

    #[test]
    fn first_free_skips_gateway_and_taken() {
        let r = PoolRange::parse(&pool()).unwrap();
        let mut taken = HashSet::new();
        assert_eq!(r.first_free(&taken), Some("192.0.2.2".parse().unwrap()));
        taken.insert("192.0.2.2".parse().unwrap());
        taken.insert("192.0.2.3".parse().unwrap());
        assert_eq!(r.first_free(&taken), Some("192.0.2.4".parse().unwrap()));
        taken.insert("192.0.2.4".parse().unwrap());
        assert_eq!(r.first_free(&taken), None);
        assert!(
            !r.contains("192.0.2.1".parse().unwrap()),
            "gateway is never allocatable"
        );
    }

    #[test]
    fn macs_are_in_the_qemu_prefix() {
        let m = random_mac();
        assert!(m.starts_with("52:54:00:") && m.len() == 17, "{m}");
    }
}
