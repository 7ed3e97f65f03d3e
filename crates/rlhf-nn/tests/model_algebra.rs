//! Value tests on small random models (no Python needed): LoRA algebra (a fresh adapter is
//! the base exactly, merged equals unmerged), adapter and model round trips through disk,
//! KV-cache decoding against full forwards, padding invariance, and load errors.

use rlhf_nn::batch::SeqBatch;
use rlhf_nn::generate::{generate, SamplingParams};
use rlhf_nn::scoring::{last_token_scores, token_logprobs};
use rlhf_nn::{HeadKind, LoraConfig, Model, ModelConfig};
use tch::{Device, Kind, Tensor};

fn model(preset: &str) -> Model {
    let mut cfg = ModelConfig::preset(preset).unwrap();
    cfg.vocab_size = 97;
    Model::random(&cfg, Device::Cpu, Kind::Float, 3).unwrap()
}

fn ids() -> (Tensor, Tensor) {
    let ids = Tensor::from_slice(&[5i64, 9, 17, 3, 44, 2, 8, 61, 7, 7, 1, 90]).view([2, 6]);
    let mask = Tensor::ones([2, 6], (Kind::Int64, Device::Cpu));
    (ids, mask)
}

fn logits(m: &Model, adapter: Option<&str>) -> Tensor {
    let _g = tch::no_grad_guard();
    let (ids, mask) = ids();
    m.lm_logits(
        &m.forward(&ids, &mask, adapter, false).unwrap(),
        adapter,
        false,
    )
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Makes B non-zero so the adapter changes the output.
fn perturb(m: &Model, name: &str) {
    let _g = tch::no_grad_guard();
    for (i, (n, t)) in m
        .adapter_named_parameters(name)
        .unwrap()
        .into_iter()
        .enumerate()
    {
        if n.contains("lora_B") {
            let r = rlhf_nn::rng::normal_tensor(i as u64, &n, &t.size(), 0.2);
            t.shallow_clone().copy_(&r);
        }
    }
}

/// Each greedy token (and its log-prob) equals the argmax of a full forward over the prompt
/// and the tokens before it (no cache), with `adapter` on the blocks and the LM head.
fn greedy_is_argmax_of_full_forwards(
    m: &Model,
    adapter: Option<&str>,
    prompt: &[i32],
    tokens: &[i32],
    logprobs: &[f32],
    what: &str,
) {
    let _g = tch::no_grad_guard();
    let mut seq: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    for (k, &tok) in tokens.iter().enumerate() {
        let n = seq.len() as i64;
        let ids = Tensor::from_slice(&seq).view([1, n]);
        let mask = Tensor::ones([1, n], (Kind::Int64, Device::Cpu));
        let hidden = m.forward(&ids, &mask, adapter, false).unwrap();
        let l = m
            .lm_logits(&hidden, adapter, false)
            .unwrap()
            .select(1, n - 1);
        assert_eq!(
            l.argmax(-1, false).int64_value(&[0]),
            tok as i64,
            "{what}: step {k}"
        );
        let lp = l
            .log_softmax(-1, Kind::Float)
            .double_value(&[0, tok as i64]);
        assert!((lp - logprobs[k] as f64).abs() < 1e-4, "{what}: step {k}");
        seq.push(tok as i64);
    }
}

/// The error of attaching a fresh adapter on `targets` (it must be refused).
fn add_error(m: &mut Model, targets: &[&str], head: Option<HeadKind>) -> String {
    m.add_adapter("refused", &lora(targets), head, 1)
        .unwrap_err()
        .to_string()
}

fn lora(targets: &[&str]) -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 12.0, // alpha != r: a wrong scale cannot hide behind B = 0 checks
        dropout: 0.1,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        use_rslora: false,
    }
}

