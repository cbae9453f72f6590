/*  config.c -- the llmq configuration file. See config.h for the contract
    and docs/config.md for the reference of every key.

    How the file is read. libinih splits lines into [section] headers and
    key = value pairs and we keep it for that, but Debian's build has four
    habits that would give users silent surprises or vague errors: its
    handler gets no line number; an indented line continues the previous
    value (so an indented "backend = ..." would quietly become part of
    "frontend"'s value); a line longer than its 200-byte buffer is cut and
    the tail parsed as a line of its own; and a section with no keys never
    reaches the handler. So inih reads through our own line reader,
    s_reader, which counts lines, strips indentation, refuses over-long
    lines and parses section headers itself: an empty [deployment x] still
    exists, an unknown or repeated section is caught on its own line. The
    first error stops the reader, so the message is always about the first
    problem in the file.

    Every key is described once, in s_keys: its section, how it is parsed,
    where it is stored and the range it must fall in. Checks that involve
    several keys or sections (required keys, group members, orderings) run
    once the whole file is read, in s_check.
*/
#include "config.h"

#include <ini.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_KIB     (UINT64_C (1) << 10)
#define S_MIB     (UINT64_C (1) << 20)
#define S_GIB     (UINT64_C (1) << 30)
#define S_TIB     (UINT64_C (1) << 40)
#define S_SECOND  UINT64_C (1000)
#define S_MINUTE  (60 * S_SECOND)
#define S_HOUR    (60 * S_MINUTE)
#define S_DAY     (24 * S_HOUR)
#define S_YEAR    (365 * S_DAY)

#define S_NAME_MAX  64      /* deployment and group names */
#define S_TEXT_MAX  256     /* model names */
#define S_URL_MAX   2048
#define S_PATH_MAX  4096
#define S_SHOW_MAX  48      /* how much of a bad value an error echoes */
#define S_ERR_MAX   512

typedef enum {
    S_NONE,                 /* before the first section header */
    S_BROKER,
    S_PRIORITY,
    S_WORKER,
    S_TENANTS,
    S_CACHE,
    S_DEPLOYMENT,           /* named sections from here on */
    S_GROUP,
    S_TIER,
    S_USER,
    S_ORG
} s_section_t;

static const char *s_section_names[] = {
    "", "broker", "priority", "worker", "tenants", "cache", "deployment", "group", "tier", "user", "org"
};

typedef enum {
    S_ENDPOINT,             /* char *: tcp://, ipc:// or inproc:// */
    S_PATH,                 /* char *: a file system path */
    S_BOOL,                 /* bool */
    S_SIZE,                 /* uint64_t bytes, in [min, max] */
    S_DURATION,             /* uint64_t ms, in [min, max] */
    S_COUNT,                /* uint32_t, in [min, max] */
    S_LEVEL,                /* char *: error, warn, info or debug */
    S_LOGFMT,               /* char *: text or json */
    S_PROVIDER,             /* char *: openai or echo */
    S_TEXT,                 /* char *: printable text, e.g. a model name */
    S_URL,                  /* char *: http:// or https:// */
    S_HTTPADDR,             /* char *: HOST:PORT for the broker's HTTP side */
    S_FILE,                 /* char *: a file, joined to the config's directory
                               when relative */
    S_ENVNAMES,             /* api_key_env: NAME, NAME... of environment variables */
    S_KEYFILES,             /* api_key_file: PATH, PATH... of key files */
    S_CAFILES,              /* ca_file, ca_path: a path, joined to the config's
                               directory when relative; its line kept */
    S_NAMES,                /* llmq_group_t deployments: NAME, NAME... */
    S_PRICE,                /* double: a decimal number >= 0, e.g. 0.15 */
    S_SIZE64,               /* uint64_t: a plain number in [min, max] */
    S_STRATEGY              /* char *: a balancing strategy */
} s_type_t;

typedef struct {
    s_section_t section;
    const char *key;
    s_type_t type;
    size_t offset;          /* in llmq_config_t, llmq_deployment_t or llmq_group_t */
    uint64_t min;           /* range, for sizes, durations and counts */
    uint64_t max;
} s_key_t;

/*  The ranges are there to catch typos ("8TiB" for "8GiB", "1ms" for a
    heartbeat) and to keep "now + duration" far from overflowing; they are
    documented in docs/config.md. Every default lies inside its range. */
