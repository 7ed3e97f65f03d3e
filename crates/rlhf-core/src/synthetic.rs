//! The embedded synthetic task: short product reviews with a programmatic gold preference,
//! in the spirit of the synthetic oracle of Christiano et al. 2017 ("Deep reinforcement
//! learning from human preferences", <https://arxiv.org/abs/1706.03741>).
//!
//! # The task
//!
//! A prompt asks for a review of an item, e.g. `Write a review of the red phone.`
//! (4 prompt templates x 10 neutral descriptors x 16 items = 640 distinct prompts).
//! A response is one to three short lowercase sentences (5 to 18 words) built from a fixed
//! vocabulary; prompts and responses together use 96 distinct words, e.g.
//! ` the phone is very great. the design is nice and the price is poor.`
//!
//! # The gold function (the "human")
//!
//! `gold_score(prompt, response)` is deterministic and depends only on the text:
//!
//! ```text
//! words     = lowercase alphabetic words of the response
//! sentiment = clamp(#distinct POSITIVE words - #distinct NEGATIVE words, -3, +3)
//! mention   = 0.5 if the response names the prompt's item, else 0
//! length    = 0.25 * (number of words outside the range [8, 16])
//! gold      = sentiment + mention - length
//! ```
//!
//! So the best responses (gold 3.5) praise the item by name with three different positive
//! words in 8-16 words; repeating one word does not help (distinct words count), rambling
//! and one-word answers are penalised. There is no negation handling: "not great" counts as
//! positive, which the corpus never contains.
//!
//! # The corpus
//!
//! Each supervised example draws a sentiment class uniformly from strongly negative, mildly
//! negative, neutral, mixed, mildly positive and strongly positive, and a length of one to
//! three sentences; about 20% of examples never name the item ("this one", "it"). The
//! supervised examples' gold scores spread from -3.5 to 3.5 with mean about 0.1 and
//! standard deviation about 1.4 (seed 0, 512 prompts), so a model imitating them samples
//! responses of varied gold score and RLHF has room to improve them. Prompts are rendered
//! with the plain chat template ("User: ...\nAssistant:") unless raw prompts are asked
//! for, and completions start with a space. Everything is drawn from a ChaCha8 stream of
//! the seed; ids are content hashes and the train/eval split of prompts is by hash
//! ([`crate::hash::split_for`]), so a seed gives byte-identical data everywhere; the
//! supervised examples of eval prompts carry split = eval.

use std::collections::HashSet;

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::chat::ChatTemplate;
use crate::error::{CoreError, Result};
use crate::hash::{content_id, split_for};
use crate::records::{Message, PromptRow, SftRow};

/// Items that prompts ask about.
pub const ITEMS: [&str; 16] = [
    "phone", "movie", "book", "hotel", "pizza", "laptop", "game", "song", "camera", "coffee",
    "bike", "jacket", "lamp", "chair", "watch", "garden",
];

/// Neutral descriptors that vary the prompts.
pub const DESCRIPTORS: [&str; 10] = [
    "red", "blue", "green", "black", "white", "new", "old", "small", "big", "local",
];

/// Prompt templates; `{}` is replaced by "<descriptor> <item>".
pub const PROMPT_TEMPLATES: [&str; 4] = [
    "Write a review of the {}.",
    "What do you think of the {}?",
    "Describe your experience with the {}.",
    "Give your opinion on the {}.",
];

/// Words the gold function counts as positive.
pub const POSITIVE: [&str; 12] = [
    "great",
    "good",
    "excellent",
    "lovely",
    "amazing",
    "wonderful",
    "perfect",
    "fun",
    "nice",
    "superb",
    "pleasant",
    "brilliant",
];

/// Words the gold function counts as negative.
pub const NEGATIVE: [&str; 12] = [
    "bad", "awful", "terrible", "poor", "boring", "broken", "horrible", "ugly", "dull", "sad",
    "weak", "annoying",
];

