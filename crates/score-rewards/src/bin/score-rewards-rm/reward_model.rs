//! Reward models, run by "engines": the shared base (`--model`) with every reward adapter
//! (LoRA + score head) attached under its own name, plus one engine per fully tuned reward
//! model (a *ForSequenceClassification folder, e.g. `train-rm-lora --full`) loaded from its
//! own folder with its own tokenizer. A rollout's raw score is the head value at its last
//! token (`rlhf_nn::scoring::last_token_scores`: the adapter's head, or a full model's base
//! `score` head), normalised with the constants train-rm-lora stored in the folder's
//! `rlhf_state.json`: `reward = (raw + reward_bias) * reward_scale`.
//!
//! Each engine scores the rollouts' token ids when its tokenizer is the one their lineage
//! records; otherwise they are refused, unless `--retokenize` has the engine encode the
//! rollout text again itself ([`TextInput`]): a rollout whose prompt came as chat messages
//! (the rollouts' `messages`, copied from the prompts by sample-rollouts) is rendered with
//! the reward model's own chat template as
//! `messages + [{"role": "assistant", "content": response}]` and tokenized as transformers'
//! `apply_chat_template(conversation, tokenize=True)` does, which is what off-the-shelf
//! reward models are trained on; without messages, or when the reward model's folder has no
//! chat template, the prompt text (as rendered for the policy) and the response are encoded
//! (with EOS when the response ended by it). Which way each reward model went is recorded
//! per column in the lineage and the run summary (`retokenized`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rlhf_core::chat::ChatTemplate;
use rlhf_core::error::CoreError;
use rlhf_core::lineage::Lineage;
use rlhf_core::records::{Message, RolloutRow};
use rlhf_core::tokenizer::Tokenizer;
use rlhf_nn::batch::SeqBatch;
use rlhf_nn::Model;
use tch::{Device, Kind};

use score_rewards::settings::{RewardModelKind, Settings};
use score_rewards::text_input::TextInput;

/// File name of the reward normalisation and training state in a reward model folder.
pub const STATE_FILE: &str = "rlhf_state.json";

/// Normalisation constants of one reward model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalisation {
    pub bias: f64,
    pub scale: f64,
}

impl Normalisation {
    /// No change.
    pub const IDENTITY: Normalisation = Normalisation {
        bias: 0.0,
        scale: 1.0,
    };

    /// `(raw + bias) * scale`.
    pub fn apply(&self, raw: f32) -> f32 {
        ((raw as f64 + self.bias) * self.scale) as f32
    }
}

/// What score-rewards needs from `rlhf_state.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardState {
    pub norm: Normalisation,
    /// Hash of the tokenizer the reward model was trained with.
    pub tokenizer_hash: Option<String>,
    /// Content hash of the base weights it was trained on.
    pub base_id: Option<String>,
    /// True when the folder holds a fully tuned model rather than an adapter.
    pub full: bool,
}

impl RewardState {
    /// Reads `dir/rlhf_state.json`; a folder without one is used unnormalised (with a
    /// warning), e.g. an adapter or a model trained by another tool.
    pub fn read(dir: &Path) -> Result<RewardState> {
        let path = dir.join(STATE_FILE);
        if !path.is_file() {
            tracing::warn!(
                "{}: no {STATE_FILE}; using raw reward-model scores (no normalisation)",
                dir.display()
            );
            return Ok(RewardState {
                norm: Normalisation::IDENTITY,
                tokenizer_hash: None,
                base_id: None,
                full: false,
            });
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CoreError::BadInput {
                path: path.clone(),
                row: None,
                message: format!("invalid JSON: {e}"),
            })?;
        let number = |key: &str, default: f64| -> Result<f64> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(x) => x.as_f64().filter(|f| f.is_finite()).ok_or_else(|| {
                    CoreError::BadInput {
                        path: path.clone(),
                        row: None,
                        message: format!("`{key}` is {x}, expected a finite number"),
                    }
                    .into()
                }),
            }
        };
        let text_of = |key: &str| v.get(key).and_then(|x| x.as_str()).map(String::from);
        Ok(RewardState {
            norm: Normalisation {
                bias: number("reward_bias", 0.0)?,
                scale: number("reward_scale", 1.0)?,
            },
            tokenizer_hash: text_of("tokenizer_hash"),
            base_id: text_of("base_id"),
            full: v.get("full").and_then(|x| x.as_bool()).unwrap_or(false),
        })
    }
}

