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
    /* osip2 is given a copy of the header section alone, its Content-Length values zeroed:
     * nothing here reads a body, and osip2's MIME body parser leaks a multipart part that
     * carries two Content-Types (fuzz_sip_msg found it: 63 bytes a message, an attacker's
     * to repeat). Tabs become spaces, which osip2 does not take for LWS everywhere. */
    size_t hdr = m->hdr_end && m->hdr_end <= m->len ? m->hdr_end : m->len;
    char stack[4096];
    char *copy = hdr <= sizeof(stack) ? stack : malloc(hdr);
    if (!copy)
        return -ENOMEM;
    memcpy(copy, m->buf, hdr);
    for (size_t i = 0; i < hdr; i++)
        if (copy[i] == '\t')
            copy[i] = ' ';
    for (uint16_t i = 0; i < m->nhdr; i++)
        if (m->hdr[i].id == SIP_H_CONTENT_LENGTH && m->hdr[i].val_len &&
            m->hdr[i].val_off + m->hdr[i].val_len <= hdr) {
            memset(copy + m->hdr[i].val_off, ' ', m->hdr[i].val_len);
            copy[m->hdr[i].val_off] = '0';
        }
    int rc = osip_message_parse(msg, copy, hdr);
    if (copy != stack)
        free(copy);
    return rc;
}
