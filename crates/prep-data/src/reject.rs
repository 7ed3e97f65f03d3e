//! Reject reasons and the run summary: every input row is either written or rejected with
//! one of these reasons; the counts go to stderr and, with --summary-json, to a file.

use std::collections::BTreeMap;

use serde::Serialize;

/// Why a row (or one pair expanded from it) was not used. The `code` is what the rejects
/// file's `reason` column holds; the detail column says more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Not valid JSON / CSV, or not an object.
    MalformedRow,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong type or an unusable value.
    BadValue,
    /// A prompt or response is empty after trimming.
    EmptyText,
    /// Chosen and rejected responses are identical.
    ChosenEqualsRejected,
    /// Longer than the token limit.
    TooLong,
    /// A message role other than system/user/assistant.
    UnknownRole,
    /// A transcript that cannot be split into prompt and final reply.
    MalformedTranscript,
    /// A ranking marked incomparable (or a response without a rank).
    Incomparable,
    /// Below --min-score-ratio (SHP).
    BelowMinRatio,
    /// The same example was already written.
    Duplicate,
    /// The chat template failed on the messages.
    TemplateError,
    /// A rollout without a score, or with a null score (pairs).
    MissingScore,
    /// A rollout whose prompt has no other sample to pair with (pairs).
    NoPartner,
    /// Scores closer than the tie threshold, with --drop-ties (pairs).
    Tie,
}

impl Reason {
    /// The stable code written to rejects files and summaries.
    pub fn code(self) -> &'static str {
        match self {
            Reason::MalformedRow => "malformed_row",
            Reason::MissingField => "missing_field",
            Reason::BadValue => "bad_value",
            Reason::EmptyText => "empty_text",
            Reason::ChosenEqualsRejected => "chosen_equals_rejected",
            Reason::TooLong => "too_long",
            Reason::UnknownRole => "unknown_role",
            Reason::MalformedTranscript => "malformed_transcript",
            Reason::Incomparable => "incomparable",
            Reason::BelowMinRatio => "below_min_ratio",
            Reason::Duplicate => "duplicate",
            Reason::TemplateError => "template_error",
            Reason::MissingScore => "missing_score",
            Reason::NoPartner => "no_partner",
            Reason::Tie => "tie",
        }
    }
}

/// A row-level rejection: reason and detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    /// Shorthand constructor.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// Counts of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Input rows read (all files).
    pub rows_read: u64,
    /// Input rows skipped because another shard owns them.
    pub rows_other_shards: u64,
    /// Rows written per output file name.
    pub written: BTreeMap<String, u64>,
    /// Rejects per reason code (a ranking row can give several).
    pub rejected: BTreeMap<String, u64>,
    /// Rows read per input file.
    pub files: BTreeMap<String, u64>,
}

impl Summary {
    /// Counts one reject.
    pub fn reject(&mut self, reason: Reason) {
        *self.rejected.entry(reason.code().to_string()).or_default() += 1;
    }

    /// Total rejects.
    pub fn total_rejected(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// The summary as human-readable lines (for stderr).
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.files.is_empty() && self.rows_read == 0 {
            for (name, n) in &self.written {
                out.push(format!("wrote {n:>9} rows to {name}"));
            }
            return out;
        }
        out.push(format!(
            "read {} rows from {} file(s){}",
            self.rows_read,
            self.files.len(),
            if self.rows_other_shards > 0 {
                format!(" ({} belong to other shards)", self.rows_other_shards)
            } else {
                String::new()
            }
        ));
        for (name, n) in &self.written {
            out.push(format!("  wrote {n:>9} rows to {name}"));
        }
        out.push(format!("  rejected {:>6} rows", self.total_rejected()));
        for (reason, n) in &self.rejected {
            out.push(format!("    {n:>9} {reason}"));
        }
        out
    }
}
