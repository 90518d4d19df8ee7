#include "cli/pool_access.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <ostream>

#include "cli/size.h"
#include "cli/views.h"
#include "daemon/group_commit.h"
#include "daemon/pool_export.h"
#include "daemon/serve.h"

namespace tp::cli {

int print_report(const Context& ctx, std::string_view command, const Report& report) {
  if (ctx.json) {
    // Volume names are ASCII, but damage reports may quote anything: never throw on UTF-8.
    ctx.con.out << report.json.dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
                << '\n';
  } else {
    ctx.con.out << report.text;
  }
  ctx.con.out << std::flush;
  ctx.reported = true;
  if (!ctx.con.out) {
    return ctx.fail(command, "stdout", "write error", kExitFailed);
  }
  return kExitOk;
}

int check_pool_dir(const Context& ctx, std::string_view command) {
  if (ctx.pool_dir.empty()) {
    return ctx.usage(command, "", "no pool given (use -p DIR or set THINPOOL_POOL)");
  }
  struct stat st;
  if (::stat(ctx.pool_dir.c_str(), &st) != 0) {
    int e = errno;
    if (e == ENOENT || e == ENOTDIR) {
      return ctx.fail(command, ctx.pool_dir, "not a pool (no such directory)", kExitDamaged);
    }
    return ctx.fail(command, ctx.pool_dir, std::strerror(e), kExitFailed);
  }
  if (!S_ISDIR(st.st_mode)) {
    return ctx.fail(command, ctx.pool_dir, "not a pool (not a directory)", kExitDamaged);
  }
  const std::string metadata = ctx.pool_dir + "/metadata";
  if (::stat(metadata.c_str(), &st) != 0) {
    int e = errno;
    if (e == ENOENT) {
      return ctx.fail(command, ctx.pool_dir, "not a pool (no metadata file)", kExitDamaged);
    }
    return ctx.fail(command, metadata, std::strerror(e), kExitFailed);
  }
  return kExitOk;
}

int open_pool(const Context& ctx, std::string_view command, std::unique_ptr<thin::Pool>* pool) {
  if (int st = check_pool_dir(ctx, command); st != kExitOk) {
    return st;
  }
  auto opened = thin::Pool::open(ctx.pool_dir);
  if (!opened.ok()) {
    const Error& e = opened.error();
    switch (e.code) {
      case Errc::kBusy:  // "busy: pool is in use by another process"
        return ctx.fail(command, ctx.pool_dir, e.to_string(), kExitFailed);
      case Errc::kNotFound:
        // The metadata file exists (check_pool_dir), so a missing part means damage.
        return ctx.fail(command, ctx.pool_dir, "damaged pool: " + e.to_string(), kExitDamaged);
      case Errc::kIo:
        if (e.sys_errno == ENOENT) {
          return ctx.fail(command, ctx.pool_dir, "damaged pool: " + e.to_string(), kExitDamaged);
        }
        return ctx.fail(command, ctx.pool_dir, e);
      case Errc::kCorruption:
      case Errc::kUnsupported:
        return ctx.fail(command, ctx.pool_dir, "damaged pool: " + e.to_string(), kExitDamaged);
      default:
        return ctx.fail(command, ctx.pool_dir, e);
    }
  }
  *pool = std::move(opened).value();
  return kExitOk;
}

int close_pool(const Context& ctx, std::string_view command, std::unique_ptr<thin::Pool> pool,
               int status) {
  if (!pool) {
    return status;
  }
  auto closed = pool->close();
  if (!closed.ok() && status == kExitOk) {
    return ctx.fail(command, ctx.pool_dir, closed.error());
  }
  return status;
}

namespace {

// What `plan` prints: whether the operation fits and by how much (CLI.md "plan").
Report plan_report(const Context& ctx, std::string_view command) {
  const thin::SpacePlan& p = *ctx.plan;
  const SpaceNeed& n = p.need;
  Report r;
  r.json["command"] = command;
  r.json["fits"] = p.fits();
  add_space_json(n, ctx.volume_name, "", r.json);
  const uint64_t spare = p.fits() ? n.available() - n.need : 0;
  r.json["spare_bytes"] = spare * n.unit_bytes;
  r.json["spare_blocks"] = spare;
  r.json["unreserved_after_bytes"] = p.unreserved_after * n.unit_bytes;
  r.json["unreserved_after_blocks"] = p.unreserved_after;
  auto amount = [&](uint64_t units) {
    return fmt::format("{} ({} block{})", format_bytes(units * n.unit_bytes), units,
                       units == 1 ? "" : "s");
  };
  const std::string numbers = space_text(n, ctx.volume_name, command, "the new volume");
  r.text = p.fits() ? fmt::format("{} fits: {}; {} to spare, {} unreserved after it\n", command,
                                  numbers, amount(spare), amount(p.unreserved_after))
                    : fmt::format("{} does not fit: {}; {} short\n", command, numbers,
                                  amount(n.need - n.available()));
  return r;
}

// Names volumes by thin device id for the space numbers of a refusal or a plan while body
// runs on pool.
class VolumeNames {
 public:
  VolumeNames(const Context& ctx, thin::Pool& pool) : ctx_(ctx) {
    ctx_.volume_name = [&pool](uint64_t dev) -> std::string {
      for (const auto& v : pool.list(/*counts=*/false)) {
        if (v.dev_id == dev) return v.name;
      }
      return "";
    };
  }
  ~VolumeNames() { ctx_.volume_name = nullptr; }
  VolumeNames(const VolumeNames&) = delete;
  VolumeNames& operator=(const VolumeNames&) = delete;

