//! Strategies shared by the workspace's property-based fuzz tests (`tests/fuzz*.rs` of
//! rlhf-core, prep-data, rlhf-nn and score-rewards, which include this file by path): the
//! case count, odd text, arbitrary JSON over a format's own keys, random edits of a valid
//! JSON document, and corruptions (truncation, byte flips) of a valid file.
//!
//! `RLHF_FUZZ_CASES` sets the number of cases of every property (default 256; `make fuzz`
//! runs 20,000). Failures are not persisted: a failing input is printed, and a real one is
//! kept as an explicit regression test in the fuzz file.
#![allow(dead_code)]

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Number, Value};

/// Cases per property: `RLHF_FUZZ_CASES`, or `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("RLHF_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The proptest configuration: [`cases`] cases, no regression files.
pub fn config(default_cases: u32) -> Config {
    Config {
        cases: cases(default_cases),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Strings parsers tend to treat specially, and odd unicode.
pub const ODD: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "\u{202e}gnp.exe",
    "e\u{301}\u{301}\u{301}",
    "\u{1f600}",
    "\u{feff}",
    "\u{10ffff}",
    "\r\n",
    "NaN",
    "inf",
    "-inf",
    "1e309",
    "-0",
    "0",
    "1",
    "-1",
    "0.5",
    "1e39",
    "18446744073709551616",
    "true",
    "False",
    "null",
    "[",
    "[]",
    "{",
    "{}",
    "{{",
    "{%",
    "\"",
    "\\",
    "../../etc/passwd",
    "/dev/zero",
];

/// Arbitrary text, biased to the strings in [`ODD`] and to `extra`.
pub fn text(extra: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "\\PC{0,12}",
        2 => prop::sample::select(ODD).prop_map(String::from),
        3 => prop::collection::vec(prop::sample::select(extra.to_vec()), 0..6).prop_map(|v| v.concat()),
    ]
    .boxed()
}

/// JSON numbers: any integer or finite float, and the edges (0, ±1, 2^63, 1e308, ...).
pub fn number() -> BoxedStrategy<Value> {
    let edges = [
        json!(0),
        json!(1),
        json!(-1),
        json!(2),
        json!(0.5),
        json!(-0.0),
        json!(1e39),
        json!(-1e39),
        json!(1e308),
        json!(f64::MIN_POSITIVE),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1_000_000_000_000_000_000u64),
        json!(4_294_967_296u64),
    ];
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|x| Number::from_f64(x).map_or(Value::Null, Value::Number)),
        prop::sample::select(edges.to_vec()),
        (-3i64..9).prop_map(Value::from),
    ]
    .boxed()
}

fn object(kv: Vec<(String, Value)>) -> Value {
    Value::Object(kv.into_iter().collect::<Map<String, Value>>())
}

/// Any JSON value a few levels deep; object keys mostly from `keys`, strings from `texts`.
pub fn json_value(
    keys: &'static [&'static str],
    texts: BoxedStrategy<String>,
) -> BoxedStrategy<Value> {
    let key = prop_oneof![
        4 => prop::sample::select(keys.to_vec()).prop_map(String::from),
        1 => texts.clone(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        texts.prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(object),
        ]
    })
    .boxed()
}

/// An object of up to `n` keys mostly from `keys`, or (rarely) any JSON value.
pub fn json_document(
    keys: &'static [&'static str],
    texts: BoxedStrategy<String>,
    n: usize,
) -> BoxedStrategy<Value> {
    let key = prop_oneof![
        4 => prop::sample::select(keys.to_vec()).prop_map(String::from),
        1 => texts.clone(),
    ];
    let value = json_value(keys, texts);
    prop_oneof![
        6 => prop::collection::vec((key, value.clone()), 0..n).prop_map(object),
        1 => value,
    ]
    .boxed()
}

/// One random edit of a JSON document: the value at `path` (child indices, taken modulo
/// the number of children) gets a value of its own type (most often), any value, or is
/// removed.
#[derive(Debug, Clone)]
pub struct Edit {
    path: Vec<usize>,
    how: u8,
    number: Value,
    text: String,
    any: Value,
}

