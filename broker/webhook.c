/*  webhook.c -- POST JSON notices to one URL, with retries, never
    blocking the broker: see webhook.h.

    A libcurl multi handle driven by llmq_webhook_poll() from the broker's
    loop (curl_multi_perform does only what is ready). At most 4 POSTs are
    in flight; the rest wait in a FIFO of at most 1,000 notices (past
    that the oldest waiting one is dropped and counted). A POST that fails
    (no connection, timeout, a status other than 2xx) is tried again after
    1, 2, 4 and 8 s: five attempts in all.
*/
#include "webhook.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define S_QUEUE_MAX   1000
#define S_IN_FLIGHT   4
#define S_ATTEMPTS    5
#define S_TIMEOUT_MS  5000

typedef struct s_notice {
    char *body;
    unsigned attempts;              /* made so far */
    uint64_t not_before_ms;         /* monotonic */
    struct s_notice *next;
    CURL *easy;                     /* while in flight */
    struct curl_slist *headers;
} s_notice_t;

struct llmq_webhook {
    char *url;
    CURLM *multi;
    s_notice_t *head, *tail;        /* waiting, FIFO */
    size_t waiting;
    s_notice_t *flying[S_IN_FLIGHT];
    uint64_t sent, failed, dropped, retried;
};

llmq_webhook_t *
llmq_webhook_new (const char *url)
{
    llmq_webhook_t *self = (llmq_webhook_t *) calloc (1, sizeof *self);
    if (!self || !(self->url = strdup (url)) || !(self->multi = curl_multi_init ())) {
        llmq_webhook_destroy (&self);
        return NULL;
    }
    return self;
}

static void
s_notice_free (s_notice_t *n)
{
    if (n) {
        curl_slist_free_all (n->headers);
        free (n->body);
        free (n);
    }
}

void
llmq_webhook_destroy (llmq_webhook_t **self_p)
{
    llmq_webhook_t *self = *self_p;
    if (!self) {
        return;
    }
    for (int i = 0; i < S_IN_FLIGHT; i++) {
        if (self->flying[i]) {
            curl_multi_remove_handle (self->multi, self->flying[i]->easy);
            curl_easy_cleanup (self->flying[i]->easy);
            s_notice_free (self->flying[i]);
        }
    }
    while (self->head) {
        s_notice_t *n = self->head;
        self->head = n->next;
        s_notice_free (n);
    }
    if (self->multi) {
        curl_multi_cleanup (self->multi);
    }
    free (self->url);
    free (self);
    *self_p = NULL;
}

static void
s_enqueue (llmq_webhook_t *self, s_notice_t *n)
{
    n->next = NULL;
    if (self->tail) {
        self->tail->next = n;
    }
    else {
        self->head = n;
    }
    self->tail = n;
    self->waiting++;
}

void
llmq_webhook_post (llmq_webhook_t *self, const char *json, uint64_t now_ms)
{
    if (self->waiting >= S_QUEUE_MAX && self->head) {
        s_notice_t *old = self->head;           /* the oldest waiting goes */
        self->head = old->next;
        if (!self->head) {
            self->tail = NULL;
        }
        self->waiting--;
        s_notice_free (old);
        self->dropped++;
    }
    s_notice_t *n = (s_notice_t *) calloc (1, sizeof *n);
    if (!n || !(n->body = strdup (json))) {
        free (n);
        self->dropped++;
        return;
    }
    n->not_before_ms = now_ms;
    s_enqueue (self, n);
}

static size_t
s_discard (char *data, size_t size, size_t n, void *arg)
{
    (void) data;
    (void) arg;
    return size * n;
}

