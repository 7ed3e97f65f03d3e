//! Batches for reward-model training.
//!
//! The unit of batching is an example group: all pairs of one ranking group (InstructGPT
//! puts the C(K,2) comparisons of a prompt in one batch, so each response is scored once),
//! a lone pair, or a rating. A micro-batch lists the distinct sequences it needs (chosen
//! and rejected of a pair go through the model in ONE forward pass) and the pairs and
//! ratings over them, as indices into that list.
//!
//! Length bucketing: per epoch the groups are shuffled (seeded), cut into windows of 50
//! batches, sorted by length inside a window, cut into batches, and the batches shuffled.
//! The stream of micro-batches is a pure function of (data, seed, epoch), so a resumed run
//! sees exactly the batches of an uninterrupted one.

use std::collections::{BTreeMap, HashMap};

use rlhf_core::hash::unit_interval;
use rlhf_core::rng::permutation;

use crate::data::Examples;

/// One micro-batch; indices in `pairs`/`ratings` point into `seqs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Indices into `Examples::seqs` of the distinct sequences to score.
    pub seqs: Vec<usize>,
    /// (chosen, rejected, pair index in Examples::pairs), positions in `seqs`.
    pub pairs: Vec<(usize, usize, usize)>,
    /// (position in `seqs`, rating index in Examples::ratings).
    pub ratings: Vec<(usize, usize)>,
}

/// An example group: pair indices of one ranking group, or a single rating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Group {
    Pairs(Vec<usize>),
    Rating(usize),
}

impl Group {
    /// Number of examples (pairs or ratings) it holds.
    pub fn size(&self) -> usize {
        match self {
            Group::Pairs(p) => p.len(),
            Group::Rating(_) => 1,
        }
    }
}

/// Groups of `ex` in a fixed order: ranking groups and lone pairs by first appearance,
/// then ratings in file order.
pub fn groups(ex: &Examples) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for (i, p) in ex.pairs.iter().enumerate() {
        match &p.group {
            Some(g) => match by_id.get(g.as_str()) {
                Some(&k) => {
                    if let Group::Pairs(v) = &mut out[k] {
                        v.push(i);
                    }
                }
                None => {
                    by_id.insert(g.as_str(), out.len());
                    out.push(Group::Pairs(vec![i]));
                }
            },
            None => out.push(Group::Pairs(vec![i])),
        }
    }
    out.extend((0..ex.ratings.len()).map(Group::Rating));
    out
}

/// A bootstrap resample of groups (drawn with replacement, the same size), deterministic
/// in (seed, member). Member 0 of a single model is not resampled by the caller.
pub fn bootstrap(groups: &[Group], seed: u64, member: usize) -> Vec<Group> {
    let n = groups.len();
    (0..n)
        .map(|i| {
            let u = unit_interval(&format!("bootstrap:{seed}:{member}:{i}"));
            groups[((u * n as f64) as usize).min(n - 1)].clone()
        })
        .collect()
}

/// Longest sequence of a group.
fn group_len(ex: &Examples, g: &Group) -> usize {
    match g {
        Group::Pairs(ps) => ps
            .iter()
            .flat_map(|&p| [ex.pairs[p].chosen, ex.pairs[p].rejected])
            .map(|s| ex.seqs[s].len())
            .max()
            .unwrap_or(0),
        Group::Rating(r) => ex.seqs[ex.ratings[*r].seq].len(),
    }
}

/// Packs groups, in order, into batches of at most `batch_size` examples (a group larger
/// than that gets a batch of its own).
fn pack(ex: &Examples, order: &[&Group], batch_size: usize) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut current: Vec<&Group> = Vec::new();
    let mut size = 0;
    for g in order {
        if size > 0 && size + g.size() > batch_size {
            out.push(assemble(ex, &current));
            current.clear();
            size = 0;
        }
        current.push(g);
        size += g.size();
    }
    if !current.is_empty() {
        out.push(assemble(ex, &current));
    }
    out
}

/// Builds a batch from groups: distinct sequences in first-use order, pairs and ratings
/// as positions.
pub fn assemble(ex: &Examples, groups: &[&Group]) -> Batch {
    let mut pos: BTreeMap<usize, usize> = BTreeMap::new();
    let mut seqs = Vec::new();
    let mut slot = |s: usize, seqs: &mut Vec<usize>| -> usize {
        *pos.entry(s).or_insert_with(|| {
            seqs.push(s);
            seqs.len() - 1
        })
    };
    let mut pairs = Vec::new();
    let mut ratings = Vec::new();
    for g in groups {
        match g {
            Group::Pairs(ps) => {
                for &p in ps {
                    let c = slot(ex.pairs[p].chosen, &mut seqs);
                    let r = slot(ex.pairs[p].rejected, &mut seqs);
                    pairs.push((c, r, p));
                }
            }
            Group::Rating(r) => {
                let s = slot(ex.ratings[*r].seq, &mut seqs);
                ratings.push((s, *r));
            }
        }
    }
    Batch {
        seqs,
        pairs,
        ratings,
    }
}

