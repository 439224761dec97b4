/* Shim of <dispatch/dispatch.h>: the memory-pressure source, a serial queue and a semaphore,
   run by pthreads in shim.c (tests/darwin_shim). */
#ifndef SHIM_DISPATCH_DISPATCH_H
#define SHIM_DISPATCH_DISPATCH_H
#include <stdint.h>

typedef struct shim_dispatch_queue *dispatch_queue_t;
typedef struct shim_dispatch_source *dispatch_source_t;
typedef struct shim_dispatch_semaphore *dispatch_semaphore_t;
typedef const struct shim_dispatch_source_type *dispatch_source_type_t;
typedef void (*dispatch_function_t)(void *);
typedef uint64_t dispatch_time_t;

extern const struct shim_dispatch_source_type shim_dispatch_source_type_memorypressure;
#define DISPATCH_SOURCE_TYPE_MEMORYPRESSURE (&shim_dispatch_source_type_memorypressure)
#define DISPATCH_MEMORYPRESSURE_NORMAL   0x01
#define DISPATCH_MEMORYPRESSURE_WARN     0x02
#define DISPATCH_MEMORYPRESSURE_CRITICAL 0x04
#define DISPATCH_QUEUE_SERIAL NULL
#define DISPATCH_TIME_FOREVER (~0ull)

dispatch_queue_t dispatch_queue_create(const char *label, void *attr);
dispatch_semaphore_t dispatch_semaphore_create(long value);
long dispatch_semaphore_signal(dispatch_semaphore_t sem);
long dispatch_semaphore_wait(dispatch_semaphore_t sem, dispatch_time_t timeout);
dispatch_source_t dispatch_source_create(dispatch_source_type_t type, uintptr_t handle,
                                         uintptr_t mask, dispatch_queue_t queue);
void dispatch_set_context(void *object, void *context);
void dispatch_source_set_event_handler_f(dispatch_source_t source, dispatch_function_t handler);
void dispatch_source_set_cancel_handler_f(dispatch_source_t source, dispatch_function_t handler);
void dispatch_activate(void *object);
uintptr_t dispatch_source_get_data(dispatch_source_t source);
void dispatch_source_cancel(dispatch_source_t source);
void dispatch_release(void *object);
#endif
