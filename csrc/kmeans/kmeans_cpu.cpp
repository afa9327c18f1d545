// CPU k-means: the driver (threads, slabs, reductions, empty clusters, convergence) and the
// portable instantiation of the SIMD kernels. Semantics in kmeans.h.
//
// Work is cut into slabs of SLAB points (a function of N and K only). Every slab accumulates
// its own float64 sums and the slabs are added in order, so the result is bitwise the same for
// any thread count and for a problem run alone or inside a batch. Threads go either across
// problems (each problem runs start to end on one thread: batches of small problems) or across
// the slabs of one problem at a time (few large problems), whichever keeps more threads busy.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "common/errors.h"
#include "common/parallel.h"
#include "kmeans/kmeans.h"
#include "kmeans/kmeans_cpu_kernels.h"

namespace unseg {
namespace kmeans_cpu {
namespace {

// Portable 4 float lanes (SSE2 on x86-64, NEON on arm64) through the compiler's vector
// extension; a * b + c contracts to an FMA where the target has one.
struct GenericVec {
  typedef float R __attribute__((vector_size(16)));
  static constexpr int W = 4;
  static R zero() { return R{0.0f, 0.0f, 0.0f, 0.0f}; }
  static R load(const float* p) {
    R r;
    std::memcpy(&r, p, sizeof(r));
    return r;
  }
  static R load_partial(const float* p, int n) {
    R r = zero();
    for (int i = 0; i < n; ++i) r[i] = p[i];
    return r;
  }
  static void store(float* p, R r) { std::memcpy(p, &r, sizeof(r)); }
  static void store_partial(float* p, R r, int n) {
    for (int i = 0; i < n; ++i) p[i] = r[i];
  }
  static R fma(R a, R b, R acc) { return a * b + acc; }
  static R add(R a, R b) { return a + b; }
  static R sub(R a, R b) { return a - b; }
  static void keep_in_register(R&) {}
  static float hsum(R r) { return (r[0] + r[2]) + (r[1] + r[3]); }
};

}  // namespace

const KernelTable& generic_kernels() {
  static const KernelTable table = make_table<GenericVec>("generic");
  return table;
}

}  // namespace kmeans_cpu

namespace {

using kmeans_cpu::AssignArgs;
using kmeans_cpu::KernelTable;
using kmeans_cpu::PackedCentroids;

// Widest vector of any kernel table: the packed centroid rows are padded to a multiple of it.
constexpr int64_t MAX_LANES = 8;
// Smallest slab. Larger K gets larger slabs so that the per-slab float64 sums (K * D each)
// stay below 1/8 of the points they summarise.
constexpr int64_t SLAB_MIN = 4096;
constexpr int64_t SLAB_PER_CLUSTER = 16;
constexpr float NORM_EPS = 1e-10f;

bool cpu_has_avx2() {
#if defined(UNSEG_HAVE_AVX2_KERNELS)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

const KernelTable& kernels_for(CpuIsa isa) {
  if (isa == CpuIsa::kGeneric) return kmeans_cpu::generic_kernels();
  const bool avx2 = cpu_has_avx2();
  UNSEG_CHECK_ARG(isa != CpuIsa::kAvx2 || avx2,
                  "the AVX2 k-means kernels were requested but this CPU or build lacks AVX2/FMA");
#if defined(UNSEG_HAVE_AVX2_KERNELS)
  if (avx2) return kmeans_cpu::avx2_kernels();
#endif
  return kmeans_cpu::generic_kernels();
}

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

int64_t slab_size(const KMeansShape& s) {
  return round_up(std::max(SLAB_MIN, SLAB_PER_CLUSTER * s.k), kmeans_cpu::MR);
}

// Runs fn(item, worker) for item in [0, n) on up to `threads` workers that take items in turn
// (worker < threads). Items must write disjoint outputs; results then do not depend on which
// worker ran which item.
template <typename Fn>
void for_each_item(int64_t n, int threads, Fn&& fn) {
  if (threads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  const int workers = static_cast<int>(std::min<int64_t>(threads, n));
  std::atomic<int64_t> next{0};
  parallel_for(workers, workers, [&](int64_t begin, int64_t end) {
    for (int64_t w = begin; w < end; ++w) {
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i, static_cast<int>(w));
    }
  });
}

// One problem's buffers and steps. A solver is reused for many problems of the same shape by
// one thread (threads = 1), or runs one problem at a time with its slabs on `threads` threads.
class Solver {
 public:
  Solver(const KernelTable& kt, const KMeansShape& shape, int threads)
      : kt_(kt),
        n_(shape.n),
        d_(shape.d),
        k_(shape.k),
        threads_(threads),
        slab_(slab_size(shape)),
        slabs_((shape.n + slab_ - 1) / slab_),
        kp_(round_up(shape.k, kmeans_cpu::NR)),
        dp_(round_up(shape.d, MAX_LANES)) {}

  void seed(const float* x, const double* u, float* c) {
    d2_.assign(n_, std::numeric_limits<float>::infinity());
    slab_total_.resize(slabs_);
    int64_t pick = uniform_pick(u[0], n_);
    std::memcpy(c, x + pick * d_, d_ * sizeof(float));
    for (int64_t j = 1; j < k_; ++j) {
      const float* prev = c + (j - 1) * d_;
      for_each_item(slabs_, threads_, [&](int64_t s, int) {
        const int64_t p0 = s * slab_, np = std::min(slab_, n_ - p0);
        slab_total_[s] = kt_.min_sq_dist(x + p0 * d_, np, d_, prev, d2_.data() + p0);
      });
      double total = 0.0;
      for (double t : slab_total_) total += t;
      if (total > 0.0) {
        pick = sample(u[j] * total);
      } else {
        // Every point sits on a chosen centroid: any point is as good as another.
        pick = uniform_pick(u[j], n_);
      }
      std::memcpy(c + j * d_, x + pick * d_, d_ * sizeof(float));
    }
  }

  void lloyd(const float* x, KMeansMetric metric, double tol, int max_iter, float* c,
             int64_t* labels, double* inertia, int64_t* n_iter) {
    const bool cosine = metric == KMeansMetric::kCosine;
    allocate(cosine);
    const double tol_abs = tol > 0.0 ? tol * mean_variance(x) : 0.0;
    std::fill(labels, labels + n_, int64_t{-1});
    if (!cosine) {
      for_each_item(slabs_, threads_, [&](int64_t s, int) {
        const int64_t p0 = s * slab_;
        kt_.sq_norms(x + p0 * d_, std::min(slab_, n_ - p0), d_, x_sq_.data() + p0);
      });
    }
    int64_t it = 0;
    // Whether the labels already are the assignment to the current centroids: true after an
    // iteration that changed no label when the centroids it assigned to were the plain means
    // of the previous labels and its own update re-seeded nothing (both updates then averaged
    // the same labels, bitwise, so the centroids did not move).
    bool consistent = false;
    bool prev_was_mean = false;  // the initial centroids are not means
    while (it < max_iter) {
      ++it;
      pack(c, cosine);
      const int64_t changes = assign(x, cosine, labels, /*accumulate=*/true);
      reduce_slabs();
      const bool relocated = relocate_empty(x, labels);
      const double shift = update(c, cosine);
      consistent = changes == 0 && !relocated && prev_was_mean;
      prev_was_mean = !relocated;
      if (changes == 0 || shift <= tol_abs) break;
    }
    *n_iter = it;
    if (!consistent) {
      // Labels consistent with the returned centroids (scikit-learn's final E-step).
      pack(c, cosine);
      assign(x, cosine, labels, /*accumulate=*/false);
    }
    for_each_item(slabs_, threads_, [&](int64_t s, int) {
      const int64_t p0 = s * slab_;
      slab_total_[s] =
          kt_.exact_cost(x + p0 * d_, std::min(slab_, n_ - p0), d_, c, labels + p0, cosine ? 1 : 0);
    });
    double total = 0.0;
    for (double t : slab_total_) total += t;
    *inertia = total;
  }

 private:
  // Mean over features of the per-feature (population) variance: column means, then mean
  // squared deviations, each as per-slab float64 partials added in slab order.
  double mean_variance(const float* x) {
    std::vector<double> partial(slabs_ * d_), mean(d_, 0.0), var(d_, 0.0);
    for (int pass = 0; pass < 2; ++pass) {
      for_each_item(slabs_, threads_, [&](int64_t s, int) {
        double* acc = partial.data() + s * d_;
        std::fill(acc, acc + d_, 0.0);
        const int64_t p0 = s * slab_, p1 = std::min(n_, p0 + slab_);
        for (int64_t p = p0; p < p1; ++p) {
          const float* row = x + p * d_;
          if (pass == 0) {
            for (int64_t j = 0; j < d_; ++j) acc[j] += row[j];
          } else {
            for (int64_t j = 0; j < d_; ++j) {
              const double t = row[j] - mean[j];
              acc[j] += t * t;
            }
          }
        }
      });
      std::vector<double>& out = pass == 0 ? mean : var;
      for (int64_t s = 0; s < slabs_; ++s)
        for (int64_t j = 0; j < d_; ++j) out[j] += partial[s * d_ + j];
      for (int64_t j = 0; j < d_; ++j) out[j] /= static_cast<double>(n_);
    }
    double total = 0.0;
    for (double v : var) total += v;
    return total / static_cast<double>(d_);
  }

  void allocate(bool cosine) {
    packed_.resize(kp_ * dp_);
    bias_.resize(kp_);
    if (!cosine) x_sq_.resize(n_);
    best_.resize(n_);
    slab_sums_.resize(slabs_ * k_ * d_);
    slab_counts_.resize(slabs_ * k_);
    slab_changes_.resize(slabs_);
    slab_total_.resize(slabs_);
    sums_.resize(k_ * d_);
    counts_.resize(k_);
    scratch_.resize(static_cast<size_t>(threads_) * k_ * dp_);
  }

  // D^2 sampling: the slab whose running total crosses target, then the point inside it.
  int64_t sample(double target) const {
    double base = 0.0, before_last = 0.0;
    int64_t s = 0, last = 0;
    for (; s < slabs_; ++s) {
      if (slab_total_[s] > 0.0) {
        last = s;
        before_last = base;
        if (base + slab_total_[s] > target) break;
      }
      base += slab_total_[s];
    }
    if (s == slabs_) {  // rounding put target past the end: take the last positive weight
      s = last;         // (dsquared_pick returns it when target - base is the slab's total)
      base = before_last;
    }
    const float* w = d2_.data() + s * slab_;
    const int64_t i = dsquared_pick<double>(target - base, std::min(slab_, n_ - s * slab_),
                                            [w](int64_t t) { return static_cast<double>(w[t]); });
    return s * slab_ + i;
  }

  void pack(const float* c, bool cosine) {
    kt_.pack(c, k_, d_, cosine ? 1 : 0, kp_, dp_, packed_.data(), bias_.data());
  }

  int64_t assign(const float* x, bool cosine, int64_t* labels, bool accumulate) {
    const PackedCentroids pc{packed_.data(), bias_.data(), k_, kp_, dp_};
    for_each_item(slabs_, threads_, [&](int64_t s, int worker) {
      const int64_t p0 = s * slab_;
      double* sums = slab_sums_.data() + s * k_ * d_;
      int64_t* counts = slab_counts_.data() + s * k_;
      if (accumulate) {
        std::fill(sums, sums + k_ * d_, 0.0);
        std::fill(counts, counts + k_, int64_t{0});
      }
      AssignArgs a{x + p0 * d_,
                   cosine ? nullptr : x_sq_.data() + p0,
                   std::min(slab_, n_ - p0),
                   d_,
                   pc,
                   labels + p0,
                   best_.data() + p0,
                   accumulate ? sums : nullptr,
                   counts,
                   scratch_.data() + static_cast<size_t>(worker) * k_ * dp_,
                   0};
      kt_.assign(a);
      slab_changes_[s] = a.changes;
    });
    int64_t changes = 0;
    for (int64_t v : slab_changes_) changes += v;
    return changes;
  }

  // sums and counts = the slab partials added in slab order (rows in parallel).
  void reduce_slabs() {
    for_each_item(k_, threads_, [&](int64_t k, int) {
      double* out = sums_.data() + k * d_;
      std::fill(out, out + d_, 0.0);
      int64_t count = 0;
      for (int64_t s = 0; s < slabs_; ++s) {
        const double* in = slab_sums_.data() + (s * k_ + k) * d_;
        for (int64_t j = 0; j < d_; ++j) out[j] += in[j];
        count += slab_counts_[s * k_ + k];
      }
      counts_[k] = count;
    });
  }

  // Re-seeds empty clusters (see kmeans.h); returns whether there were any.
  bool relocate_empty(const float* x, const int64_t* labels) {
    std::vector<int64_t> empty;
    for (int64_t k = 0; k < k_; ++k)
      if (counts_[k] == 0) empty.push_back(k);
    if (empty.empty()) return false;
    std::vector<int64_t> order(n_);
    std::iota(order.begin(), order.end(), int64_t{0});
    const float* best = best_.data();
    std::partial_sort(order.begin(), order.begin() + static_cast<int64_t>(empty.size()),
                      order.end(), [best](int64_t a, int64_t b) {
                        return best[a] > best[b] || (best[a] == best[b] && a < b);
                      });
    for (size_t e = 0; e < empty.size(); ++e) {
      const int64_t p = order[e], from = labels[p], to = empty[e];
      const float* xp = x + p * d_;
      for (int64_t j = 0; j < d_; ++j) {
        sums_[from * d_ + j] -= xp[j];
        sums_[to * d_ + j] = xp[j];
      }
      counts_[from] -= 1;
      counts_[to] = 1;
    }
    return true;
  }

  // Centroids from sums and counts (clusters left empty keep theirs); returns the sum of
  // squared moves.
  double update(float* c, bool cosine) {
    double shift = 0.0;
    std::vector<float> row(d_);
    for (int64_t k = 0; k < k_; ++k) {
      float* ck = c + k * d_;
      if (counts_[k] == 0) continue;
      const double inv = 1.0 / static_cast<double>(counts_[k]);
      double sq = 0.0;
      for (int64_t j = 0; j < d_; ++j) {
        row[j] = static_cast<float>(sums_[k * d_ + j] * inv);
        sq += static_cast<double>(row[j]) * row[j];
      }
      const float scale =
          cosine ? 1.0f / std::max(static_cast<float>(std::sqrt(sq)), NORM_EPS) : 1.0f;
      for (int64_t j = 0; j < d_; ++j) {
        const float v = row[j] * scale;
        const double move = static_cast<double>(v) - ck[j];
        shift += move * move;
        ck[j] = v;
      }
    }
    return shift;
  }

  const KernelTable& kt_;
  int64_t n_, d_, k_;
  int threads_;
  int64_t slab_, slabs_, kp_, dp_;
  std::vector<float> packed_, bias_, x_sq_, best_, d2_, scratch_;
  std::vector<double> slab_sums_, slab_total_, sums_;
  std::vector<int64_t> slab_counts_, slab_changes_, counts_;
};

// Runs fn(solver, b) for every problem, threads across problems or across slabs.
template <typename Fn>
void run_problems(const KernelTable& kt, const KMeansShape& shape, int num_threads, Fn&& fn) {
  const int threads = num_threads > 0 ? num_threads : default_num_threads();
  const int64_t slabs = (shape.n + slab_size(shape) - 1) / slab_size(shape);
  const int64_t across_problems = std::min<int64_t>(shape.batch, threads);
  const int64_t across_slabs = std::min<int64_t>(slabs, threads);
  if (across_problems > 1 && across_problems >= across_slabs) {
    std::vector<std::unique_ptr<Solver>> solvers(across_problems);
    for_each_item(shape.batch, threads, [&](int64_t b, int worker) {
      if (!solvers[worker]) solvers[worker] = std::make_unique<Solver>(kt, shape, 1);
      fn(*solvers[worker], b);
    });
  } else {
    Solver solver(kt, shape, threads);
    for (int64_t b = 0; b < shape.batch; ++b) fn(solver, b);
  }
}

void check_shape(const KMeansShape& s) {
  UNSEG_CHECK_ARG(s.batch >= 1 && s.n >= 1 && s.d >= 1, "x must be non-empty, got B=", s.batch,
                  " N=", s.n, " D=", s.d);
  UNSEG_CHECK_ARG(s.k >= 1 && s.k <= s.n, "k must be in [1, N=", s.n, "], got ", s.k);
}

}  // namespace

const char* kmeans_cpu_isa_name(CpuIsa isa) { return kernels_for(isa).name; }

void kmeans_plusplus_cpu(const float* x, KMeansShape shape, const double* u, float* centroids,
                         int num_threads, CpuIsa isa) {
  check_shape(shape);
  const KernelTable& kt = kernels_for(isa);
  run_problems(kt, shape, num_threads, [&](Solver& solver, int64_t b) {
    solver.seed(x + b * shape.n * shape.d, u + b * shape.k, centroids + b * shape.k * shape.d);
  });
}

void kmeans_lloyd_cpu(const float* x, KMeansShape shape, KMeansMetric metric, double tol,
                      int max_iter, float* centroids, int64_t* labels, double* inertia,
                      int64_t* n_iter, int num_threads, CpuIsa isa) {
  check_shape(shape);
  UNSEG_CHECK_ARG(max_iter >= 1, "max_iter must be >= 1, got ", max_iter);
  const KernelTable& kt = kernels_for(isa);
  run_problems(kt, shape, num_threads, [&](Solver& solver, int64_t b) {
    solver.lloyd(x + b * shape.n * shape.d, metric, tol, max_iter,
                 centroids + b * shape.k * shape.d, labels + b * shape.n, inertia + b, n_iter + b);
  });
}

}  // namespace unseg
