// Boost.JSON's implementation, compiled into the static agent instead of linking libboost_json.
#include <boost/json/src.hpp>
