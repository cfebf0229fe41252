// MobileNetV3's CPU kernels as MindSpore AOT custom ops, hand-written AVX2+FMA: the depthwise convolution,
// hard-swish and the global mean with their gradients, and the fused ops of the inference network.
//
// Depthwise convolution (NCHW float32, weight (C,1,k,k), odd k <= 7, padding k/2, stride 1 or 2):
// MindSpore 2.10's CPU path for Conv2D(group=C) is
// oneDNN's im2col+GEMM, over half of a MobileNetV3 training step; this is 1.6-2x faster end to end.
//
// Each task transposes 8 channels into a zero-padded channel-last block in thread-local scratch,
// computes there with 8-lane FMAs, and transposes the result back.
// Entry points: DwFwd{1,2}(x, w -> y), DwBwd{1,2}(x, w, dy -> dx, dw), digit = stride;
// DwSetThreads(n) sizes the thread pool (mobilenetv3/cpu_kernels.py calls it through ctypes).
//
// Inference with BatchNorm folded (mobilenetv3/folding.py) adds fused ops, act = Id, Relu or HSwish:
// DwFwd{act}{1,2}(x, w, b -> act(conv(x) + b)), Bias{act}(x, b -> act(x + b)) after a pointwise
// convolution, and SqueezeExcite(x, w1, b1, w2, b2 -> x * hsigmoid(fc2(relu(fc1(mean(x)))))), each one
// kernel where MindSpore runs 2-8 (its CPU element-wise kernels cost 30-90 us each at batch 1).
// Training and inference: HSwish(x -> y) / HSwishGrad(x, dy -> dx) and Mean(x -> per-plane mean, (N,C,1,1))
// / MeanGrad(x, dy -> dx), 2-4x faster than MindSpore's HSwish and AdaptiveAvgPool2D kernels.
//
// Determinism: every output element is computed by one task in a fixed order, and the weight
// gradient of a channel block is summed over the batch by the one task owning that block, so results
// are bit-identical for any thread count and any scheduling.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------
// Thread pool. The caller works too; workers spin briefly after a job (consecutive depthwise calls
// come close together), then sleep, leaving the cores to MindSpore's own kernel threads.

constexpr auto kSpin = std::chrono::microseconds(50);

class Pool {
 public:
  // Use `threads` threads (caller included) from the next job on; workers are started as needed.
  void set_threads(int threads) {
    std::lock_guard<std::mutex> lock(mutex_);
    threads_ = std::max(1, threads);
    for (int index = started_; index < threads_ - 1; ++index) std::thread([this, index] { loop(index); }).detach();
    started_ = std::max(started_, threads_ - 1);
  }

  // fn(task) for task in [0, tasks), on up to threads_ threads; returns when all are done.
  void parallel_for(int tasks, const std::function<void(int)> &fn) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    Job job{&fn, tasks};
    if (!busy.owns_lock() || tasks == 1 || active_workers() == 0) {  // a concurrent call runs on its own thread
      work(job);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    work(job);
    wait_until([&] { return job.done.load(std::memory_order_acquire) == tasks; });
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = nullptr;  // no worker joins from here on
    }
    wait_until([&] { return joined_.load(std::memory_order_acquire) == 0; });  // those that joined are leaving
  }

 private:
  struct Job {
    const std::function<void(int)> *fn;
    int tasks;
    std::atomic<int> next{0}, done{0};
  };

  // Spin while the other threads finish their last task; yield if one of them was descheduled.
  template <typename Done>
  static void wait_until(Done done) {
    auto deadline = std::chrono::steady_clock::now() + kSpin;
    while (!done()) {
      if (std::chrono::steady_clock::now() < deadline) _mm_pause();
      else std::this_thread::yield();
    }
  }

  int active_workers() {
    std::lock_guard<std::mutex> lock(mutex_);
    return threads_ - 1;
  }

  static void work(Job &job) {
    for (int task; (task = job.next.fetch_add(1, std::memory_order_relaxed)) < job.tasks;) {
      (*job.fn)(task);
      job.done.fetch_add(1, std::memory_order_release);
    }
  }

  void loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      auto deadline = std::chrono::steady_clock::now() + kSpin;
      while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < deadline)
        _mm_pause();
      Job *job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
        seen = generation_.load(std::memory_order_relaxed);
        job = index < threads_ - 1 ? job_ : nullptr;
        if (job != nullptr) joined_.fetch_add(1, std::memory_order_relaxed);
      }
      if (job != nullptr) {
        work(*job);
        joined_.fetch_sub(1, std::memory_order_release);
      }
    }
  }

  std::mutex busy_;   // one job at a time
  std::mutex mutex_;  // guards job_, threads_, started_ and the joins
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> joined_{0};
  Job *job_ = nullptr;
  int threads_ = 1, started_ = 0;
};

