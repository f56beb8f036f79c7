/* params.c - see params.h. */
#include "params.h"

#include <ctype.h>

#include "errors.h"

static char *trim(char *s) {
    while (*s && isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1])) s[--n] = '\0';
    return s;
}

void kvp_params_free(kvp_params *p) {
    for (size_t i = 0; i < p->n; i++) {
        free(p->v[i].backend);
        free(p->v[i].key);
        free(p->v[i].value);
    }
    free(p->v);
    p->v = NULL;
    p->n = 0;
}

int32_t kvp_params_parse(const char *text, kvp_params *out) {
    out->v = NULL;
    out->n = 0;
    if (!text || !*text) return KVP_SUCCESS;
    char *copy = strdup(text);
    if (!copy) return kvp_err(KVP_ERR_BACKEND, "out of memory parsing params");
    int32_t st = KVP_SUCCESS;
    size_t lineno = 0;
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char *l = trim(line);
        if (!*l || *l == '#') continue;
        char *eq = strchr(l, '=');
        if (!eq) {
            st = kvp_err(KVP_ERR_INVALID_PARAM,
                         "params line %zu \"%.80s\" is not key=value", lineno, l);
            break;
        }
        *eq = '\0';
        char *k = trim(l), *v = trim(eq + 1);
        if (!*k) {
            st = kvp_err(KVP_ERR_INVALID_PARAM, "params line %zu has an empty key", lineno);
            break;
        }
        kvp_param *nv = realloc(out->v, (out->n + 1) * sizeof *nv);
        if (!nv) {
            st = kvp_err(KVP_ERR_BACKEND, "out of memory parsing params");
            break;
        }
        out->v = nv;
        kvp_param *pp = &out->v[out->n];
        memset(pp, 0, sizeof *pp);
        char *dot = strchr(k, '.');
        if (dot) {
            *dot = '\0';
            pp->backend = strdup(k);
            k = dot + 1;
        }
        pp->key = strdup(k);
        pp->value = strdup(v);
        out->n++;
        if (!pp->key || !pp->value || (dot && !pp->backend)) {
            st = kvp_err(KVP_ERR_BACKEND, "out of memory parsing params");
            break;
        }
    }
    free(copy);
    if (st != KVP_SUCCESS) kvp_params_free(out);
    return st;
}

const char *kvp_params_get(kvp_params *p, const char *key) {
    const char *v = NULL;
    for (size_t i = 0; i < p->n; i++) {
        if (strcmp(p->v[i].key, key) == 0) {
            p->v[i].used = true;
            v = p->v[i].value;
        }
    }
    return v;
}

int32_t kvp_params_uint(kvp_params *p, const char *key, uint64_t lo, uint64_t hi,
                        uint64_t dflt, uint64_t *out) {
    const char *v = kvp_params_get(p, key);
    if (!v) {
        *out = dflt;
        return KVP_SUCCESS;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (!*v || errno || !end || *end || v[0] == '-' || x < lo || x > hi)
        return kvp_err(KVP_ERR_INVALID_PARAM,
                       "param %s=\"%s\" is not an integer in [%llu, %llu]", key, v,
                       (unsigned long long)lo, (unsigned long long)hi);
    *out = x;
    return KVP_SUCCESS;
}
