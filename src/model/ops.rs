//! CPU work spread over threads: element-wise operations fused into one pass over memory
//! where candle composes them from separate single-threaded passes, and one-time work on the
//! weights.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::error::{Error, Result};

/// Runs each task on a thread of its own and returns their results in order; a thread that
/// panics gives an error naming `what` it was doing.
pub fn in_parallel<T, F>(what: &str, tasks: Vec<F>) -> Result<Vec<T>>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    std::thread::scope(|s| {
        let handles: Vec<_> = tasks.into_iter().map(|t| s.spawn(t)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Candle(candle_core::Error::Msg(format!(
                        "a thread {what} panicked"
                    ))))
                })
            })
            .collect()
    })
}

/// CLIP's QuickGELU, `x * sigmoid(1.702 x)`.
pub fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.is_contiguous() {
        x.apply_op1_no_bwd(&QuickGelu)
    } else {
        x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
    }
}

struct QuickGelu;

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(data), Some((start, end))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("quick-gelu takes a contiguous f32 tensor")
        };
        let src = &data[start..end];
        let mut out = vec![0f32; src.len()];
        let threads = candle_core::utils::get_num_threads().max(1);
        // Below this a thread costs more than it saves.
        let chunk = src.len().div_ceil(threads).max(1 << 15);
        std::thread::scope(|s| {
            for (o, i) in out.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || {
                    for (o, &v) in o.iter_mut().zip(i) {
                        *o = v / (1.0 + (-1.702 * v).exp());
                    }
                });
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d: Vec<f32> = (a - b).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        d.into_iter().fold(0f32, |m, v| m.max(v.abs()))
    }

    #[test]
    fn quick_gelu_matches_its_composed_form() {
        let x = Tensor::randn(0f32, 3f32, (3, 257, 301), &Device::Cpu).unwrap();
        let fused = quick_gelu(&x).unwrap();
        let composed = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        let d = max_abs_diff(&fused, &composed);
        assert!(d < 1e-5, "max difference {d}");
        // A view that is not contiguous takes the composed path.
        let t = x.transpose(1, 2).unwrap();
        let viewed = quick_gelu(&t).unwrap().transpose(1, 2).unwrap();
        let d = max_abs_diff(&viewed, &fused);
        assert!(d < 1e-5, "max difference {d}");
    }
}