Pool &pool() {
  static Pool *instance = new Pool;  // never destroyed: its workers sleep until the process ends
  return *instance;
}

// ---------------------------------------------------------------------------------------------
// Kernels

constexpr int L = 8;  // channels per block = AVX2 lanes
constexpr int kMaxKernel = 7;

struct Shape {
  int64_t n, c, h, w, k, p, s, oh, ow, hp, wp;
  Shape(const int64_t *xs, const int64_t *ws, const int64_t *ys, int stride) {
    n = xs[0], c = xs[1], h = xs[2], w = xs[3], k = ws[2], p = k / 2, s = stride, oh = ys[2], ow = ys[3];
    // the padded block holds every tap an output reads: (oh-1)*s + k rows
    hp = std::max(h + 2 * p, (oh - 1) * s + k);
    wp = std::max(w + 2 * p, (ow - 1) * s + k);
  }
};

float *scratch(int slot, size_t floats) {
  thread_local std::vector<float> buffers[4];
  if (buffers[slot].size() < floats) buffers[slot].resize(floats);
  return buffers[slot].data();
}

inline void transpose8(__m256 &r0, __m256 &r1, __m256 &r2, __m256 &r3, __m256 &r4, __m256 &r5, __m256 &r6,
                       __m256 &r7) {
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
  r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
  r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
  r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
  r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
  r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
  r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
  r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}

