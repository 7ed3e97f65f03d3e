//! `prep-data split`: copies the rows of one split (train or eval) of an artifact file
//! (prompts, preferences, ratings or sft) into a new file of the same schema.

use std::path::PathBuf;

use arrow::array::{AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use clap::Args;
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::{read_lineage, resolve_inputs, ArtifactWriter, Dataset};
use rlhf_core::schema::Artifact;

use crate::error::PrepError;
use crate::reject::Summary;

/// Flags of `prep-data split`.
#[derive(Debug, Clone, Args)]
pub struct SplitArgs {
    /// Artifact file (or folder of part files) with a `split` column.
    #[arg(long)]
    pub input: PathBuf,
    /// The split to keep (train or eval).
    #[arg(long)]
    pub split: String,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
    /// Write an empty file instead of failing when no row has the split.
    #[arg(long)]
    pub allow_empty: bool,
}

/// Copies one split.
pub fn run(args: &SplitArgs) -> anyhow::Result<Summary> {
    rlhf_core::paths::check_outputs(&[("--out", &args.out)], &[("--input", &args.input)])
        .map_err(|e| crate::error::PrepError::Flag(e.to_string()))?;
    crate::error::require_input(&args.input)?;
    let files = resolve_inputs(&args.input)?;
    let first = read_lineage(&files[0])?;
    let artifact = first
        .as_ref()
        .and_then(|l| Artifact::from_name(&l.schema))
        .filter(|a| matches!(a, Artifact::Prompts | Artifact::Preferences | Artifact::Ratings | Artifact::Sft))
        .ok_or_else(|| {
            PrepError::input(&files[0], None, "not a prompts, preferences, ratings or sft file written by this project (no lineage)")
        })?;
    let ds = Dataset::open(&args.input, artifact)?;
    let mut lineage = Lineage::new("prep-data", env!("CARGO_PKG_VERSION"), artifact)
        .with_tokenizer(ds.tokenizer_hash()?);
    lineage.add_input("input", &args.input)?;
    let mut writer: Option<ArtifactWriter> = None;
    let mut summary = Summary::default();
    for item in ds.batches() {
        let (path, batch) = item?;
        summary.rows_read += batch.num_rows() as u64;
        let col = batch
            .column_by_name("split")
            .ok_or_else(|| PrepError::input(&path, None, "no `split` column"))?
            .as_string::<i32>();
        let mask: BooleanArray = col
            .iter()
            .map(|s| Some(s == Some(args.split.as_str())))
            .collect();
        let kept = filter_record_batch(&batch, &mask)?;
        let w = match writer.as_mut() {
            Some(w) => w,
            None => writer.insert(ArtifactWriter::create(
                &args.out,
                artifact,
                batch.schema(),
                &lineage,
            )?),
        };
        w.write(&kept)?;
    }
    let n = match writer {
        Some(w) => w.finish()?,
        None => 0,
    };
    if n == 0 && !args.allow_empty {
        return Err(PrepError::input(
            &args.input,
            None,
            format!(
                "no rows with split `{}` (hint: check --split, or pass --allow-empty)",
                args.split
            ),
        )
        .into());
    }
    summary
        .written
        .insert(args.out.display().to_string(), n as u64);
    Ok(summary)
}
