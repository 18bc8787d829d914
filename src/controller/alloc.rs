//! Allocators: IP addresses, VNC ports, MAC addresses.
//!
//! Each allocation is an INSERT into a lease table whose primary key makes a duplicate
//! impossible, inside the saga step's transaction: two creates racing for the last address
//! cannot both win, and an undo (or a crash before commit) returns everything.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::Rng;

use sqlx::SqliteConnection;

use super::store::leases::{self, HolderRow};
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
    #[error("IP {0} is {1} and cannot be handed out")]
    IpMarked(String, String),
    #[error("{ip} is the {what} address of pool {pool}")]
    IpSpecial {
        ip: String,
        what: &'static str,
        pool: String,
    },
    #[error("{0:?} is not an IPv4 address")]
    NotAnAddress(String),
    #[error("{0} is not inside any IP pool's network")]
    NotInNetwork(String),
    #[error("no free VNC port in {min}-{max} on node {node}")]
    VncExhausted { node: String, min: u16, max: u16 },
    #[error("IP pool {pool} is corrupt: {why}")]
    BadPool { pool: String, why: String },
    /// Another allocation took what this one chose; trying again finds another.
    #[error("another allocation took {0} first")]
    Raced(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AllocError {
    fn from(e: sqlx::Error) -> Self {
        AllocError::Store(StoreError::Db(e))
    }
}

/// A parsed pool: its network, allocatable ranges and gateway.
#[derive(Debug, Clone)]
pub struct PoolRange {
    pub net: Ipv4Net,
    pub ranges: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub gateway: Option<Ipv4Addr>,
}

impl PoolRange {
    /// Parses a pool and its ranges (`ip_ranges` rows, first range first).
    pub fn parse(p: &PoolRow, ranges: &[(String, String)]) -> Result<Self, AllocError> {
        let bad = |why: String| AllocError::BadPool {
            pool: p.name.clone(),
            why,
        };
        let net: Ipv4Net = p.cidr.parse().map_err(|e| bad(format!("cidr: {e}")))?;
        let mut parsed = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            let a: Ipv4Addr = a
                .parse()
                .map_err(|e| bad(format!("range start {a}: {e}")))?;
            let b: Ipv4Addr = b.parse().map_err(|e| bad(format!("range end {b}: {e}")))?;
            parsed.push((a, b));
        }
        parsed.sort();
        let gateway = match &p.gateway {
            Some(g) => Some(g.parse().map_err(|e| bad(format!("gateway: {e}")))?),
            None => None,
        };
        Ok(PoolRange {
            net,
            ranges: parsed,
            gateway,
        })
    }

    /// Loads a pool's ranges and parses it.
    pub async fn load(conn: &mut SqliteConnection, p: &PoolRow) -> Result<Self, AllocError> {
        let ranges = leases::pool_ranges(conn, &p.id).await?;
        PoolRange::parse(p, &ranges)
    }

    /// Allocatable: inside a range and not the gateway.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        Some(ip) != self.gateway && self.ranges.iter().any(|(a, b)| ip >= *a && ip <= *b)
    }

    /// Every allocatable address, in order.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|(a, b)| (u32::from(*a)..=u32::from(*b)).map(Ipv4Addr::from))
            .filter(move |ip| Some(*ip) != self.gateway)
    }

    /// `addresses().skip(skip)`, without walking the skipped addresses: a page of a large
    /// pool costs its own length.
    pub fn addresses_from(&self, skip: u64) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let mut left = skip;
        let mut first = (self.ranges.len(), 0u32);
        for (i, (a, b)) in self.ranges.iter().enumerate() {
            let (a, b) = (u32::from(*a), u32::from(*b));
            let gateway = self.gateway.map(u32::from).filter(|g| (a..=b).contains(g));
            let count = u64::from(b - a) + 1 - u64::from(gateway.is_some());
            if left < count {
                // The left-th allocatable address: one further on once past the gateway.
                let at = a + left as u32;
                first = (i, at + u32::from(gateway.is_some_and(|g| g <= at)));
                break;
            }
            left -= count;
        }
        let (start, from) = first;
        self.ranges
            .iter()
            .enumerate()
            .skip(start)
            .flat_map(move |(i, (a, b))| {
                let lo = if i == start { from } else { u32::from(*a) };
                (lo..=u32::from(*b)).map(Ipv4Addr::from)
            })
            .filter(move |ip| Some(*ip) != self.gateway)
    }

    /// How many addresses the ranges hold (gateway excluded).
    pub fn size(&self) -> u64 {
        let all: u64 = self
            .ranges
            .iter()
            .map(|(a, b)| u64::from(u32::from(*b)) - u64::from(u32::from(*a)) + 1)
            .sum();
        all - u64::from(self.gateway.is_some_and(|g| self.contains_raw(g)))
    }

    fn contains_raw(&self, ip: Ipv4Addr) -> bool {
        self.ranges.iter().any(|(a, b)| ip >= *a && ip <= *b)
    }

    /// First allocatable address that is not taken.
    pub fn first_free(&self, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        self.addresses().find(|ip| !taken.contains(ip))
    }
}