#[test]
fn fresh_adapter_is_the_base_exactly_and_merge_matches() {
    for (preset, targets) in [
        ("llama-tiny", vec!["all-linear"]),
        ("llama-tiny", vec!["all-linear", "lm_head"]),
        ("qwen2-tiny", vec!["q_proj", "v_proj"]),
        ("gpt2-tiny", vec!["c_attn", "c_fc"]),
    ] {
        let mut m = model(preset);
        let base = logits(&m, None);
        m.add_adapter("p", &lora(&targets), None, 11).unwrap();
        let fresh = logits(&m, Some("p"));
        assert_eq!(
            max_diff(&base, &fresh),
            0.0,
            "{preset}: fresh adapter differs from base"
        );
        perturb(&m, "p");
        let adapted = logits(&m, Some("p"));
        assert!(
            max_diff(&base, &adapted) > 1e-3,
            "{preset}: perturbed adapter has no effect"
        );
        // The base is untouched by the adapter (reference policy = adapter off).
        assert_eq!(max_diff(&base, &logits(&m, None)), 0.0);
        // Round trip through a PEFT folder.
        let dir = tempfile::tempdir().unwrap();
        m.save_adapter("p", dir.path()).unwrap();
        m.load_adapter("q", dir.path()).unwrap();
        assert_eq!(
            max_diff(&adapted, &logits(&m, Some("q"))),
            0.0,
            "{preset}: reloaded adapter differs"
        );
        // Merge: W + scale B A equals the unmerged adapter.
        m.merge_adapter("p").unwrap();
        let merged = logits(&m, None);
        assert!(
            max_diff(&adapted, &merged) < 1e-4,
            "{preset}: merged differs by {}",
            max_diff(&adapted, &merged)
        );
        // Merged model saved and reloaded gives the same logits.
        let mdir = tempfile::tempdir().unwrap();
        m.save_pretrained(mdir.path()).unwrap();
        let back = Model::load(mdir.path(), Device::Cpu, Kind::Float).unwrap();
        assert_eq!(
            max_diff(&merged, &logits(&back, None)),
            0.0,
            "{preset}: save/load changed logits"
        );
    }
}

