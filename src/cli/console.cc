#include "cli/console.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <ostream>

#include "cli/views.h"

namespace tp::cli {
namespace {

// Messages are one line: a reason that came with a newline (say from strerror or a
// library) has it replaced.
std::string one_line(std::string_view s) {
  std::string r(s);
  std::replace(r.begin(), r.end(), '\n', ' ');
  std::replace(r.begin(), r.end(), '\r', ' ');
  return r;
}

}  // namespace

int exit_status_for(const Error& e) {
  switch (e.code) {
    case Errc::kCorruption:
    case Errc::kUnsupported:
      return kExitDamaged;
    default:
      return kExitFailed;
  }
}

int Context::fail(std::string_view command, std::string_view subject, const Error& e) const {
  return fail(command, subject, e, exit_status_for(e));
}

int Context::fail(std::string_view command, std::string_view subject, const Error& e, int status,
                  std::string_view unnamed) const {
  nlohmann::json detail{{"code", errc_name(e.code)}, {"what", e.what}};
  if (!e.space.present()) {
    return report_failure(command, subject, e.to_string(), status, std::move(detail), true);
  }
  // A space refusal: the engine's numbers, with the volumes named.
  Error plain = e;
  plain.space = SpaceNeed{};
  const std::string_view fallback = unnamed.empty() ? subject : unnamed;
  const std::string reason =
      plain.to_string() + ": " + space_text(e.space, volume_name, command, fallback);
  add_space_json(e.space, volume_name, fallback, detail);
  // A dry run reports its plan instead of an error document (with_pool).
  return report_failure(command, subject, reason, status, std::move(detail), plan == nullptr);
}

int Context::fail(std::string_view command, std::string_view subject, std::string_view reason,
                  int status) const {
  return report_failure(command, subject, reason, status, nlohmann::json::object(), true);
}

int Context::report_failure(std::string_view command, std::string_view subject,
                            std::string_view reason, int status, nlohmann::json detail,
                            bool document) const {
  if (json && document && !reported) {
    detail["command"] = command;
    detail["subject"] = subject;
    detail["message"] = one_line(reason);
    detail["exit_status"] = status;
    // Paths may be any bytes: never throw on invalid UTF-8.
    con.out << nlohmann::json{{"error", std::move(detail)}}.dump(
                   2, ' ', false, nlohmann::json::error_handler_t::replace)
            << '\n'
            << std::flush;
    reported = true;
  }
  std::string line = "thinpool: ";
  if (!command.empty()) {
    line += one_line(command);
    line += ": ";
  }
  if (!subject.empty()) {
    line += one_line(subject);
    line += ": ";
  }
  line += one_line(reason);
  con.err << line << '\n' << std::flush;
  return status;
}

Table::Table(std::vector<std::string> header, std::vector<bool> right) : right_(std::move(right)) {
  right_.resize(header.size(), false);
  rows_.push_back(std::move(header));
}

void Table::add(std::vector<std::string> row) {
  row.resize(rows_[0].size());
  rows_.push_back(std::move(row));
}

void Table::print(std::ostream& os) const {
  std::vector<size_t> width(rows_[0].size(), 0);
  for (const auto& row : rows_) {
    for (size_t c = 0; c < row.size(); c++) {
      width[c] = std::max(width[c], row[c].size());
    }
  }
  for (const auto& row : rows_) {
    std::string line;
    for (size_t c = 0; c < row.size(); c++) {
      const size_t pad = width[c] - row[c].size();
      const bool last = c + 1 == row.size();
      if (right_[c]) {
        line.append(pad, ' ');
        line += row[c];
      } else {
        line += row[c];
        if (!last) {
          line.append(pad, ' ');
        }
      }
      if (!last) {
        line += "  ";
      }
    }
    os << line << '\n';
  }
}

}  // namespace tp::cli
