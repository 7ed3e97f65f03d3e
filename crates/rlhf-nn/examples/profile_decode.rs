//! Where sampling time goes on the `sampling` bench shape (random llama-30m, batch 16,
//! 64-token prompts, 128 new tokens): the whole `generate`, then one decode step's parts.
//! For A/B timing of the CPU decode kernels, run it again with `RLHF_NO_DECODE_KERNELS=1`;
//! for a profile, under `perf record -g`. After the whole `generate` it prints how the decode
//! crew's jobs split their time ([`rlhf_nn::crew_times`]): the calling thread waiting long for
//! the workers (or the reverse) means uneven parts or one core running slower.
//!
//! `scripts/cargo.sh run --release -p rlhf-nn --example profile_decode -- [THREADS] [BATCH] [gen] [NEW]`
//! (`gen`: only the whole generate, twice; `gen-lora`: the same through a LoRA adapter on
//! q_proj and v_proj, as the policy samples in PPO; `NEW`: new tokens per sequence, 128 unless
//! given: with 1, `generate` is the prefill and one draw).

use std::time::Instant;

use rlhf_nn::generate::{generate, SamplingParams};
use rlhf_nn::kv_cache::KvCache;
use rlhf_nn::{LoraConfig, Model, ModelConfig};
use tch::{Device, Kind, Tensor};

/// Mean milliseconds of `reps` calls of `f`, after one warm-up call.
fn time<F: FnMut()>(label: &str, reps: usize, mut f: F) -> f64 {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    println!("{label:<44} {ms:8.3} ms");
    ms
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let threads: i32 = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let batch: i64 = args.get(2).map_or(Ok(16), |s| s.parse())?;
    let only_generate = args.get(3).is_some_and(|a| a.starts_with("gen"));
    let with_lora = args.get(3).is_some_and(|a| a == "gen-lora");
    tch::set_num_threads(threads);
    let cfg = ModelConfig::preset("llama-30m")?;
    let mut model = Model::random(&cfg, Device::Cpu, Kind::Float, 0)?;
    let adapter = with_lora.then_some("policy");
    if let Some(name) = adapter {
        model.add_adapter(name, &LoraConfig::default_for(cfg.arch), None, 1)?;
        // A trained adapter: B non-zero.
        let _guard = tch::no_grad_guard();
        for mut t in model.adapter_parameters(name)? {
            let noise = t.randn_like() * 0.02;
            t.copy_(&noise);
        }
    }
    let new: usize = args.get(4).map_or(Ok(128), |s| s.parse())?;
    let plen = 64usize;
    let vocab = cfg.vocab_size as usize;
    let prompts: Vec<Vec<i32>> = (0..batch as usize)
        .map(|i| {
            (0..plen)
                .map(|j| ((i * 131 + j * 17) % (vocab - 3) + 3) as i32)
                .collect()
        })
        .collect();
    let seeds: Vec<u64> = (0..batch as u64).collect();
    let params = SamplingParams {
        max_new_tokens: new,
        ..Default::default()
    };
    rlhf_nn::crew_times();
    let reps = 2;
    let total = time(
        &format!("generate (prefill + {new} new tokens)"),
        reps,
        || {
            generate(&model, adapter, &prompts, &seeds, &params, 0, None).expect("generate");
        },
    );
    // Per call, the warm-up included: a long wait means uneven parts or one core slower.
    let crew = rlhf_nn::crew_times();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3 / (reps + 1) as f64;
    println!(
        "  crew per call: calling thread's parts {:.1} ms, its waits for the workers {:.1} ms, workers' parts {:.1} ms",
        ms(crew.caller_parts),
        ms(crew.caller_waits),
        ms(crew.worker_parts)
    );
    println!(
        "  -> {:.0} new tokens/s",
        (batch as f64 * new as f64) / total * 1e3
    );
    if only_generate {
        return Ok(());
    }

    // One decode step at cache length ~128, outside generate (libtorch keeps its threads).
    let _guard = tch::no_grad_guard();
    let opts = (Kind::Int64, Device::Cpu);
    let ids = Tensor::randint(cfg.vocab_size - 3, [batch, plen as i64], opts) + 3;
    let ones = Tensor::ones([batch, plen as i64], opts);
    let step_in = Tensor::randint(cfg.vocab_size - 3, [batch, 1], opts) + 3;
    let step_mask = Tensor::ones([batch, 1], opts);
    time("prefill: body forward (batch x 64 tokens)", 5, || {
        let mut cache = KvCache::new(&model, batch, (plen + new) as i64);
        let _ = model
            .forward_cached(&ids, &ones, &mut cache, None)
            .expect("prefill");
    });
    let mut cache = KvCache::new(&model, batch, (plen + 512) as i64);
    let _ = model.forward_cached(&ids, &ones, &mut cache, None)?;
    for _ in 0..64 {
        let _ = model.forward_cached(&step_in, &step_mask, &mut cache, None)?;
    }
    time("decode step: body forward", 50, || {
        let _ = model
            .forward_cached(&step_in, &step_mask, &mut cache, None)
            .expect("forward");
    });
    let h = Tensor::randn([batch, cfg.hidden_size], (Kind::Float, Device::Cpu));
    time("decode step: LM head", 50, || {
        let _ = model.lm_logits(&h, None, false).expect("logits");
    });
    let logits = Vec::<f32>::try_from(model.lm_logits(&h, None, false)?.contiguous().view([-1]))?;
    let mut rng = rlhf_nn::rng::rng_for(1, "profile");
    time("decode step: sampling every row (CPU)", 50, || {
        for row in logits.chunks(vocab) {
            rlhf_nn::sampler::sample_row(row, &params, &mut rng);
        }
    });
    Ok(())
}
