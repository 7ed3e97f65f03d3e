//! The labelling board: who is shown which pair next, and what counts as answered. It is
//! the journal folded up (every restart rebuilds it from the journal alone) plus the leases
//! of pairs currently shown, which live in memory only.
//!
//! - A labeller is shown the first pair of the queue they have not answered that still
//!   needs labels: fewer than `--overlap` standing answers other than skips, counting the
//!   pairs shown right now to other labellers (leases, which lapse after [`LEASE`]).
//! - Each showing carries a fresh nonce. An answer must name the pair and the nonce of the
//!   labeller's current showing; a nonce is good for one answer, so a replayed or stale
//!   request (a second tab, a restart in between) is refused and nothing is counted twice.
//!   Asking again without answering shows the same pair with the same nonce.
//! - Undo takes back the labeller's latest standing answer; that pair is shown to them
//!   again first. Left and right are drawn per pair and labeller from `--seed`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rlhf_core::hash::unit_interval;

use crate::journal::{Choice, Record};

/// How long a shown pair stays reserved for its labeller (other labellers may then get it).
pub const LEASE: Duration = Duration::from_secs(30 * 60);

/// A pair of the queue: its key and its two rollout ids.
#[derive(Debug, Clone, PartialEq)]
pub struct PairRef {
    pub key: String,
    pub first: String,
    pub second: String,
}

/// A pair shown to a labeller.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub nonce: String,
    /// Index of the pair in the queue.
    pub pair: usize,
    pub labeller: String,
    /// True when the pair's first rollout is shown on the left.
    pub left_is_first: bool,
    pub issued: Instant,
}

/// Why an answer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such pair in the queue (404).
    UnknownPair,
    /// The nonce is not this labeller's current showing of this pair: replayed, stale, or
    /// from before a restart (409).
    Stale,
}

/// A labeller's progress.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Progress {
    /// This labeller's standing answers.
    pub done: usize,
    /// Pairs that may still be shown to this labeller.
    pub queued: usize,
    /// Pairs in the queue.
    pub pairs: usize,
    /// Pairs with `--overlap` standing answers (skips not counted).
    pub complete: usize,
    /// Standing answers of all labellers.
    pub answers: usize,
}

/// The state of a labelling session.
#[derive(Debug)]
pub struct Board {
    pairs: Vec<PairRef>,
    index: HashMap<String, usize>,
    overlap: usize,
    seed: u64,
    /// (pair, labeller) -> (seq, choice) of standing answers.
    standing: HashMap<(usize, String), (u64, Choice)>,
    /// Standing answers other than skips, per pair.
    counts: Vec<usize>,
    /// Per labeller: (seq, pair) of standing answers, oldest first.
    history: HashMap<String, Vec<(u64, usize)>>,
    /// Per labeller: pairs whose answer was taken back, latest last.
    undone: HashMap<String, Vec<usize>>,
    /// Nonce -> lease.
    leases: HashMap<String, Lease>,
}

