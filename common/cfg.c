/* YAML config into typed structs through key tables, with file:line:col errors. */
#include "common/cfg.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>

/* Every allocation a config owns hangs off this header, which sits just before the
 * struct handed to the caller; cfg_free releases all of it at once. Key positions are
 * kept so that semantic checks after loading can still point at a line. */
struct cfg_block {
    struct cfg_block *next;
    max_align_t data[];
};

struct cfg_pos {
    char *path;
    size_t line, col;
};

struct cfg_hdr {
    struct cfg_block *blocks;
    char *name;
    struct cfg_pos *pos;
    size_t npos, cappos;
    long extra_refs; /* cfg_ref()s not yet matched by a cfg_free() */
    max_align_t data[];
};

struct loader {
    const char *name;
    yaml_document_t *doc;
    struct cfg_hdr *hdr;
    struct cfg_err *err;
};

static struct cfg_hdr *hdr_of(const void *cfg)
{
    return (struct cfg_hdr *)((char *)cfg - offsetof(struct cfg_hdr, data));
}

static void *arena_alloc(struct cfg_hdr *h, size_t n)
{
    struct cfg_block *b = calloc(1, sizeof *b + (n ? n : 1));
    if (!b)
        return NULL;
    b->next = h->blocks;
    h->blocks = b;
    return b->data;
}

static char *arena_strdup(struct cfg_hdr *h, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = arena_alloc(h, n);
    if (p)
        memcpy(p, s, n);
    return p;
}

static void remember_pos(struct loader *L, const char *path, yaml_mark_t m)
{
    struct cfg_hdr *h = L->hdr;
    if (h->npos == h->cappos) {
        size_t nc = h->cappos ? h->cappos * 2 : 32;
        struct cfg_pos *np = realloc(h->pos, nc * sizeof *np);
        if (!np)
            return;
        h->pos = np;
        h->cappos = nc;
    }
    h->pos[h->npos].path = strdup(path);
    h->pos[h->npos].line = m.line + 1;
    h->pos[h->npos].col = m.column + 1;
    if (h->pos[h->npos].path)
        h->npos++;
}

