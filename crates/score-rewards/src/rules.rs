//! Rule rewards: programmatic reward sources given as `--rule KIND:ARGS[,key=value...]`.
//!
//! | rule | value |
//! |---|---|
//! | `length:target=N[,unit=tokens\|words\|chars]` | `-abs(n - N) / N` (0 at the target, -1 at 0 or 2N; N >= 1) |
//! | `regex:PATTERN` | 1 if the response matches PATTERN, else 0 |
//! | `contains:WORD` | 1 if the response contains WORD, else 0 |
//! | `excludes:WORD` | -1 if the response contains WORD, else 0 |
//! | `exact:prompts=FILE[,column=reference]` | 1 if the trimmed response equals the prompt's reference, else 0 |
//! | `gold` or `gold:W` | the embedded task's oracle, `rlhf_core::synthetic::gold_score` |
//!
//! Every rule also takes `weight=W` (default 1; 0 records the column without adding it to
//! `reward`) and `name=COLUMN` (default: the rule's kind).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use arrow::datatypes::DataType;
use regex::Regex;
use rlhf_core::column::Columns;
use rlhf_core::error::CoreError;
use rlhf_core::parquet_io::Dataset;
use rlhf_core::schema::Artifact;

/// What a length is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthUnit {
    /// Response tokens, without a final EOS token.
    Tokens,
    /// Whitespace-separated words of the response text.
    Words,
    /// Characters of the response text.
    Chars,
}

/// The kind of a rule and its arguments.
#[derive(Debug, Clone)]
pub enum RuleKind {
    Length { target: f32, unit: LengthUnit },
    Regex(Regex),
    Contains(String),
    Excludes(String),
    Exact { prompts: PathBuf, column: String },
    Gold,
}

/// One parsed `--rule`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Output column.
    pub name: String,
    /// Weight in `reward`.
    pub weight: f32,
    pub kind: RuleKind,
}

/// What a rule sees of one rollout.
#[derive(Debug, Clone, Copy)]
pub struct RowView<'a> {
    pub prompt_id: &'a str,
    pub prompt: &'a str,
    pub response: &'a str,
    /// Response tokens without a final EOS token.
    pub response_tokens: usize,
}

fn bad_rule(spec: &str, message: impl std::fmt::Display) -> anyhow::Error {
    CoreError::Usage(format!("--rule `{spec}`: {message}")).into()
}

fn parse_weight(spec: &str, v: &str) -> Result<f32> {
    match v.trim().parse::<f32>() {
        Ok(w) if w.is_finite() => Ok(w),
        _ => Err(bad_rule(
            spec,
            format!("weight `{v}` is not a finite number"),
        )),
    }
}

/// Splits trailing `,key=value` options (keys from `keys`) off `body`, right to left.
fn split_options<'a>(body: &'a str, keys: &[&str]) -> (&'a str, Vec<(&'a str, &'a str)>) {
    let mut rest = body;
    let mut opts = Vec::new();
    while let Some(pos) = rest.rfind(',') {
        let tail = &rest[pos + 1..];
        match tail.split_once('=') {
            Some((k, v)) if keys.contains(&k.trim()) => {
                opts.push((k.trim(), v));
                rest = &rest[..pos];
            }
            _ => break,
        }
    }
    opts.reverse();
    (rest, opts)
}

