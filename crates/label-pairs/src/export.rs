//! `label-pairs export`: the standing answers of a labelling folder as a preferences file
//! (see the subcommand's `--help` for the rows and columns), with per-labeller counts and
//! Cohen's kappa between labellers.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rlhf_core::hash::{content_id, split_salted};
use rlhf_core::lineage::{InputRef, Lineage};
use rlhf_core::parquet_io::{row_group_size, ArtifactWriter};
use rlhf_core::records::{PreferenceRow, Record as _, RolloutRow};
use rlhf_core::schema::Artifact;
use rlhf_core::summary::StageSummary;
use serde::Serialize;

use crate::agreement::{self, Judgement, PairAgreement};
use crate::args::ExportArgs;
use crate::error::LabelError;
use crate::journal::{self, Answer, Choice, Record};
use crate::serve::{input_file, read_rollouts, require_input};

/// Value of the `source` column.
pub const SOURCE: &str = "human:label-pairs";

/// The extra nullable columns after the preferences' own, with their descriptions.
pub const EXTRA_COLUMNS: [(&str, &str); 5] = [
    ("labeller", "Who answered (the page's labeller= name)."),
    ("reason", "The labeller's free-text reason, when given."),
    ("chosen_rollout_id", "Rollout id of `chosen`."),
    ("rejected_rollout_id", "Rollout id of `rejected`."),
    (
        "chosen_side",
        "Where `chosen` was shown: left or right (null for equal).",
    ),
];

/// The schema of an exported file: the preferences columns, then [`EXTRA_COLUMNS`].
pub fn schema() -> SchemaRef {
    let mut fields: Vec<Field> = Artifact::Preferences
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    for (name, doc) in EXTRA_COLUMNS {
        fields.push(
            Field::new(name, DataType::Utf8, true).with_metadata(HashMap::from([(
                "description".to_string(),
                doc.to_string(),
            )])),
        );
    }
    Arc::new(Schema::new(fields))
}

/// One labeller's answers by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LabellerCounts {
    pub left: u64,
    pub right: u64,
    pub equal: u64,
    pub cant_tell: u64,
    pub skip: u64,
    /// Answers taken back with undo (not exported).
    pub undone: u64,
    /// Rows written (left, right and equal answers).
    pub exported: u64,
}

/// What an export found and wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExportReport {
    pub rows: usize,
    /// Standing answers (not undone).
    pub answers: usize,
    pub clear: usize,
    pub equal: usize,
    pub cant_tell: usize,
    pub skip: usize,
    pub undone: usize,
    pub labellers: BTreeMap<String, LabellerCounts>,
    pub agreement: Vec<PairAgreement>,
    /// Mean pairwise Cohen's kappa, weighted by shared pairs (null when none is defined).
    pub kappa: Option<f64>,
}

impl ExportReport {
    /// Human lines for stderr.
    pub fn lines(&self, out: &Path) -> Vec<String> {
        let mut lines = vec![format!(
            "{} preference rows written to {} ({} clear, {} equal) from {} standing answers; \
             left out: {} can't tell, {} skips; {} answers undone",
            self.rows,
            out.display(),
            self.clear,
            self.equal,
            self.answers,
            self.cant_tell,
            self.skip,
            self.undone
        )];
        for (name, c) in &self.labellers {
            lines.push(format!(
                "  {name}: {} exported (left {}, right {}, equal {}), can't tell {}, skip {}, undone {}",
                c.exported, c.left, c.right, c.equal, c.cant_tell, c.skip, c.undone
            ));
        }
        for a in &self.agreement {
            let kappa = a.kappa.map_or("undefined (no variation)".to_string(), |k| {
                format!("{k:.3}")
            });
            lines.push(format!(
                "  agreement {} vs {}: {} pairs in common, {:.1}% the same, Cohen's kappa {kappa}",
                a.labellers[0],
                a.labellers[1],
                a.pairs,
                100.0 * a.agreement
            ));
        }
        if self.agreement.is_empty() {
            lines.push(
                "  agreement: no pair answered by two labellers (serve with --overlap 2 or more)"
                    .into(),
            );
        }
        lines
    }

