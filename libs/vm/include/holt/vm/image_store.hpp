#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace holt::vm {

// A built template: the files a VM boots from, as recorded in the template's manifest
// (DATA/images/<template>/manifest.json, written by infra/images/build.sh; see docs/images.md).
struct TemplateImage {
    std::string name;
    std::filesystem::path kernel;
    std::filesystem::path initrd;
    std::filesystem::path rootfs;
    std::string rootfs_format;  // "raw" or "qcow2"
    std::string kernel_version;
    std::string recipe_hash;  // changes whenever anything the image is built from changes
    // Shell commands run in the template's VM before its snapshot is saved (templates/<name>.warmup
    // in the recipes), so what most sandboxes start with is already in the guest's page cache.
    std::vector<std::string> warmup;
};

// Finds, checks and builds guest templates in a data directory.
class ImageStore {
  public:
    // `data_dir` holds built images; `recipes_dir` holds the recipes (infra/images).
    ImageStore(std::filesystem::path data_dir, std::filesystem::path recipes_dir);

    // Templates that have a recipe or a built image, sorted.
    std::vector<std::string> templates() const;

    // The built image of `name`. Throws holt::Error that says whether the template is unknown
    // (listing the known ones), not built yet, or built but missing a file.
    TemplateImage get(const std::string& name) const;

    // Builds (or brings up to date) the given templates, or all when `names` is empty, with the
    // guest agent binary `agent`. Progress goes to stderr. Throws if the recipe fails.
    void build(const std::vector<std::string>& names, const std::filesystem::path& agent) const;

    const std::filesystem::path& recipes_dir() const { return recipes_dir_; }

  private:
    std::filesystem::path images_dir() const { return data_dir_ / "images"; }

    std::filesystem::path data_dir_;
    std::filesystem::path recipes_dir_;
};

}  // namespace holt::vm