#[test]
fn lm_head_lora_is_applied_wherever_logits_are_made() {
    // `all-linear` leaves the LM head alone (as PEFT does); `lm_head` names it.
    let mut m = model("llama-tiny");
    m.add_adapter("blocks", &lora(&["all-linear"]), None, 1)
        .unwrap();
    m.add_adapter("head", &lora(&["lm_head"]), None, 1).unwrap();
    let names = |m: &Model, a: &str| -> Vec<String> {
        m.adapter_named_parameters(a)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert!(names(&m, "blocks")
        .iter()
        .all(|n| !n.starts_with("lm_head")));
    assert_eq!(
        names(&m, "head"),
        ["lm_head.lora_A.weight", "lm_head.lora_B.weight"]
    );
    perturb(&m, "head");
    let base = logits(&m, None);
    let adapted = logits(&m, Some("head"));
    assert!(
        max_diff(&base, &adapted) > 1e-3,
        "the head's LoRA has no effect"
    );
    // Log-probs for training and the cached decode of sampling both see it.
    let batch = SeqBatch::new(&[(vec![5, 9, 17], vec![3, 44])], 0, Device::Cpu).unwrap();
    let lp = token_logprobs(&m, Some("head"), &batch, false).unwrap();
    let lp0 = token_logprobs(&m, None, &batch, false).unwrap();
    assert!(max_diff(&lp, &lp0) > 1e-4);
    let params = SamplingParams {
        max_new_tokens: 6,
        temperature: 0.0,
        ..Default::default()
    };
    let prompt = vec![5, 9, 17];
    let out = generate(
        &m,
        Some("head"),
        std::slice::from_ref(&prompt),
        &[0],
        &params,
        0,
        None,
    )
    .unwrap()
    .remove(0);
    greedy_is_argmax_of_full_forwards(
        &m,
        Some("head"),
        &prompt,
        &out.tokens,
        &out.logprobs,
        "head",
    );
    // An adapter with a score or value head never reads the LM head: lm_head is left out.
    m.add_adapter(
        "critic",
        &lora(&["q_proj", "lm_head"]),
        Some(HeadKind::Value),
        1,
    )
    .unwrap();
    assert!(names(&m, "critic")
        .iter()
        .all(|n| !n.starts_with("lm_head")));
    assert_eq!(
        m.adapter_config("critic").unwrap().target_modules,
        ["q_proj"]
    );
    let err = add_error(&mut m, &["lm_head"], Some(HeadKind::Score));
    assert!(err.contains("only LoRA target"), "{err}");
    // A named target that selects nothing is an error, not a silently smaller adapter.
    let err = add_error(&mut m, &["all-linear", "lm-head"], None);
    assert!(
        err.contains("lm-head") && err.contains("available"),
        "{err}"
    );
    // A head tied to the input embedding cannot take its own LoRA.
    let mut tied = model("qwen2-tiny");
    let err = add_error(&mut tied, &["q_proj", "lm_head"], None);
    assert!(
        err.contains("lm_head") && err.contains("tie_word_embeddings"),
        "{err}"
    );
}

#[test]
fn rslora_scale_and_grad_flow() {
    let mut c = lora(&["q_proj"]);
    assert_eq!(c.scale(), 3.0);
    c.use_rslora = true;
    assert_eq!(c.scale(), 6.0);
    let mut m = model("llama-tiny");
    m.add_adapter("p", &c, Some(HeadKind::Value), 1).unwrap();
    for (_, t) in m.base_parameters() {
        assert!(!t.requires_grad(), "base tensors must be frozen");
    }
    let params = m.adapter_parameters("p").unwrap();
    assert!(params.iter().all(Tensor::requires_grad));
    let batch = SeqBatch::new(&[(vec![1, 2, 3], vec![4, 5])], 0, Device::Cpu).unwrap();
    let lp = token_logprobs(&m, Some("p"), &batch, true).unwrap();
    (lp * &batch.response_mask).sum(Kind::Float).backward();
    let a_grad = params[0].grad();
    assert!(a_grad.defined());
    // B = 0 so A's gradient is zero and B's is not.
    assert_eq!(a_grad.abs().sum(Kind::Float).double_value(&[]), 0.0);
    assert!(params[1].grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

#[test]
fn kv_cache_greedy_matches_full_forward_and_padding() {
    for preset in ["llama-tiny", "gpt2-tiny"] {
        let m = model(preset);
        let prompts = vec![vec![5, 9, 17], vec![3, 44, 2, 8, 61, 7], vec![90]];
        let params = SamplingParams {
            max_new_tokens: 8,
            temperature: 0.0,
            ..Default::default()
        };
        let batched = generate(&m, None, &prompts, &[0, 1, 2], &params, 0, None).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            // Alone (no padding) with the cache.
            let alone =
                generate(&m, None, std::slice::from_ref(p), &[9], &params, 0, None).unwrap();
            assert_eq!(
                alone[0].tokens, batched[i].tokens,
                "{preset}: padding changed greedy output"
            );
            // Without the cache: argmax of a full forward, token by token.
            let b = &batched[i];
            greedy_is_argmax_of_full_forwards(&m, None, p, &b.tokens, &b.logprobs, preset);
        }
    }
}

#[test]
fn sampling_is_seeded_per_sequence() {
    let m = model("llama-tiny");
    let params = SamplingParams {
        max_new_tokens: 10,
        temperature: 1.0,
        top_k: 20,
        top_p: 0.9,
        ..Default::default()
    };
    let p = vec![vec![5, 9, 17], vec![3, 44]];
    let a = generate(&m, None, &p, &[7, 8], &params, 0, None).unwrap();
    let b = generate(&m, None, &[p[1].clone()], &[8], &params, 0, None).unwrap();
    assert_eq!(a[1].tokens, b[0].tokens);
    let c = generate(&m, None, &p, &[7, 8], &params, 0, None).unwrap();
    assert_eq!(a, c);
    // EOS ends a sequence and is kept; a stop callback ends another.
    let eos = a[0].tokens[2];
    let pe = SamplingParams {
        eos_ids: vec![eos],
        ..params.clone()
    };
    let e = generate(&m, None, &p[..1], &[7], &pe, 0, None).unwrap();
    assert_eq!(
        e[0].tokens,
        a[0].tokens[..=a[0].tokens.iter().position(|&t| t == eos).unwrap()]
    );
    assert_eq!(e[0].finish.as_str(), "eos");
    let stop = |_: usize, toks: &[i32]| toks.len() == 4;
    let s = generate(&m, None, &p[..1], &[7], &params, 0, Some(&stop)).unwrap();
    assert_eq!((s[0].tokens.len(), s[0].finish.as_str()), (4, "stop"));
}

#[test]
fn scores_ignore_right_padding() {
    let mut m = model("llama-tiny");
    m.add_adapter("rm", &lora(&["q_proj", "v_proj"]), Some(HeadKind::Score), 5)
        .unwrap();
    let rows = vec![(vec![1, 2, 3], vec![4, 5, 6, 7]), (vec![8, 9], vec![10])];
    let both = last_token_scores(
        &m,
        Some("rm"),
        &SeqBatch::new(&rows, 0, Device::Cpu).unwrap(),
        false,
    )
    .unwrap();
    let one = last_token_scores(
        &m,
        Some("rm"),
        &SeqBatch::new(&rows[1..], 0, Device::Cpu).unwrap(),
        false,
    )
    .unwrap();
    assert!((both.double_value(&[1]) - one.double_value(&[0])).abs() < 1e-5);
    assert!(m
        .head(None, &Tensor::zeros([1, 1, 64], (Kind::Float, Device::Cpu)))
        .is_err());
}

#[test]
fn load_errors_name_files_and_tensors() {
    let m = model("llama-tiny");
    let dir = tempfile::tempdir().unwrap();
    m.save_pretrained(dir.path()).unwrap();
    // Wrong shape in config: the message names the tensor and both shapes.
    let cfg_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"intermediate_size\": 172", "\"intermediate_size\": 100");
    std::fs::write(&cfg_path, text).unwrap();
    let err = Model::load(dir.path(), Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("gate_proj.weight") && err.contains("[100, 64]") && err.contains("[172, 64]"),
        "{err}"
    );
    // Pickle only.
    let p = tempfile::tempdir().unwrap();
    std::fs::copy(&cfg_path, p.path().join("config.json")).unwrap();
    std::fs::write(p.path().join("pytorch_model.bin"), b"x").unwrap();
    let err = Model::load(p.path(), Device::Cpu, Kind::Float)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("pytorch_model.bin") && err.to_string().contains("safetensors")
    );
    assert!(rlhf_nn::is_bad_input(&err));
}

