//! Deterministic, length-bucketed batches. Each epoch shuffles the examples with a
//! generator seeded from (seed, epoch), cuts the shuffled list into groups of
//! `batch_size * BUCKET_BATCHES`, sorts each group by length (so a batch holds examples
//! of similar length and little padding), cuts batches and shuffles their order. The
//! order depends only on the seed, the epoch and the lengths, so a resumed run sees the
//! same batches as an uninterrupted one. No example is dropped: the last batch of an
//! epoch may be short.

/// Batches per length-sorted group.
pub const BUCKET_BATCHES: usize = 16;

/// SplitMix64: a small generator whose output is fixed forever (no dependency whose
/// stream could change between versions).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in [0, n) (n > 0), by rejection (no modulo bias).
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Mixes a seed with a stream tag and an index into a new seed.
pub fn derive_seed(seed: u64, tag: u64, index: u64) -> u64 {
    let mut g = SplitMix64::new(seed ^ tag.rotate_left(17));
    let a = g.next_u64();
    let mut g = SplitMix64::new(a ^ index.wrapping_mul(0xD134_2543_DE82_EF95));
    g.next_u64()
}

/// Plans the batches of every epoch.
#[derive(Debug, Clone)]
pub struct Batcher {
    lengths: Vec<usize>,
    batch_size: usize,
    seed: u64,
}

impl Batcher {
    /// A batcher over examples of the given token lengths.
    pub fn new(lengths: Vec<usize>, batch_size: usize, seed: u64) -> Batcher {
        Batcher {
            lengths,
            batch_size: batch_size.max(1),
            seed,
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Batches per epoch (the same for every epoch).
    pub fn batches_per_epoch(&self) -> usize {
        self.lengths.len().div_ceil(self.batch_size)
    }

    /// The batches (example indices) of `epoch`, in training order.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = SplitMix64::new(derive_seed(self.seed, 0x5F7_BA7C, epoch));
        let mut order: Vec<usize> = (0..self.lengths.len()).collect();
        rng.shuffle(&mut order);
        let group = self.batch_size * BUCKET_BATCHES;
        let mut batches: Vec<Vec<usize>> = Vec::with_capacity(self.batches_per_epoch());
        for chunk in order.chunks(group) {
            let mut chunk = chunk.to_vec();
            // Stable sort: ties keep their shuffled order.
            chunk.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
            batches.extend(chunk.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        rng.shuffle(&mut batches);
        batches
    }

    /// Batches in evaluation order: sorted by length, no shuffling.
    pub fn sequential(&self) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.lengths.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
        order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

/// Where micro-batch number `k` (counted over the whole run) comes from: (epoch, index of
/// the batch within the epoch).
pub fn locate(k: u64, batches_per_epoch: usize) -> (u64, usize) {
    let per = batches_per_epoch.max(1) as u64;
    (k / per, (k % per) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_values() {
        // Reference stream of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(g.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn every_example_once_per_epoch_and_order_depends_on_epoch_and_seed() {
        let lengths: Vec<usize> = (0..103).map(|i| 5 + (i * 37) % 50).collect();
        let b = Batcher::new(lengths.clone(), 4, 7);
        assert_eq!(b.batches_per_epoch(), 26);
        let e0 = b.epoch(0);
        assert_eq!(e0.len(), 26);
        let mut seen: Vec<usize> = e0.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..103).collect::<Vec<_>>());
        assert_eq!(e0, b.epoch(0));
        assert_ne!(e0, b.epoch(1));
        assert_ne!(e0, Batcher::new(lengths, 4, 8).epoch(0));
    }

    #[test]
    fn batches_group_similar_lengths() {
        let lengths: Vec<usize> = (0..640).map(|i| 1 + (i * 7919) % 500).collect();
        let b = Batcher::new(lengths.clone(), 8, 1);
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches
                .iter()
                .map(|bt| {
                    let max = bt.iter().map(|&i| lengths[i]).max().unwrap_or(0);
                    bt.iter().map(|&i| max - lengths[i]).sum::<usize>()
                })
                .sum()
        };
        let bucketed = padded(&b.epoch(0));
        let mut rng = SplitMix64::new(3);
        let mut order: Vec<usize> = (0..640).collect();
        rng.shuffle(&mut order);
        let random: Vec<Vec<usize>> = order.chunks(8).map(<[usize]>::to_vec).collect();
        assert!(
            bucketed * 4 < padded(&random),
            "bucketed padding {bucketed} vs random {}",
            padded(&random)
        );
    }

    #[test]
    fn locate_walks_epochs() {
        assert_eq!(locate(0, 5), (0, 0));
        assert_eq!(locate(4, 5), (0, 4));
        assert_eq!(locate(5, 5), (1, 0));
        assert_eq!(locate(12, 5), (2, 2));
    }
}
