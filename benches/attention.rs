//! libtorch's fused attention against attention written out by hand, side by side in one run, at the shape of a
//! small video transformer (12 heads × 64, 1,024 tokens). The models use the fused kernel; this bench is the
//! evidence that it is the faster choice on the machine at hand. Compare the two lines as a ratio.
use criterion::{Criterion, criterion_group, criterion_main};
use tch::{Kind, Tensor};

fn attention(c: &mut Criterion) {
    let _guard = tch::no_grad_guard();
    let shape = [1i64, 12, 1024, 64];
    let opts = (Kind::Float, tch::Device::Cpu);
    let (q, k, v) = (Tensor::randn(shape, opts), Tensor::randn(shape, opts), Tensor::randn(shape, opts));
    let mut group = c.benchmark_group("attention_12x1024x64_cpu");
    group.sample_size(10);
    group.bench_function("fused_sdpa", |b| {
        b.iter(|| Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false))
    });
    group.bench_function("manual_softmax", |b| {
        b.iter(|| (q.matmul(&k.transpose(-2, -1)) / 8.0).softmax(-1, Kind::Float).matmul(&v))
    });
    group.finish();
}

criterion_group!(benches, attention);
criterion_main!(benches);
