// N-API binding of the native kernels: checks every call's shapes against its typed arrays, picks the
// instruction set once at load time (the best one this CPU has, unless told otherwise), and splits each
// product over a small pool of kernel threads. Threads take whole output elements, so a result never depends
// on how many threads there are (kernels-impl.h states the numerics).
#include <node_api.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <functional>
#include <memory>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kernels.h"

#if defined(MOELA_HAS_X86_KERNELS)
#include <immintrin.h>
#define MOELA_X86 1
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() { std::this_thread::yield(); }
#endif

// ---------------------------------------------------------------------------------------------------------
// Instruction set

static bool cpu_has(const char* isa) {
#ifdef MOELA_X86
  __builtin_cpu_init();
  if (std::string(isa) == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("fma");
  if (std::string(isa) == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
  return std::string(isa) == "portable";
}

static const KernelTable* table_for(const std::string& isa) {
#ifdef MOELA_X86
  if (isa == "avx512" && cpu_has("avx512")) return moela_kernels_avx512();
  if (isa == "avx2" && cpu_has("avx2")) return moela_kernels_avx2();
#endif
  if (isa == "portable") return moela_kernels_portable();
  return nullptr;
}

static const KernelTable* best_table() {
  for (const char* isa : {"avx512", "avx2", "portable"}) {
    const KernelTable* t = table_for(isa);
    if (t) return t;
  }
  return moela_kernels_portable();
}

static const KernelTable* K = best_table();

// ---------------------------------------------------------------------------------------------------------
// Kernel threads: the caller and threads-1 workers, each starting on a range of its own.
//
// On the 2-core VMs this is measured on, a cache line takes about 220 ns to move from one core to the other (two
// pinned threads handing one atomic back and forth, AMD EPYC, 2026-12-05), so a small product's cost on two
// threads is mostly the lines it moves, not its instructions. Each thread therefore owns a contiguous share of the
// job's items, claimed in chunks through a cursor on a cache line of its own (uncontended, so it stays in that
// core's cache), and only a thread that runs out of its own share steals chunks from another's: a thread that is
// paused or starts late still leaves nothing undone. Each thread reports the items it computed once, when it finds
// nothing left. The same thread gets the same rows of a product every time, so its share of the weights can stay
// in its own cache from call to call.

typedef void (*ItemFn)(const void* args, int i0, int i1);

/**
 * Set while this process's cores belong to others: a decode instance whose expert-hosts, on the same machine, are
 * computing for it. Products then run on the calling thread alone, and an idle worker sleeps at once instead of
 * spinning, so that no thread of this process holds a core a host is waiting for. Cleared, the workers join the
 * next product again. Results are the same bits either way (every product is thread-count invariant).
 */
static std::atomic<bool> callerOnly{false};

class Pool {
 public:
  explicit Pool(int threads) : lanes_(threads) {
    for (int i = 1; i < threads; i++) workers_.emplace_back([this, i] { loop(i); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
      job_.gen.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int threads() const { return (int)lanes_.size(); }
  /** Chunks the workers (not callers) have computed: tests check that threads really took part. */
  double workerChunks() const { return (double)workerChunks_.v.load(); }

  /** Runs fn over items [0, n) in chunks of at most `chunk`, on this thread and the workers; returns when all are done. */
  void run(ItemFn fn, const void* args, int n, int chunk) {
    job_.seq.fetch_add(1, std::memory_order_acq_rel);  // odd: the job is being written
    job_.fn.store(fn, std::memory_order_relaxed);
    job_.args.store(args, std::memory_order_relaxed);
    job_.n.store(n, std::memory_order_relaxed);
    job_.chunk.store(chunk, std::memory_order_relaxed);
    done_.v.store(0, std::memory_order_relaxed);
    const uint32_t g = job_.gen.load(std::memory_order_relaxed) + 1;
    job_.gen.store(g);  // seq_cst: ordered before the load of sleeping_ below (a worker going to sleep does the reverse)
    job_.seq.fetch_add(1, std::memory_order_release);  // even: written
    if (sleeping_.v.load() > 0) {
      std::lock_guard<std::mutex> l(mu_);
      cv_.notify_all();
    }
    const int mine = work(0, g, fn, args, n, chunk);
    if (mine > 0) done_.v.fetch_add(mine, std::memory_order_acq_rel);
    // A worker still in a chunk may be waiting for this very core (a woken thread often lands on its waker's core
    // on these VMs): after a short spin, give the core up between looks rather than spin out a whole time slice.
    for (int spins = 0; done_.v.load(std::memory_order_acquire) < n; spins++) {
      if (spins < CALLER_SPIN) cpu_relax();
      else std::this_thread::yield();
    }
  }

 private:
  /** A thread's share of the current job: a cursor tagged with the job's generation (high half), position (low half). */
  struct alignas(64) Lane {
    std::atomic<uint64_t> cursor{0};
  };
  struct alignas(64) Job {
    // A seqlock over the fields below and gen: odd while the caller writes them. A worker that read gen and went
    // late could otherwise take the next job's fields, written before that job's gen, as this job's.
    std::atomic<uint32_t> seq{0};
    std::atomic<uint32_t> gen{0};
    std::atomic<ItemFn> fn{nullptr};
    std::atomic<const void*> args{nullptr};
    std::atomic<int> n{0}, chunk{1};
  };
  struct alignas(64) Counter {
    std::atomic<int64_t> v{0};
  };

  static uint64_t tag(uint32_t g, uint32_t pos) { return (uint64_t)g << 32 | pos; }

  /** Claims [*i0, *i1) from lane k's share of job g; false when it is used up or the job is over. */
  bool claim(int k, uint32_t g, int n, int chunk, int* i0, int* i1) {
    const int T = threads();
    const int start = (int)((int64_t)n * k / T), end = (int)((int64_t)n * (k + 1) / T);
    std::atomic<uint64_t>& c = lanes_[k].cursor;
    uint64_t cur = c.load(std::memory_order_acquire);
    for (;;) {
      const uint32_t cg = (uint32_t)(cur >> 32);
      if (cg != g) {
        // Untouched by job g so far: start it at its share's beginning. A lane already on a later job means
        // this thread woke late and g is over.
        if ((int32_t)(cg - g) > 0) return false;
        if (c.compare_exchange_weak(cur, tag(g, (uint32_t)start), std::memory_order_acq_rel)) cur = tag(g, (uint32_t)start);
        continue;
      }
      const int pos = (int)(uint32_t)cur;
      if (pos >= end) return false;
      const int next = std::min(end, pos + chunk);
      if (c.compare_exchange_weak(cur, tag(g, (uint32_t)next), std::memory_order_acq_rel)) {
        *i0 = pos;
        *i1 = next;
        return true;
      }
    }
  }

  /** Thread `self` computes job g's chunks, its own share first, then the others'; returns the items it computed. */
  int work(int self, uint32_t g, ItemFn fn, const void* args, int n, int chunk) {
    const int T = threads();
    int items = 0, chunks = 0;
    for (int d = 0; d < T; d++) {
      const int k = (self + d) % T;
      int i0, i1;
      while (claim(k, g, n, chunk, &i0, &i1)) {
        fn(args, i0, i1);
        items += i1 - i0;
        chunks++;
      }
    }
    if (self != 0 && chunks > 0) workerChunks_.v.fetch_add(chunks, std::memory_order_relaxed);
    return items;
  }

  void loop(int self) {
    // From generation 0, not from whatever the generation is when this thread first runs: a job issued right
    // after the pool was made (before this thread started) is still joined.
    uint32_t seen = 0;
    for (;;) {
      // Jobs come in bursts (every layer of a step): spin a little before sleeping.
      for (int i = 0; i < SPIN && job_.gen.load(std::memory_order_acquire) == seen && !callerOnly.load(std::memory_order_relaxed); i++) {
        // Now and then the core goes to whoever else wants it (the caller, when both landed on one core).
        if (i % YIELD_EVERY == YIELD_EVERY - 1) std::this_thread::yield();
        else cpu_relax();
      }
      if (job_.gen.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> l(mu_);
        sleeping_.v.fetch_add(1);
        cv_.wait(l, [&] { return job_.gen.load() != seen || stop_; });
        sleeping_.v.fetch_sub(1);
      }
      if (stop_) return;
      // The job's generation and fields, read between two even loads of the same seq: a job being written or
      // rewritten meanwhile is read again.
      uint32_t g, s1;
      ItemFn fn;
      const void* args;
      int n, chunk;
      for (;;) {
        s1 = job_.seq.load(std::memory_order_acquire);
        if (s1 & 1) {
          cpu_relax();
          continue;
        }
        g = job_.gen.load(std::memory_order_relaxed);
        fn = job_.fn.load(std::memory_order_relaxed);
        args = job_.args.load(std::memory_order_relaxed);
        n = job_.n.load(std::memory_order_relaxed);
        chunk = job_.chunk.load(std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_acquire);
        if (job_.seq.load(std::memory_order_relaxed) == s1) break;
      }
      seen = g;
      const int items = work(self, g, fn, args, n, chunk);
      if (items > 0) done_.v.fetch_add(items, std::memory_order_acq_rel);
    }
  }

  static const int SPIN = 4000;
  static const int YIELD_EVERY = 256;
  /** About 20 us of pause before a waiting caller starts yielding its core. */
  static const int CALLER_SPIN = 1000;
  std::vector<std::thread> workers_;
  std::vector<Lane> lanes_;  // lane 0: the caller's
  std::mutex mu_;
  std::condition_variable cv_;
  Job job_;  // written by the caller only, read by the workers
  Counter done_;  // items computed, reported once per thread and job
  Counter sleeping_;
  Counter workerChunks_;
  bool stop_ = false;
};

static Pool* pool = nullptr;

/**
 * Below this many multiply-adds a product stays on the calling thread (waking a worker costs more than the
 * share it would take; scripts/bench/kernels.ts shows where threads start to pay). Tests set it to 0.
 */
static double parallelMinWork = 1 << 16;

/** Held while a job runs on the pool: a second JavaScript thread calling meanwhile computes on its own. */
static std::mutex poolBusy;

static void run_items(ItemFn fn, const void* args, int n, double work) {
  if (n <= 0) return;
  if (pool == nullptr || n == 1 || work < parallelMinWork || callerOnly.load(std::memory_order_relaxed) || !poolBusy.try_lock()) {
    fn(args, 0, n);
    return;
  }
  const int target = pool->threads() * 4;  // a few chunks per share, so a paused thread's share is stolen in parts
  pool->run(fn, args, n, (n + target - 1) / target);
  poolBusy.unlock();
}

// ---------------------------------------------------------------------------------------------------------
// N-API helpers

#define CHECK(call)                                        \
  do {                                                     \
    if ((call) != napi_ok) return throw_error(env, #call); \
  } while (0)

static napi_value throw_error(napi_env env, const char* what) {
  const napi_extended_error_info* info = nullptr;
  napi_get_last_error_info(env, &info);
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, nullptr, (std::string("moela native kernels: ") + what).c_str());
  return nullptr;
}

static napi_value range_error(napi_env env, const std::string& msg) {
  napi_throw_range_error(env, nullptr, ("moela native kernels: " + msg).c_str());
  return nullptr;
}

struct Arr {
  void* data = nullptr;
  size_t length = 0;  // elements
  napi_typedarray_type type = napi_uint8_array;
  bool present = false;
};

static bool get_array(napi_env env, napi_value v, Arr* out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return false;
  if (t == napi_null || t == napi_undefined) return true;
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_value ab;
  size_t byteOffset;
  if (napi_get_typedarray_info(env, v, &out->type, &out->length, &out->data, &ab, &byteOffset) != napi_ok) return false;
  out->present = true;
  return true;
}

static bool get_int(napi_env env, napi_value v, int* out) { return napi_get_value_int32(env, v, out) == napi_ok; }

/** The weight view from (kind, data, scale, rows, cols, blockRows, blockCols), checked against the arrays. */
static bool get_weight(napi_env env, napi_value* argv, WeightView* w, std::string* err) {
  Arr data, scale;
  if (!get_int(env, argv[0], &w->kind) || !get_array(env, argv[1], &data) || !get_array(env, argv[2], &scale) ||
      !get_int(env, argv[3], &w->rows) || !get_int(env, argv[4], &w->cols) || !get_int(env, argv[5], &w->blockRows) ||
      !get_int(env, argv[6], &w->blockCols)) {
    *err = "bad weight arguments (kind, data, scale, rows, cols, blockRows, blockCols)";
    return false;
  }
  static const napi_typedarray_type want[] = {napi_float32_array, napi_uint16_array, napi_uint16_array, napi_uint8_array};
  if (w->kind < 0 || w->kind > 3 || !data.present || data.type != want[w->kind]) {
    *err = "weight data does not match its kind";
    return false;
  }
  if (w->rows < 0 || w->cols <= 0 || (double)data.length < (double)w->rows * w->cols) {
    *err = "weight data is shorter than rows * cols";
    return false;
  }
  w->data = data.data;
  w->scale = nullptr;
  if (w->kind == W_FP8) {
    if (w->blockRows <= 0 || w->blockCols <= 0 || !scale.present || scale.type != napi_float32_array) {
      *err = "an FP8 weight needs positive block sizes and a Float32Array of scales";
      return false;
    }
    const double grid = (double)((w->rows + w->blockRows - 1) / w->blockRows) * ((w->cols + w->blockCols - 1) / w->blockCols);
    if ((double)scale.length < grid) {
      *err = "FP8 scale grid is too short";
      return false;
    }
    w->scale = (const float*)scale.data;
  }
  return true;
}

/** A Float32Array argument whose elements [off + lo, off + hi] must exist; returns its data at off. */
static float* f32_at(napi_env env, napi_value v, int off, double lo, double hi, const char* name, std::string* err) {
  Arr a;
  if (!get_array(env, v, &a) || !a.present || a.type != napi_float32_array) {
    *err = std::string(name) + " must be a Float32Array";
    return nullptr;
  }
  if (off < 0 || (double)off + lo < 0 || (double)off + hi >= (double)a.length) {
    *err = std::string(name) + " is too short for the product's shape";
    return nullptr;
  }
  return (float*)a.data + off;
}

// ---------------------------------------------------------------------------------------------------------
// Exports

// matmul(kind, data, scale, rows, cols, blockRows, blockCols, x, xOff, xStride, T, y, yOff, yStride, r0, nRows,
//        groups, rowStep, xStep, yStep)
static bool prep_matmul(napi_env env, napi_value* argv, std::function<void()>* run) {
  MatmulArgs a;
  std::string err;
  if (!get_weight(env, argv, &a.w, &err)) return range_error(env, err);
  int xOff, yOff;
  if (!get_int(env, argv[8], &xOff) || !get_int(env, argv[9], &a.xStride) || !get_int(env, argv[10], &a.T) ||
      !get_int(env, argv[12], &yOff) || !get_int(env, argv[13], &a.yStride) || !get_int(env, argv[14], &a.r0) ||
      !get_int(env, argv[15], &a.nRows) || !get_int(env, argv[16], &a.groups) || !get_int(env, argv[17], &a.rowStep) ||
      !get_int(env, argv[18], &a.xStep) || !get_int(env, argv[19], &a.yStep))
    return range_error(env, "matmul: integer arguments expected");
  if (a.T < 0 || a.nRows < 0 || a.groups < 1 || a.r0 < 0 || a.rowStep < 0 || a.xStep < 0 || a.yStep < 0 || a.xStride < 0 || a.yStride < 0)
    return range_error(env, "matmul: negative size or stride");
  if (a.T == 0 || a.nRows == 0) return true;
  const double G = a.groups - 1;
  if ((double)a.r0 + G * a.rowStep + a.nRows > a.w.rows) return range_error(env, "matmul: rows outside the weight");
  a.x = f32_at(env, argv[7], xOff, 0, G * a.xStep + (double)(a.T - 1) * a.xStride + a.w.cols - 1, "x", &err);
  if (!a.x) return range_error(env, err);
  a.y = f32_at(env, argv[11], yOff, 0, G * a.yStep + (double)(a.T - 1) * a.yStride + a.nRows - 1, "y", &err);
  if (!a.y) return range_error(env, err);
  *run = [a]() { run_items((ItemFn)K->matmul, &a, a.groups * ((a.nRows + 3) / 4), (double)a.groups * a.nRows * a.w.cols * a.T); };
  return true;
}

// matmulT(kind, data, scale, rows, cols, blockRows, blockCols, v, vOff, vStride, T, out, outOff, outStride, r0, n,
//         groups, rowStep, vStep, outStep)
static bool prep_matmul_t(napi_env env, napi_value* argv, std::function<void()>* run) {
  MatmulTArgs a;
  std::string err;
  if (!get_weight(env, argv, &a.w, &err)) return range_error(env, err);
  int vOff, outOff;
  if (!get_int(env, argv[8], &vOff) || !get_int(env, argv[9], &a.vStride) || !get_int(env, argv[10], &a.T) ||
      !get_int(env, argv[12], &outOff) || !get_int(env, argv[13], &a.outStride) || !get_int(env, argv[14], &a.r0) ||
      !get_int(env, argv[15], &a.n) || !get_int(env, argv[16], &a.groups) || !get_int(env, argv[17], &a.rowStep) ||
      !get_int(env, argv[18], &a.vStep) || !get_int(env, argv[19], &a.outStep))
    return range_error(env, "matmulT: integer arguments expected");
  if (a.T < 0 || a.n < 0 || a.groups < 1 || a.r0 < 0 || a.rowStep < 0 || a.vStep < 0 || a.outStep < 0 || a.vStride < 0 || a.outStride < 0)
    return range_error(env, "matmulT: negative size or stride");
  if (a.T == 0) return true;
  const double G = a.groups - 1;
  if ((double)a.r0 + G * a.rowStep + a.n > a.w.rows) return range_error(env, "matmulT: rows outside the weight");
  a.v = f32_at(env, argv[7], vOff, 0, G * a.vStep + (double)(a.T - 1) * a.vStride + (a.n > 0 ? a.n - 1 : 0), "v", &err);
  if (!a.v) return range_error(env, err);
  a.out = f32_at(env, argv[11], outOff, 0, G * a.outStep + (double)(a.T - 1) * a.outStride + a.w.cols - 1, "out", &err);
  if (!a.out) return range_error(env, err);
  *run = [a]() { run_items((ItemFn)K->matmul_t, &a, a.groups * ((a.w.cols + 63) / 64), (double)a.groups * a.n * a.w.cols * a.T); };
  return true;
}

// gemm(A, aOff, aRowStride, aColStride, B, bOff, bRowStride, bColStride, C, cOff, cStride, m, n, k, accumulate)
static bool prep_gemm(napi_env env, napi_value* argv, std::function<void()>* run) {
  GemmArgs a;
  std::string err;
  int aOff, aRs, aCs, bOff, bRs, bCs, cOff, cs, acc;
  if (!get_int(env, argv[1], &aOff) || !get_int(env, argv[2], &aRs) || !get_int(env, argv[3], &aCs) ||
      !get_int(env, argv[5], &bOff) || !get_int(env, argv[6], &bRs) || !get_int(env, argv[7], &bCs) ||
      !get_int(env, argv[9], &cOff) || !get_int(env, argv[10], &cs) || !get_int(env, argv[11], &a.m) ||
      !get_int(env, argv[12], &a.n) || !get_int(env, argv[13], &a.k) || !get_int(env, argv[14], &acc))
    return range_error(env, "gemm: integer arguments expected");
  if (a.m < 0 || a.n < 0 || a.k < 0 || aRs < 0 || aCs < 0 || bRs < 0 || bCs < 0 || cs < a.n)
    return range_error(env, "gemm: negative size or stride, or C's rows overlap");
  if (a.m == 0 || a.n == 0) return true;
  // With k = 0 the operands are not read (C becomes 0, or stays as it is).
  a.A = a.B = nullptr;
  if (a.k > 0) {
    a.A = f32_at(env, argv[0], aOff, 0, (double)(a.m - 1) * aRs + (double)(a.k - 1) * aCs, "A", &err);
    if (!a.A) return range_error(env, err);
    a.B = f32_at(env, argv[4], bOff, 0, (double)(a.n - 1) * bRs + (double)(a.k - 1) * bCs, "B", &err);
    if (!a.B) return range_error(env, err);
  }
  a.C = f32_at(env, argv[8], cOff, 0, (double)(a.m - 1) * cs + a.n - 1, "C", &err);
  if (!a.C) return range_error(env, err);
  a.aRowStride = (size_t)aRs, a.aColStride = (size_t)aCs, a.bRowStride = (size_t)bRs, a.bColStride = (size_t)bCs;
  a.cStride = (size_t)cs;
  a.accumulate = acc != 0;
  *run = [a]() { run_items((ItemFn)K->gemm, &a, K->gemm_items(&a), (double)a.m * a.n * (a.k > 0 ? a.k : 1)); };
  return true;
}

// attend(qa, qaOff, qaTok, qaHead, lenA, qb, qbOff, qbTok, qbHead, lenB, ka, kaOff, kaPos, kaHead,
//        kb, kbOff, kbPos, kbHead, val, valOff, valPos, valHead, lenV, out, outOff, outTok, outHead, n, H, start, scale,
//        table, blockSize): table (Int32Array or null) pages the positions of ka, kb and val (see kernels.h).
static bool prep_attend(napi_env env, napi_value* argv, std::function<void()>* run) {
  int ints[31] = {0};
  for (int i : {1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28, 29}) {
    if (!get_int(env, argv[i], &ints[i]) || ints[i] < 0) return range_error(env, "attend: non-negative integers expected");
  }
  double scale;
  if (napi_get_value_double(env, argv[30], &scale) != napi_ok) return range_error(env, "attend: scale must be a number");
  AttendArgs a;
  a.qaTok = ints[2], a.qaHead = ints[3], a.lenA = ints[4];
  a.qbTok = ints[7], a.qbHead = ints[8], a.lenB = ints[9];
  a.kaPos = ints[12], a.kaHead = ints[13];
  a.kbPos = ints[16], a.kbHead = ints[17];
  a.valPos = ints[20], a.valHead = ints[21], a.lenV = ints[22];
  a.outTok = ints[25], a.outHead = ints[26];
  a.n = ints[27], a.H = ints[28], a.start = ints[29];
  a.scale = (float)scale;
  if (a.n == 0 || a.H == 0) return true;
  const double J = a.n - 1, Hm = a.H - 1;
  double P = (double)a.start + a.n - 1;  // the largest row read
  Arr table;
  if (!get_array(env, argv[31], &table) || !get_int(env, argv[32], &a.blockSize)) return range_error(env, "attend: bad block table");
  a.table = nullptr;
  if (table.present) {
    if (table.type != napi_int32_array || a.blockSize <= 0) return range_error(env, "attend: the block table must be an Int32Array with blockSize > 0");
    const size_t blocks = ((size_t)a.start + a.n + a.blockSize - 1) / a.blockSize;
    if (table.length < blocks) return range_error(env, "attend: the block table is shorter than the positions");
    a.table = (const int32_t*)table.data;
    P = 0;
    for (size_t b = 0; b < blocks; b++) {
      if (a.table[b] < 0) return range_error(env, "attend: negative block id");
      P = std::max(P, ((double)a.table[b] + 1) * a.blockSize - 1);
    }
  }
  std::string err;
  a.qa = f32_at(env, argv[0], ints[1], 0, J * a.qaTok + Hm * a.qaHead + a.lenA - 1, "qa", &err);
  if (!a.qa) return range_error(env, err);
  if (a.lenB > 0) {
    a.qb = f32_at(env, argv[5], ints[6], 0, J * a.qbTok + Hm * a.qbHead + a.lenB - 1, "qb", &err);
    if (!a.qb) return range_error(env, err);
    a.kb = f32_at(env, argv[14], ints[15], 0, P * a.kbPos + Hm * a.kbHead + a.lenB - 1, "kb", &err);
    if (!a.kb) return range_error(env, err);
  } else {
    a.qb = a.kb = nullptr;
  }
  a.ka = f32_at(env, argv[10], ints[11], 0, P * a.kaPos + Hm * a.kaHead + a.lenA - 1, "ka", &err);
  if (!a.ka) return range_error(env, err);
  a.val = f32_at(env, argv[18], ints[19], 0, P * a.valPos + Hm * a.valHead + a.lenV - 1, "val", &err);
  if (!a.val) return range_error(env, err);
  a.out = f32_at(env, argv[23], ints[24], 0, J * a.outTok + Hm * a.outHead + a.lenV - 1, "out", &err);
  if (!a.out) return range_error(env, err);
  const double work = (double)a.n * a.H * ((double)a.start + a.n) * (a.lenA + a.lenB + a.lenV);
  // Heads share a position's row when every head reads the same one (absorbed MLA: the latent); then an item holds
  // a group of heads. With a row per head (decompressed MLA, prefill) grouping heads shares nothing, so an item
  // holds one head and the tokens share instead. Few tokens (decoding, a verified draft) attend one per item, so
  // the threads share them; many (prefill) in blocks, which read each position's row once per block instead of
  // once per token.
  const bool sharedRow = a.kaHead == 0 && a.valHead == 0 && (a.lenB == 0 || a.kbHead == 0);
  a.headGroup = sharedRow ? std::min(a.H, ATTEND_HEAD_GROUP) : 1;
  const int groups = (a.H + a.headGroup - 1) / a.headGroup;
  const int threads = pool == nullptr ? 1 : pool->threads();
  a.tokenBlock = (double)a.n * groups >= 4.0 * threads ? std::max(1, ATTEND_PAIRS / a.headGroup) : 1;
  *run = [a, work]() { run_items((ItemFn)K->attend, &a, attend_items(&a), work); };
  return true;
}

// ---------------------------------------------------------------------------------------------------------
// A group of SwiGLU MLPs (the routed experts of one MoE layer, a shared expert, a dense MLP) in two parallel
// jobs instead of three products each: (1) every entry's gate and up rows, then h = silu(g) * u in place of g;
// (2) every entry's down rows. Each element is still computed by the matmul kernel over its own rows and
// tokens, so an entry's result does not depend on the other entries or on the thread count.

struct MlpEntry {
  MatmulArgs gate, up, down;
  float* g;
  const float* u;
  int n, inter;
};

struct MlpJob {
  std::vector<MlpEntry> e;
  std::vector<int> upStart, downStart;  // prefix sums of each entry's row quads, per phase
};

static int entry_of(const std::vector<int>& start, int item) {
  return (int)(std::upper_bound(start.begin(), start.end(), item) - start.begin()) - 1;
}

static void mlp_up(const void* args, int i0, int i1) {
  const MlpJob* j = (const MlpJob*)args;
  for (int item = i0; item < i1; item++) {
    const int e = entry_of(j->upStart, item);
    const int q = item - j->upStart[e];
    const MlpEntry& m = j->e[e];
    K->matmul(&m.gate, q, q + 1);
    K->matmul(&m.up, q, q + 1);
    const int r1 = std::min(4 * q + 4, m.inter);
    for (int t = 0; t < m.n; t++) {
      for (int r = 4 * q; r < r1; r++) {
        const size_t o = (size_t)t * m.inter + r;
        const double a = m.g[o];
        m.g[o] = (float)(a / (1.0 + std::exp(-a)) * (double)m.u[o]);  // silu(gate) * up, as mlp.ts computes it
      }
    }
  }
}

static void mlp_down(const void* args, int i0, int i1) {
  const MlpJob* j = (const MlpJob*)args;
  for (int item = i0; item < i1; item++) {
    const int e = entry_of(j->downStart, item);
    K->matmul(&j->e[e].down, item - j->downStart[e], item - j->downStart[e] + 1);
  }
}

/** Fills `v` from arrays[base..base+1] (data, scale) and meta[m..m+4] (kind, rows, cols, blockRows, blockCols). */
static bool weight_from(napi_env env, napi_value arrays, uint32_t base, const int32_t* meta, WeightView* w, std::string* err) {
  napi_value argv[7];
  if (napi_get_element(env, arrays, base, &argv[1]) != napi_ok || napi_get_element(env, arrays, base + 1, &argv[2]) != napi_ok) {
    *err = "mlpGroup: missing weight arrays";
    return false;
  }
  for (int k = 0; k < 5; k++) napi_create_int32(env, meta[k], &argv[k == 0 ? 0 : k + 2]);
  return get_weight(env, argv, w, err);
}

// mlpGroup(arrays, meta, x, out, g, u): arrays = [gateData, gateScale, upData, upScale, downData, downScale] per entry;
// meta = per entry [n, row0, then (kind, rows, cols, blockRows, blockCols) for gate, up, down] (17 ints).
// Entry e reads x rows [row0, row0 + n) and writes out rows [row0, row0 + n); g and u are scratch.
static bool prep_mlp_group(napi_env env, napi_value* argv, std::function<void()>* run) {
  Arr meta, x, out, g, u;
  if (!get_array(env, argv[1], &meta) || !meta.present || meta.type != napi_int32_array || meta.length % 17 != 0)
    return range_error(env, "mlpGroup: meta must be an Int32Array of 17 ints per entry");
  if (!get_array(env, argv[2], &x) || !get_array(env, argv[3], &out) || !get_array(env, argv[4], &g) || !get_array(env, argv[5], &u) ||
      !x.present || !out.present || !g.present || !u.present || x.type != napi_float32_array || out.type != napi_float32_array ||
      g.type != napi_float32_array || u.type != napi_float32_array)
    return range_error(env, "mlpGroup: x, out, g and u must be Float32Arrays");
  const int32_t* mi = (const int32_t*)meta.data;
  const int entries = (int)(meta.length / 17);
  MlpJob job;
  job.e.resize(entries);
  job.upStart.push_back(0);
  job.downStart.push_back(0);
  size_t scratch = 0;
  double work = 0;
  std::string err;
  for (int e = 0; e < entries; e++) {
    const int32_t* m = mi + 17 * e;
    const int n = m[0], row0 = m[1];
    WeightView gw, uw, dw;
    if (!weight_from(env, argv[0], 6 * e, m + 2, &gw, &err) || !weight_from(env, argv[0], 6 * e + 2, m + 7, &uw, &err) ||
        !weight_from(env, argv[0], 6 * e + 4, m + 12, &dw, &err))
      return range_error(env, err);
    const int hidden = gw.cols, inter = gw.rows;
    if (uw.rows != inter || uw.cols != hidden || dw.rows != hidden || dw.cols != inter)
      return range_error(env, "mlpGroup: gate/up must be [inter, hidden] and down [hidden, inter]");
    if (n < 0 || row0 < 0 || (double)(row0 + n) * hidden > (double)x.length || (double)(row0 + n) * hidden > (double)out.length)
      return range_error(env, "mlpGroup: x or out is too short for the entries' rows");
    MlpEntry& en = job.e[e];
    en.n = n;
    en.inter = inter;
    en.g = (float*)g.data + scratch;
    en.u = (const float*)u.data + scratch;
    scratch += (size_t)n * inter;
    if (scratch > g.length || scratch > u.length) return range_error(env, "mlpGroup: g or u scratch is too short");
    const float* xe = (const float*)x.data + (size_t)row0 * hidden;
    float* ye = (float*)out.data + (size_t)row0 * hidden;
    en.gate = MatmulArgs{gw, xe, hidden, n, en.g, inter, 0, inter, 1, 0, 0, 0};
    en.up = MatmulArgs{uw, xe, hidden, n, (float*)en.u, inter, 0, inter, 1, 0, 0, 0};
    en.down = MatmulArgs{dw, en.g, inter, n, ye, hidden, 0, hidden, 1, 0, 0, 0};
    job.upStart.push_back(job.upStart.back() + (n > 0 ? (inter + 3) / 4 : 0));
    job.downStart.push_back(job.downStart.back() + (n > 0 ? (hidden + 3) / 4 : 0));
    work += 3.0 * inter * hidden * n;
  }
  auto shared = std::make_shared<MlpJob>(std::move(job));
  *run = [shared, work]() {
    run_items(mlp_up, shared.get(), shared->upStart.back(), work * 2 / 3);
    run_items(mlp_down, shared.get(), shared->downStart.back(), work / 3);
  };
  return true;
}

// ---------------------------------------------------------------------------------------------------------
// Every product two ways: synchronous (the caller's thread computes, with the pool), or as a Promise whose work
// runs on a libuv thread, so the event loop serves the network while a large product computes. The arguments'
// arrays are referenced until the work completes.

typedef bool (*PrepFn)(napi_env, napi_value*, std::function<void()>*);

template <size_t N, PrepFn Prep>
static napi_value SyncCall(napi_env env, napi_callback_info info) {
  size_t argc = N;
  napi_value argv[N];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  if (argc != N) return range_error(env, "wrong number of arguments (" + std::to_string(argc) + ", want " + std::to_string(N) + ")");
  std::function<void()> run;
  if (!Prep(env, argv, &run)) return nullptr;  // it threw
  if (run) run();
  return nullptr;
}

struct AsyncCall {
  napi_async_work work = nullptr;
  napi_deferred deferred = nullptr;
  std::vector<napi_ref> refs;
  std::function<void()> run;
};

template <size_t N, PrepFn Prep>
static napi_value AsyncCallFn(napi_env env, napi_callback_info info) {
  size_t argc = N;
  napi_value argv[N];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  if (argc != N) return range_error(env, "wrong number of arguments (" + std::to_string(argc) + ", want " + std::to_string(N) + ")");
  auto* call = new AsyncCall();
  if (!Prep(env, argv, &call->run)) {
    delete call;
    return nullptr;  // it threw: bad arguments fail at the call, not in the Promise
  }
  for (size_t i = 0; i < N; i++) {
    napi_valuetype t;
    if (napi_typeof(env, argv[i], &t) == napi_ok && t == napi_object) {
      napi_ref r;
      if (napi_create_reference(env, argv[i], 1, &r) == napi_ok) call->refs.push_back(r);
    }
  }
  napi_value promise, name;
  CHECK(napi_create_promise(env, &call->deferred, &promise));
  CHECK(napi_create_string_utf8(env, "moela-kernel", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(
      env, nullptr, name,
      [](napi_env, void* data) {
        auto* c = (AsyncCall*)data;
        if (c->run) c->run();
      },
      [](napi_env env, napi_status, void* data) {
        auto* c = (AsyncCall*)data;
        for (napi_ref r : c->refs) napi_delete_reference(env, r);
        napi_value undef;
        napi_get_undefined(env, &undef);
        napi_resolve_deferred(env, c->deferred, undef);
        napi_delete_async_work(env, c->work);
        delete c;
      },
      call, &call->work));
  CHECK(napi_queue_async_work(env, call->work));
  return promise;
}

static napi_value str(napi_env env, const char* s) {
  napi_value v;
  napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v);
  return v;
}

/**
 * The row x[off .. off+n) of a call whose first arguments are (x, off, n) and which takes `argc` in all; null after
 * throwing a RangeError (`usage`) when they do not fit.
 */
static const float* row_args(napi_env env, napi_callback_info info, napi_value* argv, size_t argc, const char* usage, int* n) {
  size_t got = argc;
  int off;
  if (napi_get_cb_info(env, info, &got, argv, nullptr, nullptr) != napi_ok || got < argc || !get_int(env, argv[1], &off) ||
      !get_int(env, argv[2], n) || *n < 1) {
    range_error(env, usage);
    return nullptr;
  }
  std::string err;
  const float* x = f32_at(env, argv[0], off, 0, (double)*n - 1, "x", &err);
  if (!x) range_error(env, err);
  return x;
}

// ---------------------------------------------------------------------------------------------------------
// Training's optimizer over float32 arrays, in doubles with the operations of packages/train/src/optim.ts in the
// same order (no contraction: -ffp-contract=off), so the bits are the TypeScript loops' and only the time changes.

/** The Float32Array v's data (its length in *n), or null after throwing a RangeError. */
static float* f32_arg(napi_env env, napi_value v, const char* name, size_t* n) {
  Arr a;
  if (!get_array(env, v, &a) || !a.present || a.type != napi_float32_array) {
    range_error(env, std::string(name) + " must be a Float32Array");
    return nullptr;
  }
  *n = a.length;
  static float none;  // an empty array's pointer may be null; this one is never read
  return a.length == 0 ? &none : (float*)a.data;
}

/** The call's arguments into argv when there are exactly n of them; false after throwing a RangeError (`usage`). */
static bool exact_args(napi_env env, napi_callback_info info, napi_value* argv, size_t n, const char* usage) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc != n) {
    range_error(env, usage);
    return false;
  }
  return true;
}

// adamwF32(w, g, m, v, hyper): hyper = Float64Array [lr, decay, clipScale, beta1, beta2, bc1, bc2, eps].
static napi_value AdamwF32(napi_env env, napi_callback_info info) {
  static const char* usage = "adamwF32(w, g, m, v, hyper) takes four Float32Arrays of one length and a Float64Array of 8";
  napi_value argv[5];
  if (!exact_args(env, info, argv, 5, usage)) return nullptr;
  size_t nw, ng, nm, nv;
  float* w = f32_arg(env, argv[0], "w", &nw);
  if (!w) return nullptr;
  const float* g = f32_arg(env, argv[1], "g", &ng);
  if (!g) return nullptr;
  float* m = f32_arg(env, argv[2], "m", &nm);
  if (!m) return nullptr;
  float* v = f32_arg(env, argv[3], "v", &nv);
  if (!v) return nullptr;
  Arr hyper;
  if (ng != nw || nm != nw || nv != nw || !get_array(env, argv[4], &hyper) || !hyper.present || hyper.type != napi_float64_array ||
      hyper.length < 8)
    return range_error(env, usage);
  const double* h = (const double*)hyper.data;
  const double lr = h[0], decay = h[1], clipScale = h[2], beta1 = h[3], beta2 = h[4], bc1 = h[5], bc2 = h[6], eps = h[7];
  const double step = lr / bc1;
  const double rbc2 = 1 / bc2;
  for (size_t i = 0; i < nw; i++) {
    const double gi = (double)g[i] * clipScale;
    const double mi = beta1 * (double)m[i] + (1 - beta1) * gi;
    const double vi = beta2 * (double)v[i] + (1 - beta2) * gi * gi;
    m[i] = (float)mi;
    v[i] = (float)vi;
    w[i] = (float)((double)w[i] * decay - (step * mi) / (sqrt(vi * rbc2) + eps));
  }
  return nullptr;
}

// addSumSquaresF32(g, others): g += each of others in turn (an array of Float32Arrays of g's length), then returns
// sum g_i^2 in doubles, i ascending (optim.ts's reduceRange and sumSquares for one parameter).
static napi_value AddSumSquaresF32(napi_env env, napi_callback_info info) {
  static const char* usage = "addSumSquaresF32(g, others) takes a Float32Array and an array of Float32Arrays of its length";
  napi_value argv[2];
  if (!exact_args(env, info, argv, 2, usage)) return nullptr;
  size_t n;
  float* g = f32_arg(env, argv[0], "g", &n);
  if (!g) return nullptr;
  bool isArray = false;
  uint32_t count = 0;
  if (napi_is_array(env, argv[1], &isArray) != napi_ok || !isArray || napi_get_array_length(env, argv[1], &count) != napi_ok)
    return range_error(env, usage);
  for (uint32_t o = 0; o < count; o++) {
    napi_value el;
    CHECK(napi_get_element(env, argv[1], o, &el));
    size_t nx;
    const float* x = f32_arg(env, el, "others[i]", &nx);
    if (!x) return nullptr;
    if (nx != n) return range_error(env, usage);
    for (size_t j = 0; j < n; j++) g[j] = (float)((double)g[j] + (double)x[j]);
  }
  double ss = 0;
  for (size_t j = 0; j < n; j++) ss += (double)g[j] * (double)g[j];
  napi_value out;
  CHECK(napi_create_double(env, ss, &out));
  return out;
}

// logSumExp(x, off, n, out): out[0] = m, the maximum of x[off .. off+n), and out[1] = log(sum exp(x - m)): a
// log-softmax's normalizer (a token's logprob is (logit - m) - out[1]). Synchronous on the calling thread: one
// vocabulary row is microseconds of work.
static napi_value LogSumExp(napi_env env, napi_callback_info info) {
  static const char* usage = "logSumExp(x, off, n, out) takes a Float32Array, integers off >= 0 and n >= 1, and a Float64Array of 2";
  napi_value argv[4];
  int n;
  const float* x = row_args(env, info, argv, 4, usage, &n);
  if (!x) return nullptr;
  Arr out;
  if (!get_array(env, argv[3], &out) || !out.present || out.type != napi_float64_array || out.length < 2) return range_error(env, usage);
  float m;
  const double lse = K->log_sum_exp(x, n, &m);
  ((double*)out.data)[0] = m;
  ((double*)out.data)[1] = lse;
  return nullptr;
}

// ---------------------------------------------------------------------------------------------------------
// fp8-tile, the dispatch codec: packages/moe-dispatch/src/codec/float8-tiles.ts with float8 e4m3fn, the same
// float64 operations in the same order, so the same bits. Scalar C++: the loops are a few operations a value, and
// the compile flags (-fno-fast-math, -ffp-contract=off) keep every rounding where the TypeScript has it.

static const double E4M3_MAX = 448.0;
static const double MIN_TILE_SCALE = 1.401298464324817e-45;  // 2^-149, the smallest float32
static const double ROUNDING_MAGIC = 4503599627370496.0;  // 2^52: adding it rounds [0, 2^51) to an integer, ties even
static float E4M3_VALUES[256];
/** 2^(3 - e) for a binade e in [-6, 8], at index 8 - e: a value's mantissa on its binade's grid of 8 steps. */
static double E4M3_GRID[15];

static void init_e4m3() {
  for (int b = 0; b < 256; b++) {
    const int exp = (b >> 3) & 0xf, mant = b & 7;
    double v = exp == 0 ? mant * std::ldexp(1.0, -9) : (1 + mant / 8.0) * std::ldexp(1.0, exp - 7);
    if (exp == 0xf && mant == 7) v = NAN;
    E4M3_VALUES[b] = (float)((b & 0x80) ? -v : v);
  }
  for (int e = -6; e <= 8; e++) E4M3_GRID[8 - e] = std::ldexp(1.0, 3 - e);
}

/** f32ToF8E4M3Bits (engine/src/tensor/dtype.ts) for a finite q. */
static inline int e4m3_code(double q) {
  const int sign = std::signbit(q) ? 0x80 : 0;
  const double a = std::fabs(q);
  if (a >= E4M3_MAX) return sign | 0x7e;
  uint64_t bits;
  memcpy(&bits, &a, sizeof bits);
  int e = (int)((bits >> 52) & 0x7ff) - 1023;
  if (e < -6) e = -6;
  const double m = a * E4M3_GRID[8 - e] + ROUNDING_MAGIC - ROUNDING_MAGIC;
  return sign | (((e + 6) << 3) + (int)m);
}

// fp8Tiles(x, off, rows, cols, tile, data, scales, out): the [rows, cols] matrix at x[off ..] in tiles of 1 x tile.
// With data and scales: its codes and tile scales (encode). With out instead: the decoded values (the round trip;
// out may be x's own array at the same offset). Returns -1, or the index (from off) of the first NaN or +-Inf,
// which stops it.
static napi_value Fp8Tiles(napi_env env, napi_callback_info info) {
  static const char* usage =
      "fp8Tiles(x, off, rows, cols, tile, data, scales, out) takes a Float32Array, integers off >= 0, rows >= 0, cols >= 1 and "
      "tile >= 1, then a Uint8Array and a Float32Array long enough for the codes and scales, or nulls and a Float32Array out";
  size_t argc = 8;
  napi_value argv[8];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  int off, rows, cols, tile;
  Arr x, data, scales, out;
  if (argc < 8 || !get_array(env, argv[0], &x) || !x.present || x.type != napi_float32_array || !get_int(env, argv[1], &off) ||
      !get_int(env, argv[2], &rows) || !get_int(env, argv[3], &cols) || !get_int(env, argv[4], &tile) || !get_array(env, argv[5], &data) ||
      !get_array(env, argv[6], &scales) || !get_array(env, argv[7], &out) || off < 0 || rows < 0 || cols < 1 || tile < 1)
    return range_error(env, usage);
  const size_t n = (size_t)rows * (size_t)cols;
  const int tpr = (cols + tile - 1) / tile;
  const bool encode = data.present;
  if ((size_t)off + n > x.length) return range_error(env, usage);
  if (encode ? (data.type != napi_uint8_array || data.length < n || !scales.present || scales.type != napi_float32_array ||
                scales.length < (size_t)rows * tpr || out.present)
             : (scales.present || !out.present || out.type != napi_float32_array || (size_t)off + n > out.length))
    return range_error(env, usage);
  const float* xs = (const float*)x.data + off;
  uint8_t* codes = (uint8_t*)data.data;
  float* sc = (float*)scales.data;
  float* ys = encode ? nullptr : (float*)out.data + off;
  double bad = -1;
  for (int r = 0; r < rows && bad < 0; r++) {
    const size_t base = (size_t)r * cols;
    for (int t = 0; t < tpr; t++) {
      const int c0 = t * tile, c1 = std::min(c0 + tile, cols);
      double amax = 0;
      for (int c = c0; c < c1; c++) {
        const double a = std::fabs((double)xs[base + c]);
        if (!(a <= DBL_MAX)) {
          bad = (double)(base + c);
          break;
        }
        if (a > amax) amax = a;
      }
      if (bad >= 0) break;
      const double scale = amax == 0 ? 1.0 : std::max((double)(float)(amax / E4M3_MAX), MIN_TILE_SCALE);
      if (encode) {
        sc[(size_t)r * tpr + t] = (float)scale;
        for (int c = c0; c < c1; c++) codes[base + c] = (uint8_t)e4m3_code((double)xs[base + c] / scale);
      } else {
        for (int c = c0; c < c1; c++) ys[base + c] = (float)((double)E4M3_VALUES[e4m3_code((double)xs[base + c] / scale)] * scale);
      }
    }
  }
  napi_value result;
  CHECK(napi_create_double(env, bad, &result));
  return result;
}

// softmaxWeights(x, ids, n, max, invT, minP, out): out[j] = exp((x[ids[j]] - max) * invT) (x[j] when ids is null),
// 0 where below minP, for j < n; returns their sum. A sampler's pass over the vocabulary, on the calling thread.
static napi_value SoftmaxWeights(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  Arr x, ids, out;
  int n;
  double max, invT, minP;
  if (argc < 7 || !get_array(env, argv[0], &x) || !x.present || x.type != napi_float32_array || !get_array(env, argv[1], &ids) ||
      (ids.present && ids.type != napi_int32_array) || !get_int(env, argv[2], &n) || n < 0 || napi_get_value_double(env, argv[3], &max) != napi_ok ||
      napi_get_value_double(env, argv[4], &invT) != napi_ok || napi_get_value_double(env, argv[5], &minP) != napi_ok ||
      !get_array(env, argv[6], &out) || !out.present || out.type != napi_float64_array)
    return range_error(env, "softmaxWeights(x: Float32Array, ids: Int32Array | null, n, max, invT, minP, out: Float64Array)");
  if ((size_t)n > out.length || (ids.present ? (size_t)n > ids.length : (size_t)n > x.length))
    return range_error(env, "softmaxWeights: n is larger than ids, x or out");
  const int32_t* id = ids.present ? (const int32_t*)ids.data : nullptr;
  if (id != nullptr)
    for (int j = 0; j < n; j++)
      if (id[j] < 0 || (size_t)id[j] >= x.length) return range_error(env, "softmaxWeights: an id is outside x");
  // A temperature near 0 makes 1/T overflow float32; FLT_MAX gives the same one-hot weights without 0 * inf = NaN.
  const float it = invT > FLT_MAX ? FLT_MAX : (float)invT;
  napi_value v;
  napi_create_double(env, K->softmax_weights((const float*)x.data, id, n, (float)max, it, (float)minP, (double*)out.data), &v);
  return v;
}

// argmax(x, off, n): the index (from off) of the first largest of x[off .. off+n), or -1 when they hold a NaN or
// +inf. Greedy decoding's pass over the vocabulary, on the calling thread.
static napi_value Argmax(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int n;
  const float* x = row_args(env, info, argv, 3, "argmax(x, off, n) takes a Float32Array and integers off >= 0, n >= 1", &n);
  if (!x) return nullptr;
  napi_value v;
  napi_create_int32(env, K->argmax_first(x, n), &v);
  return v;
}

// nucleus(logits, ids, weights, n, needed): reorders ids[0..n) (weights moved alongside) so that ids[0..m) is top-p's
// nucleus, the shortest run of the best-ranked candidates (higher logit, lower id on ties) whose weight reaches
// `needed`, and returns m. The very algorithm of sampler.ts's selectNucleus (the same pivots, partitions and double
// arithmetic), so the kept set, its order and its mass are the bits the TypeScript gives. Scalar, ISA-independent.
static inline bool ranks_before(const float* l, int a, int b) { return l[a] > l[b] || (l[a] == l[b] && a < b); }
static inline void swap_pair(int32_t* ids, double* w, int i, int j) {
  const int32_t id = ids[i];
  ids[i] = ids[j];
  ids[j] = id;
  const double x = w[i];
  w[i] = w[j];
  w[j] = x;
}
static int select_nucleus(const float* logits, int32_t* ids, double* weights, int n, double needed) {
  const int CUTOFF = 16;  // sampler.ts NUCLEUS_SORT_CUTOFF
  int lo = 0, hi = n;
  double need = needed;
  while (hi - lo > CUTOFF) {
    const int midPos = lo + ((hi - lo) >> 1);
    int pivotPos = midPos;
    const int a = ids[lo], b = ids[midPos], z = ids[hi - 1];
    if (ranks_before(logits, a, b) != ranks_before(logits, a, z)) pivotPos = lo;
    else if (ranks_before(logits, z, b) != ranks_before(logits, z, a)) pivotPos = hi - 1;
    swap_pair(ids, weights, pivotPos, hi - 1);
    const int pivot = ids[hi - 1];
    const float pivotLogit = logits[pivot];
    int store = lo;
    double betterMass = 0;
    for (int j = lo; j < hi - 1; j++) {
      const int id = ids[j];
      const float l = logits[id];
      if (l > pivotLogit || (l == pivotLogit && id < pivot)) {
        betterMass += weights[j];
        swap_pair(ids, weights, store, j);
        store++;
      }
    }
    swap_pair(ids, weights, store, hi - 1);
    if (betterMass >= need) {
      hi = store;
    } else {
      need -= betterMass + weights[store];
      if (need <= 0) return store + 1;
      lo = store + 1;
    }
  }
  for (int i = lo + 1; i < hi; i++)
    for (int j = i; j > lo && ranks_before(logits, ids[j], ids[j - 1]); j--) swap_pair(ids, weights, j, j - 1);
  int j = lo;
  while (j < hi) {
    need -= weights[j];
    j++;
    if (need <= 0) break;
  }
  return j > 1 ? j : 1;
}

static napi_value Nucleus(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  Arr logits, ids, weights;
  int n;
  double needed;
  if (argc < 5 || !get_array(env, argv[0], &logits) || !logits.present || logits.type != napi_float32_array || !get_array(env, argv[1], &ids) ||
      !ids.present || ids.type != napi_int32_array || !get_array(env, argv[2], &weights) || !weights.present ||
      weights.type != napi_float64_array || !get_int(env, argv[3], &n) || n < 1 || napi_get_value_double(env, argv[4], &needed) != napi_ok)
    return range_error(env, "nucleus(logits: Float32Array, ids: Int32Array, weights: Float64Array, n >= 1, needed)");
  if ((size_t)n > ids.length || (size_t)n > weights.length) return range_error(env, "nucleus: n is larger than ids or weights");
  const int32_t* id = (const int32_t*)ids.data;
  for (int j = 0; j < n; j++)
    if (id[j] < 0 || (size_t)id[j] >= logits.length) return range_error(env, "nucleus: an id is outside logits");
  napi_value v;
  napi_create_int32(env, select_nucleus((const float*)logits.data, (int32_t*)ids.data, (double*)weights.data, n, needed), &v);
  return v;
}

static napi_value Isa(napi_env env, napi_callback_info) { return str(env, K->isa); }

static napi_value SupportedIsas(napi_env env, napi_callback_info) {
  napi_value arr;
  napi_create_array(env, &arr);
  uint32_t i = 0;
  for (const char* isa : {"avx512", "avx2", "portable"})
    if (table_for(isa)) napi_set_element(env, arr, i++, str(env, isa));
  return arr;
}

// selectIsa(name): use this instruction set from now on (tests and benchmarks compare them).
static napi_value SelectIsa(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  char buf[32];
  size_t len = 0;
  if (argc != 1 || napi_get_value_string_utf8(env, argv[0], buf, sizeof buf, &len) != napi_ok) return range_error(env, "selectIsa(name)");
  const KernelTable* t = table_for(buf);
  if (!t) return range_error(env, std::string("instruction set '") + buf + "' is not available on this CPU");
  K = t;
  return nullptr;
}

// setThreads(n[, minWork]): kernel threads for the whole process (the caller is one of them).
static napi_value SetThreads(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  size_t argc2 = argc;
  int n;
  if (argc2 < 1 || !get_int(env, argv[0], &n) || n < 1 || n > 256) return range_error(env, "setThreads(n[, minWork]) takes 1 <= n <= 256");
  if (argc2 >= 2) {
    double mw;
    if (napi_get_value_double(env, argv[1], &mw) != napi_ok || !(mw >= 0)) return range_error(env, "setThreads: minWork must be >= 0");
    parallelMinWork = mw;
  }
  if ((pool == nullptr ? 1 : pool->threads()) == n) return nullptr;
  std::lock_guard<std::mutex> l(poolBusy);
  delete pool;
  pool = n > 1 ? new Pool(n) : nullptr;
  return nullptr;
}

// setCallerOnly(on): products on the calling thread alone, idle workers asleep (see callerOnly).
static napi_value SetCallerOnly(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr));
  bool on;
  if (argc < 1 || napi_get_value_bool(env, argv[0], &on) != napi_ok) return range_error(env, "setCallerOnly(on) takes a boolean");
  callerOnly.store(on, std::memory_order_relaxed);
  return nullptr;
}

static napi_value Threads(napi_env env, napi_callback_info) {
  napi_value v;
  napi_create_int32(env, pool == nullptr ? 1 : pool->threads(), &v);
  return v;
}

static napi_value WorkerChunks(napi_env env, napi_callback_info) {
  napi_value v;
  napi_create_double(env, pool == nullptr ? 0 : pool->workerChunks(), &v);
  return v;
}

static napi_value Init(napi_env env, napi_value exports) {
  init_e4m3();
  const napi_property_descriptor props[] = {
      {"matmul", nullptr, SyncCall<20, prep_matmul>, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"matmulT", nullptr, SyncCall<20, prep_matmul_t>, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"gemm", nullptr, SyncCall<15, prep_gemm>, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"mlpGroup", nullptr, SyncCall<6, prep_mlp_group>, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"attend", nullptr, SyncCall<33, prep_attend>, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"matmulAsync", nullptr, AsyncCallFn<20, prep_matmul>, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"matmulTAsync", nullptr, AsyncCallFn<20, prep_matmul_t>, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"mlpGroupAsync", nullptr, AsyncCallFn<6, prep_mlp_group>, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"attendAsync", nullptr, AsyncCallFn<33, prep_attend>, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"nucleus", nullptr, Nucleus, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"argmax", nullptr, Argmax, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"softmaxWeights", nullptr, SoftmaxWeights, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"logSumExp", nullptr, LogSumExp, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"adamwF32", nullptr, AdamwF32, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"addSumSquaresF32", nullptr, AddSumSquaresF32, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"fp8Tiles", nullptr, Fp8Tiles, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"isa", nullptr, Isa, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"supportedIsas", nullptr, SupportedIsas, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"selectIsa", nullptr, SelectIsa, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setThreads", nullptr, SetThreads, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"workerChunks", nullptr, WorkerChunks, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"setCallerOnly", nullptr, SetCallerOnly, nullptr, nullptr, nullptr, napi_default, nullptr},
      {"threads", nullptr, Threads, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
