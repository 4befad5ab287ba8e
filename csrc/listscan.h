/* listscan.h: reads a library's file list answer (JSON, RFC 8259) without building it (Lua-free).
 *
 * A file list is the largest answer a sync reads: ~150 bytes of JSON a file, ~400 bytes as
 * Lua tables. The scan validates the whole text as JSON and records, for each entry of the
 * top-level object's "fileList" array, its byte range, its "name" (when a string) and its
 * "updatedDate" (when a number), plus where "status" is: 48 bytes an entry, outside the Lua
 * heap. Duplicate keys: the last one counts, as in lua-cjson. */
#ifndef DIGIME_LISTSCAN_H
#define DIGIME_LISTSCAN_H

#include <stddef.h>

#define DM_ENTRY_OBJECT  1u   /* the entry is an object */
#define DM_ENTRY_NAME    2u   /* it has a "name" that is a string */
#define DM_ENTRY_ESCAPED 4u   /* ... written with escapes: its raw bytes are not the name */
#define DM_ENTRY_UPDATED 8u   /* it has an "updatedDate" that is a number */

struct dm_list_entry {
    size_t start, end;             /* the entry's text: [start, end) */
    size_t name_start, name_len;   /* the bytes between the quotes of "name" (DM_ENTRY_NAME) */
    double updated;                /* "updatedDate" (DM_ENTRY_UPDATED) */
    unsigned flags;
};

enum dm_list_kind { DM_LIST_ABSENT, DM_LIST_ARRAY, DM_LIST_OTHER };

struct dm_list_scan {
    int top_is_object;                 /* the text is an object (else nothing below is set) */
    size_t status_start, status_end;   /* "status"'s value: [start, end); end 0 when absent */
    enum dm_list_kind list;            /* what "fileList" is */
    struct dm_list_entry *entries;     /* its entries when an array (malloc'd) */
    size_t count, cap;
};

/* Scans text[0..n) (a zeroed *s). 0, or -1 with *err set: not JSON, nested deeper than
 * max_depth, or out of memory. Either way dm_list_scan_free(s) releases what it holds. */
int dm_list_scan(const char *text, size_t n, int max_depth, struct dm_list_scan *s,
                 const char **err);
void dm_list_scan_free(struct dm_list_scan *s);

#endif
