/* listscan.c: a validating JSON scanner that builds nothing but the file list's index
 * (listscan.h). Recursion is bounded by max_depth. */
#include <stdlib.h>
#include <string.h>

#include "listscan.h"

struct cur {
    const char *s;
    size_t n, i;
    int max_depth;
    const char *err;
};

static int fail(struct cur *c, const char *why)
{
    if (c->err == NULL)
        c->err = why;
    return -1;
}

static int at(const struct cur *c, char ch)
{
    return c->i < c->n && c->s[c->i] == ch;
}

static int is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static int hex_value(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static void skip_ws(struct cur *c)
{
    while (c->i < c->n) {
        char ch = c->s[c->i];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r')
            return;
        c->i++;
    }
}

/* The value of the \\uXXXX at c->s[i], or -1 (c->err set). */
static long unicode_escape(struct cur *c, size_t i)
{
    long v = 0;

    if (c->n - i < 6)
        return fail(c, "unterminated string");
    for (size_t k = 2; k < 6; k++) {
        int h = hex_value(c->s[i + k]);
        if (h < 0)
            return fail(c, "bad \\u escape");
        v = v * 16 + h;
    }
    return v;
}

/* A string at c->i (its opening quote): [*start, *start + *len) are the bytes between the
 * quotes, *escaped whether any escape is among them. c->i ends past the closing quote. */
static int scan_string(struct cur *c, size_t *start, size_t *len, int *escaped)
{
    size_t i = c->i + 1;

    *start = i;
    *escaped = 0;
    for (;;) {
        unsigned char ch;
        if (i >= c->n)
            return fail(c, "unterminated string");
        ch = (unsigned char)c->s[i];
        if (ch == '"')
            break;
        if (ch < 0x20)
            return fail(c, "control character in a string");
        if (ch != '\\') {
            i++;
            continue;
        }
        *escaped = 1;
        if (i + 1 >= c->n)
            return fail(c, "unterminated string");
        ch = (unsigned char)c->s[i + 1];
        if (ch == 'u') {
            long u = unicode_escape(c, i);
            if (u < 0)
                return -1;
            i += 6;
            /* UTF-16 pairs whole, as lua-cjson wants them: a lone half would make the entry
             * undecodable later */
            if (u >= 0xDC00 && u <= 0xDFFF)
                return fail(c, "lone low surrogate in a string");
            if (u >= 0xD800 && u <= 0xDBFF) {
                long low = i + 1 < c->n && c->s[i] == '\\' && c->s[i + 1] == 'u'
                         ? unicode_escape(c, i) : -1;
                if (low < 0xDC00 || low > 0xDFFF)
                    return fail(c, "lone high surrogate in a string");
                i += 6;
            }
        } else if (ch == '"' || ch == '\\' || ch == '/' || ch == 'b' || ch == 'f' || ch == 'n'
                   || ch == 'r' || ch == 't') {
            i += 2;
        } else {
            return fail(c, "bad escape in a string");
        }
    }
    *len = i - *start;
    c->i = i + 1;
    return 0;
}

static int skip_digits(struct cur *c)
{
    size_t from = c->i;
    while (c->i < c->n && is_digit(c->s[c->i]))
        c->i++;
    return c->i > from ? 0 : fail(c, "bad number");
}

/* A number (RFC 8259 grammar); its value in *out when out is not NULL. */
static int scan_number(struct cur *c, double *out)
{
    size_t start = c->i, len;
    char small[64], *copy = small;

    if (at(c, '-'))
        c->i++;
    if (at(c, '0'))
        c->i++;
    else if (skip_digits(c))
        return -1;
    if (at(c, '.')) {
        c->i++;
        if (skip_digits(c))
            return -1;
    }
    if (at(c, 'e') || at(c, 'E')) {
        c->i++;
        if (at(c, '+') || at(c, '-'))
            c->i++;
        if (skip_digits(c))
            return -1;
    }
    if (out == NULL)
        return 0;
    /* strtod wants a terminated string: the text has none of its own */
    len = c->i - start;
    if (len >= sizeof small && (copy = malloc(len + 1)) == NULL)
        return fail(c, "out of memory");
    memcpy(copy, c->s + start, len);
    copy[len] = '\0';
    *out = strtod(copy, NULL);
    if (copy != small)
        free(copy);
    return 0;
}

static int scan_literal(struct cur *c, const char *word, size_t len)
{
    if (c->n - c->i < len || memcmp(c->s + c->i, word, len) != 0)
        return fail(c, "unexpected character");
    c->i += len;
    return 0;
}

/* Called for each member of an object with the key's raw bytes; it must consume the value. */
typedef int (*member_fn)(struct cur *c, void *ctx, const char *key, size_t klen, int escaped,
                         int depth);
/* Called for each element of an array; it must consume the element. */
typedef int (*element_fn)(struct cur *c, void *ctx, int depth);

static int skip_value(struct cur *c, int depth);

static int each_member(struct cur *c, int depth, member_fn fn, void *ctx)
{
    if (depth > c->max_depth)
        return fail(c, "nested too deep");
    c->i++;   /* '{' */
    skip_ws(c);
    if (at(c, '}')) {
        c->i++;
        return 0;
    }
    for (;;) {
        size_t kstart, klen;
        int escaped;
        skip_ws(c);
        if (!at(c, '"'))
            return fail(c, "expected a key");
        if (scan_string(c, &kstart, &klen, &escaped))
            return -1;
        skip_ws(c);
        if (!at(c, ':'))
            return fail(c, "expected ':'");
        c->i++;
        skip_ws(c);
        if (fn ? fn(c, ctx, c->s + kstart, klen, escaped, depth) : skip_value(c, depth))
            return -1;
        skip_ws(c);
        if (at(c, ',')) {
            c->i++;
        } else if (at(c, '}')) {
            c->i++;
            return 0;
        } else {
            return fail(c, "expected ',' or '}'");
        }
    }
}

static int each_element(struct cur *c, int depth, element_fn fn, void *ctx)
{
    if (depth > c->max_depth)
        return fail(c, "nested too deep");
    c->i++;   /* '[' */
    skip_ws(c);
    if (at(c, ']')) {
        c->i++;
        return 0;
    }
    for (;;) {
        skip_ws(c);
        if (fn ? fn(c, ctx, depth) : skip_value(c, depth))
            return -1;
        skip_ws(c);
        if (at(c, ',')) {
            c->i++;
        } else if (at(c, ']')) {
            c->i++;
            return 0;
        } else {
            return fail(c, "expected ',' or ']'");
        }
    }
}

/* One value at c->i (after white space), inside containers `depth` deep. */
static int skip_value(struct cur *c, int depth)
{
    size_t a, b;
    int e;

    skip_ws(c);
    if (c->i >= c->n)
        return fail(c, "unexpected end");
    switch (c->s[c->i]) {
    case '{':
        return each_member(c, depth + 1, NULL, NULL);
    case '[':
        return each_element(c, depth + 1, NULL, NULL);
    case '"':
        return scan_string(c, &a, &b, &e);
    case 't':
        return scan_literal(c, "true", 4);
    case 'f':
        return scan_literal(c, "false", 5);
    case 'n':
        return scan_literal(c, "null", 4);
    default:
        if (c->s[c->i] == '-' || is_digit(c->s[c->i]))
            return scan_number(c, NULL);
        return fail(c, "unexpected character");
    }
}

/* Whether a key's raw bytes mean `want` (ASCII). Escapes are decoded: a server may write
 * "fileL\u0069st", and lua-cjson reads that as fileList. */
static int key_is(const char *key, size_t klen, int escaped, const char *want)
{
    size_t wl = strlen(want), i = 0, j = 0;

    if (!escaped)
        return klen == wl && memcmp(key, want, wl) == 0;
    while (i < klen) {
        char ch = key[i];
        if (ch == '\\') {
            char e = key[i + 1];   /* scan_string checked every escape is whole */
            if (e == 'u') {
                int v = 0;
                for (size_t k = 2; k < 6; k++)
                    v = v * 16 + hex_value(key[i + k]);
                if (v == 0 || v >= 0x80)
                    return 0;
                ch = (char)v;
                i += 6;
            } else {
                ch = e == 'b' ? '\b' : e == 'f' ? '\f' : e == 'n' ? '\n' : e == 'r' ? '\r'
                   : e == 't' ? '\t' : e;
                i += 2;
            }
        } else {
            i++;
        }
        if (j >= wl || want[j] != ch)
            return 0;
        j++;
    }
    return j == wl;
}

static int entry_member(struct cur *c, void *ctx, const char *key, size_t klen, int escaped,
                        int depth)
{
    struct dm_list_entry *e = ctx;

    if (key_is(key, klen, escaped, "name")) {
        e->flags &= ~(DM_ENTRY_NAME | DM_ENTRY_ESCAPED);
        if (at(c, '"')) {
            int esc;
            if (scan_string(c, &e->name_start, &e->name_len, &esc))
                return -1;
            e->flags |= DM_ENTRY_NAME | (esc ? DM_ENTRY_ESCAPED : 0u);
            return 0;
        }
    } else if (key_is(key, klen, escaped, "updatedDate")) {
        e->flags &= ~DM_ENTRY_UPDATED;
        if (at(c, '-') || (c->i < c->n && is_digit(c->s[c->i]))) {
            e->flags |= DM_ENTRY_UPDATED;
            return scan_number(c, &e->updated);
        }
    }
    return skip_value(c, depth);
}

static int list_element(struct cur *c, void *ctx, int depth)
{
    struct dm_list_scan *s = ctx;
    struct dm_list_entry *e;

    if (s->count == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        struct dm_list_entry *grown;
        if (cap > (size_t)-1 / sizeof *grown)
            return fail(c, "out of memory");
        grown = realloc(s->entries, cap * sizeof *grown);
        if (grown == NULL)
            return fail(c, "out of memory");
        s->entries = grown;
        s->cap = cap;
    }
    e = &s->entries[s->count];
    memset(e, 0, sizeof *e);
    e->start = c->i;
    if (at(c, '{')) {
        e->flags = DM_ENTRY_OBJECT;
        if (each_member(c, depth + 1, entry_member, e))
            return -1;
    } else if (skip_value(c, depth)) {
        return -1;
    }
    e->end = c->i;
    s->count++;
    return 0;
}

static int top_member(struct cur *c, void *ctx, const char *key, size_t klen, int escaped,
                      int depth)
{
    struct dm_list_scan *s = ctx;

    if (key_is(key, klen, escaped, "status")) {
        s->status_start = c->i;
        if (skip_value(c, depth))
            return -1;
        s->status_end = c->i;
        return 0;
    }
    if (key_is(key, klen, escaped, "fileList")) {
        s->count = 0;   /* a repeated key: the last one counts */
        if (at(c, '[')) {
            s->list = DM_LIST_ARRAY;
            return each_element(c, depth + 1, list_element, s);
        }
        s->list = DM_LIST_OTHER;
    }
    return skip_value(c, depth);
}

int dm_list_scan(const char *text, size_t n, int max_depth, struct dm_list_scan *s,
                 const char **err)
{
    struct cur c = { text, n, 0, max_depth, NULL };
    int rc;

    skip_ws(&c);
    if (at(&c, '{')) {
        s->top_is_object = 1;
        rc = each_member(&c, 1, top_member, s);
    } else {
        rc = skip_value(&c, 0);
    }
    if (rc == 0) {
        skip_ws(&c);
        if (c.i != c.n)
            rc = fail(&c, c.i < c.n ? "text after the value" : "unexpected end");
    }
    if (rc != 0)
        *err = c.err ? c.err : "invalid JSON";
    return rc;
}

void dm_list_scan_free(struct dm_list_scan *s)
{
    free(s->entries);
    s->entries = NULL;
    s->count = s->cap = 0;
}
