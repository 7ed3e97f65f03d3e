//! Seeded random numbers computed on the CPU in Rust (ChaCha8), so random weights, adapter
//! initialisation and sampling do not depend on libtorch's global generator, the device, or
//! which other sequences share a batch.

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

/// A generator derived from `seed` and a label (e.g. a tensor name), stable across runs.
pub fn rng_for(seed: u64, label: &str) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(label.as_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// Uniform in [0, 1) with 53 random bits.
pub fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal draw (Box-Muller).
pub fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1 = 1.0 - uniform(rng); // (0, 1]
    let u2 = uniform(rng);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

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