/// The length-bucketed micro-batches of one training epoch.
pub fn epoch_batches(
    ex: &Examples,
    groups: &[Group],
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Batch> {
    let shuffled: Vec<&Group> =
        permutation(groups.len(), seed, &format!("train-rm-lora/groups/{epoch}"))
            .into_iter()
            .map(|i| &groups[i])
            .collect();
    let window = batch_size.max(1) * 50;
    let mut batches = Vec::new();
    for chunk in shuffled.chunks(window) {
        let mut sorted = chunk.to_vec();
        sorted.sort_by_key(|g| group_len(ex, g));
        batches.extend(pack(ex, &sorted, batch_size));
    }
    permutation(
        batches.len(),
        seed,
        &format!("train-rm-lora/batches/{epoch}"),
    )
    .into_iter()
    .map(|i| batches[i].clone())
    .collect()
}

/// Evaluation batches: every group once, sorted by length, no shuffling.
pub fn eval_batches(ex: &Examples, batch_size: usize) -> Vec<Batch> {
    let gs = groups(ex);
    let mut sorted: Vec<&Group> = gs.iter().collect();
    sorted.sort_by_key(|g| group_len(ex, g));
    pack(ex, &sorted, batch_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Pair, Rating, Seq};

    fn seq(len: usize, tag: i32) -> Seq {
        Seq {
            prompt: vec![1],
            response: vec![tag; len.saturating_sub(1)],
        }
    }

    fn ranking_data() -> Examples {
        // Group "g" ranks 4 responses A > B > C > D, expanded to C(4,2) = 6 pairs.
        let mut ex = Examples::default();
        let ids: Vec<usize> = (0..4).map(|k| ex.intern(seq(5, 10 + k))).collect();
        for a in 0..4 {
            for b in a + 1..4 {
                ex.pairs.push(Pair {
                    chosen: ids[a],
                    rejected: ids[b],
                    label: 1.0,
                    margin: 0.0,
                    weight: 1.0,
                    group: Some("g".into()),
                });
            }
        }
        // Two lone pairs and two ratings.
        for k in 0..2 {
            let c = ex.intern(seq(3 + 4 * k, 20 + k as i32));
            let r = ex.intern(seq(3, 30 + k as i32));
            ex.pairs.push(Pair {
                chosen: c,
                rejected: r,
                label: 0.5,
                margin: 0.0,
                weight: 1.0,
                group: None,
            });
        }
        for k in 0..2 {
            let s = ex.intern(seq(2, 40 + k));
            ex.ratings.push(Rating {
                seq: s,
                target: k as f32,
                weight: 1.0,
            });
        }
        ex
    }

    #[test]
    fn ranking_group_expands_to_all_pairs_in_one_batch() {
        let ex = ranking_data();
        let gs = groups(&ex);
        assert_eq!(gs.len(), 5);
        assert_eq!(gs[0], Group::Pairs(vec![0, 1, 2, 3, 4, 5]));
        // Batch size 2 < group size 6: the group still goes whole into one batch.
        for epoch in 0..3 {
            let batches = epoch_batches(&ex, &gs, 2, 7, epoch);
            let with_group: Vec<&Batch> = batches
                .iter()
                .filter(|b| b.pairs.iter().any(|p| p.2 < 6))
                .collect();
            assert_eq!(with_group.len(), 1);
            let b = with_group[0];
            // 4 distinct responses scored once, 6 pairs over them: (a, b) for a < b.
            assert_eq!(b.seqs.len(), 4);
            let mut got: Vec<(usize, usize)> = b
                .pairs
                .iter()
                .map(|&(c, r, _)| (b.seqs[c], b.seqs[r]))
                .collect();
            got.sort();
            assert_eq!(got, vec![(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]);
            // Every example appears exactly once per epoch.
            let pairs: usize = batches.iter().map(|b| b.pairs.len()).sum();
            let ratings: usize = batches.iter().map(|b| b.ratings.len()).sum();
            assert_eq!((pairs, ratings), (8, 2));
        }
    }

    #[test]
    fn chosen_and_rejected_share_a_batch_and_order_is_seeded() {
        let ex = ranking_data();
        let gs = groups(&ex);
        let a = epoch_batches(&ex, &gs, 3, 1, 0);
        assert_eq!(a, epoch_batches(&ex, &gs, 3, 1, 0));
        for b in &a {
            for &(c, r, p) in &b.pairs {
                assert_eq!(b.seqs[c], ex.pairs[p].chosen);
                assert_eq!(b.seqs[r], ex.pairs[p].rejected);
            }
            for &(s, r) in &b.ratings {
                assert_eq!(b.seqs[s], ex.ratings[r].seq);
            }
        }
        let orders: Vec<Vec<Batch>> = (0..6).map(|e| epoch_batches(&ex, &gs, 1, 1, e)).collect();
        assert!(orders.iter().any(|o| o != &orders[0]), "epochs reshuffle");
    }

    #[test]
    fn eval_batches_are_length_sorted_and_bootstrap_resamples() {
        let ex = ranking_data();
        let ev = eval_batches(&ex, 1);
        let lens: Vec<usize> = ev
            .iter()
            .map(|b| b.seqs.iter().map(|&s| ex.seqs[s].len()).max().unwrap())
            .collect();
        assert!(lens.windows(2).all(|w| w[0] <= w[1]), "{lens:?}");
        let gs = groups(&ex);
        let b0 = bootstrap(&gs, 3, 0);
        let b1 = bootstrap(&gs, 3, 1);
        assert_eq!(b0.len(), gs.len());
        assert_ne!(b0, b1);
        assert_eq!(b0, bootstrap(&gs, 3, 0));
        assert!(b0.iter().all(|g| gs.contains(g)));
    }
}
