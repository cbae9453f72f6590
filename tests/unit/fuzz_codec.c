/*  fuzz_codec.c -- libFuzzer harness for the wire decoder.

    Input: byte 0 is the command, the rest is the body. Whatever decodes must
    survive a second trip: encoding it and decoding that again succeeds
    (unless a required field was zero, which the encoder leaves out), and
    encoding the second decode gives the very same bytes.

    Build (clang only), with codec.c compiled in so it is instrumented:
        clang -g -O1 -fsanitize=fuzzer,address,undefined -Icommon -Iclient/include \
              tests/unit/fuzz_codec.c common/codec.c $(pkg-config --cflags --libs libczmq msgpack)
    Run: ./fuzz_codec -max_len=4096 -runs=1000000 [corpus/]
*/
#include "codec.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    llmq_arena_t *arena = llmq_arena_new ();
    if (!arena) {
        return 0;
    }
    char why[256];
    llmq_msg_t first, second;
    if (llmq_msg_decode_body (data[0], data + 1, size - 1, &first, arena, why, sizeof why) == LLMQ_OK) {
        llmq_buf_t once, twice;
        llmq_buf_init (&once);
        llmq_buf_init (&twice);
        if (llmq_msg_encode_body (&first, &once) == 0
        &&  llmq_msg_decode_body (data[0], once.data, once.size, &second, arena, why, sizeof why) == LLMQ_OK) {
            if (llmq_msg_encode_body (&second, &twice) != 0
            ||  once.size != twice.size || memcmp (once.data, twice.data, once.size) != 0) {
                abort ();       /* decode and encode disagree */
            }
        }
        llmq_buf_free (&once);
        llmq_buf_free (&twice);
    }
    llmq_arena_destroy (&arena);
    return 0;
}
