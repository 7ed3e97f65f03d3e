//! Where a policy-update micro-batch's time goes on the `policy_step` bench's shape (random
//! llama-30m with a LoRA r8 on q_proj and v_proj, 4 samples of one 34-token prompt with 64
//! response tokens each): the training forward to the response log-probs, then its backward,
//! timed apart, as the mean over REPS micro-batches after a warm-up. For a profile, run it
//! under `perf record`; for the cost of computing each prompt once, with
//! `RLHF_NO_SHARED_PROMPTS=1`.
//!
//! `scripts/cargo.sh run --release -p rlhf-nn --example profile_train -- [THREADS] [ROWS] [REPS]`
//! (ROWS: samples of the prompt in the micro-batch, 4 unless given; REPS 20.)

use std::time::{Duration, Instant};

use rlhf_nn::batch::SeqBatch;
use rlhf_nn::scoring::{forward_outputs, Entropy};
use rlhf_nn::{LoraConfig, Model, ModelConfig};
use tch::{Device, Kind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let threads: i32 = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let rows: usize = args.get(2).map_or(Ok(4), |s| s.parse())?;
    let reps: usize = args.get(3).map_or(Ok(20), |s| s.parse())?;
    tch::set_num_threads(threads);
    // the bench's `init-model --preset 30m` model: llama-30m with a 2048-token vocabulary
    let cfg = ModelConfig {
        vocab_size: 2048,
        ..ModelConfig::preset("llama-30m")?
    };
    let mut model = Model::random(&cfg, Device::Cpu, Kind::Float, 0)?;
    let lora = LoraConfig {
        dropout: 0.0, // ppo-update's default; with dropout each row runs its own prompt
        ..LoraConfig::default_for(cfg.arch)
    };
    model.add_adapter("policy", &lora, None, 1)?;
    {
        // a trained adapter: B non-zero
        let _guard = tch::no_grad_guard();
        for mut t in model.adapter_parameters("policy")? {
            let noise = t.randn_like() * 0.02;
            t.copy_(&noise);
        }
    }
    let vocab = cfg.vocab_size as usize;
    let token = |i: usize| (i % (vocab - 3) + 3) as i32;
    let prompt: Vec<i32> = (0..34).map(|j| token(j * 17 + 5)).collect();
    let samples: Vec<(Vec<i32>, Vec<i32>)> = (0..rows)
        .map(|i| {
            (
                prompt.clone(),
                (0..64).map(|j| token(i * 131 + j * 29)).collect(),
            )
        })
        .collect();
    let batch = SeqBatch::new(&samples, 2, Device::Cpu)?;
    let (mut forward, mut backward) = (Duration::ZERO, Duration::ZERO);
    for rep in 0..=reps {
        let t = Instant::now();
        let out = forward_outputs(&model, Some("policy"), &batch, true, Entropy::Off, false)?;
        let loss = (out.logprobs * &batch.response_mask).sum(Kind::Float);
        let f = t.elapsed();
        let t = Instant::now();
        loss.backward();
        let b = t.elapsed();
        if rep > 0 {
            (forward, backward) = (forward + f, backward + b);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / reps as f64;
    println!("micro-batch of {rows} rows (34 + 64 tokens), {threads} threads, mean of {reps}:");
    println!("  forward  {:8.2} ms", ms(forward));
    println!("  backward {:8.2} ms", ms(backward));
    println!("  total    {:8.2} ms", ms(forward + backward));
    Ok(())
}
