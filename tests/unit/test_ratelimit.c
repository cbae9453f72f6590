/*  test_ratelimit.c -- the providers' rate-limit headers (worker/provider.c:
    llmq_ratelimit_header and the parsers under it).

    The header sets below are written from the providers' documentation of
    the formats, not captured from live traffic:
      * OpenAI's "Rate limits" guide, whose header table reads
        x-ratelimit-limit-requests 60, x-ratelimit-limit-tokens 150000,
        x-ratelimit-remaining-requests 59, x-ratelimit-remaining-tokens
        149984, x-ratelimit-reset-requests 1s, x-ratelimit-reset-tokens 6m0s
        (resets are Go durations: "1s", "6m0s", "59.5s", "20ms", "1h2m3s");
      * Anthropic's "Rate limits" page: anthropic-ratelimit-{requests,
        tokens, input-tokens, output-tokens}-{limit,remaining,reset}, the
        resets "in RFC 3339 format" (2024-09-25T17:53:05Z), token counts
        rounded to the nearest thousand;
      * tests/mock (mock_openai.c, mock_anthropic.c), which sends both
        dialects the same way: the values the integration tests meet.
    Gemini sends no such headers.
*/
#include <check.h>
#include <stdint.h>
#include <string.h>

#include "provider.h"

/*  2024-09-25T17:53:05Z in unix ms. */
#define S_T0_MS 1727286785000LL

/*  One header "name: value" given as two C strings. */
static int
s_header (llmq_ratelimit_t *rl, const char *name, const char *value, int64_t now_ms)
{
    return llmq_ratelimit_header (rl, name, strlen (name), value, strlen (value), now_ms);
}

/*  A header block, as "name", "value" pairs, NULL-terminated: every one
    that is a rate-limit header must be taken. */
static void
s_headers (llmq_ratelimit_t *rl, const char *const *pairs, int64_t now_ms)
{
    llmq_ratelimit_init (rl);
    for (size_t i = 0; pairs[i]; i += 2) {
        ck_assert_msg (s_header (rl, pairs[i], pairs[i + 1], now_ms) >= 0,
                       "%s: %s refused", pairs[i], pairs[i + 1]);
    }
}

static uint64_t
s_duration (const char *s)
{
    uint64_t ms = 12345;
    ck_assert_msg (llmq_ratelimit_duration_ms (s, &ms) == 0, "\"%s\" refused", s);
    return ms;
}

static uint64_t
s_time (const char *s, int64_t now_ms)
{
    uint64_t ms = 12345;
    ck_assert_msg (llmq_rfc3339_ms (s, now_ms, &ms) == 0, "\"%s\" refused", s);
    return ms;
}


//  --------------------------------------------------------------------------
//  OpenAI's durations

//  Every form the guide shows, and the others Go's time.Duration writes.
START_TEST (test_duration_forms)
{
    ck_assert_uint_eq (s_duration ("1s"), 1000);
    ck_assert_uint_eq (s_duration ("6m0s"), 360000);
    ck_assert_uint_eq (s_duration ("59.5s"), 59500);
    ck_assert_uint_eq (s_duration ("20ms"), 20);
    ck_assert_uint_eq (s_duration ("1h2m3s"), 3723000);
    ck_assert_uint_eq (s_duration ("0s"), 0);
    ck_assert_uint_eq (s_duration ("0"), 0);            //  Go's one unitless value
    ck_assert_uint_eq (s_duration ("6ms"), 6);
    ck_assert_uint_eq (s_duration ("7.66s"), 7660);
    ck_assert_uint_eq (s_duration ("2m59.56s"), 179560);
    ck_assert_uint_eq (s_duration ("1.5h"), 5400000);
    ck_assert_uint_eq (s_duration ("1h1ms"), 3600001);  //  units may be skipped
    ck_assert_uint_eq (s_duration ("17m"), 1020000);
    ck_assert_uint_eq (s_duration ("0.1s"), 100);       //  exact: no float rounding up
    ck_assert_uint_eq (s_duration ("0.001s"), 1);
    ck_assert_uint_eq (s_duration ("1000000ns"), 1);
}
END_TEST

