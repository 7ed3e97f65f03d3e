//! Deterministic, length-bucketed batches. Each epoch shuffles the examples with a
//! generator (rlhf_core::rng) seeded from (seed, epoch), cuts the shuffled list into groups of
//! `batch_size * BUCKET_BATCHES`, sorts each group by length (so a batch holds examples
//! of similar length and little padding), cuts batches and shuffles their order. The
//! order depends only on the seed, the epoch and the lengths, so a resumed run sees the
//! same batches as an uninterrupted one. No example is dropped: the last batch of an
//! epoch may be short.

use rlhf_core::rng::{rng_for, shuffle};

/// Batches per length-sorted group.
pub const BUCKET_BATCHES: usize = 16;

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
        let mut rng = rng_for(self.seed, &format!("train-sft/order/{epoch}"));
        let mut order: Vec<usize> = (0..self.lengths.len()).collect();
        shuffle(&mut rng, &mut order);
        let group = self.batch_size * BUCKET_BATCHES;
        let mut batches: Vec<Vec<usize>> = Vec::with_capacity(self.batches_per_epoch());
        for chunk in order.chunks(group) {
            let mut chunk = chunk.to_vec();
            // Stable sort: ties keep their shuffled order.
            chunk.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
            batches.extend(chunk.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        shuffle(&mut rng, &mut batches);
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
        let order = rlhf_core::rng::permutation(640, 3, "random batches");
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