impl Rule {
    /// Parses one `--rule` value.
    pub fn parse(spec: &str) -> Result<Rule> {
        let (kind, body) = match spec.split_once(':') {
            Some((k, b)) => (k.trim(), b),
            None => (spec.trim(), ""),
        };
        let mut weight = 1.0f32;
        let mut name: Option<String> = None;
        let kind = match kind {
            "length" | "exact" | "gold" => {
                let mut target = None;
                let mut unit = LengthUnit::Tokens;
                let mut prompts = None;
                let mut column = "reference".to_string();
                for part in body.split(',').filter(|p| !p.trim().is_empty()) {
                    let Some((k, v)) = part.split_once('=') else {
                        if kind == "gold" {
                            weight = parse_weight(spec, part)?;
                            continue;
                        }
                        return Err(bad_rule(spec, format!("expected key=value, found `{part}`")));
                    };
                    match (kind, k.trim()) {
                        (_, "weight") => weight = parse_weight(spec, v)?,
                        (_, "name") => name = Some(v.trim().to_string()),
                        ("length", "target") => match v.trim().parse::<f32>() {
                            // At least 1: a length is a count, and a target near 0 makes
                            // the value -abs(n - N) / N infinite.
                            Ok(t) if t.is_finite() && t >= 1.0 => target = Some(t),
                            _ => return Err(bad_rule(spec, format!("target `{v}` must be a number >= 1"))),
                        },
                        ("length", "unit") => {
                            unit = match v.trim() {
                                "tokens" => LengthUnit::Tokens,
                                "words" => LengthUnit::Words,
                                "chars" => LengthUnit::Chars,
                                other => {
                                    return Err(bad_rule(
                                        spec,
                                        format!("unit `{other}`: expected tokens, words or chars"),
                                    ))
                                }
                            }
                        }
                        ("exact", "prompts") => prompts = Some(PathBuf::from(v.trim())),
                        ("exact", "column") => column = v.trim().to_string(),
                        (_, other) => {
                            return Err(bad_rule(spec, format!("unknown option `{other}` for {kind}")))
                        }
                    }
                }
                match kind {
                    "length" => RuleKind::Length {
                        target: target.ok_or_else(|| bad_rule(spec, "needs target=N (e.g. length:target=20)"))?,
                        unit,
                    },
                    "exact" => RuleKind::Exact {
                        prompts: prompts.ok_or_else(|| {
                            bad_rule(spec, "needs prompts=FILE, the prompts file with the reference column")
                        })?,
                        column,
                    },
                    _ => RuleKind::Gold,
                }
            }
            "regex" | "contains" | "excludes" => {
                let (arg, opts) = split_options(body, &["weight", "name"]);
                for (k, v) in opts {
                    match k {
                        "weight" => weight = parse_weight(spec, v)?,
                        _ => name = Some(v.trim().to_string()),
                    }
                }
                if arg.is_empty() {
                    return Err(bad_rule(spec, format!("{kind} needs an argument, e.g. {kind}:WORD")));
                }
                match kind {
                    "regex" => RuleKind::Regex(
                        Regex::new(arg).map_err(|e| bad_rule(spec, format!("bad pattern: {e}")))?,
                    ),
                    "contains" => RuleKind::Contains(arg.to_string()),
                    _ => RuleKind::Excludes(arg.to_string()),
                }
            }
            other => {
                return Err(bad_rule(
                    spec,
                    format!("unknown rule `{other}`; expected length, regex, contains, excludes, exact or gold"),
                ))
            }
        };
        let name = name.unwrap_or_else(|| kind.name().to_string());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad_rule(
                spec,
                format!("column name `{name}`: use letters, digits and _"),
            ));
        }
        Ok(Rule { name, weight, kind })
    }

    /// The rule's value for one rollout. `refs` holds the reference texts of exact rules.
    pub fn value(&self, row: &RowView, refs: Option<&References>) -> Result<f32> {
        Ok(match &self.kind {
            RuleKind::Length { target, unit } => {
                let n = match unit {
                    LengthUnit::Tokens => row.response_tokens,
                    LengthUnit::Words => row.response.split_whitespace().count(),
                    LengthUnit::Chars => row.response.chars().count(),
                } as f32;
                -(n - target).abs() / target
            }
            RuleKind::Regex(re) => f32::from(u8::from(re.is_match(row.response))),
            RuleKind::Contains(w) => f32::from(u8::from(row.response.contains(w.as_str()))),
            RuleKind::Excludes(w) => -f32::from(u8::from(row.response.contains(w.as_str()))),
            RuleKind::Exact { .. } => {
                let refs = refs.context("exact rule without its references (a bug)")?;
                let reference = refs.get(row.prompt_id)?;
                f32::from(u8::from(row.response.trim() == reference.trim()))
            }
            RuleKind::Gold => rlhf_core::synthetic::gold_score(row.prompt, row.response),
        })
    }
}

impl RuleKind {
    /// The default column name.
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Length { .. } => "length",
            RuleKind::Regex(_) => "regex",
            RuleKind::Contains(_) => "contains",
            RuleKind::Excludes(_) => "excludes",
            RuleKind::Exact { .. } => "exact",
            RuleKind::Gold => "gold",
        }
    }
}

/// Reference texts by prompt id, read from a prompts file for an exact-match rule.
#[derive(Debug, Clone)]
pub struct References {
    path: PathBuf,
    column: String,
    by_prompt: HashMap<String, Option<String>>,
}

impl References {
    /// Reads `column` (a string column) of a prompts dataset.
    pub fn load(path: &Path, column: &str) -> Result<References> {
        let ds = Dataset::open(path, Artifact::Prompts).with_context(|| {
            format!(
                "reading references for an exact rule from {}",
                path.display()
            )
        })?;
        let mut by_prompt = HashMap::new();
        for item in ds.batches() {
            let (file, batch) = item?;
            let schema = batch.schema();
            match schema.field_with_name(column) {
                Ok(f) if f.data_type() == &DataType::Utf8 => {}
                Ok(f) => bail!(CoreError::BadInput {
                    path: file.clone(),
                    row: None,
                    message: format!(
                        "column `{column}` has type {}, expected Utf8",
                        f.data_type()
                    ),
                }),
                Err(_) => bail!(CoreError::BadInput {
                    path: file.clone(),
                    row: None,
                    message: format!(
                        "no column `{column}` for the exact rule (hint: column=NAME picks another)"
                    ),
                }),
            }
            let c = Columns::new(&batch, &file);
            for (id, r) in c.str("prompt_id")?.into_iter().zip(c.opt_str(column)) {
                by_prompt.insert(id, r);
            }
        }
        Ok(References {
            path: path.to_path_buf(),
            column: column.to_string(),
            by_prompt,
        })
    }

