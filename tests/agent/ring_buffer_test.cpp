#include "ring_buffer.hpp"

#include <gtest/gtest.h>

#include <string>

namespace holt::agent {
namespace {

std::string contents(const RingBuffer& ring) {
    std::string out;
    ring.for_each([&](std::string_view piece) { out.append(piece); });
    return out;
}

TEST(RingBuffer, KeepsEverythingBelowCapacity) {
    RingBuffer ring(10);
    ring.append("abc");
    ring.append("defg");
    EXPECT_EQ(contents(ring), "abcdefg");
    EXPECT_EQ(ring.dropped(), 0u);
}

TEST(RingBuffer, KeepsTheLastBytesAndCountsTheDropped) {
    RingBuffer ring(10);
    std::string all;
    for (int i = 0; i < 50; ++i) {
        std::string piece(static_cast<std::size_t>(i % 7 + 1), static_cast<char>('a' + i % 26));
        ring.append(piece);
        all += piece;
        ASSERT_EQ(contents(ring), all.substr(all.size() - std::min<std::size_t>(10, all.size())))
            << "after append " << i;
        ASSERT_EQ(ring.dropped(), all.size() - ring.size());
    }
}

TEST(RingBuffer, AnAppendLargerThanTheCapacityKeepsItsTail) {
    RingBuffer ring(4);
    ring.append("xy");
    ring.append("0123456789");
    EXPECT_EQ(contents(ring), "6789");
    EXPECT_EQ(ring.dropped(), 8u);
}

TEST(RingBuffer, ZeroCapacityDropsEverything) {
    RingBuffer ring(0);
    ring.append("abc");
    EXPECT_EQ(contents(ring), "");
    EXPECT_EQ(ring.dropped(), 3u);
}

}  // namespace
}  // namespace holt::agent
