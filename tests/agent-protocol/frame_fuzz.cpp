// libFuzzer target: the host-side frame decoder must survive any byte stream a guest can send.
#include <cstddef>
#include <cstdint>

#include "holt/agent_protocol/frame.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using holt::agent_protocol::FrameDecoder;
    // The first byte chooses how the input is split, to exercise partial headers and payloads.
    if (size == 0) {
        return 0;
    }
    const std::size_t piece = 1 + data[0] % 64;
    std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
    FrameDecoder decoder(/*expect_sync=*/(data[0] & 0x80) != 0);
    holt::agent_protocol::Frame frame;
    while (!bytes.empty()) {
        std::string_view input = bytes.substr(0, piece);
        bytes.remove_prefix(input.size());
        for (;;) {
            auto status = decoder.decode(input, frame);
            if (status == FrameDecoder::kError) {
                decoder.resync();
                continue;
            }
            if (status == FrameDecoder::kNeedMore) {
                break;
            }
        }
    }
    return 0;
}
