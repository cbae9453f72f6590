/*  main.c -- llmq-worker: options, configuration, signals.

    llmq-worker [-c|--config FILE] [--broker ENDPOINT] [--slots N]
                [--log-level LEVEL] [--help]

    Flags win over the config file; the file wins over the defaults.
    Exit status: 0 after SIGINT/SIGTERM (calls aborted, BYE sent), 1 when
    the worker cannot run (out of memory, poll failure), 2 for a usage or
    configuration error (a broker endpoint ZeroMQ refuses included, and an
    api_key_file that cannot be read: keys are read once, here).
*/
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <czmq.h>

#include "config.h"
#include "keyring.h"
#include "log.h"
#include "provider.h"
#include "worker.h"

#define S_MAX_SLOTS 4096            /* as [worker] slots allows */

/*  The worker the signal handler stops. The only mutable static: a signal
    handler has no other way to reach it. */
static llmq_worker_t *volatile s_worker;

static void
s_on_signal (int sig)
{
    (void) sig;
    llmq_worker_stop (s_worker);
}

static void
s_usage (FILE *out)
{
    fprintf (out,
        "usage: llmq-worker [-c|--config FILE] [--broker ENDPOINT] [--slots N]\n"
        "                   [--log-level LEVEL] [--help]\n"
        "\n"
        "Pulls jobs from an llmq broker and runs them against LLM providers.\n"
        "\n"
        "  -c, --config FILE     configuration file (deployments, [worker], [broker])\n"
        "      --broker ENDPOINT broker backend, e.g. tcp://127.0.0.1:5556\n"
        "                        (default: [worker] broker, else [broker] backend)\n"
        "      --slots N         concurrent provider calls (default: [worker] slots, 64)\n"
        "      --log-level LEVEL error, warn, info or debug (default: [broker] log_level)\n"
        "  -h, --help            this text\n");
}

static int
s_parse_slots (const char *text, uint32_t *slots)
{
    char *end;
    errno = 0;
    long v = strtol (text, &end, 10);
    if (errno || end == text || *end || v < 1 || v > S_MAX_SLOTS) {
        return -1;
    }
    *slots = (uint32_t) v;
    return 0;
}

static void
s_rings_destroy (llmq_keyring_t **rings, size_t n)
{
    for (size_t i = 0; rings && i < n; i++) {
        llmq_keyring_destroy (&rings[i]);
    }
    free (rings);
}

/*  Say at start-up what would otherwise fail every job later, and read
    every deployment's API keys, once. Names only in messages: never a key.
    Returns the rings (config order), or NULL after printing why (an
    api_key_file that cannot be used, out of memory). */
static llmq_keyring_t **
s_load_deployments (const llmq_config_t *cfg)
{
    llmq_keyring_t **rings = calloc (cfg->ndeployments ? cfg->ndeployments : 1, sizeof *rings);
    if (!rings) {
        fprintf (stderr, "llmq-worker: out of memory\n");
        return NULL;
    }
    for (size_t i = 0; i < cfg->ndeployments; i++) {
        const llmq_deployment_t *dep = &cfg->deployments[i];
        if (!llmq_provider_find (dep->provider)) {
            llmq_warn ("deployment %s: provider '%s' is not supported by this worker",
                       dep->name, dep->provider ? dep->provider : "");
        }
        char err[600];
        rings[i] = llmq_keyring_load (dep, cfg->path, err, sizeof err);
        if (!rings[i] || llmq_config_check_ca (cfg, dep, err, sizeof err) != 0) {
            fprintf (stderr, "llmq-worker: %s\n", err);
            s_rings_destroy (rings, cfg->ndeployments);
            return NULL;
        }
        size_t wanted = dep->napi_key_envs + dep->napi_key_files;
        size_t nkeys = llmq_keyring_size (rings[i]);
        if (wanted > 0 && nkeys == 0) {
            llmq_warn ("deployment %s: no API key is set; its calls will fail", dep->name);
        }
        else if (nkeys > 1) {
            llmq_info ("deployment %s: %zu API keys, used in turn", dep->name, nkeys);
        }
    }
    return rings;
}