    /// The reference of a prompt; an error names the prompt and file when it has none.
    pub fn get(&self, prompt_id: &str) -> Result<&str> {
        match self.by_prompt.get(prompt_id) {
            Some(Some(r)) => Ok(r),
            Some(None) => Err(CoreError::BadInput {
                path: self.path.clone(),
                row: None,
                message: format!("prompt `{prompt_id}` has a null `{}`", self.column),
            }
            .into()),
            None => Err(CoreError::BadInput {
                path: self.path.clone(),
                row: None,
                message: format!(
                    "prompt `{prompt_id}` of the rollouts is not in this file (hint: give the \
                     prompts file the rollouts were sampled from)"
                ),
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(response: &'a str, tokens: usize) -> RowView<'a> {
        RowView {
            prompt_id: "p1",
            prompt: "Write a review of the red phone.",
            response,
            response_tokens: tokens,
        }
    }

    fn v(spec: &str, response: &str, tokens: usize) -> f32 {
        Rule::parse(spec)
            .unwrap()
            .value(&view(response, tokens), None)
            .unwrap()
    }

    #[test]
    fn length_rule_peaks_at_the_target() {
        assert_eq!(v("length:target=20", "x", 20), 0.0);
        assert_eq!(v("length:target=20", "x", 10), -0.5);
        assert_eq!(v("length:target=20", "x", 30), -0.5);
        assert_eq!(v("length:target=20", "x", 0), -1.0);
        assert_eq!(v("length:target=4,unit=words", "a b c", 99), -0.25);
        assert_eq!(v("length:target=2,unit=chars", "héé", 99), -0.5);
        let r = Rule::parse("length:target=20,weight=0.1").unwrap();
        assert_eq!((r.name.as_str(), r.weight), ("length", 0.1));
    }

    #[test]
    fn text_rules_match_and_keep_commas_in_patterns() {
        assert_eq!(v("regex:^the .* great", "the phone is great", 1), 1.0);
        assert_eq!(v("regex:^great", "the phone is great", 1), 0.0);
        let r = Rule::parse("regex:a{1,3}b,weight=2,name=ab").unwrap();
        assert_eq!((r.name.as_str(), r.weight), ("ab", 2.0));
        assert_eq!(r.value(&view("xaab", 1), None).unwrap(), 1.0);
        assert_eq!(v("contains:great", "so great", 1), 1.0);
        assert_eq!(v("contains:great", "so bad", 1), 0.0);
        assert_eq!(v("excludes:bad", "so bad", 1), -1.0);
        assert_eq!(v("excludes:bad", "so great", 1), 0.0);
    }

    #[test]
    fn gold_rule_is_the_oracle() {
        let resp = " the phone is great and nice and good and the design is fine.";
        let expected = rlhf_core::synthetic::gold_score("Write a review of the red phone.", resp);
        assert_eq!(v("gold", resp, 1), expected);
        assert_eq!(Rule::parse("gold:0").unwrap().weight, 0.0);
        assert_eq!(Rule::parse("gold:weight=0.5").unwrap().weight, 0.5);
        assert_eq!(Rule::parse("gold").unwrap().weight, 1.0);
    }

    #[test]
    fn bad_specs_are_explained() {
        for (spec, needle) in [
            ("length", "needs target"),
            ("length:target=0", "must be a number >= 1"),
            ("length:target=5,unit=bytes", "unit `bytes`"),
            ("regex:(", "bad pattern"),
            ("contains:", "needs an argument"),
            ("frobnicate:x", "unknown rule `frobnicate`"),
            ("exact:column=reference", "needs prompts=FILE"),
            ("gold:weight=abc", "not a finite number"),
            ("contains:x,name=a b", "column name"),
        ] {
            let err = Rule::parse(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn exact_rule_reads_references() {
        use rlhf_core::lineage::Lineage;
        use rlhf_core::records::PromptRow;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.parquet");
        let row = |id: &str, reference: Option<&str>| PromptRow {
            prompt_id: id.into(),
            prompt: "q".into(),
            messages: None,
            prompt_tokens: None,
            split: "train".into(),
            source: "t".into(),
            reference: reference.map(String::from),
        };
        let rows = [row("p1", Some("42")), row("p2", None)];
        rlhf_core::parquet_io::write_records(
            &file,
            &rows,
            &Lineage::new("t", "0", Artifact::Prompts),
        )
        .unwrap();
        let spec = format!("exact:prompts={}", file.display());
        let rule = Rule::parse(&spec).unwrap();
        let refs = References::load(&file, "reference").unwrap();
        assert_eq!(rule.value(&view(" 42\n", 1), Some(&refs)).unwrap(), 1.0);
        assert_eq!(rule.value(&view("41", 1), Some(&refs)).unwrap(), 0.0);
        let mut other = view("42", 1);
        other.prompt_id = "p2";
        assert!(rule
            .value(&other, Some(&refs))
            .unwrap_err()
            .to_string()
            .contains("null `reference`"));
        other.prompt_id = "p9";
        assert!(rule
            .value(&other, Some(&refs))
            .unwrap_err()
            .to_string()
            .contains("`p9`"));
        let err = References::load(&file, "answer").unwrap_err().to_string();
        assert!(err.contains("no column `answer`"), "{err}");
    }
}