static const s_key_t s_keys[] = {
    { S_BROKER, "frontend", S_ENDPOINT, offsetof (llmq_config_t, frontend), 0, 0 },
    { S_BROKER, "backend", S_ENDPOINT, offsetof (llmq_config_t, backend), 0, 0 },
    { S_BROKER, "data_dir", S_PATH, offsetof (llmq_config_t, data_dir), 0, 0 },
    { S_BROKER, "sync", S_BOOL, offsetof (llmq_config_t, sync), 0, 0 },
    { S_BROKER, "map_size", S_SIZE, offsetof (llmq_config_t, map_size), S_MIB, S_TIB },
    { S_BROKER, "max_map_size", S_SIZE, offsetof (llmq_config_t, max_map_size), S_MIB, S_TIB },
    { S_BROKER, "result_ttl", S_DURATION, offsetof (llmq_config_t, result_ttl_ms), S_SECOND, S_YEAR },
    { S_BROKER, "heartbeat", S_DURATION, offsetof (llmq_config_t, heartbeat_ms), 10, 10 * S_MINUTE },
    { S_BROKER, "liveness", S_COUNT, offsetof (llmq_config_t, liveness), 1, 100 },
    { S_BROKER, "probe_interval", S_DURATION, offsetof (llmq_config_t, probe_interval_ms), 0, S_DAY },
    { S_BROKER, "max_message", S_SIZE, offsetof (llmq_config_t, max_message), S_KIB, S_GIB },
    { S_BROKER, "max_attempts", S_COUNT, offsetof (llmq_config_t, max_attempts), 1, 100 },
    { S_BROKER, "retry_backoff", S_DURATION, offsetof (llmq_config_t, retry_backoff_ms), 0, S_DAY },
    { S_BROKER, "retry_backoff_max", S_DURATION, offsetof (llmq_config_t, retry_backoff_max_ms), 0, S_DAY },
    { S_BROKER, "log_level", S_LEVEL, offsetof (llmq_config_t, log_level), 0, 0 },
    { S_BROKER, "log_format", S_LOGFMT, offsetof (llmq_config_t, log_format), 0, 0 },
    { S_BROKER, "http", S_HTTPADDR, offsetof (llmq_config_t, http), 0, 0 },
    { S_BROKER, "admin_token_env", S_TEXT, offsetof (llmq_config_t, admin_token_env), 0, 0 },
    { S_BROKER, "http_tls_cert", S_FILE, offsetof (llmq_config_t, http_tls_cert), 0, 0 },
    { S_BROKER, "http_tls_key", S_FILE, offsetof (llmq_config_t, http_tls_key), 0, 0 },
    { S_PRIORITY, "urgent", S_DURATION, offsetof (llmq_config_t, prio_offset_ms[0]), 0, S_YEAR },
    { S_PRIORITY, "high", S_DURATION, offsetof (llmq_config_t, prio_offset_ms[1]), 0, S_YEAR },
    { S_PRIORITY, "normal", S_DURATION, offsetof (llmq_config_t, prio_offset_ms[2]), 0, S_YEAR },
    { S_PRIORITY, "low", S_DURATION, offsetof (llmq_config_t, prio_offset_ms[3]), 0, S_YEAR },
    { S_WORKER, "broker", S_ENDPOINT, offsetof (llmq_config_t, worker_broker), 0, 0 },
    { S_WORKER, "slots", S_COUNT, offsetof (llmq_config_t, worker_slots), 1, 4096 },
    { S_DEPLOYMENT, "provider", S_PROVIDER, offsetof (llmq_deployment_t, provider), 0, 0 },
    { S_DEPLOYMENT, "model", S_TEXT, offsetof (llmq_deployment_t, model), 0, 0 },
    { S_DEPLOYMENT, "base_url", S_URL, offsetof (llmq_deployment_t, base_url), 0, 0 },
    { S_DEPLOYMENT, "api_key_env", S_ENVNAMES, offsetof (llmq_deployment_t, api_key_env), 0, 0 },
    { S_DEPLOYMENT, "api_key_file", S_KEYFILES, offsetof (llmq_deployment_t, api_key_files), 0, 0 },
    { S_DEPLOYMENT, "timeout", S_DURATION, offsetof (llmq_deployment_t, timeout_ms), 1, S_DAY },
    { S_DEPLOYMENT, "connect_timeout", S_DURATION, offsetof (llmq_deployment_t, connect_timeout_ms), 1, S_HOUR },
    { S_DEPLOYMENT, "max_tokens", S_COUNT, offsetof (llmq_deployment_t, max_tokens), 1, 10000000 },
    { S_DEPLOYMENT, "api_version", S_TEXT, offsetof (llmq_deployment_t, api_version), 0, 0 },
    { S_DEPLOYMENT, "stall_timeout", S_DURATION, offsetof (llmq_deployment_t, stall_timeout_ms), 0, S_HOUR },
    { S_DEPLOYMENT, "max_prompt_chars", S_COUNT, offsetof (llmq_deployment_t, max_prompt_chars), 1, 100000000 },
    { S_DEPLOYMENT, "strip_special_tokens", S_BOOL, offsetof (llmq_deployment_t, strip_special_tokens), 0, 0 },
    { S_DEPLOYMENT, "ca_file", S_CAFILES, offsetof (llmq_deployment_t, ca_file), 0, 0 },
    { S_DEPLOYMENT, "ca_path", S_CAFILES, offsetof (llmq_deployment_t, ca_path), 0, 0 },
    { S_DEPLOYMENT, "tls_verify", S_BOOL, offsetof (llmq_deployment_t, tls_verify), 0, 0 },
    { S_DEPLOYMENT, "rpm", S_COUNT, offsetof (llmq_deployment_t, rpm), 1, 100000000 },
    { S_DEPLOYMENT, "tpm", S_COUNT, offsetof (llmq_deployment_t, tpm), 1, 4000000000u },
    { S_DEPLOYMENT, "rate_window", S_DURATION, offsetof (llmq_deployment_t, rate_window_ms), 100, S_DAY },
    { S_DEPLOYMENT, "rate_margin", S_DURATION, offsetof (llmq_deployment_t, rate_margin_ms), 0, S_HOUR },
    { S_DEPLOYMENT, "max_concurrent", S_COUNT, offsetof (llmq_deployment_t, max_concurrent), 1, 1000000 },
    { S_DEPLOYMENT, "weight", S_COUNT, offsetof (llmq_deployment_t, weight), 1, 1000000 },
    { S_DEPLOYMENT, "order", S_COUNT, offsetof (llmq_deployment_t, order), 0, 1000000 },
    { S_DEPLOYMENT, "price_input", S_PRICE, offsetof (llmq_deployment_t, price_input), 0, 0 },
    { S_DEPLOYMENT, "price_output", S_PRICE, offsetof (llmq_deployment_t, price_output), 0, 0 },
    { S_DEPLOYMENT, "breaker_failures", S_COUNT, offsetof (llmq_deployment_t, breaker_failures), 1, 1000000 },
    { S_DEPLOYMENT, "breaker_failure_pct", S_COUNT, offsetof (llmq_deployment_t, breaker_failure_pct), 1, 100 },
    { S_DEPLOYMENT, "breaker_min_calls", S_COUNT, offsetof (llmq_deployment_t, breaker_min_calls), 1, 1000000 },
    { S_DEPLOYMENT, "breaker_window", S_DURATION, offsetof (llmq_deployment_t, breaker_window_ms), 100, S_DAY },
    { S_DEPLOYMENT, "breaker_open", S_DURATION, offsetof (llmq_deployment_t, breaker_open_ms), 10, S_DAY },
    { S_DEPLOYMENT, "breaker_probes", S_COUNT, offsetof (llmq_deployment_t, breaker_probes), 1, 1000 },
    { S_DEPLOYMENT, "breaker_successes", S_COUNT, offsetof (llmq_deployment_t, breaker_successes), 1, 1000 },
    { S_DEPLOYMENT, "adaptive_timeout", S_BOOL, offsetof (llmq_deployment_t, adaptive_timeout), 0, 0 },
    { S_DEPLOYMENT, "timeout_min", S_DURATION, offsetof (llmq_deployment_t, timeout_min_ms), 1, S_DAY },
    { S_DEPLOYMENT, "retry_budget", S_COUNT, offsetof (llmq_deployment_t, retry_budget_pct), 0, 100 },
    { S_DEPLOYMENT, "retry_budget_min", S_COUNT, offsetof (llmq_deployment_t, retry_budget_min), 0, 1000000 },
    { S_DEPLOYMENT, "price_cached_input", S_PRICE, offsetof (llmq_deployment_t, price_cached_input), 0, 0 },
    { S_TENANTS, "default_tier", S_TEXT, offsetof (llmq_config_t, default_tier), 0, 0 },
    { S_TENANTS, "stream_weight", S_COUNT, offsetof (llmq_config_t, stream_weight), 1, 1000 },
    { S_TENANTS, "large_job_tokens", S_COUNT, offsetof (llmq_config_t, large_job_tokens), 1, 100000000 },
    { S_TENANTS, "budget_webhook", S_URL, offsetof (llmq_config_t, budget_webhook), 0, 0 },
    { S_TENANTS, "fair_share", S_BOOL, offsetof (llmq_config_t, fair_share), 0, 0 },
    { S_CACHE, "enabled", S_BOOL, offsetof (llmq_config_t, cache_enabled), 0, 0 },
    { S_CACHE, "auto_temperature_zero", S_BOOL, offsetof (llmq_config_t, cache_auto_temperature_zero), 0, 0 },
    { S_CACHE, "default_ttl", S_DURATION, offsetof (llmq_config_t, cache_default_ttl_ms), S_SECOND, S_YEAR },
    { S_CACHE, "max_size", S_SIZE, offsetof (llmq_config_t, cache_max_size), S_KIB, S_TIB },
    { S_CACHE, "serve_stale", S_BOOL, offsetof (llmq_config_t, cache_serve_stale), 0, 0 },
    { S_TIER, "rpm", S_COUNT, offsetof (llmq_cfg_tier_t, rpm), 0, 100000000 },
    { S_TIER, "rph", S_COUNT, offsetof (llmq_cfg_tier_t, rph), 0, 100000000 },
    { S_TIER, "rpd", S_COUNT, offsetof (llmq_cfg_tier_t, rpd), 0, 1000000000 },
    { S_TIER, "tokens_per_day", S_SIZE64, offsetof (llmq_cfg_tier_t, tokens_per_day), 0, UINT64_C (1) << 50 },
    { S_TIER, "weight", S_COUNT, offsetof (llmq_cfg_tier_t, weight), 1, 1000000 },
    { S_USER, "tier", S_TEXT, offsetof (llmq_cfg_user_t, tier), 0, 0 },
    { S_USER, "budget_daily", S_PRICE, offsetof (llmq_cfg_user_t, budget_daily), 0, 0 },
    { S_USER, "budget_monthly", S_PRICE, offsetof (llmq_cfg_user_t, budget_monthly), 0, 0 },
    { S_ORG, "budget_daily", S_PRICE, offsetof (llmq_cfg_org_t, budget_daily), 0, 0 },
    { S_ORG, "budget_monthly", S_PRICE, offsetof (llmq_cfg_org_t, budget_monthly), 0, 0 },
    { S_ORG, "weight", S_COUNT, offsetof (llmq_cfg_org_t, weight), 1, 1000000 },
    { S_GROUP, "deployments", S_NAMES, offsetof (llmq_group_t, deployments), 0, 0 },
    { S_GROUP, "strategy", S_STRATEGY, offsetof (llmq_group_t, strategy), 0, 0 },
    { S_GROUP, "fallback", S_TEXT, offsetof (llmq_group_t, fallback), 0, 0 },
};
#define S_NKEYS (sizeof s_keys / sizeof s_keys[0])

static const char *s_levels[] = { "error", "warn", "info", "debug" };
static const char *s_providers[] = { "openai", "azure", "anthropic", "gemini", "echo" };
static const char *s_strategies[] = { "order", "round_robin", "weighted", "least_in_flight",
                                      "lowest_latency", "cheapest" };

/*  Where each section and key was seen, for duplicate checks and for
    errors found after the whole file is read. 0 means "not in the file". */
typedef struct {
    int header;             /* line of the [section] header */
    int key[S_NKEYS];       /* line each key was set on, by s_keys index */
} s_lines_t;

/*  Everything one load needs; lives on llmq_config_load's stack. */
typedef struct {
    llmq_config_t *config;  /* being filled in */
    FILE *file;
    char *buf;              /* getline's buffer */
    size_t bufsize;
    int line;               /* number of the line last read */
    s_section_t section;    /* section being read */
    size_t index;           /* deployment or group being read */
    char label[S_NAME_MAX + 16];    /* "broker", "deployment mock-gpt" */
    s_lines_t fixed[S_CACHE + 1];   /* [broker], [priority], [worker], [tenants], [cache] */
    s_lines_t *dep_lines;   /* one per config->deployments entry */
    s_lines_t *grp_lines;   /* one per config->groups entry */
    s_lines_t *named_lines[3];      /* [tier], [user], [org]: one per entry */
    bool failed;            /* first error recorded; stop reading */
    int fail_line;
    char msg[S_ERR_MAX];    /* "FILE:LINE: message" */
} s_ctx_t;


//  --------------------------------------------------------------------------
//  Value parsers, public because command-line flags use them too

/*  Decimal digits only, at least one, no sign, no overflow. Leaves *rest on
    the first character after the digits. */
