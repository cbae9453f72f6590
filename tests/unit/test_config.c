/*  test_config.c -- the config suite: how a program loads llmq.conf, what
    it gets back, and how every kind of mistake in the file is reported.

    Each test writes its files into a fresh mkdtemp directory (the fixture)
    and removes them after. With LLMQ_SOURCE_DIR defined, the shipped
    example deploy/llmq.conf must load too.
*/
#include "config.h"

#include <check.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

//  Per-test scratch directory: set up and torn down in each test's process.
static char s_dir[64];

static void
s_setup (void)
{
    snprintf (s_dir, sizeof s_dir, "/tmp/llmq-test-config-XXXXXX");
    ck_assert_ptr_nonnull (mkdtemp (s_dir));
}

static void
s_teardown (void)
{
    char command[128];
    snprintf (command, sizeof command, "rm -rf '%s'", s_dir);
    ck_assert_int_eq (system (command), 0);
}

/*  Writes `text` to DIR/llmq.conf and returns that path (a static buffer). */
static const char *
s_write (const char *text)
{
    static char path[128];
    snprintf (path, sizeof path, "%s/llmq.conf", s_dir);
    FILE *file = fopen (path, "w");
    ck_assert_ptr_nonnull (file);
    ck_assert_int_eq (fputs (text, file) >= 0, 1);
    ck_assert_int_eq (fclose (file), 0);
    return path;
}


//  --------------------------------------------------------------------------
//  Loading

START_TEST (test_defaults)
{
    llmq_config_t *config = llmq_config_new ();
    ck_assert_ptr_nonnull (config);
    ck_assert_ptr_null (config->path);
    ck_assert_str_eq (config->frontend, "tcp://127.0.0.1:5555");
    ck_assert_str_eq (config->backend, "tcp://127.0.0.1:5556");
    ck_assert_str_eq (config->data_dir, "./llmq-data");
    ck_assert (config->sync);
    ck_assert_uint_eq (config->map_size, 64u << 20);
    ck_assert_uint_eq (config->max_map_size, 8ull << 30);
    ck_assert_uint_eq (config->result_ttl_ms, 24 * 3600 * 1000);
    ck_assert_uint_eq (config->heartbeat_ms, 1000);
    ck_assert_uint_eq (config->liveness, 3);
    ck_assert_uint_eq (config->max_message, 64u << 20);
    ck_assert_uint_eq (config->max_attempts, 3);
    ck_assert_uint_eq (config->retry_backoff_ms, 1000);
    ck_assert_uint_eq (config->retry_backoff_max_ms, 10000);
    ck_assert_str_eq (config->log_level, "info");
    ck_assert_uint_eq (config->prio_offset_ms[0], 0);
    ck_assert_uint_eq (config->prio_offset_ms[1], 5000);
    ck_assert_uint_eq (config->prio_offset_ms[2], 30000);
    ck_assert_uint_eq (config->prio_offset_ms[3], 120000);
    ck_assert_str_eq (config->worker_broker, config->backend);
    ck_assert_uint_eq (config->worker_slots, 64);
    ck_assert_uint_eq (config->ndeployments, 0);
    ck_assert_uint_eq (config->ngroups, 0);

    llmq_config_destroy (&config);
    ck_assert_ptr_null (config);
    llmq_config_destroy (&config);     //  safe twice
    llmq_config_destroy (NULL);
}
END_TEST

START_TEST (test_full_file)
{
    const char *path = s_write (
        "# every key, none at its default\n"
        "[broker]\n"
        "frontend = tcp://*:6555\n"
        "backend = ipc:///run/llmq/workers\n"
        "data_dir = /var/lib/llmq\n"
        "sync = off\n"
        "map_size = 128MiB\n"
        "max_map_size = 2GiB\n"
        "result_ttl = 2d\n"
        "heartbeat = 250ms\n"
        "liveness = 5\n"
        "max_message = 1MB\n"
        "max_attempts = 7\n"
        "retry_backoff = 500ms\n"
        "retry_backoff_max = 1m\n"
        "log_level = debug\n"
        "\n"
        "[priority]\n"
        "urgent = 0s\n"
        "high = 1s\n"
        "normal = 1m\n"
        "low = 1h\n"
        "\n"
        "[worker]\n"
        "broker = tcp://10.0.0.1:6556\n"
        "slots = 8\n"
        "\n"
        "[deployment mock-gpt]\n"
        "provider = openai\n"
        "model = gpt-4o-mini-2024-07-18\n"
        "base_url = http://127.0.0.1:8089/v1\n"
        "api_key_env = MOCK_API_KEY\n"
        "timeout = 90s\n"
        "connect_timeout = 2s\n"
        "\n"
        "[deployment echo]\n"
        "provider = echo\n"
        "\n"
        "[group gpt-4o-mini]\n"
        "deployments = mock-gpt ,echo\n"
        "[group echo]\n"
        "deployments = echo\n");
    char err[512];
    llmq_config_t *config = llmq_config_load (path, err, sizeof err);
    ck_assert_msg (config, "load failed: %s", err);
    ck_assert_str_eq (err, "");
    ck_assert_str_eq (config->path, path);
    ck_assert_str_eq (config->frontend, "tcp://*:6555");
    ck_assert_str_eq (config->backend, "ipc:///run/llmq/workers");
    ck_assert_str_eq (config->data_dir, "/var/lib/llmq");
    ck_assert (!config->sync);
    ck_assert_uint_eq (config->map_size, 128u << 20);
    ck_assert_uint_eq (config->max_map_size, 2ull << 30);
    ck_assert_uint_eq (config->result_ttl_ms, 2 * 86400 * 1000);
    ck_assert_uint_eq (config->heartbeat_ms, 250);
    ck_assert_uint_eq (config->liveness, 5);
    ck_assert_uint_eq (config->max_message, 1000000);
    ck_assert_uint_eq (config->max_attempts, 7);
    ck_assert_uint_eq (config->retry_backoff_ms, 500);
    ck_assert_uint_eq (config->retry_backoff_max_ms, 60000);
    ck_assert_str_eq (config->log_level, "debug");
    ck_assert_uint_eq (config->prio_offset_ms[0], 0);
    ck_assert_uint_eq (config->prio_offset_ms[1], 1000);
    ck_assert_uint_eq (config->prio_offset_ms[2], 60000);
    ck_assert_uint_eq (config->prio_offset_ms[3], 3600000);
    ck_assert_str_eq (config->worker_broker, "tcp://10.0.0.1:6556");
    ck_assert_uint_eq (config->worker_slots, 8);

    //  Deployments and groups come back in file order, and by name.
    ck_assert_uint_eq (config->ndeployments, 2);
    const llmq_deployment_t *gpt = llmq_config_deployment (config, "mock-gpt");
    ck_assert_ptr_eq (gpt, &config->deployments[0]);
    ck_assert_str_eq (gpt->provider, "openai");
    ck_assert_str_eq (gpt->model, "gpt-4o-mini-2024-07-18");
    ck_assert_str_eq (gpt->base_url, "http://127.0.0.1:8089/v1");
    ck_assert_str_eq (gpt->api_key_env, "MOCK_API_KEY");
    ck_assert_uint_eq (gpt->timeout_ms, 90000);
    ck_assert_uint_eq (gpt->connect_timeout_ms, 2000);

    const llmq_deployment_t *echo = llmq_config_deployment (config, "echo");
    ck_assert_ptr_eq (echo, &config->deployments[1]);
    ck_assert_str_eq (echo->provider, "echo");
    ck_assert_str_eq (echo->model, "echo");            //  defaults to NAME
    ck_assert_ptr_null (echo->base_url);
    ck_assert_ptr_null (echo->api_key_env);
    ck_assert_uint_eq (echo->timeout_ms, 60000);
    ck_assert_uint_eq (echo->connect_timeout_ms, 5000);
    ck_assert (echo->tls_verify);                      //  on unless said otherwise
    ck_assert_ptr_null (echo->ca_file);
    ck_assert_ptr_null (echo->ca_path);

    ck_assert_uint_eq (config->ngroups, 2);
    const llmq_group_t *group = llmq_config_group (config, "gpt-4o-mini");
    ck_assert_ptr_eq (group, &config->groups[0]);
    ck_assert_uint_eq (group->ndeployments, 2);
    ck_assert_str_eq (group->deployments[0], "mock-gpt");
    ck_assert_str_eq (group->deployments[1], "echo");
    group = llmq_config_group (config, "echo");
    ck_assert_uint_eq (group->ndeployments, 1);
    ck_assert_str_eq (group->deployments[0], "echo");

    ck_assert_ptr_null (llmq_config_deployment (config, "nope"));
    ck_assert_ptr_null (llmq_config_group (config, "mock-gpt"));
    ck_assert_ptr_null (llmq_config_group (config, NULL));
    ck_assert_ptr_null (llmq_config_deployment (NULL, "echo"));
    llmq_config_destroy (&config);
}
END_TEST