/// What an engine scores.
enum Input {
    /// The rollouts' own token ids.
    RolloutTokens,
    /// The rollout text, encoded with the engine's tokenizer; conversations are rendered with
    /// `chat`, the chat template of the engine's folder, when it has one.
    Text { chat: Option<Box<ChatTemplate>> },
}

impl Input {
    /// Encoding the rollout text with `tokenizer` (whose folder's chat template, if any,
    /// renders conversations); `name` names the reward model in the log and in errors.
    fn text(tokenizer: &Tokenizer, name: &str) -> Result<Input> {
        if tokenizer.chat_template.is_none() {
            tracing::info!(
                "--retokenize: {name} has no chat template; encoding the rollouts' prompt text \
                 (as rendered for the policy) and response with its tokenizer"
            );
            return Ok(Input::Text { chat: None });
        }
        let chat = tokenizer
            .chat()
            .with_context(|| format!("{name}: reading its chat template"))?;
        tracing::info!(
            "--retokenize: {name}: rendering each prompt's chat messages and the response with \
             its chat template (rollouts without `messages`: their prompt text and response)"
        );
        Ok(Input::Text {
            chat: Some(Box::new(chat)),
        })
    }
}

/// The token ids a model scores for one rollout: `prompt ++ response`, read at its last token.
struct Sequence {
    prompt: Vec<i32>,
    response: Vec<i32>,
    /// How the text was encoded; None for the rollouts' own ids.
    text: Option<TextInput>,
}

/// One model in memory with the tokenizer its inputs are made with.
struct Engine {
    model: Model,
    tokenizer: Tokenizer,
    /// The folder it was loaded from (the base, or the full reward model), for messages.
    dir: PathBuf,
    input: Input,
    /// Rollouts scored by each way of encoding their text (empty for [`Input::RolloutTokens`]).
    text_inputs: BTreeMap<TextInput, usize>,
}

impl Engine {
    fn new(model: Model, tokenizer: Tokenizer, dir: PathBuf, input: Input) -> Engine {
        Engine {
            model,
            tokenizer,
            dir,
            input,
            text_inputs: BTreeMap::new(),
        }
    }

    /// Token ids to score for a rollout (read from `source`, named in errors).
    fn sequence(&self, row: &RolloutRow, source: &Path) -> Result<Sequence> {
        match (&self.input, &row.messages) {
            (Input::RolloutTokens, _) => Ok(Sequence {
                prompt: row.prompt_tokens.clone(),
                response: row.response_tokens.clone(),
                text: None,
            }),
            // The whole conversation is one "prompt": only its last token is scored, and the
            // template decides what follows the response (an end-of-turn token, no EOS).
            (Input::Text { chat: Some(chat) }, Some(messages)) => Ok(Sequence {
                prompt: self.conversation_ids(chat, messages, row, source)?,
                response: Vec::new(),
                text: Some(TextInput::ChatTemplate),
            }),
            (Input::Text { .. }, _) => {
                let prompt = self.tokenizer.encode(&row.prompt, true)?;
                let mut response = self.tokenizer.encode(&row.response, false)?;
                if row.finish_reason == "eos" {
                    if let Some(e) = self.tokenizer.eos_id() {
                        response.push(e as i32);
                    }
                }
                Ok(Sequence {
                    prompt,
                    response,
                    text: Some(TextInput::PromptText),
                })
            }
        }
    }

    /// `messages` with the response as the assistant's turn, rendered with `chat` and
    /// tokenized as `apply_chat_template(conversation, tokenize=True)` does (no special token
    /// added: the template writes BOS when the model wants one).
    fn conversation_ids(
        &self,
        chat: &ChatTemplate,
        messages: &[Message],
        row: &RolloutRow,
        source: &Path,
    ) -> Result<Vec<i32>> {
        let mut conversation = messages.to_vec();
        conversation.push(Message::new("assistant", &row.response));
        let text = chat.render(&conversation, false).with_context(|| {
            format!(
                "rollout `{}` of {}: the chat template of the reward model {} does not render \
                 its conversation",
                row.rollout_id,
                source.display(),
                self.dir.display()
            )
        })?;
        Ok(self.tokenizer.encode_rendered(&text)?)
    }

