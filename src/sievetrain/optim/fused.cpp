// StochGradAdam's fused CPU step: the mask is drawn inside the update pass, so no
// parameter-sized temporary is written. Built on first use by sievetrain/optim/fused.py
// (plain C ABI, loaded with ctypes: no torch headers, so a build takes about a second).
//
// Mask stream (mirrored in numpy by fused.keep_flags): a step's 64-bit key gives
// tensor j the key k = mix64(key + (j + 1) * TENSOR), split into 32-bit halves klo, khi.
// Word w of the tensor's stream is mix32(mix32(w + klo) ^ khi), a hash of a counter:
// every entry's bits depend on (key, j, i) only, so any split over threads gives the
// same numbers. Each word holds two 16-bit lanes; entry i takes lane (i / 8) % 2 of
// word 8 * (i / 16) + i % 8 (so that 8 consecutive entries read 8 consecutive words,
// which vectorises), and is kept when that lane is below threshold = round(s * 2**16),
// compared unsigned, so every rate in (0, 1] is represented (65536 keeps all).
// i is the entry's index in the whole tensor: a shard (FSDP2) whose entries are
// entries [offset, offset + numel) of its tensor passes that offset, and draws the
// masks the unsharded tensor draws there.

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr uint64_t TENSOR = 0xD1B54A32D192ED03ULL;  // an odd constant of its own per tensor
constexpr int64_t BLOCK = 256;                      // entries whose keep flags are drawn at once
constexpr int64_t GRAIN = 32768;                    // entries per parallel work item

