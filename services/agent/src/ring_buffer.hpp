#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace holt::agent {

// Keeps the last `capacity` bytes appended to it and counts the bytes it had to drop. Memory
// grows with use up to the capacity, so idle processes cost nothing.
class RingBuffer {
  public:
    explicit RingBuffer(std::size_t capacity) : capacity_(capacity) {}

    void append(std::string_view data);

    // Calls fn(std::string_view) with the buffered bytes, oldest first, in at most two pieces.
    template <typename Fn>
    void for_each(Fn fn) const {
        if (size_ == 0) {
            return;
        }
        const std::size_t first = std::min(size_, data_.size() - head_);
        fn(std::string_view(data_.data() + head_, first));
        if (first < size_) {
            fn(std::string_view(data_.data(), size_ - first));
        }
    }

    std::size_t size() const { return size_; }
    std::uint64_t dropped() const { return dropped_; }

  private:
    std::size_t capacity_;
    std::vector<char> data_;
    std::size_t head_ = 0;  // index of the oldest byte
    std::size_t size_ = 0;
    std::uint64_t dropped_ = 0;
};

}  // namespace holt::agent
