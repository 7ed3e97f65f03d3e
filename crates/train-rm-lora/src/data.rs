//! Training data: preference pairs and ratings read from their artifacts, checked row by
//! row, tokenized with the model's tokenizer (or their stored tokens when the file's
//! tokenizer is the model's), truncated to --max-seq-len, split into train and eval, and
//! interned so that a response shared by several pairs (a ranking group) is one sequence.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rlhf_core::error::CoreError;
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::{read_records, Dataset};
use rlhf_core::records::{PreferenceRow, RatingRow, RolloutRow};
use rlhf_core::schema::Artifact;
use rlhf_core::tokenizer::Tokenizer;

use crate::args::GroupWeighting;

/// A prompt and a response, as token ids.
pub use rlhf_nn::batch::PromptResponse as Seq;

/// One preference pair; `chosen`/`rejected` index `Examples::seqs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub chosen: usize,
    pub rejected: usize,
    /// P(chosen preferred): 1.0, 0.5 for a tie.
    pub label: f32,
    /// The `margin` column (0 when null).
    pub margin: f32,
    /// Loss weight after group weighting.
    pub weight: f32,
    /// Ranking group (pairs of one group are batched together); None = its own group.
    pub group: Option<String>,
}

/// One rated response.
#[derive(Debug, Clone, PartialEq)]
pub struct Rating {
    pub seq: usize,
    /// Target in [0, 1].
    pub target: f32,
    pub weight: f32,
}

/// Interned sequences with the pairs and ratings over them (one split).
#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub seqs: Vec<Seq>,
    pub pairs: Vec<Pair>,
    pub ratings: Vec<Rating>,
    index: HashMap<Seq, usize>,
}

impl Examples {
    /// The index of a sequence, adding it when new.
    pub fn intern(&mut self, seq: Seq) -> usize {
        if let Some(&i) = self.index.get(&seq) {
            return i;
        }
        let i = self.seqs.len();
        self.index.insert(seq.clone(), i);
        self.seqs.push(seq);
        i
    }

    /// True when there is nothing to train or evaluate on.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && self.ratings.is_empty()
    }

    /// Divides each pair's weight by the size of its ranking group.
    pub fn apply_group_weighting(&mut self, mode: GroupWeighting) {
        if mode == GroupWeighting::PerPair {
            return;
        }
        let mut sizes: HashMap<String, usize> = HashMap::new();
        for p in &self.pairs {
            if let Some(g) = &p.group {
                *sizes.entry(g.clone()).or_default() += 1;
            }
        }
        for p in &mut self.pairs {
            if let Some(n) = p.group.as_ref().and_then(|g| sizes.get(g)) {
                p.weight /= *n as f32;
            }
        }
    }
}

/// Everything the trainer reads, split.
#[derive(Debug, Clone, Default)]
pub struct TrainData {
    pub train: Examples,
    pub eval: Examples,
    /// Sequences cut to --max-seq-len.
    pub truncated: usize,
}

/// Tokenizes and truncates with the model's tokenizer.
pub struct Encoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub max_seq_len: usize,
    pub truncated: usize,
}

impl Encoder<'_> {
    /// Token ids of a prompt and response (stored tokens when given and trusted), cut to
    /// `max_seq_len`: prompt tokens go from the left first, then response tokens from the right.
    pub fn seq(
        &mut self,
        prompt: &str,
        response: &str,
        stored: Option<(&Vec<i32>, &Vec<i32>)>,
    ) -> Result<Seq> {
        let (mut p, mut r) = match stored {
            Some((p, r)) => (p.clone(), r.clone()),
            None => (
                self.tokenizer.encode(prompt, true)?,
                self.tokenizer.encode(response, false)?,
            ),
        };
        if p.len() + r.len() > self.max_seq_len {
            self.truncated += 1;
            let keep_prompt = self.max_seq_len.saturating_sub(r.len());
            if p.len() > keep_prompt {
                p.drain(..p.len() - keep_prompt);
            }
            r.truncate(self.max_seq_len - p.len());
        }
        Ok(Seq {
            prompt: p,
            response: r,
        })
    }
}

fn bad(path: &Path, row: usize, message: String) -> anyhow::Error {
    CoreError::BadInput {
        path: path.to_path_buf(),
        row: Some(row),
        message,
    }
    .into()
}

