#include "cli/args.h"

#include "catalog/catalog.h"
#include "cli/size.h"

namespace tp::cli {

std::optional<uint64_t> size_arg(const Context& ctx, std::string_view command,
                                 std::string_view option, const std::string& text) {
  auto r = parse_size(text);
  if (!r.ok()) {
    std::string subject(option);
    subject += " \"" + text + "\"";
    ctx.usage(command, subject, std::string("invalid size: ") + r.error().what);
    return std::nullopt;
  }
  return r.value();
}

bool name_arg(const Context& ctx, std::string_view command, const std::string& name) {
  if (catalog::valid_volume_name(name)) {
    return true;
  }
  ctx.usage(command, "\"" + name + "\"",
            "invalid volume name (1..128 characters of A-Z a-z 0-9 . _ + -, not starting "
            "with . or -)");
  return false;
}

}  // namespace tp::cli
