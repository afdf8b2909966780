//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Katran and
//! Cilium use it: every backend gets a permutation of the table's slots from
//! two hashes of its key, and the backends take turns claiming their next
//! free preferred slot until the table is full.
//!
//! The table size must be prime (so that every `skip` walks all slots) and
//! much larger than the number of backends: the spread is within about
//! `backends / size` of even, and removing one backend moves little more than
//! that backend's own share of the slots.

/// The default table size: prime, and small enough that 10,250 service
/// tables fit in about 42 MB of kernel memory (see `dataplane::lb_maps`).
pub const DEFAULT_TABLE_SIZE: u32 = 1021;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not a prime of at least 3: set lb.table_size in the config file to a prime such as 1021")]
    NotPrime(u32),
}

/// Whether `n` is prime (trial division: table sizes are small).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut d = 2u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// 64-bit FNV-1a with a seed folded in first: stable across builds and
/// platforms, unlike std's hasher, so a restarted agent computes the same
/// table.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64): FNV's low bits are weak on short keys.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// Fills a table of `size` slots with indexes into `keys`. The order of
/// `keys` does not matter (they are sorted first); duplicate keys count once.
/// An empty `keys` gives an empty table.
pub fn table<K: AsRef<[u8]>>(keys: &[K], size: u32) -> Result<Vec<u32>, MaglevError> {
    if size < 3 || !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].as_ref().cmp(keys[b].as_ref()));
    order.dedup_by(|a, b| keys[*a].as_ref() == keys[*b].as_ref());
    if order.is_empty() {
        return Ok(Vec::new());
    }
    let m = u64::from(size);
    // (offset, skip) per backend, and the next index of its permutation.
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let key = keys[i].as_ref();
            (fnv1a(1, key) % m, fnv1a(2, key) % (m - 1) + 1)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    const EMPTY: u32 = u32::MAX;
    let mut slots = vec![EMPTY; size as usize];
    let mut filled = 0usize;
    'fill: loop {
        for (n, &(offset, skip)) in perms.iter().enumerate() {
            let mut slot = (offset + next[n] * skip) % m;
            while slots[slot as usize] != EMPTY {
                next[n] += 1;
                slot = (offset + next[n] * skip) % m;
            }
            slots[slot as usize] = order[n] as u32;
            next[n] += 1;
            filled += 1;
            if filled == slots.len() {
                break 'fill;
            }
        }
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u32) -> Vec<[u8; 4]> {
        (0..n).map(|i| [10, 10, (i >> 8) as u8, i as u8]).collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &b in table {
            counts[b as usize] += 1;
        }
        counts
    }

    #[test]
    fn sizes_must_be_prime() {
        assert_eq!(table(&keys(2), 1000), Err(MaglevError::NotPrime(1000)));
        assert_eq!(table(&keys(2), 2), Err(MaglevError::NotPrime(2)));
        assert!(is_prime(DEFAULT_TABLE_SIZE));
        assert!(is_prime(4099) && is_prime(65537) && !is_prime(4097));
        assert!(table(&keys(0), 1021).unwrap().is_empty());
    }

    #[test]
    fn spread_is_even_within_a_few_percent() {
        for (n, size) in [
            (2u32, 1021u32),
            (3, 1021),
            (10, 1021),
            (10, 4099),
            (100, 65537),
        ] {
            let t = table(&keys(n), size).unwrap();
            assert_eq!(t.len(), size as usize);
            let ideal = f64::from(size) / f64::from(n);
            for (b, &c) in counts(&t, n as usize).iter().enumerate() {
                let off = (c as f64 - ideal).abs() / ideal;
                assert!(
                    off < 0.05,
                    "{n} backends, size {size}: backend {b} has {c} slots, ideal {ideal:.1}"
                );
            }
        }
    }

    #[test]
    fn order_of_backends_does_not_matter() {
        let k = keys(7);
        let mut reversed = k.clone();
        reversed.reverse();
        let a: Vec<_> = table(&k, 1021)
            .unwrap()
            .iter()
            .map(|&i| k[i as usize])
            .collect();
        let b: Vec<_> = table(&reversed, 1021)
            .unwrap()
            .iter()
            .map(|&i| reversed[i as usize])
            .collect();
        assert_eq!(a, b);
    }

    /// Slots that change owner when going from `before` to `after` keys.
    fn moved(before: &[[u8; 4]], after: &[[u8; 4]], size: u32) -> usize {
        let a = table(before, size).unwrap();
        let b = table(after, size).unwrap();
        a.iter()
            .zip(&b)
            .filter(|(x, y)| before[**x as usize] != after[**y as usize])
            .count()
    }

    #[test]
    fn removing_a_backend_moves_little_more_than_its_share() {
        let size = 4099;
        let all = keys(10);
        let mut fewer = all.clone();
        fewer.remove(4);
        let moved = moved(&all, &fewer, size);
        // Its own ~410 slots must move; Maglev moves a little more.
        let share = size as usize / 10;
        assert!(moved >= share - share / 10, "moved {moved}");
        assert!(moved <= share + share / 2, "moved {moved}, share {share}");
    }

    #[test]
    fn adding_a_backend_moves_little_more_than_its_share() {
        let size = 4099;
        let all = keys(11);
        let fewer = all[..10].to_vec();
        let moved = moved(&fewer, &all, size);
        let share = size as usize / 11;
        assert!(moved <= share + share / 2, "moved {moved}, share {share}");
    }
}
