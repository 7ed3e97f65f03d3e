use std::time::Instant;
use tch::{Device, Kind, Tensor};
fn t<F: FnMut()>(name: &str, mut f: F) {
    f();
    let s = Instant::now();
    for _ in 0..50 {
        f();
    }
    println!(
        "{name}: {:.3} ms",
        s.elapsed().as_secs_f64() * 1000.0 / 50.0
    );
}
fn main() {
    let n: i32 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(2);
    tch::set_num_threads(n);
    let _g = tch::no_grad_guard();
    let o = (Kind::Float, Device::Cpu);
    let x3 = Tensor::randn([16, 1, 512], o);
    let x2 = Tensor::randn([16, 512], o);
    let w = Tensor::randn([1408, 512], o);
    let wt = w.tr().contiguous();
    for _ in 0..2 {
        t("linear 3d", || {
            let _ = x3.linear::<Tensor>(&w, None);
        });
        t("linear 2d", || {
            let _ = x2.linear::<Tensor>(&w, None);
        });
        t("mm wt", || {
            let _ = x2.mm(&wt);
        });
        t("matmul 3d wt", || {
            let _ = x3.matmul(&wt);
        });
    }
}
