#include "command_line.hpp"

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <ostream>

namespace holt::cli {

namespace json = boost::json;
using http_client::Request;
using http_client::Verb;

namespace {

// KEY=VALUE arguments as a JSON object of strings.
json::object pairs(const std::vector<std::string>& items, const std::string& option) {
    json::object out;
    for (const auto& item : items) {
        auto eq = item.find('=');
        if (eq == std::string::npos || eq == 0) {
            throw UsageError(option + " takes KEY=VALUE, not \"" + item + "\"");
        }
        out[item.substr(0, eq)] = item.substr(eq + 1);
    }
    return out;
}

std::string sandbox_path(const std::string& id, const std::string& rest = "") {
    return "/v1/sandboxes/" + id + rest;
}

// Every option and argument of every command, filled by CLI11.
struct Options {
    // sandbox create
    std::string template_name, snapshot_id, on_expire;
    std::optional<long long> ttl_seconds;
    std::vector<std::string> env, metadata, allow_egress;
    std::optional<int> vcpus, memory_mib;
    bool network = false;
    bool quiet = false;
    // sandbox ls
    std::string state;
    std::optional<int> limit;
    // commands on one or more sandboxes / snapshots / keys
    std::string id;
    std::vector<std::string> ids;
    // exec
    std::vector<std::string> command;
    std::string shell, cwd, user;
    std::optional<double> timeout;
    bool read_stdin = false, background = false;
    // cp
    std::string source, destination, mode;
    // snapshot, fork, ttl, keys
    std::string name;
    int count = 1;
    std::string ttl;
};

// A repeatable KEY=VALUE option: each occurrence takes one value, so `-e A=1 -- cmd` leaves cmd
// alone.
CLI::Option* add_repeatable(CLI::App* cmd, const std::string& name,
                            std::vector<std::string>& values, const std::string& help) {
    return cmd->add_option(name, values, help)
        ->expected(1)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

void add_quiet(CLI::App* cmd, Options& o, const std::string& what) {
    cmd->add_flag("-q,--quiet", o.quiet, "print only the " + what);
}

}  // namespace

std::optional<RemotePath> parse_remote_path(const std::string& arg) {
    // SANDBOX:/path. A local path with a colon can always be written ./a:b.
    auto colon = arg.find(':');
    if (colon == std::string::npos || colon == 0 || arg.find('/') < colon) {
        return std::nullopt;
    }
    std::string path = arg.substr(colon + 1);
    if (path.empty() || path.front() != '/') {
        throw UsageError("\"" + arg + "\": the path in a sandbox must be absolute (ID:/path)");
    }
    return RemotePath{arg.substr(0, colon), path};
}

std::variant<Invocation, int> parse_command_line(int argc, const char* const* argv,
                                                 std::ostream& out, std::ostream& err) {
    CLI::App app{"holt: create and drive Holt sandboxes (isolated microVMs) through the API"};
    app.name("holt");
    app.require_subcommand(1);
    app.fallthrough();
    app.footer(
        "Environment: HOLT_API_URL (default http://127.0.0.1:7070), HOLT_API_KEY.\n"
        "Run `holt COMMAND --help` for the options of a command.");
    Invocation inv;
    Options o;
    app.add_option("--api-url", inv.global.api_url, "API URL")
        ->envname("HOLT_API_URL")
        ->capture_default_str();
    app.add_option("--api-key", inv.global.api_key, "API key (holt_...)")->envname("HOLT_API_KEY");
    app.add_flag("--json", inv.global.json, "print the API's JSON answers instead of tables");

    // holt sandbox ...
    auto* sandbox = app.add_subcommand("sandbox", "create, list and drive sandboxes");
    sandbox->alias("sandboxes");
    sandbox->require_subcommand(1);

    auto* create = sandbox->add_subcommand("create", "create a sandbox (prints it once it runs)");
    create->add_option("-t,--template", o.template_name, "template (see `holt templates`)");
    create->add_option("--snapshot", o.snapshot_id, "create from this snapshot instead");
    create->add_option("--ttl", o.ttl_seconds, "seconds until it expires (default: never)")
        ->check(CLI::PositiveNumber);
    create->add_option("--on-expire", o.on_expire, "kill or hibernate when the TTL ends")
        ->check(CLI::IsMember({"kill", "hibernate"}));
    add_repeatable(create, "-e,--env", o.env, "KEY=VALUE in the environment of every command");
    add_repeatable(create, "-m,--metadata", o.metadata, "KEY=VALUE metadata, to find it by");
    create->add_option("--vcpus", o.vcpus, "virtual CPUs (1-4)");
    create->add_option("--memory", o.memory_mib, "memory in MiB (128-4096)");
    create->add_flag("--network", o.network, "give it a network device (egress denied)");
    add_repeatable(create, "--allow-egress", o.allow_egress,
                   "IPv4 CIDR it may reach (implies --network; repeatable)");
    add_quiet(create, o, "sandbox's id");

    auto* ls = sandbox->add_subcommand("ls", "list sandboxes, newest first");
    ls->alias("list");
    ls->add_option("--state", o.state, "running, hibernated or killed (default: the live ones)")
        ->check(CLI::IsMember({"running", "hibernated", "killed"}));
    add_repeatable(ls, "-m,--metadata", o.metadata, "KEY=VALUE that must match (repeatable)");
    ls->add_option("--limit", o.limit, "at most this many (default 100)")
        ->check(CLI::Range(1, 1000));
    add_quiet(ls, o, "ids");

    auto* get = sandbox->add_subcommand("get", "show one sandbox");
    get->add_option("id", o.id, "sandbox id")->required();

    auto* exec = sandbox->add_subcommand(
        "exec", "run a command, streaming its output; exits with its exit code");
    exec->add_option("id", o.id, "sandbox id")->required();
    exec->add_option("command", o.command, "the command and its arguments, after --");
    exec->add_option("-c,--shell", o.shell, "a shell command line, run by /bin/sh -c");
    add_repeatable(exec, "-e,--env", o.env, "KEY=VALUE for the command's environment");
    exec->add_option("-w,--cwd", o.cwd, "working directory in the sandbox");
    exec->add_option("-u,--user", o.user, "user to run as (default root)");
    exec->add_option("--timeout", o.timeout,
                     "kill it after this many seconds (default 60, 0: never)")
        ->check(CLI::NonNegativeNumber);
    exec->add_flag("-i,--stdin", o.read_stdin, "send this terminal's stdin to the command");
    exec->add_flag("-d,--background", o.background, "start it, print its pid and return");
    exec->footer(
        "Examples:\n  holt sandbox exec sbx-1 -- python3 -c 'print(6*7)'\n"
        "  holt sandbox exec sbx-1 -c 'ls / | wc -l'\n"
        "Exit status: the command's; 128+N when signal N killed it; 124 when its timeout did.");

    auto* cp = sandbox->add_subcommand("cp", "copy a file into or out of a sandbox (streamed)");
    cp->add_option("source", o.source, "LOCAL, ID:/path, or - for stdin")->required();
    cp->add_option("destination", o.destination, "ID:/path, LOCAL, or - for stdout")->required();
    cp->add_option("--mode", o.mode,
                   "permission bits of an uploaded file (default: the local one's)");
    cp->footer(
        "Examples:\n  holt sandbox cp data.csv sbx-1:/work/\n"
        "  holt sandbox cp sbx-1:/work/out.png .\n"
        "  tar c dir | holt sandbox cp - sbx-1:/tmp/dir.tar");

    auto* ps = sandbox->add_subcommand("ps", "list the background and streamed commands");
    ps->add_option("id", o.id, "sandbox id")->required();

    auto* snapshot = sandbox->add_subcommand("snapshot", "save a sandbox as a snapshot");
    snapshot->add_option("id", o.id, "sandbox id")->required();
    snapshot->add_option("-n,--name", o.name, "a name for the snapshot");
    add_quiet(snapshot, o, "snapshot's id");

    auto* fork = sandbox->add_subcommand("fork", "copy a running sandbox into new ones");
    fork->add_option("id", o.id, "sandbox id")->required();
    fork->add_option("-n,--count", o.count, "how many copies (1-16)")->check(CLI::Range(1, 16));
    add_quiet(fork, o, "new sandboxes' ids");

    auto* hibernate = sandbox->add_subcommand("hibernate", "save a sandbox to disk and stop it");
    hibernate->add_option("id", o.id, "sandbox id")->required();
    auto* wake = sandbox->add_subcommand("wake", "restore a hibernated sandbox");
    wake->add_option("id", o.id, "sandbox id")->required();
    auto* kill = sandbox->add_subcommand("kill", "kill sandboxes: their VMs and disks go");
    kill->alias("rm");
    kill->add_option("ids", o.ids, "sandbox ids")->required();
    auto* ttl = sandbox->add_subcommand("ttl", "set when a sandbox expires, counted from now");
    ttl->add_option("id", o.id, "sandbox id")->required();
    ttl->add_option("seconds", o.ttl, "seconds from now, or `none` for no expiry")->required();

    // holt snapshot ...
    auto* snapshots = app.add_subcommand("snapshot", "list and delete snapshots");
    snapshots->alias("snapshots");
    snapshots->require_subcommand(1);
    auto* snapshot_ls = snapshots->add_subcommand("ls", "list snapshots");
    snapshot_ls->alias("list");
    add_quiet(snapshot_ls, o, "ids");
    auto* snapshot_rm = snapshots->add_subcommand("rm", "delete snapshots");
    snapshot_rm->add_option("ids", o.ids, "snapshot ids")->required();

    // holt keys ...
    auto* keys = app.add_subcommand("keys", "API keys of your tenant");
    keys->alias("key");
    keys->require_subcommand(1);
    auto* keys_create = keys->add_subcommand("create", "make a key; its secret is shown once");
    keys_create->add_option("name", o.name, "a name to recognise it by");
    add_quiet(keys_create, o, "secret");
    auto* keys_ls = keys->add_subcommand("ls", "list keys (never their secrets)");
    keys_ls->alias("list");
    auto* keys_revoke = keys->add_subcommand("revoke", "revoke keys: they stop working at once");
    keys_revoke->add_option("ids", o.ids, "key ids")->required();

    auto* templates =
        app.add_subcommand("templates", "list the templates to create sandboxes from");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int code = app.exit(e, out, err);
        return code == 0 ? 0 : kUsageExit;
    }

