#include "holt/vm/image_store.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>

#include "holt/common/error.hpp"

namespace holt::vm {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class ImageStoreTest : public ::testing::Test {
  protected:
    void SetUp() override {
        root_ = fs::temp_directory_path() / ("holt-image-store-" + std::to_string(::getpid()));
        fs::remove_all(root_);
        fs::create_directories(root_ / "recipes/templates");
        fs::create_directories(root_ / "data/images");
        std::ofstream(root_ / "recipes/templates/base.conf") << "";
        std::ofstream(root_ / "recipes/templates/web.conf") << "";
    }
    void TearDown() override { fs::remove_all(root_); }

    void write_manifest(const std::string& name, const std::string& text) {
        fs::create_directories(root_ / "data/images" / name);
        std::ofstream(root_ / "data/images" / name / "manifest.json") << text;
    }

    std::string manifest_with_files(const std::string& name) {
        for (const char* f : {"vmlinuz", "initrd.img", "rootfs.ext4"}) {
            std::ofstream(root_ / f) << "x";
        }
        return R"({"format":1,"template":")" + name + R"(","kernel":")" +
               (root_ / "vmlinuz").string() + R"(","initrd":")" + (root_ / "initrd.img").string() +
               R"(","rootfs":")" + (root_ / "rootfs.ext4").string() +
               R"(","rootfs_format":"raw","kernel_version":"6.1","recipe_hash":"abc"})";
    }

    ImageStore store() { return ImageStore(root_ / "data", root_ / "recipes"); }

    fs::path root_;
};

std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

TEST_F(ImageStoreTest, ListsTemplatesFromRecipesAndBuiltImages) {
    write_manifest("custom", manifest_with_files("custom"));
    EXPECT_THAT(store().templates(), ::testing::ElementsAre("base", "custom", "web"));
}

TEST_F(ImageStoreTest, UnknownTemplateNamesTheKnownOnes) {
    std::string error = error_of([&] { store().get("pyhton"); });
    EXPECT_THAT(error, HasSubstr("unknown template \"pyhton\""));
    EXPECT_THAT(error, HasSubstr("base, web"));
}

TEST_F(ImageStoreTest, KnownButUnbuiltTemplateSaysHowToBuildIt) {
    std::string error = error_of([&] { store().get("web"); });
    EXPECT_THAT(error, HasSubstr("not built yet"));
    EXPECT_THAT(error, HasSubstr("holt-vm images build web"));
}

TEST_F(ImageStoreTest, ReadsAManifest) {
    write_manifest("base", manifest_with_files("base"));
    TemplateImage image = store().get("base");
    EXPECT_EQ(image.kernel, root_ / "vmlinuz");
    EXPECT_EQ(image.rootfs_format, "raw");
    EXPECT_EQ(image.recipe_hash, "abc");
}

TEST_F(ImageStoreTest, MissingKernelIsNamed) {
    write_manifest("base", manifest_with_files("base"));
    fs::remove(root_ / "vmlinuz");
    std::string error = error_of([&] { store().get("base"); });
    EXPECT_THAT(error, HasSubstr("kernel " + (root_ / "vmlinuz").string() + " is missing"));
}

TEST_F(ImageStoreTest, RejectsCorruptAndFutureManifests) {
    write_manifest("base", "{not json");
    EXPECT_THAT(error_of([&] { store().get("base"); }), HasSubstr("not a JSON object"));
    write_manifest("base", R"({"format":99})");
    EXPECT_THAT(error_of([&] { store().get("base"); }), HasSubstr("unsupported manifest format"));
}

TEST_F(ImageStoreTest, BuildRejectsUnknownTemplateBeforeRunningAnything) {
    std::ofstream(root_ / "recipes/build.sh") << "exit 0\n";
    std::ofstream(root_ / "agent") << "x";
    EXPECT_THAT(error_of([&] { store().build({"nope"}, root_ / "agent"); }),
                HasSubstr("unknown template \"nope\""));
}

}  // namespace
}  // namespace holt::vm
