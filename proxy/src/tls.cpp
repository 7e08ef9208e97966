#include "tls.hpp"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <boost/asio/ssl/context.hpp>
#include <cstdio>

#include "holt/common/error.hpp"
#include "holt/common/log.hpp"

namespace holt::proxy {

namespace fs = std::filesystem;

namespace {

std::string openssl_error(const std::string& what) {
    unsigned long code = ERR_get_error();
    char text[256] = "unknown error";
    if (code != 0) {
        ERR_error_string_n(code, text, sizeof(text));
    }
    ERR_clear_error();
    return what + ": " + text;
}

template <typename T, void (*Free)(T*)>
struct Deleter {
    void operator()(T* p) const { Free(p); }
};
using Key = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using Cert = std::unique_ptr<X509, Deleter<X509, X509_free>>;

Key new_key() {
    Key key(EVP_EC_gen("P-256"));
    if (!key) {
        throw Error(openssl_error("generate an EC P-256 key"));
    }
    return key;
}

void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    if (!ext) {
        throw Error(openssl_error(std::string("certificate extension ") + value));
    }
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
}

Cert new_cert(EVP_PKEY* key, const std::string& common_name, X509* issuer, EVP_PKEY* issuer_key,
              long days) {
    Cert cert(X509_new());
    X509_set_version(cert.get(), 2);
    unsigned char serial[16];
    FILE* random = std::fopen("/dev/urandom", "rb");
    if (!random || std::fread(serial, 1, sizeof(serial), random) != sizeof(serial)) {
        if (random) {
            std::fclose(random);
        }
        throw Error("read /dev/urandom for a certificate serial");
    }
    std::fclose(random);
    serial[0] &= 0x7f;
    BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), days * 86400);
    X509_set_pubkey(cert.get(), key);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("Holt"), -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1,
                               0);
    X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
    X509* signer = issuer ? issuer : cert.get();
    if (!issuer) {
        add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
        add_extension(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
        add_extension(cert.get(), signer, NID_subject_key_identifier, "hash");
    }
    (void)issuer_key;
    return cert;
}

void sign(X509* cert, EVP_PKEY* key) {
    if (X509_sign(cert, key, EVP_sha256()) == 0) {
        throw Error(openssl_error("sign certificate"));
    }
}

void write_pem(const fs::path& path, const std::function<int(FILE*)>& write, mode_t mode) {
    fs::path tmp = path;
    tmp += ".tmp";
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) {
        throw_errno("create " + tmp.string());
    }
    ::fchmod(fileno(f), mode);
    bool ok = write(f) == 1;
    ok = std::fclose(f) == 0 && ok;
    if (!ok) {
        throw Error(openssl_error("write " + tmp.string()));
    }
    fs::rename(tmp, path);
}

Cert read_cert(const fs::path& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) {
        throw_errno("open " + path.string());
    }
    Cert cert(PEM_read_X509(f, nullptr, nullptr, nullptr));
    std::fclose(f);
    if (!cert) {
        throw Error(openssl_error("read certificate " + path.string()));
    }
    return cert;
}

Key read_key(const fs::path& path) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) {
        throw_errno("open " + path.string());
    }
    Key key(PEM_read_PrivateKey(f, nullptr, nullptr, nullptr));
    std::fclose(f);
    if (!key) {
        throw Error(openssl_error("read key " + path.string()));
    }
    return key;
}

}  // namespace