    /// The run summary (`--summary-json`).
    pub fn summary(&self, out: &Path) -> StageSummary {
        let mut s = StageSummary::new("label-pairs", env!("CARGO_PKG_VERSION"))
            .output(out, Some(self.rows as u64))
            .metric("rows", self.rows as f64)
            .metric("answers", self.answers as f64)
            .metric("cant_tell", self.cant_tell as f64)
            .metric("skip", self.skip as f64)
            .metric("undone", self.undone as f64);
        if let Some(k) = self.kappa {
            s = s.metric("kappa", k);
        }
        s.details(self)
    }
}

fn row_strings(values: &[Option<String>]) -> ArrayRef {
    Arc::new(StringArray::from(
        values.iter().map(Option::as_deref).collect::<Vec<_>>(),
    ))
}

/// Runs the export.
pub fn run(args: &ExportArgs) -> anyhow::Result<ExportReport> {
    if !(0.0..=1.0).contains(&args.eval_fraction) {
        return Err(LabelError::flag(format!(
            "--eval-fraction {} must be in [0, 1]",
            args.eval_fraction
        ))
        .into());
    }
    require_input("--in", &args.input)?;
    let journal_path = journal::journal_path(&args.input);
    let records = journal::read(&args.input)?;
    let Some(Record::Session(session)) = records.first() else {
        return Err(LabelError::input(&journal_path, Some(1), "no session record").into());
    };
    let rollouts_path: PathBuf = match &args.rollouts {
        Some(p) => p.clone(),
        None => {
            let absolute = PathBuf::from(&session.rollouts.absolute);
            if absolute.exists() {
                absolute
            } else {
                PathBuf::from(&session.rollouts.path)
            }
        }
    };
    rlhf_core::paths::check_outputs(
        &[("--out", &args.out)],
        &[("--in", &args.input), ("--rollouts", &rollouts_path)],
    )
    .map_err(|e| LabelError::flag(e.to_string()))?;
    require_input("--rollouts", &rollouts_path)?;
    let found = input_file(&rollouts_path)?;
    if found.blake3 != session.rollouts.blake3 {
        return Err(LabelError::input(
            &rollouts_path,
            None,
            format!(
                "not the rollouts that were labelled: blake3 {}, the journal records {} ({})\n  \
                 hint: pass the labelled file with --rollouts",
                found.blake3, session.rollouts.blake3, session.rollouts.path
            ),
        )
        .into());
    }
    let standing = journal::standing(&records)
        .map_err(|(line, m)| LabelError::input(&journal_path, Some(line), m))?;
    let (rows, ds) = read_rollouts(&rollouts_path)?;
    let by_id: HashMap<&str, &RolloutRow> =
        rows.iter().map(|r| (r.rollout_id.as_str(), r)).collect();

    let mut report = ExportReport {
        answers: standing.answers.len(),
        undone: standing.undone.len(),
        ..ExportReport::default()
    };
    for a in &standing.undone {
        report
            .labellers
            .entry(a.labeller.clone())
            .or_default()
            .undone += 1;
    }
    let mut prefs: Vec<PreferenceRow> = Vec::new();
    let mut extras: [Vec<Option<String>>; 5] = Default::default();
    let mut judgements: Vec<(String, String, Judgement)> = Vec::new();
    for a in &standing.answers {
        let row_of = |id: &str| {
            by_id.get(id).copied().ok_or_else(|| {
                LabelError::input(
                    &journal_path,
                    Some(a.seq as usize + 1),
                    format!(
                        "answer about rollout {id}, which is not in {}",
                        rollouts_path.display()
                    ),
                )
            })
        };
        let (left, right) = (row_of(&a.left)?, row_of(&a.right)?);
        let counts = report.labellers.entry(a.labeller.clone()).or_default();
        let (first, second) = if left.rollout_id <= right.rollout_id {
            (left, right)
        } else {
            (right, left)
        };
        let judgement = match a.choice {
            Choice::Left | Choice::Right => {
                let winner = if a.choice == Choice::Left {
                    left
                } else {
                    right
                };
                if winner.rollout_id == first.rollout_id {
                    Some(Judgement::FirstBetter)
                } else {
                    Some(Judgement::SecondBetter)
                }
            }
            Choice::Equal => Some(Judgement::Equal),
            Choice::CantTell => Some(Judgement::CantTell),
            Choice::Skip => None,
        };
        if let Some(j) = judgement {
            judgements.push((a.labeller.clone(), a.pair.clone(), j));
        }
        let (chosen, rejected, label, side) = match a.choice {
            Choice::Left => {
                counts.left += 1;
                (left, right, 1.0, Some("left"))
            }
            Choice::Right => {
                counts.right += 1;
                (right, left, 1.0, Some("right"))
            }
            Choice::Equal => {
                counts.equal += 1;
                (first, second, 0.5, None)
            }
            Choice::CantTell => {
                counts.cant_tell += 1;
                report.cant_tell += 1;
                continue;
            }
            Choice::Skip => {
                counts.skip += 1;
                report.skip += 1;
                continue;
            }
        };
        counts.exported += 1;
        if label == 1.0 {
            report.clear += 1;
        } else {
            report.equal += 1;
        }
        prefs.push(preference(a, chosen, rejected, label, args.eval_fraction));
        let extra = [
            Some(a.labeller.clone()),
            a.reason.clone(),
            Some(chosen.rollout_id.clone()),
            Some(rejected.rollout_id.clone()),
            side.map(str::to_string),
        ];
        for (col, v) in extras.iter_mut().zip(extra) {
            col.push(v);
        }
    }
    report.agreement = agreement::pairwise(&judgements);
    report.kappa = agreement::mean_kappa(&report.agreement);
    report.rows = prefs.len();
    if prefs.is_empty() {
        return Err(LabelError::input(
            &journal_path,
            None,
            format!(
                "nothing to export: {} standing answers ({} can't tell, {} skips, {} undone)",
                report.answers, report.cant_tell, report.skip, report.undone
            ),
        )
        .into());
    }

    let mut lineage = Lineage::new(
        "label-pairs",
        env!("CARGO_PKG_VERSION"),
        Artifact::Preferences,
    )
    .with_tokenizer(ds.tokenizer_hash()?);
    lineage.inputs.push(InputRef {
        role: "rollouts".into(),
        path: rollouts_path.display().to_string(),
        blake3: found.blake3,
    });
    lineage.add_input("journal", &journal_path)?;
    for (k, v) in [
        ("answers", report.answers),
        ("undone", report.undone),
        ("cant_tell", report.cant_tell),
        ("skip", report.skip),
    ] {
        lineage.extra.insert(k.into(), serde_json::json!(v));
    }
    lineage
        .extra
        .insert("kappa".into(), serde_json::json!(report.kappa));
    write(&args.out, &prefs, &extras, &lineage)?;
    Ok(report)
}

