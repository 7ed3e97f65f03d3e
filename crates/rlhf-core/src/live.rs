//! Metrics streamed while a stage runs (the global flags `--live-metrics DIR` and
//! `--tensorboard DIR`), so a long run can be watched before its outputs exist.
//!
//! A stage run's stream is named by its stage, policy iteration and output (the output's
//! file name without `.parquet`: `policy`, `rm`, `rollouts`, `part-00001-of-00004`), the
//! key `<stage>.iter<NNN>.<output>`:
//! - `--live-metrics DIR`: metrics artifacts `DIR/<key>.part-<SSSSS>.parquet`
//!   (schemas/metrics.json), each holding the rows recorded since the part before; a part
//!   appears complete or not at all (temporary, hidden name, then a rename), so
//!   `pyarrow.dataset.dataset(DIR)` reads the run so far.
//! - `--tensorboard DIR`: one TensorBoard event file per stage run, scalars tagged
//!   `<stage>/iter<NNN>/<output>/<metric>` at the metric's step.
//!
//! A stage run that starts again with the same key (a resume from a checkpoint, a retry:
//! the same output) first removes the parts and event file the earlier attempt left and
//! writes what it restored, so the stream always equals the run's metrics: no step twice,
//! none from an attempt that did not count. Pipelines pass one run-level DIR so a whole
//! PERL run reads as one set of curves.
//!
//! Streaming is a side channel: once the stage runs, a failed write is a warning and
//! streaming stops; it never fails the stage or touches its outputs.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{CoreError, Result};
use crate::lineage::Lineage;
use crate::metrics::MetricsLog;
use crate::records::MetricRow;
use crate::schema::Artifact;
use crate::tensorboard::{wall_time, EventFile};

/// Where this process streams metrics (set once from the global flags).
#[derive(Debug, Clone, Default)]
pub struct LiveTargets {
    pub parts_dir: Option<PathBuf>,
    pub tensorboard_dir: Option<PathBuf>,
}

static TARGETS: OnceLock<LiveTargets> = OnceLock::new();

/// Sets the process's targets ([`crate::cli::GlobalArgs::init`] calls it). The first call wins.
pub fn set_targets(targets: LiveTargets) {
    let _ = TARGETS.set(targets);
}

/// How often a new Parquet part is written while rows keep coming (the last part is
/// written when the stage finishes or stops). Event files are flushed at every update.
pub const PART_EVERY: Duration = Duration::from_secs(10);

/// One stage run's stream.
#[derive(Debug)]
pub struct LiveMetrics {
    key: String,
    tag_prefix: String,
    stage: String,
    parts_dir: Option<PathBuf>,
    events: Option<EventFile>,
    /// rows of the log already sent to the event file / written as parts
    sent_events: usize,
    sent_parts: usize,
    seq: u32,
    last_part: Instant,
    every: Duration,
}

impl LiveMetrics {
    /// The stream of `log`'s stage and iteration writing `out`, to the process's targets
    /// (`None` when no flag asked for one). Removes what an earlier attempt with the same
    /// key left, then sends the rows `log` already holds.
    pub fn start(log: &MetricsLog, out: &Path) -> Result<Option<LiveMetrics>> {
        let targets = TARGETS.get().cloned().unwrap_or_default();
        LiveMetrics::start_with(&targets, log, &output_label(out), PART_EVERY)
    }