//  Below a ms, and fractions of one, round up: never retry early.
START_TEST (test_duration_rounds_up)
{
    ck_assert_uint_eq (s_duration ("1ns"), 1);
    ck_assert_uint_eq (s_duration ("999ns"), 1);
    ck_assert_uint_eq (s_duration ("1000001ns"), 2);
    ck_assert_uint_eq (s_duration ("500us"), 1);
    ck_assert_uint_eq (s_duration ("1\xc2\xb5s"), 1);      //  µs, U+00B5 (Go writes this)
    ck_assert_uint_eq (s_duration ("1\xce\xbcs"), 1);      //  μs, U+03BC (Go reads it too)
    ck_assert_uint_eq (s_duration ("1ms1us"), 2);
    ck_assert_uint_eq (s_duration ("0.0011s"), 2);
    ck_assert_uint_eq (s_duration ("1.0000000001s"), 1001);   //  past the ninth digit
    ck_assert_uint_eq (s_duration ("1.000000000s"), 1000);
}
END_TEST

//  Huge values stop at one day (like Retry-After) instead of overflowing.
START_TEST (test_duration_cap)
{
    ck_assert_uint_eq (s_duration ("24h"), 86400000);
    ck_assert_uint_eq (s_duration ("48h"), 86400000);
    ck_assert_uint_eq (s_duration ("23h59m59.999s"), 86399999);
    ck_assert_uint_eq (s_duration ("99999999999999999999999h"), 86400000);
    ck_assert_uint_eq (s_duration ("5124095576030431h"), 86400000);   //  h * 3.6e12 ns overflows
    ck_assert_uint_eq (s_duration ("9223372036854775807ns"), 86400000);
}
END_TEST

START_TEST (test_duration_refuses)
{
    static const char *bad[] = {
        "", "s", "1", "12", "-1s", "+1s", "1.s", ".5s", "1..5s", "1.5.5s", "1x", "1S",
        "1sec", "1 s", " 1s", "1s ", "1s1h", "1s1s", "1m1m", "1ms1s", "1us1µs",
        "1e3s", "1,5s", "s1", "ms", "1h2", "0x10s", "1\xc2s", "inf", "nan",
        "2024-09-25T17:53:05Z",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t ms = 777;
        ck_assert_msg (llmq_ratelimit_duration_ms (bad[i], &ms) == -1, "\"%s\" taken", bad[i]);
        ck_assert_uint_eq (ms, 777);
    }
    uint64_t ms = 777;
    ck_assert_int_eq (llmq_ratelimit_duration_ms (NULL, &ms), -1);
}
END_TEST


//  --------------------------------------------------------------------------
//  Anthropic's RFC 3339 times

START_TEST (test_rfc3339_forms)
{
    int64_t now = S_T0_MS - 5000;
    ck_assert_uint_eq (s_time ("2024-09-25T17:53:05Z", now), 5000);
    ck_assert_uint_eq (s_time ("2024-09-25t17:53:05z", now), 5000);
    ck_assert_uint_eq (s_time ("2024-09-25T19:53:05+02:00", now), 5000);
    ck_assert_uint_eq (s_time ("2024-09-25T10:53:05-07:00", now), 5000);
    ck_assert_uint_eq (s_time ("2024-09-25T17:53:05+00:00", now), 5000);
    ck_assert_uint_eq (s_time ("2024-09-25T17:53:05-00:00", now), 5000);
    ck_assert_uint_eq (s_time ("2024-09-25T17:53:05.5Z", now), 5500);
    ck_assert_uint_eq (s_time ("2024-09-25T17:53:05.123Z", now), 5123);
    ck_assert_uint_eq (s_time ("2024-09-25T17:53:05.1231Z", now), 5124);   //  rounds up
    ck_assert_uint_eq (s_time ("2024-09-25T17:53:05.123000000Z", now), 5123);
    ck_assert_uint_eq (s_time ("2024-09-25T17:53:05Z", now + 4999), 1);
    //  Across a day and a year; the leap day and a leap second.
    ck_assert_uint_eq (s_time ("2024-01-01T00:00:00Z", 1704067199000LL), 1000);
    ck_assert_uint_eq (s_time ("2024-02-29T00:00:00Z", 1709164799500LL), 500);
    ck_assert_uint_eq (s_time ("2016-12-31T23:59:60Z", 1483228799000LL), 1000);
}
END_TEST

