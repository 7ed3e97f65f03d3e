//! Seeded random tensors from the project's one random source (`rlhf_core::rng`, ChaCha8
//! on the CPU), so random weights, adapter initialisation and sampling do not depend on
//! libtorch's global generator, the device, or which other sequences share a batch.

pub use rlhf_core::rng::{normal, rng_for, uniform};
use tch::{Kind, Tensor};

/// An f32 CPU tensor of `shape` filled with normal(0, std) draws.
pub fn normal_tensor(seed: u64, label: &str, shape: &[i64], std: f64) -> Tensor {
    let mut rng = rng_for(seed, label);
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (normal(&mut rng) * std) as f32).collect();
    Tensor::from_slice(&v).view(shape)
}

/// An f32 CPU tensor of `shape` filled with uniform(-bound, bound) draws.
pub fn uniform_tensor(seed: u64, label: &str, shape: &[i64], bound: f64) -> Tensor {
    let mut rng = rng_for(seed, label);
    let n: i64 = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| ((uniform(&mut rng) * 2.0 - 1.0) * bound) as f32)
        .collect();
    Tensor::from_slice(&v).view(shape)
}

/// An f32 CPU tensor of `shape` filled with `value`.
pub fn full(shape: &[i64], value: f64) -> Tensor {
    Tensor::full(shape, value, (Kind::Float, tch::Device::Cpu))
}
