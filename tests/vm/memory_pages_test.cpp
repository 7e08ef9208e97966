#include "holt/vm/memory_pages.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "holt/common/error.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;

const std::size_t kPage = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
constexpr std::size_t kPages = 64;

// A memory file whose page i is filled with the byte i + 1, mapped copy-on-write the way QEMU
// maps a template's RAM for a clone.
class MemoryPagesTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("holt-pages-" + std::to_string(::getpid()));
        fs::create_directories(dir_);
        file_ = dir_ / "memory";
        std::ofstream out(file_, std::ios::binary);
        for (std::size_t i = 0; i < kPages; ++i) {
            std::string page(kPage, static_cast<char>(i + 1));
            out.write(page.data(), static_cast<std::streamsize>(page.size()));
        }
    }
    void TearDown() override {
        for (void* m : mappings_) {
            ::munmap(m, size());
        }
        fs::remove_all(dir_);
    }

    std::size_t size() const { return kPages * kPage; }

    char* map_private() {
        int fd = ::open(file_.c_str(), O_RDONLY);
        void* m = ::mmap(nullptr, size(), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        ::close(fd);
        EXPECT_NE(m, MAP_FAILED);
        mappings_.push_back(m);
        return static_cast<char*>(m);
    }

    RamMapping ram(char* at) const {
        return RamMapping{
            .pid = ::getpid(), .address = reinterpret_cast<std::uintptr_t>(at), .size = size()};
    }

    fs::path dir_;
    fs::path file_;
    std::vector<void*> mappings_;
};

TEST_F(MemoryPagesTest, SavesOnlyWrittenPagesAndRestoresThemOverTheFile) {
    char* vm = map_private();
    std::memset(vm + 3 * kPage, 'a', kPage);
    std::memset(vm + 4 * kPage + 100, 'b', 10);  // a partly written page is saved whole
    std::memset(vm + 20 * kPage, 0, kPage);      // zeros differ from the file's page too
    volatile char read_only = vm[30 * kPage];    // reading shares the file's page: not saved
    (void)read_only;

    fs::path pages = dir_ / "memory.pages";
    EXPECT_EQ(save_private_pages(ram(vm), pages), 3u);

    char* clone = map_private();
    load_private_pages(pages, ram(clone));
    EXPECT_EQ(std::memcmp(vm, clone, size()), 0);
    EXPECT_EQ(clone[20 * kPage + 7], 0);
    EXPECT_EQ(clone[5 * kPage], 6) << "a page nobody wrote is still the file's";
}

TEST_F(MemoryPagesTest, AnUntouchedMappingHasNoPrivatePages) {
    char* vm = map_private();
    fs::path pages = dir_ / "memory.pages";
    EXPECT_EQ(save_private_pages(ram(vm), pages), 0u);
    char* clone = map_private();
    load_private_pages(pages, ram(clone));
    EXPECT_EQ(std::memcmp(vm, clone, size()), 0);
}

TEST_F(MemoryPagesTest, FindsTheMappingOfTheFileBySize) {
    char* vm = map_private();
    EXPECT_EQ(find_ram_mapping(::getpid(), file_, size()).address,
              reinterpret_cast<std::uintptr_t>(vm));
    try {
        find_ram_mapping(::getpid(), file_, size() * 2);
        FAIL() << "a mapping of another size was taken";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("maps no"), std::string::npos) << e.what();
    }
}

TEST_F(MemoryPagesTest, ABadFileIsRefusedBeforeAnythingIsWritten) {
    char* clone = map_private();
    fs::path garbage = dir_ / "garbage.pages";
    std::ofstream(garbage) << "this is not a pages file at all, not at all";
    try {
        load_private_pages(garbage, ram(clone));
        FAIL() << "garbage was loaded";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("not a private pages file"), std::string::npos)
            << e.what();
    }

    // A file saved from a larger RAM names pages this one does not have.
    char* vm = map_private();
    std::memset(vm + (kPages - 1) * kPage, 'z', kPage);
    fs::path pages = dir_ / "memory.pages";
    save_private_pages(ram(vm), pages);
    RamMapping smaller = ram(clone);
    smaller.size = (kPages / 2) * kPage;
    try {
        load_private_pages(pages, smaller);
        FAIL() << "pages outside the RAM were accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("lies outside"), std::string::npos) << e.what();
    }
    EXPECT_EQ(clone[(kPages - 1) * kPage], static_cast<char>(kPages));
}

}  // namespace
}  // namespace holt::vm