inline __m256i tail_mask(int64_t t) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)t), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 8 rows of n floats (row stride `stride`) -> n vectors of 8 (channel-last): 8x8 tiles + masked tail
inline void rows_to_lanes(const float *src, int64_t stride, int64_t n, float *dst) {
  int64_t x = 0;
  for (; x + 8 <= n; x += 8) {
    __m256 r0 = _mm256_loadu_ps(src + x), r1 = _mm256_loadu_ps(src + stride + x),
           r2 = _mm256_loadu_ps(src + 2 * stride + x), r3 = _mm256_loadu_ps(src + 3 * stride + x),
           r4 = _mm256_loadu_ps(src + 4 * stride + x), r5 = _mm256_loadu_ps(src + 5 * stride + x),
           r6 = _mm256_loadu_ps(src + 6 * stride + x), r7 = _mm256_loadu_ps(src + 7 * stride + x);
    transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
    float *d = dst + x * L;
    _mm256_storeu_ps(d, r0), _mm256_storeu_ps(d + 8, r1), _mm256_storeu_ps(d + 16, r2), _mm256_storeu_ps(d + 24, r3);
    _mm256_storeu_ps(d + 32, r4), _mm256_storeu_ps(d + 40, r5), _mm256_storeu_ps(d + 48, r6), _mm256_storeu_ps(d + 56, r7);
  }
  if (x < n) {
    int64_t t = n - x;
    __m256i m = tail_mask(t);
    __m256 r[8];
    for (int c = 0; c < L; ++c) r[c] = _mm256_maskload_ps(src + c * stride + x, m);
    transpose8(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
    for (int64_t i = 0; i < t; ++i) _mm256_storeu_ps(dst + (x + i) * L, r[i]);
  }
}

// n vectors of 8 -> 8 rows of n floats (row stride `stride`)
inline void lanes_to_rows(const float *src, int64_t n, float *dst, int64_t stride) {
  int64_t x = 0;
  for (; x + 8 <= n; x += 8) {
    const float *s = src + x * L;
    __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + 8), r2 = _mm256_loadu_ps(s + 16),
           r3 = _mm256_loadu_ps(s + 24), r4 = _mm256_loadu_ps(s + 32), r5 = _mm256_loadu_ps(s + 40),
           r6 = _mm256_loadu_ps(s + 48), r7 = _mm256_loadu_ps(s + 56);
    transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
    _mm256_storeu_ps(dst + x, r0), _mm256_storeu_ps(dst + stride + x, r1);
    _mm256_storeu_ps(dst + 2 * stride + x, r2), _mm256_storeu_ps(dst + 3 * stride + x, r3);
    _mm256_storeu_ps(dst + 4 * stride + x, r4), _mm256_storeu_ps(dst + 5 * stride + x, r5);
    _mm256_storeu_ps(dst + 6 * stride + x, r6), _mm256_storeu_ps(dst + 7 * stride + x, r7);
  }
  if (x < n) {
    int64_t t = n - x;
    __m256i m = tail_mask(t);
    __m256 r[8];
    for (int64_t i = 0; i < L; ++i) r[i] = i < t ? _mm256_loadu_ps(src + (x + i) * L) : _mm256_setzero_ps();
    transpose8(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
    for (int c = 0; c < L; ++c) _mm256_maskstore_ps(dst + c * stride + x, m, r[c]);
  }
}

// cc planes of h*w (plane stride `plane`) -> channel-last block [rows][cols][8] at offset (p, p),
// zeros elsewhere (lanes cc..7 included)
void to_block(const float *src, int64_t plane, int cc, int64_t h, int64_t w, float *blk, int64_t rows, int64_t cols,
              int64_t p) {
  std::memset(blk, 0, sizeof(float) * p * cols * L);
  std::memset(blk + (p + h) * cols * L, 0, sizeof(float) * (rows - p - h) * cols * L);
  for (int64_t y = 0; y < h; ++y) {
    float *row = blk + (y + p) * cols * L;
    std::memset(row, 0, sizeof(float) * p * L);
    std::memset(row + (p + w) * L, 0, sizeof(float) * (cols - p - w) * L);
  }
  if (cc == L) {
    for (int64_t y = 0; y < h; ++y) rows_to_lanes(src + y * w, plane, w, blk + ((y + p) * cols + p) * L);
    return;
  }
  for (int64_t y = 0; y < h; ++y) {
    float *d = blk + ((y + p) * cols + p) * L;
    std::memset(d, 0, sizeof(float) * w * L);
    for (int c = 0; c < cc; ++c)
      for (int64_t x = 0; x < w; ++x) d[x * L + c] = src[c * plane + y * w + x];
  }
}

// rows [h][w][8] at offset (p, p) of a [.][cols][8] block -> cc planes of h*w
void from_block(const float *blk, int64_t cols, int64_t p, int cc, int64_t h, int64_t w, float *dst, int64_t plane) {
  for (int64_t y = 0; y < h; ++y) {
    const float *s = blk + ((y + p) * cols + p) * L;
    if (cc == L) {
      lanes_to_rows(s, w, dst + y * w, plane);
      continue;
    }
    for (int c = 0; c < cc; ++c)
      for (int64_t x = 0; x < w; ++x) dst[c * plane + y * w + x] = s[x * L + c];
  }
}

// weights (C,1,k,k) of channels c0..c0+cc -> [k*k][8]; flip: rotated 180 degrees
void weights_block(const float *w, int64_t c0, int cc, int64_t k, bool flip, float *wb) {
  std::memset(wb, 0, sizeof(float) * k * k * L);
  for (int c = 0; c < cc; ++c)
    for (int64_t t = 0; t < k * k; ++t) wb[(flip ? k * k - 1 - t : t) * L + c] = w[(c0 + c) * k * k + t];
}

// out[oy][ox] = sum_ij in[oy*s+i][ox*s+j] * wb[i][j]; `in` a padded [.][cols][8] block, out [oh][ow][8]
template <int KT>  // kernel size known at compile time (0: k_rt)
void correlate_k(const float *in, int64_t cols, const float *wb, int64_t k_rt, int64_t s, int64_t oh, int64_t ow,
                 float *out) {
  const int64_t k = KT ? KT : k_rt;
  for (int64_t oy = 0; oy < oh; ++oy) {
    float *orow = out + oy * ow * L;
    int64_t ox = 0;
    for (; ox + 4 <= ow; ox += 4) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t i = 0; i < k; ++i) {
        const float *r = in + ((oy * s + i) * cols + ox * s) * L;
        for (int64_t j = 0; j < k; ++j) {
          __m256 wv = _mm256_loadu_ps(wb + (i * k + j) * L);
          const float *q = r + j * L;
          a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q), wv, a0);
          a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + s * L), wv, a1);
          a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 2 * s * L), wv, a2);
          a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 3 * s * L), wv, a3);
        }
      }
      _mm256_storeu_ps(orow + ox * L, a0);
      _mm256_storeu_ps(orow + (ox + 1) * L, a1);
      _mm256_storeu_ps(orow + (ox + 2) * L, a2);
      _mm256_storeu_ps(orow + (ox + 3) * L, a3);
    }
    for (; ox < ow; ++ox) {
      __m256 a = _mm256_setzero_ps();
      for (int64_t i = 0; i < k; ++i) {
        const float *r = in + ((oy * s + i) * cols + ox * s) * L;
        for (int64_t j = 0; j < k; ++j)
          a = _mm256_fmadd_ps(_mm256_loadu_ps(r + j * L), _mm256_loadu_ps(wb + (i * k + j) * L), a);
      }
      _mm256_storeu_ps(orow + ox * L, a);
    }
  }
}

