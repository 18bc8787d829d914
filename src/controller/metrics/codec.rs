//! How samples and rollups are packed into the metrics database's blobs.
//!
//! A raw sample is a run of `(series id: u16, value: f32)`, little-endian: 6 bytes a
//! value. A rollup (one subject, one 5-minute bucket) is a run of
//! `(series id: u16, count: u32, sum: f64, max: f32)`: 18 bytes a series. The sum is kept
//! in f64, so an average over any window is the exact sum of the stored f32 samples over
//! their count, whatever buckets it spans (for values f64 adds without rounding, such as
//! whole numbers, exactly equal; otherwise equal to the last bits of the sum's order).

/// One series' aggregate over a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub n: u32,
    pub sum: f64,
    pub max: f32,
}

impl Agg {
    pub fn of(v: f32) -> Agg {
        Agg {
            n: 1,
            sum: f64::from(v),
            max: v,
        }
    }

    pub fn merge(&mut self, o: &Agg) {
        self.n += o.n;
        self.sum += o.sum;
        if o.max > self.max {
            self.max = o.max;
        }
    }

    pub fn avg(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / f64::from(self.n)
        }
    }
}

pub fn encode_sample(values: &[(u16, f32)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 6);
    for (id, v) in values {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn decode_sample(blob: &[u8]) -> Vec<(u16, f32)> {
    blob.chunks_exact(6)
        .map(|c| {
            (
                u16::from_le_bytes([c[0], c[1]]),
                f32::from_le_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect()
}

pub fn encode_rollup(aggs: &[(u16, Agg)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(aggs.len() * 18);
    for (id, a) in aggs {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&a.n.to_le_bytes());
        out.extend_from_slice(&a.sum.to_le_bytes());
        out.extend_from_slice(&a.max.to_le_bytes());
    }
    out
}

pub fn decode_rollup(blob: &[u8]) -> Vec<(u16, Agg)> {
    blob.chunks_exact(18)
        .map(|c| {
            let mut sum = [0u8; 8];
            sum.copy_from_slice(&c[6..14]);
            (
                u16::from_le_bytes([c[0], c[1]]),
                Agg {
                    n: u32::from_le_bytes([c[2], c[3], c[4], c[5]]),
                    sum: f64::from_le_bytes(sum),
                    max: f32::from_le_bytes([c[14], c[15], c[16], c[17]]),
                },
            )
        })
        .collect()
}

/// The rollup `blob` (empty: none yet) with one more sample added.
pub fn add_to_rollup(blob: &[u8], sample: &[(u16, f32)]) -> Vec<u8> {
    let mut aggs = decode_rollup(blob);
    for (id, v) in sample {
        match aggs.iter_mut().find(|(i, _)| i == id) {
            Some((_, a)) => a.merge(&Agg::of(*v)),
            None => aggs.push((*id, Agg::of(*v))),
        }
    }
    encode_rollup(&aggs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_rollups_accumulate() {
        let s = vec![(1u16, 2.5f32), (7, -1.0)];
        assert_eq!(decode_sample(&encode_sample(&s)), s);
        let r = add_to_rollup(&[], &s);
        let r = add_to_rollup(&r, &[(1, 4.5), (9, 3.0)]);
        let d = decode_rollup(&r);
        assert_eq!(d.len(), 3);
        assert_eq!(
            d[0],
            (
                1,
                Agg {
                    n: 2,
                    sum: 7.0,
                    max: 4.5
                }
            )
        );
        assert_eq!(d[0].1.avg(), 3.5);
        assert_eq!(
            d[1],
            (
                7,
                Agg {
                    n: 1,
                    sum: -1.0,
                    max: -1.0
                }
            )
        );
    }
}