static int fail_at(struct loader *L, yaml_mark_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_at(struct loader *L, yaml_mark_t m, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(L->err->msg, sizeof L->err->msg, "%s:%zu:%zu: %s", L->name, m.line + 1, m.column + 1,
             msg);
    return -EINVAL;
}

static const char *type_name(enum cfg_type t)
{
    static const char *const names[] = {
        [CFG_STR] = "string",
        [CFG_INT] = "integer",
        [CFG_UINT] = "integer",
        [CFG_PORT] = "port",
        [CFG_BOOL] = "boolean",
        [CFG_DURATION] = "duration",
        [CFG_SIZE] = "size",
        [CFG_ADDR] = "address",
        [CFG_CIDR] = "network",
        [CFG_FILE] = "file",
        [CFG_ENUM] = "choice",
        [CFG_SECTION] = "section",
        [CFG_LIST] = "list",
        [CFG_STRLIST] = "list of strings",
        [CFG_ADDRLIST] = "list of addresses",
        [CFG_CIDRLIST] = "list of networks",
    };
    return names[t];
}

/* Finds key `name` in keys, looking through flattened ("") sections; adds their offset. */
static const struct cfg_key *find_key(const struct cfg_key *keys, const char *name, size_t *off)
{
    for (const struct cfg_key *k = keys; k->name; k++) {
        if (k->name[0] == '\0' && k->type == CFG_SECTION) {
            size_t sub = 0;
            const struct cfg_key *f = find_key(k->sub, name, &sub);
            if (f) {
                *off = k->offset + sub;
                return f;
            }
        } else if (strcmp(k->name, name) == 0) {
            *off = k->offset;
            return k;
        }
    }
    return NULL;
}

/* ---- scalar conversions (shared by values and defaults) ---- */

static int parse_int(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (errno || end == s || *end)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_scaled(const char *s, uint64_t *out, bool duration)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -EINVAL;
    double mul;
    if (duration) {
        if (!*end || !strcmp(end, "s"))
            mul = 1000;
        else if (!strcmp(end, "ms"))
            mul = 1;
        else if (!strcmp(end, "m"))
            mul = 60000;
        else if (!strcmp(end, "h"))
            mul = 3600000;
        else if (!strcmp(end, "d"))
            mul = 86400000;
        else
            return -EINVAL;
    } else {
        if (!*end || !strcasecmp(end, "b"))
            mul = 1;
        else if (!strcasecmp(end, "k") || !strcasecmp(end, "kb") || !strcasecmp(end, "kib"))
            mul = 1024;
        else if (!strcasecmp(end, "m") || !strcasecmp(end, "mb") || !strcasecmp(end, "mib"))
            mul = 1024.0 * 1024;
        else if (!strcasecmp(end, "g") || !strcasecmp(end, "gb") || !strcasecmp(end, "gib"))
            mul = 1024.0 * 1024 * 1024;
        else
            return -EINVAL;
    }
    *out = (uint64_t)(v * mul + 0.5);
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no",
                                                                                "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(s, yes[i])) {
            *out = true;
            return 0;
        }
        if (!strcasecmp(s, no[i])) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

/* Converts scalar text for key k into the field at p. Returns 0 or -EINVAL with why. */
/* An integer key (int, uint, port) within its bounds. */
static int set_int(const struct cfg_key *k, void *p, const char *s, char *why, size_t wcap)
{
    int64_t iv, lo = k->min, hi = k->max;
    if (k->type == CFG_PORT) {
        lo = k->min ? k->min : 1;
        hi = k->max ? k->max : 65535;
    } else if (k->type == CFG_UINT && hi == 0) {
        hi = UINT32_MAX;
    } else if (k->type == CFG_INT && lo == 0 && hi == 0) {
        lo = INT64_MIN;
        hi = INT64_MAX;
    }
    if (parse_int(s, &iv)) {
        snprintf(why, wcap, "'%s' is not an integer", s);
        return -EINVAL;
    }
    if (iv < lo || iv > hi) {
        snprintf(why, wcap, "%s %" PRId64 " out of range (%" PRId64 "..%" PRId64 ")",
                 k->type == CFG_PORT ? "port" : "value", iv, lo, hi);
        return -EINVAL;
    }
    if (k->type == CFG_INT)
        *(int64_t *)p = iv;
    else if (k->type == CFG_UINT)
        *(uint32_t *)p = (uint32_t)iv;
    else
        *(uint16_t *)p = (uint16_t)iv;
    return 0;
}

/* A duration (ms) or a size (bytes) with its unit, within its bounds. */
static int set_scaled(const struct cfg_key *k, void *p, const char *s, char *why, size_t wcap)
{
    uint64_t uv;
    bool dur = k->type == CFG_DURATION;
    if (parse_scaled(s, &uv, dur)) {
        snprintf(why, wcap,
                 dur ? "'%s' is not a duration (e.g. 500ms, 30s, 5m, 1h)"
                     : "'%s' is not a size (e.g. 512, 64k, 16M, 1G)",
                 s);
        return -EINVAL;
    }
    if ((k->min && uv < (uint64_t)k->min) || (k->max && uv > (uint64_t)k->max)) {
        snprintf(why, wcap, "'%s' out of range (%" PRId64 "..%" PRId64 " %s)", s, k->min, k->max,
                 dur ? "ms" : "bytes");
        return -EINVAL;
    }
    *(uint64_t *)p = uv;
    return 0;
}

/* An address (k->min is the default port; 0 means one must be given) or a network. */
static int set_net(const struct cfg_key *k, void *p, const char *s, char *why, size_t wcap)
{
    if (k->type == CFG_CIDR) {
        if (!cidr_parse(p, s))
            return 0;
        snprintf(why, wcap, "'%s' is not a network (e.g. 10.0.0.0/8)", s);
        return -EINVAL;
    }
    if (addr_parse(p, s, (uint16_t)k->min)) {
        snprintf(why, wcap, "'%s' is not an address (ip:port or [ipv6]:port)", s);
        return -EINVAL;
    }
    if (addr_port(p) == 0 && k->min == 0 && !strchr(s, ':')) {
        snprintf(why, wcap, "'%s' needs a port", s);
        return -EINVAL;
    }
    return 0;
}

static int set_enum(const struct cfg_key *k, void *p, const char *s, char *why, size_t wcap)
{
    for (int i = 0; k->choices && k->choices[i]; i++) {
        if (!strcmp(s, k->choices[i])) {
            *(int *)p = i;
            return 0;
        }
    }
    size_t n = (size_t)snprintf(why, wcap, "'%s' is not one of:", s);
    for (int i = 0; k->choices && k->choices[i] && n < wcap; i++)
        n += (size_t)snprintf(why + n, wcap - n, " %s", k->choices[i]);
    return -EINVAL;
}

static int set_scalar(struct loader *L, const struct cfg_key *k, void *p, const char *s, char *why,
                      size_t wcap)
{
    switch (k->type) {
    case CFG_FILE:
        if (access(s, R_OK) != 0) {
            snprintf(why, wcap, "cannot read '%s': %s", s, strerror(errno));
            return -EINVAL;
        }
        /* fall through */
    case CFG_STR:
        *(char **)p = arena_strdup(L->hdr, s);
        return *(char **)p ? 0 : -ENOMEM;
    case CFG_INT:
    case CFG_UINT:
    case CFG_PORT:
        return set_int(k, p, s, why, wcap);
    case CFG_BOOL:
        if (parse_bool(s, (bool *)p)) {
            snprintf(why, wcap, "'%s' is not a boolean (true/false)", s);
            return -EINVAL;
        }
        return 0;
    case CFG_DURATION:
    case CFG_SIZE:
        return set_scaled(k, p, s, why, wcap);
    case CFG_ADDR:
    case CFG_CIDR:
        return set_net(k, p, s, why, wcap);
    case CFG_ENUM:
        return set_enum(k, p, s, why, wcap);
    default:
        snprintf(why, wcap, "expected a %s", type_name(k->type));
        return -EINVAL;
    }
}

static int apply_defaults(struct loader *L, const struct cfg_key *keys, char *base,
                          const bool *seen, yaml_mark_t where, const char *path);

static int load_mapping(struct loader *L, const struct cfg_key *keys, char *base, yaml_node_t *map,
                        const char *path);

static size_t count_keys(const struct cfg_key *keys)
{
    size_t n = 0;
    for (const struct cfg_key *k = keys; k->name; k++)
        n += (k->name[0] == '\0' && k->type == CFG_SECTION) ? count_keys(k->sub) : 1;
    return n;
}

/* Index of key within the flattened table (for "seen" bookkeeping). */
static long key_index(const struct cfg_key *keys, const struct cfg_key *target)
{
    long i = 0;
    for (const struct cfg_key *k = keys; k->name; k++) {
        if (k->name[0] == '\0' && k->type == CFG_SECTION) {
            long j = key_index(k->sub, target);
            if (j >= 0)
                return i + j;
            i += (long)count_keys(k->sub);
        } else {
            if (k == target)
                return i;
            i++;
        }
    }
    return -1;
}

static int load_list_scalars(struct loader *L, const struct cfg_key *k, char *base,
                             yaml_node_t *node, const char *kpath)
{
    size_t esz = k->type == CFG_STRLIST    ? sizeof(char *)
                 : k->type == CFG_ADDRLIST ? sizeof(struct addr)
                                           : sizeof(struct cidr);
    yaml_node_item_t *items = NULL;
    size_t n = 0;
    if (node->type == YAML_SEQUENCE_NODE) {
        items = node->data.sequence.items.start;
        n = (size_t)(node->data.sequence.items.top - items);
    } else if (node->type != YAML_SCALAR_NODE) {
        return fail_at(L, node->start_mark, "'%s' must be a %s", kpath, type_name(k->type));
    } else {
        n = 1;
    }
    char *arr = arena_alloc(L->hdr, n * esz);
    if (!arr)
        return -ENOMEM;
    struct cfg_key ek = *k;
    ek.type = k->type == CFG_STRLIST ? CFG_STR : k->type == CFG_ADDRLIST ? CFG_ADDR : CFG_CIDR;
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *it = items ? yaml_document_get_node(L->doc, items[i]) : node;
        if (!it || it->type != YAML_SCALAR_NODE)
            return fail_at(L, it ? it->start_mark : node->start_mark, "'%s[%zu]' must be a scalar",
                           kpath, i);
        char why[256];
        if (set_scalar(L, &ek, arr + i * esz, (const char *)it->data.scalar.value, why, sizeof why))
            return fail_at(L, it->start_mark, "%s[%zu]: %s", kpath, i, why);
    }
    *(void **)(base + k->offset) = arr;
    *(size_t *)(base + k->count_offset) = n;
    return 0;
}

