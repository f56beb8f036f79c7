/* notify.h - notifiers (kvp_event_notify): one thread per agent that sleeps until the
 * agent signals an event and then calls the runtime's callback with no lock held, and
 * the process-wide list kvp_event_quiesce stops and joins. Engine-independent: an
 * engine keeps one pointer per agent, signals it where it signals kvp_event_fd, and
 * stops it at destroy. */
#ifndef KVP_NOTIFY_H
#define KVP_NOTIFY_H

#include "common.h"

typedef struct kvp_notifier kvp_notifier;

/* Starts a notifier calling fn(ctx) for agent_name (messages only); flags:
 * KVP_EVENT_DIRECT (no thread). *out holds the caller's reference until
 * kvp_notifier_stop. */
int32_t kvp_notifier_start(kvp_event_fn fn, uint64_t ctx, uint32_t flags,
                           const char *agent_name, kvp_notifier **out);
/* Whether fn is called by the signalling thread (KVP_EVENT_DIRECT). */
bool kvp_notifier_direct(const kvp_notifier *n);
/* Marks an event: the notifier makes one call for every run of signals (any thread;
 * takes only the notifier's own mutex, a leaf lock, never blocks on fn). A direct
 * notifier calls fn right here: the caller must hold no lock of the library. */
void kvp_notifier_signal(kvp_notifier *n);
/* Tells the notifier to stop and drops the caller's reference: no call starts after
 * this returns; a call in progress finishes on its own (never waited for here). */
void kvp_notifier_stop(kvp_notifier *n);
/* A direct notifier's call was run: the next event calls fn again. */
void kvp_notifier_ack(kvp_notifier *n);
/* Calls made so far (tests). */
uint64_t kvp_notifier_calls(kvp_notifier *n);
/* kvp_now_ns() when the last call of fn started (0: none yet), for kvp_agent_info. */
uint64_t kvp_notifier_last_call_ns(kvp_notifier *n);

#endif