//  A reset now or past is 0 ("no wait"); far ones stop at one day.
START_TEST (test_rfc3339_past_and_cap)
{
    ck_assert_uint_eq (s_time ("2024-09-25T17:53:05Z", S_T0_MS), 0);
    ck_assert_uint_eq (s_time ("2024-09-25T17:53:05Z", S_T0_MS + 1), 0);
    ck_assert_uint_eq (s_time ("1970-01-01T00:00:00Z", S_T0_MS), 0);
    ck_assert_uint_eq (s_time ("2024-09-26T17:53:05Z", S_T0_MS), 86400000);
    ck_assert_uint_eq (s_time ("9999-12-31T23:59:59Z", S_T0_MS), 86400000);
}
END_TEST

START_TEST (test_rfc3339_refuses)
{
    static const char *bad[] = {
        "", "2024-09-25", "2024-09-25T17:53:05", "2024-09-25T17:53Z", "2024-09-25 17:53:05Z",
        "2024-9-25T17:53:05Z", "24-09-25T17:53:05Z", "2024-09-25T7:53:05Z",
        "2024-13-01T00:00:00Z", "2024-00-10T00:00:00Z", "2024-09-00T00:00:00Z",
        "2024-09-31T00:00:00Z", "2023-02-29T00:00:00Z", "1900-02-29T00:00:00Z",
        "2024-09-25T24:00:00Z", "2024-09-25T17:60:00Z", "2024-09-25T17:53:61Z",
        "2024-09-25T17:53:05.Z", "2024-09-25T17:53:05,5Z", "2024-09-25T17:53:05+0200",
        "2024-09-25T17:53:05+02", "2024-09-25T17:53:05+24:00", "2024-09-25T17:53:05+02:60",
        "2024-09-25T17:53:05ZZ", "2024-09-25T17:53:05Z ", " 2024-09-25T17:53:05Z",
        "2024-09-25T17:53:05GMT", "1727286785", "Wed, 25 Sep 2024 17:53:05 GMT", "1s",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t ms = 777;
        ck_assert_msg (llmq_rfc3339_ms (bad[i], S_T0_MS, &ms) == -1, "\"%s\" taken", bad[i]);
        ck_assert_uint_eq (ms, 777);
    }
    //  2000 was a leap year (divisible by 400).
    ck_assert_uint_eq (s_time ("2000-02-29T00:00:00Z", 951782399000LL), 1000);
}
END_TEST


//  --------------------------------------------------------------------------
//  Headers

START_TEST (test_init_is_unknown)
{
    llmq_ratelimit_t rl;
    memset (&rl, 0x5a, sizeof rl);
    llmq_ratelimit_init (&rl);
    ck_assert_int_eq (rl.remaining_requests, -1);
    ck_assert_int_eq (rl.remaining_tokens, -1);
    ck_assert_uint_eq (rl.reset_requests_ms, 0);
    ck_assert_uint_eq (rl.reset_tokens_ms, 0);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 0);
}
END_TEST

