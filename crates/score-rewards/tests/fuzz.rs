//! Fuzz (proptest) of the `--rule` parser (`Rule::parse`): arbitrary strings, and rule
//! specs assembled from the real kinds, options and values (numbers at the edges of f32,
//! regex syntax, odd unicode, separators in odd places). Parsing gives a rule or a usage
//! error (exit code 2), never a panic; a parsed rule has a valid column name and a finite
//! weight, and its value on random rollouts is finite. `RLHF_FUZZ_CASES` sets the cases
//! per property (default 256; `make fuzz` runs 20,000).

#[path = "../../rlhf-core/tests/fuzz_common/mod.rs"]
mod fuzz_common;

use fuzz_common::config;
use proptest::prelude::*;
use rlhf_core::error::CoreError;
use score_rewards::rules::{RowView, Rule, RuleKind};

const KINDS: &[&str] = &[
    "length", "regex", "contains", "excludes", "exact", "gold", "LENGTH", " gold ", "", "nope",
];

const OPTIONS: &[&str] = &[
    "target", "unit", "weight", "name", "prompts", "column", " weight ", "", "=",
];

const VALUES: &[&str] = &[
    "20",
    "1",
    "0",
    "-1",
    "0.5",
    "1e-45",
    "1e-38",
    "3.4e38",
    "3.5e38",
    "1e39",
    "inf",
    "NaN",
    "tokens",
    "words",
    "chars",
    "reward_len",
    "a b",
    "x-y",
    "\u{e9}",
    "(a|b)+",
    "[",
    "\\",
    "a{1000}{1000}",
    "(?i)yes",
    "\\p{L}",
    "prompts.parquet",
    ",",
    ":",
    "=",
];

fn spec() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        3 => prop::sample::select(VALUES).prop_map(String::from),
        1 => fuzz_common::text(VALUES),
    ];
    let option =
        (prop::sample::select(OPTIONS), value.clone()).prop_map(|(k, v)| format!("{k}={v}"));
    let part = prop_oneof![3 => option, 1 => value];
    (
        prop::sample::select(KINDS),
        prop::collection::vec(part, 0..4),
        prop::sample::select(vec![":", "", "::", ": "]),
    )
        .prop_map(|(kind, parts, sep)| format!("{kind}{sep}{}", parts.join(",")))
}

fn row_text() -> BoxedStrategy<String> {
    fuzz_common::text(&["yes", "no", "a", "b", " ", "\n", "\u{e9}"])
}

fn check(spec: &str, response: &str, prompt: &str, tokens: usize) -> Result<(), TestCaseError> {
    match Rule::parse(spec) {
        Ok(rule) => {
            prop_assert!(!rule.name.is_empty());
            prop_assert!(rule
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'));
            prop_assert!(rule.weight.is_finite());
            if !matches!(rule.kind, RuleKind::Exact { .. }) {
                let row = RowView {
                    prompt_id: "p",
                    prompt,
                    response,
                    response_tokens: tokens,
                };
                let v = rule.value(&row, None);
                prop_assert!(v.is_ok(), "{spec}: {v:?}");
                let v = v.unwrap();
                prop_assert!(v.is_finite(), "{spec}: value {v} on {response:?}");
            }
        }
        Err(e) => {
            let usage = matches!(e.downcast_ref::<CoreError>(), Some(CoreError::Usage(_)));
            prop_assert!(usage, "{spec}: not a usage error: {e:?}");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn assembled_rules_parse_or_are_usage_errors(
        spec in spec(),
        response in row_text(),
        prompt in row_text(),
        tokens in prop_oneof![0usize..100, any::<usize>()],
    ) {
        check(&spec, &response, &prompt, tokens)?;
    }

    #[test]
    fn arbitrary_strings_parse_or_are_usage_errors(spec in any::<String>(), response in row_text()) {
        check(&spec, &response, "", 3)?;
    }
}

// Regression: `length:target=1e-45` parsed, and its value -abs(n - N) / N was -inf for any
// non-empty response (an infinite reward); a target below 1 is refused.
#[test]
fn a_length_target_below_one_is_refused() {
    for spec in [
        "length:target=1e-45",
        "length:target=0.5",
        "length:target=1e-38",
    ] {
        let err = Rule::parse(spec).unwrap_err().to_string();
        assert!(err.contains("must be a number >= 1"), "{spec}: {err}");
    }
    let rule = Rule::parse("length:target=1,unit=chars").unwrap();
    let row = RowView {
        prompt_id: "p",
        prompt: "",
        response: &"x".repeat(1000),
        response_tokens: usize::MAX,
    };
    assert_eq!(rule.value(&row, None).unwrap(), -999.0);
}