START_TEST (test_empty_file_gives_defaults)
{
    llmq_config_t *config = llmq_config_load (s_write ("# nothing\n"), NULL, 0);
    ck_assert_ptr_nonnull (config);
    ck_assert_str_eq (config->frontend, "tcp://127.0.0.1:5555");
    ck_assert_uint_eq (config->ngroups, 0);       //  the broker complains, not us
    llmq_config_destroy (&config);
}
END_TEST

START_TEST (test_worker_broker_follows_backend)
{
    llmq_config_t *config = llmq_config_load (
        s_write ("[broker]\nbackend = tcp://127.0.0.1:7000\n"), NULL, 0);
    ck_assert_ptr_nonnull (config);
    ck_assert_str_eq (config->worker_broker, "tcp://127.0.0.1:7000");
    llmq_config_destroy (&config);
}
END_TEST

//  Anthropic and Gemini have one public API each: base_url defaults to it.
//  Anthropic requires max_tokens, so a deployment always has one.
START_TEST (test_provider_defaults)
{
    llmq_config_t *config = llmq_config_load (
        s_write ("[deployment claude]\nprovider = anthropic\nmodel = claude-sonnet-4\n"
                 "[deployment gem]\nprovider = gemini\nmax_tokens = 300\n"
                 "[deployment az]\nprovider = azure\nbase_url = https://x.openai.azure.com/openai/deployments/d\n"
                 "api_version = 2024-10-21\n"), NULL, 0);
    ck_assert_ptr_nonnull (config);
    const llmq_deployment_t *c = llmq_config_deployment (config, "claude");
    ck_assert_str_eq (c->base_url, "https://api.anthropic.com/v1");
    ck_assert_uint_eq (c->max_tokens, 1024);
    const llmq_deployment_t *g = llmq_config_deployment (config, "gem");
    ck_assert_str_eq (g->base_url, "https://generativelanguage.googleapis.com/v1beta");
    ck_assert_uint_eq (g->max_tokens, 300);
    ck_assert_str_eq (g->model, "gem");
    const llmq_deployment_t *a = llmq_config_deployment (config, "az");
    ck_assert_str_eq (a->api_version, "2024-10-21");
    ck_assert_uint_eq (a->max_tokens, 0);
    llmq_config_destroy (&config);
    char err[256];
    ck_assert_ptr_null (llmq_config_load (s_write ("[deployment az]\nprovider = azure\n"), err, sizeof err));
    ck_assert_ptr_nonnull (strstr (err, "base_url is required for provider azure"));
}
END_TEST

START_TEST (test_layout_is_forgiving)
{
    //  Indentation, CRLF, comments, a BOM, spaces in headers, an unused
    //  deployment: all fine. (An indented line is a key of its own, never
    //  a continuation of the previous value.)
    const char *path = s_write (
        "\xEF\xBB\xBF; written on Windows\r\n"
        "[ broker ]   # trailing comment\r\n"
        "    frontend = tcp://127.0.0.1:5555   ; inline comment\r\n"
        "    backend  = tcp://127.0.0.1:5556\r\n"
        "[deployment  spare]\r\n"
        "\tprovider = ECHO\r\n");
    char err[512];
    llmq_config_t *config = llmq_config_load (path, err, sizeof err);
    ck_assert_msg (config, "load failed: %s", err);
    ck_assert_str_eq (config->frontend, "tcp://127.0.0.1:5555");
    ck_assert_str_eq (config->backend, "tcp://127.0.0.1:5556");
    ck_assert_str_eq (config->deployments[0].name, "spare");
    ck_assert_str_eq (config->deployments[0].provider, "echo");
    llmq_config_destroy (&config);
}
END_TEST

#ifdef LLMQ_SOURCE_DIR
START_TEST (test_shipped_example)
{
    char err[512];
    llmq_config_t *config = llmq_config_load (LLMQ_SOURCE_DIR "/deploy/llmq.conf",
                                              err, sizeof err);
    ck_assert_msg (config, "deploy/llmq.conf: %s", err);
    const llmq_deployment_t *gpt = llmq_config_deployment (config, "mock-gpt");
    ck_assert_ptr_nonnull (gpt);
    ck_assert_str_eq (gpt->provider, "openai");
    ck_assert_str_eq (gpt->base_url, "http://127.0.0.1:8089/v1");
    ck_assert_str_eq (gpt->api_key_env, "MOCK_API_KEY");
    ck_assert_str_eq (llmq_config_deployment (config, "echo")->provider, "echo");
    ck_assert_str_eq (llmq_config_group (config, "gpt-4o-mini")->deployments[0], "mock-gpt");
    ck_assert_str_eq (llmq_config_group (config, "echo")->deployments[0], "echo");
    llmq_config_destroy (&config);
}
END_TEST
#endif


//  --------------------------------------------------------------------------
//  Errors: the first problem, as FILE:LINE: [section] key: expected..., got...

START_TEST (test_missing_file)
{
    char path[128];
    snprintf (path, sizeof path, "%s/llmq.conf", s_dir);
    char err[512];
    ck_assert_ptr_null (llmq_config_load (path, err, sizeof err));
    char expected[256];
    snprintf (expected, sizeof expected, "%s: cannot open: No such file or directory", path);
    ck_assert_str_eq (err, expected);

    ck_assert_ptr_null (llmq_config_load (s_dir, err, sizeof err));   //  a directory
    ck_assert_ptr_nonnull (strstr (err, "cannot read: Is a directory"));

    ck_assert_ptr_null (llmq_config_load (NULL, err, sizeof err));
    ck_assert_ptr_null (llmq_config_load (path, NULL, 0));
}
END_TEST

