#include "cli/pool_access.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <ostream>

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

int with_pool(const Context& ctx, std::string_view command,
              const std::function<int(thin::Pool&, Report&)>& body) {
  if (ctx.served) {
    Report report;
    int st = body(ctx.served->pool, report);
    if (st == kExitOk) {
      if (auto r = ctx.served->commit.flush(); !r.ok()) {
        st = ctx.fail(command, ctx.pool_dir, r.error());
      }
    }
    return st == kExitOk ? print_report(ctx, command, report) : st;
  }
  std::unique_ptr<thin::Pool> pool;
  if (int st = open_pool(ctx, command, &pool); st != kExitOk) {
    return st;
  }
  Report report;
  int st = body(*pool, report);
  st = close_pool(ctx, command, std::move(pool), st);
  if (st == kExitOk) {
    st = print_report(ctx, command, report);
  }
  return st;
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
