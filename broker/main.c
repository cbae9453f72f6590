/*  main.c -- llmq-broker: command line, configuration, signals. */
#include "broker.h"
#include "config.h"
#include "log.h"

#include <czmq.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile int s_stop = 0;

static void
s_on_signal (int sig)
{
    (void) sig;
    s_stop = 1;
}

static void
s_usage (FILE *out)
{
    fprintf (out,
        "usage: llmq-broker [options]\n"
        "\n"
        "Runs the llmq broker: a durable priority queue of LLM jobs (LMDB) with a\n"
        "client socket and a worker socket (ZeroMQ ROUTER).\n"
        "\n"
        "  -c, --config FILE      configuration file (see deploy/llmq.conf)\n"
        "      --frontend EP      client endpoint   (default tcp://127.0.0.1:5555)\n"
        "      --backend EP       worker endpoint   (default tcp://127.0.0.1:5556)\n"
        "  -d, --data-dir DIR     store directory   (default ./llmq-data)\n"
        "      --no-sync          do not fsync commits: faster, but a machine crash\n"
        "                         may lose the last acknowledged jobs\n"
        "      --max-map-size SZ  store size limit, e.g. 8GiB\n"
        "      --ready-file FILE  write the bound endpoints to FILE once listening\n"
        "                         (a third line: the HTTP port, when [broker] http is set)\n"
        "      --log-level LVL    error, warn, info or debug\n"
        "  -h, --help             this help\n"
        "\n"
        "Flags override the file. SIGINT/SIGTERM: stop accepting, commit, exit 0.\n");
}

static int
s_write_ready (const char *path, const char *fe, const char *be, int http_port)
{
    char tmp[4096];
    snprintf (tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen (tmp, "w");
    if (!f) {
        return -1;
    }
    fprintf (f, "%s\n%s\n", fe, be);
    if (http_port > 0) {
        fprintf (f, "%d\n", http_port);   /* third line: only when [broker] http is on */
    }
    if (fclose (f) != 0) {
        return -1;
    }
    return rename (tmp, path);
}

int
main (int argc, char **argv)
{
    static struct option opts[] = {
        { "config", required_argument, 0, 'c' }, { "frontend", required_argument, 0, 'F' },
        { "backend", required_argument, 0, 'B' }, { "data-dir", required_argument, 0, 'd' },
        { "no-sync", no_argument, 0, 'N' }, { "max-map-size", required_argument, 0, 'M' },
        { "ready-file", required_argument, 0, 'R' }, { "log-level", required_argument, 0, 'L' },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 }
    };
    const char *config_path = NULL, *frontend = NULL, *backend = NULL, *data_dir = NULL;
    const char *ready_file = NULL, *log_level = NULL, *max_map = NULL;
    bool no_sync = false;
    int c;
    while ((c = getopt_long (argc, argv, "c:d:h", opts, NULL)) != -1) {
        switch (c) {
            case 'c': config_path = optarg; break;
            case 'F': frontend = optarg; break;
            case 'B': backend = optarg; break;
            case 'd': data_dir = optarg; break;
            case 'N': no_sync = true; break;
            case 'M': max_map = optarg; break;
            case 'R': ready_file = optarg; break;
            case 'L': log_level = optarg; break;
            case 'h': s_usage (stdout); return 0;
            default:  s_usage (stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf (stderr, "llmq-broker: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    llmq_log_init ("llmq-broker");
    char err[1024] = "";
    llmq_config_t *config = config_path ? llmq_config_load (config_path, err, sizeof err) : llmq_config_new ();
    if (!config) {
        fprintf (stderr, "llmq-broker: %s\n", err[0] ? err : "out of memory");
        return 2;
    }
    if (frontend) { free (config->frontend); config->frontend = strdup (frontend); }
    if (backend) { free (config->backend); config->backend = strdup (backend); }
    if (data_dir) { free (config->data_dir); config->data_dir = strdup (data_dir); }
    if (no_sync) { config->sync = false; }
    if (max_map && llmq_parse_size (max_map, &config->max_map_size)) {
        fprintf (stderr, "llmq-broker: --max-map-size: expected a size like 512MiB, got '%s'\n", max_map);
        llmq_config_destroy (&config);
        return 2;
    }
    if (max_map && config->map_size > config->max_map_size) {
        config->map_size = config->max_map_size;
    }
    if (config->log_format) {
        llmq_log_set_format (config->log_format);
    }
    const char *level = log_level ? log_level : config->log_level;
    if (level && llmq_log_set_level_name (level)) {
        fprintf (stderr, "llmq-broker: --log-level: expected error, warn, info or debug, got '%s'\n", level);
        llmq_config_destroy (&config);
        return 2;
    }
    if (config->ngroups == 0) {
        llmq_warn ("no [group] in the configuration: every submit will be refused (unknown model group)");
    }
    /* Our own handlers: czmq's would make blocking calls return early. */
    zsys_handler_set (NULL);
    struct sigaction sa;
    memset (&sa, 0, sizeof sa);
    sa.sa_handler = s_on_signal;
    sigaction (SIGINT, &sa, NULL);
    sigaction (SIGTERM, &sa, NULL);
    signal (SIGPIPE, SIG_IGN);

    llmq_broker_t *broker = llmq_broker_new (config, err, sizeof err);
    if (!broker) {
        llmq_error ("%s", err);
        llmq_config_destroy (&config);
        return 1;
    }
    llmq_info ("ready: clients on %s, workers on %s, data in %s (%s)", llmq_broker_frontend (broker),
               llmq_broker_backend (broker), config->data_dir, config->sync ? "sync" : "no-sync");
    if (ready_file && s_write_ready (ready_file, llmq_broker_frontend (broker), llmq_broker_backend (broker),
                                    llmq_broker_http_port (broker))) {
        llmq_error ("cannot write %s", ready_file);
    }
    int rc = llmq_broker_run (broker, &s_stop);
    llmq_broker_destroy (&broker);
    llmq_config_destroy (&config);
    return rc == 0 ? 0 : 1;
}