typedef struct {
    const char *text;       //  the file
    int line;               //  where the error must point
    const char *says[3];    //  what the message must contain
} s_bad_t;

static const s_bad_t s_bad[] = {
    //  Sections
    { "[brokr]\n", 1, { "unknown section [brokr]", "[deployment NAME]" } },
    { "[broker\n", 1, { "without closing ']'" } },
    { "[broker] x\n", 1, { "unexpected text after ']'" } },
    { "[broker x]\n", 1, { "[broker] takes no name" } },
    { "[broker]\nsync = on\n[broker]\n", 3, { "[broker]: section appears twice (first at line 1)" } },
    { "[deployment]\n", 1, { "[deployment] needs a name" } },
    { "[group a,b]\n", 1, { "[group]: expected a name", "got 'a,b'" } },
    { "[deployment a]\nprovider = echo\n[deployment a]\n", 3,
      { "[deployment a]: defined twice (first at line 1)" } },
    { "[deployment a]\nprovider = echo\n[group g]\ndeployments = a\n[group g]\n", 5,
      { "[group g]: defined twice (first at line 3)" } },
    //  Lines and keys
    { "sync = on\n", 1, { "sync: key outside any section" } },
    { "[broker]\njust words\n", 2, { "expected 'key = value'" } },
    { "[broker]\nfrontent = tcp://127.0.0.1:1\n", 2,
      { "[broker] frontent: unknown key", "expected one of: frontend, backend," } },
    { "[broker]\nsync = on\n\nsync = off\n", 4, { "[broker] sync: set twice (first at line 2)" } },
    { "[broker]\nfrontend =\n", 2, { "[broker] frontend: no value" } },
    { "[broker]\ndata_dir = /tmp/x\n  sync = maybe\n", 3, { "[broker] sync:" } },
    //  Values
    { "[broker]\nsync = maybe\n", 2,
      { "[broker] sync: expected on or off", "got 'maybe'" } },
    { "[broker]\nsync = on # comment\n", 2, { "got 'on # comment'" } },
    { "[broker]\nfrontend = http://127.0.0.1:1\n", 2,
      { "[broker] frontend: expected a ZeroMQ endpoint", "got 'http://127.0.0.1:1'" } },
    { "[broker]\nbackend = tcp://127.0.0.1\n", 2, { "[broker] backend: expected a ZeroMQ" } },
    { "[broker]\nbackend = tcp://127.0.0.1:70000\n", 2, { "[broker] backend: expected a ZeroMQ" } },
    { "[broker]\nheartbeat = 5\n", 2,
      { "[broker] heartbeat: a unit is needed", "(ms, s, m, h or d", "got '5'" } },
    { "[broker]\nheartbeat = 1ms\n", 2, { "[broker] heartbeat: expected 10ms to 10m", "got '1ms'" } },
    { "[broker]\nresult_ttl = 1.5h\n", 2, { "[broker] result_ttl: expected a duration" } },
    { "[broker]\nresult_ttl = 0s\n", 2, { "[broker] result_ttl: expected 1s to 365d" } },
    { "[broker]\nmap_size = 64\n", 2, { "[broker] map_size: a unit is needed", "64MiB" } },
    { "[broker]\nmap_size = 64 MiB\n", 2, { "[broker] map_size: expected a size" } },
    { "[broker]\nmax_message = 100B\n", 2, { "[broker] max_message: expected 1KiB to 1GiB" } },
    { "[broker]\nmap_size = 1GiB\nmax_map_size = 512MiB\n", 3,
      { "[broker] max_map_size: expected at least map_size (1GiB), got 512MiB" } },
    { "[broker]\nmax_map_size = 2GiB\nmap_size = 4GiB\n", 3,
      { "[broker] map_size: expected at most max_map_size (2GiB), got 4GiB" } },
    { "[broker]\nretry_backoff = 1m\n", 2,
      { "[broker] retry_backoff: expected at most retry_backoff_max (10s), got 1m" } },
    { "[broker]\nliveness = 0\n", 2, { "[broker] liveness: expected 1 to 100", "got '0'" } },
    { "[broker]\nmax_attempts = -1\n", 2, { "[broker] max_attempts: expected a whole number" } },
    { "[broker]\nmax_attempts = 101\n", 2, { "[broker] max_attempts: expected 1 to 100" } },
    { "[broker]\nlog_level = verbose\n", 2,
      { "[broker] log_level: expected error, warn, info or debug", "got 'verbose'" } },
    { "[broker]\nsync = on\nhttp = 127.0.0.1\n", 3,
      { "[broker] http: expected HOST:PORT", "got '127.0.0.1'" } },
    { "[broker]\nhttp = 127.0.0.1:70000\n", 2,
      { "[broker] http: expected HOST:PORT", "0-65535", "got '127.0.0.1:70000'" } },
    { "[broker]\n\n# the HTTP side\nhttp = nohost:80\n", 4,
      { "[broker] http: expected HOST:PORT with HOST an IPv4 address, localhost or *",
        "got 'nohost:80'" } },
    { "[broker]\nhttp = :80\n", 2, { "[broker] http: expected HOST:PORT", "got ':80'" } },
    { "[broker]\nhttp = 127.0.0.1:\n", 2, { "[broker] http: expected HOST:PORT" } },
    { "[broker]\nhttp = 127.0.0.1:-1\n", 2, { "[broker] http: expected HOST:PORT" } },
    { "[broker]\nhttp = 127.0.0.1:80x\n", 2, { "[broker] http: expected HOST:PORT" } },
    { "[broker]\nhttp = 256.0.0.1:80\n", 2, { "[broker] http: expected HOST:PORT with HOST" } },
    { "[broker]\nhttp = [::1]:80\n", 2, { "[broker] http: expected HOST:PORT with HOST" } },
    { "[broker]\nhttp =\n", 2, { "[broker] http: no value" } },
    { "[broker]\nhttp = 127.0.0.1:0\nhttp_tls_cert = c.pem\n", 3,
      { "[broker] http_tls_cert: http_tls_key is needed too" } },
    { "[broker]\nhttp = 127.0.0.1:0\n\nhttp_tls_key = k.pem\n", 4,
      { "[broker] http_tls_key: http_tls_cert is needed too" } },
    { "[broker]\nhttp_tls_cert = c.pem\nhttp_tls_key = k.pem\n", 2,
      { "[broker] http_tls_cert: the HTTP side is off" } },
    { "[priority]\nhigh = 1m\n", 2,
      { "[priority] high: expected at most normal (30s), got 1m", "urgent <= high" } },
    { "[priority]\nurgent = 10s\nhigh = 5s\n", 3,
      { "[priority] high: expected at least urgent (10s), got 5s" } },
    { "[priority]\nlow = 2\n", 2, { "[priority] low: a unit is needed" } },
    { "[worker]\nslots = 0\n", 2, { "[worker] slots: expected 1 to 4096" } },
    { "[worker]\nslots = 4097\n", 2, { "[worker] slots: expected 1 to 4096" } },
    { "[worker]\nbroker = 127.0.0.1:5556\n", 2, { "[worker] broker: expected a ZeroMQ endpoint" } },
    //  Deployments and groups
    { "[deployment a]\nprovider = claude\n", 2,
      { "[deployment a] provider: expected openai, azure, anthropic, gemini or echo", "got 'claude'" } },
    { "[deployment a]\nmodel = x\n", 1, { "[deployment a]: provider is required" } },
    { "[deployment a]\nprovider = openai\n", 1,
      { "[deployment a]: base_url is required for provider openai" } },
    { "[deployment a]\nprovider = openai\nbase_url = ftp://host/v1\n", 3,
      { "[deployment a] base_url: expected a URL starting with http:// or https://" } },
    { "[deployment a]\nprovider = echo\napi_key_env = 9LIVES\n", 3,
      { "[deployment a] api_key_env: expected the NAME of an environment variable" } },
    { "[deployment a]\nprovider = echo\napi_key = sk-secret\n", 3,
      { "[deployment a] api_key: unknown key", "set api_key_env", "api_key_file" } },
    { "[deployment a]\nprovider = echo\napi_key_env = KEY_A, ,KEY_B\n", 3,
      { "[deployment a] api_key_env: expected environment variable names separated by commas" } },
    { "[deployment a]\nprovider = echo\napi_key_env = KEY_A, KEY_A\n", 3,
      { "[deployment a] api_key_env: entry 2 is listed twice" } },
    { "[deployment a]\nprovider = echo\napi_key_file = a.key,\n", 3,
      { "[deployment a] api_key_file: expected file paths separated by commas" } },
    { "[deployment a]\nprovider = echo\napi_key_file = /k/a, /k/a\n", 3,
      { "[deployment a] api_key_file: entry 2 is listed twice" } },
    { "[deployment a]\nprovider = echo\napi_key_file = /k/a\napi_key_file = /k/b\n", 4,
      { "[deployment a] api_key_file: set twice (first at line 3)" } },
    { "[deployment a]\nprovider = echo\nca_file =\n", 3,
      { "[deployment a] ca_file: no value" } },
    { "[deployment a]\nprovider = echo\nca_file = /a.pem\nca_file = /b.pem\n", 4,
      { "[deployment a] ca_file: set twice (first at line 3)" } },
    { "[deployment a]\nprovider = echo\nca_path = /etc/\x01ssl\n", 3,
      { "[deployment a] ca_path: expected a path" } },
    { "[deployment a]\nprovider = echo\ntls_verify = sometimes\n", 3,
      { "[deployment a] tls_verify: expected on or off", "got 'sometimes'" } },
    { "[broker]\nca_file = /a.pem\n", 2,
      { "[broker] ca_file: unknown key" } },
    { "[deployment a]\nprovider = echo\ntimeout = 0s\n", 3,
      { "[deployment a] timeout: expected 1ms to 1d", "got '0s'" } },
    { "[group g]\ndeployments = a\n", 2,
      { "[group g] deployments: no deployment named 'a'" } },
    { "[deployment a]\nprovider = echo\n[group g]\ndeployments = a, b\n", 4,
      { "[group g] deployments: no deployment named 'b'" } },
    { "[deployment a]\nprovider = echo\n[group g]\n", 3,
      { "[group g]: deployments is required" } },
    { "[group g]\ndeployments =\n", 2,
      { "[group g] deployments: expected one or more deployment names" } },
    { "[group g]\ndeployments = a,,b\n", 2, { "[group g] deployments:", "none empty" } },
    { "[group g]\ndeployments = a, a\n", 2, { "[group g] deployments: 'a' is listed twice" } },
    //  Resilience
    { "[deployment a]\nprovider = echo\n[group g]\ndeployments = a\nstrategy = fastest\n", 5,
      { "[group g] strategy: expected order, round_robin, weighted", "got 'fastest'" } },
    { "[deployment a]\nprovider = echo\n[group g]\ndeployments = a\nfallback = cheap\n", 5,
      { "[group g] fallback: no group named 'cheap'" } },
    { "[deployment a]\nprovider = echo\n[group g]\ndeployments = a\nfallback = g\n", 5,
      { "[group g] fallback: a group cannot fall back to itself ('g')" } },
    { "[deployment a]\nprovider = echo\nprice_input = -1\n", 3,
      { "[deployment a] price_input: expected a decimal number >= 0" } },
    { "[deployment a]\nprovider = echo\nprice_output = 1e999\n", 3,
      { "[deployment a] price_output: expected a decimal number >= 0" } },
    { "[deployment a]\nprovider = echo\nrpm = 0\n", 3, { "[deployment a] rpm: expected 1 to" } },
    { "[deployment a]\nprovider = echo\nbreaker_failure_pct = 101\n", 3,
      { "[deployment a] breaker_failure_pct: expected 1 to 100" } },
    { "[deployment a]\nprovider = echo\nrate_window = 10ms\n", 3,
      { "[deployment a] rate_window: expected 100ms to 1d" } },
    //  Tenants
    { "[user ann]\ntier = gold\n", 2,
      { "[user ann] tier: no tier named 'gold'", "[tier gold]" } },
    { "[tenants]\ndefault_tier = gold\n", 2, { "[tenants] default_tier: no tier named 'gold'" } },
    { "[user ann]\n[user ann]\n", 2, { "[user ann]: defined twice (first at line 1)" } },
    { "[org acme]\nbudget_daily = lots\n", 2,
      { "[org acme] budget_daily: expected a decimal number >= 0" } },
    { "[tier gold]\nrpm = -1\n", 2, { "[tier gold] rpm:" } },
    { "[tier]\n", 1, { "[tier] needs a name" } },
    { "[tenants]\nstream_weight = 0\n", 2, { "[tenants] stream_weight: expected 1 to 1000" } },
};

