#pragma once

#include <string>

namespace holt::store {

// A PostgreSQL connection string (a `postgresql://` URI or `key=value` pairs) fit for logs and
// error messages: any password, in the user-info part or as a parameter, is replaced by "***".
std::string redact_url(const std::string& url);

}  // namespace holt::store

namespace holt::store {

// The URL of database `dbname` on a server reached through the unix socket in `socket_dir`:
// "postgresql:///holt?host=/var/lib/holt/postgres/run&port=5432&user=holt".
std::string socket_url(const std::string& dbname, const std::string& socket_dir, int port,
                       const std::string& user);

}  // namespace holt::store