/// Adjectives without sentiment.
pub const NEUTRAL: [&str; 6] = ["okay", "fine", "average", "normal", "plain", "simple"];

/// Aspects a sentence can talk about.
pub const ASPECTS: [&str; 8] = [
    "design", "price", "quality", "size", "look", "feel", "value", "finish",
];

/// Intensifiers.
pub const ADVERBS: [&str; 4] = ["very", "really", "quite", "so"];

/// Responses shorter than this many words are penalised.
pub const TARGET_MIN_WORDS: usize = 8;
/// Responses longer than this many words are penalised.
pub const TARGET_MAX_WORDS: usize = 16;
/// Generated responses have at most this many words (and at least 5).
pub const MAX_RESPONSE_WORDS: usize = 18;
/// Cap on |#positive - #negative|.
pub const SENTIMENT_CAP: i32 = 3;
/// Bonus for naming the prompt's item.
pub const MENTION_BONUS: f32 = 0.5;
/// Penalty per word outside [TARGET_MIN_WORDS, TARGET_MAX_WORDS].
pub const LENGTH_PENALTY_PER_WORD: f32 = 0.25;

/// The parts of a gold score.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldBreakdown {
    /// Distinct positive words in the response.
    pub positive: usize,
    /// Distinct negative words in the response.
    pub negative: usize,
    /// clamp(positive - negative, -3, 3).
    pub sentiment: f32,
    /// The item the prompt asks about, when it names one.
    pub item: Option<&'static str>,
    /// MENTION_BONUS when the response names the item.
    pub mention: f32,
    /// Words in the response.
    pub words: usize,
    /// Length penalty (>= 0, subtracted).
    pub length_penalty: f32,
    /// sentiment + mention - length_penalty.
    pub total: f32,
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
}

/// The item a prompt asks about: the last known item word in it (the prompt may be raw
/// or rendered with a chat template).
pub fn prompt_item(prompt: &str) -> Option<&'static str> {
    let mut found = None;
    for w in words(prompt) {
        if let Some(item) = ITEMS.iter().find(|i| **i == w) {
            found = Some(*item);
        }
    }
    found
}

/// The gold score with its parts. See the module docs for the formula.
pub fn gold_breakdown(prompt: &str, response: &str) -> GoldBreakdown {
    let item = prompt_item(prompt);
    let mut pos: HashSet<String> = HashSet::new();
    let mut neg: HashSet<String> = HashSet::new();
    let mut n = 0usize;
    let mut mentioned = false;
    for w in words(response) {
        n += 1;
        if POSITIVE.contains(&w.as_str()) {
            pos.insert(w);
        } else if NEGATIVE.contains(&w.as_str()) {
            neg.insert(w);
        } else if item == Some(w.as_str()) {
            mentioned = true;
        }
    }
    let diff = (pos.len() as i64 - neg.len() as i64)
        .clamp(-SENTIMENT_CAP as i64, SENTIMENT_CAP as i64) as f32;
    let outside = TARGET_MIN_WORDS.saturating_sub(n) + n.saturating_sub(TARGET_MAX_WORDS);
    let length_penalty = LENGTH_PENALTY_PER_WORD * outside as f32;
    let mention = if mentioned { MENTION_BONUS } else { 0.0 };
    GoldBreakdown {
        positive: pos.len(),
        negative: neg.len(),
        sentiment: diff,
        item,
        mention,
        words: n,
        length_penalty,
        total: diff + mention - length_penalty,
    }
}

/// The gold score of a response to a prompt (higher is better; at most 3.5).
pub fn gold_score(prompt: &str, response: &str) -> f32 {
    gold_breakdown(prompt, response).total
}

/// Every distinct prompt of the task (raw text, before any chat template), in a fixed order.
pub fn all_prompts() -> Vec<(String, &'static str)> {
    let mut out = Vec::with_capacity(PROMPT_TEMPLATES.len() * DESCRIPTORS.len() * ITEMS.len());
    for t in PROMPT_TEMPLATES {
        for d in DESCRIPTORS {
            for item in ITEMS {
                out.push((t.replace("{}", &format!("{d} {item}")), item));
            }
        }
    }
    out
}