static int
s_parse_number (const char *text, uint64_t *number, const char **rest)
{
    uint64_t value = 0;
    const char *p = text;
    if (*p < '0' || *p > '9') {
        return -1;
    }
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned digit = (unsigned) (*p - '0');
        if (value > (UINT64_MAX - digit) / 10) {
            return -1;
        }
        value = value * 10 + digit;
    }
    *number = value;
    *rest = p;
    return 0;
}

typedef struct {
    const char *name;
    uint64_t factor;
} s_unit_t;

static int
s_parse_with_unit (const char *text, const s_unit_t *units, size_t nunits,
                   bool ignore_case, uint64_t *result)
{
    uint64_t number;
    const char *unit;
    if (!text || !result || s_parse_number (text, &number, &unit) != 0) {
        return -1;
    }
    for (size_t i = 0; i < nunits; i++) {
        int cmp = ignore_case ? strcasecmp (unit, units[i].name)
                              : strcmp (unit, units[i].name);
        if (cmp == 0) {
            if (number > UINT64_MAX / units[i].factor) {
                return -1;
            }
            *result = number * units[i].factor;
            return 0;
        }
    }
    return -1;             //  no unit, or one we do not know
}

int
llmq_parse_duration_ms (const char *text, uint64_t *ms)
{
    //  Lower case only: "M" could be read as months, "D" means nothing.
    static const s_unit_t units[] = {
        { "ms", 1 }, { "s", S_SECOND }, { "m", S_MINUTE },
        { "h", S_HOUR }, { "d", S_DAY }
    };
    return s_parse_with_unit (text, units, sizeof units / sizeof units[0], false, ms);
}

int
llmq_parse_size (const char *text, uint64_t *bytes)
{
    //  KiB is 1024 and KB is 1000, as their standards say; no bits, so
    //  case cannot be ambiguous and "64mib" is accepted.
    static const s_unit_t units[] = {
        { "B", 1 },
        { "KiB", S_KIB }, { "MiB", S_MIB }, { "GiB", S_GIB }, { "TiB", S_TIB },
        { "KB", UINT64_C (1000) }, { "MB", UINT64_C (1000000) },
        { "GB", UINT64_C (1000000000) }, { "TB", UINT64_C (1000000000000) }
    };
    return s_parse_with_unit (text, units, sizeof units / sizeof units[0], true, bytes);
}

int
llmq_parse_bool (const char *text, bool *value)
{
    static const char *yes[] = { "on", "true", "yes", "1" };
    static const char *no[] = { "off", "false", "no", "0" };
    if (!text || !value) {
        return -1;
    }
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp (text, yes[i]) == 0) {
            *value = true;
            return 0;
        }
        if (strcasecmp (text, no[i]) == 0) {
            *value = false;
            return 0;
        }
    }
    return -1;
}


//  --------------------------------------------------------------------------
//  Small helpers

static char *
s_strdup (const char *text)
{
    return text ? strdup (text) : NULL;
}

