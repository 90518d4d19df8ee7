#include "support/test_util.h"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace tp::testing {
namespace {

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int* addr() { return &fd_; }
  void reset() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

void make_pipe(Fd* r, Fd* w) {
  int fds[2];
  // O_CLOEXEC so that a child spawned concurrently by another thread does not inherit
  // (and hold open) our write ends, which would delay EOF.
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    fail("pipe2");
  }
  *r->addr() = fds[0];
  *w->addr() = fds[1];
}

}  // namespace

CmdResult run_cmd(const std::vector<std::string>& argv) {
  if (argv.empty()) {
    throw std::invalid_argument("run_cmd: empty argv");
  }
  Fd out_r, out_w, err_r, err_w;
  make_pipe(&out_r, &out_w);
  make_pipe(&err_r, &err_w);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_w.get(), 1);
  posix_spawn_file_actions_adddup2(&fa, err_w.get(), 2);

  std::vector<char*> args;
  for (const std::string& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);

  pid_t pid = 0;
  int spawn_rc = ::posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  CmdResult res;
  if (spawn_rc != 0) {
    res.rc = 127;
    res.err = "run_cmd: cannot run " + argv[0] + ": " + std::strerror(spawn_rc);
    return res;
  }
  out_w.reset();
  err_w.reset();

  // Drain both pipes together: a child that fills one pipe while we block on the other
  // would deadlock.
  struct Stream {
    Fd* fd;
    std::string* buf;
  } streams[2] = {{&out_r, &res.out}, {&err_r, &res.err}};
  char buf[65536];
  while (out_r.get() >= 0 || err_r.get() >= 0) {
    pollfd pfds[2];
    int n = 0;
    Stream* which[2];
    for (Stream& s : streams) {
      if (s.fd->get() >= 0) {
        pfds[n] = pollfd{s.fd->get(), POLLIN, 0};
        which[n++] = &s;
      }
    }
    if (::poll(pfds, n, -1) < 0) {
      if (errno == EINTR) {
        continue;
      }
      fail("poll");
    }
    for (int k = 0; k < n; ++k) {
      if (pfds[k].revents == 0) {
        continue;
      }
      ssize_t got = ::read(pfds[k].fd, buf, sizeof(buf));
      if (got > 0) {
        which[k]->buf->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        which[k]->fd->reset();  // EOF (or an error we cannot do anything about)
      }
    }
  }

  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      fail("waitpid");
    }
  }
  if (WIFEXITED(status)) {
    res.rc = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    res.rc = 128 + WTERMSIG(status);
  } else {
    res.rc = -1;
  }
  return res;
}

bool have_tool(const std::string& name) {
  auto is_exe = [](const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
  };
  if (name.empty()) {
    return false;
  }
  if (name.find('/') != std::string::npos) {
    return is_exe(name);
  }
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t b = 0;
  while (b <= dirs.size()) {
    size_t e = dirs.find(':', b);
    if (e == std::string::npos) {
      e = dirs.size();
    }
    std::string dir = dirs.substr(b, e - b);
    if (is_exe((dir.empty() ? "." : dir) + "/" + name)) {
      return true;
    }
    b = e + 1;
  }
  return false;
}

TempDir::TempDir() {
  const char* env = std::getenv("TMPDIR");
  // A relative TMPDIR would put the directory under the working directory.
  std::string base = (env != nullptr && env[0] == '/') ? env : "/tmp";
  std::string tmpl = base + "/tp_test.XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    fail("mkdtemp " + tmpl);
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    fail("open " + path);
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) {
    fail("read " + path);
  }
  return ss.str();
}

void write_file(const std::string& path, std::string_view contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    fail("open " + path);
  }
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  out.close();
  if (!out) {
    fail("write " + path);
  }
}

std::string thin_check(const std::string& metadata_file) {
  if (!have_tool("thin_check")) {
    static bool noted = false;
    if (!noted) {
      noted = true;
      std::fprintf(stderr, "note: thin_check not installed; thin_check() checks skipped\n");
    }
    return "";
  }
  CmdResult r = run_cmd({"thin_check", metadata_file});
  if (r.rc == 0) {
    return "";
  }
  return "thin_check rc=" + std::to_string(r.rc) + ": " + (r.err.empty() ? r.out : r.err);
}

CmdResult thin_restore(const XmlPool& pool, const std::string& out_file, uint64_t bytes) {
  Fd fd(::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    fail("open " + out_file);
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    fail("ftruncate " + out_file);
  }
  fd.reset();
  TempDir tmp;
  std::string xml = tmp.file("pool.xml");
  write_file(xml, to_xml(pool));
  return run_cmd({"thin_restore", "-i", xml, "-o", out_file});
}

std::optional<XmlPool> thin_dump(const std::string& metadata_file) {
  CmdResult r = run_cmd({"thin_dump", metadata_file});
  if (r.rc != 0) {
    return std::nullopt;
  }
  return parse_xml(r.out);
}

uint64_t metadata_bytes_for(const XmlPool& pool) {
  constexpr uint64_t kMiB = 1 << 20;
  uint64_t bytes = std::max<uint64_t>(16 * kMiB, 2 * 48 * total_mappings(pool) + 4 * kMiB);
  return (bytes + 4095) / 4096 * 4096;
}

}  // namespace tp::testing

namespace tp::testing {

Effort effort() {
  if (std::getenv("TP_LONG")) return Effort::kLong;
  if (std::getenv("TP_QUICK")) return Effort::kQuick;
  return Effort::kNormal;
}

uint64_t scaled(uint64_t n, uint64_t long_factor) {
  switch (effort()) {
    case Effort::kQuick:
      return std::max<uint64_t>(1, n / 10);
    case Effort::kNormal:
      return n;
    case Effort::kLong:
      return n * long_factor;
  }
  return n;
}

}  // namespace tp::testing