START_TEST (test_errors)
{
    const s_bad_t *bad = &s_bad[_i];
    const char *path = s_write (bad->text);
    char err[512];
    llmq_config_t *config = llmq_config_load (path, err, sizeof err);
    ck_assert_msg (!config, "case %d loaded:\n%s", _i, bad->text);

    char prefix[160];
    snprintf (prefix, sizeof prefix, "%s:%d: ", path, bad->line);
    ck_assert_msg (strncmp (err, prefix, strlen (prefix)) == 0,
                   "case %d: expected '%s...', got '%s'", _i, prefix, err);
    for (int i = 0; i < 3 && bad->says[i]; i++) {
        ck_assert_msg (strstr (err, bad->says[i]),
                       "case %d: expected '%s' in '%s'", _i, bad->says[i], err);
    }
}
END_TEST

/*  [broker] http: what the broker binds (broker/http.c) loads; absent is off. */
START_TEST (test_http_address)
{
    static const char *good[] = {
        "127.0.0.1:9090", "0.0.0.0:9100", "localhost:8080", "*:80", "127.0.0.1:0",
        "10.1.2.3:65535"
    };
    char err[512];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char text[128];
        snprintf (text, sizeof text, "[broker]\nhttp = %s\n", good[i]);
        llmq_config_t *config = llmq_config_load (s_write (text), err, sizeof err);
        ck_assert_msg (config, "'%s': %s", good[i], err);
        ck_assert_str_eq (config->http, good[i]);
        llmq_config_destroy (&config);
    }
    llmq_config_t *config = llmq_config_load (s_write ("[broker]\nsync = on\n"), err, sizeof err);
    ck_assert_msg (config, "%s", err);
    ck_assert_ptr_null (config->http);
    ck_assert_ptr_null (config->http_tls_cert);
    llmq_config_destroy (&config);
    //  HTTPS: both files, relative to the config's directory, lines kept.
    const char *path = s_write ("[broker]\nhttp = 127.0.0.1:0\nhttp_tls_cert = tls/cert.pem\n"
                                "http_tls_key = /etc/llmq/key.pem\n");
    config = llmq_config_load (path, err, sizeof err);
    ck_assert_msg (config, "%s", err);
    char want[600];
    const char *slash = strrchr (path, '/');
    snprintf (want, sizeof want, "%.*s/tls/cert.pem", (int) (slash - path), path);
    ck_assert_str_eq (config->http_tls_cert, want);
    ck_assert_str_eq (config->http_tls_key, "/etc/llmq/key.pem");
    ck_assert_int_eq (config->http_tls_cert_line, 3);
    ck_assert_int_eq (config->http_tls_key_line, 4);
    llmq_config_destroy (&config);
}
END_TEST

