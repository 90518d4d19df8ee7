// The control socket (ControlServer, ControlClient, LineReader) and the event bus, over a real
// Unix socket in a temp dir; the command runner is a test double that records what it got.

#include "daemon/control.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "daemon/events.h"
#include "support/test_util.h"

namespace tp::daemon {
namespace {

using ::tp::testing::TempDir;
using namespace std::chrono_literals;
using json = nlohmann::json;

// A raw connection, to send what ControlClient would never send.
int raw_connect(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof(a.sun_path) - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

struct Fixture {
  TempDir dir;
  EventBus events;
  std::vector<ControlRequest> seen;
  std::mutex mu;
  ControlServer server{
      dir.file("control.sock"),
      [this](const ControlRequest& r) {
        std::lock_guard lk(mu);
        seen.push_back(r);
        return ControlReply{r.argv[0] == "fail" ? 5 : 0, "out:" + r.argv[0], "err"};
      },
      events,
      [] {
        return json{{"pid", 42}};
      }};
  std::string path() { return dir.file("control.sock"); }
};

TEST(ControlServer, HandleRejectsMalformedRequests) {
  Fixture f;
  auto err = [&](std::string_view line) {
    auto r = json::parse(f.server.handle(line));
    return r.value("error", std::string());
  };
  EXPECT_EQ(err("not json"), "not a JSON object");
  EXPECT_EQ(err("[1,2]"), "not a JSON object");
  EXPECT_EQ(err(""), "not a JSON object");
  EXPECT_EQ(err("{\"op\":1}"), "no \"op\"");
  EXPECT_EQ(err("{}"), "no \"op\"");
  EXPECT_EQ(err("{\"op\":\"format-disk\"}"), "unknown op \"format-disk\"");
  EXPECT_NE(err("{\"op\":\"run\"}"), "");
  EXPECT_NE(err("{\"op\":\"run\",\"argv\":[]}"), "");
  EXPECT_NE(err("{\"op\":\"run\",\"argv\":\"list\"}"), "");
  EXPECT_NE(err("{\"op\":\"run\",\"argv\":[\"list\",3]}"), "");
  EXPECT_NE(err("{\"op\":\"run\",\"argv\":[\"list\"],\"cwd\":\"relative\"}"), "");
  EXPECT_NE(err("{\"op\":\"run\",\"argv\":[\"list\"],\"cwd\":7}"), "");
  json many = {{"op", "run"}, {"argv", std::vector<std::string>(ControlServer::kMaxArgs + 1, "x")}};
  EXPECT_NE(err(many.dump()), "");
  EXPECT_TRUE(f.seen.empty()) << "no malformed request reaches the runner";
}

TEST(ControlServer, HandleRunsCommandsAndAnswersStatus) {
  Fixture f;
  auto r = json::parse(f.server.handle(R"({"op":"run","argv":["list","--json"],"cwd":"/x"})"));
  EXPECT_EQ(r["status"], 0);
  EXPECT_EQ(r["stdout"], "out:list");
  ASSERT_EQ(f.seen.size(), 1u);
  EXPECT_EQ(f.seen[0].argv, (std::vector<std::string>{"list", "--json"}));
  EXPECT_EQ(f.seen[0].cwd, "/x");
  EXPECT_EQ(json::parse(f.server.handle(R"({"op":"run","argv":["fail"]})"))["status"], 5);
  EXPECT_EQ(json::parse(f.server.handle(R"({"op":"status"})"))["pid"], 42);
}

TEST(ControlServer, NoRunnerRefusesRun) {
  TempDir dir;
  EventBus events;
  ControlServer s(dir.file("c.sock"), nullptr, events, nullptr);
  auto r = json::parse(s.handle(R"({"op":"run","argv":["list"]})"));
  EXPECT_EQ(r["error"], "this daemon runs no commands");
}

TEST(ControlServer, SocketIsOwnerOnlyAndServesClients) {
  Fixture f;
  ASSERT_TRUE(f.server.start().ok());
  struct stat st;
  ASSERT_EQ(::lstat(f.path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto c = ControlClient::connect(f.path());
  ASSERT_TRUE(c.ok());
  auto r = (*c)->call({{"op", "run"}, {"argv", {"info"}}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)["stdout"], "out:info");
  // Several requests on one connection.
  r = (*c)->call({{"op", "status"}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)["pid"], 42);
}

TEST(ControlServer, SecondServerOnTheSameSocketIsBusyAndStaleSocketIsReplaced) {
  Fixture f;
  ASSERT_TRUE(f.server.start().ok());
  EventBus events;
  ControlServer other(f.path(), nullptr, events, nullptr);
  auto st = other.start();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::kBusy);
  f.server.stop();
  EXPECT_FALSE(ControlClient::connect(f.path()).ok());

  // A socket file nobody listens on (a daemon killed with SIGKILL) is replaced.
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, f.path().c_str(), sizeof(a.sun_path) - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ::close(fd);
  auto stale = ControlClient::connect(f.path());
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.error().code, Errc::kNotFound);
  ControlServer again(f.path(), nullptr, events, nullptr);
  EXPECT_TRUE(again.start().ok());
}

TEST(ControlServer, PathThatIsNotASocketIsRefused) {
  TempDir dir;
  ::tp::testing::write_file(dir.file("c.sock"), "precious");
  EventBus events;
  ControlServer s(dir.file("c.sock"), nullptr, events, nullptr);
  EXPECT_FALSE(s.start().ok());
  EXPECT_EQ(::tp::testing::read_file(dir.file("c.sock")), "precious");
}

TEST(ControlServer, OverlongRequestIsAnsweredAndTheConnectionClosed) {
  Fixture f;
  ASSERT_TRUE(f.server.start().ok());
  int fd = raw_connect(f.path());
  ASSERT_GE(fd, 0);
  std::string big(ControlServer::kMaxRequest + 4096, 'x');
  // The server may stop reading once the cap is passed: ignore a failed send.
  (void)::send(fd, big.data(), big.size(), MSG_NOSIGNAL);
  LineReader r(fd, 4096);
  std::string line;
  ASSERT_TRUE(r.next(&line));
  EXPECT_EQ(json::parse(line)["error"], "request too long");
  EXPECT_FALSE(r.next(&line));  // closed
  ::close(fd);
  // Others are still served.
  auto c = ControlClient::connect(f.path());
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE((*c)->call({{"op", "status"}}).ok());
}

TEST(ControlServer, GarbageLineGetsAnErrorAndTheConnectionStaysUsable) {
  Fixture f;
  ASSERT_TRUE(f.server.start().ok());
  int fd = raw_connect(f.path());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(write_line(fd, "\x01\x02{{{"));
  ASSERT_TRUE(write_line(fd, R"({"op":"status"})"));
  LineReader r(fd, 1 << 20);
  std::string line;
  ASSERT_TRUE(r.next(&line));
  EXPECT_EQ(json::parse(line)["error"], "not a JSON object");
  ASSERT_TRUE(r.next(&line));
  EXPECT_EQ(json::parse(line)["pid"], 42);
  ::close(fd);
}

TEST(ControlServer, EventsStreamToSubscribers) {
  Fixture f;
  ASSERT_TRUE(f.server.start().ok());
  auto c = ControlClient::connect(f.path());
  ASSERT_TRUE(c.ok());
  auto ok = (*c)->call({{"op", "events"}});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ((*ok)["ok"], true);
  // The subscription is made after the reply: publish until the first one arrives.
  (*c)->set_timeout(100ms);
  Result<json> ev = make_error(Errc::kBusy, "none yet");
  for (int i = 0; i < 100 && !ev.ok(); i++) {
    f.events.publish({{"state", "low"}});
    ev = (*c)->read();
  }
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ((*ev)["state"], "low");
  EXPECT_TRUE(ev->contains("seq"));
  EXPECT_TRUE(ev->contains("time"));
  // Stopping the server ends the stream: the client sees the hang-up, not a hang.
  f.server.stop();
  (*c)->set_timeout(5s);
  Result<json> last = (*c)->read();
  while (last.ok()) last = (*c)->read();  // drain events published before the stop
  EXPECT_EQ(last.error().code, Errc::kIo);
}

TEST(ControlServer, ConnectionsAreCapped) {
  Fixture f;
  ASSERT_TRUE(f.server.start().ok());
  std::vector<int> fds;
  for (size_t i = 0; i < ControlServer::kMaxConnections; i++) {
    int fd = raw_connect(f.path());
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(write_line(fd, R"({"op":"status"})"));
    LineReader r(fd, 4096);
    std::string line;
    ASSERT_TRUE(r.next(&line)) << i;  // accepted and served
    fds.push_back(fd);
  }
  int extra = raw_connect(f.path());
  ASSERT_GE(extra, 0);
  LineReader r(extra, 4096);
  std::string line;
  ASSERT_TRUE(r.next(&line));
  EXPECT_EQ(json::parse(line)["error"], "too many control connections");
  ::close(extra);
  // Closing one makes room again.
  ::close(fds.back());
  fds.pop_back();
  bool served = false;
  for (int i = 0; i < 100 && !served; i++) {
    auto c = ControlClient::connect(f.path());
    ASSERT_TRUE(c.ok());
    auto rep = (*c)->call({{"op", "status"}});
    served = rep.ok() && rep->contains("pid");
    if (!served) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(served);
  for (int fd : fds) ::close(fd);
}

TEST(EventBus, SequenceNumbersAndBoundedQueues) {
  EventBus bus;
  auto a = bus.subscribe();
  for (int i = 0; i < 10; i++) bus.publish({{"i", i}});
  for (int i = 0; i < 10; i++) {
    auto ev = a->next(0ms);
    ASSERT_TRUE(ev);
    EXPECT_EQ((*ev)["i"], i);
    EXPECT_EQ((*ev)["seq"], i + 1);
    EXPECT_FALSE(ev->contains("dropped"));
  }
  EXPECT_FALSE(a->next(0ms));

  // A subscriber that does not read keeps only the newest kQueueLimit and learns the loss.
  const size_t n = EventBus::kQueueLimit + 44;
  for (size_t i = 0; i < n; i++) bus.publish({{"i", i}});
  auto first = a->next(0ms);
  ASSERT_TRUE(first);
  EXPECT_EQ((*first)["i"], 44);
  EXPECT_EQ((*first)["dropped"], 44);
  size_t rest = 0;
  while (a->next(0ms)) rest++;
  EXPECT_EQ(rest, EventBus::kQueueLimit - 1);
  EXPECT_EQ(bus.published(), 10 + n);

  // Late subscribers see only what comes after; close wakes everyone.
  auto b = bus.subscribe();
  EXPECT_FALSE(b->next(0ms));
  std::thread waiter([&] { EXPECT_FALSE(b->next(10s)); });
  std::this_thread::sleep_for(20ms);
  bus.close();
  waiter.join();
  bus.unsubscribe(a);
  bus.unsubscribe(b);
}

// Requests from fuzz/daemon_fuzz_control.cc, over a started server.

class ControlTest : public ::testing::Test {
 protected:
  ControlTest()
      : server(
            dir.file("control.sock"),
            [](const ControlRequest& r) {
              return ControlReply{0, "ran " + r.argv.front() + "\n", ""};
            },
            events,
            [] {
              return nlohmann::json{{"pool", "test"}};
            }) {}
  void SetUp() override { ASSERT_TRUE(server.start().ok()); }
  std::unique_ptr<ControlClient> client() {
    auto c = ControlClient::connect(dir.file("control.sock"));
    EXPECT_TRUE(c.ok());
    (*c)->set_timeout(std::chrono::seconds(30));
    return std::move(*c);
  }
  TempDir dir;
  EventBus events;
  ControlServer server;
};

TEST_F(ControlTest, ValidRequestsAreAnswered) {
  auto c = client();
  auto s = c->call({{"op", "status"}});
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)["pool"], "test");
  auto r = c->call({{"op", "run"}, {"argv", {"list"}}, {"cwd", "/"}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)["status"], 0);
  EXPECT_EQ((*r)["stdout"], "ran list\n");
}

// Found by daemon_fuzz_control: an "op" that is not a string got its error reply from
// handle(), and then the connection loop's own look at "op" (is it "events"?) threw
// nlohmann::json::type_error on the connection thread, which terminated the daemon.
TEST_F(ControlTest, AnOpOfTheWrongTypeGetsAnErrorAndTheDaemonLivesOn) {
  for (const char* line :
       {R"({"op":1})", R"({"op":null})", R"({"op":["events"]})", R"({"op":{"events":1}})"}) {
    SCOPED_TRACE(line);
    EXPECT_EQ(server.handle(line), R"({"error":"no \"op\""})");
    auto c = client();
    auto r = c->call(nlohmann::json::parse(line));
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r->contains("error"));
    // The same connection still works.
    auto s = c->call({{"op", "status"}});
    ASSERT_TRUE(s.ok());
    EXPECT_EQ((*s)["pool"], "test");
  }
}

