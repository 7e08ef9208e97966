#pragma once

// TLS for holt-proxy: the certificates it serves and the choice among them by SNI.
//
// Development certificates (tls.dev_certificate), made once and kept under DIR
// (DATA_DIR/proxy/tls):
//   ca.crt, ca.key            "Holt development CA" (EC P-256, 10 years): trust this file in a
//                             browser or `curl --cacert` to accept the proxy's certificates
//   dev-DOMAIN.crt, .key      *.DOMAIN and DOMAIN, signed by that CA (EC P-256, 2 years)
// Keys are written with mode 0600.
//
// At the handshake the client's server name picks the first operator certificate that covers it
// (by its subject alternative names, wildcards included), else the development certificate, else
// the first operator certificate.

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "config.hpp"

namespace boost::asio::ssl {
class context;
}

namespace holt::proxy {

struct DevCertificate {
    std::filesystem::path ca_cert;
    std::filesystem::path cert;
    std::filesystem::path key;
};

// Makes the development CA and the wildcard certificate for `domain` in `dir` unless they are
// there already. Throws holt::Error naming the file or the OpenSSL call that failed.
DevCertificate ensure_dev_certificate(const std::filesystem::path& dir, const std::string& domain);

class TlsContexts {
  public:
    TlsContexts(const TlsConfig& config, const std::string& domain,
                const std::filesystem::path& dev_dir);
    ~TlsContexts();

    // The context every handshake starts with; its SNI callback switches to the right one.
    boost::asio::ssl::context& server_context();

    struct Entry;

  private:
    std::vector<std::unique_ptr<Entry>> entries_;
    Entry* fallback_ = nullptr;
};

}  // namespace holt::proxy
