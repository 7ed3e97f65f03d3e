//! Sampling throughput on a random ~30M-parameter Llama (preset llama-30m): batch 16,
//! 64-token prompts, 128 new tokens, with the KV cache and without (full forward per token).
//! Usage: bench_sampling [--threads N] [--save DIR] [--no-cache] [--batch B] [--new N]
//! Prints one JSON line per measurement on stdout.

use std::time::Instant;

use rlhf_nn::generate::{generate, SamplingParams};
use rlhf_nn::{Model, ModelConfig};
use tch::{Device, Kind, Tensor};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let threads: i32 = arg(&args, "--threads").map_or(Ok(2), |s| s.parse())?;
    let batch: usize = arg(&args, "--batch").map_or(Ok(16), |s| s.parse())?;
    let new: usize = arg(&args, "--new").map_or(Ok(128), |s| s.parse())?;
    tch::set_num_threads(threads);
    let cfg = ModelConfig::preset("llama-30m")?;
    let model = Model::random(&cfg, Device::Cpu, Kind::Float, 0)?;
    if let Some(dir) = arg(&args, "--save") {
        model.save_pretrained(std::path::Path::new(&dir))?;
    }
    let prompts: Vec<Vec<i32>> = (0..batch)
        .map(|i| {
            (0..64)
                .map(|j| ((i * 131 + j * 17) % 8000 + 3) as i32)
                .collect()
        })
        .collect();
    let seeds: Vec<u64> = (0..batch as u64).collect();
    let params = SamplingParams {
        max_new_tokens: new,
        temperature: 1.0,
        ..Default::default()
    };
    // warm-up
    generate(
        &model,
        None,
        &prompts[..2],
        &seeds[..2],
        &SamplingParams {
            max_new_tokens: 4,
            ..params.clone()
        },
        0,
        None,
    )?;
    let t = Instant::now();
    generate(
        &model,
        None,
        &prompts,
        &seeds,
        &SamplingParams {
            max_new_tokens: 1,
            ..params.clone()
        },
        0,
        None,
    )?;
    println!(
        "{{\"case\":\"prefill\",\"seconds\":{:.3}}}",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let out = generate(&model, None, &prompts, &seeds, &params, 0, None)?;
    let s = t.elapsed().as_secs_f64();
    let toks: usize = out.iter().map(|g| g.tokens.len()).sum();
    println!(
        "{{\"case\":\"cache\",\"tokens\":{toks},\"seconds\":{s:.3},\"tokens_per_s\":{:.1}}}",
        toks as f64 / s
    );
    if args.iter().any(|a| a == "--no-cache") {
        let _g = tch::no_grad_guard();
        let mut seqs: Vec<Vec<i64>> = prompts
            .iter()
            .map(|p| p.iter().map(|&x| x as i64).collect())
            .collect();
        let t = Instant::now();
        for _ in 0..new {
            let n = seqs[0].len() as i64;
            let flat: Vec<i64> = seqs.iter().flatten().copied().collect();
            let ids = Tensor::from_slice(&flat).view([batch as i64, n]);
            let mask = Tensor::ones([batch as i64, n], (Kind::Int64, Device::Cpu));
            let h = model.forward(&ids, &mask, None, false)?;
            let next = model.lm_logits(&h.select(1, n - 1))?.argmax(-1, false);
            let next = Vec::<i64>::try_from(next)?;
            for (s, t) in seqs.iter_mut().zip(next) {
                s.push(t);
            }
        }
        let s = t.elapsed().as_secs_f64();
        let toks = batch * new;
        println!(
            "{{\"case\":\"no_cache\",\"tokens\":{toks},\"seconds\":{s:.3},\"tokens_per_s\":{:.1}}}",
            toks as f64 / s
        );
    }
    // matmul roof: (b*? ) f32 GEMM rate on this machine with the same threads.
    let a = Tensor::randn([1024, 1024], (Kind::Float, Device::Cpu));
    let _ = a.matmul(&a);
    let t = Instant::now();
    for _ in 0..10 {
        let _ = a.matmul(&a);
    }
    let gflops = 10.0 * 2.0 * 1024f64.powi(3) / t.elapsed().as_secs_f64() / 1e9;
    println!("{{\"case\":\"matmul\",\"gflops\":{gflops:.1}}}");
    Ok(())
}
