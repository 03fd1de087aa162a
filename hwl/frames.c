/* The NIC drivers' copy of a SEND's frames into their transmit buffers (hwl/frames.py
 * loads this). A SEND of 100 64-byte frames cost CPython 100 slice copies and
 * their index arithmetic, a fifth of the driver's time per SEND; here it is one
 * call.
 *
 * Frame k (lens[k] bytes at data + starts[k]) goes to slot (first + k) % slots of
 * the ring of buffers at ring + base + slot * stride; a frame shorter than
 * min_len is padded with zeros to it (no stale bytes of an earlier frame go on
 * the wire). out_lens[k] is the length written.
 *
 * No bounds are checked here: the Python side checks every length first.
 */
#include <stdint.h>
#include <string.h>

void frames_scatter(uint8_t *ring, uint32_t base, uint32_t stride, uint32_t slots,
                    uint32_t first, const uint8_t *data, const uint32_t *starts,
                    const uint16_t *lens, uint32_t n, uint32_t min_len, uint16_t *out_lens) {
    uint32_t slot = first;
    for (uint32_t k = 0; k < n; k++) {
        uint8_t *to = ring + base + (size_t)slot * stride;
        uint32_t len = lens[k];
        memcpy(to, data + starts[k], len);
        if (len < min_len) {
            memset(to + len, 0, min_len - len);
            len = min_len;
        }
        out_lens[k] = (uint16_t)len;
        slot = slot + 1 == slots ? 0 : slot + 1;
    }
}

/* A watched doorbell (guest/abi.h, struct hwl_watch): store the new value of the
 * watched word, then read the sleep word, in this order across CPUs (a sequentially
 * consistent store is a locked exchange on x86: the read cannot pass it). The stub
 * stores its sleep word and then reads the word, likewise. Returns the sleep word:
 * 0, HWL_WATCH_ASLEEP or HWL_WATCH_ENDED. */
uint32_t frames_ring(uint8_t *mem, uint32_t word, uint32_t value, uint32_t sleep)
{
    __atomic_store_n((uint32_t *)(mem + word), value, __ATOMIC_SEQ_CST);
    return __atomic_load_n((uint32_t *)(mem + sleep), __ATOMIC_SEQ_CST);
}