 private:
  const Context& ctx_;
};

// Runs body; in a dry run, the plan becomes the report and its verdict the status.
int run_body(const Context& ctx, std::string_view command, thin::Pool& pool,
             const std::function<int(thin::Pool&, Report&)>& body, Report& report) {
  VolumeNames names(ctx, pool);
  int st = body(pool, report);
  if (ctx.plan && ctx.plan->decided) {
    report = plan_report(ctx, command);
    st = ctx.plan->fits() ? kExitOk : kExitFailed;
  }
  return st;
}

}  // namespace

int with_pool(const Context& ctx, std::string_view command,
              const std::function<int(thin::Pool&, Report&)>& body) {
  // A dry run that does not fit prints its plan as well as the refusal.
  auto print = [&](int st, const Report& report) {
    const bool planned = ctx.plan && ctx.plan->decided;
    if (st != kExitOk && !planned) return st;
    int printed = print_report(ctx, command, report);
    return st != kExitOk ? st : printed;
  };
  if (ctx.served) {
    Report report;
    int st = run_body(ctx, command, ctx.served->pool, body, report);
    if (st == kExitOk) {
      if (auto r = ctx.served->commit.flush(); !r.ok()) {
        st = ctx.fail(command, ctx.pool_dir, r.error());
      }
    }
    return print(st, report);
  }
  std::unique_ptr<thin::Pool> pool;
  if (int st = open_pool(ctx, command, &pool); st != kExitOk) {
    return st;
  }
  Report report;
  int st = run_body(ctx, command, *pool, body, report);
  st = close_pool(ctx, command, std::move(pool), st);
  return print(st, report);
}

Result<void> unless_exported(const Context& ctx, const std::vector<std::string>& gone,
                             const std::vector<std::string>& rewritten, bool force,
                             const std::function<Result<void>()>& op) {
  if (!ctx.served) return op();
  return ctx.served->exports.unless_open(gone, force ? std::vector<std::string>{} : rewritten, op);
}

std::map<std::string, unsigned> exported_volumes(const Context& ctx) {
  std::map<std::string, unsigned> out;
  if (!ctx.served) return out;
  for (const auto& [name, use] : ctx.served->exports.uses()) {
    out[name] = use.readers + use.writers;
  }
  return out;
}

}  // namespace tp::cli