fn check_unit(path: &Path, row: usize, column: &str, v: f32, hint: &str) -> Result<()> {
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        return Err(bad(
            path,
            row,
            format!("column `{column}` is {v}, expected a number in [0, 1]; {hint}"),
        ));
    }
    Ok(())
}

fn check_weight(path: &Path, row: usize, w: f32) -> Result<()> {
    if !w.is_finite() || w < 0.0 {
        return Err(bad(
            path,
            row,
            format!("column `weight` is {w}, expected a finite number >= 0"),
        ));
    }
    Ok(())
}

fn split_of<'e>(
    data: &'e mut TrainData,
    path: &Path,
    row: usize,
    split: &str,
) -> Result<&'e mut Examples> {
    match split {
        "train" => Ok(&mut data.train),
        "eval" => Ok(&mut data.eval),
        other => Err(bad(
            path,
            row,
            format!("column `split` is {other:?}, expected \"train\" or \"eval\""),
        )),
    }
}

/// Opens a dataset and refuses it when its recorded tokenizer differs from the model's.
/// Returns the dataset and whether its stored token columns can be used.
pub fn open_checked(
    spec: &Path,
    artifact: Artifact,
    tokenizer: &Tokenizer,
    model_dir: &Path,
) -> Result<(Dataset, bool)> {
    let ds = Dataset::open(spec, artifact)
        .with_context(|| format!("opening {} as {}", spec.display(), artifact.name()))?;
    let data_hash = ds.tokenizer_hash()?;
    Lineage::check_tokenizer(
        &format!("{} (lineage tokenizer_hash)", spec.display()),
        data_hash.as_deref(),
        &format!("model {} (tokenizer.json)", model_dir.display()),
        tokenizer.hash(),
    )?;
    Ok((ds, data_hash.is_some()))
}

/// Reads preferences into `data`.
pub fn load_preferences(
    spec: &Path,
    enc: &mut Encoder,
    model_dir: &Path,
    data: &mut TrainData,
) -> Result<usize> {
    let (ds, trusted) = open_checked(spec, Artifact::Preferences, enc.tokenizer, model_dir)?;
    let mut count = 0;
    for file in &ds.files {
        let (rows, _) = read_records::<PreferenceRow>(file)?;
        for (i, row) in rows.into_iter().enumerate() {
            check_unit(
                file,
                i,
                "label",
                row.label,
                "label is P(chosen preferred), 0.5 for a tie",
            )?;
            check_weight(file, i, row.weight)?;
            let margin = row.margin.unwrap_or(0.0);
            if !margin.is_finite() {
                return Err(bad(
                    file,
                    i,
                    format!("column `margin` is {margin}, expected a finite number or null"),
                ));
            }
            let pt = row.prompt_tokens.as_ref().filter(|_| trusted);
            let ct = row.chosen_tokens.as_ref().filter(|_| trusted);
            let rt = row.rejected_tokens.as_ref().filter(|_| trusted);
            let chosen = enc.seq(&row.prompt, &row.chosen, pt.zip(ct))?;
            let rejected = enc.seq(&row.prompt, &row.rejected, pt.zip(rt))?;
            if chosen.is_empty() || rejected.is_empty() {
                return Err(bad(
                    file,
                    i,
                    "prompt and response are both empty: nothing to score".into(),
                ));
            }
            let ex = split_of(data, file, i, &row.split)?;
            let (c, r) = (ex.intern(chosen), ex.intern(rejected));
            ex.pairs.push(Pair {
                chosen: c,
                rejected: r,
                label: row.label,
                margin,
                weight: row.weight,
                group: row.group_id,
            });
            count += 1;
        }
    }
    Ok(count)
}