impl Board {
    /// An empty board over the queue's pairs.
    pub fn new(pairs: Vec<PairRef>, overlap: usize, seed: u64) -> Board {
        let index = pairs
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key.clone(), i))
            .collect();
        let n = pairs.len();
        Board {
            pairs,
            index,
            overlap: overlap.max(1),
            seed,
            standing: HashMap::new(),
            counts: vec![0; n],
            history: HashMap::new(),
            undone: HashMap::new(),
            leases: HashMap::new(),
        }
    }

    /// The pair at a queue index.
    pub fn pair(&self, i: usize) -> &PairRef {
        &self.pairs[i]
    }

    /// The queue index of a pair key.
    pub fn index_of(&self, key: &str) -> Option<usize> {
        self.index.get(key).copied()
    }

    /// Folds one journal record in. `Err` says why the record cannot belong to this queue.
    pub fn apply(&mut self, record: &Record) -> Result<(), String> {
        match record {
            Record::Session(_) => Ok(()),
            Record::Answer(a) => {
                let i = self.index_of(&a.pair).ok_or_else(|| {
                    format!("answer about pair {}, which is not in the queue", a.pair)
                })?;
                let p = &self.pairs[i];
                let shown = [a.left.as_str(), a.right.as_str()];
                if shown != [p.first.as_str(), p.second.as_str()]
                    && shown != [p.second.as_str(), p.first.as_str()]
                {
                    return Err(format!(
                        "answer about pair {} shows rollouts {} and {}, expected {} and {}",
                        a.pair, a.left, a.right, p.first, p.second
                    ));
                }
                let key = (i, a.labeller.clone());
                if self.standing.contains_key(&key) {
                    return Err(format!(
                        "a second standing answer by {} about pair {}",
                        a.labeller, a.pair
                    ));
                }
                self.standing.insert(key, (a.seq, a.choice));
                if a.choice != Choice::Skip {
                    self.counts[i] += 1;
                }
                self.history
                    .entry(a.labeller.clone())
                    .or_default()
                    .push((a.seq, i));
                if let Some(u) = self.undone.get_mut(&a.labeller) {
                    u.retain(|&p| p != i);
                }
                self.leases
                    .retain(|_, l| !(l.pair == i && l.labeller == a.labeller));
                Ok(())
            }
            Record::Undo(u) => {
                let history = self.history.entry(u.labeller.clone()).or_default();
                let Some(pos) = history.iter().position(|&(seq, _)| seq == u.target) else {
                    return Err(format!(
                        "undo of record {} by {}, which is not a standing answer of theirs",
                        u.target, u.labeller
                    ));
                };
                let (_, i) = history.remove(pos);
                if let Some((_, choice)) = self.standing.remove(&(i, u.labeller.clone())) {
                    if choice != Choice::Skip {
                        self.counts[i] -= 1;
                    }
                }
                self.undone.entry(u.labeller.clone()).or_default().push(i);
                self.leases.retain(|_, l| l.labeller != u.labeller);
                Ok(())
            }
        }
    }

    /// `seq` of the labeller's latest standing answer.
    pub fn last_answer(&self, labeller: &str) -> Option<u64> {
        self.history
            .get(labeller)
            .and_then(|h| h.last())
            .map(|&(seq, _)| seq)
    }

    /// The pair key and choice of one of the labeller's standing answers.
    pub fn answer_at(&self, labeller: &str, seq: u64) -> Option<(String, Choice)> {
        let &(_, i) = self
            .history
            .get(labeller)?
            .iter()
            .find(|&&(s, _)| s == seq)?;
        let &(_, choice) = self.standing.get(&(i, labeller.to_string()))?;
        Some((self.pairs[i].key.clone(), choice))
    }

    fn left_is_first(&self, pair: usize, labeller: &str) -> bool {
        let key = format!(
            "label-pairs/side:{}:{}:{labeller}",
            self.seed, self.pairs[pair].key
        );
        unit_interval(&key) < 0.5
    }

    /// Live leases of labellers other than `labeller`, per pair.
    fn others_leases(&self, labeller: &str, now: Instant) -> HashMap<usize, usize> {
        let mut held = HashMap::new();
        for l in self.leases.values() {
            if l.labeller != labeller && now.saturating_duration_since(l.issued) < LEASE {
                *held.entry(l.pair).or_insert(0) += 1;
            }
        }
        held
    }

    fn open_for(&self, pair: usize, labeller: &str, held: &HashMap<usize, usize>) -> bool {
        !self.standing.contains_key(&(pair, labeller.to_string()))
            && self.counts[pair] + held.get(&pair).copied().unwrap_or(0) < self.overlap
    }

    /// The pair to show `labeller` now (see the module docs), or None when nothing is left
    /// for them. `nonce` makes a fresh nonce.
    pub fn next_for(
        &mut self,
        labeller: &str,
        now: Instant,
        nonce: impl FnOnce() -> String,
    ) -> Option<Lease> {
        if let Some(l) = self.leases.values_mut().find(|l| l.labeller == labeller) {
            l.issued = now;
            return Some(l.clone());
        }
        let held = self.others_leases(labeller, now);
        let again = self
            .undone
            .get(labeller)
            .and_then(|u| u.iter().rev().find(|&&p| self.open_for(p, labeller, &held)))
            .copied();
        let pair =
            again.or_else(|| (0..self.pairs.len()).find(|&p| self.open_for(p, labeller, &held)))?;
        let lease = Lease {
            nonce: nonce(),
            pair,
            labeller: labeller.to_string(),
            left_is_first: self.left_is_first(pair, labeller),
            issued: now,
        };
        self.leases.insert(lease.nonce.clone(), lease.clone());
        Some(lease)
    }

    /// The lease an answer by `labeller` about `pair_key` with `nonce` redeems.
    pub fn check_answer(
        &self,
        labeller: &str,
        pair_key: &str,
        nonce: &str,
    ) -> Result<&Lease, Refusal> {
        let i = self.index_of(pair_key).ok_or(Refusal::UnknownPair)?;
        match self.leases.get(nonce) {
            Some(l) if l.labeller == labeller && l.pair == i => Ok(l),
            _ => Err(Refusal::Stale),
        }
    }

    /// The labeller's progress.
    pub fn progress(&self, labeller: &str, now: Instant) -> Progress {
        let held = self.others_leases(labeller, now);
        Progress {
            done: self.history.get(labeller).map_or(0, Vec::len),
            queued: (0..self.pairs.len())
                .filter(|&p| self.open_for(p, labeller, &held))
                .count(),
            pairs: self.pairs.len(),
            complete: self.counts.iter().filter(|&&c| c >= self.overlap).count(),
            answers: self.standing.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Answer, Undo};

    fn board(n: usize, overlap: usize) -> Board {
        let pairs = (0..n)
            .map(|i| PairRef {
                key: format!("k{i}"),
                first: format!("a{i}"),
                second: format!("b{i}"),
            })
            .collect();
        Board::new(pairs, overlap, 0)
    }

    fn answer(b: &Board, seq: u64, lease: &Lease, choice: Choice) -> Record {
        let p = b.pair(lease.pair);
        Record::Answer(Answer {
            seq,
            labeller: lease.labeller.clone(),
            pair: p.key.clone(),
            left: p.first.clone(),
            right: p.second.clone(),
            choice,
            reason: None,
            nonce: lease.nonce.clone(),
        })
    }

    #[test]
    fn overlap_limits_how_many_labellers_see_a_pair() {
        let mut b = board(3, 2);
        let now = Instant::now();
        let mut n = 0;
        let mut nonce = || {
            n += 1;
            format!("n{n}")
        };
        let ann = b.next_for("ann", now, &mut nonce).unwrap();
        let bob = b.next_for("bob", now, &mut nonce).unwrap();
        let cid = b.next_for("cid", now, &mut nonce).unwrap();
        // ann and bob share pair 0 (overlap 2); cid gets pair 1.
        assert_eq!((ann.pair, bob.pair, cid.pair), (0, 0, 1));
        // Asking again shows the same pair with the same nonce.
        assert_eq!(b.next_for("ann", now, &mut nonce).unwrap(), ann);
        b.apply(&answer(&b, 1, &ann, Choice::Left)).unwrap();
        assert_eq!(b.check_answer("ann", "k0", &ann.nonce), Err(Refusal::Stale));
        assert_eq!(b.check_answer("bob", "k0", &bob.nonce), Ok(&bob));
        assert_eq!(
            b.check_answer("bob", "k9", &bob.nonce),
            Err(Refusal::UnknownPair)
        );
        assert_eq!(b.check_answer("ann", "k0", &bob.nonce), Err(Refusal::Stale));
        assert!(b.apply(&answer(&b, 2, &ann, Choice::Left)).is_err());
        let p = b.progress("ann", now);
        assert_eq!((p.done, p.queued, p.complete, p.answers), (1, 2, 0, 1));
        // A lapsed lease frees its slot.
        let later = now + LEASE + Duration::from_secs(1);
        assert_eq!(b.next_for("dan", later, &mut nonce).unwrap().pair, 0);
    }

    #[test]
    fn skips_do_not_fill_a_pair_and_undo_shows_the_pair_again() {
        let mut b = board(3, 1);
        let now = Instant::now();
        let mut n = 0;
        let mut nonce = || {
            n += 1;
            format!("n{n}")
        };
        let l0 = b.next_for("ann", now, &mut nonce).unwrap();
        b.apply(&answer(&b, 1, &l0, Choice::Skip)).unwrap();
        // bob may still get pair 0: ann's skip does not count.
        assert_eq!(b.next_for("bob", now, &mut nonce).unwrap().pair, 0);
        let l1 = b.next_for("ann", now, &mut nonce).unwrap();
        assert_eq!(l1.pair, 1);
        b.apply(&answer(&b, 2, &l1, Choice::Right)).unwrap();
        assert_eq!(b.last_answer("ann"), Some(2));
        b.apply(&Record::Undo(Undo {
            seq: 3,
            labeller: "ann".into(),
            target: 2,
        }))
        .unwrap();
        assert_eq!(b.next_for("ann", now, &mut nonce).unwrap().pair, 1);
        assert_eq!(b.last_answer("ann"), Some(1));
        let bad = Record::Undo(Undo {
            seq: 4,
            labeller: "bob".into(),
            target: 1,
        });
        assert!(b.apply(&bad).is_err());
    }
}