START_TEST (test_secret_never_echoed)
{
    //  Someone pastes the key where its variable's name goes.
    const char *path = s_write ("[deployment a]\nprovider = openai\n"
                                "api_key_env = sk-live-abcdef123456\n");
    char err[512];
    ck_assert_ptr_null (llmq_config_load (path, err, sizeof err));
    ck_assert_ptr_null (strstr (err, "sk-live"));
    ck_assert_ptr_nonnull (strstr (err, "value not shown"));
}
END_TEST

START_TEST (test_several_keys)
{
    const char *path = s_write ("[deployment a]\nprovider = openai\nbase_url = http://h/v1\n"
                                "api_key_env = KEY_ONE , KEY_TWO\n"
                                "api_key_file = keys/three.key, /run/secrets/four\n"
                                "[deployment b]\nprovider = echo\n");
    char err[512];
    llmq_config_t *config = llmq_config_load (path, err, sizeof err);
    ck_assert_msg (config, "%s", err);
    const llmq_deployment_t *a = llmq_config_deployment (config, "a");
    ck_assert_uint_eq (a->napi_key_envs, 2);
    ck_assert_str_eq (a->api_key_envs[0], "KEY_ONE");
    ck_assert_str_eq (a->api_key_envs[1], "KEY_TWO");
    ck_assert_str_eq (a->api_key_env, "KEY_ONE");       //  the first, for one-key code
    ck_assert_uint_eq (a->napi_key_files, 2);
    //  A relative path starts from the config file's directory.
    char three[160];
    snprintf (three, sizeof three, "%s/keys/three.key", s_dir);
    ck_assert_str_eq (a->api_key_files[0], three);
    ck_assert_str_eq (a->api_key_files[1], "/run/secrets/four");
    ck_assert_int_eq (a->api_key_file_line, 5);
    //  The files are not read at load: the broker never needs the secrets.
    const llmq_deployment_t *b = llmq_config_deployment (config, "b");
    ck_assert_uint_eq (b->napi_key_envs + b->napi_key_files, 0);
    ck_assert_ptr_null (b->api_key_env);
    llmq_config_destroy (&config);
}
END_TEST

START_TEST (test_tenant_sections)
{
    const char *path = s_write ("[tenants]\ndefault_tier = basic\nstream_weight = 2\n"
                                "large_job_tokens = 8000\nbudget_webhook = http://127.0.0.1:9/hook\n"
                                "[tier pro]\nrpm = 120\n"
                                "[tier gold]\nrpm = 1000\nrph = 20000\ntokens_per_day = 5000000000\nweight = 4\n"
                                "[user ann]\ntier = gold\nbudget_daily = 2.5\nbudget_monthly = 40\n"
                                "[user bob]\n"
                                "[org acme]\nbudget_monthly = 1000\nweight = 3\n");
    char err[512];
    llmq_config_t *config = llmq_config_load (path, err, sizeof err);
    ck_assert_msg (config, "%s", err);
    ck_assert_str_eq (config->default_tier, "basic");
    ck_assert_uint_eq (config->stream_weight, 2);
    ck_assert_uint_eq (config->large_job_tokens, 8000);
    ck_assert_str_eq (config->budget_webhook, "http://127.0.0.1:9/hook");
    ck_assert_uint_eq (config->ntiers, 2);
    //  A built-in name starts from the built-in values.
    const llmq_cfg_tier_t *pro = llmq_config_tier (config, "pro");
    ck_assert_uint_eq (pro->rpm, 120);
    ck_assert_uint_eq (pro->rph, 2000);
    ck_assert_uint_eq (pro->rpd, 20000);
    ck_assert_uint_eq (pro->tokens_per_day, 2000000);
    const llmq_cfg_tier_t *gold = llmq_config_tier (config, "gold");
    ck_assert_uint_eq (gold->rpd, 0);
    ck_assert_uint_eq (gold->tokens_per_day, 5000000000ull);
    ck_assert_uint_eq (gold->weight, 4);
    ck_assert_uint_eq (llmq_config_tier (config, "free")->rpm, 10);
    ck_assert_ptr_null (llmq_config_tier (config, "platinum"));
    ck_assert_uint_eq (config->nusers, 2);
    ck_assert_str_eq (config->users[0].tier, "gold");
    ck_assert (config->users[0].budget_daily == 2.5);
    ck_assert (config->users[0].budget_monthly == 40);
    ck_assert_ptr_null (config->users[1].tier);
    ck_assert_uint_eq (config->norgs, 1);
    ck_assert (config->orgs[0].budget_monthly == 1000);
    ck_assert_uint_eq (config->orgs[0].weight, 3);
    llmq_config_destroy (&config);
}
END_TEST

