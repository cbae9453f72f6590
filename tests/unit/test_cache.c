/*  test_cache.c -- the response cache: the request key (broker/cache.c)
    and the entries in the store (llmq_store_cache_*), driven the way the
    broker drives them, one write transaction per turn, with the clock in
    the test's hands: TTLs of hours pass in no time and nothing sleeps.

    Each store test opens a store in a fresh mkdtemp directory and removes
    it after.
*/
#include "cache.h"
#include "log.h"
#include "store.h"

#include <check.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_SEC   1000000ull                      //  µs
#define S_T0    (1767225600ull * S_SEC)         //  2026-01-01T00:00:00Z
#define S_MIB   (1ull << 20)

/* ------------------------------------------------------------------------
   The key
   ------------------------------------------------------------------------ */

static const char *s_base =
    "{\"messages\":[{\"role\":\"user\",\"content\":\"What is a queue?\"}],\"temperature\":0,\"max_tokens\":64}";

static void
s_key (const char *model, const char *body, uint8_t key[LLMQ_CACHE_KEY_LEN])
{
    ck_assert_msg (llmq_cache_key (model, body, key, NULL) == 0, "no key for %s", body);
}

static bool
s_same (const char *model_a, const char *a, const char *model_b, const char *b)
{
    uint8_t ka[LLMQ_CACHE_KEY_LEN], kb[LLMQ_CACHE_KEY_LEN];
    s_key (model_a, a, ka);
    s_key (model_b, b, kb);
    return memcmp (ka, kb, sizeof ka) == 0;
}

START_TEST (test_key_ignores_order_and_delivery)
{
    //  Keys in another order, spaces, and what only changes the delivery:
    //  stream, stream_options, user, metadata, a "model" of the body's own.
    const char *other =
        "{ \"user\": \"alice\", \"stream\": true, \"stream_options\": {\"include_usage\": true},\n"
        "  \"max_tokens\": 64, \"metadata\": {\"run\": 7}, \"model\": \"whatever\",\n"
        "  \"temperature\": 0.0,\n"
        "  \"messages\": [ {\"content\": \"What is a queue?\", \"role\": \"user\"} ] }";
    ck_assert (s_same ("gpt", s_base, "gpt", other));
    //  The key is the SHA-256 of its canonical form: 32 bytes, and known.
    uint8_t key[LLMQ_CACHE_KEY_LEN];
    s_key ("gpt", s_base, key);
    char hex[2 * LLMQ_CACHE_KEY_LEN + 1];
    llmq_cache_key_hex (key, hex);
    ck_assert_uint_eq (strlen (hex), 64);
}
END_TEST

