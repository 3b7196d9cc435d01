// Work sharing over XLA's intra-op thread pool for qjax's FFI handlers, and their buffer types.
#ifndef QJAX_NATIVE_PARALLEL_H_
#define QJAX_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace qjax {

using F32Matrix = xla::ffi::Buffer<xla::ffi::F32, 2>;
using U8Matrix = xla::ffi::Buffer<xla::ffi::U8, 2>;

// Runs make_worker()(task) for every task in [0, total), claimed from a shared counter by the
// calling thread and by up to num_threads - 1 pool workers, and returns once all are done. Each
// participating thread calls make_worker() once (e.g. to own scratch buffers). The shared state
// is reference counted because a pool worker may start only after the caller has finished every
// task and returned; such a late worker claims nothing and never calls make_worker.
template <typename MakeWorker>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t total, MakeWorker make_worker) {
  struct Shared {
    Shared(MakeWorker m, int64_t t) : make_worker(std::move(m)), total(t) {}
    MakeWorker make_worker;
    int64_t total;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>(std::move(make_worker), total);
  auto drain = [](Shared& s) {
    int64_t t = s.next.fetch_add(1);
    if (t >= s.total) return;
    auto worker = s.make_worker();
    for (; t < s.total; t = s.next.fetch_add(1)) {
      worker(t);
      s.done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([shared, drain] { drain(*shared); });
  drain(*shared);
  while (shared->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
}

}  // namespace qjax

#endif  // QJAX_NATIVE_PARALLEL_H_