static int load_value(struct loader *L, const struct cfg_key *k, char *field, char *base,
                      size_t off, yaml_node_t *v, const char *kpath)
{
    char why[300];
    switch (k->type) {
    case CFG_SECTION:
        if (v->type != YAML_MAPPING_NODE)
            return fail_at(L, v->start_mark, "'%s' must be a mapping of keys", kpath);
        return load_mapping(L, k->sub, field, v, kpath);
    case CFG_LIST: {
        if (v->type != YAML_SEQUENCE_NODE)
            return fail_at(L, v->start_mark, "'%s' must be a list", kpath);
        yaml_node_item_t *items = v->data.sequence.items.start;
        size_t n = (size_t)(v->data.sequence.items.top - items);
        char *arr = arena_alloc(L->hdr, n * k->elem_size);
        if (!arr)
            return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
            yaml_node_t *it = yaml_document_get_node(L->doc, items[i]);
            char ipath[300];
            snprintf(ipath, sizeof ipath, "%s[%zu]", kpath, i);
            if (!it || it->type != YAML_MAPPING_NODE)
                return fail_at(L, it ? it->start_mark : v->start_mark,
                               "'%s' must be a mapping of keys", ipath);
            int rc = load_mapping(L, k->sub, arr + i * k->elem_size, it, ipath);
            if (rc)
                return rc;
        }
        *(void **)field = arr;
        *(size_t *)(base + k->count_offset - k->offset + off) = n;
        return 0;
    }
    case CFG_STRLIST:
    case CFG_ADDRLIST:
    case CFG_CIDRLIST: {
        /* count_offset is relative to the same struct as offset. */
        struct cfg_key adj = *k;
        adj.offset = off;
        adj.count_offset = k->count_offset - k->offset + off;
        return load_list_scalars(L, &adj, base, v, kpath);
    }
    default:
        if (v->type != YAML_SCALAR_NODE)
            return fail_at(L, v->start_mark, "'%s' must be a %s, not a %s", kpath,
                           type_name(k->type), v->type == YAML_MAPPING_NODE ? "mapping" : "list");
        if (set_scalar(L, k, field, (const char *)v->data.scalar.value, why, sizeof why))
            return fail_at(L, v->start_mark, "%s: %s", kpath, why);
        return 0;
    }
}