void correlate(const float *in, int64_t cols, const float *wb, int64_t k, int64_t s, int64_t oh, int64_t ow,
               float *out) {
  if (k == 3) return correlate_k<3>(in, cols, wb, k, s, oh, ow, out);
  if (k == 5) return correlate_k<5>(in, cols, wb, k, s, oh, ow, out);
  correlate_k<0>(in, cols, wb, k, s, oh, ow, out);
}

enum Activation { kIdentity, kRelu, kHardSwish };

// The same arithmetic as the written-out x * relu6(x + 3) / 6 (model.HardSwish), lane by lane.
template <int A>
inline __m256 activate(__m256 v) {
  if (A == kRelu) return _mm256_max_ps(v, _mm256_setzero_ps());
  if (A == kHardSwish) {
    __m256 r6 = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, _mm256_set1_ps(3.f)), _mm256_setzero_ps()),
                              _mm256_set1_ps(6.f));
    return _mm256_div_ps(_mm256_mul_ps(v, r6), _mm256_set1_ps(6.f));
  }
  return v;
}

template <int A>
inline float activate(float v) {
  if (A == kRelu) return std::max(v, 0.f);
  if (A == kHardSwish) return v * std::min(std::max(v + 3.f, 0.f), 6.f) / 6.f;
  return v;
}

inline float hard_sigmoid(float v) { return std::min(std::max(v + 3.f, 0.f), 6.f) / 6.f; }

// y = act(conv(x, w) + b), b optional (nullptr: plain convolution). One task per (image, channel block).
template <int A>
void forward(const Shape &g, const float *x, const float *w, const float *b, float *y) {
  int64_t blocks = (g.c + L - 1) / L;
  pool().parallel_for((int)(g.n * blocks), [&](int task) {
    int64_t n = task / blocks, c0 = task % blocks * L;
    int cc = (int)std::min<int64_t>(L, g.c - c0);
    float *xb = scratch(0, g.hp * g.wp * L), *yb = scratch(1, g.oh * g.ow * L), *wb = scratch(2, g.k * g.k * L);
    weights_block(w, c0, cc, g.k, false, wb);
    to_block(x + (n * g.c + c0) * g.h * g.w, g.h * g.w, cc, g.h, g.w, xb, g.hp, g.wp, g.p);
    correlate(xb, g.wp, wb, g.k, g.s, g.oh, g.ow, yb);
    if (b != nullptr) {
      alignas(32) float lanes[L] = {};
      std::memcpy(lanes, b + c0, sizeof(float) * cc);
      __m256 bias = _mm256_load_ps(lanes);
      for (int64_t i = 0; i < g.oh * g.ow; ++i)
        _mm256_storeu_ps(yb + i * L, activate<A>(_mm256_add_ps(_mm256_loadu_ps(yb + i * L), bias)));
    }
    from_block(yb, g.ow, 0, cc, g.oh, g.ow, y + (n * g.c + c0) * g.oh * g.ow, g.oh * g.ow);
  });
}

// Element-wise work goes in tasks of about kChunk floats; small tensors stay on the calling thread.
constexpr int64_t kChunk = 16384;

