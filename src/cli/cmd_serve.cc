// `thinpool serve`: hands the pool to the daemon layer (src/daemon/serve.h).
#include <CLI/CLI.hpp>

#include "cli/command.h"
#include "daemon/serve.h"

namespace tp::cli {
namespace {

class ServeCommand final : public Command {
 public:
  const char* name() const override { return "serve"; }
  const char* description() const override {
    return "Serve the pool's volumes over NBD until SIGINT/SIGTERM";
  }
  void declare(CLI::App& sub) override {
    sub.add_option("--socket", opts_.socket_path, "Unix socket (default: POOL/nbd.sock)");
    sub.add_option("--listen", opts_.listen, "Also listen on TCP, e.g. 127.0.0.1:10809");
    sub.add_option("--export", opts_.exports, "Volumes to serve (default: all)");
    sub.add_option("--default", opts_.default_export, "Volume for the empty export name");
    sub.add_flag("--debug", opts_.debug, "Log every connection and refused request");
  }
  int run(const Context& ctx) override {
    if (ctx.pool_dir.empty()) {
      return ctx.usage(name(), "-p", "no pool given (-p DIR or THINPOOL_POOL)");
    }
    opts_.pool_dir = ctx.pool_dir;
    return daemon::serve(opts_);
  }

 private:
  daemon::ServeOptions opts_;
};

}  // namespace

void add_serve_commands(CommandList& list) {
  list.push_back(std::make_unique<ServeCommand>());
}

}  // namespace tp::cli
