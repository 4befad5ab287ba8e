/* fuzz_list_scan.c: dm_list_scan (listscan.c), the file list index, over arbitrary bytes.
 *
 * Input: 1 control byte (max_depth = 1 + c0 % 80), then the text, copied to a buffer of
 * exactly its size (no terminator to lean on; strtod's copy must stay inside it).
 * Checked on success: every range lies inside the text and in order (entries one after the
 * other, each name inside its entry, status inside the text); an entry's text starts with
 * '{' exactly when it is an object, and a name's bytes are those between two quotes. On
 * failure: a message, and the index left freeable. A text that scans is scanned again with
 * one byte less, which must not read past the shorter buffer either. */
#include "fuzz_common.h"
#include "../listscan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int scan(const char *s, size_t n, int depth)
{
    struct dm_list_scan sc;
    const char *err = NULL;
    size_t prev_end = 0;
    int rc;

    memset(&sc, 0, sizeof sc);
    rc = dm_list_scan(s, n, depth, &sc, &err);
    if (rc != 0) {
        FUZZ_CHECK(rc == -1 && err != NULL && err[0] != '\0');
        dm_list_scan_free(&sc);
        return rc;
    }
    FUZZ_CHECK(sc.status_end <= n && sc.status_start <= sc.status_end);
    if (sc.status_end > 0)
        FUZZ_CHECK(sc.top_is_object && sc.status_end > sc.status_start);
    FUZZ_CHECK(sc.count <= sc.cap);
    if (sc.count > 0)
        FUZZ_CHECK(sc.list == DM_LIST_ARRAY);
    for (size_t i = 0; i < sc.count; i++) {
        const struct dm_list_entry *e = &sc.entries[i];
        FUZZ_CHECK(e->start >= prev_end && e->start < e->end && e->end <= n);
        FUZZ_CHECK(((e->flags & DM_ENTRY_OBJECT) != 0) == (s[e->start] == '{'));
        if (e->flags & DM_ENTRY_NAME) {
            FUZZ_CHECK(e->flags & DM_ENTRY_OBJECT);
            FUZZ_CHECK(e->name_start > e->start && e->name_start + e->name_len < e->end);
            FUZZ_CHECK(s[e->name_start - 1] == '"' && s[e->name_start + e->name_len] == '"');
        }
        prev_end = e->end;
    }
    dm_list_scan_free(&sc);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };
    int depth = 1 + fuzz_byte(&in) % 80;
    char *s = malloc(in.n ? in.n : 1);

    FUZZ_CHECK(s != NULL);
    if (in.n > 0)
        memcpy(s, in.p, in.n);
    if (scan(s, in.n, depth) == 0 && in.n > 0) {
        char *shorter = malloc(in.n - 1 ? in.n - 1 : 1);
        FUZZ_CHECK(shorter != NULL);
        memcpy(shorter, s, in.n - 1);
        (void)scan(shorter, in.n - 1, depth);
        free(shorter);
    }
    free(s);
    return 0;
}