// fn(begin, end) over [0, n) in tasks of `per_task` items
template <typename Fn>
void for_ranges(int64_t n, int64_t per_task, Fn fn) {
  int64_t tasks = (n + per_task - 1) / per_task;
  std::function<void(int)> run = [&](int task) { fn(task * per_task, std::min(n, (task + 1) * per_task)); };
  if (tasks <= 1) return run(0);
  pool().parallel_for((int)tasks, run);
}

// fn(plane) for the planes of an NCHW tensor, whole planes per task
template <typename Fn>
void for_planes(int64_t planes, int64_t plane_size, Fn fn) {
  for_ranges(planes, std::max<int64_t>(1, kChunk / std::max<int64_t>(plane_size, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) fn(p);
  });
}

// y = act(x + b[c]) over NCHW x
template <int A>
void bias_activation(const int64_t *xs, const float *x, const float *b, float *y) {
  int64_t channels = xs[1], size = xs[2] * xs[3];
  for_planes(xs[0] * channels, size, [&](int64_t plane) {
    const float *src = x + plane * size;
    float *dst = y + plane * size;
    float bias = b[plane % channels];
    __m256 bv = _mm256_set1_ps(bias);
    int64_t i = 0;
    for (; i + L <= size; i += L) _mm256_storeu_ps(dst + i, activate<A>(_mm256_add_ps(_mm256_loadu_ps(src + i), bv)));
    for (; i < size; ++i) dst[i] = activate<A>(src[i] + bias);
  });
}

void hard_swish(int64_t n, const float *x, float *y) {
  for_ranges(n, kChunk, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i + L <= end; i += L) _mm256_storeu_ps(y + i, activate<kHardSwish>(_mm256_loadu_ps(x + i)));
    for (; i < end; ++i) y[i] = activate<kHardSwish>(x[i]);
  });
}

// dx = dy * d hswish(x) / dx: 0 below -3, x / 3 + 0.5 up to 3, 1 above (PyTorch's hardswish_backward)
void hard_swish_grad(int64_t n, const float *x, const float *dy, float *dx) {
  for_ranges(n, kChunk, [&](int64_t begin, int64_t end) {
    const __m256 three = _mm256_set1_ps(3.f), minus_three = _mm256_set1_ps(-3.f), third = _mm256_set1_ps(1.f / 3.f);
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
    int64_t i = begin;
    for (; i + L <= end; i += L) {
      __m256 v = _mm256_loadu_ps(x + i);
      __m256 slope = _mm256_blendv_ps(_mm256_add_ps(_mm256_mul_ps(v, third), half), one,
                                      _mm256_cmp_ps(v, three, _CMP_GT_OQ));
      slope = _mm256_blendv_ps(slope, zero, _mm256_cmp_ps(v, minus_three, _CMP_LT_OQ));
      _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i), slope));
    }
    for (; i < end; ++i) {
      float v = x[i];
      dx[i] = dy[i] * (v < -3.f ? 0.f : v > 3.f ? 1.f : v * (1.f / 3.f) + 0.5f);
    }
  });
}

inline float lane_sum(__m256 v) {
  alignas(32) float lanes[L];
  _mm256_store_ps(lanes, v);
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

float plane_mean(const float *src, int64_t size) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + L <= size; i += L) acc = _mm256_add_ps(acc, _mm256_loadu_ps(src + i));
  float sum = lane_sum(acc);
  for (; i < size; ++i) sum += src[i];
  return sum / (float)size;
}

// sum a[i] * b[i], two independent accumulators (the FMA latency, not the loads, would bound one)
float dot(const float *a, const float *b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + L), _mm256_loadu_ps(b + i + L), acc1);
  }
  if (i + L <= n) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0), i += L;
  float sum = lane_sum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void global_mean(const int64_t *xs, const float *x, float *y) {
  int64_t size = xs[2] * xs[3];
  for_planes(xs[0] * xs[1], size, [&](int64_t plane) { y[plane] = plane_mean(x + plane * size, size); });
}

void global_mean_grad(const int64_t *xs, const float *dy, float *dx) {
  int64_t size = xs[2] * xs[3];
  for_planes(xs[0] * xs[1], size, [&](int64_t plane) {
    float g = dy[plane] / (float)size;
    std::fill(dx + plane * size, dx + (plane + 1) * size, g);
  });
}

