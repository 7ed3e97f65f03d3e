//! Fuzz (proptest) of the row parsers of every input format (`formats::convert` for each
//! format, `formats::detect`, `hh_rlhf::parse_transcript`): arbitrary JSON rows built from
//! the formats' real keys and random ones (odd unicode, extreme numbers, nulls, nesting),
//! valid rows with random fields replaced or removed, and arbitrary transcripts. Every row
//! gives examples or rejections, never a panic, and what is accepted is usable downstream
//! (finite 32-bit label, margin and rating). The regression tests at the end are inputs
//! that once broke a parser. `RLHF_FUZZ_CASES` sets the cases per property (default 256;
//! `make fuzz` runs 20,000).

#[path = "../../rlhf-core/tests/fuzz_common/mod.rs"]
mod fuzz_common;

use fuzz_common::{config, edited, json_document};
use prep_data::formats::{self, hh_rlhf, Example, Format, FormatOptions, GenericKind};
use prep_data::reject::Reason;
use proptest::prelude::*;
use serde_json::{json, Value};

/// The keys the formats read (and a few they do not), so random objects reach deep code.
const KEYS: &[&str] = &[
    "chosen",
    "rejected",
    "prompt",
    "history",
    "post",
    "human_ref_A",
    "human_ref_B",
    "labels",
    "score_A",
    "score_B",
    "score_ratio",
    "info",
    "article",
    "subreddit",
    "title",
    "summaries",
    "text",
    "choice",
    "score_chosen",
    "score_rejected",
    "context",
    "generation",
    "reward",
    "responses",
    "ranks",
    "ranking",
    "incomparable",
    "role",
    "content",
    "speaker",
    "from",
    "value",
    "response",
    "rating",
    "completion",
    "messages",
    "reference",
    "label",
    "margin",
    "0",
    "1",
    "",
    "info.post",
];

/// Pieces of HH-RLHF transcripts and other strings the formats look for.
const PIECES: &[&str] = &[
    "\n\nHuman:",
    "\n\nAssistant:",
    "Human:",
    "Assistant:",
    " hi",
    "\n",
    "x",
    "[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]",
    "[{\"from\":\"human\",\"value\":\"q\"},{\"from\":\"gpt\",\"value\":\"\"}]",
    "[{\"speaker\":\"ROBOT\",\"text\":\"x\"}]",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "user",
    "assistant",
    "system",
    "GPT",
    "incomparable",
    "2",
];

/// Text biased to transcript pieces, message lists as JSON text and role names.
fn text() -> BoxedStrategy<String> {
    fuzz_common::text(PIECES)
}