    /// One forward batch of `rows`, checked against the model's context and vocabulary.
    fn batch(&mut self, rows: &[&RolloutRow], source: &Path) -> Result<SeqBatch> {
        let max = self.model.config().max_position_embeddings as usize;
        let vocab = self.model.config().vocab_size as i32;
        let mut seqs = Vec::with_capacity(rows.len());
        for row in rows {
            let Sequence {
                prompt: p,
                response: r,
                text,
            } = self.sequence(row, source)?;
            if let Some(t) = text {
                *self.text_inputs.entry(t).or_default() += 1;
            }
            if p.len() + r.len() > max || p.len() + r.len() == 0 {
                return Err(CoreError::BadInput {
                    path: source.to_path_buf(),
                    row: None,
                    message: format!(
                        "rollout `{}` has {} tokens; the reward model {} takes 1 to {max}",
                        row.rollout_id,
                        p.len() + r.len(),
                        self.dir.display()
                    ),
                }
                .into());
            }
            if let Some(t) = p.iter().chain(&r).find(|&&t| t < 0 || t >= vocab) {
                return Err(CoreError::BadInput {
                    path: source.to_path_buf(),
                    row: None,
                    message: format!(
                        "rollout `{}`: token id {t} is outside the vocabulary of {vocab} of the \
                         reward model {} (hint: --retokenize)",
                        row.rollout_id,
                        self.dir.display()
                    ),
                }
                .into());
            }
            seqs.push((p, r));
        }
        Ok(SeqBatch::new(
            &seqs,
            self.tokenizer.pad_id as i32,
            self.model.device(),
        )?)
    }
}

/// What the rollouts say about their tokens, for the tokenizer check of each engine.
struct RolloutTokens<'a> {
    /// The rollouts, named for messages.
    name: &'a str,
    /// Their lineage's tokenizer hash.
    tokenizer: Option<&'a str>,
    retokenize: bool,
}

impl RolloutTokens<'_> {
    /// What a model with `tokenizer` (named `model_name`) scores: the rollouts' token ids, or
    /// their text encoded with `tokenizer`; an error when the token ids are another
    /// tokenizer's and --retokenize is off.
    fn input_for(&self, model_name: &str, tokenizer: &Tokenizer) -> Result<Input> {
        match self.tokenizer {
            Some(h) if self.retokenize && h != tokenizer.hash() => {
                Input::text(tokenizer, model_name)
            }
            Some(h) => {
                Lineage::check_tokenizer(self.name, Some(h), model_name, tokenizer.hash())
                    .map_err(|e| {
                        anyhow::Error::new(e).context(
                            "refusing to score token ids made by another tokenizer \
                             (--retokenize encodes the text with the reward model's tokenizer \
                             instead)",
                        )
                    })?;
                Ok(Input::RolloutTokens)
            }
            None if self.retokenize => Input::text(tokenizer, model_name),
            None => {
                tracing::warn!(
                    "{} records no tokenizer; trusting its token ids for {model_name} (use \
                     --retokenize to encode the text)",
                    self.name
                );
                Ok(Input::RolloutTokens)
            }
        }
    }
}

/// One reward model: a column of the scores.
#[derive(Debug, Clone)]
pub struct Member {
    /// The engine that runs it (index into the engines).
    engine: usize,
    /// Adapter name inside the engine's model; None for a full model's own `score` head.
    adapter: Option<String>,
    /// Its scores column.
    pub column: String,
    pub norm: Normalisation,
}

/// Every reward model of a run, on their engines.
pub struct TorchRewardModels {
    engines: Vec<Engine>,
    members: Vec<Member>,
}

