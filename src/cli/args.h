#pragma once
// Checks of command-line values made before the pool is touched; a bad value is a usage
// error (exit 2) with one line naming the option and the reason.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "cli/console.h"

namespace tp::cli {

// parse_size(text), or prints `thinpool: <command>: <option> "<text>": invalid size: <why>`
// and returns nullopt.
std::optional<uint64_t> size_arg(const Context& ctx, std::string_view command,
                                 std::string_view option, const std::string& text);

// catalog::valid_volume_name(name), or prints the usage error and returns false.
bool name_arg(const Context& ctx, std::string_view command, const std::string& name);

}  // namespace tp::cli
