/*  config.h -- the llmq configuration file (one file for broker and workers).

    INI syntax: `[section]` or `[section NAME]` headers, `key = value` lines,
    `#` or `;` comments. Durations take a unit (ms, s, m, h, d), sizes take
    one (B, KiB, MiB, GiB). deploy/llmq.conf is the commented example and
    docs/config.md the reference. Every error names the file, the line and
    what is wrong: "llmq.conf:12: [broker] sync: expected on or off (or
    true/false, yes/no, 1/0), got 'maybe'".

    A loaded config is never modified by this module: after load it may be
    read from any number of threads without locking.
*/
#ifndef LLMQ_CONFIG_H
#define LLMQ_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>

#define LLMQ_NPRIO 4
/*  Most keys (api_key_env plus api_key_file entries) of one deployment. */
#define LLMQ_MAX_KEYS 64

typedef struct {
    char    *name;              /* [deployment NAME] */
    char    *provider;          /* "openai", "azure", "anthropic", "gemini" or "echo" */
    char    *model;             /* model name sent to the provider */
    char    *base_url;          /* e.g. http://127.0.0.1:8080/v1; anthropic and gemini
                                   default to the provider's public API */
    char    *api_key_env;       /* first of api_key_envs, or NULL: for code that
                                   handles one key */
    char   **api_key_envs;      /* api_key_env = A, B: names of the environment
                                   variables holding keys, in file order */
    size_t   napi_key_envs;
    char   **api_key_files;     /* api_key_file = PATH, PATH: files holding one key
                                   each; a relative path is joined to the config
                                   file's directory at load. Not read
                                   here: the worker reads them at start, so the
                                   broker never needs the secrets. */
    size_t   napi_key_files;
    int      api_key_file_line; /* line of api_key_file in the file (0: not set),
                                   for the worker's error about an unreadable file */
    uint64_t timeout_ms;        /* total time allowed for one call (default 60 s) */
    uint64_t connect_timeout_ms;/* default 5 s */
    uint32_t max_tokens;        /* default max_tokens when a job gives none (0: the
                                   provider's; anthropic requires one: 1024) */
    char    *api_version;       /* azure api-version, anthropic-version header, or NULL */
    uint64_t stall_timeout_ms;  /* a call that receives no byte for this long fails
                                   as a timeout (default 30 s; 0: off) */
    uint32_t max_prompt_chars;  /* input policy: refuse longer prompts (0: off) */
    bool     strip_special_tokens; /* input policy: remove <|...|>, [INST]... (off) */
    char    *ca_file;           /* PEM bundle of the CAs to trust (CURLOPT_CAINFO), or
                                   NULL; a relative path is joined to the config
                                   file's directory at load */
    char    *ca_path;           /* directory of hashed CA certificates (CURLOPT_CAPATH),
                                   or NULL; joined the same way. With either set only
                                   these CAs are trusted, else the system's */
    int      ca_file_line;      /* lines of ca_file and ca_path in the file (0: not */
    int      ca_path_line;      /* set), for the worker's error about a bad path */
    bool     tls_verify;        /* check the provider's certificate and host name
                                   (default true; false: the worker warns at start) */
    /* Limits, held by the broker for the whole fleet (0: none). */
    uint32_t rpm;               /* requests per rate_window */
    uint32_t tpm;               /* tokens per rate_window (estimated at dispatch,
                                   corrected by the usage reported) */
    uint64_t rate_window_ms;    /* default 60 s */
    uint64_t rate_margin_ms;    /* the window is held this much longer (0) */
    uint32_t max_concurrent;    /* calls at once */
    /* Balancing inside a group. */
    uint32_t weight;            /* weighted strategy (default 1) */
    uint32_t order;             /* order strategy: lower first (default 0) */
    double   price_input;       /* USD per 1M prompt tokens (0) */
    double   price_output;      /* USD per 1M completion tokens (0) */
    double   price_cached_input;/* USD per 1M cached prompt tokens (0: price_input) */
    /* Circuit breaker. */
    uint32_t breaker_failures;  /* failures in the window that open it (5) */
    uint32_t breaker_failure_pct; /* or this % of the window's calls (0: off) */
    uint32_t breaker_min_calls; /* calls in the window before it may open (5) */
    uint64_t breaker_window_ms; /* rolling window (60 s) */
    uint64_t breaker_open_ms;   /* open for (60 s) */
    uint32_t breaker_probes;    /* calls let through at once when half-open (1) */
    uint32_t breaker_successes; /* probe successes that close it (2) */
    /* Timeouts: adaptive p95 x 1.5 in [timeout_min, timeout]. */
    bool     adaptive_timeout;  /* default true */
    uint64_t timeout_min_ms;    /* default 10 s (or timeout, if smaller) */
    /* Retries. */
    uint32_t retry_budget_pct;  /* retries <= this % of calls per minute (20) */
    uint32_t retry_budget_min;  /* retries always allowed per minute (10) */
} llmq_deployment_t;