DevCertificate ensure_dev_certificate(const fs::path& dir, const std::string& domain) {
    return with_context("development certificate in " + dir.string(), [&] {
        fs::create_directories(dir);
        DevCertificate dev{dir / "ca.crt", dir / ("dev-" + domain + ".crt"),
                           dir / ("dev-" + domain + ".key")};
        fs::path ca_key_path = dir / "ca.key";
        if (!fs::exists(dev.ca_cert) || !fs::exists(ca_key_path)) {
            Key key = new_key();
            Cert ca = new_cert(key.get(), "Holt development CA", nullptr, nullptr, 3650);
            sign(ca.get(), key.get());
            write_pem(
                ca_key_path,
                [&](FILE* f) {
                    return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr,
                                                nullptr);
                },
                0600);
            write_pem(
                dev.ca_cert, [&](FILE* f) { return PEM_write_X509(f, ca.get()); }, 0644);
            log::get("proxy")->info(
                "made a development CA: {} (trust it to accept holt-proxy's "
                "development certificates)",
                dev.ca_cert.string());
        }
        if (!fs::exists(dev.cert) || !fs::exists(dev.key)) {
            Cert ca = read_cert(dev.ca_cert);
            Key ca_key = read_key(ca_key_path);
            Key key = new_key();
            Cert cert = new_cert(key.get(), "*." + domain, ca.get(), ca_key.get(), 730);
            std::string san = "DNS:*." + domain + ",DNS:" + domain;
            add_extension(cert.get(), ca.get(), NID_subject_alt_name, san.c_str());
            add_extension(cert.get(), ca.get(), NID_basic_constraints, "critical,CA:FALSE");
            add_extension(cert.get(), ca.get(), NID_ext_key_usage, "serverAuth");
            add_extension(cert.get(), ca.get(), NID_authority_key_identifier, "keyid:always");
            sign(cert.get(), ca_key.get());
            write_pem(
                dev.key,
                [&](FILE* f) {
                    return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr,
                                                nullptr);
                },
                0600);
            // The chain: the certificate, then its CA.
            write_pem(
                dev.cert,
                [&](FILE* f) {
                    return PEM_write_X509(f, cert.get()) == 1 && PEM_write_X509(f, ca.get()) == 1
                               ? 1
                               : 0;
                },
                0644);
            log::get("proxy")->info("made a development certificate for *.{}: {}", domain,
                                    dev.cert.string());
        }
        return dev;
    });
}

struct TlsContexts::Entry {
    Entry() : context(boost::asio::ssl::context::tls_server) {}
    boost::asio::ssl::context context;
    X509* leaf = nullptr;  // owned by the context
    std::string describe;
};

namespace {

int on_server_name(SSL* ssl, int*, void* arg) {
    auto* entries = static_cast<std::vector<std::unique_ptr<TlsContexts::Entry>>*>(arg);
    const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name) {
        return SSL_TLSEXT_ERR_OK;  // keep the fallback
    }
    for (auto& entry : *entries) {
        if (X509_check_host(entry->leaf, name, 0, 0, nullptr) == 1) {
            SSL_set_SSL_CTX(ssl, entry->context.native_handle());
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

}  // namespace

TlsContexts::TlsContexts(const TlsConfig& config, const std::string& domain,
                         const fs::path& dev_dir) {
    auto load = [&](const fs::path& cert, const fs::path& key) {
        auto entry = std::make_unique<Entry>();
        with_context("load certificate " + cert.string(), [&] {
            auto& ctx = entry->context;
            ctx.set_options(
                boost::asio::ssl::context::default_workarounds |
                boost::asio::ssl::context::no_sslv2 | boost::asio::ssl::context::no_sslv3 |
                boost::asio::ssl::context::no_tlsv1 | boost::asio::ssl::context::no_tlsv1_1);
            ctx.use_certificate_chain_file(cert.string());
            ctx.use_private_key_file(key.string(), boost::asio::ssl::context::pem);
            entry->leaf = SSL_CTX_get0_certificate(ctx.native_handle());
            if (!entry->leaf) {
                throw Error("no certificate in the file");
            }
        });
        entry->describe = cert.string();
        entries_.push_back(std::move(entry));
        return entries_.back().get();
    };
    for (const auto& files : config.certificates) {
        load(files.cert, files.key);
    }
    if (config.dev_certificate) {
        auto dev = ensure_dev_certificate(dev_dir, domain);
        fallback_ = load(dev.cert, dev.key);
    } else {
        fallback_ = entries_.front().get();
    }
    // Every context carries the callback: the handshake starts on the fallback's.
    for (auto& entry : entries_) {
        SSL_CTX_set_tlsext_servername_callback(entry->context.native_handle(), on_server_name);
        SSL_CTX_set_tlsext_servername_arg(entry->context.native_handle(), &entries_);
    }
}

TlsContexts::~TlsContexts() = default;

boost::asio::ssl::context& TlsContexts::server_context() {
    return fallback_->context;
}

}  // namespace holt::proxy