/*  Start the waiting notices that are due, while slots are free. */
static void
s_start (llmq_webhook_t *self, uint64_t now_ms)
{
    s_notice_t **link = &self->head, *prev = NULL;
    while (*link) {
        s_notice_t *n = *link;
        int slot = -1;
        for (int i = 0; i < S_IN_FLIGHT && slot < 0; i++) {
            if (!self->flying[i]) {
                slot = i;
            }
        }
        if (slot < 0) {
            return;
        }
        if (n->not_before_ms > now_ms) {
            prev = n;
            link = &n->next;
            continue;
        }
        *link = n->next;                        /* out of the queue */
        if (self->tail == n) {
            self->tail = prev;
        }
        self->waiting--;
        n->next = NULL;
        n->easy = curl_easy_init ();
        n->headers = curl_slist_append (NULL, "Content-Type: application/json");
        if (!n->easy || !n->headers) {
            s_notice_free (n);
            self->dropped++;
            continue;
        }
        curl_easy_setopt (n->easy, CURLOPT_URL, self->url);
        curl_easy_setopt (n->easy, CURLOPT_POSTFIELDS, n->body);
        curl_easy_setopt (n->easy, CURLOPT_HTTPHEADER, n->headers);
        curl_easy_setopt (n->easy, CURLOPT_TIMEOUT_MS, (long) S_TIMEOUT_MS);
        curl_easy_setopt (n->easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt (n->easy, CURLOPT_WRITEFUNCTION, s_discard);
        curl_easy_setopt (n->easy, CURLOPT_PRIVATE, n);
        curl_easy_setopt (n->easy, CURLOPT_USERAGENT, "llmq-broker webhook");
        n->attempts++;
        self->flying[slot] = n;
        curl_multi_add_handle (self->multi, n->easy);
    }
}

void
llmq_webhook_poll (llmq_webhook_t *self, uint64_t now_ms)
{
    s_start (self, now_ms);
    int running = 0;
    curl_multi_perform (self->multi, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read (self->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        CURL *easy = msg->easy_handle;
        s_notice_t *n = NULL;
        curl_easy_getinfo (easy, CURLINFO_PRIVATE, (char **) &n);
        long status = 0;
        curl_easy_getinfo (easy, CURLINFO_RESPONSE_CODE, &status);
        bool ok = msg->data.result == CURLE_OK && status >= 200 && status < 300;
        char why[128];
        snprintf (why, sizeof why, "%s", msg->data.result != CURLE_OK ? curl_easy_strerror (msg->data.result)
                                                                      : "HTTP status");
        curl_multi_remove_handle (self->multi, easy);
        curl_easy_cleanup (easy);
        for (int i = 0; i < S_IN_FLIGHT; i++) {
            if (self->flying[i] == n) {
                self->flying[i] = NULL;
            }
        }
        if (!n) {
            continue;
        }
        n->easy = NULL;
        curl_slist_free_all (n->headers);
        n->headers = NULL;
        if (ok) {
            self->sent++;
            s_notice_free (n);
        }
        else
        if (n->attempts < S_ATTEMPTS) {
            self->retried++;
            n->not_before_ms = now_ms + (1000ull << (n->attempts - 1));
            llmq_warn ("webhook %s: attempt %u failed (%s %ld): trying again", self->url, n->attempts, why, status);
            s_enqueue (self, n);
        }
        else {
            self->failed++;
            llmq_error ("webhook %s: gave up after %u attempts (%s %ld)", self->url, n->attempts, why, status);
            s_notice_free (n);
        }
    }
    s_start (self, now_ms);
    curl_multi_perform (self->multi, &running);
}

bool
llmq_webhook_busy (const llmq_webhook_t *self)
{
    if (self->waiting) {
        return true;
    }
    for (int i = 0; i < S_IN_FLIGHT; i++) {
        if (self->flying[i]) {
            return true;
        }
    }
    return false;
}

void
llmq_webhook_stats (const llmq_webhook_t *self, uint64_t *sent, uint64_t *failed, uint64_t *dropped,
                    uint64_t *retried)
{
    *sent = self->sent;
    *failed = self->failed;
    *dropped = self->dropped;
    *retried = self->retried;
}