START_TEST (test_key_changes_with_the_answer)
{
    //  What changes the answer changes the key.
    ck_assert (!s_same ("gpt", s_base, "gpt",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"What is a queue?\"}],\"temperature\":0.7,\"max_tokens\":64}"));
    ck_assert (!s_same ("gpt", s_base, "gpt",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"What is a stack?\"}],\"temperature\":0,\"max_tokens\":64}"));
    ck_assert (!s_same ("gpt", s_base, "gpt",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"What is a queue?\"}],\"temperature\":0,\"max_tokens\":65}"));
    ck_assert (!s_same ("gpt", s_base, "gpt",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"What is a queue?\"}],\"temperature\":0}"));
    ck_assert (!s_same ("gpt", s_base, "gpt",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"What is a queue?\"}],\"temperature\":0,\"max_tokens\":64,"
        "\"seed\":1}"));
    ck_assert (!s_same ("gpt", s_base, "gpt",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"What is a queue?\"}],\"temperature\":0,\"max_tokens\":64,"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}"));
    //  Another model group: never the same answer.
    ck_assert (!s_same ("gpt", s_base, "claude", s_base));
}
END_TEST

START_TEST (test_key_refuses_what_is_not_a_request)
{
    uint8_t key[LLMQ_CACHE_KEY_LEN];
    ck_assert_int_eq (llmq_cache_key ("gpt", "{\"messages\":[", key, NULL), -1);
    ck_assert_int_eq (llmq_cache_key ("gpt", "{\"prompt\":\"hi\"}", key, NULL), -1);
    ck_assert_int_eq (llmq_cache_key ("gpt", "[1,2]", key, NULL), -1);
    ck_assert_int_eq (llmq_cache_key ("gpt", "{\"messages\":\"hi\"}", key, NULL), -1);
    bool zero = true;
    ck_assert_int_eq (llmq_cache_key ("gpt", "{\"messages\":[],\"temperature\":0.2}", key, &zero), 0);
    ck_assert (!zero);
    ck_assert_int_eq (llmq_cache_key ("gpt", "{\"messages\":[],\"temperature\":0.0}", key, &zero), 0);
    ck_assert (zero);
}
END_TEST

START_TEST (test_candidates)
{
    llmq_cache_policy_t on = { .enabled = true, .auto_temperature_zero = true, .default_ttl_ms = 3600000 };
    llmq_cache_policy_t manual = { .enabled = true, .auto_temperature_zero = false, .default_ttl_ms = 3600000 };
    llmq_cache_policy_t off = { .enabled = false, .auto_temperature_zero = true, .default_ttl_ms = 3600000 };
    const char *warm = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0.5}";
    const char *plain = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    uint8_t key[LLMQ_CACHE_KEY_LEN];
    uint64_t ttl = 0;
    llmq_job_t job = { .model = "gpt", .body = s_base };
    //  Temperature 0, nothing asked: only when the config caches it.
    ck_assert (llmq_cache_candidate (&on, &job, key, &ttl));
    ck_assert_uint_eq (ttl, 3600000);
    ck_assert (!llmq_cache_candidate (&manual, &job, key, &ttl));
    ck_assert (!llmq_cache_candidate (&off, &job, key, &ttl));
    job.body = warm;
    ck_assert (!llmq_cache_candidate (&on, &job, key, &ttl));
    job.body = plain;
    ck_assert (!llmq_cache_candidate (&on, &job, key, &ttl));
    //  Asked with a TTL: any temperature, its own TTL; not when disabled.
    job.body = warm;
    job.cache_ttl_ms = 200;
    ck_assert (llmq_cache_candidate (&manual, &job, key, &ttl));
    ck_assert_uint_eq (ttl, 200);
    ck_assert (!llmq_cache_candidate (&off, &job, key, &ttl));
    //  -1: never, not even at temperature 0.
    job.body = s_base;
    job.cache_ttl_ms = -1;
    ck_assert (!llmq_cache_candidate (&on, &job, key, &ttl));
    //  A body that does not parse is not cacheable.
    job.body = "{\"messages\":[{\"role\":";
    job.cache_ttl_ms = 1000;
    ck_assert (!llmq_cache_candidate (&on, &job, key, &ttl));
}
END_TEST

typedef struct {
    char text[1024];
    size_t len;
    uint32_t pieces;
    uint32_t next_seq;
    bool in_order;
    bool cut_utf8;
    size_t longest;
} s_pieces_t;

static void
s_on_piece (void *arg, uint32_t seq, const char *piece, size_t len)
{
    s_pieces_t *p = (s_pieces_t *) arg;
    p->in_order &= seq == p->next_seq;
    p->next_seq = seq + 1;
    p->pieces++;
    //  A piece never starts inside a UTF-8 sequence.
    p->cut_utf8 |= ((unsigned char) piece[0] & 0xC0) == 0x80;
    p->longest = len > p->longest ? len : p->longest;
    memcpy (p->text + p->len, piece, len);
    p->len += len;
    p->text[p->len] = 0;
}