static int load_mapping(struct loader *L, const struct cfg_key *keys, char *base, yaml_node_t *map,
                        const char *path)
{
    size_t nk = count_keys(keys);
    bool *seen = calloc(nk ? nk : 1, sizeof *seen);
    if (!seen)
        return -ENOMEM;
    int rc = 0;
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top;
         pr++) {
        yaml_node_t *kn = yaml_document_get_node(L->doc, pr->key);
        yaml_node_t *vn = yaml_document_get_node(L->doc, pr->value);
        if (!kn || kn->type != YAML_SCALAR_NODE) {
            rc = fail_at(L, kn ? kn->start_mark : map->start_mark, "keys must be plain words");
            break;
        }
        const char *name = (const char *)kn->data.scalar.value;
        char kpath[300];
        snprintf(kpath, sizeof kpath, "%s%s%s", path, *path ? "." : "", name);
        size_t off = 0;
        const struct cfg_key *k = find_key(keys, name, &off);
        if (!k) {
            rc =
                fail_at(L, kn->start_mark, "unknown key '%s'%s%s", name, *path ? " in " : "", path);
            break;
        }
        long idx = key_index(keys, k);
        if (seen[idx]) {
            rc = fail_at(L, kn->start_mark, "key '%s' appears twice", kpath);
            break;
        }
        seen[idx] = true;
        remember_pos(L, kpath, vn->start_mark);
        rc = load_value(L, k, base + off, base, off, vn, kpath);
        if (rc)
            break;
    }
    if (!rc)
        rc = apply_defaults(L, keys, base, seen, map->start_mark, path);
    free(seen);
    return rc;
}

