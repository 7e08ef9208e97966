#include "holt/vm/image_store.hpp"

#include <algorithm>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <fstream>
#include <iterator>
#include <set>

#include "holt/common/child_process.hpp"
#include "holt/common/error.hpp"

namespace holt::vm {
namespace {

namespace json = boost::json;
namespace fs = std::filesystem;

// The manifest format this code reads (the "format" field of manifest.json).
constexpr std::int64_t kManifestFormat = 1;

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& item : items) {
        out += (out.empty() ? "" : ", ") + item;
    }
    return out;
}

std::string string_field(const json::object& manifest, const char* key) {
    const json::value* value = manifest.if_contains(key);
    if (!value || !value->is_string()) {
        throw Error(std::string("field \"") + key + "\" missing or not a string");
    }
    return std::string(value->as_string());
}

}  // namespace

ImageStore::ImageStore(fs::path data_dir, fs::path recipes_dir)
    : data_dir_(std::move(data_dir)), recipes_dir_(std::move(recipes_dir)) {}

std::vector<std::string> ImageStore::templates() const {
    std::set<std::string> names;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(recipes_dir_ / "templates", ec)) {
        if (entry.is_regular_file()) {
            names.insert(entry.path().stem().string());
        }
    }
    for (const auto& entry : fs::directory_iterator(images_dir(), ec)) {
        if (fs::exists(entry.path() / "manifest.json")) {
            names.insert(entry.path().filename().string());
        }
    }
    return {names.begin(), names.end()};
}

TemplateImage ImageStore::get(const std::string& name) const {
    fs::path manifest_path = images_dir() / name / "manifest.json";
    if (!fs::exists(manifest_path)) {
        auto known = templates();
        if (std::find(known.begin(), known.end(), name) == known.end()) {
            throw Error("unknown template \"" + name +
                        "\" (known templates: " + (known.empty() ? "none" : join(known)) + ")");
        }
        throw Error("template \"" + name + "\" is not built yet: run `holt-vm images build " +
                    name + "` (or `make up`)");
    }
    return with_context("template \"" + name + "\": read " + manifest_path.string(), [&] {
        std::ifstream in(manifest_path);
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        boost::system::error_code ec;
        json::value parsed = json::parse(text, ec);
        if (ec || !parsed.is_object()) {
            throw Error("not a JSON object");
        }
        const json::object& manifest = parsed.as_object();
        const json::value* format = manifest.if_contains("format");
        if (!format || !format->is_int64() || format->as_int64() != kManifestFormat) {
            throw Error("unsupported manifest format (expected " + std::to_string(kManifestFormat) +
                        "); rebuild the image");
        }
        TemplateImage image{
            .name = name,
            .kernel = string_field(manifest, "kernel"),
            .initrd = string_field(manifest, "initrd"),
            .rootfs = string_field(manifest, "rootfs"),
            .rootfs_format = string_field(manifest, "rootfs_format"),
            .kernel_version = string_field(manifest, "kernel_version"),
            .recipe_hash = string_field(manifest, "recipe_hash"),
        };
        std::ifstream warmup(recipes_dir_ / "templates" / (name + ".warmup"));
        for (std::string line; std::getline(warmup, line);) {
            if (!line.empty() && line.front() != '#') {
                image.warmup.push_back(line);
            }
        }
        for (const auto& [what, path] :
             {std::pair{"kernel", image.kernel}, std::pair{"initrd", image.initrd},
              std::pair{"root filesystem", image.rootfs}}) {
            if (!fs::exists(path)) {
                throw Error(std::string(what) + " " + path.string() +
                            " is missing; rebuild with `holt-vm images build " + name + "`");
            }
        }
        return image;
    });
}

void ImageStore::build(const std::vector<std::string>& names, const fs::path& agent) const {
    fs::path script = recipes_dir_ / "build.sh";
    if (!fs::exists(script)) {
        throw Error("image recipes not found: " + script.string() + " does not exist");
    }
    if (!fs::exists(agent)) {
        throw Error("guest agent binary not found at " + agent.string() + "; build Holt first");
    }
    auto known = templates();
    for (const auto& name : names) {
        if (std::find(known.begin(), known.end(), name) == known.end()) {
            throw Error("unknown template \"" + name + "\" (known templates: " + join(known) + ")");
        }
    }
    std::vector<std::string> argv = {"/bin/bash",        script.string(), "--data-dir",
                                     data_dir_.string(), "--agent",       agent.string()};
    argv.insert(argv.end(), names.begin(), names.end());
    CommandResult result = run_command(argv, /*capture=*/false);
    if (!result.status.success()) {
        throw Error("image build failed (" + result.status.describe() + "); see the output above");
    }
}

}  // namespace holt::vm