TEST_F(ControlTest, MalformedAndWrongTypedRequestsGetErrors) {
  for (const char* line :
       {"", "{", "[]", "\"status\"", "{\"op\":\"status\"", "\xff\xfe", R"({"op":"nope"})",
        R"({"op":"run"})", R"({"op":"run","argv":"list"})", R"({"op":"run","argv":[]})",
        R"({"op":"run","argv":[1]})", R"({"op":"run","argv":["list"],"cwd":"rel"})",
        R"({"op":"run","argv":["list"],"cwd":7})"}) {
    SCOPED_TRACE(line);
    auto reply = nlohmann::json::parse(server.handle(line), nullptr, false);
    ASSERT_TRUE(reply.is_object());
    EXPECT_TRUE(reply.contains("error"));
  }
  std::string huge = R"({"op":"run","argv":[)";
  for (size_t i = 0; i <= ControlServer::kMaxArgs; i++) huge += (i ? ",\"x\"" : "\"x\"");
  huge += "]}";
  EXPECT_TRUE(nlohmann::json::parse(server.handle(huge)).contains("error"));
  std::string deep =
      R"({"op":"run","argv":)" + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_TRUE(nlohmann::json::parse(server.handle(deep)).contains("error"));
}

}  // namespace
}  // namespace tp::daemon