    /// [`LiveMetrics::start`] with explicit targets, output label and part interval.
    pub fn start_with(
        targets: &LiveTargets,
        log: &MetricsLog,
        label: &str,
        every: Duration,
    ) -> Result<Option<LiveMetrics>> {
        if targets.parts_dir.is_none() && targets.tensorboard_dir.is_none() {
            return Ok(None);
        }
        let key = format!("{}.iter{:03}.{label}", log.stage, log.iteration);
        if let Some(dir) = &targets.parts_dir {
            std::fs::create_dir_all(dir).map_err(|e| CoreError::io("creating", dir, e))?;
            remove_matching(dir, &format!("{key}.part-"), ".parquet")?;
        }
        let events = match &targets.tensorboard_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| CoreError::io("creating", dir, e))?;
                remove_matching(dir, "events.out.tfevents.", &format!(".{key}"))?;
                Some(EventFile::create(dir, &key)?)
            }
            None => None,
        };
        let tag_prefix = format!("{}/iter{:03}/{label}", log.stage, log.iteration);
        let mut live = LiveMetrics {
            key,
            tag_prefix,
            stage: log.stage.clone(),
            parts_dir: targets.parts_dir.clone(),
            events,
            sent_events: 0,
            sent_parts: 0,
            seq: 0,
            last_part: Instant::now(),
            every,
        };
        if !log.rows.is_empty() {
            live.send(log, true)?;
        }
        Ok(Some(live))
    }

    /// Sends the rows recorded since the last call: event file always, a Parquet part when
    /// [`PART_EVERY`] has passed. A failure is returned; see [`Stream::update`] for the lenient form.
    pub fn send(&mut self, log: &MetricsLog, force_part: bool) -> Result<()> {
        if let Some(ev) = &mut self.events {
            let now = wall_time();
            for r in &log.rows[self.sent_events.min(log.rows.len())..] {
                ev.scalar(
                    &format!("{}/{}", self.tag_prefix, r.metric),
                    r.step,
                    r.value,
                    now,
                )?;
            }
            ev.flush()?;
            self.sent_events = log.rows.len();
        }
        let due = force_part || self.last_part.elapsed() >= self.every;
        if let (Some(dir), true) = (&self.parts_dir, due) {
            let rows = &log.rows[self.sent_parts.min(log.rows.len())..];
            if !rows.is_empty() {
                let path = dir.join(format!("{}.part-{:05}.parquet", self.key, self.seq));
                write_part(&path, rows, &self.stage)?;
                self.seq += 1;
                self.sent_parts = log.rows.len();
            }
            self.last_part = Instant::now();
        }
        Ok(())
    }

    /// The rows of the event file and of the parts written so far (for tests).
    pub fn sent(&self) -> (usize, usize) {
        (self.sent_events, self.sent_parts)
    }
}

/// A stage run's stream, or none (no flag, or streaming failed and stopped).
#[derive(Debug, Default)]
pub struct Stream(Option<LiveMetrics>);

impl Stream {
    /// [`LiveMetrics::start`] to the process's targets. An error here (the folder cannot
    /// be made) fails the stage before it does any work.
    pub fn start(log: &MetricsLog, out: &Path) -> Result<Stream> {
        LiveMetrics::start(log, out).map(Stream)
    }

    /// True while metrics go somewhere: stages record progress rows only then.
    pub fn is_active(&self) -> bool {
        self.0.is_some()
    }

    /// Sends the rows of `log` recorded since the last call; `finish`: write the last part
    /// now (the stage ends or stops). A failure is one warning and ends the stream; the
    /// stage goes on.
    pub fn update(&mut self, log: &MetricsLog, finish: bool) {
        if let Some(l) = &mut self.0 {
            if let Err(e) = l.send(log, finish) {
                tracing::warn!(error = %e, "streaming metrics failed; the stage goes on without it");
                self.0 = None;
            }
        }
    }
}

/// The name of an output in stream keys and tags: its file name without `.parquet`,
/// reduced to `[A-Za-z0-9_-]`.
pub fn output_label(out: &Path) -> String {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".parquet").unwrap_or(&name);
    let label: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if label.is_empty() {
        "out".into()
    } else {
        label
    }
}

fn write_part(path: &Path, rows: &[MetricRow], stage: &str) -> Result<()> {
    let lineage = Lineage::new(stage, env!("CARGO_PKG_VERSION"), Artifact::Metrics);
    crate::parquet_io::write_records(path, rows, &lineage).map(|_| ())
}