typedef struct {
    char    *name;              /* [group NAME]: the model name clients submit to */
    char   **deployments;       /* names, in order */
    size_t   ndeployments;
    char    *strategy;          /* order, round_robin (default), weighted,
                                   least_in_flight, lowest_latency, cheapest */
    char    *fallback;          /* group to use when none of ours can serve, or NULL */
} llmq_group_t;

/*  [tier NAME]: a tenant tier's quotas (0: none). A tier named free, basic,
    pro or enterprise starts from the built-in values (docs/config.md). */
typedef struct {
    char    *name;
    uint32_t rpm, rph, rpd;     /* requests per minute, hour, day */
    uint64_t tokens_per_day;
    uint32_t weight;            /* fair share weight (1) */
} llmq_cfg_tier_t;

/*  [user NAME]: a user's tier and budgets (USD; 0: none). */
typedef struct {
    char    *name;
    char    *tier;              /* NULL: [tenants] default_tier */
    double   budget_daily, budget_monthly;
} llmq_cfg_user_t;

/*  [org NAME]: an org's budgets (USD; 0: none) and fair share weight. */
typedef struct {
    char    *name;
    double   budget_daily, budget_monthly;
    uint32_t weight;            /* fair share weight (1) */
} llmq_cfg_org_t;

typedef struct {
    char    *path;              /* file it was loaded from (NULL: defaults only) */
    /* [broker] */
    char    *frontend;          /* client endpoint, default tcp://127.0.0.1:5555 */
    char    *backend;           /* worker endpoint, default tcp://127.0.0.1:5556 */
    char    *data_dir;          /* default ./llmq-data */
    bool     sync;              /* fsync every group commit (default true) */
    uint64_t map_size;          /* initial LMDB map bytes (default 64 MiB) */
    uint64_t max_map_size;      /* growth limit (default 8 GiB) */
    uint64_t result_ttl_ms;     /* default 24 h */
    uint64_t heartbeat_ms;      /* default 1000 */
    uint32_t liveness;          /* heartbeats missed before a peer is dead (3) */
    uint64_t probe_interval_ms; /* health probe to a deployment idle this long (30 s; 0: off) */
    uint64_t max_message;       /* largest accepted message body (default 64 MiB) */
    uint32_t max_attempts;      /* default for jobs (3) */
    uint64_t retry_backoff_ms;  /* first retry delay, doubled per attempt (1 s) */
    uint64_t retry_backoff_max_ms; /* cap (10 s) */
    char    *log_level;         /* error, warn, info, debug (info) */
    char    *log_format;        /* text (default) or json; broker and workers */
    char    *http;              /* HTTP side "HOST:PORT" (port 0: any), or NULL: off */
    char    *admin_token_env;   /* environment variable holding the admin bearer
                                   token, or NULL: /admin/ answers 403 */
    char    *http_tls_cert;     /* PEM certificate chain for HTTPS on the HTTP side, */
    char    *http_tls_key;      /* and its PEM private key (both or neither; NULL: plain HTTP) */
    int      http_tls_cert_line, http_tls_key_line;  /* their lines, for errors at start */
    /* [priority] offsets in ms: urgent, high, normal, low (0, 5 s, 30 s, 120 s) */
    uint64_t prio_offset_ms[LLMQ_NPRIO];
    /* [worker] */
    char    *worker_broker;     /* broker backend to connect to (default = backend) */
    uint32_t worker_slots;      /* concurrent calls per worker process (64) */
    /* [tenants] */
    char    *default_tier;      /* tier of users without a [user] section ("free") */
    uint32_t stream_weight;     /* a streamed job counts as this many requests (1) */
    uint32_t large_job_tokens;  /* a job estimated at N x this counts N more (0: off) */
    char    *budget_webhook;    /* URL POSTed each budget alert, or NULL */
    bool     fair_share;        /* tenants take turns inside a priority (on) */
    /* [cache]: the broker's response cache (docs/config.md) */
    bool     cache_enabled;     /* cache at all (on): jobs that ask are cached */
    bool     cache_auto_temperature_zero; /* also jobs with "temperature": 0 (off) */
    uint64_t cache_default_ttl_ms;  /* TTL of those (1 h) */
    uint64_t cache_max_size;    /* bytes of entries kept, least recently used
                                   evicted first (64 MiB) */
    bool     cache_serve_stale; /* an expired entry answers when every deployment
                                   of the group is down (off) */
    /* [tier NAME], [user NAME], [org NAME], in file order */
    llmq_cfg_tier_t *tiers;
    size_t   ntiers;
    llmq_cfg_user_t *users;
    size_t   nusers;
    llmq_cfg_org_t *orgs;
    size_t   norgs;
    /* [deployment NAME] and [group NAME], in file order */
    llmq_deployment_t *deployments;
    size_t   ndeployments;
    llmq_group_t *groups;
    size_t   ngroups;
} llmq_config_t;