/// Counts of a pool's addresses.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub size: u64,
    pub allocated: u64,
    pub reserved: u64,
    pub disabled: u64,
}

impl PoolStats {
    pub fn free(&self) -> u64 {
        self.size
            .saturating_sub(self.allocated + self.reserved + self.disabled)
    }
}

/// Loads a pool's ranges through a pooled connection (for API reads).
pub async fn load_pool(store: &super::store::Store, p: &PoolRow) -> Result<PoolRange, AllocError> {
    let mut conn = store.pool().acquire().await?;
    PoolRange::load(&mut conn, p).await
}

/// Size and usage of a pool. Marks and leases outside the ranges (a reserved VIP, a range
/// since narrowed) are not counted against the size.
pub async fn pool_stats(
    store: &super::store::Store,
    p: &PoolRow,
) -> Result<(PoolRange, PoolStats), AllocError> {
    let range = load_pool(store, p).await?;
    let (leased, marks) = leases::pool_usage(store, &p.id).await?;
    let inside = |ip: &str| ip.parse().map(|a| range.contains(a)).unwrap_or(false);
    let stats = PoolStats {
        size: range.size(),
        allocated: leased.iter().filter(|l| inside(l)).count() as u64,
        reserved: marks
            .iter()
            .filter(|m| m.1 == "reserved" && inside(&m.0))
            .count() as u64,
        disabled: marks
            .iter()
            .filter(|m| m.1 == "disabled" && inside(&m.0))
            .count() as u64,
    };
    Ok((range, stats))
}

/// Who holds an address of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Leased to this guest.
    Guest(String),
    /// Marked `reserved` or `disabled`, with its note.
    Mark { state: String, note: String },
}

/// Parsed holders, marks before leases: collected into a map, a lease overrides a mark on
/// the same address (as allocation sees it).
fn parse_holders(rows: Vec<HolderRow>) -> impl Iterator<Item = (Ipv4Addr, Holder)> {
    let (leases, marks): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.1.is_some());
    marks
        .into_iter()
        .chain(leases)
        .filter_map(|(ip, guest, state, note)| {
            let h = match guest {
                Some(g) => Holder::Guest(g),
                None => Holder::Mark {
                    state: state.unwrap_or_default(),
                    note: note.unwrap_or_default(),
                },
            };
            Some((ip.parse().ok()?, h))
        })
}

/// Holders of every leased or marked address of a pool, in address order.
pub async fn holders(
    store: &super::store::Store,
    pool_id: &str,
) -> Result<std::collections::BTreeMap<Ipv4Addr, Holder>, AllocError> {
    Ok(parse_holders(leases::holders(store, pool_id).await?).collect())
}

/// Holders of `ips` in a pool: one indexed lookup per address, whatever the pool's size.
pub async fn holders_of(
    store: &super::store::Store,
    pool_id: &str,
    ips: &[Ipv4Addr],
) -> Result<std::collections::HashMap<Ipv4Addr, Holder>, AllocError> {
    let ips: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
    Ok(parse_holders(leases::holders_of(store, pool_id, &ips).await?).collect())
}