static bool
s_is_control (unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

static bool
s_has_control (const char *text)
{
    for (const char *p = text; *p; p++) {
        if (s_is_control ((unsigned char) *p)) {
            return true;
        }
    }
    return false;
}

static bool
s_has_space_or_control (const char *text)
{
    for (const char *p = text; *p; p++) {
        if (*p == ' ' || s_is_control ((unsigned char) *p)) {
            return true;
        }
    }
    return false;
}

/*  Deployment and group names end up in logs, metrics and the protocol;
    keep them to a safe, unquoted alphabet. Commas are excluded because a
    group lists deployments separated by commas. */
static bool
s_valid_name (const char *name)
{
    size_t len = strlen (name);
    if (len == 0 || len > S_NAME_MAX) {
        return false;
    }
    for (const char *p = name; *p; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
               || (*p >= '0' && *p <= '9') || strchr ("._:/@+-", *p);
        if (!ok) {
            return false;
        }
    }
    return true;
}

static bool
s_valid_envname (const char *name)
{
    if (!(*name == '_' || (*name >= 'A' && *name <= 'Z'))) {
        return false;
    }
    size_t len = 0;
    for (const char *p = name; *p; p++, len++) {
        if (!(*p == '_' || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9'))) {
            return false;
        }
    }
    return len <= 128;
}

/*  tcp://HOST:PORT (PORT a number or * for "any"), ipc://PATH,
    inproc://NAME. We check the shape only; ZeroMQ says the rest at bind. */
static bool
s_valid_endpoint (const char *text)
{
    if (s_has_space_or_control (text) || strlen (text) > 1024) {
        return false;
    }
    if (strncmp (text, "tcp://", 6) == 0) {
        const char *host = text + 6;
        const char *colon = strrchr (host, ':');
        if (!colon || colon == host) {
            return false;
        }
        const char *port = colon + 1;
        if (strcmp (port, "*") == 0) {
            return true;
        }
        uint64_t number;
        const char *rest;
        return s_parse_number (port, &number, &rest) == 0 && *rest == '\0'
            && number >= 1 && number <= 65535;
    }
    if (strncmp (text, "ipc://", 6) == 0) {
        return text[6] != '\0';
    }
    if (strncmp (text, "inproc://", 9) == 0) {
        return text[9] != '\0';
    }
    return false;
}

/*  [broker] http: HOST:PORT, HOST an IPv4 address, localhost or * (any),
    PORT 0-65535 (0: any free one); config.h. The loader and the broker's
    HTTP side (broker/http.c) both parse with this, so whatever loads also
    binds (or fails only for a port in use). */
const char *
llmq_config_http_address (const char *text, struct in_addr *addr, uint16_t *port)
{
    const char *colon = text ? strrchr (text, ':') : NULL;
    char host[64];
    size_t hl = colon ? (size_t) (colon - text) : 0;
    char *end = NULL;
    long p = colon ? strtol (colon + 1, &end, 10) : -1;
    if (!colon || hl == 0 || hl >= sizeof host || !end || end == colon + 1 || *end || p < 0 || p > 65535) {
        return "expected HOST:PORT such as 127.0.0.1:9090 (PORT 0-65535, 0: any free one)";
    }
    memcpy (host, text, hl);
    host[hl] = '\0';
    if (strcmp (host, "localhost") == 0) {
        snprintf (host, sizeof host, "127.0.0.1");
    }
    else if (strcmp (host, "*") == 0) {
        snprintf (host, sizeof host, "0.0.0.0");
    }
    struct in_addr a;
    if (inet_pton (AF_INET, host, &a) != 1) {
        return "expected HOST:PORT with HOST an IPv4 address, localhost or *";
    }
    if (addr) {
        *addr = a;
    }
    if (port) {
        *port = (uint16_t) p;
    }
    return NULL;
}

static bool
s_valid_url (const char *text)
{
    const char *host = NULL;
    if (strncmp (text, "http://", 7) == 0) {
        host = text + 7;
    }
    else
    if (strncmp (text, "https://", 8) == 0) {
        host = text + 8;
    }
    return host && *host && *host != '/'
        && !s_has_space_or_control (text) && strlen (text) <= S_URL_MAX;
}

/*  A bad value as an error message shows it: short, printable. */
static const char *
s_show (const char *value, char *buf, size_t size)
{
    size_t i = 0;
    for (; value[i] && i < S_SHOW_MAX && i + 4 < size; i++) {
        buf[i] = s_is_control ((unsigned char) value[i]) ? '?' : value[i];
    }
    buf[i] = '\0';
    if (value[i]) {
        strcpy (buf + i, "...");
    }
    return buf;
}

/*  Largest unit that shows the value exactly: 86400000 -> "1d". */
static const char *
s_format (s_type_t type, uint64_t value, char *buf, size_t size)
{
    static const s_unit_t durations[] = {
        { "d", S_DAY }, { "h", S_HOUR }, { "m", S_MINUTE }, { "s", S_SECOND }, { "ms", 1 }
    };
    static const s_unit_t sizes[] = {
        { "TiB", S_TIB }, { "GiB", S_GIB }, { "MiB", S_MIB }, { "KiB", S_KIB }, { "B", 1 }
    };
    if (value == 0) {
        snprintf (buf, size, "0%s", type == S_DURATION ? "s" : "B");
        return buf;
    }
    const s_unit_t *units = type == S_DURATION ? durations : sizes;
    size_t nunits = type == S_DURATION ? sizeof durations / sizeof durations[0]
                                       : sizeof sizes / sizeof sizes[0];
    for (size_t i = 0; i < nunits; i++) {
        if (value % units[i].factor == 0) {
            snprintf (buf, size, "%llu%s",
                      (unsigned long long) (value / units[i].factor), units[i].name);
            break;
        }
    }
    return buf;
}

static int
s_key_index (s_section_t section, const char *key)
{
    for (size_t i = 0; i < S_NKEYS; i++) {
        if (s_keys[i].section == section && strcmp (s_keys[i].key, key) == 0) {
            return (int) i;
        }
    }
    return -1;
}


//  --------------------------------------------------------------------------
//  Errors: the first one wins and stops the read

static int
s_fail (s_ctx_t *ctx, int line, const char *format, ...)
    __attribute__ ((format (printf, 3, 4)));

static int
s_fail (s_ctx_t *ctx, int line, const char *format, ...)
{
    if (ctx->failed) {
        return -1;
    }
    ctx->failed = true;
    ctx->fail_line = line;
    int n = line > 0
          ? snprintf (ctx->msg, sizeof ctx->msg, "%s:%d: ", ctx->config->path, line)
          : snprintf (ctx->msg, sizeof ctx->msg, "%s: ", ctx->config->path);
    if (n > 0 && (size_t) n < sizeof ctx->msg) {
        va_list args;
        va_start (args, format);
        vsnprintf (ctx->msg + n, sizeof ctx->msg - (size_t) n, format, args);
        va_end (args);
    }
    return -1;
}

/*  "[broker] sync: expected on or off ..., got 'maybe'" on the current line. */
static int
s_fail_value (s_ctx_t *ctx, const s_key_t *key, const char *value,
              const char *format, ...)
    __attribute__ ((format (printf, 4, 5)));

static int
s_fail_value (s_ctx_t *ctx, const s_key_t *key, const char *value,
              const char *format, ...)
{
    char expected[256];
    va_list args;
    va_start (args, format);
    vsnprintf (expected, sizeof expected, format, args);
    va_end (args);
    char shown[S_SHOW_MAX + 4];
    return s_fail (ctx, ctx->line, "[%s] %s: %s, got '%s'", ctx->label, key->key,
                   expected, s_show (value, shown, sizeof shown));
}


//  --------------------------------------------------------------------------
//  Sections

static void
s_group_clear (llmq_group_t *group)
{
    for (size_t i = 0; i < group->ndeployments; i++) {
        free (group->deployments[i]);
    }
    free (group->deployments);
    group->deployments = NULL;
    group->ndeployments = 0;
}

static int
s_add_deployment (s_ctx_t *ctx, const char *name)
{
    llmq_config_t *config = ctx->config;
    size_t n = config->ndeployments;
    llmq_deployment_t *deployments = realloc (config->deployments, (n + 1) * sizeof *deployments);
    if (!deployments) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    config->deployments = deployments;
    s_lines_t *lines = realloc (ctx->dep_lines, (n + 1) * sizeof *lines);
    if (!lines) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    ctx->dep_lines = lines;
    memset (&deployments[n], 0, sizeof deployments[n]);
    memset (&lines[n], 0, sizeof lines[n]);
    deployments[n].name = s_strdup (name);
    if (!deployments[n].name) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    deployments[n].timeout_ms = 60 * S_SECOND;
    deployments[n].connect_timeout_ms = 5 * S_SECOND;
    deployments[n].stall_timeout_ms = 30 * S_SECOND;
    deployments[n].tls_verify = true;
    deployments[n].rate_window_ms = 60 * S_SECOND;
    deployments[n].weight = 1;
    deployments[n].breaker_failures = 5;
    deployments[n].breaker_min_calls = 5;
    deployments[n].breaker_window_ms = 60 * S_SECOND;
    deployments[n].breaker_open_ms = 60 * S_SECOND;
    deployments[n].breaker_probes = 1;
    deployments[n].breaker_successes = 2;
    deployments[n].adaptive_timeout = true;
    deployments[n].timeout_min_ms = 10 * S_SECOND;
    deployments[n].retry_budget_pct = 20;
    deployments[n].retry_budget_min = 10;
    lines[n].header = ctx->line;
    config->ndeployments = n + 1;
    ctx->index = n;
    return 0;
}

static int
s_add_group (s_ctx_t *ctx, const char *name)
{
    llmq_config_t *config = ctx->config;
    size_t n = config->ngroups;
    llmq_group_t *groups = realloc (config->groups, (n + 1) * sizeof *groups);
    if (!groups) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    config->groups = groups;
    s_lines_t *lines = realloc (ctx->grp_lines, (n + 1) * sizeof *lines);
    if (!lines) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    ctx->grp_lines = lines;
    memset (&groups[n], 0, sizeof groups[n]);
    memset (&lines[n], 0, sizeof lines[n]);
    groups[n].name = s_strdup (name);
    if (!groups[n].name) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    lines[n].header = ctx->line;
    config->ngroups = n + 1;
    ctx->index = n;
    return 0;
}

/*  The built-in tiers; a [tier NAME] of the same name starts from these. */
static const llmq_cfg_tier_t s_builtin_tiers[] = {
    { (char *) "free",        10,    100,    500,    50000, 1 },
    { (char *) "basic",       30,    500,   5000,   500000, 1 },
    { (char *) "pro",        100,   2000,  20000,  2000000, 1 },
    { (char *) "enterprise", 1000, 10000, 100000, 10000000, 1 },
};

size_t
llmq_config_builtin_tiers (const llmq_cfg_tier_t **tiers)
{
    *tiers = s_builtin_tiers;
    return sizeof s_builtin_tiers / sizeof s_builtin_tiers[0];
}

const llmq_cfg_tier_t *
llmq_config_tier (const llmq_config_t *self, const char *name)
{
    for (size_t i = 0; name && i < self->ntiers; i++) {
        if (strcmp (self->tiers[i].name, name) == 0) {
            return &self->tiers[i];
        }
    }
    for (size_t i = 0; name && i < sizeof s_builtin_tiers / sizeof s_builtin_tiers[0]; i++) {
        if (strcmp (s_builtin_tiers[i].name, name) == 0) {
            return &s_builtin_tiers[i];
        }
    }
    return NULL;
}

/*  [tier NAME], [user NAME], [org NAME]: a new entry, defined once. */
static int
s_add_named (s_ctx_t *ctx, s_section_t section, const char *text, const char *name)
{
    llmq_config_t *config = ctx->config;
    void **array;
    size_t *count, size;
    if (section == S_TIER) {
        array = (void **) &config->tiers;
        count = &config->ntiers;
        size = sizeof (llmq_cfg_tier_t);
    }
    else
    if (section == S_USER) {
        array = (void **) &config->users;
        count = &config->nusers;
        size = sizeof (llmq_cfg_user_t);
    }
    else {
        array = (void **) &config->orgs;
        count = &config->norgs;
        size = sizeof (llmq_cfg_org_t);
    }
    s_lines_t **lines_p = &ctx->named_lines[section - S_TIER];
    size_t n = *count;
    for (size_t i = 0; i < n; i++) {
        if (strcmp (*(char **) ((char *) *array + i * size), name) == 0) {
            return s_fail (ctx, ctx->line, "[%s %s]: defined twice (first at line %d)", text, name,
                           (*lines_p)[i].header);
        }
    }
    char *grown = realloc (*array, (n + 1) * size);
    if (!grown) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    *array = grown;
    s_lines_t *lines = realloc (*lines_p, (n + 1) * sizeof *lines);
    if (!lines) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    *lines_p = lines;
    void *entry = grown + n * size;
    memset (entry, 0, size);
    memset (&lines[n], 0, sizeof lines[n]);
    if (section == S_TIER) {
        const llmq_cfg_tier_t *builtin = llmq_config_tier (&(llmq_config_t) { 0 }, name);
        llmq_cfg_tier_t *t = (llmq_cfg_tier_t *) entry;
        if (builtin) {
            *t = *builtin;
        }
        t->weight = t->weight ? t->weight : 1;
    }
    if (section == S_ORG) {
        ((llmq_cfg_org_t *) entry)->weight = 1;
    }
    char *copy = s_strdup (name);
    if (!copy) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    *(char **) entry = copy;
    lines[n].header = ctx->line;
    *count = n + 1;
    ctx->index = n;
    return 0;
}

/*  `text` is what stood between the brackets, trimmed: "broker" or
    "deployment NAME". Makes it the current section. */
static int
s_section_begin (s_ctx_t *ctx, char *text)
{
    char *name = text + strcspn (text, " \t");
    if (*name) {
        *name++ = '\0';
        name += strspn (name, " \t");
    }
    s_section_t section = S_NONE;
    for (int i = S_BROKER; i <= S_ORG; i++) {
        if (strcmp (text, s_section_names[i]) == 0) {
            section = (s_section_t) i;
        }
    }
    char shown[S_SHOW_MAX + 4];
    if (section == S_NONE) {
        return s_fail (ctx, ctx->line, "unknown section [%s] (expected [broker], [priority], "
                       "[worker], [tenants], [cache], [deployment NAME], [group NAME], [tier NAME], "
                       "[user NAME] or [org NAME])",
                       s_show (text, shown, sizeof shown));
    }
    if (section >= S_DEPLOYMENT) {
        if (!*name) {
            return s_fail (ctx, ctx->line, "[%s] needs a name: [%s NAME]", text, text);
        }
        if (!s_valid_name (name)) {
            return s_fail (ctx, ctx->line, "[%s]: expected a name of letters, digits and . _ - : / @ + "
                           "(at most %d), got '%s'", text, S_NAME_MAX,
                           s_show (name, shown, sizeof shown));
        }
        if (section == S_DEPLOYMENT) {
            const llmq_deployment_t *other = llmq_config_deployment (ctx->config, name);
            if (other) {
                return s_fail (ctx, ctx->line, "[deployment %s]: defined twice (first at line %d)",
                               name, ctx->dep_lines[other - ctx->config->deployments].header);
            }
            if (s_add_deployment (ctx, name) != 0) {
                return -1;
            }
        }
        else
        if (section == S_GROUP) {
            const llmq_group_t *other = llmq_config_group (ctx->config, name);
            if (other) {
                return s_fail (ctx, ctx->line, "[group %s]: defined twice (first at line %d)",
                               name, ctx->grp_lines[other - ctx->config->groups].header);
            }
            if (s_add_group (ctx, name) != 0) {
                return -1;
            }
        }
        else
        if (s_add_named (ctx, section, text, name) != 0) {
            return -1;
        }
        snprintf (ctx->label, sizeof ctx->label, "%s %s", text, name);
    }
    else {
        if (*name) {
            return s_fail (ctx, ctx->line, "[%s] takes no name, got [%s %s]", text, text,
                           s_show (name, shown, sizeof shown));
        }
        //  One place per section, so no key hides in a second [broker].
        if (ctx->fixed[section].header) {
            return s_fail (ctx, ctx->line, "[%s]: section appears twice (first at line %d)",
                           text, ctx->fixed[section].header);
        }
        ctx->fixed[section].header = ctx->line;
        snprintf (ctx->label, sizeof ctx->label, "%s", text);
    }
    ctx->section = section;
    return 0;
}

static s_lines_t *
s_current_lines (s_ctx_t *ctx)
{
    if (ctx->section == S_DEPLOYMENT) {
        return &ctx->dep_lines[ctx->index];
    }
    if (ctx->section == S_GROUP) {
        return &ctx->grp_lines[ctx->index];
    }
    if (ctx->section >= S_TIER) {
        return &ctx->named_lines[ctx->section - S_TIER][ctx->index];
    }
    return &ctx->fixed[ctx->section];
}

static void *
s_current_base (s_ctx_t *ctx)
{
    if (ctx->section == S_DEPLOYMENT) {
        return &ctx->config->deployments[ctx->index];
    }
    if (ctx->section == S_GROUP) {
        return &ctx->config->groups[ctx->index];
    }
    if (ctx->section == S_TIER) {
        return &ctx->config->tiers[ctx->index];
    }
    if (ctx->section == S_USER) {
        return &ctx->config->users[ctx->index];
    }
    if (ctx->section == S_ORG) {
        return &ctx->config->orgs[ctx->index];
    }
    return ctx->config;
}


//  --------------------------------------------------------------------------
//  Values

static int
s_set_string (s_ctx_t *ctx, char **slot, const char *value)
{
    char *copy = s_strdup (value);
    if (!copy) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    free (*slot);
    *slot = copy;
    return 0;
}

/*  One of a fixed list of words, any case, stored in lower case. */
static int
s_set_word (s_ctx_t *ctx, const s_key_t *key, char **slot, const char *value,
            const char **words, size_t nwords, const char *expected)
{
    for (size_t i = 0; i < nwords; i++) {
        if (strcasecmp (value, words[i]) == 0) {
            return s_set_string (ctx, slot, words[i]);
        }
    }
    return s_fail_value (ctx, key, value, "expected %s", expected);
}

/*  "a, b,c" -> { "a", "b", "c" }. */
static int
s_set_names (s_ctx_t *ctx, const s_key_t *key, llmq_group_t *group, const char *value)
{
    char *copy = s_strdup (value);
    if (!copy) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    s_group_clear (group);
    int rc = 0;
    char *item = copy;
    while (rc == 0) {
        char *comma = strchr (item, ',');
        if (comma) {
            *comma = '\0';
        }
        item += strspn (item, " \t");
        size_t len = strlen (item);
        while (len > 0 && (item[len - 1] == ' ' || item[len - 1] == '\t')) {
            item[--len] = '\0';
        }
        char shown[S_SHOW_MAX + 4];
        if (!*item) {
            rc = s_fail_value (ctx, key, value, "expected deployment names separated by commas "
                               "with none empty");
        }
        else
        if (!s_valid_name (item)) {
            rc = s_fail_value (ctx, key, value, "'%s' is not a valid deployment name",
                               s_show (item, shown, sizeof shown));
        }
        else {
            for (size_t i = 0; i < group->ndeployments && rc == 0; i++) {
                if (strcmp (group->deployments[i], item) == 0) {
                    rc = s_fail_value (ctx, key, value, "'%s' is listed twice", item);
                }
            }
        }
        if (rc == 0) {
            char **names = realloc (group->deployments,
                                    (group->ndeployments + 1) * sizeof *names);
            char *name = names ? s_strdup (item) : NULL;
            if (names) {
                group->deployments = names;
            }
            if (!name) {
                rc = s_fail (ctx, ctx->line, "out of memory");
            }
            else {
                names[group->ndeployments++] = name;
            }
        }
        if (!comma) {
            break;
        }
        item = comma + 1;
    }
    free (copy);
    return rc;
}

/*  api_key_env = A, B or api_key_file = PATH, PATH: a comma-separated list
    into the deployment's api_key_envs or api_key_files. Together at most
    LLMQ_MAX_KEYS entries. A bad name is refused without echoing it: it may
    be the key itself, pasted in the wrong place. */
static void
s_strings_free (char **list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free (list[i]);
    }
    free (list);
}

/*  A file path from the file: kept if absolute, else joined to the config
    file's directory, so that the worker finds it whatever its working
    directory. Returns a new string, or NULL when out of memory. */
static char *
s_config_relative (const s_ctx_t *ctx, const char *item)
{
    if (*item == '/') {
        return s_strdup (item);
    }
    const char *path = ctx->config->path;
    const char *slash = strrchr (path, '/');
    int dirlen = slash ? (int) (slash - path) : 1;
    const char *dir = slash ? path : ".";
    if (slash == path) {
        dirlen = 0;             //  "/llmq.conf": "" + "/" + name
    }
    char *entry = NULL;
    if (asprintf (&entry, "%.*s/%s", dirlen, dir, item) < 0) {
        entry = NULL;
    }
    return entry;
}

static int
s_set_key_list (s_ctx_t *ctx, const s_key_t *key, llmq_deployment_t *dep, const char *value)
{
    bool files = key->type == S_KEYFILES;
    char ***list = files ? &dep->api_key_files : &dep->api_key_envs;
    size_t *count = files ? &dep->napi_key_files : &dep->napi_key_envs;
    size_t others = files ? dep->napi_key_envs : dep->napi_key_files;
    char *copy = s_strdup (value);
    if (!copy) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    char **items = NULL;
    size_t n = 0;
    int rc = 0;
    char *item = copy;
    while (rc == 0) {
        char *comma = strchr (item, ',');
        if (comma) {
            *comma = '\0';
        }
        item += strspn (item, " \t");
        size_t len = strlen (item);
        while (len > 0 && (item[len - 1] == ' ' || item[len - 1] == '\t')) {
            item[--len] = '\0';
        }
        char *entry = NULL;
        if (!*item) {
            rc = s_fail (ctx, ctx->line, "[%s] %s: expected %s separated by commas with none "
                         "empty", ctx->label, key->key,
                         files ? "file paths" : "environment variable names");
        }
        else
        if (n + others >= LLMQ_MAX_KEYS) {
            rc = s_fail (ctx, ctx->line, "[%s] %s: more than %d keys in the deployment",
                         ctx->label, key->key, LLMQ_MAX_KEYS);
        }
        else
        if (files && (s_has_control (item) || len >= S_PATH_MAX)) {
            rc = s_fail (ctx, ctx->line, "[%s] %s: expected file paths (value not shown)",
                         ctx->label, key->key);
        }
        else
        if (!files && !s_valid_envname (item)) {
            rc = s_fail (ctx, ctx->line, "[%s] %s: expected the NAME of an environment "
                         "variable (A-Z, 0-9, _, not starting with a digit) that holds "
                         "the key, not the key itself (value not shown)",
                         ctx->label, key->key);
        }
        else {
            entry = files ? s_config_relative (ctx, item) : s_strdup (item);
        }
        for (size_t i = 0; rc == 0 && entry && i < n; i++) {
            if (strcmp (items[i], entry) == 0) {
                rc = s_fail (ctx, ctx->line, "[%s] %s: entry %zu is listed twice (value not "
                             "shown)", ctx->label, key->key, n + 1);
            }
        }
        char **grown = rc == 0 && entry ? realloc (items, (n + 1) * sizeof *items) : NULL;
        if (rc == 0 && !grown) {
            rc = s_fail (ctx, ctx->line, "out of memory");
        }
        if (rc != 0) {
            free (entry);
            break;
        }
        items = grown;
        items[n++] = entry;
        if (!comma) {
            break;
        }
        item = comma + 1;
    }
    free (copy);
    if (rc != 0) {
        s_strings_free (items, n);
        return rc;
    }
    s_strings_free (*list, *count);
    *list = items;
    *count = n;
    if (files) {
        dep->api_key_file_line = ctx->line;
    }
    else {
        dep->api_key_env = items[0];     //  borrowed from the list
    }
    return 0;
}

/*  ca_file = PATH or ca_path = DIR. Only the syntax is checked here: the
    broker reads this file too and never opens them (see
    llmq_config_check_ca). */
/*  A path into *slot, joined to the config's directory when relative. */
static int
s_set_path (s_ctx_t *ctx, const s_key_t *key, char **slot, const char *value)
{
    if (s_has_control (value) || strlen (value) >= S_PATH_MAX) {
        return s_fail_value (ctx, key, value, "expected a path");
    }
    char *path = s_config_relative (ctx, value);
    if (!path) {
        return s_fail (ctx, ctx->line, "out of memory");
    }
    free (*slot);
    *slot = path;
    return 0;
}

static int
s_set_ca (s_ctx_t *ctx, const s_key_t *key, llmq_deployment_t *dep, const char *value)
{
    bool file = strcmp (key->key, "ca_file") == 0;
    int rc = s_set_path (ctx, key, file ? &dep->ca_file : &dep->ca_path, value);
    if (rc == 0) {
        *(file ? &dep->ca_file_line : &dep->ca_path_line) = ctx->line;
    }
    return rc;
}

static int
s_set_number (s_ctx_t *ctx, const s_key_t *key, void *slot, const char *value)
{
    uint64_t number;
    const char *rest = NULL;
    bool bare = s_parse_number (value, &number, &rest) == 0 && *rest == '\0';
    int rc;
    const char *units;          //  said when the unit is missing
    const char *example;        //  said when the value makes no sense
    if (key->type == S_DURATION) {
        rc = llmq_parse_duration_ms (value, &number);
        units = "ms, s, m, h or d, as in 150ms or 5s";
        example = "a duration such as 150ms, 5s, 2m, 24h or 1d";
    }
    else
    if (key->type == S_SIZE) {
        rc = llmq_parse_size (value, &number);
        units = "B, KiB, MiB, GiB, KB, MB or GB, as in 64MiB";
        example = "a size such as 512B, 64KiB, 64MiB or 8GiB";
    }
    else {
        rc = bare ? 0 : -1;
        units = NULL;
        example = "a whole number";
    }
    if (rc != 0) {
        if (bare && units) {
            return s_fail_value (ctx, key, value, "a unit is needed (%s)", units);
        }
        return s_fail_value (ctx, key, value, "expected %s", example);
    }
    if (number < key->min || number > key->max) {
        char low[32], high[32];
        if (key->type == S_COUNT) {
            snprintf (low, sizeof low, "%llu", (unsigned long long) key->min);
            snprintf (high, sizeof high, "%llu", (unsigned long long) key->max);
        }
        else {
            s_format (key->type, key->min, low, sizeof low);
            s_format (key->type, key->max, high, sizeof high);
        }
        return s_fail_value (ctx, key, value, "expected %s to %s", low, high);
    }
    if (key->type == S_COUNT) {
        *(uint32_t *) slot = (uint32_t) number;
    }
    else {
        *(uint64_t *) slot = number;
    }
    return 0;
}

static int
s_set (s_ctx_t *ctx, const s_key_t *key, void *base, const char *value)
{
    void *slot = (char *) base + key->offset;
    if (!*value) {
        if (key->type == S_NAMES) {
            return s_fail_value (ctx, key, value, "expected one or more deployment names "
                                 "separated by commas");
        }
        return s_fail (ctx, ctx->line, "[%s] %s: no value (remove the line to keep the "
                       "default)", ctx->label, key->key);
    }
    switch (key->type) {
        case S_ENDPOINT:
            if (!s_valid_endpoint (value)) {
                return s_fail_value (ctx, key, value, "expected a ZeroMQ endpoint "
                                     "(tcp://HOST:PORT, ipc://PATH or inproc://NAME)");
            }
            return s_set_string (ctx, slot, value);
        case S_PATH:
            if (s_has_control (value) || strlen (value) >= S_PATH_MAX) {
                return s_fail_value (ctx, key, value, "expected a path");
            }
            return s_set_string (ctx, slot, value);
        case S_BOOL:
            if (llmq_parse_bool (value, slot) != 0) {
                return s_fail_value (ctx, key, value, "expected on or off "
                                     "(or true/false, yes/no, 1/0)");
            }
            return 0;
        case S_SIZE:
        case S_DURATION:
        case S_COUNT:
        case S_SIZE64:
            return s_set_number (ctx, key, slot, value);
        case S_LEVEL:
            return s_set_word (ctx, key, slot, value, s_levels,
                               sizeof s_levels / sizeof s_levels[0],
                               "error, warn, info or debug");
        case S_LOGFMT: {
            static const char *formats[] = { "text", "json" };
            return s_set_word (ctx, key, slot, value, formats, 2, "text or json");
        }
        case S_PROVIDER:
            return s_set_word (ctx, key, slot, value, s_providers,
                               sizeof s_providers / sizeof s_providers[0],
                               "openai, azure, anthropic, gemini or echo");
        case S_TEXT:
            if (s_has_control (value) || strlen (value) > S_TEXT_MAX) {
                return s_fail_value (ctx, key, value, "expected printable text of at most %d "
                                     "characters", S_TEXT_MAX);
            }
            return s_set_string (ctx, slot, value);
        case S_FILE:
            return s_set_path (ctx, key, (char **) slot, value);
        case S_URL:
            if (!s_valid_url (value)) {
                return s_fail_value (ctx, key, value, "expected a URL starting with http:// "
                                     "or https://");
            }
            return s_set_string (ctx, slot, value);
        case S_HTTPADDR: {
            const char *expected = llmq_config_http_address (value, NULL, NULL);
            if (expected) {
                return s_fail_value (ctx, key, value, "%s", expected);
            }
            return s_set_string (ctx, slot, value);
        }
        case S_ENVNAMES:
        case S_KEYFILES:
            return s_set_key_list (ctx, key, base, value);
        case S_CAFILES:
            return s_set_ca (ctx, key, base, value);
        case S_NAMES:
            return s_set_names (ctx, key, base, value);
        case S_PRICE: {
            char *end = NULL;
            errno = 0;
            double v = strtod (value, &end);
            if (errno || end == value || *end || !(v >= 0) || v > 1e9 || strpbrk (value, "xXpPnNiI")) {
                return s_fail_value (ctx, key, value, "expected a decimal number >= 0, such as 0.15");
            }
            *(double *) slot = v;
            return 0;
        }
        case S_STRATEGY:
            return s_set_word (ctx, key, slot, value, s_strategies,
                               sizeof s_strategies / sizeof s_strategies[0],
                               "order, round_robin, weighted, least_in_flight, lowest_latency "
                               "or cheapest");
    }
    return s_fail (ctx, ctx->line, "[%s] %s: internal error: no parser", ctx->label, key->key);
}

static int
s_unknown_key (s_ctx_t *ctx, const char *name)
{
    char known[256] = "";
    size_t used = 0;
    for (size_t i = 0; i < S_NKEYS; i++) {
        if (s_keys[i].section == ctx->section && used < sizeof known) {
            int n = snprintf (known + used, sizeof known - used, "%s%s",
                              used ? ", " : "", s_keys[i].key);
            used += n > 0 ? (size_t) n : 0;
        }
    }
    const char *hint = "";
    if (ctx->section == S_DEPLOYMENT && strcasestr (name, "key")) {
        hint = "; API keys never go in this file: set api_key_env to the name of "
               "the environment variable that holds the key, or api_key_file to a "
               "file that holds it";
    }
    char shown[S_SHOW_MAX + 4];
    return s_fail (ctx, ctx->line, "[%s] %s: unknown key (expected one of: %s)%s",
                   ctx->label, s_show (name, shown, sizeof shown), known, hint);
}


//  --------------------------------------------------------------------------
//  inih callbacks

/*  fgets-shaped, for ini_parse_stream; see the note at the top. */
static char *
s_reader (char *str, int num, void *stream)
{
    s_ctx_t *ctx = stream;
    if (ctx->failed) {
        return NULL;            //  looks like end of file: inih stops
    }
    errno = 0;
    ssize_t len = getline (&ctx->buf, &ctx->bufsize, ctx->file);
    if (len < 0) {
        if (ferror (ctx->file)) {
            s_fail (ctx, 0, "cannot read: %s", strerror (errno ? errno : EIO));
        }
        return NULL;
    }
    ctx->line++;
    char *line = ctx->buf;
    if (strlen (line) != (size_t) len) {
        s_fail (ctx, ctx->line, "NUL byte in the line; is this a text file?");
        return NULL;
    }
    if (ctx->line == 1 && strncmp (line, "\xEF\xBB\xBF", 3) == 0) {
        line += 3;              //  UTF-8 byte order mark, as some editors write
    }
    line += strspn (line, " \t");
    if (*line == '[') {
        char *close = strchr (line, ']');
        if (!close) {
            s_fail (ctx, ctx->line, "section header without closing ']'");
            return NULL;
        }
        char *after = close + 1 + strspn (close + 1, " \t\r\n");
        if (*after && *after != '#' && *after != ';') {
            s_fail (ctx, ctx->line, "unexpected text after ']'");
            return NULL;
        }
        *close = '\0';
        char *text = line + 1 + strspn (line + 1, " \t");
        char *end = text + strlen (text);
        while (end > text && (end[-1] == ' ' || end[-1] == '\t')) {
            *--end = '\0';
        }
        if (s_section_begin (ctx, text) != 0) {
            return NULL;
        }
        //  inih needs a header too, to end the previous value; what it
        //  passes back as the section name we do not use.
        snprintf (str, (size_t) num, "[%s]\n", ctx->label);
        return str;
    }
    size_t size = strlen (line) + 1;
    if (num < 2 || size > (size_t) num) {
        s_fail (ctx, ctx->line, "line too long (at most %d characters after indentation)",
                num - 2);
        return NULL;
    }
    memcpy (str, line, size);
    return str;
}

static int
s_handler (void *user, const char *section, const char *name, const char *value)
{
    s_ctx_t *ctx = user;
    (void) section;             //  s_reader tracks sections
    if (ctx->failed) {
        return 0;
    }
    char shown[S_SHOW_MAX + 4];
    if (ctx->section == S_NONE) {
        s_fail (ctx, ctx->line, "%s: key outside any section (expected it under [broker], "
                "[priority], [worker], [deployment NAME] or [group NAME])",
                s_show (name, shown, sizeof shown));
        return 0;
    }
    int index = s_key_index (ctx->section, name);
    if (index < 0) {
        s_unknown_key (ctx, name);
        return 0;
    }
    s_lines_t *lines = s_current_lines (ctx);
    if (lines->key[index]) {
        s_fail (ctx, ctx->line, "[%s] %s: set twice (first at line %d)",
                ctx->label, name, lines->key[index]);
        return 0;
    }
    lines->key[index] = ctx->line;
    return s_set (ctx, &s_keys[index], s_current_base (ctx), value) == 0;
}


//  --------------------------------------------------------------------------
//  Checks once the whole file is read

static uint64_t
s_fixed_value (const s_ctx_t *ctx, int index)
{
    return *(const uint64_t *) ((const char *) ctx->config + s_keys[index].offset);
}

/*  Keys a and b of one section must satisfy a <= b. The error goes on
    whichever of the two the file set last: the line the reader most likely
    just edited. */
static int
s_check_order (s_ctx_t *ctx, s_section_t section, const char *key_a, const char *key_b,
               const char *note)
{
    int ia = s_key_index (section, key_a);
    int ib = s_key_index (section, key_b);
    uint64_t a = s_fixed_value (ctx, ia);
    uint64_t b = s_fixed_value (ctx, ib);
    if (a <= b) {
        return 0;
    }
    char fa[32], fb[32];
    s_format (s_keys[ia].type, a, fa, sizeof fa);
    s_format (s_keys[ib].type, b, fb, sizeof fb);
    int la = ctx->fixed[section].key[ia];
    int lb = ctx->fixed[section].key[ib];
    if (lb >= la) {
        return s_fail (ctx, lb, "[%s] %s: expected at least %s (%s), got %s%s",
                       s_section_names[section], key_b, key_a, fa, fb, note);
    }
    return s_fail (ctx, la, "[%s] %s: expected at most %s (%s), got %s%s",
                   s_section_names[section], key_a, key_b, fb, fa, note);
}

/*  [broker] http_tls_cert and http_tls_key go together, and with http. */
static int
s_check_http_tls (s_ctx_t *ctx)
{
    llmq_config_t *config = ctx->config;
    int lc = ctx->fixed[S_BROKER].key[s_key_index (S_BROKER, "http_tls_cert")];
    int lk = ctx->fixed[S_BROKER].key[s_key_index (S_BROKER, "http_tls_key")];
    config->http_tls_cert_line = lc;
    config->http_tls_key_line = lk;
    if (!config->http_tls_cert != !config->http_tls_key) {
        return s_fail (ctx, lc ? lc : lk, "[broker] %s: %s is needed too (the server's certificate chain "
                       "and its private key, both PEM)", lc ? "http_tls_cert" : "http_tls_key",
                       lc ? "http_tls_key" : "http_tls_cert");
    }
    if (config->http_tls_cert && (!config->http || !*config->http)) {
        return s_fail (ctx, lc, "[broker] http_tls_cert: the HTTP side is off: set http = HOST:PORT too");
    }
    return 0;
}

static int
s_check (s_ctx_t *ctx)
{
    llmq_config_t *config = ctx->config;
    if (s_check_http_tls (ctx)) {
        return -1;
    }
    for (size_t i = 0; i < config->ndeployments; i++) {
        llmq_deployment_t *deployment = &config->deployments[i];
        int line = ctx->dep_lines[i].header;
        if (!deployment->provider) {
            return s_fail (ctx, line, "[deployment %s]: provider is required "
                           "(openai, azure, anthropic, gemini or echo)", deployment->name);
        }
        if ((strcmp (deployment->provider, "openai") == 0 || strcmp (deployment->provider, "azure") == 0)
        &&  !deployment->base_url) {
            return s_fail (ctx, line, "[deployment %s]: base_url is required for provider %s",
                           deployment->name, deployment->provider);
        }
        /*  The providers with one public API get it by default. */
        const char *dflt = strcmp (deployment->provider, "anthropic") == 0 ? "https://api.anthropic.com/v1"
                         : strcmp (deployment->provider, "gemini") == 0
                         ? "https://generativelanguage.googleapis.com/v1beta" : NULL;
        if (dflt && !deployment->base_url) {
            deployment->base_url = s_strdup (dflt);
            if (!deployment->base_url) {
                return s_fail (ctx, line, "out of memory");
            }
        }
        if (strcmp (deployment->provider, "anthropic") == 0 && !deployment->max_tokens) {
            deployment->max_tokens = 1024;
        }
        if (!deployment->model) {
            deployment->model = s_strdup (deployment->name);
            if (!deployment->model) {
                return s_fail (ctx, line, "out of memory");
            }
        }
    }
    int members = s_key_index (S_GROUP, "deployments");
    for (size_t i = 0; i < config->ngroups; i++) {
        const llmq_group_t *group = &config->groups[i];
        if (group->ndeployments == 0) {
            return s_fail (ctx, ctx->grp_lines[i].header, "[group %s]: deployments is required "
                           "(deployments = NAME, NAME...)", group->name);
        }
        for (size_t j = 0; j < group->ndeployments; j++) {
            if (!llmq_config_deployment (config, group->deployments[j])) {
                return s_fail (ctx, ctx->grp_lines[i].key[members],
                               "[group %s] deployments: no deployment named '%s' "
                               "(expected a [deployment %s] section)",
                               group->name, group->deployments[j], group->deployments[j]);
            }
        }
        int fb = s_key_index (S_GROUP, "fallback");
        if (group->fallback && (!llmq_config_group (config, group->fallback)
                                || strcmp (group->fallback, group->name) == 0)) {
            return s_fail (ctx, ctx->grp_lines[i].key[fb],
                           strcmp (group->fallback, group->name) == 0
                           ? "[group %s] fallback: a group cannot fall back to itself ('%s'%.0s)"
                           : "[group %s] fallback: no group named '%s' (expected a [group %s] section)",
                           group->name, group->fallback, group->fallback);
        }
    }
    if (config->default_tier && !llmq_config_tier (config, config->default_tier)) {
        return s_fail (ctx, ctx->fixed[S_TENANTS].key[s_key_index (S_TENANTS, "default_tier")],
                       "[tenants] default_tier: no tier named '%s' (expected free, basic, pro, "
                       "enterprise or a [tier %s] section)", config->default_tier, config->default_tier);
    }
    for (size_t i = 0; i < config->nusers; i++) {
        const llmq_cfg_user_t *u = &config->users[i];
        if (u->tier && !llmq_config_tier (config, u->tier)) {
            return s_fail (ctx, ctx->named_lines[S_USER - S_TIER][i].key[s_key_index (S_USER, "tier")],
                           "[user %s] tier: no tier named '%s' (expected free, basic, pro, "
                           "enterprise or a [tier %s] section)", u->name, u->tier, u->tier);
        }
    }
    if (s_check_order (ctx, S_BROKER, "map_size", "max_map_size", "") != 0
    ||  s_check_order (ctx, S_BROKER, "retry_backoff", "retry_backoff_max", "") != 0) {
        return -1;
    }
    const char *note = " (offsets must not decrease: urgent <= high <= normal <= low)";
    if (s_check_order (ctx, S_PRIORITY, "urgent", "high", note) != 0
    ||  s_check_order (ctx, S_PRIORITY, "high", "normal", note) != 0
    ||  s_check_order (ctx, S_PRIORITY, "normal", "low", note) != 0) {
        return -1;
    }
    //  Workers connect where the broker binds unless told otherwise.
    if (!ctx->fixed[S_WORKER].key[s_key_index (S_WORKER, "broker")]) {
        char *copy = s_strdup (config->backend);
        if (!copy) {
            return s_fail (ctx, 0, "out of memory");
        }
        free (config->worker_broker);
        config->worker_broker = copy;
    }
    return 0;
}


//  --------------------------------------------------------------------------
//  Public API

llmq_config_t *
llmq_config_new (void)
{
    llmq_config_t *self = calloc (1, sizeof *self);
    if (!self) {
        return NULL;
    }
    self->frontend = s_strdup ("tcp://127.0.0.1:5555");
    self->backend = s_strdup ("tcp://127.0.0.1:5556");
    self->data_dir = s_strdup ("./llmq-data");
    self->sync = true;
    self->map_size = 64 * S_MIB;
    self->max_map_size = 8 * S_GIB;
    self->result_ttl_ms = 24 * S_HOUR;
    self->heartbeat_ms = 1000;
    self->liveness = 3;
    self->probe_interval_ms = 30 * S_SECOND;
    self->stream_weight = 1;
    self->fair_share = true;
    self->cache_enabled = true;
    self->cache_default_ttl_ms = 1 * S_HOUR;
    self->cache_max_size = 64 * S_MIB;
    self->max_message = 64 * S_MIB;
    self->max_attempts = 3;
    self->retry_backoff_ms = 1 * S_SECOND;
    self->retry_backoff_max_ms = 10 * S_SECOND;
    self->log_level = s_strdup ("info");
    self->prio_offset_ms[0] = 0;
    self->prio_offset_ms[1] = 5 * S_SECOND;
    self->prio_offset_ms[2] = 30 * S_SECOND;
    self->prio_offset_ms[3] = 120 * S_SECOND;
    self->worker_broker = s_strdup (self->backend);
    self->worker_slots = 64;
    if (!self->frontend || !self->backend || !self->data_dir || !self->log_level
    ||  !self->worker_broker) {
        llmq_config_destroy (&self);
    }
    return self;
}

llmq_config_t *
llmq_config_load (const char *path, char *err, size_t errlen)
{
    if (err && errlen) {
        *err = '\0';
    }
    if (!path || !*path) {
        if (err && errlen) {
            snprintf (err, errlen, "no configuration file given");
        }
        return NULL;
    }
    s_ctx_t ctx;
    memset (&ctx, 0, sizeof ctx);
    ctx.config = llmq_config_new ();
    if (ctx.config) {
        ctx.config->path = s_strdup (path);
    }
    if (!ctx.config || !ctx.config->path) {
        if (err && errlen) {
            snprintf (err, errlen, "%s: out of memory", path);
        }
        llmq_config_destroy (&ctx.config);
        return NULL;
    }
    ctx.file = fopen (path, "r");
    if (!ctx.file) {
        s_fail (&ctx, 0, "cannot open: %s", strerror (errno));
    }
    else {
        int rc = ini_parse_stream (s_reader, &ctx, s_handler, &ctx);
        //  inih's own complaint (a line with no '=') only matters if it
        //  came before ours; it reports the first line it disliked.
        if (rc > 0 && (!ctx.failed || rc < ctx.fail_line)) {
            ctx.failed = false;
            s_fail (&ctx, rc, "expected 'key = value', '[section]' or a comment");
        }
        else
        if (rc < 0 && !ctx.failed) {
            s_fail (&ctx, 0, "cannot read: out of memory");
        }
        if (!ctx.failed) {
            s_check (&ctx);
        }
        fclose (ctx.file);
    }
    free (ctx.buf);
    free (ctx.dep_lines);
    free (ctx.grp_lines);
    for (int i = 0; i < 3; i++) {
        free (ctx.named_lines[i]);
    }
    if (ctx.failed) {
        if (err && errlen) {
            snprintf (err, errlen, "%s", ctx.msg);
        }
        llmq_config_destroy (&ctx.config);
    }
    return ctx.config;
}

void
llmq_config_destroy (llmq_config_t **self_p)
{
    if (!self_p || !*self_p) {
        return;
    }
    llmq_config_t *self = *self_p;
    free (self->path);
    free (self->frontend);
    free (self->backend);
    free (self->data_dir);
    free (self->log_level);
    free (self->log_format);
    free (self->http);
    free (self->http_tls_cert);
    free (self->http_tls_key);
    free (self->admin_token_env);
    free (self->worker_broker);
    for (size_t i = 0; i < self->ndeployments; i++) {
        llmq_deployment_t *deployment = &self->deployments[i];
        free (deployment->name);
        free (deployment->provider);
        free (deployment->api_version);
        free (deployment->model);
        free (deployment->base_url);
        s_strings_free (deployment->api_key_envs, deployment->napi_key_envs);
        s_strings_free (deployment->api_key_files, deployment->napi_key_files);
        free (deployment->ca_file);
        free (deployment->ca_path);
    }
    free (self->deployments);
    for (size_t i = 0; i < self->ngroups; i++) {
        free (self->groups[i].name);
        free (self->groups[i].strategy);
        free (self->groups[i].fallback);
        s_group_clear (&self->groups[i]);
    }
    for (size_t i = 0; i < self->ntiers; i++) {
        free (self->tiers[i].name);
    }
    free (self->tiers);
    for (size_t i = 0; i < self->nusers; i++) {
        free (self->users[i].name);
        free (self->users[i].tier);
    }
    free (self->users);
    for (size_t i = 0; i < self->norgs; i++) {
        free (self->orgs[i].name);
    }
    free (self->orgs);
    free (self->default_tier);
    free (self->budget_webhook);
    free (self->groups);
    free (self);
    *self_p = NULL;
}

/*  Whether `path` is a regular file we can read holding at least one PEM
    certificate (a bundle may start with comments). NULL, or why not. */
static const char *
s_ca_file_problem (const char *path)
{
    int fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return strerror (errno);
    }
    const char *why = NULL;
    struct stat st;
    if (fstat (fd, &st) != 0) {
        why = strerror (errno);
    }
    else
    if (!S_ISREG (st.st_mode)) {
        why = S_ISDIR (st.st_mode) ? "a directory, not a file (a directory of hashed "
              "certificates goes in ca_path)" : "not a regular file";
    }
    else
    if (st.st_size > 64 * (off_t) S_MIB) {
        why = "over 64 MiB: not a CA bundle";
    }
    else {
        char *text = malloc ((size_t) st.st_size + 1);
        ssize_t got = text ? read (fd, text, (size_t) st.st_size) : -1;
        if (got < 0) {
            why = text ? strerror (errno) : "out of memory";
        }
        else {
            text[got] = '\0';
            if (!strstr (text, "-----BEGIN CERTIFICATE-----")) {
                why = "no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)";
            }
        }
        free (text);
    }
    close (fd);
    return why;
}