//  The example of OpenAI's guide: plenty left, so the wait is the sooner
//  reset (the broker pauses nothing: no quota is at 0).
START_TEST (test_openai_guide_example)
{
    static const char *const h[] = {
        "x-ratelimit-limit-requests", "60",
        "x-ratelimit-limit-tokens", "150000",
        "x-ratelimit-remaining-requests", "59",
        "x-ratelimit-remaining-tokens", "149984",
        "x-ratelimit-reset-requests", "1s",
        "x-ratelimit-reset-tokens", "6m0s",
        NULL
    };
    llmq_ratelimit_t rl;
    s_headers (&rl, h, S_T0_MS);
    ck_assert_int_eq (rl.remaining_requests, 59);
    ck_assert_int_eq (rl.remaining_tokens, 149984);
    ck_assert_uint_eq (rl.reset_requests_ms, 1000);
    ck_assert_uint_eq (rl.reset_tokens_ms, 360000);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 1000);
}
END_TEST

//  A 429: the used-up quota's reset is the wait, whichever is sooner; both
//  used up, the later one.
START_TEST (test_openai_used_up)
{
    llmq_ratelimit_t rl;
    static const char *const requests[] = {
        "x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "20s",
        "x-ratelimit-remaining-tokens", "100", "x-ratelimit-reset-tokens", "6m0s", NULL
    };
    s_headers (&rl, requests, S_T0_MS);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 20000);

    static const char *const tokens[] = {
        "x-ratelimit-remaining-requests", "59", "x-ratelimit-reset-requests", "1s",
        "x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "6m0s", NULL
    };
    s_headers (&rl, tokens, S_T0_MS);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 360000);

    static const char *const both[] = {
        "x-ratelimit-remaining-requests", "0", "x-ratelimit-reset-requests", "59.5s",
        "x-ratelimit-remaining-tokens", "0", "x-ratelimit-reset-tokens", "1h2m3s", NULL
    };
    s_headers (&rl, both, S_T0_MS);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 3723000);

    //  Used up, its reset not said: the other reset is all there is.
    static const char *const unsaid[] = {
        "x-ratelimit-remaining-requests", "0",
        "x-ratelimit-remaining-tokens", "5", "x-ratelimit-reset-tokens", "20ms", NULL
    };
    s_headers (&rl, unsaid, S_T0_MS);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 20);

    //  Only one reset said, nothing used up.
    static const char *const one[] = { "x-ratelimit-reset-tokens", "6m0s", NULL };
    s_headers (&rl, one, S_T0_MS);
    ck_assert_int_eq (rl.remaining_requests, -1);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 360000);
}
END_TEST

//  What tests/mock sends in the OpenAI dialect: a success (reset-tokens
//  "0s": nothing to wait for) and a 429 without a retry time.
START_TEST (test_openai_mock_headers)
{
    static const char *const ok[] = {
        "x-request-id", "req_00000000000000000000000000000001",
        "openai-processing-ms", "3",
        "x-ratelimit-limit-requests", "10000",
        "x-ratelimit-remaining-requests", "9999",
        "x-ratelimit-reset-requests", "6ms",
        "x-ratelimit-limit-tokens", "30000000",
        "x-ratelimit-remaining-tokens", "29999990",
        "x-ratelimit-reset-tokens", "0s",
        NULL
    };
    llmq_ratelimit_t rl;
    s_headers (&rl, ok, S_T0_MS);
    ck_assert_int_eq (rl.remaining_requests, 9999);
    ck_assert_int_eq (rl.remaining_tokens, 29999990);
    ck_assert_uint_eq (rl.reset_requests_ms, 6);
    ck_assert_uint_eq (rl.reset_tokens_ms, 0);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 6);

    static const char *const limited[] = {
        "x-ratelimit-remaining-requests", "0",
        "x-ratelimit-reset-requests", "1s",
        "x-ratelimit-remaining-tokens", "30000000",
        "x-ratelimit-reset-tokens", "0s",
        NULL
    };
    s_headers (&rl, limited, S_T0_MS);
    ck_assert_int_eq (rl.remaining_requests, 0);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 1000);
}
END_TEST