/// Where each pool's last allocation was: the next search starts just after it (next
/// fit), so a large, mostly allocated pool costs a few point lookups per allocation
/// instead of reading every lease. Only a hint, in memory: a lost or stale one costs a
/// longer search, never a wrong answer (every candidate is checked, and the lease's
/// primary key has the last word).
static LAST_ALLOCATED: std::sync::LazyLock<std::sync::Mutex<HashMap<String, Ipv4Addr>>> =
    std::sync::LazyLock::new(Default::default);

/// Point lookups tried from the hint before reading the whole pool.
const PROBES: usize = 32;

fn remember(pool: &str, ip: Ipv4Addr) {
    if let Ok(mut m) = LAST_ALLOCATED.lock() {
        m.insert(pool.to_string(), ip);
    }
}

/// The first free address among the `PROBES` after the pool's hint (wrapping round).
async fn probe_from_hint(
    tx: &mut Tx<'_>,
    p: &PoolRow,
    range: &PoolRange,
) -> Result<Option<Ipv4Addr>, AllocError> {
    let last = LAST_ALLOCATED
        .lock()
        .ok()
        .and_then(|m| m.get(&p.id).copied());
    let after = range
        .addresses()
        .skip_while(|a| last.is_some_and(|l| *a <= l));
    let before = range
        .addresses()
        .take_while(|a| last.is_some_and(|l| *a <= l));
    for ip in after.chain(before).take(PROBES) {
        if !leases::ip_taken(tx, &ip.to_string()).await? {
            return Ok(Some(ip));
        }
    }
    Ok(None)
}

/// Addresses of a pool that cannot be handed out: leased, reserved or disabled.
async fn taken_in(tx: &mut Tx<'_>, pool_id: &str) -> Result<HashSet<Ipv4Addr>, AllocError> {
    let rows = leases::taken_in(tx, pool_id).await?;
    Ok(rows.into_iter().filter_map(|r| r.parse().ok()).collect())
}

pub(crate) async fn lease_ip(
    tx: &mut Tx<'_>,
    ip: Ipv4Addr,
    pool: &str,
    guest: &str,
) -> Result<(), AllocError> {
    if leases::insert_ip(tx, &ip.to_string(), pool, guest).await? {
        Ok(())
    } else {
        Err(AllocError::IpInUse(ip.to_string()))
    }
}

/// Where an address given by hand may lie in a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Within {
    /// Inside one of the pool's allocatable ranges (a create asking for an address, a
    /// correction of the record).
    Ranges,
    /// Anywhere in the pool's network but its network, broadcast and gateway addresses (an
    /// IP change may leave the ranges, e.g. for a VIP).
    Network,
}

/// The rules for handing out an address given by hand, in one place: it parses, lies in
/// one of `pools` (`within`), is not marked reserved or disabled and no guest holds it.
/// Leases it to `guest` and returns the pool.
pub async fn lease_given(
    tx: &mut Tx<'_>,
    pools: &[PoolRow],
    addr: &str,
    within: Within,
    guest: &str,
) -> Result<(PoolRow, Ipv4Addr), AllocError> {
    let ip: Ipv4Addr = addr
        .parse()
        .map_err(|_| AllocError::NotAnAddress(addr.to_string()))?;
    for p in pools {
        let range = PoolRange::load(tx, p).await?;
        let inside = match within {
            Within::Ranges => range.contains(ip),
            Within::Network => range.net.contains(&ip),
        };
        if !inside {
            continue;
        }
        let special = if ip == range.net.network() {
            Some("network")
        } else if ip == range.net.broadcast() {
            Some("broadcast")
        } else if Some(ip) == range.gateway {
            Some("gateway")
        } else {
            None
        };
        if let Some(what) = special {
            return Err(AllocError::IpSpecial {
                ip: ip.to_string(),
                what,
                pool: p.name.clone(),
            });
        }
        // Inside a range, but marked: not to be handed out.
        if let Some(state) = leases::mark_of(tx, &ip.to_string()).await? {
            return Err(AllocError::IpMarked(ip.to_string(), state));
        }
        lease_ip(tx, ip, &p.id, guest).await?;
        return Ok((p.clone(), ip));
    }
    Err(match within {
        Within::Ranges => AllocError::NotInPool(ip.to_string()),
        Within::Network => AllocError::NotInNetwork(ip.to_string()),
    })
}

