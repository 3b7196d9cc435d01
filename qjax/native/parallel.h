// Work sharing over XLA's intra-op thread pool for qjax's FFI handlers, and their buffer types.
#ifndef QJAX_NATIVE_PARALLEL_H_
#define QJAX_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace qjax {

using F32Matrix = xla::ffi::Buffer<xla::ffi::F32, 2>;
using U8Matrix = xla::ffi::Buffer<xla::ffi::U8, 2>;

// A batch of tasks that any thread may help drain.
struct Job {
  virtual ~Job() = default;
  virtual void Drain() = 0;
};

// Hand-off between consecutive calls: a pool worker that finished its share stays awake for
// kSpinMicros, watching `pending`, before it returns to the pool. Decoding calls the kernels back to
// back (one short call per weight matrix); waking a sleeping pool thread for each would cost a
// good part of a call. A posted job is owned through the heap shared_ptr in `pending`: whoever takes
// it out of `pending` (a spinning worker, or its poster taking it back) deletes that reference.
inline constexpr int64_t kSpinMicros = 200;
inline std::atomic<std::shared_ptr<Job>*> pending{nullptr};
inline std::atomic<int> spinning_workers{0};

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

inline void SpinForJobs() {
  spinning_workers.fetch_add(1);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
  while (std::chrono::steady_clock::now() < deadline) {
    std::shared_ptr<Job>* job = pending.load(std::memory_order_acquire);
    if (job != nullptr && pending.compare_exchange_strong(job, nullptr)) {
      (*job)->Drain();
      delete job;
      deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
    }
    CpuRelax();
  }
  spinning_workers.fetch_sub(1);
}

// Runs make_worker()(task) for every task in [0, total), claimed from a shared counter by the
// calling thread and by up to num_threads - 1 pool workers (one of them, when a worker is spinning
// in SpinForJobs, through `pending`), and returns once all are done. Each participating thread
// calls make_worker() once (e.g. to own scratch buffers). The shared state is reference counted
// because a worker may start only after the caller has finished every task and returned; such a
// late worker claims nothing and never calls make_worker.
template <typename MakeWorker>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t total, MakeWorker make_worker) {
  struct Shared : Job {
    Shared(MakeWorker m, int64_t t) : make_worker(std::move(m)), total(t) {}
    void Drain() override {
      int64_t t = next.fetch_add(1);
      if (t >= total) return;
      auto worker = make_worker();
      for (; t < total; t = next.fetch_add(1)) {
        worker(t);
        done.fetch_add(1, std::memory_order_release);
      }
    }
    MakeWorker make_worker;
    int64_t total;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>(std::move(make_worker), total);
  int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  std::shared_ptr<Job>* posted = nullptr;
  if (helpers > 0 && spinning_workers.load() > 0) {
    auto* job = new std::shared_ptr<Job>(shared);
    std::shared_ptr<Job>* empty = nullptr;
    if (pending.compare_exchange_strong(empty, job)) {
      posted = job;
      --helpers;
    } else {
      delete job;
    }
  }
  for (int64_t i = 0; i < helpers; ++i) {
    pool.Schedule([shared] {
      shared->Drain();
      SpinForJobs();
    });
  }
  shared->Drain();
  while (shared->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
  if (posted != nullptr && pending.compare_exchange_strong(posted, nullptr)) delete posted;  // not taken
}

}  // namespace qjax

#endif  // QJAX_NATIVE_PARALLEL_H_