#[test]
fn full_fine_tuning_reaches_every_base_leaf() {
    for preset in ["llama-tiny", "gpt2-tiny"] {
        let mut m = model(preset);
        m.set_base_trainable(true);
        let params = m.base_parameters();
        assert!(params.iter().all(|(_, t)| t.requires_grad()));
        let batch = SeqBatch::new(&[(vec![1, 2, 3], vec![4, 5])], 0, Device::Cpu).unwrap();
        let lp = token_logprobs(&m, None, &batch, true).unwrap();
        lp.sum(Kind::Float).backward();
        for (name, t) in &params {
            let g = t.grad();
            assert!(g.defined(), "{preset}: `{name}` got no gradient");
        }
        // An update of a fused leaf shows in the saved (per-module) weights.
        let before = m
            .base_named_tensors()
            .into_iter()
            .find(|(n, _)| {
                n.ends_with("layers.0.self_attn.k_proj.weight")
                    || n.ends_with("h.0.attn.c_attn.weight")
            })
            .unwrap()
            .1
            .copy();
        {
            let _g = tch::no_grad_guard();
            for (_, t) in &params {
                let _ = t.shallow_clone().f_add_(&(t.grad() * 0.1)).unwrap();
            }
        }
        let after = m
            .base_named_tensors()
            .into_iter()
            .find(|(n, _)| {
                n.ends_with("layers.0.self_attn.k_proj.weight")
                    || n.ends_with("h.0.attn.c_attn.weight")
            })
            .unwrap()
            .1;
        assert!(
            max_diff(&before, &after) > 0.0,
            "{preset}: update not visible in saved weights"
        );
        m.set_base_trainable(false);
        assert!(m.base_parameters().iter().all(|(_, t)| !t.requires_grad()));
    }
}