impl TorchRewardModels {
    /// Checks every tokenizer and normalisation file first, then loads the base once with
    /// every reward adapter attached, and each full reward model from its folder.
    /// `rollouts_name`/`rollouts_tokenizer` describe the rollouts for error messages.
    pub fn load(
        settings: &Settings,
        on: (Device, Kind),
        rollouts_name: &str,
        rollouts_tokenizer: Option<&str>,
    ) -> Result<TorchRewardModels> {
        let rollouts = RolloutTokens {
            name: rollouts_name,
            tokenizer: rollouts_tokenizer,
            retokenize: settings.retokenize,
        };
        let states = settings
            .reward_models
            .iter()
            .map(|rm| RewardState::read(&rm.dir).map(|s| (rm, s)))
            .collect::<Result<Vec<_>>>()?;

        // The base and its tokenizer, when some reward model is an adapter.
        let base = match &settings.model_dir {
            Some(dir)
                if states
                    .iter()
                    .any(|(rm, _)| rm.kind == RewardModelKind::Adapter) =>
            {
                let tokenizer = Tokenizer::from_dir(dir)?;
                let name = format!("reward model base {} (tokenizer.json)", dir.display());
                let input = rollouts.input_for(&name, &tokenizer)?;
                Some((dir.clone(), tokenizer, name, input))
            }
            _ => None,
        };
        // Cheap checks of every member before any weights load; full models' tokenizers
        // (None for adapters, which use the base's).
        let mut own_tokenizers = Vec::new();
        for (rm, s) in &states {
            let state_name = format!("reward model {} ({STATE_FILE})", rm.dir.display());
            match rm.kind {
                RewardModelKind::Adapter => {
                    if s.full {
                        return Err(CoreError::BadInput {
                            path: rm.dir.clone(),
                            row: None,
                            message: format!(
                                "{STATE_FILE} says `full: true`, but the folder holds an adapter \
                                 (adapter_config.json) and no model config.json"
                            ),
                        }
                        .into());
                    }
                    let Some((_, tokenizer, base_name, _)) = &base else {
                        return Err(CoreError::usage(format!(
                            "--reward-model {} is an adapter: it needs --model, the base model \
                             folder it sits on",
                            rm.dir.display()
                        ))
                        .into());
                    };
                    if let Some(h) = &s.tokenizer_hash {
                        Lineage::check_tokenizer(&state_name, Some(h), base_name, tokenizer.hash())
                            .context(
                                "the reward adapter was trained on a base with another tokenizer",
                            )?;
                    }
                    own_tokenizers.push(None);
                }
                RewardModelKind::Full => {
                    let tokenizer = Tokenizer::from_dir(&rm.dir)?;
                    let name = format!("reward model {} (tokenizer.json)", rm.dir.display());
                    if let Some(h) = &s.tokenizer_hash {
                        Lineage::check_tokenizer(&state_name, Some(h), &name, tokenizer.hash())
                            .context(
                                "the full reward model's tokenizer.json is not the tokenizer it \
                                 was trained with",
                            )?;
                    }
                    let input = rollouts.input_for(&name, &tokenizer)?;
                    own_tokenizers.push(Some((tokenizer, input)));
                }
            }
        }

        let mut engines = Vec::new();
        if let Some((dir, tokenizer, _, input)) = base {
            let model = Model::load(&dir, on.0, on.1)
                .with_context(|| format!("loading base model {}", dir.display()))?;
            engines.push(Engine::new(model, tokenizer, dir, input));
        }
        let mut members = Vec::new();
        for (k, ((rm, s), own)) in states.iter().zip(own_tokenizers).enumerate() {
            let (engine, adapter) = match own {
                None => {
                    let name = format!("reward{k}");
                    attach_adapter(&mut engines[0], &name, &rm.dir, s)?;
                    (0, Some(name))
                }
                Some((tokenizer, input)) => {
                    engines.push(load_full(on, &rm.dir, tokenizer, input)?);
                    (engines.len() - 1, None)
                }
            };
            members.push(Member {
                engine,
                adapter,
                column: rm.column.clone(),
                norm: s.norm,
            });
        }
        Ok(TorchRewardModels { engines, members })
    }
}