//  Anthropic: absolute resets, against the time the answer came. The
//  tokens quota wins over the input and output ones.
START_TEST (test_anthropic_headers)
{
    static const char *const h[] = {
        "request-id", "req_018EeWyXxfu5pfWkrYcMdjWG",
        "anthropic-ratelimit-requests-limit", "1000",
        "anthropic-ratelimit-requests-remaining", "999",
        "anthropic-ratelimit-requests-reset", "2024-09-25T17:53:06Z",
        "anthropic-ratelimit-tokens-limit", "96000",
        "anthropic-ratelimit-tokens-remaining", "95000",
        "anthropic-ratelimit-tokens-reset", "2024-09-25T17:53:35Z",
        "anthropic-ratelimit-input-tokens-limit", "80000",
        "anthropic-ratelimit-input-tokens-remaining", "0",
        "anthropic-ratelimit-input-tokens-reset", "2024-09-25T17:54:05Z",
        "anthropic-ratelimit-output-tokens-limit", "16000",
        "anthropic-ratelimit-output-tokens-remaining", "16000",
        "anthropic-ratelimit-output-tokens-reset", "2024-09-25T17:53:05Z",
        NULL
    };
    llmq_ratelimit_t rl;
    s_headers (&rl, h, S_T0_MS - 250);
    ck_assert_int_eq (rl.remaining_requests, 999);
    ck_assert_uint_eq (rl.reset_requests_ms, 1250);
    ck_assert_int_eq (rl.remaining_tokens, 95000);
    ck_assert_uint_eq (rl.reset_tokens_ms, 30250);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 1250);
}
END_TEST

//  Without the tokens quota: the smaller of input and output, with its
//  reset, whatever order the headers come in.
START_TEST (test_anthropic_input_output)
{
    static const char *const h[] = {
        "anthropic-ratelimit-output-tokens-remaining", "16000",
        "anthropic-ratelimit-output-tokens-reset", "2024-09-25T17:53:06Z",
        "anthropic-ratelimit-input-tokens-reset", "2024-09-25T17:54:05Z",
        "anthropic-ratelimit-input-tokens-remaining", "0",
        NULL
    };
    llmq_ratelimit_t rl;
    s_headers (&rl, h, S_T0_MS);
    ck_assert_int_eq (rl.remaining_requests, -1);
    ck_assert_int_eq (rl.remaining_tokens, 0);
    ck_assert_uint_eq (rl.reset_tokens_ms, 60000);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 60000);

    static const char *const out_lower[] = {
        "anthropic-ratelimit-input-tokens-remaining", "80000",
        "anthropic-ratelimit-input-tokens-reset", "2024-09-25T17:53:06Z",
        "anthropic-ratelimit-output-tokens-remaining", "3000",
        "anthropic-ratelimit-output-tokens-reset", "2024-09-25T17:53:15Z",
        NULL
    };
    s_headers (&rl, out_lower, S_T0_MS);
    ck_assert_int_eq (rl.remaining_tokens, 3000);
    ck_assert_uint_eq (rl.reset_tokens_ms, 10000);

    //  A tie: the later reset (both must refill).
    static const char *const tie[] = {
        "anthropic-ratelimit-input-tokens-remaining", "0",
        "anthropic-ratelimit-input-tokens-reset", "2024-09-25T17:53:06Z",
        "anthropic-ratelimit-output-tokens-remaining", "0",
        "anthropic-ratelimit-output-tokens-reset", "2024-09-25T17:53:15Z",
        NULL
    };
    s_headers (&rl, tie, S_T0_MS);
    ck_assert_int_eq (rl.remaining_tokens, 0);
    ck_assert_uint_eq (rl.reset_tokens_ms, 10000);

    //  Only one of the two.
    static const char *const input_only[] = {
        "anthropic-ratelimit-input-tokens-remaining", "40000", NULL
    };
    s_headers (&rl, input_only, S_T0_MS);
    ck_assert_int_eq (rl.remaining_tokens, 40000);

    //  The tokens quota, once said, is the one, before or after the others.
    static const char *const late[] = {
        "anthropic-ratelimit-input-tokens-remaining", "0",
        "anthropic-ratelimit-input-tokens-reset", "2024-09-25T17:54:05Z",
        "anthropic-ratelimit-tokens-remaining", "1000",
        "anthropic-ratelimit-tokens-reset", "2024-09-25T17:53:07Z",
        NULL
    };
    s_headers (&rl, late, S_T0_MS);
    ck_assert_int_eq (rl.remaining_tokens, 1000);
    ck_assert_uint_eq (rl.reset_tokens_ms, 2000);
}
END_TEST