// Squeeze-and-excitation of one image per task: mean per channel, fc1 + ReLU, fc2 + hard-sigmoid, rescale.
void squeeze_excite(const int64_t *xs, int64_t squeezed, const float *x, const float *w1, const float *b1,
                    const float *w2, const float *b2, float *y) {
  int64_t n = xs[0], channels = xs[1], size = xs[2] * xs[3];
  pool().parallel_for((int)n, [&](int image) {
    float *mean = scratch(0, channels), *hidden = scratch(1, squeezed), *scale = scratch(2, channels);
    const float *xi = x + image * channels * size;
    float *yi = y + image * channels * size;
    for (int64_t c = 0; c < channels; ++c) mean[c] = plane_mean(xi + c * size, size);
    for (int64_t s = 0; s < squeezed; ++s) hidden[s] = std::max(b1[s] + dot(w1 + s * channels, mean, channels), 0.f);
    for (int64_t c = 0; c < channels; ++c) scale[c] = hard_sigmoid(b2[c] + dot(w2 + c * squeezed, hidden, squeezed));
    for (int64_t c = 0; c < channels; ++c) {
      const float *src = xi + c * size;
      float *dst = yi + c * size;
      __m256 sv = _mm256_set1_ps(scale[c]);
      int64_t i = 0;
      for (; i + L <= size; i += L) _mm256_storeu_ps(dst + i, _mm256_mul_ps(_mm256_loadu_ps(src + i), sv));
      for (; i < size; ++i) dst[i] = src[i] * scale[c];
    }
  });
}

// params: x, w, dy, dx, dw. One task per channel block, looping over the batch in order, so that
// each task owns its dw block and sums it in a fixed order.
void backward(const Shape &g, void **params) {
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *dy = static_cast<const float *>(params[2]);
  float *dx = static_cast<float *>(params[3]);
  float *dw = static_cast<float *>(params[4]);
  int64_t blocks = (g.c + L - 1) / L;
  int64_t k = g.k, s = g.s, p = g.p;
  pool().parallel_for((int)blocks, [&](int block) {
    int64_t c0 = block * L;
    int cc = (int)std::min<int64_t>(L, g.c - c0);
    float *xb = scratch(0, g.hp * g.wp * L);
    // dy padded by k-1-p on each side (stride 1: dx is a correlation with the flipped kernel) or not (stride 2)
    int64_t q = s == 1 ? k - 1 - p : 0;
    int64_t dyr = g.oh + 2 * q + k, dyc = g.ow + 2 * q + k;
    float *dyb = scratch(1, dyr * dyc * L);
    float *dxb = scratch(3, std::max(g.hp * g.wp, g.h * g.w) * L);
    alignas(32) float flipped[kMaxKernel * kMaxKernel * L], plain[kMaxKernel * kMaxKernel * L];
    weights_block(w, c0, cc, k, true, flipped);
    weights_block(w, c0, cc, k, false, plain);
    __m256 acc[kMaxKernel * kMaxKernel];  // dw accumulators
    for (int64_t t = 0; t < k * k; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t n = 0; n < g.n; ++n) {
      to_block(x + (n * g.c + c0) * g.h * g.w, g.h * g.w, cc, g.h, g.w, xb, g.hp, g.wp, p);
      to_block(dy + (n * g.c + c0) * g.oh * g.ow, g.oh * g.ow, cc, g.oh, g.ow, dyb, dyr, dyc, q);
      const float *dyv = dyb + (q * dyc + q) * L;  // dy[oy][ox] = dyv[(oy*dyc+ox)*L]
      // dw[i][j] += sum_{oy,ox} xb[oy*s+i][ox*s+j] * dy[oy][ox]
      for (int64_t i = 0; i < k; ++i) {
        __m256 a[kMaxKernel];
        for (int64_t j = 0; j < k; ++j) a[j] = _mm256_setzero_ps();
        for (int64_t oy = 0; oy < g.oh; ++oy) {
          const float *xr = xb + (oy * s + i) * g.wp * L;
          const float *dr = dyv + oy * dyc * L;
          for (int64_t ox = 0; ox < g.ow; ++ox) {
            __m256 d = _mm256_loadu_ps(dr + ox * L);
            const float *xq = xr + ox * s * L;
            for (int64_t j = 0; j < k; ++j) a[j] = _mm256_fmadd_ps(_mm256_loadu_ps(xq + j * L), d, a[j]);
          }
        }
        for (int64_t j = 0; j < k; ++j) acc[i * k + j] = _mm256_add_ps(acc[i * k + j], a[j]);
      }
      if (s == 1) {
        correlate(dyb, dyc, flipped, k, 1, g.h, g.w, dxb);
        from_block(dxb, g.w, 0, cc, g.h, g.w, dx + (n * g.c + c0) * g.h * g.w, g.h * g.w);
      } else {
        // scatter: dx_padded[oy*s+i][ox*s+j] += w[i][j] * dy[oy][ox]
        std::memset(dxb, 0, sizeof(float) * g.hp * g.wp * L);
        for (int64_t oy = 0; oy < g.oh; ++oy)
          for (int64_t i = 0; i < k; ++i) {
            float *xr = dxb + (oy * s + i) * g.wp * L;
            for (int64_t ox = 0; ox < g.ow; ++ox) {
              __m256 d = _mm256_loadu_ps(dyv + (oy * dyc + ox) * L);
              float *xq = xr + ox * s * L;
              for (int64_t j = 0; j < k; ++j)
                _mm256_storeu_ps(xq + j * L, _mm256_fmadd_ps(_mm256_load_ps(plain + (i * k + j) * L), d,
                                                             _mm256_loadu_ps(xq + j * L)));
            }
          }
        from_block(dxb, g.wp, p, cc, g.h, g.w, dx + (n * g.c + c0) * g.h * g.w, g.h * g.w);
      }
    }
    alignas(32) float lanes[L];
    for (int64_t t = 0; t < k * k; ++t) {
      _mm256_store_ps(lanes, acc[t]);
      for (int c = 0; c < cc; ++c) dw[(c0 + c) * k * k + t] = lanes[c];
    }
  });
}