/// Reads ratings into `data`.
pub fn load_ratings(
    spec: &Path,
    enc: &mut Encoder,
    model_dir: &Path,
    data: &mut TrainData,
) -> Result<usize> {
    let (ds, trusted) = open_checked(spec, Artifact::Ratings, enc.tokenizer, model_dir)?;
    let mut count = 0;
    for file in &ds.files {
        let (rows, _) = read_records::<RatingRow>(file)?;
        for (i, row) in rows.into_iter().enumerate() {
            check_unit(
                file,
                i,
                "rating",
                row.rating,
                "binary cross-entropy needs thumbs (0/1) or a probability; rescale scalar ratings in prep-data",
            )?;
            let stored = match (&row.prompt_tokens, &row.response_tokens) {
                (Some(p), Some(r)) if trusted => Some((p, r)),
                _ => None,
            };
            let seq = enc.seq(&row.prompt, &row.response, stored)?;
            if seq.is_empty() {
                return Err(bad(
                    file,
                    i,
                    "prompt and response are both empty: nothing to score".into(),
                ));
            }
            let ex = split_of(data, file, i, &row.split)?;
            let s = ex.intern(seq);
            ex.ratings.push(Rating {
                seq: s,
                target: row.rating,
                weight: 1.0,
            });
            count += 1;
        }
    }
    Ok(count)
}

/// The reference sequences for reward normalisation from a given file: chosen responses
/// of a preferences file, responses of a ratings or rollouts file.
pub fn load_reference(spec: &Path, enc: &mut Encoder, model_dir: &Path) -> Result<Vec<Seq>> {
    let mut out = Vec::new();
    for artifact in [Artifact::Preferences, Artifact::Ratings, Artifact::Rollouts] {
        if Dataset::open(spec, artifact).is_err() {
            continue;
        }
        let (ds, trusted) = open_checked(spec, artifact, enc.tokenizer, model_dir)?;
        for file in &ds.files {
            match artifact {
                Artifact::Preferences => {
                    for row in read_records::<PreferenceRow>(file)?.0 {
                        out.push(enc.seq(&row.prompt, &row.chosen, None)?);
                    }
                }
                Artifact::Ratings => {
                    for row in read_records::<RatingRow>(file)?.0 {
                        out.push(enc.seq(&row.prompt, &row.response, None)?);
                    }
                }
                _ => {
                    for row in read_records::<RolloutRow>(file)?.0 {
                        let stored = trusted.then_some((&row.prompt_tokens, &row.response_tokens));
                        out.push(enc.seq(&row.prompt, &row.response, stored)?);
                    }
                }
            }
        }
        out.retain(|s| !s.is_empty());
        if out.is_empty() {
            return Err(CoreError::BadInput {
                path: spec.to_path_buf(),
                row: None,
                message: "the normalisation reference set has no rows".into(),
            }
            .into());
        }
        return Ok(out);
    }
    Err(CoreError::BadInput {
        path: PathBuf::from(spec),
        row: None,
        message: "--normalize-with must be a preferences, ratings or rollouts artifact".into(),
    }
    .into())
}

/// The default reference set: chosen responses of the eval pairs, else of all pairs,
/// else the rated responses.
pub fn default_reference(data: &TrainData) -> (Vec<Seq>, &'static str) {
    let chosen = |ex: &Examples| -> Vec<Seq> {
        let mut ids: Vec<usize> = ex.pairs.iter().map(|p| p.chosen).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter().map(|i| ex.seqs[i].clone()).collect()
    };
    let eval = chosen(&data.eval);
    if !eval.is_empty() {
        return (eval, "eval chosen responses");
    }
    let mut all = chosen(&data.train);
    if !all.is_empty() {
        return (all, "train chosen responses (no eval pairs)");
    }
    for ex in [&data.eval, &data.train] {
        all.extend(ex.ratings.iter().map(|r| ex.seqs[r.seq].clone()));
    }
    (all, "rated responses (no pairs)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_and_group_weighting() {
        let mut ex = Examples::default();
        let s = |r: i32| Seq {
            prompt: vec![1, 2],
            response: vec![r],
        };
        let a = ex.intern(s(5));
        let b = ex.intern(s(6));
        assert_eq!(ex.intern(s(5)), a);
        assert_eq!(ex.seqs.len(), 2);
        for (g, w) in [
            (Some("g"), 1.0),
            (Some("g"), 1.0),
            (Some("g"), 3.0),
            (None, 2.0),
        ] {
            ex.pairs.push(Pair {
                chosen: a,
                rejected: b,
                label: 1.0,
                margin: 0.0,
                weight: w,
                group: g.map(String::from),
            });
        }
        ex.apply_group_weighting(GroupWeighting::PerGroup);
        let w: Vec<f32> = ex.pairs.iter().map(|p| p.weight).collect();
        assert_eq!(w, vec![1.0 / 3.0, 1.0 / 3.0, 1.0, 2.0]);
    }
}
