#pragma once

#include <boost/json/value.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace holt::cli {

// A table for people: a header row and aligned columns, two spaces apart; the last column is
// not padded. Widths count UTF-8 characters, not bytes.
class Table {
  public:
    explicit Table(std::vector<std::string> headers);

    void add_row(std::vector<std::string> cells);
    std::size_t rows() const { return rows_.size(); }
    std::string render() const;

  private:
    std::vector<std::string> headers_;
    std::vector<std::vector<std::string>> rows_;
};

// Rows of "key  value" for one object, keys aligned.
std::string render_details(const std::vector<std::pair<std::string, std::string>>& fields);

// A field of a JSON object as text: strings as they are, numbers and booleans printed, objects
// as "k=v,k=v", and "-" for null or absent fields.
std::string field_text(const boost::json::value& object, std::string_view key);

// The API's objects as tables (answers of the list and single-object calls).
std::string render_sandboxes(const boost::json::array& sandboxes);
std::string render_sandbox_details(const boost::json::value& sandbox);
std::string render_snapshots(const boost::json::array& snapshots);
std::string render_keys(const boost::json::array& keys);
std::string render_processes(const boost::json::array& processes);
std::string render_templates(const boost::json::array& templates);

}  // namespace holt::cli
