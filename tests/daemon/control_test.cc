// The control socket (daemon/control.h): request lines a client may send, straight to
// handle() and over a real connection to a started server. Inputs here came from
// fuzz/daemon_fuzz_control.cc.

#include "daemon/control.h"

#include <gtest/gtest.h>

#include "daemon/events.h"
#include "support/test_util.h"

namespace tp::daemon {
namespace {

using ::tp::testing::TempDir;

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