START_TEST (test_resilience_keys)
{
    const char *path = s_write ("[deployment a]\nprovider = echo\n"
                                "rpm = 600\ntpm = 90000\nrate_window = 10s\nrate_margin = 50ms\n"
                                "max_concurrent = 8\nweight = 3\norder = 2\n"
                                "price_input = 0.15\nprice_output = 0.6\n"
                                "breaker_failures = 7\nbreaker_failure_pct = 40\nbreaker_min_calls = 20\n"
                                "breaker_window = 30s\nbreaker_open = 5s\nbreaker_probes = 2\n"
                                "breaker_successes = 3\nadaptive_timeout = off\ntimeout_min = 2s\n"
                                "retry_budget = 50\nretry_budget_min = 0\n"
                                "[deployment b]\nprovider = echo\n"
                                "[group small]\ndeployments = b\n"
                                "[group g]\ndeployments = a, b\nstrategy = Weighted\nfallback = small\n");
    char err[512];
    llmq_config_t *config = llmq_config_load (path, err, sizeof err);
    ck_assert_msg (config, "%s", err);
    const llmq_deployment_t *a = llmq_config_deployment (config, "a");
    ck_assert_uint_eq (a->rpm, 600);
    ck_assert_uint_eq (a->tpm, 90000);
    ck_assert_uint_eq (a->rate_window_ms, 10000);
    ck_assert_uint_eq (a->rate_margin_ms, 50);
    ck_assert_uint_eq (a->max_concurrent, 8);
    ck_assert_uint_eq (a->weight, 3);
    ck_assert_uint_eq (a->order, 2);
    ck_assert (a->price_input > 0.1499 && a->price_input < 0.1501);
    ck_assert (a->price_output > 0.5999 && a->price_output < 0.6001);
    ck_assert_uint_eq (a->breaker_failures, 7);
    ck_assert_uint_eq (a->breaker_failure_pct, 40);
    ck_assert_uint_eq (a->breaker_min_calls, 20);
    ck_assert_uint_eq (a->breaker_window_ms, 30000);
    ck_assert_uint_eq (a->breaker_open_ms, 5000);
    ck_assert_uint_eq (a->breaker_probes, 2);
    ck_assert_uint_eq (a->breaker_successes, 3);
    ck_assert (!a->adaptive_timeout);
    ck_assert_uint_eq (a->timeout_min_ms, 2000);
    ck_assert_uint_eq (a->retry_budget_pct, 50);
    ck_assert_uint_eq (a->retry_budget_min, 0);
    //  Defaults
    const llmq_deployment_t *b = llmq_config_deployment (config, "b");
    ck_assert_uint_eq (b->rpm, 0);
    ck_assert_uint_eq (b->rate_window_ms, 60000);
    ck_assert_uint_eq (b->weight, 1);
    ck_assert_uint_eq (b->breaker_failures, 5);
    ck_assert_uint_eq (b->breaker_open_ms, 60000);
    ck_assert_uint_eq (b->breaker_successes, 2);
    ck_assert (b->adaptive_timeout);
    ck_assert_uint_eq (b->retry_budget_pct, 20);
    const llmq_group_t *g = llmq_config_group (config, "g");
    ck_assert_str_eq (g->strategy, "weighted");
    ck_assert_str_eq (g->fallback, "small");
    ck_assert_ptr_null (llmq_config_group (config, "small")->strategy);
    llmq_config_destroy (&config);
}
END_TEST

START_TEST (test_tls_keys)
{
    const char *path = s_write ("[deployment a]\nprovider = openai\nbase_url = https://h/v1\n"
                                "ca_file = certs/ca.pem\n"
                                "ca_path = /etc/llmq/cas\n"
                                "tls_verify = off\n"
                                "[deployment b]\nprovider = openai\nbase_url = https://h/v1\n"
                                "tls_verify = yes\n");
    char err[512];
    llmq_config_t *config = llmq_config_load (path, err, sizeof err);
    ck_assert_msg (config, "%s", err);
    const llmq_deployment_t *a = llmq_config_deployment (config, "a");
    //  A relative path starts from the config file's directory.
    char ca[160];
    snprintf (ca, sizeof ca, "%s/certs/ca.pem", s_dir);
    ck_assert_str_eq (a->ca_file, ca);
    ck_assert_int_eq (a->ca_file_line, 4);
    ck_assert_str_eq (a->ca_path, "/etc/llmq/cas");
    ck_assert_int_eq (a->ca_path_line, 5);
    ck_assert (!a->tls_verify);
    const llmq_deployment_t *b = llmq_config_deployment (config, "b");
    ck_assert (b->tls_verify);
    ck_assert_ptr_null (b->ca_file);
    ck_assert_ptr_null (b->ca_path);
    ck_assert_int_eq (b->ca_file_line, 0);
    //  Neither is opened at load (the broker never needs them), and a
    //  deployment with neither is always fine.
    ck_assert_int_eq (llmq_config_check_ca (config, b, err, sizeof err), 0);
    ck_assert_int_eq (llmq_config_check_ca (config, a, err, sizeof err), -1);
    char expected[400];
    snprintf (expected, sizeof expected, "%s:4: [deployment a] ca_file: cannot use %s: "
              "No such file or directory", path, ca);
    ck_assert_str_eq (err, expected);
    llmq_config_destroy (&config);
}
END_TEST

/*  Writes `text` to DIR/name (creating DIR/certs first). */
static void
s_write_file (const char *name, const char *text)
{
    char path[160];
    snprintf (path, sizeof path, "%s/certs", s_dir);
    ck_assert (mkdir (path, 0755) == 0 || access (path, F_OK) == 0);
    snprintf (path, sizeof path, "%s/%s", s_dir, name);
    FILE *file = fopen (path, "w");
    ck_assert_ptr_nonnull (file);
    ck_assert_int_eq (fputs (text, file) >= 0, 1);
    ck_assert_int_eq (fclose (file), 0);
}

/*  Load a deployment with `keys` and check its CA files: the result of
    llmq_config_check_ca, the message in err. */
static int
s_check_ca (const char *keys, char *err, size_t errlen)
{
    char text[512];
    snprintf (text, sizeof text, "[deployment a]\nprovider = openai\nbase_url = https://h/v1\n%s",
              keys);
    llmq_config_t *config = llmq_config_load (s_write (text), err, errlen);
    ck_assert_msg (config, "%s", err);
    int rc = llmq_config_check_ca (config, &config->deployments[0], err, errlen);
    llmq_config_destroy (&config);
    return rc;
}