/* Fills every key not seen with its default, recursing into absent sections. */
/* A list key's default: its items comma-separated in k->def. */
static int default_list(struct loader *L, const struct cfg_key *k, char *base, yaml_mark_t where,
                        const char *kpath)
{
    char tmp[512], why[300];
    snprintf(tmp, sizeof tmp, "%s", k->def);
    size_t n = 0;
    for (char *s = tmp; s && *s; n++, s = strchr(s, ',') ? strchr(s, ',') + 1 : NULL)
        ;
    size_t esz = k->type == CFG_STRLIST    ? sizeof(char *)
                 : k->type == CFG_ADDRLIST ? sizeof(struct addr)
                                           : sizeof(struct cidr);
    char *arr = arena_alloc(L->hdr, (n ? n : 1) * esz);
    if (!arr)
        return -ENOMEM;
    struct cfg_key ek = *k;
    ek.type = k->type == CFG_STRLIST ? CFG_STR : k->type == CFG_ADDRLIST ? CFG_ADDR : CFG_CIDR;
    size_t j = 0;
    for (char *save = NULL, *t = strtok_r(tmp, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        if (set_scalar(L, &ek, arr + j * esz, t, why, sizeof why))
            return fail_at(L, where, "default of %s: %s", kpath, why);
        j++;
    }
    *(void **)(base + k->offset) = arr;
    *(size_t *)(base + k->count_offset) = j;
    return 0;
}

/* The default of a key the file did not set. */
static int default_one(struct loader *L, const struct cfg_key *k, char *base, yaml_mark_t where,
                       const char *kpath)
{
    if (k->required)
        return fail_at(L, where, "missing required key '%s'", kpath);
    if (k->type == CFG_SECTION)
        return apply_defaults(L, k->sub, base + k->offset, NULL, where, kpath);
    if (!k->def || k->type == CFG_LIST)
        return 0;
    if (k->type == CFG_STRLIST || k->type == CFG_ADDRLIST || k->type == CFG_CIDRLIST)
        return default_list(L, k, base, where, kpath);
    char why[300];
    if (set_scalar(L, k, base + k->offset, k->def, why, sizeof why) == 0)
        return 0;
    /* A default file that does not exist is only an error if the key matters: leave it NULL
     * so the role can decide (e.g. generate a self-signed cert). */
    if (k->type == CFG_FILE)
        return 0;
    return fail_at(L, where, "default of %s: %s", kpath, why);
}

static int apply_defaults(struct loader *L, const struct cfg_key *keys, char *base,
                          const bool *seen, yaml_mark_t where, const char *path)
{
    long i = 0;
    for (const struct cfg_key *k = keys; k->name; k++) {
        if (k->name[0] == '\0' && k->type == CFG_SECTION) {
            int rc =
                apply_defaults(L, k->sub, base + k->offset, seen ? seen + i : NULL, where, path);
            if (rc)
                return rc;
            i += (long)count_keys(k->sub);
            continue;
        }
        bool was = seen && seen[i];
        i++;
        if (was)
            continue;
        char kpath[300];
        snprintf(kpath, sizeof kpath, "%s%s%s", path, *path ? "." : "", k->name);
        int rc = default_one(L, k, base, where, kpath);
        if (rc)
            return rc;
    }
    return 0;
}

static void hdr_free(struct cfg_hdr *h)
{
    if (!h)
        return;
    for (struct cfg_block *b = h->blocks, *n; b; b = n) {
        n = b->next;
        free(b);
    }
    for (size_t i = 0; i < h->npos; i++)
        free(h->pos[i].path);
    free(h->pos);
    free(h->name);
    free(h);
}

int cfg_load_string(const char *name, const char *yaml, size_t len, const struct cfg_key *keys,
                    size_t size, void **out, struct cfg_err *err)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    struct cfg_hdr *h = calloc(1, sizeof *h + size);
    if (!h || !yaml_parser_initialize(&parser)) {
        free(h);
        snprintf(err->msg, sizeof err->msg, "%s: out of memory", name);
        return -ENOMEM;
    }
    h->name = strdup(name);
    struct loader L = {.name = name, .doc = &doc, .hdr = h, .err = err};
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
    int rc;
    if (!yaml_parser_load(&parser, &doc)) {
        yaml_mark_t m = parser.problem_mark;
        rc = fail_at(&L, m, "YAML syntax: %s%s%s", parser.problem ? parser.problem : "error",
                     parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        hdr_free(h);
        return rc;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        /* An empty file is a config with every default. */
        yaml_mark_t m = {0, 0, 0};
        rc = apply_defaults(&L, keys, (char *)h->data, NULL, m, "");
    } else if (root->type != YAML_MAPPING_NODE) {
        rc = fail_at(&L, root->start_mark, "the top level must be a mapping of keys");
    } else {
        rc = load_mapping(&L, keys, (char *)h->data, root, "");
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc) {
        hdr_free(h);
        return rc;
    }
    *out = h->data;
    return 0;
}

int cfg_load(const char *path, const struct cfg_key *keys, size_t size, void **out,
             struct cfg_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        snprintf(err->msg, sizeof err->msg, "%s: cannot open: %s", path, strerror(e));
        return -e;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            if (cap > (16u << 20)) {
                fclose(f);
                free(text);
                snprintf(err->msg, sizeof err->msg, "%s: file larger than 16 MiB", path);
                return -EFBIG;
            }
            char *nt = realloc(text, cap);
            if (!nt) {
                fclose(f);
                free(text);
                return -ENOMEM;
            }
            text = nt;
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    int rc = cfg_load_string(path, text, len, keys, size, out, err);
    free(text);
    return rc;
}

void cfg_free(void *cfg)
{
    if (!cfg)
        return;
    struct cfg_hdr *h = hdr_of(cfg);
    if (__atomic_load_n(&h->extra_refs, __ATOMIC_ACQUIRE) > 0 &&
        __atomic_sub_fetch(&h->extra_refs, 1, __ATOMIC_ACQ_REL) >= 0)
        return;
    hdr_free(h);
}

const void *cfg_ref(const void *cfg)
{
    if (cfg)
        __atomic_add_fetch(&hdr_of(cfg)->extra_refs, 1, __ATOMIC_RELAXED);
    return cfg;
}

static bool value_equal(const struct cfg_key *k, const char *a, const char *b);

static bool section_equal(const struct cfg_key *keys, const char *a, const char *b)
{
    for (const struct cfg_key *k = keys; k->name; k++)
        if (!value_equal(k, a + k->offset, b + k->offset))
            return false;
    return true;
}

static bool str_equal(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

/* a and b point at the field of key k in two configs; the list counts sit at the same
 * distance from it (count_offset - offset). */
static bool value_equal(const struct cfg_key *k, const char *a, const char *b)
{
    ptrdiff_t cd = (ptrdiff_t)k->count_offset - (ptrdiff_t)k->offset;
    switch (k->type) {
    case CFG_STR:
    case CFG_FILE:
        return str_equal(*(char *const *)a, *(char *const *)b);
    case CFG_INT:
        return *(const int64_t *)a == *(const int64_t *)b;
    case CFG_UINT:
        return *(const uint32_t *)a == *(const uint32_t *)b;
    case CFG_PORT:
        return *(const uint16_t *)a == *(const uint16_t *)b;
    case CFG_BOOL:
        return *(const bool *)a == *(const bool *)b;
    case CFG_DURATION:
    case CFG_SIZE:
        return *(const uint64_t *)a == *(const uint64_t *)b;
    case CFG_ENUM:
        return *(const int *)a == *(const int *)b;
    case CFG_ADDR:
        return addr_eq((const struct addr *)a, (const struct addr *)b);
    case CFG_CIDR: {
        const struct cidr *x = (const void *)a, *y = (const void *)b;
        return x->bits == y->bits && addr_host_eq(&x->base, &y->base);
    }
    case CFG_SECTION:
        return section_equal(k->sub, a, b);
    default:
        break;
    }
    size_t n = *(const size_t *)(a + cd);
    if (n != *(const size_t *)(b + cd))
        return false;
    const char *pa = *(char *const *)a, *pb = *(char *const *)b;
    for (size_t i = 0; i < n; i++) {
        bool eq = true;
        switch (k->type) {
        case CFG_LIST:
            eq = section_equal(k->sub, pa + i * k->elem_size, pb + i * k->elem_size);
            break;
        case CFG_STRLIST:
            eq = str_equal(((char *const *)(const void *)pa)[i],
                           ((char *const *)(const void *)pb)[i]);
            break;
        case CFG_ADDRLIST:
            eq = addr_eq((const struct addr *)(const void *)pa + i,
                         (const struct addr *)(const void *)pb + i);
            break;
        case CFG_CIDRLIST: {
            const struct cidr *x = (const struct cidr *)(const void *)pa + i,
                              *y = (const struct cidr *)(const void *)pb + i;
            eq = x->bits == y->bits && addr_host_eq(&x->base, &y->base);
            break;
        }
        default:
            break;
        }
        if (!eq)
            return false;
    }
    return true;
}

static int restart_walk(const void *ncfg, const struct cfg_key *keys, const char *a, const char *b,
                        const char *path, struct cfg_err *err)
{
    for (const struct cfg_key *k = keys; k->name; k++) {
        char kpath[300];
        snprintf(kpath, sizeof kpath, "%s%s%s", path, *path && *k->name ? "." : "", k->name);
        const char *fa = a + k->offset, *fb = b + k->offset;
        if (k->restart) {
            if (!value_equal(k, fa, fb)) {
                cfg_errorf(ncfg, err, kpath, "can only change with a restart");
                return -EBUSY;
            }
            continue;
        }
        int rc = 0;
        if (k->type == CFG_SECTION) {
            rc = restart_walk(ncfg, k->sub, fa, fb, kpath, err);
        } else if (k->type == CFG_LIST) {
            ptrdiff_t cd = (ptrdiff_t)k->count_offset - (ptrdiff_t)k->offset;
            size_t na = *(const size_t *)(fa + cd), nb = *(const size_t *)(fb + cd);
            const char *pa = *(char *const *)fa, *pb = *(char *const *)fb;
            for (size_t i = 0; i < na && i < nb && !rc; i++) {
                char ipath[320];
                snprintf(ipath, sizeof ipath, "%s[%zu]", kpath, i);
                rc = restart_walk(ncfg, k->sub, pa + i * k->elem_size, pb + i * k->elem_size, ipath,
                                  err);
            }
            /* an element added or removed changes its restart-only keys too */
            if (!rc && na != nb) {
                for (const struct cfg_key *s = k->sub; s->name; s++)
                    if (s->restart) {
                        cfg_errorf(ncfg, err, kpath,
                                   "entries added or removed; '%s' can only change with a restart",
                                   s->name);
                        return -EBUSY;
                    }
            }
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* A file key, or a string key naming a file that need not exist at load time (an `acme:`
 * section's, written at start). */
static const struct cfg_key *file_key(const struct cfg_key *keys, const char *name)
{
    for (const struct cfg_key *k = keys; k->name; k++)
        if ((k->type == CFG_FILE || k->type == CFG_STR) && !strcmp(k->name, name))
            return k;
    return NULL;
}

static void cert_walk(const char *base, const struct cfg_key *keys,
                      void (*fn)(const char *cert, const char *key, void *arg), void *arg)
{
    for (const struct cfg_key *k = keys; k->name; k++)
        if (k->type == CFG_BOOL && !strcmp(k->name, "enabled") &&
            !*(const bool *)(base + k->offset))
            return; /* a section turned off uses no certificate */
    const struct cfg_key *kc = file_key(keys, "cert"), *kk = file_key(keys, "key");
    if (kc && kk && *(char *const *)(base + kc->offset))
        fn(*(char *const *)(base + kc->offset), *(char *const *)(base + kk->offset), arg);
    for (const struct cfg_key *k = keys; k->name; k++) {
        if (k->type == CFG_SECTION) {
            cert_walk(base + k->offset, k->sub, fn, arg);
        } else if (k->type == CFG_LIST) {
            size_t n = *(const size_t *)(base + k->count_offset);
            const char *p = *(char *const *)(base + k->offset);
            for (size_t i = 0; i < n; i++)
                cert_walk(p + i * k->elem_size, k->sub, fn, arg);
        }
    }
}

void cfg_each_cert_pair(const void *cfg, const struct cfg_key *keys,
                        void (*fn)(const char *cert, const char *key, void *arg), void *arg)
{
    cert_walk(cfg, keys, fn, arg);
}

int cfg_restart_changed(const void *old_cfg, const void *new_cfg, const struct cfg_key *keys,
                        struct cfg_err *err)
{
    return restart_walk(new_cfg, keys, old_cfg, new_cfg, "", err);
}

void cfg_errorf(const void *cfg, struct cfg_err *err, const char *keypath, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const struct cfg_hdr *h = hdr_of(cfg);
    for (size_t i = 0; i < h->npos; i++)
        if (!strcmp(h->pos[i].path, keypath)) {
            snprintf(err->msg, sizeof err->msg, "%s:%zu:%zu: %s: %s", h->name, h->pos[i].line,
                     h->pos[i].col, keypath, msg);
            return;
        }
    snprintf(err->msg, sizeof err->msg, "%s: %s: %s", h->name, keypath, msg);
}

void cfg_print_keys(const struct cfg_key *keys, int indent, void *file)
{
    FILE *f = file;
    for (const struct cfg_key *k = keys; k->name; k++) {
        if (k->name[0] == '\0' && k->type == CFG_SECTION) {
            cfg_print_keys(k->sub, indent, f);
            continue;
        }
        fprintf(f, "%*s%s (%s%s%s%s)%s%s\n", indent, "", k->name, type_name(k->type),
                k->def ? ", default " : "", k->def ? k->def : "",
                k->restart ? ", restart only" : "", k->help ? ": " : "", k->help ? k->help : "");
        if (k->type == CFG_SECTION || k->type == CFG_LIST)
            cfg_print_keys(k->sub, indent + 2, f);
    }
}