#[test]
fn a_bf16_load_of_a_base_is_recognised_from_a_float32_load() {
    let m = model("llama-tiny");
    let dir = tempfile::tempdir().unwrap();
    m.save_pretrained(dir.path()).unwrap();
    let f32_load = Model::load(dir.path(), Device::Cpu, Kind::Float).unwrap();
    let bf16_load = Model::load(dir.path(), Device::Cpu, Kind::BFloat16).unwrap();
    assert_eq!(f32_load.base_id(), m.base_id());
    assert_ne!(
        bf16_load.base_id(),
        f32_load.base_id(),
        "the id is of the weights as loaded"
    );
    assert_eq!(f32_load.base_id_as(Kind::BFloat16), bf16_load.base_id());
    assert_eq!(f32_load.base_id_as(Kind::Float), f32_load.base_id());
}

#[test]
fn response_logprobs_and_entropies_equal_the_full_softmax() {
    use rlhf_nn::scoring::{forward_outputs, Entropy};
    for preset in ["llama-tiny", "gpt2-tiny"] {
        let m = model(preset);
        // prompts of 4, 2 and 6 tokens: the logits start at the shortest prompt's last token
        let rows = vec![
            (vec![5, 9, 17, 3], vec![4, 8, 1]),
            (vec![7, 2], vec![11, 12, 13, 14]),
            (vec![1, 2, 3, 4, 5, 6], vec![30]),
        ];
        let batch = SeqBatch::new(&rows, 0, Device::Cpu).unwrap();
        let out = forward_outputs(&m, None, &batch, false, Entropy::Reported, false).unwrap();
        let _g = tch::no_grad_guard();
        let hidden = m
            .forward(&batch.input_ids, &batch.attention_mask, None, false)
            .unwrap();
        let l = hidden.size()[1];
        let logits = m
            .lm_logits(&hidden.narrow(1, 0, l - 1), None, false)
            .unwrap();
        let logp = logits.log_softmax(-1, Kind::Float);
        let want = logp
            .gather(-1, &batch.targets.unsqueeze(-1), false)
            .squeeze_dim(-1);
        let want_entropy = -(logp.exp() * &logp).sum_dim_intlist(-1, false, Kind::Float);
        let mask = &batch.response_mask;
        assert_eq!(out.logprobs.size(), want.size(), "{preset}");
        let d = max_diff(&(&out.logprobs * mask), &(&want * mask));
        assert!(d < 1e-5, "{preset}: log-probs differ by {d}");
        let e = out.entropy.unwrap();
        let d = max_diff(&(&e * mask), &(&want_entropy * mask));
        assert!(d < 1e-5, "{preset}: entropies differ by {d}");
        // every response position was computed (none left at the zero fill)
        let zero_at_response = (out.logprobs.eq(0.0).to_kind(Kind::Float) * mask)
            .sum(Kind::Float)
            .double_value(&[]);
        assert_eq!(zero_at_response, 0.0, "{preset}");
    }
}

/// Each gradient within `tol * 10` of the wanted one, relative to its largest entry (or 1).
fn assert_grads_close(got: &[Tensor], want: &[Tensor], tol: f64, what: &str) {
    for (g, w) in got.iter().zip(want) {
        let d = max_diff(g, w);
        let scale = w.abs().max().double_value(&[]).max(1.0);
        assert!(d <= tol * 10.0 * scale, "{what}: a gradient differs by {d}");
    }
}

