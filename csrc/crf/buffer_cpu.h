// Storage for the CPU path's per-image arrays (lattices, label rows, sort buffers): about
// 100 MB for a 320x320 image with 27 labels, allocated afresh by every call.
//
// First touches of fresh 4 KiB pages cost more than the arithmetic that fills them: on a
// virtual machine about 0.6 ms per MB (page fault and zeroing), against 0.08 ms per MB with
// 2 MiB transparent huge pages. So blocks of at least HUGE_PAGE bytes are mapped on their own,
// aligned to HUGE_PAGE, and marked MADV_HUGEPAGE (Linux; elsewhere they come from
// aligned_alloc like the small ones). Elements are default-initialised, i.e. left unset for
// trivial types: every array is written before it is read, and the kernel's zero pages need
// no second pass.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace unseg::crf {

constexpr size_t CACHE_LINE = 64;
constexpr size_t HUGE_PAGE = size_t{2} << 20;

inline void* allocate_bytes(size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes >= HUGE_PAGE) {
    // Map one huge page more than needed and unmap the unaligned ends.
    const size_t size = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    void* raw =
        mmap(nullptr, size + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    char* begin = static_cast<char*>(raw);
    char* aligned = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(begin) + HUGE_PAGE - 1) /
                                            HUGE_PAGE * HUGE_PAGE);
    if (aligned > begin) munmap(begin, aligned - begin);
    munmap(aligned + size, begin + size + HUGE_PAGE - aligned - size);
    madvise(aligned, size, MADV_HUGEPAGE);  // advice only: 4 KiB pages if refused
    return aligned;
  }
#endif
  void* p = std::aligned_alloc(CACHE_LINE, (bytes + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE);
  if (!p) throw std::bad_alloc();
  return p;
}

inline void free_bytes(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes >= HUGE_PAGE) {
    munmap(p, (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE);
    return;
  }
#endif
  (void)bytes;
  std::free(p);
}

template <typename T>
struct BufferAllocator {
  using value_type = T;
  BufferAllocator() = default;
  template <typename U>
  BufferAllocator(const BufferAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(allocate_bytes(n * sizeof(T))); }
  void deallocate(T* p, size_t n) { free_bytes(p, n * sizeof(T)); }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    if constexpr (sizeof...(Args) == 0) {
      ::new (static_cast<void*>(p)) U;
    } else {
      ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
  }
  template <typename U>
  bool operator==(const BufferAllocator<U>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const BufferAllocator<U>&) const {
    return false;
  }
};

// A std::vector on BufferAllocator: cache-line aligned, huge pages when large, resize()
// leaves new trivial elements unset.
template <typename T>
using Buffer = std::vector<T, BufferAllocator<T>>;

}  // namespace unseg::crf
