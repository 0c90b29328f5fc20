/* CRC-32C (Castagnoli), as used by the WAL record format and iSCSI/ext4/LevelDB.
 * Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise. */
#ifndef FSCORE_CRC32C_H
#define FSCORE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends `crc` (0 to start) over `n` bytes of `data`. */
uint32_t fs_crc32c_extend(uint32_t crc, const void *data, size_t n);

static inline uint32_t fs_crc32c(const void *data, size_t n) {
    return fs_crc32c_extend(0, data, n);
}

/* The software path alone, for tests comparing it with the hardware path. */
uint32_t fs_crc32c_extend_sw(uint32_t crc, const void *data, size_t n);

#endif
