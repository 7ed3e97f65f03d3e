//! Inter-annotator agreement: Cohen's kappa between two labellers on the pairs both
//! answered, `kappa = (p_o - p_e) / (1 - p_e)` with `p_o` the share of pairs on which
//! they gave the same judgement and `p_e` the share expected by chance from each one's
//! own frequencies (Cohen 1960). Judgements are oriented by the pair (first/second response
//! by rollout id), not by the side each person saw them on.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// One labeller's judgement of a pair, independent of the side shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Judgement {
    FirstBetter,
    SecondBetter,
    Equal,
    CantTell,
}

/// Cohen's kappa of paired judgements; None when there are none or when chance agreement
/// is certain (both always gave the same single judgement), where kappa is undefined.
pub fn cohen_kappa(items: &[(Judgement, Judgement)]) -> Option<f64> {
    if items.is_empty() {
        return None;
    }
    let n = items.len() as f64;
    let agree = items.iter().filter(|(a, b)| a == b).count() as f64 / n;
    let mut a_counts: BTreeMap<Judgement, f64> = BTreeMap::new();
    let mut b_counts: BTreeMap<Judgement, f64> = BTreeMap::new();
    for (a, b) in items {
        *a_counts.entry(*a).or_default() += 1.0;
        *b_counts.entry(*b).or_default() += 1.0;
    }
    let chance: f64 = a_counts
        .iter()
        .map(|(j, ca)| ca / n * b_counts.get(j).copied().unwrap_or(0.0) / n)
        .sum();
    if 1.0 - chance < 1e-12 {
        return None;
    }
    Some((agree - chance) / (1.0 - chance))
}

/// Agreement of two labellers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairAgreement {
    pub labellers: [String; 2],
    /// Pairs both answered (skips excluded).
    pub pairs: usize,
    /// Share of those with the same judgement.
    pub agreement: f64,
    /// Cohen's kappa (null when undefined).
    pub kappa: Option<f64>,
}

/// Agreement between every two labellers who answered a pair in common, in name order.
/// `answers` holds (labeller, pair key, judgement), at most one per labeller and pair.
pub fn pairwise(answers: &[(String, String, Judgement)]) -> Vec<PairAgreement> {
    let mut by_labeller: BTreeMap<&str, BTreeMap<&str, Judgement>> = BTreeMap::new();
    for (l, p, j) in answers {
        by_labeller.entry(l).or_default().insert(p, *j);
    }
    let names: BTreeSet<&str> = by_labeller.keys().copied().collect();
    let names: Vec<&str> = names.into_iter().collect();
    let mut out = Vec::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let (ja, jb) = (&by_labeller[a], &by_labeller[b]);
            let items: Vec<(Judgement, Judgement)> = ja
                .iter()
                .filter_map(|(p, x)| jb.get(p).map(|y| (*x, *y)))
                .collect();
            if items.is_empty() {
                continue;
            }
            let same = items.iter().filter(|(x, y)| x == y).count();
            out.push(PairAgreement {
                labellers: [a.to_string(), b.to_string()],
                pairs: items.len(),
                agreement: same as f64 / items.len() as f64,
                kappa: cohen_kappa(&items),
            });
        }
    }
    out
}

/// The mean of the defined kappas, weighted by their pairs (Cohen's kappa itself for two
/// labellers).
pub fn mean_kappa(agreements: &[PairAgreement]) -> Option<f64> {
    let (sum, n) = agreements
        .iter()
        .filter_map(|a| a.kappa.map(|k| (k * a.pairs as f64, a.pairs as f64)))
        .fold((0.0, 0.0), |(s, n), (k, w)| (s + k, n + w));
    (n > 0.0).then(|| sum / n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Judgement::*;

    /// The textbook 2x2 table: 20 both first, 5 first/second, 10 second/first, 15 both
    /// second: p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.4.
    #[test]
    fn kappa_of_the_textbook_table() {
        let mut items = Vec::new();
        items.extend(std::iter::repeat_n((FirstBetter, FirstBetter), 20));
        items.extend(std::iter::repeat_n((FirstBetter, SecondBetter), 5));
        items.extend(std::iter::repeat_n((SecondBetter, FirstBetter), 10));
        items.extend(std::iter::repeat_n((SecondBetter, SecondBetter), 15));
        let k = cohen_kappa(&items).unwrap();
        assert!((k - 0.4).abs() < 1e-12, "{k}");
    }

    #[test]
    fn perfect_chance_and_undefined() {
        let perfect = [
            (FirstBetter, FirstBetter),
            (SecondBetter, SecondBetter),
            (Equal, Equal),
        ];
        assert_eq!(cohen_kappa(&perfect), Some(1.0));
        let opposite = [(FirstBetter, SecondBetter), (SecondBetter, FirstBetter)];
        assert_eq!(cohen_kappa(&opposite), Some(-1.0));
        assert_eq!(
            cohen_kappa(&[(CantTell, CantTell), (CantTell, CantTell)]),
            None
        );
        assert_eq!(cohen_kappa(&[]), None);
    }

    #[test]
    fn pairwise_uses_shared_pairs_only() {
        let a = |l: &str, p: &str, j| (l.to_string(), p.to_string(), j);
        let answers = vec![
            a("bob", "p1", FirstBetter),
            a("ann", "p1", FirstBetter),
            a("ann", "p2", SecondBetter),
            a("bob", "p2", FirstBetter),
            a("ann", "p3", Equal),
            a("cid", "p9", Equal),
        ];
        let got = pairwise(&answers);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labellers, ["ann".to_string(), "bob".to_string()]);
        assert_eq!((got[0].pairs, got[0].agreement), (2, 0.5));
        // ann: F, S; bob: F, F -> p_o 0.5, p_e 0.5 * 1 = 0.5 -> kappa 0.
        assert_eq!(got[0].kappa, Some(0.0));
        assert_eq!(mean_kappa(&got), Some(0.0));
    }
}