/// Removes the files of `dir` named `<prefix>...<suffix>` (an earlier attempt's stream).
fn remove_matching(dir: &Path, prefix: &str, suffix: &str) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| CoreError::io("reading", dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(suffix) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| CoreError::io("removing", &path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(dir: &Path) -> LiveTargets {
        LiveTargets {
            parts_dir: Some(dir.join("parts")),
            tensorboard_dir: Some(dir.join("tb")),
        }
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn part_rows(dir: &Path) -> Vec<(i64, String)> {
        let mut rows = Vec::new();
        for name in files(dir) {
            let (r, _) = crate::parquet_io::read_records::<MetricRow>(&dir.join(name)).unwrap();
            rows.extend(r.into_iter().map(|r| (r.step, r.metric)));
        }
        rows
    }

    #[test]
    fn parts_hold_every_row_once_and_a_restart_replaces_the_earlier_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let t = targets(dir.path());
        let mut log = MetricsLog::new("train-x", 2);
        let mut live = LiveMetrics::start_with(&t, &log, "policy", Duration::ZERO)
            .unwrap()
            .unwrap();
        for step in 1..=3 {
            log.push(step, "train/loss", 1.0 / step as f64);
            live.send(&log, false).unwrap();
        }
        assert_eq!(live.sent(), (3, 3));
        let parts = dir.path().join("parts");
        assert_eq!(files(&parts).len(), 3);
        assert_eq!(
            part_rows(&parts).iter().map(|r| r.0).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // a resume from a checkpoint at step 2: the stream restarts with what was restored
        log.truncate_after(2);
        let mut again = LiveMetrics::start_with(&t, &log, "policy", Duration::from_secs(3600))
            .unwrap()
            .unwrap();
        log.push(3, "train/loss", 0.3);
        log.push(4, "train/loss", 0.25);
        again.send(&log, false).unwrap();
        assert_eq!(
            part_rows(&parts).iter().map(|r| r.0).collect::<Vec<_>>(),
            [1, 2],
            "no part until the interval passes"
        );
        again.send(&log, true).unwrap();
        assert_eq!(
            part_rows(&parts).iter().map(|r| r.0).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        let tb = files(&dir.path().join("tb"));
        assert_eq!(
            tb.len(),
            1,
            "the earlier attempt's event file is gone: {tb:?}"
        );
        assert!(tb[0].ends_with(".train-x.iter002.policy"), "{tb:?}");
    }

    #[test]
    fn outputs_name_their_streams() {
        assert_eq!(
            output_label(Path::new("runs/demo/iter-001/policy")),
            "policy"
        );
        assert_eq!(
            output_label(Path::new("r/rollouts.parquet/part-00001-of-00004.parquet")),
            "part-00001-of-00004"
        );
        assert_eq!(output_label(Path::new("a/b c.parquet")), "b_c");
    }

    #[test]
    fn other_stages_and_shards_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let t = targets(dir.path());
        let mut a = MetricsLog::new("score", 1);
        a.push(0, "reward/mean", 1.0);
        LiveMetrics::start_with(&t, &a, "shard-1of2", Duration::ZERO).unwrap();
        LiveMetrics::start_with(&t, &a, "shard-2of2", Duration::ZERO).unwrap();
        let mut b = MetricsLog::new("score", 10);
        b.push(0, "reward/mean", 2.0);
        LiveMetrics::start_with(&t, &b, "shard-1of2", Duration::ZERO).unwrap();
        assert_eq!(files(&dir.path().join("parts")).len(), 3);
        assert_eq!(files(&dir.path().join("tb")).len(), 3);
    }

    #[test]
    fn no_flag_no_stream() {
        let log = MetricsLog::new("s", 0);
        assert!(
            LiveMetrics::start_with(&LiveTargets::default(), &log, "out", PART_EVERY)
                .unwrap()
                .is_none()
        );
    }
}