/*  Defaults only: no file. Returns NULL on out of memory. */
llmq_config_t *llmq_config_new (void);
/*  Load a file over the defaults. Returns NULL and writes
    "FILE:LINE: what is wrong" into `err` on any problem (unknown section or
    key, bad value, duplicate name, group naming an unknown deployment...).
    Only the first problem is reported. `err` may be NULL; a message longer
    than errlen is cut (512 bytes always suffice). Keys absent from the
    file keep their defaults; a deployment's model defaults to its NAME and
    worker_broker to the backend value. Free with llmq_config_destroy. */
llmq_config_t *llmq_config_load (const char *path, char *err, size_t errlen);
/*  Free the config and set *self_p to NULL; safe on NULL and twice. */
void llmq_config_destroy (llmq_config_t **self_p);

/*  Whether the deployment's CA files can be used: ca_file a readable
    regular file holding at least one PEM certificate, ca_path a directory
    that can be searched. The loader does not look (the broker reads the
    same file and never needs them); the worker asks at start. Returns 0
    (also when neither is set), or -1 with "FILE:LINE: [deployment NAME]
    ca_file: cannot use PATH: WHY" in `err` (may be NULL; cut to errlen). */
int llmq_config_check_ca (const llmq_config_t *self, const llmq_deployment_t *dep,
                          char *err, size_t errlen);

/*  [broker] http's value, HOST:PORT: HOST an IPv4 address, localhost or
    * (any address), PORT 0-65535 (0: any free one). Returns NULL and fills
    *addr and *port (either may be NULL) when good, else what was expected. */
const char *llmq_config_http_address (const char *text, struct in_addr *addr, uint16_t *port);

/*  A tier by name: the file's [tier NAME], else a built-in one (free,
    basic, pro, enterprise); NULL if neither. */
const llmq_cfg_tier_t *llmq_config_tier (const llmq_config_t *self, const char *name);
/*  The built-in tiers (docs/config.md, [tier NAME]). */
size_t llmq_config_builtin_tiers (const llmq_cfg_tier_t **tiers);

/*  Look a deployment or group up by name; NULL if there is none. The
    pointer is borrowed and valid until the config is destroyed. */
const llmq_deployment_t *llmq_config_deployment (const llmq_config_t *self, const char *name);
const llmq_group_t *llmq_config_group (const llmq_config_t *self, const char *name);

/*  Parsers, shared with command-line flags. Return 0, or -1 if invalid
    (then the output is untouched). Strict: digits and a unit, nothing
    else -- no sign, spaces, fractions or overflow.
    Durations: ms, s, m, h, d (lower case): "150ms", "5s", "24h".
    Sizes: B, KiB, MiB, GiB, TiB (x1024) or KB, MB, GB, TB (x1000), any case.
    Bools: on/off, true/false, yes/no, 1/0, any case. */
int llmq_parse_duration_ms (const char *text, uint64_t *ms);
int llmq_parse_size (const char *text, uint64_t *bytes);
int llmq_parse_bool (const char *text, bool *value);

#endif