/// A sentiment class of a generated response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sentiment {
    StrongNegative,
    MildNegative,
    Neutral,
    Mixed,
    MildPositive,
    StrongPositive,
}

impl Sentiment {
    const ALL: [Sentiment; 6] = [
        Sentiment::StrongNegative,
        Sentiment::MildNegative,
        Sentiment::Neutral,
        Sentiment::Mixed,
        Sentiment::MildPositive,
        Sentiment::StrongPositive,
    ];
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[(rng.next_u64() % items.len() as u64) as usize]
}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
}

/// The adjective of sentence `i` for a sentiment class.
fn adjective(rng: &mut ChaCha8Rng, s: Sentiment, i: usize) -> &'static str {
    let pool: &[&str] = match s {
        Sentiment::StrongPositive => &POSITIVE,
        Sentiment::StrongNegative => &NEGATIVE,
        Sentiment::MildPositive if i == 0 => &POSITIVE,
        Sentiment::MildNegative if i == 0 => &NEGATIVE,
        Sentiment::Mixed if i.is_multiple_of(2) => &POSITIVE,
        Sentiment::Mixed => &NEGATIVE,
        _ => &NEUTRAL,
    };
    pick(rng, pool)
}

/// One generated response (with a leading space, ready to follow "Assistant:").
pub fn sample_response(rng: &mut ChaCha8Rng, item: &str, sentiment: Sentiment) -> String {
    let sentences = 1 + (rng.next_u64() % 3) as usize;
    let name_item = !chance(rng, 0.2);
    let subject = |named: bool| {
        if named {
            format!("the {item}")
        } else {
            "this one".to_string()
        }
    };
    let mut parts: Vec<String> = Vec::with_capacity(sentences);
    let mut total = 0usize;
    for i in 0..sentences {
        let adj = adjective(rng, sentiment, i);
        let adv = pick(rng, &ADVERBS);
        let aspect = pick(rng, &ASPECTS);
        let s = match rng.next_u64() % 7 {
            0 => format!("{} is {adv} {adj}.", subject(name_item && i == 0)),
            1 => format!("the {aspect} was {adv} {adj}."),
            2 => format!("i think it is {adj}."),
            3 if name_item => format!("overall a {adv} {adj} {item}."),
            3 => format!("overall it was {adv} {adj}."),
            4 => {
                let adj2 = adjective(rng, sentiment, i + 1);
                let mut aspect2 = pick(rng, &ASPECTS);
                if aspect2 == aspect {
                    aspect2 = if aspect == "design" {
                        "price"
                    } else {
                        "design"
                    };
                }
                format!("the {aspect} is {adj} and the {aspect2} is {adj2}.")
            }
            5 => format!("i found the {aspect} {adv} {adj}."),
            _ => format!("{} was {adj} for the price.", subject(name_item)),
        };
        let n = s.split(' ').count();
        if !parts.is_empty() && total + n > MAX_RESPONSE_WORDS {
            break;
        }
        total += n;
        parts.push(s);
    }
    format!(" {}", parts.join(" "))
}

/// How prompts are written in the generated files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptStyle {
    /// Rendered with the plain chat template: "User: ...\nAssistant:".
    Chat,
    /// The raw request text.
    Raw,
}

/// Settings of the generator.
#[derive(Debug, Clone)]
pub struct SyntheticConfig {
    /// Seed of the ChaCha8 stream (prompt choice and responses).
    pub seed: u64,
    /// Distinct prompts to draw (at most 640), split train/eval by hash.
    pub num_prompts: usize,
    /// Fraction of prompts held out for evaluation.
    pub eval_fraction: f64,
    /// Supervised examples per prompt.
    pub completions_per_prompt: usize,
    /// Raw or chat-rendered prompts.
    pub prompt_style: PromptStyle,
}

