//! Case `matmul_fp32`: the machine's fp32 matrix-multiply rate through libtorch, in
//! GFLOP/s (2 n^3 flops per n x n product), on the CPU with `--threads` intra-op threads.
//! Later cases use it as their roof (`ctx.value("matmul_fp32")`).
//!
//! Reference: the same matmul (same n, same threads, same timing procedure) through
//! Python torch (`scripts/bench/matmul.py`), so the ratio shows what the Rust binding
//! costs or saves; it should be close to 1 since both call the same libtorch kernel.

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::timing::{seconds_per_call, Budget};
use crate::{python, Case, Context, Measurement};

/// The case.
pub struct MatmulFp32;

/// Square size: large enough to reach the kernel's steady rate.
fn size(quick: bool) -> i64 {
    if quick {
        512
    } else {
        2048
    }
}

impl Case for MatmulFp32 {
    fn name(&self) -> &'static str {
        "matmul_fp32"
    }

    fn about(&self) -> &'static str {
        "fp32 n x n matmul through libtorch on the CPU, GFLOP/s (the roof of later cases)"
    }

    fn run(&self, ctx: &Context) -> Result<Vec<Measurement>> {
        let n = size(ctx.quick);
        tch::set_num_threads(ctx.threads as i32);
        tch::manual_seed(0);
        let _guard = tch::no_grad_guard();
        let a = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([n, n], (Kind::Float, Device::Cpu));
        let t = seconds_per_call(Budget::new(ctx.quick), || {
            let _ = a.matmul(&b);
        });
        tracing::debug!("matmul {n}: best {:.4} s, median {:.4} s", t.best, t.median);
        let secs = t.best;
        let flops = 2.0 * (n as f64).powi(3);
        let ours = Measurement::new(self.name(), flops / secs / 1e9, "GFLOP/s");
        let mut args = vec![
            "--n".to_string(),
            n.to_string(),
            "--threads".to_string(),
            ctx.threads.to_string(),
        ];
        if ctx.quick {
            args.push("--quick".into());
        }
        let script = "matmul.py";
        let out = match python::run_script(ctx, script, &args)? {
            Some(v) => {
                let gflops = python::number(&v, "gflops", script)?;
                let version = v
                    .get("torch_version")
                    .and_then(|s| s.as_str())
                    .unwrap_or("?");
                ours.against(
                    &format!("python torch {version}, same {n}x{n} matmul"),
                    gflops,
                    true,
                )
            }
            None => ours,
        };
        Ok(vec![out])
    }
}