/// One valid row of each format (and of each generic kind).
fn valid_rows() -> Vec<Value> {
    vec![
        json!({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: A pun.",
               "rejected": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant: No."}),
        json!({"history": "Q?", "human_ref_A": "a", "human_ref_B": "b", "labels": 0,
               "score_A": 2, "score_B": 6}),
        json!({"info": {"post": "A post", "title": "T", "subreddit": "tifu"},
               "summaries": [{"text": "one"}, {"text": "two"}], "choice": 1}),
        json!({"prompt": "Q", "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
               "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}],
               "score_chosen": 8.0, "score_rejected": 3.5}),
        json!({"context": "[{\"speaker\": \"USER\", \"text\": \"hi\"}]", "generation": "hello", "reward": 1}),
        json!({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [2, 1, null]}),
        json!({"prompt": [{"role": "user", "content": "p"}], "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}),
        json!({"prompt": "p", "chosen": "c", "rejected": "r", "label": 0.25, "margin": 1.5}),
        json!({"prompt": "p", "response": "r", "rating": 0.5}),
        json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                            {"role": "assistant", "content": "a"}]}),
        json!({"prompt": "p", "completion": "c"}),
        json!({"prompt": "p", "reference": "ref"}),
    ]
}

/// A valid row with up to three random edits.
fn mutated_row() -> BoxedStrategy<Value> {
    edited(valid_rows(), KEYS, text(), 3)
}

/// A random row: mostly an object of known and random keys, sometimes any JSON value.
fn random_row() -> BoxedStrategy<Value> {
    json_document(KEYS, text(), 10)
}

const FORMATS: [Format; 7] = [
    Format::HhRlhf,
    Format::Shp,
    Format::Tldr,
    Format::Ultrafeedback,
    Format::Thumbs,
    Format::Ranking,
    Format::Generic,
];

fn options(kind: GenericKind, mapped: bool, min_ratio: Option<f64>) -> FormatOptions {
    FormatOptions {
        kind,
        prompt_column: "prompt".into(),
        chosen_column: "chosen".into(),
        rejected_column: "rejected".into(),
        response_column: "response".into(),
        rating_column: "rating".into(),
        completion_column: "completion".into(),
        messages_column: "messages".into(),
        reference_column: "reference".into(),
        label_column: mapped.then(|| "label".into()),
        margin_column: mapped.then(|| "margin".into()),
        min_score_ratio: min_ratio,
    }
}

fn option_sets() -> impl Strategy<Value = FormatOptions> {
    let kind = prop::sample::select(vec![
        GenericKind::Auto,
        GenericKind::Pairs,
        GenericKind::Ratings,
        GenericKind::Sft,
        GenericKind::Prompts,
    ]);
    let ratio = prop::option::of(prop_oneof![Just(0.0), Just(2.0), any::<f64>()]);
    (kind, any::<bool>(), ratio).prop_map(|(k, m, r)| options(k, m, r))
}

/// What the rest of the stage relies on in an accepted example.
fn check_example(ex: &Example, format: Format) -> Result<(), TestCaseError> {
    match ex {
        Example::Pair {
            prompt,
            label,
            margin,
            ..
        } => {
            prop_assert!(!prompt.is_empty(), "{format:?}: a pair without a prompt");
            prop_assert!(
                (0.5..=1.0).contains(label),
                "{format:?}: label {label} outside [0.5, 1]"
            );
            if let Some(m) = margin {
                prop_assert!(m.is_finite(), "{format:?}: margin {m} is not finite");
            }
        }
        Example::Rating { prompt, rating, .. } => {
            prop_assert!(!prompt.is_empty(), "{format:?}: a rating without a prompt");
            prop_assert!(
                rating.is_finite(),
                "{format:?}: rating {rating} is not finite"
            );
        }
        Example::Sft { prompt, .. } | Example::Prompt { prompt, .. } => {
            prop_assert!(
                !prompt.is_empty(),
                "{format:?}: an example without a prompt"
            );
        }
    }
    Ok(())
}

/// Every format's parser on `row`, and the detected format's.
fn check_row(row: &Value, opts: &FormatOptions) -> Result<(), TestCaseError> {
    let detected = formats::detect(row, opts);
    for format in FORMATS.into_iter().chain(detected) {
        for item in formats::convert(format, row, opts) {
            match item {
                Ok(ex) => check_example(&ex, format)?,
                Err(r) => prop_assert!(!r.detail.is_empty(), "{format:?}: empty detail"),
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn random_rows_give_examples_or_rejections(row in random_row(), opts in option_sets()) {
        check_row(&row, &opts)?;
    }

    #[test]
    fn mutated_valid_rows_give_examples_or_rejections(row in mutated_row(), opts in option_sets()) {
        check_row(&row, &opts)?;
    }

    #[test]
    fn transcripts_parse_or_are_malformed(t in text()) {
        match hh_rlhf::parse_transcript(&t, "chosen") {
            Ok(msgs) => {
                prop_assert_eq!(msgs.first().map(|m| m.role.as_str()), Some("user"));
                for m in &msgs {
                    prop_assert!(m.role == "user" || m.role == "assistant");
                    prop_assert_eq!(m.content.trim(), m.content.as_str());
                }
            }
            Err(r) => prop_assert_eq!(r.reason, Reason::MalformedTranscript),
        }
        // The same text as both sides of an HH-RLHF row.
        let row = json!({"chosen": t.clone(), "rejected": format!("{t}\n\nAssistant: other")});
        check_row(&row, &options(GenericKind::Auto, false, None))?;
    }
}

#[test]
fn valid_rows_are_accepted() {
    let opts = options(GenericKind::Auto, true, None);
    for row in valid_rows() {
        let format = formats::detect(&row, &opts).expect("detected");
        let items = formats::convert(format, &row, &opts);
        assert!(items.iter().any(Result::is_ok), "{row}: no example");
        for item in items {
            match item {
                Ok(ex) => check_example(&ex, format).unwrap(),
                // The third ranked response has no rank: its pairs are incomparable.
                Err(r) => assert_eq!(r.reason, Reason::Incomparable, "{row}: {r:?}"),
            }
        }
    }
}

/// The only rejection of `row` in `format`, checking its reason and that it names `what`.
fn rejected(format: Format, row: Value, reason: Reason, what: &str) {
    let opts = options(GenericKind::Auto, true, None);
    let out = formats::convert(format, &row, &opts);
    let errors: Vec<_> = out.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 1, "{row}: {out:?}");
    assert_eq!(errors[0].reason, reason, "{row}: {out:?}");
    assert!(errors[0].detail.contains(what), "{row}: {out:?}");
}

// Regression: finite JSON numbers beyond f32's range (or whose ratio or difference is)
// became infinite ratings and margins in the artifacts.
#[test]
fn numbers_beyond_f32_are_rejected_not_infinite() {
    let context = "[{\"speaker\": \"USER\", \"text\": \"hi\"}]";
    let thumbs =
        json!({"context": context, "generation": "hello", "reward": -2.1798494614091227e46});
    rejected(Format::Thumbs, thumbs, Reason::BadValue, "`reward`");
    let rating = json!({"prompt": "p", "response": "r", "rating": 1e39});
    rejected(Format::Generic, rating, Reason::BadValue, "`rating`");
    let margin =
        json!({"prompt": "p", "chosen": "c", "rejected": "r", "label": 1, "margin": -1e39});
    rejected(Format::Generic, margin, Reason::BadValue, "`margin`");
    let uf = json!({"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
                    "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}],
                    "score_chosen": 3e38, "score_rejected": -3e38});
    rejected(
        Format::Ultrafeedback,
        uf,
        Reason::BadValue,
        "score_chosen - score_rejected",
    );
    let shp = json!({"history": "Q?", "human_ref_A": "a", "human_ref_B": "b", "labels": 1,
                     "score_A": 1e308, "score_B": 1e-308});
    rejected(Format::Shp, shp, Reason::BadValue, "score ratio");
    let ranks = json!({"prompt": "p", "responses": ["a", "b"], "ranks": [1e308, -1e308]});
    rejected(Format::Ranking, ranks, Reason::BadValue, "rank difference");
}

// Regression: K ranked responses expand into K(K-1)/2 pairs, so one row of a few megabytes
// could ask for terabytes; more than MAX_RESPONSES is refused before expanding.
#[test]
fn huge_rankings_are_refused_before_expanding() {
    let k = 100_000;
    let row = json!({"prompt": "p", "responses": vec!["a"; k], "ranks": vec![1; k]});
    rejected(
        Format::Ranking,
        row,
        Reason::BadValue,
        "at most 64 responses",
    );
    let max = formats::ranking::MAX_RESPONSES;
    let row = json!({"prompt": "p", "responses": (0..max).map(|i| i.to_string()).collect::<Vec<_>>(),
                     "ranking": (0..max).collect::<Vec<_>>()});
    let out = formats::convert(
        Format::Ranking,
        &row,
        &options(GenericKind::Auto, false, None),
    );
    assert_eq!(out.len(), max * (max - 1) / 2);
    assert!(out.iter().all(Result::is_ok));
}
