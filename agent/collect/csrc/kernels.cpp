// nnwatch CPU statistics kernels: sums of squares over many float32 tensors in one call.
//
// Built on first use by agent/native.py against the installed torch and loaded with
// torch.ops.load_library. Python pays about a microsecond per tensor per kernel call; these ops take
// the whole list at once, split it into fixed blocks, and run the blocks on torch's own intra-op
// threads, so a list of a few hundred small tensors costs one call and reads memory at the rate of
// a single flat dot product. Blocks are summed in a fixed order: the result does not depend on the
// number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <vector>

namespace {

constexpr int64_t kBlock = 1 << 15;  // elements per work item: 128 KiB of float32
constexpr int64_t kLane = 1 << 10;   // float accumulation over 1024 elements, then double

struct Item {
  int64_t tensor, begin, end;
};

// Sum of squares of x[0..n), float lanes per kLane elements (vectorised), double across them.
__attribute__((target_clones("avx512f", "avx2", "default")))
double sum_squares(const float* x, int64_t n) {
  double total = 0.0;
  int64_t i = 0;
  for (; i + kLane <= n; i += kLane) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < kLane; ++j) acc += x[i + j] * x[i + j];
    total += acc;
  }
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = i; j < n; ++j) acc += x[j] * x[j];
  return total + acc;
}

// Sum of squares of (a - b) and of a over [0..n), the same way.
__attribute__((target_clones("avx512f", "avx2", "default")))
void diff_squares(const float* a, const float* b, int64_t n, double* diff, double* own) {
  double td = 0.0, ta = 0.0;
  int64_t i = 0;
  for (; i + kLane <= n; i += kLane) {
    float ad = 0.0f, aa = 0.0f;
#pragma omp simd reduction(+ : ad, aa)
    for (int64_t j = 0; j < kLane; ++j) {
      float d = a[i + j] - b[i + j];
      ad += d * d;
      aa += a[i + j] * a[i + j];
    }
    td += ad;
    ta += aa;
  }
  float ad = 0.0f, aa = 0.0f;
#pragma omp simd reduction(+ : ad, aa)
  for (int64_t j = i; j < n; ++j) {
    float d = a[j] - b[j];
    ad += d * d;
    aa += a[j] * a[j];
  }
  *diff = td + ad;
  *own = ta + aa;
}

// Dense float32 CPU tensors whose elements fill one block of memory in some order (contiguous, channels-last,
// transposed): a sum over every element does not depend on the order, so the block is read as it lies.
void check(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.layout() == at::kStrided &&
                  t.is_non_overlapping_and_dense(),
              "nnwatch::", what, " takes dense float32 CPU tensors (contiguous in some dimension order)");
}

std::vector<Item> split(at::TensorList xs, int64_t* total) {
  std::vector<Item> items;
  int64_t sum = 0;
  for (int64_t k = 0; k < static_cast<int64_t>(xs.size()); ++k) {
    const int64_t n = xs[k].numel();
    sum += n;
    for (int64_t b = 0; b < n; b += kBlock) items.push_back({k, b, std::min(n, b + kBlock)});
  }
  *total = sum;
  return items;
}

// Runs fn(item index) for every item, on torch's intra-op threads when there is enough data to share:
// each thread takes a contiguous run of items holding about the same number of elements.
template <typename Fn>
void run(const std::vector<Item>& items, int64_t total, Fn fn) {
  const int64_t count = static_cast<int64_t>(items.size());
  const int64_t threads = total >= 4 * kBlock ? std::min<int64_t>(at::get_num_threads(), count) : 1;
  if (threads <= 1) {
    for (int64_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::vector<int64_t> first(threads + 1, count);  // first item of each thread's share
  int64_t seen = 0, t = 0;
  for (int64_t i = 0; i < count && t < threads; ++i) {
    while (t < threads && seen >= total * t / threads) first[t++] = i;
    seen += items[i].end - items[i].begin;
  }
  at::parallel_for(0, threads, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k)
      for (int64_t i = first[k]; i < first[k + 1]; ++i) fn(i);
  });
}

// Per-tensor totals of the items' partial sums, added in item order (the same for any thread count), as a
// float32 tensor of ``rows`` x ``n`` (one row per partial-sum vector).
at::Tensor totals(const std::vector<Item>& items, std::initializer_list<const std::vector<double>*> parts, int64_t n) {
  auto out = at::empty({static_cast<int64_t>(parts.size()), n}, at::kFloat);
  float* o = out.data_ptr<float>();
  for (const auto* part : parts) {
    std::vector<double> acc(n, 0.0);
    for (size_t i = 0; i < items.size(); ++i) acc[items[i].tensor] += (*part)[i];
    for (int64_t k = 0; k < n; ++k) o[k] = static_cast<float>(acc[k]);
    o += n;
  }
  return out;
}

at::Tensor sum_squares_op(at::TensorList xs) {
  for (const auto& t : xs) check(t, "sum_squares");
  int64_t total = 0;
  const auto items = split(xs, &total);
  std::vector<const float*> ptr(xs.size());
  for (size_t k = 0; k < xs.size(); ++k) ptr[k] = xs[k].data_ptr<float>();
  std::vector<double> part(items.size());
  run(items, total, [&](int64_t i) {
    const Item& it = items[i];
    part[i] = sum_squares(ptr[it.tensor] + it.begin, it.end - it.begin);
  });
  return totals(items, {&part}, static_cast<int64_t>(xs.size()))[0];
}

at::Tensor update_sums_op(at::TensorList now, at::TensorList before) {
  TORCH_CHECK(now.size() == before.size(), "nnwatch::update_sums takes two lists of the same length");
  for (size_t k = 0; k < now.size(); ++k) {
    check(now[k], "update_sums");
    check(before[k], "update_sums");
    TORCH_CHECK(now[k].sizes() == before[k].sizes() && now[k].strides() == before[k].strides(),
                "nnwatch::update_sums: tensor ", k, " has shape ", now[k].sizes(), " and strides ", now[k].strides(),
                " now but ", before[k].sizes(), " and ", before[k].strides(), " before");  // elements must pair up
  }
  int64_t total = 0;
  const auto items = split(now, &total);
  const int64_t n = static_cast<int64_t>(now.size());
  std::vector<const float*> a(n), b(n);
  for (int64_t k = 0; k < n; ++k) {
    a[k] = now[k].data_ptr<float>();
    b[k] = before[k].data_ptr<float>();
  }
  std::vector<double> pd(items.size()), pa(items.size());
  run(items, total, [&](int64_t i) {
    const Item& it = items[i];
    diff_squares(a[it.tensor] + it.begin, b[it.tensor] + it.begin, it.end - it.begin, &pd[i], &pa[i]);
  });
  return totals(items, {&pd, &pa}, n);
}

}  // namespace

TORCH_LIBRARY(nnwatch, m) {
  m.def("sum_squares(Tensor[] xs) -> Tensor", sum_squares_op);
  m.def("update_sums(Tensor[] now, Tensor[] before) -> Tensor", update_sums_op);
}