int
main (int argc, char *argv[])
{
    llmq_log_init ("worker");
    const char *config_path = NULL;
    const char *broker = NULL;
    const char *log_level = NULL;
    uint32_t slots = 0;

    enum { OPT_BROKER = 256, OPT_SLOTS, OPT_LOG_LEVEL };
    static const struct option options[] = {
        { "config",    required_argument, NULL, 'c' },
        { "broker",    required_argument, NULL, OPT_BROKER },
        { "slots",     required_argument, NULL, OPT_SLOTS },
        { "log-level", required_argument, NULL, OPT_LOG_LEVEL },
        { "help",      no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    int opt;
    while ((opt = getopt_long (argc, argv, "c:h", options, NULL)) != -1) {
        switch (opt) {
            case 'c':
                config_path = optarg;
                break;
            case OPT_BROKER:
                broker = optarg;
                break;
            case OPT_SLOTS:
                if (s_parse_slots (optarg, &slots) != 0) {
                    fprintf (stderr, "llmq-worker: --slots: expected a number from 1 to %d, got '%s'\n",
                             S_MAX_SLOTS, optarg);
                    return 2;
                }
                break;
            case OPT_LOG_LEVEL:
                log_level = optarg;
                break;
            case 'h':
                s_usage (stdout);
                return 0;
            default:
                s_usage (stderr);
                return 2;
        }
    }
    if (optind < argc) {
        fprintf (stderr, "llmq-worker: unexpected argument '%s'\n", argv[optind]);
        s_usage (stderr);
        return 2;
    }
    if (log_level && llmq_log_set_level_name (log_level) != 0) {
        fprintf (stderr, "llmq-worker: --log-level: expected error, warn, info or debug, got '%s'\n",
                 log_level);
        return 2;
    }

    char err[512] = "";
    llmq_config_t *cfg = config_path ? llmq_config_load (config_path, err, sizeof err)
                                     : llmq_config_new ();
    if (!cfg) {
        fprintf (stderr, "llmq-worker: %s\n", config_path ? err : "out of memory");
        return 2;
    }
    if (cfg->log_format) {
        llmq_log_set_format (cfg->log_format);
    }
    if (!log_level && cfg->log_level && llmq_log_set_level_name (cfg->log_level) != 0) {
        llmq_warn ("unknown log_level '%s' in the configuration: using info", cfg->log_level);
    }
    if (!broker) {
        broker = cfg->worker_broker && *cfg->worker_broker ? cfg->worker_broker : cfg->backend;
    }
    if (!broker || !*broker) {
        fprintf (stderr, "llmq-worker: no broker endpoint: give --broker or [worker] broker\n");
        llmq_config_destroy (&cfg);
        return 2;
    }
    if (!slots) {
        slots = cfg->worker_slots ? cfg->worker_slots : 64;
    }
    llmq_keyring_t **rings = s_load_deployments (cfg);
    if (!rings) {
        llmq_config_destroy (&cfg);
        return 2;
    }

    /*  curl and ZeroMQ start here, in the process that runs them. Our own
        SIGINT/SIGTERM handlers replace czmq's, which would only set a flag
        nobody here reads. */
    if (curl_global_init (CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        llmq_error ("cannot initialise libcurl");
        s_rings_destroy (rings, cfg->ndeployments);
        llmq_config_destroy (&cfg);
        return 1;
    }
    zsys_handler_set (NULL);
    zsys_init ();
    llmq_worker_t *worker = llmq_worker_new (cfg, rings, broker, slots);
    int rc = 1;
    if (worker) {
        s_worker = worker;
        struct sigaction sa;
        memset (&sa, 0, sizeof sa);
        sa.sa_handler = s_on_signal;
        sigemptyset (&sa.sa_mask);
        sigaction (SIGINT, &sa, NULL);
        sigaction (SIGTERM, &sa, NULL);
        signal (SIGPIPE, SIG_IGN);
        int run = llmq_worker_run (worker);
        rc = run == 0 ? 0 : run == -2 ? 2 : 1;
        signal (SIGINT, SIG_DFL);
        signal (SIGTERM, SIG_DFL);
        s_worker = NULL;
        llmq_worker_destroy (&worker);
    }
    s_rings_destroy (rings, cfg->ndeployments);
    llmq_config_destroy (&cfg);
    curl_global_cleanup ();
    return rc;
}
