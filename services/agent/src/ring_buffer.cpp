#include "ring_buffer.hpp"

#include <algorithm>
#include <cstring>

namespace holt::agent {

void RingBuffer::append(std::string_view data) {
    if (capacity_ == 0) {
        dropped_ += data.size();
        return;
    }
    if (data.size() >= capacity_) {
        dropped_ += size_ + data.size() - capacity_;
        data.remove_prefix(data.size() - capacity_);
        data_.assign(data.begin(), data.end());
        head_ = 0;
        size_ = capacity_;
        return;
    }
    // Still filling up: the bytes are contiguous from index 0.
    if (size_ + data.size() <= capacity_ && head_ == 0 && data_.size() < capacity_) {
        if (data_.size() < size_ + data.size()) {
            data_.resize(std::min(capacity_, std::max(size_ + data.size(), 2 * data_.size())));
        }
        std::memcpy(data_.data() + size_, data.data(), data.size());
        size_ += data.size();
        return;
    }
    // Full size: write circularly, overwriting the oldest bytes.
    data_.resize(capacity_);
    std::size_t tail = (head_ + size_) % capacity_;
    const std::size_t first = std::min(data.size(), capacity_ - tail);
    std::memcpy(data_.data() + tail, data.data(), first);
    std::memcpy(data_.data(), data.data() + first, data.size() - first);
    if (size_ + data.size() > capacity_) {
        const std::size_t overflow = size_ + data.size() - capacity_;
        dropped_ += overflow;
        head_ = (head_ + overflow) % capacity_;
        size_ = capacity_;
    } else {
        size_ += data.size();
    }
}

}  // namespace holt::agent