//  What tests/mock sends in the Anthropic dialect on a 429 with
//  retry_after=2: every quota at 0, resetting two seconds on.
START_TEST (test_anthropic_mock_429)
{
    static const char *const h[] = {
        "request-id", "req_mock_0000000000000001",
        "anthropic-organization-id", "00000000-0000-0000-0000-000000000000",
        "anthropic-ratelimit-requests-limit", "10000",
        "anthropic-ratelimit-requests-remaining", "0",
        "anthropic-ratelimit-requests-reset", "2024-09-25T17:53:07Z",
        "anthropic-ratelimit-tokens-limit", "30000000",
        "anthropic-ratelimit-tokens-remaining", "0",
        "anthropic-ratelimit-tokens-reset", "2024-09-25T17:53:07Z",
        "anthropic-ratelimit-input-tokens-remaining", "0",
        "anthropic-ratelimit-input-tokens-reset", "2024-09-25T17:53:07Z",
        "anthropic-ratelimit-output-tokens-remaining", "0",
        "anthropic-ratelimit-output-tokens-reset", "2024-09-25T17:53:07Z",
        NULL
    };
    llmq_ratelimit_t rl;
    s_headers (&rl, h, S_T0_MS);
    ck_assert_int_eq (rl.remaining_requests, 0);
    ck_assert_int_eq (rl.remaining_tokens, 0);
    ck_assert_uint_eq (llmq_ratelimit_wait_ms (&rl), 2000);
}
END_TEST

//  Names in any case; values with spaces around; the last of two counts;
//  names not NUL-terminated (curl's header line).
START_TEST (test_header_matching)
{
    llmq_ratelimit_t rl;
    llmq_ratelimit_init (&rl);
    ck_assert_int_eq (s_header (&rl, "X-RateLimit-Remaining-Requests", " 42 ", S_T0_MS), 1);
    ck_assert_int_eq (rl.remaining_requests, 42);
    ck_assert_int_eq (s_header (&rl, "x-ratelimit-remaining-requests", "41\r\n", S_T0_MS), 1);
    ck_assert_int_eq (rl.remaining_requests, 41);
    ck_assert_int_eq (s_header (&rl, "ANTHROPIC-RATELIMIT-TOKENS-REMAINING", "7000", S_T0_MS), 1);
    ck_assert_int_eq (rl.remaining_tokens, 7000);

    const char *line = "x-ratelimit-reset-requests: 2s\r\n";
    ck_assert_int_eq (llmq_ratelimit_header (&rl, line, 26, line + 28, 2, S_T0_MS), 1);
    ck_assert_uint_eq (rl.reset_requests_ms, 2000);
    //  A prefix of a name is not the name.
    ck_assert_int_eq (llmq_ratelimit_header (&rl, line, 25, line + 28, 2, S_T0_MS), 0);
}
END_TEST