fn edit(
    keys: &'static [&'static str],
    texts: BoxedStrategy<String>,
) -> impl Strategy<Value = Edit> {
    (
        prop::collection::vec(any::<usize>(), 1..5),
        0u8..10,
        number(),
        texts.clone(),
        json_value(keys, texts),
    )
        .prop_map(|(path, how, number, text, any)| Edit {
            path,
            how,
            number,
            text,
            any,
        })
}

/// The value an edit puts in place of `old` (None: remove it).
fn replacement(old: &Value, e: &Edit) -> Option<Value> {
    match (e.how, old) {
        (0..=5, Value::Number(_)) => Some(e.number.clone()),
        (0..=5, Value::String(_)) => Some(Value::String(e.text.clone())),
        (0..=5, Value::Bool(b)) => Some(Value::Bool(!b)),
        (0..=8, _) => Some(e.any.clone()),
        _ => None,
    }
}

fn apply(v: &mut Value, path: &[usize], e: &Edit) {
    let Some((&i, rest)) = path.split_first() else {
        return;
    };
    let deeper = |c: &Value| !rest.is_empty() && matches!(c, Value::Object(_) | Value::Array(_));
    match v {
        Value::Object(m) if !m.is_empty() => {
            let k = m.keys().nth(i % m.len()).cloned().unwrap_or_default();
            if deeper(&m[&k]) {
                if let Some(child) = m.get_mut(&k) {
                    apply(child, rest, e);
                }
            } else {
                match replacement(&m[&k], e) {
                    Some(n) => m.insert(k, n),
                    None => m.remove(&k),
                };
            }
        }
        Value::Array(a) if !a.is_empty() => {
            let j = i % a.len();
            if deeper(&a[j]) {
                apply(&mut a[j], rest, e);
            } else {
                match replacement(&a[j], e) {
                    Some(n) => a[j] = n,
                    None => {
                        a.remove(j);
                    }
                }
            }
        }
        _ => {}
    }
}

/// One of the `valid` documents with up to `max_edits` random edits (none sometimes, so
/// the valid path is exercised too).
pub fn edited(
    valid: Vec<Value>,
    keys: &'static [&'static str],
    texts: BoxedStrategy<String>,
    max_edits: usize,
) -> BoxedStrategy<Value> {
    (
        prop::sample::select(valid),
        prop::collection::vec(edit(keys, texts), 0..=max_edits),
    )
        .prop_map(|(mut doc, edits)| {
            for e in &edits {
                apply(&mut doc, &e.path, e);
            }
            doc
        })
        .boxed()
}

/// A corruption of a file: cut it at some length (or keep it whole), then overwrite a few
/// bytes anywhere, or in the first or last 256 bytes (where headers and footers are).
#[derive(Debug, Clone)]
pub struct Corruption {
    /// Keep this many bytes (modulo the length + 1); None keeps the whole file.
    pub cut: Option<usize>,
    /// (position, new byte, where: 0 anywhere, 1 near the start, 2 near the end).
    pub flips: Vec<(usize, u8, u8)>,
}

impl Corruption {
    /// The corrupted bytes.
    pub fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let keep = self.cut.map_or(bytes.len(), |c| c % (bytes.len() + 1));
        let mut out = bytes[..keep].to_vec();
        let n = out.len();
        if n > 0 {
            for &(pos, b, place) in &self.flips {
                let i = match place {
                    1 => pos % n.min(256),
                    2 => n - 1 - pos % n.min(256),
                    _ => pos % n,
                };
                out[i] = b;
            }
        }
        out
    }
}

/// Truncations, flips of a few bytes, or both.
pub fn corruption() -> impl Strategy<Value = Corruption> {
    let flips = prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..4);
    prop_oneof![
        (any::<usize>(), Just(vec![])).prop_map(|(c, f)| Corruption {
            cut: Some(c),
            flips: f
        }),
        flips.clone().prop_map(|f| Corruption {
            cut: None,
            flips: f
        }),
        (any::<usize>(), flips).prop_map(|(c, f)| Corruption {
            cut: Some(c),
            flips: f
        }),
    ]
}

/// File contents, shown as (lossy) text when a failing case is printed.
#[derive(Clone)]
pub struct Bytes(pub Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}