/// Attaches the reward adapter in `dir` to the base engine as `name`, after checking the
/// base it records; refuses an adapter without a score head.
fn attach_adapter(base: &mut Engine, name: &str, dir: &Path, state: &RewardState) -> Result<()> {
    if let Some(b) = &state.base_id {
        let base_id = base.model.base_id();
        if *b != base_id {
            return Err(CoreError::Mismatch {
                what: "base model",
                left_name: format!("reward adapter {} ({STATE_FILE} base_id)", dir.display()),
                left: b.clone(),
                right_name: format!("--model {}", base.dir.display()),
                right: base_id,
                hint: "give the base model the reward adapter was trained on".into(),
            }
            .into());
        }
    }
    base.model
        .load_adapter(name, dir)
        .with_context(|| format!("loading reward adapter {}", dir.display()))?;
    if !base.model.adapter_has_head(name)? {
        return Err(CoreError::BadInput {
            path: dir.to_path_buf(),
            row: None,
            message: "the adapter has no score head: not a reward model".into(),
        }
        .into());
    }
    Ok(())
}

/// Loads a fully tuned reward model folder as its own engine; refuses one whose weights
/// hold no `score.weight`.
fn load_full(
    (device, kind): (Device, Kind),
    dir: &Path,
    tokenizer: Tokenizer,
    input: Input,
) -> Result<Engine> {
    let model = Model::load(dir, device, kind)
        .with_context(|| format!("loading reward model {}", dir.display()))?;
    let has_score = model
        .base_named_tensors()
        .iter()
        .any(|(n, _)| n == "score.weight");
    if !has_score {
        return Err(CoreError::BadInput {
            path: dir.to_path_buf(),
            row: None,
            message: "the model has no `score.weight` (its score head): not a reward model".into(),
        }
        .into());
    }
    Ok(Engine::new(model, tokenizer, dir.to_path_buf(), input))
}

impl score_rewards::run::RewardModels for TorchRewardModels {
    /// The reward models' tokenizer hash when they share one (recorded in the scores
    /// lineage); None when they differ (possible only with --retokenize).
    fn tokenizer_hash(&self) -> Option<&str> {
        let first = self.engines.first()?.tokenizer.hash();
        self.engines
            .iter()
            .all(|e| e.tokenizer.hash() == first)
            .then_some(first)
    }

    /// For each reward model that encodes the rollout text itself (--retokenize), its
    /// column and the number of rollouts it encoded each way, in column order; reward models
    /// scoring the rollouts' own token ids are left out.
    fn text_inputs(&self) -> Vec<(&str, &BTreeMap<TextInput, usize>)> {
        self.members
            .iter()
            .map(|m| (m.column.as_str(), &self.engines[m.engine].text_inputs))
            .filter(|(_, counts)| !counts.is_empty())
            .collect()
    }

    /// Normalised scores of `rows` (one forward batch per engine): `[member][row]`.
    /// `source` names the rollouts in errors.
    fn score(&mut self, rows: &[&RolloutRow], source: &Path) -> Result<Vec<Vec<f32>>> {
        let _guard = tch::no_grad_guard();
        let batches = self
            .engines
            .iter_mut()
            .map(|e| e.batch(rows, source))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let raw = rlhf_nn::scoring::last_token_scores(
                &self.engines[m.engine].model,
                m.adapter.as_deref(),
                &batches[m.engine],
                false,
            )?;
            let raw: Vec<f32> =
                Vec::<f32>::try_from(raw.to_kind(Kind::Float).to_device(Device::Cpu))
                    .context("reading reward-model scores")?;
            out.push(raw.into_iter().map(|x| m.norm.apply(x)).collect());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_gives_the_normalisation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(STATE_FILE),
            r#"{"format_version": 1, "reward_bias": -2.0, "reward_scale": 0.5, "tokenizer_hash": "abc", "base_id": "b1", "full": false}"#,
        )
        .unwrap();
        let s = RewardState::read(dir.path()).unwrap();
        assert_eq!(
            s.norm,
            Normalisation {
                bias: -2.0,
                scale: 0.5
            }
        );
        assert_eq!(s.norm.apply(4.0), 1.0);
        assert_eq!(s.tokenizer_hash.as_deref(), Some("abc"));
        std::fs::write(dir.path().join(STATE_FILE), r#"{"reward_bias": "x"}"#).unwrap();
        let err = RewardState::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`reward_bias`"), "{err}");
        std::fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
        assert_eq!(
            RewardState::read(dir.path()).unwrap().norm,
            Normalisation::IDENTITY
        );
    }
}