inline uint64_t mix64(uint64_t z) {  // splitmix64's finaliser
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

struct Step {  // hyperparameters of one step, in the update's precision
  double beta1, beta2, eps, weight_decay, scale;
  uint32_t threshold;
  bool maximize, freeze, amsgrad;
};

inline uint32_t mix32(uint32_t x) {  // a 32-bit integer hash of full avalanche
  x ^= x >> 16;
  x *= 0x7FEB352DU;
  x ^= x >> 15;
  x *= 0x846CA68BU;
  return x ^ (x >> 16);
}

// Keep flags (1 or 0) of entries [start, start + n) of the tensor keyed by `k`, n <= BLOCK;
// `keep` has room for BLOCK + 16. Drawn from the multiple of 16 at or below `start`
// (the layout repeats every 16 entries); returns where entry `start`'s flag is. The
// words are hashed first, then split into lanes: two straight loops, each one vector wide.
template <typename T>
inline const T* draw(uint64_t k, int64_t start, int64_t n, uint32_t threshold, T* keep) {
  const int64_t aligned = start - start % 16;
  const uint32_t first = (uint32_t)(aligned / 2), klo = (uint32_t)k, khi = (uint32_t)(k >> 32);
  uint32_t bits[(BLOCK + 16) / 2];
  const int64_t words = ((n + start - aligned + 15) / 16) * 8;
  for (int64_t w = 0; w < words; ++w) {
    bits[w] = mix32(mix32(first + (uint32_t)w + klo) ^ khi);
  }
  for (int64_t q = 0; q < words / 8; ++q) {
    for (int r = 0; r < 8; ++r) {  // entry 16q + r: low lane; 16q + 8 + r: high lane
      keep[16 * q + r] = (T)((bits[8 * q + r] & 0xFFFF) < threshold);
      keep[16 * q + 8 + r] = (T)((bits[8 * q + r] >> 16) < threshold);
    }
  }
  return keep + (start - aligned);
}

// The update of entries [start, end) of one tensor, whose first entry is entry `offset`
// of the whole tensor; `mode`: 0 draw, 1 all kept, 2 none.
// FREEZE: a masked entry is left as it was (else it counts as a zero gradient).
template <typename T, bool FREEZE, bool AMSGRAD>
void update(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
            T* __restrict vmax, int64_t start, int64_t end, int64_t offset, uint64_t k, int mode,
            T step_size, T bc2_inv, const Step& s) {
  const T b1 = (T)s.beta1, b2 = (T)s.beta2, eps = (T)s.eps, wd = (T)s.weight_decay;
  const T scale = (T)s.scale, w1 = 1 - b1, w2 = 1 - b2, sign = s.maximize ? -1 : 1;
  T buffer[BLOCK + 16];
  const T* keep = buffer;
  for (int64_t lo = start; lo < end; lo += BLOCK) {
    const int64_t n = (end - lo < BLOCK) ? end - lo : BLOCK;
    if (mode == 0) {
      keep = draw<T>(k, offset + lo, n, s.threshold, buffer);
    } else {
      for (int64_t i = 0; i < n; ++i) buffer[i] = (T)(mode == 1);
      keep = buffer;
    }
    for (int64_t i = 0; i < n; ++i) {  // no branches, so that it vectorises
      const int64_t e = lo + i;
      const T kept = keep[i];  // 1 or 0, used as the unfused path uses its mask
      const T grad = (sign * g[e] + wd * p[e]) * scale;  // maximize, coupled L2, as Adam
      const T m_old = m[e], v_old = v[e];
      T m_new, v_new;
      if (FREEZE) {  // masked: moments and parameter unchanged
        m_new = m_old + w1 * ((grad - m_old) * kept);
        v_new = v_old + w2 * ((grad * grad - v_old) * kept);
      } else {  // masked: a zero gradient
        const T masked = grad * kept;
        m_new = m_old + w1 * (masked - m_old);
        v_new = b2 * v_old + w2 * masked * masked;
      }
      m[e] = m_new;
      v[e] = v_new;
      T second = v_new;
      if (AMSGRAD) {
        second = (vmax[e] > v_new) ? vmax[e] : v_new;
        vmax[e] = second;
      }
      const T direction = FREEZE ? m_new * kept : m_new;
      p[e] -= step_size * direction / (std::sqrt(second) * bc2_inv + eps);
    }
  }
}

template <typename T>
void update(T* p, const T* g, T* m, T* v, T* vmax, int64_t start, int64_t end, int64_t offset,
            uint64_t k, int mode, T step_size, T bc2_inv, const Step& s) {
  if (s.freeze) {
    (s.amsgrad ? update<T, true, true> : update<T, true, false>)(
        p, g, m, v, vmax, start, end, offset, k, mode, step_size, bc2_inv, s);
  } else {
    (s.amsgrad ? update<T, false, true> : update<T, false, false>)(
        p, g, m, v, vmax, start, end, offset, k, mode, step_size, bc2_inv, s);
  }
}

// A row of the table per tensor: p, g, m, v, vmax (0 without AMSGrad), step (a float32
// count, incremented here), numel, mode (0 draw, 1 all kept, 2 none), dtype (0 float32,
// 1 float64), offset (index of its first entry in the whole tensor: 0 but for shards).
// All pointers are to dense memory in one layout.
constexpr int ROW = 10;

void step(int64_t count, const int64_t* table, uint64_t key, double lr, const Step& s,
          int threads) {
  // The step counts and Adam's bias corrections, once per tensor, in double.
  std::vector<double> sizes(2 * count);
  int64_t items = 0, total = 0;
  for (int64_t j = 0; j < count; ++j) {
    const int64_t* t = table + ROW * j;
    float* counter = (float*)t[5];
    *counter += 1;
    sizes[2 * j] = lr / (1 - std::pow(s.beta1, (double)*counter));
    sizes[2 * j + 1] = 1 / std::sqrt(1 - std::pow(s.beta2, (double)*counter));
    items += (t[6] + GRAIN - 1) / GRAIN;
    total += t[6];
  }
  // Work items: (tensor, chunk of GRAIN entries), spread over the threads.
  const int use = (total >= 2 * GRAIN && threads > 1) ? threads : 1;
#pragma omp parallel for schedule(static) num_threads(use)
  for (int64_t item = 0; item < items; ++item) {
    int64_t j = 0, first = 0, chunks = 0;
    for (;; ++j) {  // which tensor the item falls in (few tensors: a short scan)
      chunks = (table[ROW * j + 6] + GRAIN - 1) / GRAIN;
      if (item < first + chunks) break;
      first += chunks;
    }
    const int64_t* t = table + ROW * j;
    const int64_t lo = (item - first) * GRAIN;
    const int64_t hi = (lo + GRAIN < t[6]) ? lo + GRAIN : t[6];
    const uint64_t k = mix64(key + (uint64_t)(j + 1) * TENSOR);
    const int mode = (int)t[7];
    if (t[8] == 0) {
      update<float>((float*)t[0], (const float*)t[1], (float*)t[2], (float*)t[3],
                    (float*)t[4], lo, hi, t[9], k, mode, (float)sizes[2 * j],
                    (float)sizes[2 * j + 1], s);
    } else {
      update<double>((double*)t[0], (const double*)t[1], (double*)t[2], (double*)t[3],
                     (double*)t[4], lo, hi, t[9], k, mode, sizes[2 * j], sizes[2 * j + 1], s);
    }
  }
}

}  // namespace

extern "C" {

// One step over `count` tensors (rows of `table`, see ROW); flags: 1 maximize,
// 2 freeze, 4 amsgrad.
void sievetrain_stochgradadam(int64_t count, const int64_t* table, uint64_t key,
                              uint32_t threshold, double lr, double beta1, double beta2,
                              double eps, double weight_decay, double scale, int flags,
                              int threads) {
  const Step s{beta1, beta2, eps, weight_decay, scale, threshold,
               (flags & 1) != 0, (flags & 2) != 0, (flags & 4) != 0};
  step(count, table, key, lr, s, threads);
}
}
