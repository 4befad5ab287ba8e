/* fuzz_inflate_gzip.c: the streaming gzip decoder (dm_inflater_*, DM_COMPRESSION_GZIP) with
 * arbitrary chunk splits, a soft output limit and a small max_output; see fuzz_inflate.h. */
#include "fuzz_inflate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_inflate_run(DM_COMPRESSION_GZIP, data, size);
}