// The shapes and types these kernels handle; anything else is an error, never a wrong result.
bool float32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  return true;
}

bool depthwise_shapes(const int *ndims, int64_t **shapes) {  // x and w at 0 and 1
  const int64_t *xs = shapes[0], *ws = shapes[1];
  return ndims[0] == 4 && ndims[1] == 4 && ws[0] == xs[1] && ws[1] == 1 && ws[2] == ws[3] && ws[2] % 2 == 1 &&
         ws[2] <= kMaxKernel;
}

bool supported(int nparam, int expected, const int *ndims, int64_t **shapes, const char **dtypes) {
  if (nparam != expected || !float32(nparam, dtypes) || !depthwise_shapes(ndims, shapes)) return false;
  for (int i = 2; i < nparam; ++i)
    if (ndims[i] != 4) return false;
  return true;
}

bool is_bias(const int *ndims, int64_t **shapes, int index, int64_t channels) {
  return ndims[index] == 1 && shapes[index][0] == channels;
}

void forward_plain(const Shape &g, void **params) {
  forward<kIdentity>(g, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]), nullptr,
                     static_cast<float *>(params[2]));
}

int64_t elements(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

}  // namespace

extern "C" void DwSetThreads(int threads) { pool().set_threads(threads); }

#define ENTRY(name, function, nparam, stride)                                                                 \
  extern "C" int name(int nparam_, void **params, int *ndims, int64_t **shapes, const char **dtypes,          \
                      void *, void *) {                                                                       \
    if (!supported(nparam_, nparam, ndims, shapes, dtypes)) return 1;                                         \
    function(Shape(shapes[0], shapes[1], shapes[2], stride), params);                                         \
    return 0;                                                                                                 \
  }

ENTRY(DwFwd1, forward_plain, 3, 1)
ENTRY(DwFwd2, forward_plain, 3, 2)
ENTRY(DwBwd1, backward, 5, 1)
ENTRY(DwBwd2, backward, 5, 2)