fn preference(
    a: &Answer,
    chosen: &RolloutRow,
    rejected: &RolloutRow,
    label: f32,
    eval_fraction: f64,
) -> PreferenceRow {
    PreferenceRow {
        pair_id: content_id(&[&chosen.prompt, &chosen.response, &rejected.response]),
        prompt_id: chosen.prompt_id.clone(),
        group_id: Some(a.pair.clone()),
        prompt: chosen.prompt.clone(),
        chosen: chosen.response.clone(),
        rejected: rejected.response.clone(),
        label,
        margin: None,
        weight: 1.0,
        split: split_salted(&chosen.prompt_id, "pairs", eval_fraction).to_string(),
        source: SOURCE.to_string(),
        prompt_tokens: Some(chosen.prompt_tokens.clone()),
        chosen_tokens: Some(chosen.response_tokens.clone()),
        rejected_tokens: Some(rejected.response_tokens.clone()),
    }
}

fn write(
    out: &Path,
    prefs: &[PreferenceRow],
    extras: &[Vec<Option<String>>; 5],
    lineage: &Lineage,
) -> anyhow::Result<usize> {
    let schema = schema();
    let mut w = ArtifactWriter::create(out, Artifact::Preferences, schema.clone(), lineage)?;
    let step = row_group_size(Artifact::Preferences);
    for start in (0..prefs.len()).step_by(step) {
        let end = (start + step).min(prefs.len());
        let base = PreferenceRow::to_batch(&prefs[start..end])?;
        let mut cols: Vec<ArrayRef> = base.columns().to_vec();
        cols.extend(extras.iter().map(|c| row_strings(&c[start..end])));
        let batch = RecordBatch::try_new(schema.clone(), cols)?;
        w.write(&batch)?;
    }
    Ok(w.finish()?)
}