/// Seven rows of three prompts (one row alone), right-padded, one with an empty response.
fn grouped_rows() -> Vec<(Vec<i32>, Vec<i32>)> {
    vec![
        (vec![5, 9, 17, 3, 8], vec![4, 8, 1]),
        (vec![7, 2], vec![11, 12, 13, 14]),
        (vec![5, 9, 17, 3, 8], vec![30, 31, 32, 33, 34, 35]),
        (vec![7, 2], vec![15]),
        (vec![1, 2, 3], vec![40, 41]),
        (vec![5, 9, 17, 3, 8], vec![]),
        (vec![5, 9, 17, 3, 8], vec![6]),
    ]
}

/// Rows that share a prompt run it once (`Model::forward_batch`): the same log-probs, head
/// values and LoRA gradients as the ordinary forward of every row, up to rounding, for a batch
/// that mixes groups, a row alone, a row with an empty response and right padding; GPT-2 and a
/// training forward with LoRA dropout take the ordinary forward (the same bits).
#[test]
fn rows_sharing_a_prompt_match_the_ordinary_forward() {
    use rlhf_nn::scoring::{forward_outputs, Entropy};
    let rows = grouped_rows();
    let batch = SeqBatch::new(&rows, 0, Device::Cpu).unwrap();
    assert_eq!(batch.prompt_groups.len(), 3);
    // 7 rows of width 11 (77 token rows) against 3 prompts of 5 and 7 responses of 6 (57):
    // this batch takes the shared path
    assert!(batch.shares_prompts());
    for (preset, dropout) in [
        ("llama-tiny", 0.0),
        ("qwen2-tiny", 0.0),
        ("gpt2-tiny", 0.0),
        ("llama-tiny", 0.1),
    ] {
        let mut m = model(preset);
        let targets: &[&str] = match preset {
            "gpt2-tiny" => &["c_attn", "c_fc"],
            _ => &["q_proj", "v_proj", "down_proj"],
        };
        let mut cfg = lora(targets);
        cfg.dropout = dropout;
        m.add_adapter("p", &cfg, Some(HeadKind::Value), 11).unwrap();
        perturb(&m, "p");
        let params = m.adapter_parameters("p").unwrap();
        let mask = &batch.response_mask;
        let run = |shared: bool| {
            for p in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            tch::manual_seed(5);
            let hidden = if shared {
                m.forward_batch(&batch, Some("p"), true).unwrap()
            } else {
                m.forward(&batch.input_ids, &batch.attention_mask, Some("p"), true)
                    .unwrap()
            };
            let l = hidden.size()[1];
            let h = hidden.narrow(1, 0, l - 1);
            let logp = m
                .lm_logits(&h, Some("p"), true)
                .unwrap()
                .log_softmax(-1, Kind::Float)
                .gather(-1, &batch.targets.unsqueeze(-1), false)
                .squeeze_dim(-1)
                * mask;
            let values = m.head(Some("p"), &h).unwrap() * mask;
            (&logp.sum(Kind::Float) + values.sum(Kind::Float)).backward();
            let grads: Vec<Tensor> = params.iter().map(|p| p.grad().copy()).collect();
            (logp.detach(), values.detach(), grads)
        };
        let (want_lp, want_v, want_g) = run(false);
        let (got_lp, got_v, got_g) = run(true);
        let what = format!("{preset}, dropout {dropout}");
        let ordinary = preset == "gpt2-tiny" || dropout > 0.0;
        let tol = if ordinary { 0.0 } else { 1e-5 };
        let d = max_diff(&got_lp, &want_lp);
        assert!(d <= tol, "{what}: log-probs differ by {d}");
        let d = max_diff(&got_v, &want_v);
        assert!(d <= tol, "{what}: values differ by {d}");
        assert_grads_close(&got_g, &want_g, tol, &what);
        // the scoring entry points read the same hidden states (without dropout: no draws)
        if dropout == 0.0 {
            let out = forward_outputs(&m, Some("p"), &batch, false, Entropy::Off, true).unwrap();
            let d = max_diff(&(&out.logprobs * mask), &want_lp);
            assert!(
                d <= 1e-5,
                "{what}: forward_outputs' log-probs differ by {d}"
            );
            let d = max_diff(&(out.values.unwrap() * mask), &want_v);
            assert!(d <= 1e-5, "{what}: forward_outputs' values differ by {d}");
        }
    }
}