/// The generated task.
#[derive(Debug, Clone)]
pub struct SyntheticData {
    /// Training prompts (split = train).
    pub prompts: Vec<PromptRow>,
    /// Held-out prompts (split = eval).
    pub eval_prompts: Vec<PromptRow>,
    /// Supervised examples; those of eval prompts carry split = eval.
    pub sft: Vec<SftRow>,
}

/// Source name written in the generated rows.
pub const SOURCE: &str = "synthetic-reviews";

/// Generates prompts, eval prompts and supervised examples from a seed.
pub fn generate(cfg: &SyntheticConfig) -> Result<SyntheticData> {
    let mut pool = all_prompts();
    if cfg.num_prompts == 0 || cfg.num_prompts > pool.len() {
        return Err(CoreError::Usage(format!(
            "--num-prompts {} is out of range: the synthetic task has 1 to {} distinct prompts",
            cfg.num_prompts,
            pool.len()
        )));
    }
    if !(0.0..1.0).contains(&cfg.eval_fraction) {
        return Err(CoreError::Usage(format!(
            "--eval-fraction {} must be in [0, 1)",
            cfg.eval_fraction
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    // Partial Fisher-Yates: the first num_prompts entries are a seeded sample.
    for i in 0..cfg.num_prompts {
        let j = i + (rng.next_u64() % (pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(cfg.num_prompts);
    let template = ChatTemplate::plain();
    let mut data = SyntheticData {
        prompts: Vec::new(),
        eval_prompts: Vec::new(),
        sft: Vec::new(),
    };
    let mut seen = HashSet::new();
    for (raw, item) in pool {
        let messages = vec![Message::new("user", &raw)];
        let prompt = match cfg.prompt_style {
            PromptStyle::Chat => template.render(&messages, true)?,
            PromptStyle::Raw => raw.clone(),
        };
        let prompt_id = content_id(&[&prompt]);
        let split = split_for(&prompt_id, cfg.eval_fraction).to_string();
        for _ in 0..cfg.completions_per_prompt {
            let sentiment = pick(&mut rng, &Sentiment::ALL);
            let completion = sample_response(&mut rng, item, sentiment);
            let sft_id = content_id(&[&prompt, &completion]);
            if !seen.insert(sft_id.clone()) {
                continue; // an exact duplicate of an earlier example
            }
            data.sft.push(SftRow {
                sft_id,
                prompt_id: prompt_id.clone(),
                prompt: prompt.clone(),
                completion,
                messages: Some(messages.clone()),
                split: split.clone(),
                source: SOURCE.to_string(),
                prompt_tokens: None,
                completion_tokens: None,
            });
        }
        let row = PromptRow {
            prompt_id,
            prompt,
            messages: Some(messages),
            prompt_tokens: None,
            split: split.clone(),
            source: SOURCE.to_string(),
            reference: None,
        };
        if split == "eval" {
            data.eval_prompts.push(row);
        } else {
            data.prompts.push(row);
        }
    }
    Ok(data)
}

/// Every word the task can produce (prompts, chat roles and responses), sorted.
pub fn vocabulary() -> Vec<String> {
    let mut v: HashSet<String> = HashSet::new();
    for (p, _) in all_prompts() {
        v.extend(words(&p));
    }
    for list in [
        &POSITIVE[..],
        &NEGATIVE[..],
        &NEUTRAL[..],
        &ASPECTS[..],
        &ADVERBS[..],
        &ITEMS[..],
    ] {
        v.extend(list.iter().map(|w| w.to_string()));
    }
    for w in
        "user assistant the is it was i think overall a and found for price this one".split(' ')
    {
        v.insert(w.to_string());
    }
    let mut v: Vec<String> = v.into_iter().collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "User: Write a review of the red phone.\nAssistant:";

    #[test]
    fn gold_formula_on_hand_written_examples() {
        // 3 distinct positives (capped), mention, 10 words: 3 + 0.5.
        let r = " the phone is great and the price is nice. superb value.";
        let b = gold_breakdown(P, r);
        assert_eq!((b.positive, b.negative, b.words), (3, 0, 11));
        assert_eq!(b.item, Some("phone"));
        assert_eq!(b.total, 3.5);
        // Repeats count once; 3 words -> 5 short -> -1.25; no mention.
        assert_eq!(gold_score(P, "great great great"), 1.0 - 1.25);
        // Negative, 8 words, mention.
        assert_eq!(
            gold_score(P, "the phone was awful and the look bad"),
            -2.0 + 0.5
        );
        // 20 words: 4 too many.
        let long = "okay ".repeat(20);
        assert_eq!(gold_score(P, &long), -1.0);
        // Empty response: 8 words short.
        assert_eq!(gold_score(P, ""), -2.0);
        // Wrong item is not a mention.
        assert_eq!(gold_score(P, "the movie is okay and the size is fine"), 0.0);
    }

    #[test]
    fn generation_is_deterministic_and_splits_by_hash() {
        let cfg = SyntheticConfig {
            seed: 7,
            num_prompts: 200,
            eval_fraction: 0.2,
            completions_per_prompt: 4,
            prompt_style: PromptStyle::Chat,
        };
        let a = generate(&cfg).unwrap();
        let b = generate(&cfg).unwrap();
        assert_eq!(a.sft, b.sft);
        assert_eq!(a.prompts.len() + a.eval_prompts.len(), 200);
        assert!(a.eval_prompts.len() > 20 && a.eval_prompts.len() < 70);
        let train: HashSet<_> = a.prompts.iter().map(|p| &p.prompt).collect();
        assert!(a.eval_prompts.iter().all(|p| !train.contains(&p.prompt)));
        let other = generate(&SyntheticConfig { seed: 8, ..cfg }).unwrap();
        assert_ne!(a.sft, other.sft);
        assert!(a.prompts[0].prompt.starts_with("User: "));
        assert!(a.prompts[0].prompt.ends_with("\nAssistant:"));
    }

    #[test]
    fn corpus_has_spread_of_gold_and_bounded_lengths_and_vocab() {
        let cfg = SyntheticConfig {
            seed: 1,
            num_prompts: 640,
            eval_fraction: 0.1,
            completions_per_prompt: 4,
            prompt_style: PromptStyle::Raw,
        };
        let d = generate(&cfg).unwrap();
        let scores: Vec<f32> = d
            .sft
            .iter()
            .map(|r| gold_score(&r.prompt, &r.completion))
            .collect();
        let mean = scores.iter().sum::<f32>() / scores.len() as f32;
        let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / scores.len() as f32;
        assert!(mean.abs() < 0.6, "mean gold {mean}");
        assert!(var.sqrt() > 1.2, "gold std {}", var.sqrt());
        assert!(scores.iter().any(|&s| s >= 3.0) && scores.iter().any(|&s| s <= -2.5));
        let vocab: HashSet<String> = vocabulary().into_iter().collect();
        assert!(vocab.len() >= 60 && vocab.len() <= 150, "{}", vocab.len());
        for r in &d.sft {
            let n = words(&r.completion).count();
            assert!(
                (5..=MAX_RESPONSE_WORDS).contains(&n),
                "{n} words: {}",
                r.completion
            );
            for w in words(&r.completion).chain(words(&r.prompt)) {
                assert!(vocab.contains(&w), "word {w} not in vocabulary");
            }
        }
    }

    #[test]
    fn out_of_range_settings_are_usage_errors() {
        let cfg = SyntheticConfig {
            seed: 0,
            num_prompts: 641,
            eval_fraction: 0.1,
            completions_per_prompt: 1,
            prompt_style: PromptStyle::Raw,
        };
        assert!(generate(&cfg).unwrap_err().to_string().contains("1 to 640"));
    }
}