/// Returns every address a guest holds (its record is being corrected).
pub async fn release_ips(tx: &mut Tx<'_>, guest: &str) -> Result<(), AllocError> {
    Ok(leases::release_ips(tx, guest).await?)
}

/// Allocates an address for `guest`: the requested one (see [`lease_given`]) or the next
/// free one of `pools`, tried in order. Returns the pool and the address.
pub async fn allocate_ip(
    tx: &mut Tx<'_>,
    pools: &[PoolRow],
    requested: Option<&str>,
    guest: &str,
) -> Result<(PoolRow, Ipv4Addr), AllocError> {
    if let Some(req) = requested {
        return lease_given(tx, pools, req, Within::Ranges, guest).await;
    }
    for p in pools {
        let range = PoolRange::load(tx, p).await?;
        let found = match probe_from_hint(tx, p, &range).await? {
            Some(ip) => Some(ip),
            // No luck near the hint (a nearly full pool, a lost hint): read the pool's
            // leases and marks once and take the first free address.
            None => range.first_free(&taken_in(tx, &p.id).await?),
        };
        if let Some(ip) = found {
            lease_ip(tx, ip, &p.id, guest).await?;
            remember(&p.id, ip);
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
    // Usually the port after the node's highest one is free: one indexed lookup.
    let next = leases::highest_vnc(tx, node)
        .await?
        .map_or(i64::from(min), |h| h + 1);
    if (i64::from(min)..=i64::from(max)).contains(&next)
        && leases::insert_vnc(tx, node, next, guest).await?
    {
        return Ok(next as u16);
    }
    // Past the top of the range: the first gap, from every lease of the node.
    let taken: HashSet<i64> = leases::vnc_ports(tx, node).await?.into_iter().collect();
    let port = (min..=max)
        .find(|p| !taken.contains(&i64::from(*p)))
        .ok_or_else(|| AllocError::VncExhausted {
            node: node.to_string(),
            min,
            max,
        })?;
    if leases::insert_vnc(tx, node, i64::from(port), guest).await? {
        Ok(port)
    } else {
        Err(AllocError::Raced("a VNC port"))
    }
}

/// Allocates a random locally administered MAC in QEMU's 52:54:00 prefix.
pub async fn allocate_mac(tx: &mut Tx<'_>, guest: &str) -> Result<String, AllocError> {
    for _ in 0..32 {
        let mac = random_mac();
        if leases::insert_mac(tx, &mac, guest).await? {
            return Ok(mac);
        }
    }
    Err(AllocError::Raced("32 MAC addresses in a row"))
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
    Ok(leases::release_all(tx, guest).await?)
}

/// Returns one address a guest held (the old address after an IP change).
pub async fn release_ip(tx: &mut Tx<'_>, ip: &str, guest: &str) -> Result<(), AllocError> {
    Ok(leases::release_ip(tx, ip, guest).await?)
}

/// Keeps a guest's leases, marked as waiting for its node's cleanup: an undo on the node
/// did not complete, so the domain or files using them may still exist there.
pub async fn mark_for_cleanup(tx: &mut Tx<'_>, guest: &str) -> Result<(), AllocError> {
    Ok(leases::mark_for_cleanup(tx, guest).await?)
}

/// Whether any of a guest's leases waits for cleanup.
pub async fn held_for_cleanup(tx: &mut Tx<'_>, guest: &str) -> Result<bool, StoreError> {
    leases::held_for_cleanup(tx, guest).await
}

/// Frees the leases a guest held for cleanup, once the node confirmed its objects gone.
/// Returns whether there were any.
pub async fn release_cleaned(tx: &mut Tx<'_>, guest: &str) -> Result<bool, AllocError> {
    Ok(leases::release_cleaned(tx, guest).await?)
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
            bridge: String::new(),
            vlan: None,
        }
    }

    fn range(ranges: &[(&str, &str)]) -> PoolRange {
        let r: Vec<(String, String)> = ranges
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        PoolRange::parse(&pool(), &r).unwrap()
    }

    #[test]
    fn first_free_skips_gateway_and_taken() {
        let r = range(&[("192.0.2.1", "192.0.2.4")]);
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
    fn addresses_from_is_addresses_skipped() {
        for r in [
            range(&[("192.0.2.20", "192.0.2.21"), ("192.0.2.1", "192.0.2.3")]),
            range(&[("192.0.2.1", "192.0.2.1"), ("192.0.2.9", "192.0.2.12")]),
            range(&[("192.0.2.5", "192.0.2.5")]),
        ] {
            let all: Vec<Ipv4Addr> = r.addresses().collect();
            for n in 0..=all.len() as u64 + 2 {
                let from: Vec<Ipv4Addr> = r.addresses_from(n).collect();
                assert_eq!(from, all[(n as usize).min(all.len())..], "skip {n}");
            }
        }
    }

    #[test]
    fn several_ranges_are_walked_in_order_and_sized_without_the_gateway() {
        let r = range(&[("192.0.2.20", "192.0.2.21"), ("192.0.2.1", "192.0.2.3")]);
        let all: Vec<String> = r.addresses().map(|a| a.to_string()).collect();
        assert_eq!(all, ["192.0.2.2", "192.0.2.3", "192.0.2.20", "192.0.2.21"]);
        assert_eq!(r.size(), 4);
        assert!(r.contains("192.0.2.21".parse().unwrap()));
        assert!(!r.contains("192.0.2.10".parse().unwrap()));
    }

    /// Property: under any random sequence of allocate / free / mark / unmark, an address
    /// is never handed out twice or while marked, and none is lost (free + used + marked
    /// always equals the pool's size).
    #[test]
    fn random_allocation_sequences_never_duplicate_or_lose_an_address() {
        use rand::{Rng, SeedableRng};
        let r = range(&[("192.0.2.1", "192.0.2.12"), ("192.0.2.40", "192.0.2.44")]);
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut used: HashSet<Ipv4Addr> = HashSet::new();
            let mut marked: HashSet<Ipv4Addr> = HashSet::new();
            for _ in 0..200 {
                let all: Vec<Ipv4Addr> = r.addresses().collect();
                let pick = all[rng.gen_range(0..all.len())];
                match rng.gen_range(0..4) {
                    0 => {
                        let taken: HashSet<Ipv4Addr> = used.union(&marked).copied().collect();
                        if let Some(ip) = r.first_free(&taken) {
                            assert!(
                                !used.contains(&ip) && !marked.contains(&ip),
                                "seed {seed}: {ip} handed out twice"
                            );
                            used.insert(ip);
                        } else {
                            assert_eq!(
                                (used.len() + marked.len()) as u64,
                                r.size(),
                                "seed {seed}: pool full too early"
                            );
                        }
                    }
                    1 => {
                        used.remove(&pick);
                    }
                    2 if !used.contains(&pick) => {
                        marked.insert(pick);
                    }
                    _ => {
                        marked.remove(&pick);
                    }
                }
                let free = r
                    .addresses()
                    .filter(|a| !used.contains(a) && !marked.contains(a))
                    .count();
                assert_eq!(
                    (free + used.len() + marked.len()) as u64,
                    r.size(),
                    "seed {seed}: an address was lost"
                );
            }
        }
    }

    #[test]
    fn macs_are_in_the_qemu_prefix() {
        let m = random_mac();
        assert!(m.starts_with("52:54:00:") && m.len() == 17, "{m}");
    }
}
