/* osip2 set-up (see sip_osip.h). */
#include "common/sip/sip_osip.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <osipparser2/osip_parser.h>
#include <osipparser2/osip_port.h>

/* Where osip2's traces go: nowhere. */
static void trace_discard(const char *file, int line, osip_trace_level_t level, const char *fmt,
                          va_list ap)
{
    (void)file;
    (void)line;
    (void)level;
    (void)fmt;
    (void)ap;
}

static pthread_once_t once = PTHREAD_ONCE_INIT;

static void setup(void)
{
    parser_init();
    /* A trace function of our own takes every trace osip2 emits (level 0: none enabled),
     * so none is printed to stdout, which is the daemon's log. */
    osip_trace_initialize_func((osip_trace_level_t)0, trace_discard);
    for (int l = 0; l < END_TRACE_LEVEL; l++)
        osip_trace_disable_level((osip_trace_level_t)l);
}

void sip_osip_init(void)
{
    pthread_once(&once, setup);
}

int sip_osip_parse(osip_message_t *msg, const struct sip_msg *m)
{
    size_t hdr = m->hdr_end && m->hdr_end <= m->len ? m->hdr_end : m->len;
    if (!memchr(m->buf, '\t', hdr))
        return osip_message_parse(msg, (const char *)m->buf, m->len);
    char *copy = malloc(m->len ? m->len : 1);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, m->buf, m->len);
    for (size_t i = 0; i < hdr; i++)
        if (copy[i] == '\t')
            copy[i] = ' ';
    int rc = osip_message_parse(msg, copy, m->len);
    free(copy);
    return rc;
}