//  Other headers are not ours (0); ours with a bad value are refused (-1)
//  and change nothing.
START_TEST (test_header_refusals)
{
    llmq_ratelimit_t rl;
    llmq_ratelimit_init (&rl);
    static const char *const others[] = {
        "content-type", "application/json",
        "retry-after", "20",
        "x-request-id", "req_1",
        "x-ratelimit", "5",
        "x-ratelimit-", "5",
        "x-ratelimit-limit-requests", "60",
        "x-ratelimit-limit-tokens", "150000",
        "x-ratelimit-remaining-requests-day", "5",
        "anthropic-ratelimit-requests-limit", "50",
        "anthropic-ratelimit-unified-reset", "1727286785",
        "x-goog-api-client", "gl-python",       //  Gemini: nothing of the kind
        NULL
    };
    for (size_t i = 0; others[i]; i += 2) {
        ck_assert_msg (s_header (&rl, others[i], others[i + 1], S_T0_MS) == 0, "%s taken", others[i]);
    }
    static const char *const bad[] = {
        "x-ratelimit-remaining-requests", "abc",
        "x-ratelimit-remaining-requests", "-5",
        "x-ratelimit-remaining-requests", "5.0",
        "x-ratelimit-remaining-requests", "",
        "x-ratelimit-remaining-requests", "99999999999999999999",
        "x-ratelimit-remaining-tokens", "1 000",
        "x-ratelimit-reset-requests", "1 s",
        "x-ratelimit-reset-tokens", "2024-09-25T17:53:05Z",   //  OpenAI's are durations
        "anthropic-ratelimit-requests-reset", "1s",           //  Anthropic's are times
        "anthropic-ratelimit-tokens-reset", "2024-09-25T17:53:05",
        "anthropic-ratelimit-input-tokens-remaining", "lots",
        "x-ratelimit-reset-requests", "1111111111111111111111111111111111111111111111111111111111111111s",
        NULL
    };
    for (size_t i = 0; bad[i]; i += 2) {
        ck_assert_msg (s_header (&rl, bad[i], bad[i + 1], S_T0_MS) == -1, "%s: %s taken",
                       bad[i], bad[i + 1]);
    }
    ck_assert_int_eq (rl.remaining_requests, -1);
    ck_assert_int_eq (rl.remaining_tokens, -1);
    ck_assert_uint_eq (rl.reset_requests_ms, 0);
    ck_assert_uint_eq (rl.reset_tokens_ms, 0);
    for (size_t q = 0; q < 4; q++) {
        ck_assert_int_eq (rl.quota_remaining[q], -1);
        ck_assert_uint_eq (rl.quota_reset_ms[q], 0);
    }
}
END_TEST


static Suite *
s_ratelimit_suite (void)
{
    Suite *suite = suite_create ("ratelimit");
    TCase *durations = tcase_create ("durations");
    tcase_add_test (durations, test_duration_forms);
    tcase_add_test (durations, test_duration_rounds_up);
    tcase_add_test (durations, test_duration_cap);
    tcase_add_test (durations, test_duration_refuses);
    suite_add_tcase (suite, durations);

    TCase *times = tcase_create ("times");
    tcase_add_test (times, test_rfc3339_forms);
    tcase_add_test (times, test_rfc3339_past_and_cap);
    tcase_add_test (times, test_rfc3339_refuses);
    suite_add_tcase (suite, times);

    TCase *headers = tcase_create ("headers");
    tcase_add_test (headers, test_init_is_unknown);
    tcase_add_test (headers, test_openai_guide_example);
    tcase_add_test (headers, test_openai_used_up);
    tcase_add_test (headers, test_openai_mock_headers);
    tcase_add_test (headers, test_anthropic_headers);
    tcase_add_test (headers, test_anthropic_input_output);
    tcase_add_test (headers, test_anthropic_mock_429);
    tcase_add_test (headers, test_header_matching);
    tcase_add_test (headers, test_header_refusals);
    suite_add_tcase (suite, headers);
    return suite;
}

int
main (void)
{
    SRunner *runner = srunner_create (s_ratelimit_suite ());
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? 1 : 0;
}
