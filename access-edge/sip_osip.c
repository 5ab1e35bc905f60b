/* osip2 set-up (see sip_osip.h). */
#include "access-edge/sip_osip.h"

#include <pthread.h>
#include <stdarg.h>

#include <osipparser2/osip_parser.h>
#include <osipparser2/osip_port.h>

/* Where osip2's traces go: nowhere. */
static void trace_discard(const char *file, int line, osip_trace_level_t level,
                          const char *fmt, va_list ap)
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
