// holt_http: a real Server on 127.0.0.1 with a Router, driven by a plain Beast client.

#include "holt/http/server.hpp"

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <thread>

#include "holt/http/router.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace json = boost::json;
using asio::ip::tcp;
using holt::http::Exchange;

constexpr std::size_t kJsonLimit = 1024;

class HttpServerTest : public ::testing::Test {
  protected:
    void SetUp() override {
        router_.add("GET", "/v1/things/{id}", [](Exchange& x) {
            x.respond_json(200,
                           json::object{{"id", x.param("id")}, {"q", x.query("q").value_or("")}});
        });
        router_.add("GET", "/v1/things/{id}/parts/{part}", [](Exchange& x) {
            x.respond_json(200, json::object{{"id", x.param("id")}, {"part", x.param("part")}});
        });
        router_.add("POST", "/v1/echo",
                    [](Exchange& x) { x.respond_json(201, x.read_json(kJsonLimit)); });
        router_.add("PUT", "/v1/upload", [](Exchange& x) {
            std::uint64_t total = 0, sum = 0;
            char buf[7919];  // odd-sized on purpose
            while (std::size_t n = x.read_body_some(buf, sizeof(buf))) {
                total += n;
                for (std::size_t i = 0; i < n; ++i) {
                    sum += static_cast<unsigned char>(buf[i]);
                }
            }
            x.respond_json(201, json::object{{"bytes", total}, {"sum", sum}});
        });
        router_.add("GET", "/v1/stream", [](Exchange& x) {
            x.begin_stream(200, "application/x-ndjson");
            for (int i = 0; i < 100; ++i) {
                x.write_chunk(json::serialize(json::object{{"i", i}}) + "\n");
            }
            x.end_stream();
        });
        router_.add("GET", "/v1/throws", [](Exchange&) { throw std::runtime_error("boom"); });
        router_.add("GET", "/v1/conflict",
                    [](Exchange&) { throw holt::http::conflict("it exists already"); });

        holt::http::ServerOptions options;
        options.max_connections = 4;
        options.shutdown_grace = std::chrono::seconds(2);
        server_ = std::make_unique<holt::http::Server>(
            options, [this](Exchange& x) { router_.dispatch(x); });
        thread_ = std::thread([this] { server_->run(); });
    }

    void TearDown() override {
        server_->stop();
        thread_.join();
    }

    tcp::socket connect() {
        tcp::socket socket(ioc_);
        socket.connect({asio::ip::make_address("127.0.0.1"), server_->port()});
        return socket;
    }

    bhttp::response<bhttp::string_body> request(bhttp::verb method, const std::string& target,
                                                std::string body = "") {
        auto socket = connect();
        bhttp::request<bhttp::string_body> req{method, target, 11};
        req.set(bhttp::field::host, "localhost");
        req.body() = std::move(body);
        req.prepare_payload();
        bhttp::write(socket, req);
        beast::flat_buffer buffer;
        bhttp::response_parser<bhttp::string_body> parser;
        parser.body_limit(64 * 1024 * 1024);
        bhttp::read(socket, buffer, parser);
        return parser.release();
    }

    static json::value body_json(const bhttp::response<bhttp::string_body>& res) {
        return json::parse(res.body());
    }

    static std::string error_code(const bhttp::response<bhttp::string_body>& res) {
        return std::string(body_json(res).at("error").at("code").as_string());
    }

    asio::io_context ioc_;
    holt::http::Router router_;
    std::unique_ptr<holt::http::Server> server_;
    std::thread thread_;
};

TEST_F(HttpServerTest, RoutesWithPathParametersAndQuery) {
    auto res = request(bhttp::verb::get, "/v1/things/abc%20d?q=x%2Fy");
    ASSERT_EQ(res.result_int(), 200);
    EXPECT_EQ(body_json(res).at("id").as_string(), "abc d");
    EXPECT_EQ(body_json(res).at("q").as_string(), "x/y");

    res = request(bhttp::verb::get, "/v1/things/a%2Fb/parts/7");
    ASSERT_EQ(res.result_int(), 200);
    EXPECT_EQ(body_json(res).at("id").as_string(), "a/b");
    EXPECT_EQ(body_json(res).at("part").as_string(), "7");
}

TEST_F(HttpServerTest, UnknownPathsAndMethodsAnswerJsonErrors) {
    auto res = request(bhttp::verb::get, "/v1/nope");
    EXPECT_EQ(res.result_int(), 404);
    EXPECT_EQ(error_code(res), "not_found");

    res = request(bhttp::verb::get, "/v1/things/");  // an empty parameter does not match
    EXPECT_EQ(res.result_int(), 404);

    res = request(bhttp::verb::delete_, "/v1/things/x");
    EXPECT_EQ(res.result_int(), 405);
    EXPECT_EQ(error_code(res), "method_not_allowed");
}

TEST_F(HttpServerTest, AnEncodedNulInThePathOrQueryIsABadRequest) {
    // Ids and paths would be cut short at the NUL by the database or the guest but not here.
    for (const char* target : {"/v1/things/abc%00def", "/v1/things/abc?q=x%00y"}) {
        auto res = request(bhttp::verb::get, target);
        EXPECT_EQ(res.result_int(), 400) << target;
        EXPECT_EQ(error_code(res), "bad_request") << target;
    }
}