/// One position a row (`Model::forward_batch_at`, a reward model's score at each sequence's
/// last token): the last layer runs those positions alone, and gives the full forward's
/// states there up to rounding, with the same head values and LoRA gradients. Covered: the
/// shared-prompt path (every position in a response), a batch whose empty response puts a
/// row's position in its prompt (the whole forward, gathered), the ordinary Llama forward
/// (a batch that shares nothing), positions inside the responses as well as the last ones,
/// and GPT-2 (gathered from its whole forward: the same bits).
#[test]
fn one_position_a_row_matches_the_full_forward_there() {
    let with_empty = grouped_rows();
    let shared: Vec<_> = with_empty
        .iter()
        .filter(|(_, response)| !response.is_empty())
        .cloned()
        .collect();
    let apart = vec![
        (vec![5, 9, 17], vec![4, 8, 1]),
        (vec![7, 2], vec![11, 12, 13, 14, 20]),
        (vec![1], vec![40]),
    ];
    for preset in ["llama-tiny", "qwen2-tiny", "gpt2-tiny"] {
        let mut m = model(preset);
        let targets: &[&str] = match preset {
            "gpt2-tiny" => &["c_attn", "c_fc"],
            _ => &["q_proj", "v_proj", "down_proj"],
        };
        let mut cfg = lora(targets);
        cfg.dropout = 0.0;
        m.add_adapter("r", &cfg, Some(HeadKind::Score), 12).unwrap();
        perturb(&m, "r");
        let params = m.adapter_parameters("r").unwrap();
        for (name, rows, sharing) in [
            ("shared", &shared, true),
            ("empty response", &with_empty, true),
            ("apart", &apart, false),
        ] {
            let batch = SeqBatch::new(rows, 0, Device::Cpu).unwrap();
            assert_eq!(batch.shares_prompts(), sharing, "{name}");
            // each row's last token, and a position inside each non-empty response (an empty
            // one's row: its last token)
            let last = Vec::<i64>::try_from(&batch.last_index).unwrap();
            let inside: Vec<i64> = (0..batch.len())
                .map(|i| match batch.response_lens[i] {
                    0 => last[i],
                    n => (batch.prompt_lens[i] + n / 2) as i64,
                })
                .collect();
            for (which, at) in [
                ("last", Tensor::from_slice(&last)),
                ("inside", Tensor::from_slice(&inside)),
            ] {
                let run = |one: bool| {
                    for p in &params {
                        let mut g = p.grad();
                        if g.defined() {
                            let _ = g.zero_();
                        }
                    }
                    let h = if one {
                        m.forward_batch_at(&batch, Some("r"), true, &at).unwrap()
                    } else {
                        let full = m
                            .forward(&batch.input_ids, &batch.attention_mask, Some("r"), true)
                            .unwrap();
                        let idx = at.view([-1, 1, 1]).expand([-1, 1, full.size()[2]], false);
                        full.gather(1, &idx, false)
                    };
                    assert_eq!(h.size()[..2], [batch.len() as i64, 1]);
                    let scores = m.head(Some("r"), &h).unwrap();
                    (&scores * &scores).sum(Kind::Float).backward();
                    let grads: Vec<Tensor> = params.iter().map(|p| p.grad().copy()).collect();
                    (scores.detach(), grads)
                };
                let (want, want_g) = run(false);
                let (got, got_g) = run(true);
                let what = format!("{preset}, {name}, {which}");
                let tol = if preset == "gpt2-tiny" { 0.0 } else { 1e-5 };
                let d = max_diff(&got, &want);
                assert!(d <= tol, "{what}: scores differ by {d}");
                assert_grads_close(&got_g, &want_g, tol, &what);
            }
        }
    }
}