int
llmq_config_check_ca (const llmq_config_t *self, const llmq_deployment_t *dep,
                      char *err, size_t errlen)
{
    const char *file = self && self->path ? self->path : "config";
    const char *why = NULL;
    const char *key = "ca_file";
    const char *path = dep->ca_file;
    int line = dep->ca_file_line;
    if (dep->ca_file) {
        why = s_ca_file_problem (dep->ca_file);
    }
    if (!why && dep->ca_path) {
        key = "ca_path";
        path = dep->ca_path;
        line = dep->ca_path_line;
        struct stat st;
        if (stat (dep->ca_path, &st) != 0) {
            why = strerror (errno);
        }
        else
        if (!S_ISDIR (st.st_mode)) {
            why = "not a directory (a PEM bundle goes in ca_file)";
        }
        else
        if (access (dep->ca_path, R_OK | X_OK) != 0) {
            why = strerror (errno);
        }
    }
    if (!why) {
        return 0;
    }
    if (err && errlen) {
        snprintf (err, errlen, "%s:%d: [deployment %s] %s: cannot use %s: %s",
                  file, line, dep->name, key, path, why);
    }
    return -1;
}

const llmq_deployment_t *
llmq_config_deployment (const llmq_config_t *self, const char *name)
{
    if (!self || !name) {
        return NULL;
    }
    for (size_t i = 0; i < self->ndeployments; i++) {
        if (strcmp (self->deployments[i].name, name) == 0) {
            return &self->deployments[i];
        }
    }
    return NULL;
}

const llmq_group_t *
llmq_config_group (const llmq_config_t *self, const char *name)
{
    if (!self || !name) {
        return NULL;
    }
    for (size_t i = 0; i < self->ngroups; i++) {
        if (strcmp (self->groups[i].name, name) == 0) {
            return &self->groups[i];
        }
    }
    return NULL;
}