// x, w, b -> y
#define BIASED_ENTRY(name, act, stride)                                                                       \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,  \
                      void *) {                                                                               \
    if (nparam != 4 || !float32(nparam, dtypes) || !depthwise_shapes(ndims, shapes) ||                        \
        !is_bias(ndims, shapes, 2, shapes[0][1]) || ndims[3] != 4)                                            \
      return 1;                                                                                               \
    forward<act>(Shape(shapes[0], shapes[1], shapes[3], stride), static_cast<const float *>(params[0]),       \
                 static_cast<const float *>(params[1]), static_cast<const float *>(params[2]),                \
                 static_cast<float *>(params[3]));                                                            \
    return 0;                                                                                                 \
  }

BIASED_ENTRY(DwFwdId1, kIdentity, 1)
BIASED_ENTRY(DwFwdId2, kIdentity, 2)
BIASED_ENTRY(DwFwdRelu1, kRelu, 1)
BIASED_ENTRY(DwFwdRelu2, kRelu, 2)
BIASED_ENTRY(DwFwdHSwish1, kHardSwish, 1)
BIASED_ENTRY(DwFwdHSwish2, kHardSwish, 2)

// x (NCHW), b (C) -> y
#define BIAS_ENTRY(name, act)                                                                                 \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,  \
                      void *) {                                                                               \
    if (nparam != 3 || !float32(nparam, dtypes) || ndims[0] != 4 || !is_bias(ndims, shapes, 1, shapes[0][1])) \
      return 1;                                                                                               \
    bias_activation<act>(shapes[0], static_cast<const float *>(params[0]), static_cast<const float *>(params[1]), \
                         static_cast<float *>(params[2]));                                                    \
    return 0;                                                                                                 \
  }

BIAS_ENTRY(BiasId, kIdentity)
BIAS_ENTRY(BiasRelu, kRelu)
BIAS_ENTRY(BiasHSwish, kHardSwish)

// x (N,C,H,W), w1 (S,C,1,1), b1 (S), w2 (C,S,1,1), b2 (C) -> y
extern "C" int SqueezeExcite(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                             void *) {
  if (nparam != 6 || !float32(nparam, dtypes) || ndims[0] != 4 || ndims[1] != 4 || ndims[3] != 4) return 1;
  int64_t channels = shapes[0][1], squeezed = shapes[1][0];
  if (shapes[1][1] != channels || shapes[1][2] * shapes[1][3] != 1 || !is_bias(ndims, shapes, 2, squeezed) ||
      shapes[3][0] != channels || shapes[3][1] != squeezed || shapes[3][2] * shapes[3][3] != 1 ||
      !is_bias(ndims, shapes, 4, channels))
    return 1;
  squeeze_excite(shapes[0], squeezed, static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                 static_cast<const float *>(params[2]), static_cast<const float *>(params[3]),
                 static_cast<const float *>(params[4]), static_cast<float *>(params[5]));
  return 0;
}


// x -> y, any shape
extern "C" int HSwish(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 2 || !float32(nparam, dtypes)) return 1;
  hard_swish(elements(ndims[0], shapes[0]), static_cast<const float *>(params[0]), static_cast<float *>(params[1]));
  return 0;
}

// x, dy -> dx, all of one shape
extern "C" int HSwishGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                          void *) {
  if (nparam != 3 || !float32(nparam, dtypes) || elements(ndims[0], shapes[0]) != elements(ndims[1], shapes[1]))
    return 1;
  hard_swish_grad(elements(ndims[0], shapes[0]), static_cast<const float *>(params[0]),
                  static_cast<const float *>(params[1]), static_cast<float *>(params[2]));
  return 0;
}

// x (N,C,H,W) -> y (N,C,1,1)
extern "C" int Mean(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *, void *) {
  if (nparam != 2 || !float32(nparam, dtypes) || ndims[0] != 4 ||
      elements(ndims[1], shapes[1]) != shapes[0][0] * shapes[0][1])
    return 1;
  global_mean(shapes[0], static_cast<const float *>(params[0]), static_cast<float *>(params[1]));
  return 0;
}

// x (N,C,H,W), dy (N,C,1,1) -> dx (N,C,H,W)
extern "C" int MeanGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,
                        void *) {
  if (nparam != 3 || !float32(nparam, dtypes) || ndims[0] != 4 ||
      elements(ndims[1], shapes[1]) != shapes[0][0] * shapes[0][1])
    return 1;
  global_mean_grad(shapes[0], static_cast<const float *>(params[1]), static_cast<float *>(params[2]));
  return 0;
}