START_TEST (test_check_ca)
{
    s_write_file ("certs/ca.pem", "# our CA\n-----BEGIN CERTIFICATE-----\nMIIB\n"
                  "-----END CERTIFICATE-----\n");
    s_write_file ("certs/key.pem", "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n");
    char err[512] = "";
    ck_assert_msg (s_check_ca ("ca_file = certs/ca.pem\n", err, sizeof err) == 0, "%s", err);
    ck_assert_msg (s_check_ca ("ca_path = certs\n", err, sizeof err) == 0, "%s", err);
    ck_assert_msg (s_check_ca ("ca_file = certs/ca.pem\nca_path = certs\ntls_verify = off\n",
                               err, sizeof err) == 0, "%s", err);

    char prefix[200];
    snprintf (prefix, sizeof prefix, "%s/llmq.conf:4: [deployment a] ca_file: cannot use %s/", s_dir, s_dir);
    ck_assert_int_eq (s_check_ca ("ca_file = certs/key.pem\n", err, sizeof err), -1);
    ck_assert_msg (strncmp (err, prefix, strlen (prefix)) == 0, "%s", err);
    ck_assert_msg (strstr (err, "certs/key.pem: no PEM certificate in it"), "%s", err);

    ck_assert_int_eq (s_check_ca ("ca_file = certs\n", err, sizeof err), -1);
    ck_assert_msg (strstr (err, "ca_file: cannot use ") && strstr (err, "certs: a directory"),
                   "%s", err);
    ck_assert_int_eq (s_check_ca ("ca_file = /nonexistent/ca.pem\n", err, sizeof err), -1);
    ck_assert_msg (strstr (err, ":4: [deployment a] ca_file: cannot use /nonexistent/ca.pem: "
                                "No such file or directory"), "%s", err);

    //  The line of each key is the one named.
    ck_assert_int_eq (s_check_ca ("ca_file = certs/ca.pem\n\nca_path = certs/ca.pem\n",
                                  err, sizeof err), -1);
    ck_assert_msg (strstr (err, ":6: [deployment a] ca_path: cannot use ")
                   && strstr (err, "certs/ca.pem: not a directory"), "%s", err);
    ck_assert_int_eq (s_check_ca ("ca_path = /nonexistent\n", err, sizeof err), -1);
    ck_assert_msg (strstr (err, ":4: [deployment a] ca_path: cannot use /nonexistent: "
                                "No such file or directory"), "%s", err);

    //  Unreadable (root reads anything: checked only for other users).
    if (geteuid () != 0) {
        char path[160];
        snprintf (path, sizeof path, "%s/certs/ca.pem", s_dir);
        ck_assert_int_eq (chmod (path, 0), 0);
        ck_assert_int_eq (s_check_ca ("ca_file = certs/ca.pem\n", err, sizeof err), -1);
        ck_assert_msg (strstr (err, "ca.pem: Permission denied"), "%s", err);
    }
    //  err may be NULL.
    llmq_config_t *config = llmq_config_load (s_write ("[deployment a]\nprovider = echo\n"
                                                       "ca_file = /nonexistent\n"), NULL, 0);
    ck_assert_ptr_nonnull (config);
    ck_assert_int_eq (llmq_config_check_ca (config, &config->deployments[0], NULL, 0), -1);
    llmq_config_destroy (&config);
}
END_TEST

START_TEST (test_key_list_limits)
{
    //  A key pasted into the list is refused without being echoed.
    const char *path = s_write ("[deployment a]\nprovider = openai\n"
                                "api_key_env = KEY_ONE, sk-live-abcdef123456\n");
    char err[512];
    ck_assert_ptr_null (llmq_config_load (path, err, sizeof err));
    ck_assert_ptr_null (strstr (err, "sk-live"));
    ck_assert_ptr_nonnull (strstr (err, "value not shown"));
    //  At most LLMQ_MAX_KEYS keys in a deployment, variables and files
    //  together: 40 variables and 24 files load, 25 files are one too many.
    for (int nfiles = 24; nfiles <= 25; nfiles++) {
        char text[1024] = "[deployment a]\nprovider = echo\napi_key_env = ";
        for (int i = 0; i < 40; i++) {
            char name[4] = { (char) ('A' + (i < 26 ? i : i - 26)), i < 26 ? '\0' : 'X', '\0' };
            snprintf (text + strlen (text), sizeof text - strlen (text), "%s%s", i ? "," : "", name);
        }
        strcat (text, "\napi_key_file = ");
        for (int i = 0; i < nfiles; i++) {
            snprintf (text + strlen (text), sizeof text - strlen (text), "%s/k%d", i ? "," : "", i);
        }
        strcat (text, "\n");
        path = s_write (text);
        llmq_config_t *config = llmq_config_load (path, err, sizeof err);
        if (nfiles == 24) {
            ck_assert_msg (config, "%s", err);
            ck_assert_uint_eq (config->deployments[0].napi_key_envs, 40);
            ck_assert_uint_eq (config->deployments[0].napi_key_files, 24);
            llmq_config_destroy (&config);
        }
        else {
            ck_assert_ptr_null (config);
            ck_assert_msg (strstr (err, ":4: [deployment a] api_key_file: more than 64 keys"),
                           "got '%s'", err);
        }
    }
}
END_TEST

START_TEST (test_long_line)
{
    //  inih would cut it in two; we refuse it, with its line number.
    char text[512] = "[broker]\ndata_dir = /";
    memset (text + strlen (text), 'x', 250);
    const char *path = s_write (text);
    char err[512];
    ck_assert_ptr_null (llmq_config_load (path, err, sizeof err));
    char prefix[160];
    snprintf (prefix, sizeof prefix, "%s:2: line too long", path);
    ck_assert_msg (strncmp (err, prefix, strlen (prefix)) == 0, "got '%s'", err);
}
END_TEST

START_TEST (test_short_error_buffer)
{
    char err[16];
    ck_assert_ptr_null (llmq_config_load (s_write ("[nope]\n"), err, sizeof err));
    ck_assert_uint_eq (strlen (err), sizeof err - 1);
}
END_TEST


//  --------------------------------------------------------------------------
//  Parsers (also used for command-line flags)

START_TEST (test_parse_duration)
{
    uint64_t ms = 42;
    ck_assert_int_eq (llmq_parse_duration_ms ("150ms", &ms), 0);
    ck_assert_uint_eq (ms, 150);
    ck_assert_int_eq (llmq_parse_duration_ms ("5s", &ms), 0);
    ck_assert_uint_eq (ms, 5000);
    ck_assert_int_eq (llmq_parse_duration_ms ("2m", &ms), 0);
    ck_assert_uint_eq (ms, 120000);
    ck_assert_int_eq (llmq_parse_duration_ms ("24h", &ms), 0);
    ck_assert_uint_eq (ms, 86400000);
    ck_assert_int_eq (llmq_parse_duration_ms ("1d", &ms), 0);
    ck_assert_uint_eq (ms, 86400000);
    ck_assert_int_eq (llmq_parse_duration_ms ("0s", &ms), 0);
    ck_assert_uint_eq (ms, 0);
    ck_assert_int_eq (llmq_parse_duration_ms ("007s", &ms), 0);
    ck_assert_uint_eq (ms, 7000);
    ck_assert_int_eq (llmq_parse_duration_ms ("18446744073709551615ms", &ms), 0);
    ck_assert_uint_eq (ms, UINT64_MAX);

    ms = 42;
    const char *bad[] = {
        "", "5", "s", "-5s", "+5s", "5 s", " 5s", "5s ", "1.5s", "5S", "5sec", "1h30m",
        "0x10s", "18446744073709551616ms",     //  overflows while reading digits
        "18446744073709552s",                   //  overflows when scaled
        "213503982335d"
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg (llmq_parse_duration_ms (bad[i], &ms) == -1, "accepted '%s'", bad[i]);
    }
    ck_assert_uint_eq (ms, 42);               //  untouched on error
    ck_assert_int_eq (llmq_parse_duration_ms (NULL, &ms), -1);
    ck_assert_int_eq (llmq_parse_duration_ms ("5s", NULL), -1);
}
END_TEST