    Plan& plan = inv.plan;
    plan.quiet = o.quiet;
    try {
        if (create->parsed()) {
            if (o.template_name.empty() == o.snapshot_id.empty()) {
                throw UsageError("sandbox create needs --template or --snapshot (one of them)");
            }
            json::object body;
            if (!o.template_name.empty()) {
                body["template"] = o.template_name;
            } else {
                body["snapshot_id"] = o.snapshot_id;
            }
            if (o.ttl_seconds) {
                body["ttl_seconds"] = *o.ttl_seconds;
            }
            if (!o.on_expire.empty()) {
                body["on_expire"] = o.on_expire;
            }
            if (!o.env.empty()) {
                body["env"] = pairs(o.env, "--env");
            }
            if (!o.metadata.empty()) {
                body["metadata"] = pairs(o.metadata, "--metadata");
            }
            if (o.vcpus) {
                body["vcpus"] = *o.vcpus;
            }
            if (o.memory_mib) {
                body["memory_mib"] = *o.memory_mib;
            }
            if (o.network || !o.allow_egress.empty()) {
                json::object network;
                if (!o.allow_egress.empty()) {
                    network["allow_egress"] = json::value_from(o.allow_egress);
                }
                body["network"] = std::move(network);
            }
            plan.requests.push_back({Verb::post, "/v1/sandboxes", {}, std::move(body)});
            plan.view = View::Sandboxes;
        } else if (ls->parsed()) {
            Request r{Verb::get, "/v1/sandboxes", {}, std::nullopt};
            if (!o.state.empty()) {
                r.query.emplace_back("state", o.state);
            }
            for (const auto& [key, value] : pairs(o.metadata, "--metadata")) {
                r.query.emplace_back("metadata[" + std::string(key) + "]",
                                     std::string(value.as_string()));
            }
            if (o.limit) {
                r.query.emplace_back("limit", std::to_string(*o.limit));
            }
            plan.requests.push_back(std::move(r));
            plan.view = View::Sandboxes;
        } else if (get->parsed()) {
            plan.requests.push_back({Verb::get, sandbox_path(o.id), {}, std::nullopt});
            plan.view = View::SandboxDetails;
        } else if (exec->parsed()) {
            if (o.command.empty() == o.shell.empty()) {
                throw UsageError("sandbox exec needs a command: `-- CMD ARGS...` or -c 'CMD'");
            }
            json::object body;
            if (!o.shell.empty()) {
                body["cmd"] = o.shell;
            } else {
                body["argv"] = json::value_from(o.command);
            }
            if (!o.env.empty()) {
                body["env"] = pairs(o.env, "--env");
            }
            if (!o.cwd.empty()) {
                body["cwd"] = o.cwd;
            }
            if (!o.user.empty()) {
                body["user"] = o.user;
            }
            if (o.timeout) {
                body["timeout_seconds"] = *o.timeout;
            }
            if (o.background) {
                body["background"] = true;
                plan.view = View::Pid;
            } else {
                body["stream"] = true;
                plan.action = Action::Exec;
            }
            plan.read_stdin = o.read_stdin;
            plan.requests.push_back({Verb::post, sandbox_path(o.id, "/exec"), {}, std::move(body)});
        } else if (cp->parsed()) {
            auto from = parse_remote_path(o.source);
            auto to = parse_remote_path(o.destination);
            if (from.has_value() == to.has_value()) {
                throw UsageError(
                    "sandbox cp copies between this machine and a sandbox: exactly one of "
                    "SOURCE and DESTINATION is ID:/path");
            }
            if (to) {
                plan.action = Action::Upload;
                plan.local = o.source;
                plan.sandbox_id = to->sandbox_id;
                plan.remote = to->path;
            } else {
                plan.action = Action::Download;
                plan.local = o.destination;
                plan.sandbox_id = from->sandbox_id;
                plan.remote = from->path;
            }
            if (!o.mode.empty()) {
                if (o.mode.find_first_not_of("01234567") != std::string::npos ||
                    o.mode.size() > 4) {
                    throw UsageError("--mode takes octal permission bits such as 0644");
                }
                plan.mode = o.mode;
            }
        } else if (ps->parsed()) {
            plan.requests.push_back(
                {Verb::get, sandbox_path(o.id, "/processes"), {}, std::nullopt});
            plan.view = View::Processes;
        } else if (snapshot->parsed()) {
            json::object body;
            if (!o.name.empty()) {
                body["name"] = o.name;
            }
            plan.requests.push_back(
                {Verb::post, sandbox_path(o.id, "/snapshots"), {}, std::move(body)});
            plan.view = View::Snapshots;
        } else if (fork->parsed()) {
            plan.requests.push_back(
                {Verb::post, sandbox_path(o.id, "/fork"), {}, json::object{{"count", o.count}}});
            plan.view = View::Sandboxes;
        } else if (hibernate->parsed() || wake->parsed()) {
            std::string verb = hibernate->parsed() ? "/hibernate" : "/wake";
            plan.requests.push_back({Verb::post, sandbox_path(o.id, verb), {}, json::object{}});
            plan.view = View::Sandboxes;
        } else if (kill->parsed()) {
            for (const auto& id : o.ids) {
                plan.requests.push_back({Verb::delete_, sandbox_path(id), {}, std::nullopt});
            }
            plan.view = View::Sandboxes;
        } else if (ttl->parsed()) {
            json::value seconds = nullptr;
            if (o.ttl != "none") {
                std::size_t used = 0;
                long long n = 0;
                try {
                    n = std::stoll(o.ttl, &used);
                } catch (const std::exception&) {
                }
                if (used != o.ttl.size() || n < 1) {
                    throw UsageError(
                        "sandbox ttl takes a positive number of seconds or `none`, not \"" + o.ttl +
                        "\"");
                }
                seconds = n;
            }
            plan.requests.push_back(
                {Verb::patch, sandbox_path(o.id), {}, json::object{{"ttl_seconds", seconds}}});
            plan.view = View::Sandboxes;
        } else if (snapshot_ls->parsed()) {
            plan.requests.push_back({Verb::get, "/v1/snapshots", {}, std::nullopt});
            plan.view = View::Snapshots;
        } else if (snapshot_rm->parsed()) {
            for (const auto& id : o.ids) {
                plan.requests.push_back({Verb::delete_, "/v1/snapshots/" + id, {}, std::nullopt});
            }
            plan.view = View::Id;
        } else if (keys_create->parsed()) {
            json::object body;
            if (!o.name.empty()) {
                body["name"] = o.name;
            }
            plan.requests.push_back({Verb::post, "/v1/keys", {}, std::move(body)});
            plan.view = View::Keys;
        } else if (keys_ls->parsed()) {
            plan.requests.push_back({Verb::get, "/v1/keys", {}, std::nullopt});
            plan.view = View::Keys;
        } else if (keys_revoke->parsed()) {
            for (const auto& id : o.ids) {
                plan.requests.push_back({Verb::delete_, "/v1/keys/" + id, {}, std::nullopt});
            }
            plan.view = View::Id;
        } else if (templates->parsed()) {
            plan.requests.push_back({Verb::get, "/v1/templates", {}, std::nullopt});
            plan.view = View::Templates;
        }
    } catch (const UsageError& e) {
        err << "holt: " << e.what() << "\nRun with --help for more information.\n";
        return kUsageExit;
    }
    return inv;
}

}  // namespace holt::cli