TEST_F(HttpServerTest, HandlerErrorsMapToStatusAndCode) {
    auto res = request(bhttp::verb::get, "/v1/conflict");
    EXPECT_EQ(res.result_int(), 409);
    EXPECT_EQ(error_code(res), "conflict");
    EXPECT_EQ(body_json(res).at("error").at("message").as_string(), "it exists already");

    res = request(bhttp::verb::get, "/v1/throws");
    EXPECT_EQ(res.result_int(), 500);
    EXPECT_EQ(error_code(res), "internal");
}

TEST_F(HttpServerTest, JsonBodiesAreParsedAndLimited) {
    auto res = request(bhttp::verb::post, "/v1/echo", R"({"a": [1, 2]})");
    ASSERT_EQ(res.result_int(), 201);
    EXPECT_EQ(body_json(res).at("a").as_array().size(), 2u);

    res = request(bhttp::verb::post, "/v1/echo", "");
    EXPECT_EQ(res.result_int(), 201);
    EXPECT_TRUE(body_json(res).is_object());

    res = request(bhttp::verb::post, "/v1/echo", "{\"a\": ");
    EXPECT_EQ(res.result_int(), 400);
    EXPECT_EQ(error_code(res), "bad_request");

    res = request(bhttp::verb::post, "/v1/echo", std::string(kJsonLimit + 1, ' '));
    EXPECT_EQ(res.result_int(), 413);
    EXPECT_EQ(error_code(res), "payload_too_large");

    // Nesting deeper than the parser allows is a 400, not a crash.
    res = request(bhttp::verb::post, "/v1/echo", std::string(200, '[') + std::string(200, ']'));
    EXPECT_EQ(res.result_int(), 400);
}

TEST_F(HttpServerTest, ChunkedUploadStreamsThrough) {
    // 8 MiB in chunked encoding, so no Content-Length: the handler reads it piece by piece.
    auto socket = connect();
    std::string head =
        "PUT /v1/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        "Expect: 100-continue\r\n\r\n";
    asio::write(socket, asio::buffer(head));
    std::string piece(64 * 1024, '\0');
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i < piece.size(); ++i) {
        piece[i] = static_cast<char>(i * 31 + 7);
    }
    for (unsigned char c : piece) {
        sum += c;
    }
    beast::flat_buffer buffer;
    // The server says 100 Continue before it reads the body.
    bhttp::response_parser<bhttp::empty_body> interim;
    bhttp::read_header(socket, buffer, interim);
    EXPECT_EQ(interim.get().result_int(), 100);
    for (int i = 0; i < 128; ++i) {
        asio::write(socket, bhttp::make_chunk(asio::buffer(piece)));
    }
    asio::write(socket, bhttp::make_chunk_last());
    bhttp::response<bhttp::string_body> res;
    bhttp::read(socket, buffer, res);
    ASSERT_EQ(res.result_int(), 201) << res.body();
    auto body = json::parse(res.body());
    EXPECT_EQ(body.at("bytes").to_number<std::uint64_t>(), 128u * piece.size());
    EXPECT_EQ(body.at("sum").to_number<std::uint64_t>(), 128u * sum);
}

TEST_F(HttpServerTest, ChunkedResponseAndKeepAlive) {
    auto socket = connect();
    beast::flat_buffer buffer;
    for (int round = 0; round < 3; ++round) {
        bhttp::request<bhttp::empty_body> req{bhttp::verb::get, "/v1/stream", 11};
        req.set(bhttp::field::host, "x");
        bhttp::write(socket, req);
        bhttp::response<bhttp::string_body> res;
        bhttp::read(socket, buffer, res);
        ASSERT_EQ(res.result_int(), 200);
        EXPECT_TRUE(res.chunked());
        EXPECT_EQ(std::count(res.body().begin(), res.body().end(), '\n'), 100);
    }
}

TEST_F(HttpServerTest, GarbageGetsBadRequestAndServerSurvives) {
    {
        auto socket = connect();
        asio::write(socket, asio::buffer(std::string("NOT HTTP AT ALL\r\n\r\n")));
        beast::flat_buffer buffer;
        bhttp::response<bhttp::string_body> res;
        bhttp::read(socket, buffer, res);
        EXPECT_EQ(res.result_int(), 400);
    }
    {
        auto socket = connect();
        std::string huge =
            "GET /v1/things/x HTTP/1.1\r\nX-Big: " + std::string(64 * 1024, 'a') + "\r\n\r\n";
        beast::error_code ec;
        asio::write(socket, asio::buffer(huge), ec);
        beast::flat_buffer buffer;
        bhttp::response<bhttp::string_body> res;
        bhttp::read(socket, buffer, res, ec);
        if (!ec) {
            EXPECT_EQ(res.result_int(), 431);
        }
    }
    auto res = request(bhttp::verb::get, "/v1/things/ok");
    EXPECT_EQ(res.result_int(), 200);
}

TEST_F(HttpServerTest, ConnectionsBeyondTheLimitGet503) {
    std::vector<tcp::socket> held;
    for (int i = 0; i < 4; ++i) {
        held.push_back(connect());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    auto extra = connect();
    beast::flat_buffer buffer;
    bhttp::response<bhttp::string_body> res;
    bhttp::read(extra, buffer, res);
    EXPECT_EQ(res.result_int(), 503);
    held.clear();
    // Once they close, requests are served again.
    for (int attempt = 0; attempt < 50; ++attempt) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        try {
            if (request(bhttp::verb::get, "/v1/things/x").result_int() == 200) {
                return;
            }
        } catch (const std::exception&) {
        }
    }
    FAIL() << "the server did not serve again after connections closed";
}

}  // namespace