START_TEST (test_split_on_utf8_boundaries)
{
    //  100 bytes of 2-, 3- and 4-byte sequences after one ASCII byte: a
    //  64-byte cut would land inside one of them.
    char text[256] = "x";
    for (int i = 0; i < 11; i++) {
        strcat (text, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x99\x82");      //  é € 🙂
    }
    s_pieces_t p = { .in_order = true };
    uint32_t n = llmq_cache_split (text, 64, s_on_piece, &p);
    ck_assert_uint_eq (n, p.pieces);
    ck_assert_uint_eq (n, 2);
    ck_assert (p.in_order);
    ck_assert (!p.cut_utf8);
    ck_assert_uint_le (p.longest, 64);
    ck_assert_str_eq (p.text, text);
    //  Nothing to say: no piece.
    s_pieces_t none = { .in_order = true };
    ck_assert_uint_eq (llmq_cache_split ("", 64, s_on_piece, &none), 0);
    //  Pieces smaller than a character still never cut one.
    s_pieces_t tiny = { .in_order = true };
    ck_assert_uint_eq (llmq_cache_split ("\xf0\x9f\x99\x82\xc3\xa9", 1, s_on_piece, &tiny), 2);
    ck_assert (!tiny.cut_utf8);
    ck_assert_str_eq (tiny.text, "\xf0\x9f\x99\x82\xc3\xa9");
}
END_TEST

/* ------------------------------------------------------------------------
   The entries, in the store
   ------------------------------------------------------------------------ */

static char s_dir[64];
static llmq_arena_t *s_arena;

static void
s_setup (void)
{
    snprintf (s_dir, sizeof s_dir, "/tmp/llmq-test-cache-XXXXXX");
    ck_assert_ptr_nonnull (mkdtemp (s_dir));
    s_arena = llmq_arena_new ();
    ck_assert_ptr_nonnull (s_arena);
}

static void
s_teardown (void)
{
    llmq_arena_destroy (&s_arena);
    char command[128];
    snprintf (command, sizeof command, "rm -rf '%s'", s_dir);
    ck_assert_int_eq (system (command), 0);
}

static llmq_store_opts_t
s_opts (uint64_t cache_max_bytes)
{
    llmq_store_opts_t opts = {
        .sync = false,
        .map_size = 16 * S_MIB,
        .max_map_size = 64 * S_MIB,
        .prio_offset_us = { 0, 5 * S_SEC, 30 * S_SEC, 120 * S_SEC },
        .result_ttl_us = 3600 * S_SEC,
        .max_attempts = 3,
        .backoff_us = 1 * S_SEC,
        .backoff_max_us = 10 * S_SEC,
        .cache_max_bytes = cache_max_bytes,
    };
    return opts;
}

static llmq_store_t *
s_open (uint64_t cache_max_bytes, uint64_t now)
{
    char err[256] = "";
    llmq_store_opts_t opts = s_opts (cache_max_bytes);
    llmq_store_t *store = llmq_store_open (s_dir, &opts, now, err, sizeof err);
    ck_assert_msg (store, "open failed: %s", err);
    return store;
}

//  A key per letter, as if from a request.
static void
s_k (char letter, uint8_t key[LLMQ_STORE_CACHE_KEY])
{
    memset (key, letter, LLMQ_STORE_CACHE_KEY);
}

//  An answer whose content is `content`, with the fields of the job that
//  produced it, which the cache must not keep.
static llmq_result_t
s_answer (const char *content)
{
    llmq_result_t r = { .id = 42, .state = LLMQ_STATE_DONE, .content = content, .finish_reason = "stop",
                        .deployment = "mock", .request_id = "req-1", .model = "gpt", .batch_id = "b",
                        .custom_id = "c", .attempts = 2, .cost_micro = 1234, .prompt_tokens = 4,
                        .completion_tokens = 6, .enqueued_us = S_T0, .started_us = S_T0, .finished_us = S_T0,
                        .latency_us = 1500, .http_status = 200 };
    return r;
}

static void
s_put (llmq_store_t *store, char letter, const char *content, uint64_t ttl_us, uint64_t now, size_t *evicted)
{
    uint8_t key[LLMQ_STORE_CACHE_KEY];
    s_k (letter, key);
    llmq_result_t a = s_answer (content);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    int rc = llmq_store_cache_put (store, key, ttl_us, 0, &a, now, evicted);
    ck_assert_msg (rc == 0, "put %c gave %d", letter, rc);
    ck_assert_int_eq (llmq_store_commit (store), 0);
}

//  0 for a live hit (content checked), else the error.
static int
s_get (llmq_store_t *store, char letter, const char *content, uint64_t now)
{
    uint8_t key[LLMQ_STORE_CACHE_KEY];
    s_k (letter, key);
    llmq_result_t out;
    ck_assert_int_eq (llmq_store_begin (store), 0);
    int rc = llmq_store_cache_get (store, key, now, &out, NULL, s_arena);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    if (rc == 0 && content) {
        ck_assert_str_eq (out.content, content);
    }
    return rc;
}

static llmq_store_cache_stats_t
s_cstats (llmq_store_t *store)
{
    llmq_store_cache_stats_t st;
    ck_assert_int_eq (llmq_store_cache_stats (store, &st), 0);
    return st;
}

static size_t
s_tick (llmq_store_t *store, uint64_t now)
{
    ck_assert_int_eq (llmq_store_begin (store), 0);
    size_t n = llmq_store_tick (store, now, 1000, NULL, NULL, s_arena);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    return n;
}

START_TEST (test_put_get)
{
    llmq_store_t *store = s_open (0, S_T0);
    ck_assert_int_eq (s_get (store, 'a', NULL, S_T0), LLMQ_ERR_NOT_FOUND);
    s_put (store, 'a', "a queue is a line", 60 * S_SEC, S_T0, NULL);
    uint8_t key[LLMQ_STORE_CACHE_KEY];
    s_k ('a', key);
    llmq_result_t out;
    uint64_t expires = 0;
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (llmq_store_cache_get (store, key, S_T0 + S_SEC, &out, &expires, s_arena), 0);
    llmq_store_abort (store);
    ck_assert_uint_eq (expires, S_T0 + 60 * S_SEC);
    //  The answer, without the job that produced it.
    ck_assert_str_eq (out.content, "a queue is a line");
    ck_assert_str_eq (out.finish_reason, "stop");
    ck_assert_str_eq (out.deployment, "mock");
    ck_assert_str_eq (out.request_id, "req-1");
    ck_assert_uint_eq (out.prompt_tokens, 4);
    ck_assert_uint_eq (out.completion_tokens, 6);
    ck_assert_uint_eq (out.state, LLMQ_STATE_DONE);
    ck_assert_uint_eq (out.id, 0);
    ck_assert_ptr_null (out.model);
    ck_assert_ptr_null (out.batch_id);
    ck_assert_uint_eq (out.attempts, 0);
    ck_assert_uint_eq (out.cost_micro, 0);
    ck_assert_uint_eq (out.enqueued_us, 0);
    llmq_store_cache_stats_t st = s_cstats (store);
    ck_assert_uint_eq (st.entries, 1);
    ck_assert_uint_gt (st.bytes, 32);
    //  A put under the same key replaces the entry; the bytes count once.
    s_put (store, 'a', "a queue is a line", 60 * S_SEC, S_T0 + 2 * S_SEC, NULL);
    ck_assert_uint_eq (s_cstats (store).entries, 1);
    ck_assert_uint_eq (s_cstats (store).bytes, st.bytes);
    //  Another key is another entry.
    ck_assert_int_eq (s_get (store, 'b', NULL, S_T0), LLMQ_ERR_NOT_FOUND);
    llmq_store_close (&store);
}
END_TEST

START_TEST (test_ttl_expiry_by_tick)
{
    llmq_store_t *store = s_open (0, S_T0);
    s_put (store, 'a', "short", 1 * S_SEC, S_T0, NULL);
    uint64_t one = s_cstats (store).bytes;
    s_put (store, 'b', "long", 10 * S_SEC, S_T0, NULL);
    uint64_t both = s_cstats (store).bytes;
    ck_assert_int_eq (s_get (store, 'a', "short", S_T0 + S_SEC - 1), 0);
    //  At its expiry it is gone for readers, even before the timer runs.
    ck_assert_int_eq (s_get (store, 'a', NULL, S_T0 + S_SEC), LLMQ_ERR_NOT_FOUND);
    ck_assert_uint_eq (s_cstats (store).entries, 2);
    //  The timer drops it, and only it.
    s_tick (store, S_T0 + S_SEC - 1);
    ck_assert_uint_eq (s_cstats (store).entries, 2);
    s_tick (store, S_T0 + S_SEC);
    ck_assert_uint_eq (s_cstats (store).entries, 1);
    ck_assert_uint_eq (s_cstats (store).bytes, both - one);
    ck_assert_int_eq (s_get (store, 'b', "long", S_T0 + 9 * S_SEC), 0);
    s_tick (store, S_T0 + 10 * S_SEC);
    ck_assert_uint_eq (s_cstats (store).entries, 0);
    ck_assert_uint_eq (s_cstats (store).bytes, 0);
    ck_assert_uint_eq (s_cstats (store).evictions, 0);
    llmq_store_close (&store);
}
END_TEST

START_TEST (test_stale_kept_for_serve_stale)
{
    llmq_store_t *store = s_open (0, S_T0);
    uint8_t key[LLMQ_STORE_CACHE_KEY];
    s_k ('s', key);
    llmq_result_t a = s_answer ("old news");
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (llmq_store_cache_put (store, key, 1 * S_SEC, 5 * S_SEC, &a, S_T0, NULL), 0);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    //  Past its TTL: stale, still readable as such; past the stale time: gone.
    s_tick (store, S_T0 + 2 * S_SEC);
    llmq_result_t out;
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (llmq_store_cache_get (store, key, S_T0 + 2 * S_SEC, &out, NULL, s_arena), LLMQ_ERR_EXPIRED);
    llmq_store_abort (store);
    ck_assert_str_eq (out.content, "old news");
    s_tick (store, S_T0 + 6 * S_SEC);
    ck_assert_uint_eq (s_cstats (store).entries, 0);
    llmq_store_close (&store);
}
END_TEST

START_TEST (test_lru_eviction_under_the_bound)
{
    //  Entries of equal size; the bound holds three and a half of them.
    llmq_store_t *store = s_open (0, S_T0);
    s_put (store, 'x', "0123456789", 3600 * S_SEC, S_T0, NULL);
    uint64_t one = s_cstats (store).bytes;
    llmq_store_close (&store);
    store = s_open (one * 7 / 2, S_T0);
    size_t evicted = 0;
    //  x (from before) is least recently used, then a, b.
    s_put (store, 'a', "aaaaaaaaaa", 3600 * S_SEC, S_T0 + 1, &evicted);
    s_put (store, 'b', "bbbbbbbbbb", 3600 * S_SEC, S_T0 + 2, &evicted);
    ck_assert_uint_eq (evicted, 0);
    ck_assert_uint_eq (s_cstats (store).entries, 3);
    ck_assert_uint_eq (s_cstats (store).bytes, 3 * one);
    //  A hit on x moves it to the back: a is now the least recently used.
    ck_assert_int_eq (s_get (store, 'x', "0123456789", S_T0 + 3), 0);
    s_put (store, 'c', "cccccccccc", 3600 * S_SEC, S_T0 + 4, &evicted);
    ck_assert_uint_eq (evicted, 1);
    ck_assert_uint_eq (s_cstats (store).entries, 3);
    ck_assert_uint_eq (s_cstats (store).bytes, 3 * one);
    ck_assert_int_eq (s_get (store, 'a', NULL, S_T0 + 5), LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (s_get (store, 'b', "bbbbbbbbbb", S_T0 + 6), 0);
    ck_assert_int_eq (s_get (store, 'x', "0123456789", S_T0 + 7), 0);
    ck_assert_int_eq (s_get (store, 'c', "cccccccccc", S_T0 + 8), 0);
    //  Order now b, x, c: two more puts evict b, then x.
    s_put (store, 'd', "dddddddddd", 3600 * S_SEC, S_T0 + 9, &evicted);
    ck_assert_uint_eq (evicted, 1);
    s_put (store, 'e', "eeeeeeeeee", 3600 * S_SEC, S_T0 + 10, &evicted);
    ck_assert_uint_eq (evicted, 1);
    ck_assert_uint_eq (s_cstats (store).entries, 3);
    ck_assert_uint_eq (s_cstats (store).evictions, 3);
    ck_assert_int_eq (s_get (store, 'b', NULL, S_T0 + 11), LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (s_get (store, 'x', NULL, S_T0 + 11), LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (s_get (store, 'c', "cccccccccc", S_T0 + 11), 0);
    //  An answer larger than the whole bound is not cached, and evicts nothing.
    char big[4096];
    memset (big, 'z', sizeof big - 1);
    big[sizeof big - 1] = 0;
    uint8_t key[LLMQ_STORE_CACHE_KEY];
    s_k ('z', key);
    llmq_result_t a = s_answer (big);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (llmq_store_cache_put (store, key, S_SEC, 0, &a, S_T0 + 12, &evicted), LLMQ_ERR_TOO_LARGE);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    ck_assert_uint_eq (s_cstats (store).entries, 3);
    llmq_store_close (&store);
    //  A lower bound at the next open: the timer evicts down to it, least
    //  recently used first (d, then e: c was read last).
    store = s_open (one * 3 / 2, S_T0);
    s_tick (store, S_T0 + 13);
    ck_assert_uint_eq (s_cstats (store).entries, 1);
    ck_assert_uint_eq (s_cstats (store).evictions, 5);
    ck_assert_int_eq (s_get (store, 'e', NULL, S_T0 + 14), LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (s_get (store, 'c', "cccccccccc", S_T0 + 14), 0);
    llmq_store_close (&store);
}
END_TEST

START_TEST (test_survives_reopen)
{
    llmq_store_t *store = s_open (S_MIB, S_T0);
    s_put (store, 'a', "kept", 3600 * S_SEC, S_T0, NULL);
    llmq_store_cache_stats_t before = s_cstats (store);
    llmq_store_close (&store);
    store = s_open (S_MIB, S_T0 + S_SEC);
    ck_assert_int_eq (s_get (store, 'a', "kept", S_T0 + 2 * S_SEC), 0);
    llmq_store_cache_stats_t after = s_cstats (store);
    ck_assert_uint_eq (after.entries, 1);
    ck_assert_uint_eq (after.bytes, before.bytes);
    llmq_store_close (&store);
}
END_TEST

START_TEST (test_submit_cached_records_a_finished_job)
{
    llmq_store_t *store = s_open (0, S_T0);
    llmq_job_t jobs[3] = {
        { .model = "gpt", .body = s_base, .batch_id = "nightly", .custom_id = "r1", .idem_key = "k1",
          .priority = 2 },
        { .model = "gpt", .body = s_base, .batch_id = "nightly", .custom_id = "r2" },
        { .model = "gpt", .body = s_base, .batch_id = "nightly", .custom_id = "r3", .deadline_us = S_T0 + S_SEC },
    };
    llmq_result_t hit = s_answer ("from the cache");
    hit.attempts = 0;
    const llmq_result_t *answers[3] = { &hit, NULL, &hit };
    llmq_result_t finals[3];
    uint8_t dups[3];
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (llmq_store_submit_cached (store, jobs, 3, S_T0, dups, answers, finals), 0);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    ck_assert_uint_eq (jobs[0].id + 1, jobs[1].id);
    ck_assert_uint_eq (jobs[1].id + 1, jobs[2].id);
    ck_assert (!dups[0] && !dups[1] && !dups[2]);
    ck_assert_str_eq (finals[0].content, "from the cache");
    //  The hit is done, cached, free, never attempted; the miss is queued.
    llmq_result_t st;
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (llmq_store_status (store, jobs[0].id, &st, s_arena), 0);
    ck_assert_uint_eq (st.state, LLMQ_STATE_DONE);
    ck_assert (st.cached);
    ck_assert_uint_eq (st.cost_micro, 0);
    ck_assert_uint_eq (st.attempts, 0);
    ck_assert_str_eq (st.content, "from the cache");
    ck_assert_str_eq (st.deployment, "mock");
    ck_assert_str_eq (st.custom_id, "r1");
    ck_assert_uint_eq (st.priority, 2);
    ck_assert_uint_eq (st.enqueued_us, S_T0);
    ck_assert_uint_eq (st.finished_us, S_T0);
    ck_assert_int_eq (llmq_store_status (store, jobs[1].id, &st, s_arena), 0);
    ck_assert_uint_eq (st.state, LLMQ_STATE_QUEUED);
    const llmq_route_stats_t *routes;
    size_t nr = llmq_store_routes (store, &routes);
    ck_assert_uint_eq (nr, 1);
    ck_assert_uint_eq (routes[0].ready[0] + routes[0].ready[1] + routes[0].ready[2] + routes[0].ready[3], 1);
    //  The batch counts all three, two of them done.
    llmq_result_t *page;
    size_t n;
    uint64_t next;
    bool more;
    llmq_batch_counts_t counts;
    ck_assert_int_eq (llmq_store_fetch (store, "nightly", 0, 10, &page, &n, &next, &more, &counts, s_arena), 0);
    ck_assert_uint_eq (counts.total, 3);
    ck_assert_uint_eq (counts.done, 2);
    ck_assert_uint_eq (n, 2);
    llmq_store_abort (store);
    //  Its idempotency key names it: a resubmit is a duplicate of it.
    llmq_job_t again = { .model = "gpt", .body = s_base, .idem_key = "k1" };
    const llmq_result_t *one[1] = { &hit };
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (llmq_store_submit_cached (store, &again, 1, S_T0 + 1, dups, one, finals), 0);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    ck_assert (dups[0]);
    ck_assert_uint_eq (again.id, jobs[0].id);
    //  Ids go on after a reopen; nothing of the hits is live.
    llmq_store_close (&store);
    store = s_open (0, S_T0 + 2);
    llmq_job_t later = { .model = "gpt", .body = s_base };
    bool dup;
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (llmq_store_submit (store, &later, S_T0 + 2, &dup), 0);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    ck_assert_uint_eq (later.id, jobs[2].id + 1);
    //  Past the result TTL the hit's result, key and membership go.
    s_tick (store, S_T0 + 3600 * S_SEC);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (llmq_store_status (store, jobs[0].id, &st, s_arena), LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (llmq_store_fetch (store, "nightly", 0, 10, &page, &n, &next, &more, &counts, s_arena), 0);
    ck_assert_uint_eq (counts.total, 1);
    ck_assert_uint_eq (counts.done, 0);
    llmq_store_abort (store);
    llmq_store_close (&store);
}
END_TEST

static Suite *
s_cache_suite (void)
{
    Suite *suite = suite_create ("cache");
    TCase *key = tcase_create ("key");
    tcase_add_test (key, test_key_ignores_order_and_delivery);
    tcase_add_test (key, test_key_changes_with_the_answer);
    tcase_add_test (key, test_key_refuses_what_is_not_a_request);
    tcase_add_test (key, test_candidates);
    tcase_add_test (key, test_split_on_utf8_boundaries);
    suite_add_tcase (suite, key);

    TCase *store = tcase_create ("store");
    tcase_add_checked_fixture (store, s_setup, s_teardown);
    tcase_add_test (store, test_put_get);
    tcase_add_test (store, test_ttl_expiry_by_tick);
    tcase_add_test (store, test_stale_kept_for_serve_stale);
    tcase_add_test (store, test_lru_eviction_under_the_bound);
    tcase_add_test (store, test_survives_reopen);
    tcase_add_test (store, test_submit_cached_records_a_finished_job);
    suite_add_tcase (suite, store);
    return suite;
}

int
main (void)
{
    llmq_log_set_level (LLMQ_LOG_WARN);
    SRunner *runner = srunner_create (s_cache_suite ());
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