START_TEST (test_parse_size)
{
    uint64_t bytes = 42;
    ck_assert_int_eq (llmq_parse_size ("0B", &bytes), 0);
    ck_assert_uint_eq (bytes, 0);
    ck_assert_int_eq (llmq_parse_size ("512B", &bytes), 0);
    ck_assert_uint_eq (bytes, 512);
    ck_assert_int_eq (llmq_parse_size ("4KiB", &bytes), 0);
    ck_assert_uint_eq (bytes, 4096);
    ck_assert_int_eq (llmq_parse_size ("64MiB", &bytes), 0);
    ck_assert_uint_eq (bytes, 64u << 20);
    ck_assert_int_eq (llmq_parse_size ("64mib", &bytes), 0);
    ck_assert_uint_eq (bytes, 64u << 20);
    ck_assert_int_eq (llmq_parse_size ("8GiB", &bytes), 0);
    ck_assert_uint_eq (bytes, 8ull << 30);
    ck_assert_int_eq (llmq_parse_size ("2TiB", &bytes), 0);
    ck_assert_uint_eq (bytes, 2ull << 40);
    ck_assert_int_eq (llmq_parse_size ("4KB", &bytes), 0);
    ck_assert_uint_eq (bytes, 4000);
    ck_assert_int_eq (llmq_parse_size ("3MB", &bytes), 0);
    ck_assert_uint_eq (bytes, 3000000);
    ck_assert_int_eq (llmq_parse_size ("1GB", &bytes), 0);
    ck_assert_uint_eq (bytes, 1000000000);
    ck_assert_int_eq (llmq_parse_size ("17179869183GiB", &bytes), 0);
    ck_assert_uint_eq (bytes, 17179869183ull << 30);

    bytes = 42;
    const char *bad[] = {
        "", "64", "MiB", "-1MiB", "+1MiB", "64 MiB", "1.5GiB", "64M", "64Mb ", "64PiB",
        "17179869184GiB", "99999999999999999999B"
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg (llmq_parse_size (bad[i], &bytes) == -1, "accepted '%s'", bad[i]);
    }
    ck_assert_uint_eq (bytes, 42);
    ck_assert_int_eq (llmq_parse_size (NULL, &bytes), -1);
}
END_TEST

START_TEST (test_parse_bool)
{
    const char *yes[] = { "on", "true", "yes", "1", "ON", "True" };
    const char *no[] = { "off", "false", "no", "0", "OFF", "No" };
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        bool value = false;
        ck_assert_int_eq (llmq_parse_bool (yes[i], &value), 0);
        ck_assert (value);
        ck_assert_int_eq (llmq_parse_bool (no[i], &value), 0);
        ck_assert (!value);
    }
    const char *bad[] = { "", "y", "n", "2", "01", "enabled", "on ", " off", "truee" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bool value = true;
        ck_assert_msg (llmq_parse_bool (bad[i], &value) == -1, "accepted '%s'", bad[i]);
        ck_assert (value);
    }
    ck_assert_int_eq (llmq_parse_bool (NULL, &(bool) { false }), -1);
}
END_TEST


//  [cache]: the response cache. Defaults, every key, and its mistakes.
START_TEST (test_cache_section)
{
    llmq_config_t *config = llmq_config_new ();
    ck_assert (config->cache_enabled);
    ck_assert (!config->cache_auto_temperature_zero);
    ck_assert_uint_eq (config->cache_default_ttl_ms, 3600 * 1000);
    ck_assert_uint_eq (config->cache_max_size, 64u << 20);
    ck_assert (!config->cache_serve_stale);
    llmq_config_destroy (&config);

    const char *path = s_write ("[broker]\nsync = off\n"
                                "[cache]\nenabled = off\nauto_temperature_zero = yes\ndefault_ttl = 10m\n"
                                "max_size = 1GiB\nserve_stale = on\n"
                                "[deployment echo]\nprovider = echo\n");
    char err[512];
    config = llmq_config_load (path, err, sizeof err);
    ck_assert_msg (config, "%s", err);
    ck_assert (!config->cache_enabled);
    ck_assert (config->cache_auto_temperature_zero);
    ck_assert_uint_eq (config->cache_default_ttl_ms, 600 * 1000);
    ck_assert_uint_eq (config->cache_max_size, 1ull << 30);
    ck_assert (config->cache_serve_stale);
    llmq_config_destroy (&config);

    static const struct {
        const char *text;
        const char *error;
    } bad[] = {
        { "[cache]\ndefault_ttl = 10\n", "llmq.conf:2: [cache] default_ttl: a unit is needed" },
        { "[cache]\ndefault_ttl = 500ms\n", "llmq.conf:2: [cache] default_ttl:" },
        { "[cache]\nmax_size = 12\n", "llmq.conf:2: [cache] max_size:" },
        { "[cache]\nenabled = maybe\n", "llmq.conf:2: [cache] enabled: expected on or off" },
        { "[cache]\nttl = 1h\n", "llmq.conf:2: [cache] ttl: unknown key" },
        { "[cache]\nenabled = on\n[cache]\n", "llmq.conf:3: [cache]: section appears twice (first at line 1)" },
        { "[cache]\nenabled = on\nenabled = off\n", "llmq.conf:3: [cache] enabled: set twice (first at line 2)" },
        { "[cache x]\n", "llmq.conf:1: [cache] takes no name" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        path = s_write (bad[i].text);
        err[0] = 0;
        config = llmq_config_load (path, err, sizeof err);
        ck_assert_msg (!config, "case %zu loaded", i);
        ck_assert_msg (strstr (err, bad[i].error), "case %zu: got '%s', expected '%s'", i, err, bad[i].error);
    }
}
END_TEST


static Suite *
s_config_suite (void)
{
    Suite *suite = suite_create ("config");

    TCase *load = tcase_create ("load");
    tcase_add_checked_fixture (load, s_setup, s_teardown);
    tcase_add_test (load, test_defaults);
    tcase_add_test (load, test_full_file);
    tcase_add_test (load, test_empty_file_gives_defaults);
    tcase_add_test (load, test_worker_broker_follows_backend);
    tcase_add_test (load, test_layout_is_forgiving);
    tcase_add_test (load, test_provider_defaults);
#ifdef LLMQ_SOURCE_DIR
    tcase_add_test (load, test_shipped_example);
#endif
    suite_add_tcase (suite, load);

    TCase *errors = tcase_create ("errors");
    tcase_add_checked_fixture (errors, s_setup, s_teardown);
    tcase_add_test (errors, test_missing_file);
    tcase_add_loop_test (errors, test_errors, 0, (int) (sizeof s_bad / sizeof s_bad[0]));
    tcase_add_test (errors, test_http_address);
    tcase_add_test (errors, test_secret_never_echoed);
    tcase_add_test (errors, test_long_line);
    tcase_add_test (errors, test_several_keys);
    tcase_add_test (errors, test_key_list_limits);
    tcase_add_test (errors, test_tls_keys);
    tcase_add_test (errors, test_resilience_keys);
    tcase_add_test (errors, test_tenant_sections);
    tcase_add_test (errors, test_check_ca);
    tcase_add_test (errors, test_short_error_buffer);
    tcase_add_test (errors, test_cache_section);
    suite_add_tcase (suite, errors);

    TCase *parsers = tcase_create ("parsers");
    tcase_add_test (parsers, test_parse_duration);
    tcase_add_test (parsers, test_parse_size);
    tcase_add_test (parsers, test_parse_bool);
    suite_add_tcase (suite, parsers);
    return suite;
}

int
main (void)
{
    SRunner *runner = srunner_create (s_config_suite ());
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
