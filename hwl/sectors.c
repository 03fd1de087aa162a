/* The checksummed sector layout's loops in C (hwl/sectors.py loads this): the
 * filter driver's (drivers/filter) and the kernel's sumcopyto call's.
 *
 * A 1 MiB read through the filter checks 2048 sector sums. In CPython that is
 * 2048 calls and slices, 0.7-1.6 ms: more than the disk driver's whole read.
 * Here one call covers a request: CRC32C sums (the CPU's crc32 instruction,
 * three sectors at a time because each sum is independent) and the copies
 * between the layout's groups and the client's contiguous bytes.
 *
 * The layout (drivers/filter/layout.py, MINIX's filter): groups of S data sectors and one sum
 * sector; the sum of logical sector n is 4 bytes little-endian at
 * (g * (S + 1) + S) * 512 + (n % S) * 4 of the extended buffer, where g is n's
 * group counted from the request's first group. A sum is CRC32C of the
 * sector's 512 bytes XOR the sector number (mod 2^32).
 *
 * No bounds are checked here: the Python side checks every length first.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define SECTOR 512u
#define POLY 0x82F63B78u /* CRC32C (Castagnoli), reflected */

static uint32_t table[256];

static void make_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
        table[i] = c;
    }
}

static uint32_t crc_soft(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n--)
        crc = table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* Sums of n sectors at p, one after another, into out[0..n). */
static void sums_soft(const uint8_t *p, uint32_t *out, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = crc_soft(0, p + i * SECTOR, SECTOR);
}

#if defined(__x86_64__)
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p,
                                                          size_t n) {
    uint64_t c = ~crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
    }
    while (n--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}

/* Three sectors interleaved: the instruction's latency is three cycles and its
 * throughput one, so three independent chains run at full speed. */
__attribute__((target("sse4.2"))) static void sums_hw(const uint8_t *p, uint32_t *out,
                                                       size_t n) {
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        const uint8_t *x = p + i * SECTOR, *y = x + SECTOR, *z = y + SECTOR;
        uint64_t a = 0xFFFFFFFFu, b = 0xFFFFFFFFu, c = 0xFFFFFFFFu;
        for (size_t k = 0; k < SECTOR; k += 8) {
            uint64_t u, v, w;
            memcpy(&u, x + k, 8);
            memcpy(&v, y + k, 8);
            memcpy(&w, z + k, 8);
            a = _mm_crc32_u64(a, u);
            b = _mm_crc32_u64(b, v);
            c = _mm_crc32_u64(c, w);
        }
        out[i] = ~(uint32_t)a;
        out[i + 1] = ~(uint32_t)b;
        out[i + 2] = ~(uint32_t)c;
    }
    for (; i < n; i++)
        out[i] = crc_hw(0, p + i * SECTOR, SECTOR);
}
#endif

static uint32_t (*crc_fn)(uint32_t, const uint8_t *, size_t) = crc_soft;
static void (*sums_fn)(const uint8_t *, uint32_t *, size_t) = sums_soft;

/* Picks the instruction when the CPU has it; returns 1 if it does. */
int filter_init(void) {
    make_table();
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) {
        crc_fn = crc_hw;
        sums_fn = sums_hw;
        return 1;
    }
#endif
    return 0;
}

/* CRC32C of n bytes, continuing from crc (0 to start). */
uint32_t filter_crc32c(uint32_t crc, const uint8_t *p, size_t n) {
    return crc_fn(crc, p, n);
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p) {
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* One group's piece of the request [first, end): layout.py's pieces(). */
struct piece {
    uint64_t group; /* counted from the request's first group */
    uint64_t sectors;
    uint64_t offset; /* of the piece's first sector in the extended buffer */
};

static struct piece piece_at(uint64_t lo, uint64_t first, uint64_t end, uint32_t s) {
    uint64_t next = (lo / s + 1) * s;
    struct piece p = {lo / s - first / s, (next < end ? next : end) - lo, 0};
    p.offset = (p.group * (s + 1) + lo % s) * SECTOR;
    return p;
}

#define MAX_SUM_SEC 128 /* 4-byte sums in one 512-byte sector */

/* Index (from 0) of the first sector of [first, first + count) whose stored
 * sum is wrong, or -1 when every sum is right. With out, each group's data is
 * also copied there, contiguous, once its sums are right (while it is in the
 * cache): one pass over the request instead of two. */
long filter_crc_check(const uint8_t *ext, uint32_t first, uint32_t count, uint32_t s,
                      uint8_t *out) {
    uint32_t sums[MAX_SUM_SEC];
    uint64_t end = (uint64_t)first + count;
    for (uint64_t lo = first; lo < end;) {
        struct piece p = piece_at(lo, first, end, s);
        const uint8_t *stored = ext + (p.group * (s + 1) + s) * SECTOR + lo % s * 4;
        sums_fn(ext + p.offset, sums, p.sectors);
        for (uint64_t i = 0; i < p.sectors; i++)
            if ((sums[i] ^ (uint32_t)(lo + i)) != get32(stored + i * 4))
                return (long)(lo + i - first);
        if (out) {
            memcpy(out, ext + p.offset, p.sectors * SECTOR);
            out += p.sectors * SECTOR;
        }
        lo += p.sectors;
    }
    return -1;
}

/* Writes the sums of [first, first + count); a group the request covers whole
 * gets the rest of its sum sector zeroed (a partial one keeps its other sums). */
void filter_crc_fill(uint8_t *ext, uint32_t first, uint32_t count, uint32_t s) {
    uint32_t sums[MAX_SUM_SEC];
    uint64_t end = (uint64_t)first + count;
    for (uint64_t lo = first; lo < end;) {
        struct piece p = piece_at(lo, first, end, s);
        uint8_t *sum_sector = ext + (p.group * (s + 1) + s) * SECTOR;
        if (p.sectors == s)
            memset(sum_sector, 0, SECTOR);
        sums_fn(ext + p.offset, sums, p.sectors);
        for (uint64_t i = 0; i < p.sectors; i++)
            put32(sum_sector + (lo % s + i) * 4, sums[i] ^ (uint32_t)(lo + i));
        lo += p.sectors;
    }
}

/* The data of [first, first + count) out of the extended buffer, contiguous. */
void filter_collapse(const uint8_t *ext, uint32_t first, uint32_t count, uint32_t s,
                     uint8_t *out) {
    uint64_t end = (uint64_t)first + count;
    for (uint64_t lo = first; lo < end;) {
        struct piece p = piece_at(lo, first, end, s);
        memcpy(out, ext + p.offset, p.sectors * SECTOR);
        out += p.sectors * SECTOR;
        lo += p.sectors;
    }
}

/* Contiguous data of [first, first + count) into the extended buffer. */
void filter_expand(uint8_t *ext, uint32_t first, uint32_t count, uint32_t s,
                   const uint8_t *data) {
    uint64_t end = (uint64_t)first + count;
    for (uint64_t lo = first; lo < end;) {
        struct piece p = piece_at(lo, first, end, s);
        memcpy(ext + p.offset, data, p.sectors * SECTOR);
        data += p.sectors * SECTOR;
        lo += p.sectors;
    }
}
